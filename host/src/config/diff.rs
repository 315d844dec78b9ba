//! What a config reload can change in a running host, and what needs a
//! restart. Every field of [`PluginConfig`] is named here (the struct is
//! destructured), so a new field does not compile until it is put on one
//! side.

use super::PluginConfig;

/// What applies a change of a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applies {
    /// A reload: the file and how its instances run.
    Reload,
    /// Only a restart: what shapes the subscription.
    Restart,
}

impl PluginConfig {
    /// Whether a setting a reload can change differs: the file and how its
    /// instances run.
    pub fn reloadable_differs(&self, other: &PluginConfig) -> bool {
        self.differences(other)
            .iter()
            .any(|(_, applies)| *applies == Applies::Reload)
    }

    /// Names the settings that differ and that only a restart applies.
    pub fn restart_only_differences(&self, other: &PluginConfig) -> Vec<&'static str> {
        self.differences(other)
            .into_iter()
            .filter(|(_, applies)| *applies == Applies::Restart)
            .map(|(name, _)| name)
            .collect()
    }

    /// This config with the settings a reload applies taken from `newer`
    /// (the `Reload` side of `differences`: keep the two in step),
    /// and everything else (what only a restart applies) kept: what a
    /// running host is after a reload. Keeping the rest is what makes the
    /// next reload still report a restart-only change that was never
    /// applied.
    pub fn with_reloadable_from(&self, newer: &PluginConfig) -> PluginConfig {
        let PluginConfig {
            path,
            reuse_instance,
            timeout_ms,
            memory_mb,
            grants,
            strict_grants,
            fuel_per_call,
            fast_path,
            kv_limits,
            http_limits,
            config,
            ..
        } = newer.clone();
        PluginConfig {
            path,
            reuse_instance,
            timeout_ms,
            memory_mb,
            grants,
            strict_grants,
            fuel_per_call,
            fast_path,
            kv_limits,
            http_limits,
            config,
            ..self.clone()
        }
    }

    /// The settings that differ between two versions of a plugin's config,
    /// each with what applies it.
    fn differences(&self, other: &PluginConfig) -> Vec<(&'static str, Applies)> {
        use Applies::{Reload, Restart};
        let PluginConfig {
            name: _,
            path,
            streams,
            shadow_of,
            events,
            group,
            start,
            concurrency,
            max_attempts,
            backoff,
            reuse_instance,
            timeout_ms,
            memory_mb,
            grants,
            strict_grants,
            fuel_per_call,
            fast_path,
            breaker_failures,
            breaker_pause_ms,
            dedup_window_ms,
            kv_limits,
            http_limits,
            config,
            // Follows streams and shadow_of, checked here.
            kv_namespace: _,
        } = self;
        let mut out = Vec::new();
        let mut check = |name, applies, differs: bool| {
            if differs {
                out.push((name, applies));
            }
        };
        check("path", Reload, *path != other.path);
        check(
            "reuse_instance",
            Reload,
            *reuse_instance != other.reuse_instance,
        );
        check("timeout_ms", Reload, *timeout_ms != other.timeout_ms);
        check("memory_mb", Reload, *memory_mb != other.memory_mb);
        check("grants", Reload, *grants != other.grants);
        check(
            "strict_grants",
            Reload,
            *strict_grants != other.strict_grants,
        );
        check(
            "fuel_per_call",
            Reload,
            *fuel_per_call != other.fuel_per_call,
        );
        check("fast_path", Reload, *fast_path != other.fast_path);
        check("kv_limits", Reload, *kv_limits != other.kv_limits);
        check("http_limits", Reload, *http_limits != other.http_limits);
        check("config", Reload, *config != other.config);
        check("streams", Restart, *streams != other.streams);
        check("events", Restart, *events != other.events);
        check("group", Restart, *group != other.group);
        check("start", Restart, *start != other.start);
        check("shadow_of", Restart, *shadow_of != other.shadow_of);
        check("concurrency", Restart, *concurrency != other.concurrency);
        check("max_attempts", Restart, *max_attempts != other.max_attempts);
        check("backoff", Restart, *backoff != other.backoff);
        check(
            "breaker_*",
            Restart,
            (breaker_failures, breaker_pause_ms)
                != (&other.breaker_failures, &other.breaker_pause_ms),
        );
        check(
            "dedup_window_ms",
            Restart,
            *dedup_window_ms != other.dedup_window_ms,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn plugin(extra: &str) -> crate::config::PluginConfig {
        let text =
            format!("[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstreams = [\"s\"]\n{extra}\n");
        Config::parse(&text, Path::new("runnel.toml"))
            .unwrap()
            .plugins
            .remove(0)
    }

    #[test]
    fn each_setting_is_applied_by_a_reload_or_only_by_a_restart() {
        let base = plugin("");
        let faster = plugin("timeout_ms = 100");
        assert!(base.reloadable_differs(&faster));
        assert!(base.restart_only_differences(&faster).is_empty());
        let from_start = plugin("start = \"beginning\"\nconcurrency = 2");
        assert!(!base.reloadable_differs(&from_start));
        assert_eq!(
            base.restart_only_differences(&from_start),
            vec!["start", "concurrency"]
        );
    }

    #[test]
    fn a_reload_takes_every_reloadable_setting_and_nothing_else() {
        let base = plugin("");
        let mut newer = plugin("concurrency = 2");
        newer.path = "q.wasm".into();
        newer.reuse_instance = 7;
        newer.timeout_ms = 100;
        newer.memory_mb = 8;
        newer.grants.stdio = true;
        newer.strict_grants = true;
        newer.fuel_per_call = Some(1_000);
        newer.fast_path = false;
        assert_eq!(
            base.differences(&newer).len(),
            9,
            "every setting above differs"
        );
        let running = base.with_reloadable_from(&newer);
        assert!(!running.reloadable_differs(&newer));
        assert_eq!(
            running.restart_only_differences(&newer),
            vec!["concurrency"]
        );
    }
}
