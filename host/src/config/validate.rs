//! Validation of a parsed config: limits that must hold and settings that
//! must agree with each other, each refusal naming its key.

use super::{Backend, Config};

impl Config {
    /// Checks what deserializing cannot: `Err((key, reason))` for the first
    /// problem found.
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let mut names = std::collections::HashSet::new();
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err((
                "telemetry.sample_ratio".into(),
                "must be between 0.0 and 1.0".into(),
            ));
        }
        if let Backend::Memory { capacity: 0 } = self.backend {
            return Err(("backend.capacity".into(), "must be at least 1".into()));
        }
        if let Backend::Redis(r) = &self.backend {
            if r.count == 0 {
                return Err(("backend.count".into(), "must be at least 1".into()));
            }
            if r.block_ms == 0 {
                return Err(("backend.block_ms".into(), "must be at least 1".into()));
            }
            if r.max_len == 0 {
                return Err(("backend.max_len".into(), "must be at least 1".into()));
            }
            match (&r.url, r.cluster.is_empty()) {
                (Some(_), false) => {
                    return Err((
                        "backend.cluster".into(),
                        "and backend.url are both set: name one server (url) or a cluster's seed nodes (cluster)".into(),
                    ))
                }
                (None, true) => {
                    return Err((
                        "backend.url".into(),
                        "is missing: name one server (url = \"redis://host:6379\") or a cluster's seed nodes (cluster = [\"redis://host:7000\", ...])".into(),
                    ))
                }
                _ => {}
            }
            if r.tls != Default::default() && !r.endpoint().is_tls() {
                return Err((
                    "backend.tls".into(),
                    format!(
                        "is set, but {} not rediss://",
                        match r.url {
                            Some(_) => "backend.url is",
                            None => "the backend.cluster seeds are",
                        }
                    ),
                ));
            }
            if r.tls.cert_file.is_some() != r.tls.key_file.is_some() {
                return Err((
                    "backend.tls".into(),
                    "cert_file and key_file go together (mutual TLS)".into(),
                ));
            }
            if r.claim_min_idle_ms < 3 * r.block_ms {
                return Err((
                    "backend.claim_min_idle_ms".into(),
                    format!(
                        "must be at least 3 × block_ms ({}): a consumer busy in a read must not look dead",
                        3 * r.block_ms
                    ),
                ));
            }
        }
        if self.max_chain_depth == 0 {
            return Err(("max_chain_depth".into(), "must be at least 1".into()));
        }
        if self.max_payload_bytes == 0 {
            return Err(("max_payload_bytes".into(), "must be at least 1".into()));
        }
        if self.service.shutdown_deadline_ms == 0 {
            return Err((
                "service.shutdown_deadline_ms".into(),
                "must be at least 1".into(),
            ));
        }
        if let Some(admin) = &self.admin {
            if admin.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err((
                    "admin.listen".into(),
                    format!("{:?} is not an address like 127.0.0.1:9464", admin.listen),
                ));
            }
            if admin.token_env.is_some() && admin.token_file.is_some() {
                return Err((
                    "admin.token_file".into(),
                    "set token_env or token_file, not both".into(),
                ));
            }
        }
        // A plugin holds at most `concurrency` instances (calls take a permit
        // before an instance), so this bound makes the pool impossible to
        // exhaust: a busy plugin's events wait for its permits, never fail
        // for want of an instance slot. Unset, the pool is sized to fit.
        if let Some(max) = self.engine.max_instances {
            if max == 0 {
                return Err(("engine.max_instances".into(), "must be at least 1".into()));
            }
            let wanted: u64 = self.plugins.iter().map(|p| u64::from(p.concurrency)).sum();
            if wanted > u64::from(max) {
                return Err((
                    "engine.max_instances".into(),
                    format!(
                        "is {max}, but the plugins' concurrency adds up to {wanted}: raise it, leave it unset (it then fits them), or lower a plugin's concurrency"
                    ),
                ));
            }
        }
        if !self.dead_letter.contains("{stream}") {
            return Err((
                "dead_letter".into(),
                "must contain {stream}, or every stream's failures would mix".into(),
            ));
        }
        for (name, stream) in self.routes.iter() {
            if stream.is_empty() {
                return Err((format!("routes.{name}"), "stream name is empty".into()));
            }
        }
        for (i, p) in self.plugins.iter().enumerate() {
            let key = |field: &str| format!("plugin[{i}] ({}).{field}", p.name);
            let at_least_one = |field: &str, v: u64| {
                if v == 0 {
                    Err((key(field), "must be at least 1".to_string()))
                } else {
                    Ok(())
                }
            };
            if p.name.is_empty() {
                return Err((format!("plugin[{i}].name"), "must not be empty".into()));
            }
            if !names.insert(p.name.clone()) {
                return Err((key("name"), "another plugin has this name".into()));
            }
            match &p.shadow_of {
                None if p.streams.is_empty() => {
                    return Err((key("streams"), "name at least one stream".into()));
                }
                None => {}
                Some(_) if !p.streams.is_empty() => {
                    return Err((
                        key("streams"),
                        "a shadow reads its live plugin's events, not streams of its own".into(),
                    ));
                }
                Some(live) => {
                    let target = self.plugins.iter().find(|q| &q.name == live);
                    match target {
                        None => {
                            return Err((key("shadow_of"), format!("no plugin is named {live:?}")))
                        }
                        Some(t) if t.shadow_of.is_some() => {
                            return Err((key("shadow_of"), format!("{live:?} is a shadow itself")))
                        }
                        Some(_) => {}
                    }
                }
            }
            at_least_one("concurrency", p.concurrency.into())?;
            at_least_one("max_attempts", p.max_attempts.into())?;
            at_least_one("reuse_instance", p.reuse_instance.into())?;
            at_least_one("timeout_ms", p.timeout_ms)?;
            at_least_one("memory_mb", p.memory_mb.into())?;
            if let Some(fuel) = p.fuel_per_call {
                at_least_one("fuel_per_call", fuel)?;
                if !self.engine.fuel {
                    return Err((
                        key("fuel_per_call"),
                        "needs fuel counting: set `fuel = true` under [engine]".into(),
                    ));
                }
            }
            if p.breaker_failures > 0 {
                at_least_one("breaker_pause_ms", p.breaker_pause_ms)?;
            }
            if let Some(window) = p.dedup_window_ms {
                at_least_one("dedup_window_ms", window)?;
            }
            if !(p.backoff.multiplier.is_finite() && p.backoff.multiplier >= 1.0) {
                return Err((key("backoff.multiplier"), "must be a number ≥ 1".into()));
            }
            if p.backoff.initial_ms > p.backoff.max_ms {
                return Err((key("backoff.initial_ms"), "is larger than max_ms".into()));
            }
            for (field, buckets) in [
                ("grants.kv", &p.grants.kv),
                ("grants.kv_shared", &p.grants.kv_shared),
            ] {
                if let Some(bad) = buckets.iter().find(|b| !crate::kv::valid_bucket_name(b)) {
                    return Err((
                        key(field),
                        format!("{bad:?} is not a bucket name (1 to 64 of A-Z a-z 0-9 . _ -)"),
                    ));
                }
            }
            if let Some(both) = p.grants.kv.iter().find(|b| p.grants.kv_shared.contains(b)) {
                return Err((
                    key("grants.kv_shared"),
                    format!("{both:?} is in kv too: a bucket is either the plugin's own or shared"),
                ));
            }
            let on_cluster = matches!(&self.backend, Backend::Redis(r) if r.url.is_none());
            if on_cluster && p.shadow_of.is_none() {
                cluster_commits_fit_a_slot(p).map_err(|reason| (key("streams"), reason))?;
            }
            let limits = &p.kv_limits;
            at_least_one("kv_limits.max_key_bytes", limits.max_key_bytes as u64)?;
            at_least_one("kv_limits.max_value_bytes", limits.max_value_bytes as u64)?;
            at_least_one("kv_limits.max_ops_per_call", limits.max_ops_per_call.into())?;
            at_least_one("kv_limits.page_keys", limits.page_keys as u64)?;
            at_least_one(
                "kv_limits.max_write_bytes_per_call",
                limits.max_write_bytes_per_call as u64,
            )?;
            crate::outbound::Allowlist::parse(&p.grants.http)
                .map_err(|e| (key("grants.http"), e))?;
            let limits = &p.http_limits;
            at_least_one(
                "http_limits.max_requests_per_call",
                limits.max_requests_per_call.into(),
            )?;
            at_least_one("http_limits.max_response_bytes", limits.max_response_bytes)?;
            at_least_one("http_limits.max_request_bytes", limits.max_request_bytes)?;
            at_least_one("http_limits.connect_timeout_ms", limits.connect_timeout_ms)?;
        }
        Ok(())
    }
}

