//! The `runnel` command line, in the library so that tests can run the very
//! same binary logic (see `tests/src/bin`).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::broker::redis::{RedisBroker, Trimming};
use crate::config::{Config, EngineConfig};
use crate::dead_letter::DeadLetterRecord;
use crate::event::Event;
use crate::input::InputEvent;
use crate::plugin::{self, PluginEngine};
use crate::reload::Reloader;
use crate::runtime::{summary_table, Runtime};

/// Runs sandboxed WebAssembly event handlers over pub/sub streams.
#[derive(Parser)]
#[command(name = "runnel", version)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Worker threads of the async runtime (default: one per core). With
    /// Redis on the same machine, fewer threads than cores leave it a core.
    #[arg(long, global = true, env = "RUNNEL_THREADS")]
    threads: Option<std::num::NonZeroUsize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the host as a service until SIGINT or SIGTERM.
    Run {
        #[arg(long, default_value = "runnel.toml")]
        config: PathBuf,
        /// NDJSON events to inject (`-` for stdin): envelopes or
        /// {"name", "payload"[, "stream"]} lines.
        #[arg(long)]
        input: Option<String>,
        /// Exit once every event is handled, printing a summary per plugin.
        #[arg(long)]
        exit_when_idle: bool,
        /// Serve the admin API on this address (e.g. 127.0.0.1:9464; port 0
        /// picks a free one), overriding the config's `[admin] listen`.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Talks to a running host's admin API: list, reload or promote plugins,
    /// reload its config.
    Plugins {
        /// The admin API's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        admin: String,
        /// Environment variable holding the admin token, if one is set.
        #[arg(long, default_value = "RUNNEL_ADMIN_TOKEN")]
        token_env: String,
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Checks that a component implements the handler world, and shows what
    /// it imports and exports.
    Check { plugin: PathBuf },
    /// Makes a new plugin project: handler, SDK, WIT contract, build
    /// script, sample events and config.
    New {
        #[arg(long, value_enum)]
        lang: crate::scaffold::Lang,
        /// The plugin's name (lowercase letters, digits, '-').
        name: String,
        /// Where to create the project's directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Runs a plugin over events from a file, in process (no backend), and
    /// prints each attempt's verdict, logs and emitted events.
    Test {
        plugin: PathBuf,
        /// NDJSON events, as `run --input` reads them. Shorthand lines get
        /// the id `event-N` and a fixed time, so that reports are the same
        /// from run to run.
        #[arg(long)]
        events: PathBuf,
        /// Compare the report with this file; exit 1 on a difference.
        /// (Write it first with `runnel test ... > FILE`.)
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Attempts per event; failures are retried at once.
        #[arg(long, default_value_t = 1)]
        max_attempts: u32,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Let the plugin's stdout/stderr through to the log.
        #[arg(long)]
        grant_stdio: bool,
    },
    /// Measures events/s through the dispatcher: native Rust, wasm with warm
    /// instances, wasm with a fresh instance per event.
    Bench(crate::bench::BenchArgs),
    /// Publishes events to Redis: one from --name/--payload, or NDJSON on stdin.
    Emit {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// Stream to append to (lines of NDJSON may name their own).
        #[arg(long)]
        stream: Option<String>,
        /// Event name; without it, events are read as NDJSON from stdin.
        #[arg(long)]
        name: Option<String>,
        /// JSON payload.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// File whose bytes are the payload.
        #[arg(long)]
        payload_file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        correlation_id: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Inspects and replays dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Runs a plugin over a range of a stream in dry-run mode: prints each
    /// event's verdict, what it would emit and its logs. Publishes and acks
    /// nothing.
    Replay {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long)]
        stream: String,
        /// First entry id (inclusive); default the oldest.
        #[arg(long)]
        from: Option<String>,
        /// Last entry id (inclusive); default the newest.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 100)]
        count: usize,
        plugin: PathBuf,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Shows each plugin's version, counters, reloads and last error.
    List,
    /// Reloads a plugin from its file now.
    Reload { name: String },
    /// Makes a shadow's version the live one.
    Promote { name: String },
    /// Re-reads the host's config file and applies plugin settings.
    ReloadConfig,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Lists the entries of a dead-letter stream.
    List {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        /// The dead-letter stream (by default `<stream>.dead`).
        #[arg(long)]
        stream: String,
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Puts dead letters back on their source streams and removes them here.
    Replay {
        #[arg(long, default_value = "redis://127.0.0.1:6379")]
        redis: String,
        #[arg(long)]
        stream: String,
        /// Entry ids to replay; all of them when none is given.
        #[arg(long = "id")]
        ids: Vec<String>,
    },
}

/// Parses the process arguments and runs the command; errors are printed as
/// one line and give a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.get());
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(anyhow::anyhow!("starting the async runtime: {e}")),
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            input,
            exit_when_idle,
            admin,
        } => run(config, input, exit_when_idle, admin).await,
        Command::Plugins {
            admin,
            token_env,
            command,
        } => {
            let (method, path) = match &command {
                PluginsCommand::List => ("GET", "/plugins".to_string()),
                PluginsCommand::Reload { name } => ("POST", format!("/plugins/{name}/reload")),
                PluginsCommand::Promote { name } => ("POST", format!("/plugins/{name}/promote")),
                PluginsCommand::ReloadConfig => ("POST", "/config/reload".to_string()),
            };
            let token = std::env::var(&token_env).ok();
            let url = format!("{}{path}", admin.trim_end_matches('/'));
            let (ok, body) = tokio::task::spawn_blocking(move || call_admin(method, &url, token))
                .await
                .context("the admin client thread failed")??;
            println!("{body}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Check { plugin } => check(plugin),
        Command::New { lang, name, dir } => {
            let project = crate::scaffold::create(lang, &name, &dir)?;
            println!("created {}", project.display());
            println!(
                "next: cd {} && ./build.sh && runnel test {name}.wasm --events events.ndjson",
                project.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            plugin,
            events,
            expect,
            max_attempts,
            timeout_ms,
            grant_stdio,
        } => {
            let text = std::fs::read_to_string(&events)
                .with_context(|| format!("{}: cannot read", events.display()))?;
            let events_parsed =
                crate::input::parse(&text).with_context(|| events.display().to_string())?;
            let options = crate::harness::HarnessOptions {
                max_attempts,
                timeout: Duration::from_millis(timeout_ms),
                grants: crate::config::Grants {
                    stdio: grant_stdio,
                    ..Default::default()
                },
            };
            let report = crate::harness::run(&plugin, events_parsed, &options).await?;
            print!("{report}");
            match expect {
                None => Ok(ExitCode::SUCCESS),
                Some(path) => {
                    let expected = std::fs::read_to_string(&path)
                        .with_context(|| format!("{}: cannot read", path.display()))?;
                    match crate::harness::difference(&report, &expected) {
                        None => Ok(ExitCode::SUCCESS),
                        Some(d) => {
                            eprintln!("differs from {}: {d}", path.display());
                            Ok(ExitCode::FAILURE)
                        }
                    }
                }
            }
        }
        Command::Bench(args) => {
            print!("{}", crate::bench::run(args).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Emit {
            redis,
            stream,
            name,
            payload,
            payload_file,
            correlation_id,
            dry_run,
        } => {
            let events = match name {
                Some(name) => {
                    let bytes = match (payload, payload_file) {
                        (Some(json), _) => {
                            serde_json::from_str::<serde_json::Value>(&json)
                                .context("--payload is not JSON")?;
                            json.into_bytes()
                        }
                        (None, Some(file)) => std::fs::read(&file)
                            .with_context(|| format!("{}: cannot read", file.display()))?,
                        (None, None) => Vec::new(),
                    };
                    let mut event = Event::new(name, bytes);
                    event.meta.correlation_id = correlation_id;
                    event.meta.is_dry_run = dry_run;
                    vec![InputEvent {
                        stream: None,
                        event,
                        is_envelope: false,
                    }]
                }
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading NDJSON events from stdin")?;
                    crate::input::parse(&text).context("stdin")?
                }
            };
            let broker = RedisBroker::connect(&redis, Trimming::default()).await?;
            let n = crate::tools::emit(&*broker, stream.as_deref(), events).await?;
            println!("emitted {n} events");
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { command } => match command {
            DlqCommand::List {
                redis,
                stream,
                count,
            } => {
                let broker = RedisBroker::connect(&redis, Trimming::default()).await?;
                print!(
                    "{}",
                    crate::tools::dlq_list(&*broker, &stream, count).await?
                );
                Ok(ExitCode::SUCCESS)
            }
            DlqCommand::Replay { redis, stream, ids } => {
                let broker = RedisBroker::connect(&redis, Trimming::default()).await?;
                let n = crate::tools::dlq_replay(&*broker, &stream, &ids).await?;
                println!("replayed {n} dead letters from {stream}");
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Replay {
            redis,
            stream,
            from,
            to,
            count,
            plugin,
        } => {
            let broker = RedisBroker::connect(&redis, Trimming::default()).await?;
            let report = crate::tools::replay(
                &*broker,
                &stream,
                from.as_deref(),
                to.as_deref(),
                count,
                &plugin,
            )
            .await?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One request to the admin API; returns whether it succeeded and the body.
fn call_admin(method: &str, url: &str, token: Option<String>) -> anyhow::Result<(bool, String)> {
    let mut request = ureq::request(method, url).timeout(std::time::Duration::from_secs(120));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(anyhow::anyhow!("{url}: {e}")),
    };
    let ok = response.status() < 300;
    Ok((ok, response.into_string().context("reading the answer")?))
}

async fn run(
    config_path: PathBuf,
    input: Option<String>,
    exit_when_idle: bool,
    admin_addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    install_signal_handlers(shutdown.clone())?;
    let config = Config::load(&config_path)?;
    let deadline = Duration::from_millis(config.service.shutdown_deadline_ms);
    let runtime = Arc::new(Runtime::from_config(config).await?);
    let mut tasks = runtime.start(&shutdown).await?;
    tracing::info!(plugins = runtime.plugins.len(), "consuming");
    if let Some(reloader) = &runtime.reloader {
        if runtime.config.service.watch_plugins {
            // Hot reload by file is a convenience: without it (no inotify
            // watches left, say) the service still runs and reloads on
            // request.
            if let Err(e) = reloader.clone().watch(shutdown.clone()) {
                tracing::warn!("not watching plugin files, reload through the admin API: {e:#}");
            }
        }
        reload_config_on_sighup(reloader.clone(), config_path.clone())?;
    }
    let admin_config = runtime.config.admin.as_ref();
    let listen = admin_addr
        .map(|a| a.to_string())
        .or_else(|| admin_config.map(|a| a.listen.clone()));
    if let Some(listen) = listen {
        let token = match admin_config.and_then(|a| a.token_env.as_ref()) {
            Some(var) => Some(
                std::env::var(var)
                    .with_context(|| format!("admin.token_env names {var:?}, which is not set"))?,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("admin API: binding {listen}"))?;
        tracing::info!("admin API listening on http://{}", listener.local_addr()?);
        let admin = Arc::new(crate::admin::Admin {
            runtime: runtime.clone(),
            token,
            config_path: Some(config_path.clone()),
        });
        tokio::spawn(crate::admin::serve(listener, admin, shutdown.clone()));
    }

    if let Some(input) = input {
        let text = if input == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading events from stdin")?;
            text
        } else {
            std::fs::read_to_string(&input).with_context(|| format!("{input}: cannot read"))?
        };
        let events = crate::input::parse(&text).with_context(|| input.clone())?;
        let count = events.len();
        runtime
            .inject(events)
            .await
            .with_context(|| input.clone())?;
        tracing::info!("injected {count} events from {input}");
    }
    // Until asked to stop (or idle, if asked to exit then), watch the
    // subscribers: one that ends early has failed, and a service that has
    // silently stopped consuming is worse than one that exits.
    let idle = async {
        if exit_when_idle {
            runtime.wait_idle().await
        } else {
            std::future::pending().await
        }
    };
    tokio::select! {
        r = idle => r?,
        _ = shutdown.cancelled() => {}
        Some(ended) = tasks.join_next() => {
            if shutdown.is_cancelled() {
                // Not early: a signal arrived and this one drained first.
                ended??;
            } else {
                shutdown.cancel();
                let reason = match ended {
                Ok(Ok(())) => "stopped".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => format!("panicked: {e}"),
                };
                anyhow::bail!("a subscriber ended unexpectedly: {reason}");
            }
        }
    }
    shutdown.cancel();
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    };
    tokio::pin!(drain);
    match tokio::time::timeout(deadline, &mut drain).await {
        Ok(drained) => drained?,
        Err(_) => {
            tracing::warn!(
                "shutdown deadline of {deadline:?} passed: leaving unfinished events pending"
            );
            runtime.abandon.cancel();
            drain.await?;
        }
    }
    print!("{}", summary_table(&runtime.summary()));
    if exit_when_idle {
        print_dead_letters(&runtime).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists what was dead-lettered on the plugins' streams: with the in-memory
/// backend, the last chance to see it.
async fn print_dead_letters(runtime: &Runtime) -> anyhow::Result<()> {
    let mut streams: Vec<String> = runtime
        .plugins
        .iter()
        .flat_map(|p| p.config.streams.iter())
        .map(|s| runtime.config.dead_letter_stream(s))
        .collect();
    streams.sort();
    streams.dedup();
    for stream in streams {
        let entries = runtime.broker.range(&stream, None, None, 100).await?;
        if entries.is_empty() {
            continue;
        }
        println!("\ndead letters on {stream}:");
        for entry in &entries {
            let r = DeadLetterRecord::from_entry(entry);
            println!(
                "  {} plugin={} kind={} attempts={}: {}",
                r.id, r.plugin, r.kind, r.attempts, r.reason
            );
        }
    }
    Ok(())
}

/// Listens for SIGINT and SIGTERM. The handlers are installed here, before
/// the service starts, so that a signal arriving early is never the default
/// "terminate at once".
fn install_signal_handlers(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    tokio::spawn(async move {
        // First signal: stop taking events and drain. Second: exit now.
        for round in 0..2 {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if round == 0 {
                tracing::info!(
                    "shutting down: finishing in-flight events (signal again to exit now)"
                );
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// SIGHUP re-reads the config and applies what can change while running.
fn reload_config_on_sighup(reloader: Arc<Reloader>, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match Config::load(&path) {
                Ok(config) => {
                    reloader.apply(&config).await;
                }
                Err(e) => tracing::error!("config reload refused, nothing changed: {e}"),
            }
        }
    });
    Ok(())
}

fn check(path: PathBuf) -> anyhow::Result<ExitCode> {
    let engine = PluginEngine::new(&EngineConfig {
        max_instances: 4,
        ..EngineConfig::default()
    })?;
    let interface = plugin::check(&engine, &path)?;
    println!("{}: ok, implements runnel:plugin/handler", path.display());
    println!("  exports: {}", interface.exports.join(", "));
    println!("  imports: {}", interface.imports.join(", "));
    let closed = plugin::ungranted(&interface.imports, &Default::default());
    if !closed.is_empty() {
        println!("  capabilities denied unless granted in its [[plugin]] section:");
        for u in closed {
            println!("    {:<14} {}", u.capability, u.grant);
        }
    }
    Ok(ExitCode::SUCCESS)
}
