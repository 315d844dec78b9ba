//! Hot reload: new plugin versions are compiled off the serving path, vetted,
//! then swapped in atomically (see [`crate::service::live`]).
//!
//! A reload comes from a changed file (the watcher), the admin API, or a
//! config reload (SIGHUP). Whatever the trigger, the steps are the same:
//! compile (or load the cached artifact) on a blocking thread, check the
//! component against the world, instantiate it once, and only then install
//! it. Any failure is a refusal with the reason in the log and the admin
//! API, and the old version keeps serving.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PluginConfig};
use crate::plugin::PluginSettings;
use crate::plugin::{Links, PluginEngine, WasmPlugin};
use crate::service::live::{LivePlugin, Version};

/// Quiet time after the last change to a file before it is reloaded:
/// editors and build tools write a file in several steps.
const SETTLE: Duration = Duration::from_millis(250);

/// A plugin as the reloader knows it.
struct Slot {
    live: Arc<LivePlugin>,
    config: Mutex<PluginConfig>,
    /// One reload of a plugin at a time; different plugins reload in parallel.
    busy: tokio::sync::Mutex<()>,
}

impl Slot {
    fn config(&self) -> PluginConfig {
        self.config.lock().clone()
    }
}

/// What a successful reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    Swapped {
        from: String,
        to: String,
    },
    /// Same file, same settings: nothing to do.
    Unchanged {
        version: String,
    },
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no plugin is named {0:?}")]
    UnknownPlugin(String),
    #[error("{0}")]
    Refused(String),
}

/// Reloads the plugins of one runtime.
pub struct Reloader {
    engine: Arc<PluginEngine>,
    links: Links,
    /// The config's `max_payload_bytes`: the cap on what new versions emit.
    max_payload_bytes: usize,
    slots: HashMap<String, Slot>,
}

impl Reloader {
    pub fn new(
        engine: Arc<PluginEngine>,
        links: Links,
        max_payload_bytes: usize,
        plugins: impl IntoIterator<Item = (PluginConfig, Arc<LivePlugin>)>,
    ) -> Reloader {
        let slots = plugins
            .into_iter()
            .map(|(config, live)| {
                let slot = Slot {
                    live,
                    config: Mutex::new(config.clone()),
                    busy: Default::default(),
                };
                (config.name, slot)
            })
            .collect();
        Reloader {
            engine,
            links,
            max_payload_bytes,
            slots,
        }
    }

    /// Reloads a plugin from its file with its current settings.
    pub async fn reload(&self, name: &str) -> Result<Reloaded, ReloadError> {
        let slot = self.slot(name)?;
        let config = slot.config();
        self.reload_slot(slot, config).await
    }

    fn slot(&self, name: &str) -> Result<&Slot, ReloadError> {
        self.slots
            .get(name)
            .ok_or_else(|| ReloadError::UnknownPlugin(name.to_string()))
    }

    async fn reload_slot(
        &self,
        slot: &Slot,
        config: PluginConfig,
    ) -> Result<Reloaded, ReloadError> {
        let _busy = slot.busy.lock().await;
        let current = slot.live.current();
        let settings_changed = slot.config().reloadable_differs(&config);
        let result = self.build(&config).await;
        let plugin = match result {
            Ok(plugin) => plugin,
            Err(e) => {
                // The error names the file where it comes from reading it.
                let text = crate::errors::one_line(&e);
                let path = config.path.display().to_string();
                let reason = match text.starts_with(&format!("{path}:")) {
                    true => text,
                    false => format!("{path}: {text}"),
                };
                slot.live.refuse(reason.clone());
                return Err(ReloadError::Refused(reason));
            }
        };
        if plugin.sha256() == current.sha256 && !settings_changed {
            return Ok(Reloaded::Unchanged {
                version: current.short_hash().to_string(),
            });
        }
        let sha256 = plugin.sha256().to_string();
        let next = Version::new(plugin, sha256);
        let outcome = Reloaded::Swapped {
            from: current.short_hash().to_string(),
            to: next.short_hash().to_string(),
        };
        slot.live.install(next);
        let mut running = slot.config.lock();
        *running = running.with_reloadable_from(&config);
        Ok(outcome)
    }

    /// Compiles on a blocking thread (a large component takes seconds), then
    /// instantiates once.
    async fn build(&self, config: &PluginConfig) -> anyhow::Result<Arc<WasmPlugin>> {
        let (engine, links, config) = (self.engine.clone(), self.links.clone(), config.clone());
        let settings = PluginSettings::of(&config, self.max_payload_bytes);
        let plugin = tokio::task::spawn_blocking(move || {
            WasmPlugin::load(&engine, &config.name, &config.path, settings, links)
        })
        .await
        .context("the compiling thread failed")??;
        plugin
            .warm_up()
            .await
            .context("the new version cannot start")?;
        Ok(Arc::new(plugin))
    }

