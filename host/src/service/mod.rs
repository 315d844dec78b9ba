//! `runnel run` as a library: the service lifecycle, from a config file to a
//! drained exit, testable without a subprocess.
//!
//! [`Service::start`] loads the config and the plugins, starts one subscriber
//! per plugin, the file watcher, SIGHUP config reloads and the admin API;
//! [`Service::run`] serves until its shutdown future resolves (or, when asked,
//! until every event is handled), then stops reading, drains in-flight events
//! within `service.shutdown_deadline_ms` and returns the counters. Signals are
//! the binary's business (`cli/`): it turns SIGINT/SIGTERM into that future.

pub mod admin;
pub mod live;
pub mod metrics;
pub mod reload;
pub mod shadow;

use std::future::Future;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dead_letter::DeadLetterRecord;
use crate::runtime::Runtime;
use crate::service::reload::Reloader;
use crate::stats::Snapshot;

/// How `runnel run` was asked to behave, beyond the config file.
#[derive(Clone, Debug, Default)]
pub struct ServiceOptions {
    /// NDJSON events to inject once consuming has started (`-` for stdin).
    pub input: Option<String>,
    /// Return once every plugin has finished every entry of its streams.
    pub exit_when_idle: bool,
    /// Serve the admin API here, overriding the config's `[admin] listen`.
    pub admin: Option<SocketAddr>,
    /// Exit at start if the backend does not answer (or refuses to create a
    /// group), for batch jobs; a service otherwise comes up, reports itself
    /// not ready, and starts consuming once the backend answers.
    pub fail_fast: bool,
}

/// A started host: subscribers consuming, admin API serving.
pub struct Service {
    runtime: Arc<Runtime>,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Cancelled when the service stops, whatever the reason; every task of
    /// the service (subscribers, watcher, admin API) ends with it.
    stop: CancellationToken,
    options: ServiceOptions,
    /// Where the admin API listens, when it does.
    admin_addr: Option<SocketAddr>,
}

/// What a finished run reports.
#[derive(Debug)]
pub struct Report {
    /// Counters per plugin, in config order.
    pub summary: Vec<(String, Snapshot)>,
}

impl Service {
    /// Loads `config_path` and every plugin, binds the admin API, then
    /// starts consuming. Fails, naming the file, plugin or address, if
    /// anything does not load or bind, before a single entry is read. A
    /// backend that does not answer yet is waited for (unless
    /// [`ServiceOptions::fail_fast`]): `/readyz` says so meanwhile.
    pub async fn start(config_path: PathBuf, options: ServiceOptions) -> anyhow::Result<Service> {
        let stop = CancellationToken::new();
        // A start that fails half-way stops what it had started (the admin
        // API, the watcher, subscribers).
        let started = stop.clone().drop_guard();
        let config = Config::load(&config_path)?;
        let runtime = Arc::new(Runtime::from_config(config).await?);
        // Bound before reading: a port clash must not exit after entries
        // were taken.
        let admin_addr = serve_admin(&runtime, &options, &config_path, &stop).await?;
        if let Some(reloader) = &runtime.reloader {
            if runtime.config.service.watch_plugins {
                // Hot reload by file is a convenience: without it (no inotify
                // watches left, say) the service still runs and reloads on
                // request.
                if let Err(e) = reloader.clone().watch(stop.clone()) {
                    tracing::warn!(
                        "not watching plugin files, reload through the admin API: {e:#}"
                    );
                }
            }
            reload_config_on_sighup(reloader.clone(), config_path.clone())?;
        }
        if let Err(e) = runtime.create_groups().await {
            if options.fail_fast {
                return Err(e);
            }
            tracing::warn!(
                "{e:#}; consuming starts once the backend answers (--fail-fast exits instead)"
            );
        }
        let tasks = runtime.spawn_subscribers(&stop);
        tracing::info!(plugins = runtime.plugins.len(), "consuming");
        let service = Service {
            runtime,
            tasks,
            stop,
            options,
            admin_addr,
        };
        service.inject_input().await?;
        started.disarm();
        Ok(service)
    }