impl Config {
    /// What a Redis Cluster cannot commit in one step for this config, one
    /// line each (empty elsewhere): a stateful plugin's emits routed to a
    /// stream outside its streams' hash tag are appended before the commit
    /// of its state, at least once rather than exactly once.
    pub fn cluster_warnings(&self) -> Vec<String> {
        let on_cluster = matches!(&self.backend, Backend::Redis(r) if r.url.is_none());
        let mut out = Vec::new();
        for p in self
            .plugins
            .iter()
            .filter(|p| on_cluster && p.shadow_of.is_none())
        {
            if p.grants.kv.is_empty() {
                continue;
            }
            let tag = crate::broker::redis::slots::common_tag(&p.streams);
            let apart: Vec<&str> = self
                .routes
                .iter()
                .filter(|(_, stream)| crate::broker::redis::slots::tag_prefix(stream) != tag)
                .map(|(_, stream)| stream.as_str())
                .collect();
            if !apart.is_empty() {
                out.push(format!(
                    "plugin {:?}: on a Redis Cluster, events it emits to {} (outside its hash tag {tag}) are appended just before its state commits, at least once rather than exactly once; name them {tag}... to commit them with its state",
                    p.name,
                    apart.join(", ")
                ));
            }
        }
        out
    }
}

/// On a Redis Cluster, a key-value commit is one script on one master: the
/// plugin's source streams, their replay streams, its idempotency marks
/// and its buckets must share a hash slot. Runnel derives the names of
/// the last three from the streams' hash tag, so the streams must share
/// one; a bucket shared between plugins has no stream to take it from.
/// (Emits to other slots do not need it: they are appended before the
/// commit, at least once.)
fn cluster_commits_fit_a_slot(p: &super::PluginConfig) -> Result<(), String> {
    if p.grants.kv.is_empty() && p.grants.kv_shared.is_empty() {
        return Ok(());
    }
    if let Some(shared) = p.grants.kv_shared.first() {
        return Err(format!(
            "on a Redis Cluster a bucket shared between plugins ({shared:?} in grants.kv_shared) cannot commit with their streams' acks in one step, as they live in other hash slots; grant each plugin its own bucket (grants.kv) instead"
        ));
    }
    if crate::broker::redis::slots::common_tag(&p.streams).is_empty() {
        return Err(format!(
            "on a Redis Cluster the streams of a plugin with key-value state must share one hash tag, so that its state, marks and acks commit in one slot: name them like {{orders}} or {{orders}}.created rather than {}",
            p.streams.join(", ")
        ));
    }
    Ok(())
}