    /// Applies a re-read config: plugins whose file or run settings changed
    /// are reloaded; what only a restart can change is reported, not applied.
    /// Returns one line per plugin that was looked at.
    pub async fn apply(&self, config: &Config) -> Vec<String> {
        let mut report = Vec::new();
        for new in &config.plugins {
            let Ok(slot) = self.slot(&new.name) else {
                report.push(format!("{}: new plugin, restart to add it", new.name));
                continue;
            };
            let old = slot.config();
            let restart_only = old.restart_only_differences(new);
            if !restart_only.is_empty() {
                report.push(format!(
                    "{}: {} changed, restart to apply",
                    new.name,
                    restart_only.join(", ")
                ));
            }
            if old.reloadable_differs(new) {
                let line = match self.reload_slot(slot, new.clone()).await {
                    Ok(r) => format!("{}: {r:?}", new.name),
                    Err(e) => format!("{}: refused: {e}", new.name),
                };
                report.push(line);
            }
        }
        for name in self.slots.keys() {
            if !config.plugins.iter().any(|p| &p.name == name) {
                report.push(format!(
                    "{name}: removed from the config, restart to remove it"
                ));
            }
        }
        for line in &report {
            tracing::info!("config reload: {line}");
        }
        report
    }

    /// Makes a shadow's version the live one of the plugin it shadows, and
    /// detaches the shadow. Later reloads of the live plugin read the
    /// shadow's file.
    pub async fn promote(&self, shadow: &str) -> Result<Reloaded, ReloadError> {
        let slot = self.slot(shadow)?;
        let shadow_config = slot.config();
        let Some(live_name) = shadow_config.shadow_of.clone() else {
            return Err(ReloadError::Refused(format!(
                "{shadow:?} is not a shadow: nothing to promote"
            )));
        };
        let live = self.slot(&live_name)?;
        let _busy = live.busy.lock().await;
        if live.live.shadow().is_none() {
            return Err(ReloadError::Refused(format!(
                "{shadow:?} was already promoted"
            )));
        }
        let from = live.live.current().short_hash().to_string();
        let version = slot.live.current();
        let to = version.short_hash().to_string();
        live.live.set_shadow(None);
        live.live.install(version);
        let mut config = live.config.lock();
        *config = config.with_reloadable_from(&shadow_config);
        tracing::info!(plugin = %live_name, shadow = %shadow, "shadow promoted to live");
        Ok(Reloaded::Swapped { from, to })
    }

    /// Watches every plugin file and reloads a plugin once its file has been
    /// quiet for a moment. Runs until `shutdown`.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut files: HashMap<PathBuf, Vec<String>> = HashMap::new();
        for (name, slot) in &self.slots {
            let path = slot.config().path;
            files
                .entry(watched_key(&path))
                .or_default()
                .push(name.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // The receiver is gone only at shutdown.
                let _ = tx.send(event);
            })
            .context("starting the file watcher")?;
        let mut dirs: Vec<PathBuf> = files
            .keys()
            .filter_map(|f| f.parent().map(PathBuf::from))
            .collect();
        dirs.sort();
        dirs.dedup();
        // A watcher that watches nothing would look like one that works.
        if dirs.is_empty() {
            anyhow::bail!("no plugin file to watch");
        }
        // Directories, not files: editors and build tools replace a file by
        // renaming another over it, which a watch on the file itself misses.
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .with_context(|| format!("watching {}", dir.display()))?;
        }
        tokio::spawn(self.watch_loop(watcher, files, rx, shutdown));
        Ok(())
    }

    async fn watch_loop(
        self: Arc<Self>,
        _watcher: notify::RecommendedWatcher,
        files: HashMap<PathBuf, Vec<String>>,
        mut changes: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
        shutdown: CancellationToken,
    ) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        loop {
            let next = due.values().min().copied();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    None => return,
                    Some(Err(e)) => tracing::warn!("file watcher: {e}"),
                    Some(Ok(event)) => {
                        if matches!(event.kind, EventKind::Access(_) | EventKind::Remove(_)) {
                            continue;
                        }
                        for path in &event.paths {
                            for name in files.get(&watched_key(path)).into_iter().flatten() {
                                due.insert(name.clone(), Instant::now() + SETTLE);
                            }
                        }
                    }
                },
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    let ready: Vec<String> = due
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(name, _)| name.clone())
                        .collect();
                    for name in ready {
                        due.remove(&name);
                        match self.reload(&name).await {
                            Ok(Reloaded::Unchanged { .. }) => {}
                            Ok(r) => tracing::info!(plugin = %name, "file changed: {r:?}"),
                            // Already logged by the refusal.
                            Err(_) => {}
                        }
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A file's identity for matching watcher events: its directory resolved
/// (symlinks, `..`) joined with its name.
fn watched_key(path: &std::path::Path) -> PathBuf {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}