    /// The running host: its config, broker, plugins and counters.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The admin API's address, when it listens.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    async fn inject_input(&self) -> anyhow::Result<()> {
        let Some(input) = &self.options.input else {
            return Ok(());
        };
        let text = if input == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading events from stdin")?;
            text
        } else {
            std::fs::read_to_string(input).with_context(|| format!("{input}: cannot read"))?
        };
        let events = crate::commands::input::parse(&text).with_context(|| input.clone())?;
        let count = events.len();
        self.runtime
            .inject(events)
            .await
            .with_context(|| input.clone())?;
        tracing::info!("injected {count} events from {input}");
        Ok(())
    }

    /// Serves until `shutdown` resolves (or until idle, with
    /// [`ServiceOptions::exit_when_idle`]), then drains: no new reads,
    /// in-flight events finish and are acked; past the shutdown deadline what
    /// is unfinished stays pending for another consumer. Fails if a
    /// subscriber ends on its own: a service that has silently stopped
    /// consuming is worse than one that exits.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Report> {
        let runtime = self.runtime.clone();
        let idle = async {
            if self.options.exit_when_idle {
                runtime.wait_idle().await
            } else {
                std::future::pending().await
            }
        };
        let ended_early = tokio::select! {
            r = idle => r.map(|()| None)?,
            _ = shutdown => None,
            Some(ended) = self.tasks.join_next() => Some(match ended {
                Ok(Ok(())) => "stopped".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => format!("panicked: {e}"),
            }),
        };
        // The others drain either way: what they took is finished and acked.
        self.stop.cancel();
        let deadline = Duration::from_millis(runtime.config.service.shutdown_deadline_ms);
        let tasks = &mut self.tasks;
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
        if let Some(reason) = ended_early {
            anyhow::bail!("a subscriber ended unexpectedly: {reason}");
        }
        Ok(Report {
            summary: runtime.summary(),
        })
    }

    /// The entries on the plugins' dead-letter streams, one line each: with
    /// the in-memory backend, the last chance to see them. Empty when none.
    pub async fn dead_letters(runtime: &Runtime) -> anyhow::Result<String> {
        let streams = runtime.dead_letter_streams();
        let mut out = String::new();
        for stream in streams {
            let entries = runtime.broker.range(&stream, None, None, 100).await?;
            if entries.is_empty() {
                continue;
            }
            out.push_str(&format!("\ndead letters on {stream}:\n"));
            for entry in &entries {
                let r = DeadLetterRecord::from_entry(entry);
                out.push_str(&format!(
                    "  {} plugin={} kind={} attempts={}: {}\n",
                    r.id, r.plugin, r.kind, r.attempts, r.reason
                ));
            }
        }
        Ok(out)
    }
}

impl Service {
    /// The key-value buckets the plugins are granted, with up to
    /// [`SHOWN_KEYS`] keys each and their values as text, one line per key:
    /// with the in-memory backend, the last chance to see them. Empty when
    /// no plugin has state.
    pub async fn key_values(runtime: &Runtime) -> anyhow::Result<String> {
        let mut out = String::new();
        for p in &runtime.plugins {
            // A shadow reads the state of the plugin it shadows: listed there.
            if p.config.shadow_of.is_some() {
                continue;
            }
            for (bucket, is_shared, storage) in
                crate::kv::granted_buckets(p.config.kv_namespace(), &p.config.grants)
            {
                let (mut keys, more) = runtime.broker.kv_scan(&storage, None, SHOWN_KEYS).await?;
                if keys.is_empty() {
                    continue;
                }
                keys.sort();
                keys.truncate(SHOWN_KEYS);
                let values = runtime.broker.kv_get(&storage, &keys).await?;
                let whose = if is_shared { "shared" } else { &p.config.name };
                out.push_str(&format!("\nkey-value bucket {bucket} ({whose}):\n"));
                for (key, value) in keys.iter().zip(values) {
                    let value = value.map_or("(deleted)".into(), |v| {
                        String::from_utf8_lossy(&v).into_owned()
                    });
                    out.push_str(&format!("  {key} = {value}\n"));
                }
                if more.is_some() {
                    out.push_str("  ...\n");
                }
            }
        }
        Ok(out)
    }
}

/// Most keys of a bucket [`Service::key_values`] lists.
pub const SHOWN_KEYS: usize = 20;

/// A service dropped without [`Service::run`] (an embedder's error path)
/// stops what it started.
impl Drop for Service {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Binds and serves the admin API if the options or the config ask for it.
async fn serve_admin(
    runtime: &Arc<Runtime>,
    options: &ServiceOptions,
    config_path: &std::path::Path,
    stop: &CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let admin_config = runtime.config.admin.as_ref();
    let listen = options
        .admin
        .map(|a| a.to_string())
        .or_else(|| admin_config.map(|a| a.listen.clone()));
    let Some(listen) = listen else {
        return Ok(None);
    };
    let token = match admin_config {
        Some(admin) => admin.token()?,
        None => None,
    };
    let addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("admin API: {listen:?} is not an address"))?;
    let allowed = admin_config.is_some_and(|a| a.allow_unauthenticated);
    if !addr.ip().is_loopback() && token.is_none() {
        if !allowed {
            anyhow::bail!(
                "admin API: refusing to listen on {addr} without a token, since anyone who reaches it could inject events and reload plugins: set [admin] token_env or token_file, listen on loopback, or set allow_unauthenticated = true"
            );
        }
        tracing::warn!("admin API on {addr} has no token (allow_unauthenticated = true): anyone who reaches it can inject events and reload plugins");
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("admin API: binding {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("admin API listening on http://{addr}");
    let admin = Arc::new(crate::service::admin::Admin {
        runtime: runtime.clone(),
        token,
        config_path: Some(config_path.to_path_buf()),
    });
    tokio::spawn(crate::service::admin::serve(listener, admin, stop.clone()));
    Ok(Some(addr))
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
