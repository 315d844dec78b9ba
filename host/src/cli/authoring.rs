//! The plugin author's commands: `runnel new`, `runnel test`, `runnel check`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::TestArgs;
use crate::config::EngineConfig;
use crate::plugin::{self, PluginEngine};

/// `runnel new`: a plugin project from the scaffold.
pub(super) fn cmd_new(
    lang: crate::commands::scaffold::Lang,
    name: String,
    dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    let project = crate::commands::scaffold::create(lang, &name, &dir)?;
    println!("created {}", project.display());
    println!(
        "next: cd {} && ./build.sh && runnel test {name}.wasm --events events.ndjson",
        project.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The `[[plugin]]`s of `config` that load the component file `wasm`
/// (compared as canonical paths: the config's are relative to it).
fn plugins_loading<'a>(
    config: &'a crate::config::Config,
    wasm: &std::path::Path,
) -> Vec<&'a crate::config::PluginConfig> {
    let target = std::fs::canonicalize(wasm).unwrap_or(wasm.to_path_buf());
    config
        .plugins
        .iter()
        .filter(|p| std::fs::canonicalize(&p.path).is_ok_and(|p| p == target))
        .collect()
}

/// The `[[plugin]]` of the config at `path` that `runnel test` takes the
/// settings of: the one named, or the only one that loads `wasm`; with the
/// config's `max_payload_bytes`.
fn plugin_of_config(
    path: &std::path::Path,
    wasm: &std::path::Path,
    name: Option<&str>,
) -> anyhow::Result<(crate::config::PluginConfig, usize)> {
    let config = crate::config::Config::load(path)?;
    let chosen: Vec<_> = match name {
        Some(n) => config.plugins.iter().filter(|p| p.name == n).collect(),
        None => plugins_loading(&config, wasm),
    };
    match (chosen.as_slice(), name) {
        ([p], _) => Ok(((*p).clone(), config.max_payload_bytes)),
        ([], Some(n)) => anyhow::bail!("{}: no [[plugin]] is named {n:?}", path.display()),
        ([], None) => anyhow::bail!(
            "{}: no [[plugin]] loads {}: name one with --plugin",
            path.display(),
            wasm.display()
        ),
        (_, _) => anyhow::bail!(
            "{}: several [[plugin]] load {}: name one with --plugin",
            path.display(),
            wasm.display()
        ),
    }
}

