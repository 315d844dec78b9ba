//! One plugin loaded outside a runtime, for the tools that run it over
//! some events (`runnel test`, `runnel replay`).

use std::path::Path;
use std::sync::Arc;

use super::{Links, PluginEngine, PluginSettings, WasmPlugin};
use crate::kv::KvEffects;
use crate::routes::Routes;

/// A plugin loaded on its own, outside a runtime, for the tools that run one
/// plugin over some events (`runnel test`, `runnel replay`).
pub struct Standalone {
    pub plugin: WasmPlugin,
    /// Its key-value state, in memory, for this run only.
    kv: Arc<crate::kv::Store>,
    /// Kept alive after the plugin (fields drop in order): its epoch ticker
    /// is what enforces the time limit.
    _engine: PluginEngine,
}

impl Standalone {
    /// Loads `path` with room for a few instances; every event name routes
    /// to `sink`, so that what the plugin emits is captured, never refused.
    /// `settings` come from [`PluginSettings::for_tool`] or, to run it as a
    /// config does, [`PluginSettings::of`].
    pub fn load(
        path: &Path,
        name: &str,
        sink: &str,
        settings: PluginSettings,
    ) -> anyhow::Result<Standalone> {
        let engine = PluginEngine::new(&crate::config::EngineConfig::for_one_plugin())?;
        let routes = Arc::new(Routes::new([("*".to_string(), sink.to_string())]));
        let kv = crate::kv::Store::new(crate::broker::memory::MemoryBroker::new(1 << 16));
        let links = Links {
            routes,
            store: Some(kv.clone()),
        };
        let plugin = WasmPlugin::load(&engine, name, path, settings, links)?;
        Ok(Standalone {
            plugin,
            kv,
            _engine: engine,
        })
    }
}

impl Standalone {
    /// The name the plugin opens a bucket by, from its storage name.
    pub fn bucket_name<'a>(&'a self, storage: &'a str) -> &'a str {
        self.plugin
            .settings
            .kv_buckets
            .iter()
            .find(|(_, s)| s == storage)
            .map_or(storage, |(name, _)| name)
    }

    /// Writes keys of a granted bucket (`None` deletes), outside any call:
    /// state to start from, or a call's writes to keep.
    pub async fn write(
        &self,
        bucket: &str,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> anyhow::Result<()> {
        let Some((_, storage)) = self
            .plugin
            .settings
            .kv_buckets
            .iter()
            .find(|(n, _)| n == bucket)
        else {
            anyhow::bail!("bucket {bucket:?} is not granted: add --grant-kv {bucket}");
        };
        let commit = crate::kv::Commit {
            // No stream holds the event: nothing to check or acknowledge.
            source: None,
            effects: KvEffects {
                writes: writes
                    .into_iter()
                    .map(|(key, value)| crate::kv::KvWrite {
                        bucket: storage.clone(),
                        key,
                        value,
                    })
                    .collect(),
                ..Default::default()
            },
            appends: Vec::new(),
            mark: None,
        };
        match self.kv.commit(commit).await {
            Ok(crate::kv::Outcome::Committed) => Ok(()),
            Ok(other) => anyhow::bail!("writing bucket {bucket:?}: {other:?}"),
            Err(e) => Err(e.error.context(format!("writing bucket {bucket:?}"))),
        }
    }
}
