//! How a plugin runs (limits and grants, derived from its config in one
//! place) and what its imports reach (routes, the key-value store).

use std::sync::Arc;
use std::time::Duration;

use crate::config::Grants;
use crate::kv::KvLimits;
use crate::outbound::{Allowlist, CannedResponses, HttpLimits};
use crate::routes::Routes;

/// How a plugin runs: limits and grants from its config.
#[derive(Clone, Debug)]
pub struct PluginSettings {
    pub reuse_instance: u32,
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub grants: Grants,
    /// Refuse at load a component importing a capability it was not granted
    /// (rather than deny its calls at run time).
    pub strict_grants: bool,
    /// Fuel one call may burn (the engine must count fuel).
    pub fuel: Option<u64>,
    /// Whether calls may take the synchronous fast path when the
    /// component's imports allow (`fast_path`).
    pub fast_path: bool,
    /// Largest payload of an emitted event, in bytes: what consumers of the
    /// same config accept (`max_payload_bytes`), so that a plugin cannot
    /// publish what nobody can read.
    pub max_emitted_payload: usize,
    /// Granted key-value buckets: the name the guest opens, and the
    /// storage name ([`crate::kv::bucket_storage`]).
    pub kv_buckets: Vec<(String, String)>,
    pub kv_limits: KvLimits,
    /// What `wasi:config/store` serves (`[plugin.config]`), secrets not yet
    /// read: they are read when the plugin loads.
    pub config: std::collections::BTreeMap<String, crate::config::ConfigValue>,
    /// Where its requests may go (`grants.http`, parsed).
    pub http_allow: Arc<Allowlist>,
    pub http_limits: HttpLimits,
    /// Answers to its requests instead of the network (`runnel test
    /// --http FILE`).
    pub http_canned: Option<Arc<CannedResponses>>,
}

impl PluginSettings {
    /// Settings for a plugin the tools run on its own (`runnel test`,
    /// `runnel replay`) under `name`, with these grants (`grants.http`
    /// parsed here: the error names the bad one) and 256 MiB of memory.
    pub fn for_tool(
        name: &str,
        timeout: Duration,
        grants: Grants,
        http_canned: Option<Arc<CannedResponses>>,
    ) -> anyhow::Result<PluginSettings> {
        let http_allow =
            Allowlist::parse(&grants.http).map_err(|e| anyhow::anyhow!("--grant-http {e}"))?;
        Ok(PluginSettings {
            memory_bytes: 256 << 20,
            kv_buckets: kv_buckets(name, &grants),
            grants,
            http_allow: Arc::new(http_allow),
            http_canned,
            ..PluginSettings::ungranted(1000, timeout)
        })
    }

    /// Settings for a plugin run outside a config (the tools, the bench,
    /// tests): no grants, the default limits, 64 MiB of memory.
    pub fn ungranted(reuse_instance: u32, timeout: Duration) -> PluginSettings {
        PluginSettings {
            reuse_instance,
            timeout,
            memory_bytes: 64 << 20,
            grants: Grants::default(),
            strict_grants: false,
            fuel: None,
            fast_path: true,
            max_emitted_payload: crate::config::DEFAULT_MAX_PAYLOAD_BYTES,
            kv_buckets: Vec::new(),
            kv_limits: KvLimits::default(),
            config: Default::default(),
            http_allow: Default::default(),
            http_limits: HttpLimits::default(),
            http_canned: None,
        }
    }

    /// How a plugin's config maps to how its instances run: the one place
    /// a runtime setting is derived from `[[plugin]]` (and the top-level
    /// `max_payload_bytes` its emits must respect).
    pub fn of(p: &crate::config::PluginConfig, max_payload_bytes: usize) -> PluginSettings {
        PluginSettings {
            reuse_instance: p.reuse_instance,
            timeout: Duration::from_millis(p.timeout_ms),
            memory_bytes: (p.memory_mb as usize) << 20,
            grants: p.grants.clone(),
            strict_grants: p.strict_grants,
            fuel: p.fuel_per_call,
            fast_path: p.fast_path,
            max_emitted_payload: max_payload_bytes,
            kv_buckets: kv_buckets(p.kv_namespace(), &p.grants),
            kv_limits: p.kv_limits,
            config: p.config.clone(),
            // Validation refused a config with a grant that does not parse.
            http_allow: Arc::new(Allowlist::parse(&p.grants.http).unwrap_or_default()),
            http_limits: p.http_limits,
            http_canned: None,
        }
    }
}

/// Granted buckets with their storage names, under `namespace` (the
/// plugin's name, or that of the plugin a shadow shadows).
fn kv_buckets(namespace: &str, grants: &Grants) -> Vec<(String, String)> {
    crate::kv::granted_buckets(namespace, grants)
        .map(|(name, _, storage)| (name.to_string(), storage))
        .collect()
}

/// What a plugin's imports reach outside it: the routes its emitted events
/// follow, and the store its key-value buckets live in (the broker, so that
/// writes commit with the event's ack).
#[derive(Clone)]
pub struct Links {
    pub routes: Arc<Routes>,
    /// `None`: no store; every bucket is denied whatever the grants.
    pub store: Option<Arc<crate::kv::Store>>,
}

impl Links {
    /// Links for a plugin that may emit along `routes` and has no store.
    pub fn routes_only(routes: Arc<Routes>) -> Links {
        Links {
            routes,
            store: None,
        }
    }
}