/// `runnel test`: a plugin over a file of events, in process; compared with
/// an expected report when one is given.
pub(super) async fn cmd_test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let events = &args.events;
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("{}: cannot read", events.display()))?;
    let events_parsed =
        crate::commands::input::parse(&text).with_context(|| events.display().to_string())?;
    let http_canned = match &args.http {
        None => None,
        Some(path) => Some(Arc::new(crate::outbound::CannedResponses::load(path)?)),
    };
    let from_config = match &args.config {
        None => None,
        Some(path) => Some(plugin_of_config(
            path,
            &args.plugin,
            args.plugin_name.as_deref(),
        )?),
    };
    let (name, base, max_attempts) = match from_config {
        Some((p, max_payload_bytes)) => {
            let settings = plugin::PluginSettings::of(&p, max_payload_bytes);
            (p.name.clone(), settings, p.max_attempts)
        }
        None => {
            // Named after its file, as `runnel new` names both: the log
            // lines say which plugin wrote them.
            let name = args
                .plugin
                .file_stem()
                .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
            let five_seconds = Duration::from_millis(5000);
            let settings =
                plugin::PluginSettings::for_tool(&name, five_seconds, Default::default(), None)?;
            (name, settings, 1)
        }
    };
    // The flags add to what the config grants, or override its numbers.
    let mut grants = base.grants.clone();
    grants.stdio |= args.grant_stdio;
    grants.kv.extend(args.grant_kv.iter().cloned());
    grants.http.extend(args.grant_http.iter().cloned());
    let timeout = args.timeout_ms.map_or(base.timeout, Duration::from_millis);
    let tool = plugin::PluginSettings::for_tool(&name, timeout, grants, http_canned)?;
    let settings = plugin::PluginSettings {
        config: base.config,
        kv_limits: base.kv_limits,
        http_limits: base.http_limits,
        fuel: base.fuel,
        max_emitted_payload: base.max_emitted_payload,
        memory_bytes: base.memory_bytes.max(tool.memory_bytes),
        ..tool
    };
    let options = crate::commands::harness::HarnessOptions {
        max_attempts: args.max_attempts.unwrap_or(max_attempts),
        name,
        settings,
        kv_seed: match &args.kv {
            None => Default::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{}: not a JSON object of buckets of string values",
                        path.display()
                    )
                })?
            }
        },
        kv_commit: args.kv_commit,
    };
    let report = crate::commands::harness::run(&args.plugin, events_parsed, &options).await?;
    print!("{report}");
    let Some(path) = args.expect else {
        return Ok(ExitCode::SUCCESS);
    };
    let expected = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    match crate::commands::harness::difference(&report, &expected) {
        None => Ok(ExitCode::SUCCESS),
        Some(d) => {
            eprintln!("differs from {}: {d}", path.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `runnel check`: whether a file is a plugin component, what it exports
/// and imports, and (with a config) which of its capabilities are granted.
pub(super) fn check(path: PathBuf, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let engine = PluginEngine::new(&EngineConfig::for_one_plugin())?;
    let interface = plugin::check(&engine, &path)?;
    // The config is read before anything is printed: an error in it is
    // the answer, not a footnote under an "ok".
    let config = match config {
        Some(config_path) => {
            let config = crate::config::Config::load(&config_path)?;
            if plugins_loading(&config, &path).is_empty() {
                anyhow::bail!(
                    "{}: no [[plugin]] loads {}",
                    config_path.display(),
                    path.display()
                );
            }
            Some((config_path, config))
        }
        None => None,
    };
    println!("{}: ok, implements runnel:plugin/handler", path.display());
    println!("  exports: {}", interface.exports.join(", "));
    println!("  imports: {}", interface.imports.join(", "));
    // As loaded without a config: granted directories or `fast_path =
    // false` in a plugin's section send its calls to a fiber too.
    println!(
        "  calls: {}",
        if plugin::fast_path_eligible(&interface.imports, false) {
            "without a fiber first (the synchronous fast path)"
        } else {
            "on a fiber (it imports key-value, HTTP or sockets, which wait in the host)"
        }
    );
    let Some((config_path, config)) = config else {
        let closed = plugin::ungranted(&interface.imports, &Default::default());
        if !closed.is_empty() {
            println!("  capabilities denied unless granted in its [[plugin]] section:");
            for u in closed {
                println!("    {:<14} {}", u.capability, u.grant);
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    for p in plugins_loading(&config, &path) {
        println!(
            "  capabilities of plugin {:?} in {}:",
            p.name,
            config_path.display()
        );
        let capabilities = plugin::capabilities(&interface.imports, &p.grants);
        if capabilities.is_empty() {
            println!("    none beyond the contract");
        }
        for c in capabilities {
            let state = if c.granted {
                "granted"
            } else {
                "denied (to allow: "
            };
            let end = if c.granted { "" } else { ")" };
            let detail = match (c.capability, c.granted) {
                ("outbound HTTP", true) => format!(": {}", p.grants.http.join(", ")),
                ("key-value", true) => {
                    let mut b = p.grants.kv.clone();
                    b.extend(p.grants.kv_shared.iter().map(|s| format!("{s} (shared)")));
                    format!(": {}", b.join(", "))
                }
                (_, true) => String::new(),
                (_, false) => c.grant.to_string(),
            };
            println!("    {:<14} {state}{detail}{end}", c.capability);
        }
    }
    for warning in config.cluster_warnings() {
        println!("  warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}
