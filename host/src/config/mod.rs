//! `runnel.toml`: the backend, the plugins and the routes of emitted events.
//!
//! This module holds the schema and the reading of the file; `validate.rs`
//! checks what deserializing cannot, and `diff.rs` says what a config reload
//! can change.
//!
//! Every struct denies unknown keys, and every error names the file, the key
//! and the reason in one line, because a typo in a service's config should
//! stop it at start-up, not silently change what it does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::broker::StartFrom;
use crate::routes::Routes;

mod diff;
mod locate;
mod validate;

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub backend: Backend,
    #[serde(default)]
    pub engine: EngineConfig,
    /// Event name → stream, for events that plugins emit.
    #[serde(default)]
    pub routes: Routes,
    /// Where failed events go: `{stream}` is replaced by the source stream.
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    /// Largest payload accepted, in bytes; a larger entry is dead-lettered
    /// undecoded rather than parsed and copied into a plugin.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// How far down a causal chain an event may be (an event emitted while
    /// handling an event emitted while handling ...) before it is
    /// dead-lettered without a call: a bound on cycles through plugins,
    /// which would otherwise run until trimming drops what slower groups
    /// had not read.
    #[serde(default = "default_max_chain_depth")]
    pub max_chain_depth: u32,
    #[serde(default)]
    pub service: ServiceConfig,
    /// OpenTelemetry traces (off unless it names an endpoint).
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The admin HTTP API; off unless this section is present.
    pub admin: Option<AdminConfig>,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
}

/// How `runnel run` behaves as a long-lived service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// After SIGTERM/SIGINT, how long in-flight events may take to finish
    /// and be acked before the process exits anyway (what is unfinished
    /// stays pending for another consumer).
    pub shutdown_deadline_ms: u64,
    /// Reload a plugin when its file changes.
    pub watch_plugins: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_deadline_ms: 30_000,
            watch_plugins: true,
        }
    }
}

/// Where the admin API listens and who may call it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Loopback by default: the API can reload code, so exposing it is a
    /// decision, not an accident.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Environment variable holding a bearer token every request must carry
    /// (`Authorization: Bearer ...`). Kept out of the file so that configs
    /// can be committed.
    pub token_env: Option<String>,
    /// A file holding the token (surrounding whitespace ignored), as secret
    /// stores mount them; relative to the config file.
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without a token. Refused otherwise, as Redis's
    /// protected mode does; when set, every start warns.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

impl AdminConfig {
    /// The bearer token, from `token_env` or `token_file`; `None` when
    /// neither is set. The token itself never appears in an error or log.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let token = match (&self.token_env, &self.token_file) {
            (Some(var), _) => std::env::var(var)
                .map_err(|_| anyhow::anyhow!("admin.token_env names {var:?}, which is not set"))?,
            (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("admin.token_file {}: cannot read: {e}", file.display())
            })?,
            (None, None) => return Ok(None),
        };
        let token = token.trim();
        if token.is_empty() {
            anyhow::bail!("admin token is empty (admin.token_env or admin.token_file)");
        }
        Ok(Some(token.to_string()))
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9464".into()
}

fn default_dead_letter() -> String {
    "{stream}.dead".to_string()
}

fn default_max_chain_depth() -> u32 {
    32
}

/// `max_payload_bytes` when the config does not set it: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 << 20;

fn default_max_payload_bytes() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}

/// Which pub/sub backend to run on.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backend {
    /// In-process streams: the embedded default, for one process.
    Memory {
        /// Unfinished entries a stream holds before appends wait.
        #[serde(default = "default_capacity")]
        capacity: usize,
    },
    /// Redis Streams: several processes share the work through groups.
    Redis(Box<RedisConfig>),
}

/// How to use Redis Streams.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://...` for TLS
    /// (see `tls`): one Redis server. Exactly one of `url` and `cluster`.
    pub url: Option<String>,
    /// A Redis Cluster, named by some of its nodes (seeds, in the same URL
    /// form, without a database): `["redis://10.0.0.1:6379",
    /// "redis://10.0.0.2:6379"]`. The rest of the cluster is learnt from
    /// the first that answers; every other setting means what it means for
    /// one server.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// TLS for a `rediss://` URL: `ca_file`, `cert_file` + `key_file`
    /// (mutual TLS), `insecure_skip_verify`. Paths are relative to this
    /// file. Without it the server is verified against the system's roots.
    #[serde(default)]
    pub tls: crate::broker::redis::TlsFiles,
    /// This process's consumer name in every group; by default host, pid and
    /// a random suffix, unique per process as consumer groups need.
    pub consumer: Option<String>,
    /// Prefix of the plugins' default group names (`{group}.{plugin}`), so
    /// that several deployments can read the same streams independently.
    pub group: Option<String>,
    /// Entries per `XREADGROUP` (`COUNT`).
    #[serde(default = "default_count")]
    pub count: usize,
    /// How long an `XREADGROUP` waits for entries (`BLOCK`), in ms.
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// Entries pending this long are taken over from their consumer,
    /// presumed dead. Running handlers keep theirs fresh, so this only has to
    /// outlast a few keep-alive rounds (a third of it each), not a handler.
    #[serde(default = "default_claim_min_idle_ms")]
    pub claim_min_idle_ms: u64,
    /// When a plugin's subscriber starts, consumers of its group idle this
    /// long (ms) and holding no pending entries are removed: each restart
    /// leaves one behind (the name carries the pid). 0: never.
    #[serde(default = "default_forget_idle_consumers_ms")]
    pub forget_idle_consumers_ms: u64,
    /// `MAXLEN` of every stream Runnel appends to.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// Per-stream `MAXLEN` overrides.
    #[serde(default)]
    pub max_len_per_stream: std::collections::HashMap<String, u64>,
    /// `MAXLEN ~` (cheap, trims whole nodes) rather than exact trimming.
    #[serde(default = "default_true")]
    pub approximate_trim: bool,
}

impl RedisConfig {
    /// The server or cluster the config names (validated: exactly one).
    pub fn endpoint(&self) -> crate::broker::redis::Endpoint {
        use crate::broker::redis::Endpoint;
        match &self.url {
            Some(url) => Endpoint::Server(url.clone()),
            None => Endpoint::Cluster(self.cluster.clone()),
        }
    }
}

fn default_count() -> usize {
    128
}
fn default_block_ms() -> u64 {
    2_000
}
fn default_claim_min_idle_ms() -> u64 {
    60_000
}
fn default_forget_idle_consumers_ms() -> u64 {
    3_600_000
}
fn default_max_len() -> u64 {
    crate::broker::redis::DEFAULT_MAX_LEN
}
fn default_true() -> bool {
    true
}

/// Unfinished entries a stream of the memory backend holds before `append`
/// waits (backpressure), unless the config says otherwise.
pub const DEFAULT_MEMORY_CAPACITY: usize = 1024;

fn default_capacity() -> usize {
    DEFAULT_MEMORY_CAPACITY
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Memory {
            capacity: default_capacity(),
        }
    }
}

/// The smallest instance pool a service gets when `[engine] max_instances`
/// is not set: room for hot swaps and for plugins that raise their
/// concurrency in a reload. Slots cost address space, not memory, until
/// used.
pub const DEFAULT_MAX_INSTANCES: u32 = 256;

/// Settings shared by every plugin of the process.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Where compiled plugins are cached by content hash. Defaults to
    /// `$XDG_CACHE_HOME/runnel` or `~/.cache/runnel`.
    pub cache_dir: Option<PathBuf>,
    /// Instances alive at once across all plugins (the pooling allocator's
    /// size). Events wait for a slot rather than fail. Unset, it is the
    /// plugins' `concurrency` added up, and at least
    /// [`DEFAULT_MAX_INSTANCES`]: a config always fits its pool, however
    /// many plugins it has; [`Config::parse`] fills it in.
    pub max_instances: Option<u32>,
    /// Count executed instructions (fuel) so that plugins may set
    /// `fuel_per_call`: a deterministic limit, unlike wall time. Costs every
    /// plugin of the process some speed, hence off by default.
    pub fuel: bool,
}

impl EngineConfig {
    /// An engine for tools that run one plugin alone (`runnel check`,
    /// `test`, `replay`): room for a few instances, not a service's pool.
    pub fn for_one_plugin() -> EngineConfig {
        EngineConfig {
            max_instances: Some(4),
            ..EngineConfig::default()
        }
    }
}

/// One plugin: which component, which events, and how to run it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    /// The component file; relative paths are relative to the config file.
    pub path: PathBuf,
    /// Streams to consume (none for a shadow).
    #[serde(default)]
    pub streams: Vec<String>,
    /// Makes this plugin a shadow of the named one: it gets a dry-run copy
    /// of each of that plugin's events, and its output is compared, never
    /// published.
    pub shadow_of: Option<String>,
    /// Event names to handle (`*` suffix matches a prefix); empty means all.
    /// Other events on the streams are acknowledged without a call.
    #[serde(default)]
    pub events: Vec<String>,
    /// Consumer group; defaults to the plugin's name, so each plugin gets
    /// every event of its streams.
    pub group: Option<String>,
    #[serde(default)]
    pub start: StartFrom,
    /// Calls running at once. A permit is taken before an instance is.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Attempts before an event is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Events a warm instance handles before it is replaced (1: a fresh
    /// instance per event). A trap always discards the instance.
    #[serde(default = "default_reuse")]
    pub reuse_instance: u32,
    /// Time limit of one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear memory an instance may grow to, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    #[serde(default)]
    pub grants: Grants,
    /// Refuse to load the plugin if it imports a capability (files,
    /// environment, stdio, wall clock, network) that `grants` does not open.
    /// Off by default because toolchains import WASI whether or not the
    /// code uses it; denied calls fail at run time either way.
    #[serde(default)]
    pub strict_grants: bool,
    /// Fuel (roughly, wasm instructions) one call may burn before it fails
    /// as a timeout; needs `[engine] fuel = true`. The same event then
    /// always stops at the same point, whatever the machine's load.
    pub fuel_per_call: Option<u64>,
    /// Call the plugin without a fiber first when its imports allow (no
    /// key-value, HTTP or sockets, no granted directories): cheaper by a few
    /// hundred ns a call; a call that waits or runs past 10-20 ms is run
    /// again on a fiber (ARCHITECTURE.md, "Call"), and lines it wrote to a
    /// granted stdio stream may then appear twice. `false` calls it on a
    /// fiber always.
    #[serde(default = "default_true")]
    pub fast_path: bool,
    /// Failed calls in a row (retry, trap, timeout) that trip the plugin's
    /// circuit breaker: its events then wait, pending, for
    /// `breaker_pause_ms` before one probe call. 0 turns it off.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    #[serde(default = "default_breaker_pause_ms")]
    pub breaker_pause_ms: u64,
    /// Idempotency: an event id this plugin handled successfully within this
    /// many milliseconds is acknowledged without a call (a redelivery after a
    /// lost ack, a producer's retry). Off by default.
    pub dedup_window_ms: Option<u64>,
    /// Bounds on a call's use of its key-value buckets.
    #[serde(default)]
    pub kv_limits: crate::kv::KvLimits,
    /// Bounds on a call's outbound HTTP.
    #[serde(default)]
    pub http_limits: crate::outbound::HttpLimits,
    /// What the plugin reads through `wasi:config/store`: keys to plain
    /// strings, or to secrets read when the plugin loads (see
    /// [`ConfigValue`]).
    #[serde(default)]
    pub config: std::collections::BTreeMap<String, ConfigValue>,
    /// Where its own key-value buckets are stored (derived when the config
    /// is parsed; see [`PluginConfig::kv_namespace`]).
    #[serde(skip)]
    pub kv_namespace: String,
}

impl PluginConfig {
    /// The namespace of its own key-value buckets
    /// ([`crate::kv::bucket_storage`]): the name of the plugin (for a
    /// shadow, of the plugin it shadows, whose state it reads), after the
    /// Redis Cluster hash tag its streams share, if they share one
    /// (`{orders}:enricher`), so that its state lives in their slot and
    /// commits with their acks in one step.
    pub fn kv_namespace(&self) -> &str {
        match self.kv_namespace.is_empty() {
            true => self.shadow_of.as_deref().unwrap_or(&self.name),
            false => &self.kv_namespace,
        }
    }
}

/// A value of a plugin's `[plugin.config]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ConfigValue {
    /// A plain string, as written.
    Plain(String),
    /// A secret: the named environment variable, read when the plugin
    /// loads (`{ env = "PAYMENTS_TOKEN" }`).
    Env { env: String },
    /// A secret: a file's contents without a trailing newline, read when
    /// the plugin loads (`{ file = "token.txt" }`, relative to the config
    /// file).
    File { file: PathBuf },
}

fn default_breaker_failures() -> u32 {
    20
}
fn default_breaker_pause_ms() -> u64 {
    5_000
}
fn default_concurrency() -> u32 {
    4
}
fn default_max_attempts() -> u32 {
    5
}
fn default_reuse() -> u32 {
    1000
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_memory_mb() -> u32 {
    64
}

/// Exponential backoff between attempts: `initial_ms * multiplier^(n-1)`,
/// capped at `max_ms`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 100,
            max_ms: 30_000,
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let ms = (self.initial_ms as f64 * factor).min(self.max_ms as f64);
        Duration::from_millis(ms as u64)
    }
}

/// What a plugin may reach beyond the `host` interface. Nothing by default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// The plugin's stdout and stderr go to the host's.
    pub stdio: bool,
    /// Environment variables passed through by name.
    pub env: Vec<String>,
    /// Host directories the plugin may open.
    pub dirs: Vec<DirGrant>,
    /// The real wall clock instead of one frozen at the event's time.
    pub clock: bool,
    /// Key-value buckets the plugin may open (`wasi:keyvalue`), its own:
    /// no other plugin sees them. A shadow reads those of the plugin it
    /// shadows (and never writes).
    pub kv: Vec<String>,
    /// Key-value buckets shared with every plugin that lists the same name
    /// here.
    pub kv_shared: Vec<String>,
    /// Where the plugin may send HTTP requests (`wasi:http`): scheme, host
    /// and optional port, `*.` for subdomains, `:*` for any port
    /// (`["https://api.example.com", "http://127.0.0.1:8080",
    /// "https://*.example.org"]`); see [`crate::outbound::HttpGrant`].
    pub http: Vec<String>,
}

/// A host directory made visible to a plugin.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

/// A configuration error: the file, the key and the reason.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a config file. Every path in it (plugins,
    /// directory grants, the admin token file, the compile cache) becomes
    /// absolute, relative to the config file's directory, however the file
    /// itself was named (`runnel.toml`, `./runnel.toml`, `/etc/...`): a bare
    /// file name has an empty parent, and a file watcher cannot watch "".
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            reason: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse(&text, path)?;
        let absolute = std::path::absolute(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            reason: format!("cannot tell where it is: {e}"),
        })?;
        let base = absolute.parent().unwrap_or(Path::new("/"));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for plugin in &mut config.plugins {
            resolve(&mut plugin.path);
            for dir in &mut plugin.grants.dirs {
                resolve(&mut dir.host);
            }
            for value in plugin.config.values_mut() {
                if let ConfigValue::File { file } = value {
                    resolve(file);
                }
            }
        }
        if let Some(file) = config.admin.as_mut().and_then(|a| a.token_file.as_mut()) {
            resolve(file);
        }
        if let Some(dir) = config.engine.cache_dir.as_mut() {
            resolve(dir);
        }
        if let Backend::Redis(redis) = &mut config.backend {
            let tls = &mut redis.tls;
            for file in [&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file] {
                if let Some(file) = file.as_mut() {
                    resolve(file);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates config text; `file` only names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string().replace('?', "");
            let reason = e.inner().message().trim().to_string();
            let line = e.inner().span().map(|span| {
                let line = locate::line_of(text, span.start);
                locate::unknown_key_line(text, line, &reason).unwrap_or(line)
            });
            ConfigError {
                file: file.to_path_buf(),
                line,
                reason: locate::explain(&key, reason),
                key,
            }
        })?;
        let mut config = config;
        let tags: std::collections::HashMap<String, String> = config
            .plugins
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    crate::broker::redis::slots::common_tag(&p.streams),
                )
            })
            .collect();
        for p in &mut config.plugins {
            let live = p.shadow_of.clone().unwrap_or_else(|| p.name.clone());
            p.kv_namespace = match tags.get(&live).map(String::as_str) {
                Some("") | None => live,
                Some(tag) => format!("{tag}:{live}"),
            };
        }
        config.validate().map_err(|(key, reason)| ConfigError {
            file: file.to_path_buf(),
            line: None,
            key,
            reason,
        })?;
        if config.engine.max_instances.is_none() {
            let wanted: u64 = config
                .plugins
                .iter()
                .map(|p| u64::from(p.concurrency))
                .sum();
            let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
            config.engine.max_instances = Some(wanted.max(DEFAULT_MAX_INSTANCES));
        }
        Ok(config)
    }

    /// The consumer group a plugin reads through: its own `group`, else
    /// `{backend group}.{plugin}`, else the plugin's name.
    pub fn group_of(&self, plugin: &PluginConfig) -> String {
        let prefix = match &self.backend {
            Backend::Redis(redis) => redis.group.as_ref(),
            Backend::Memory { .. } => None,
        };
        match (&plugin.group, prefix) {
            (Some(group), _) => group.clone(),
            (None, Some(prefix)) => format!("{prefix}.{}", plugin.name),
            (None, None) => plugin.name.clone(),
        }
    }

    /// The dead-letter stream of a source stream.
    pub fn dead_letter_stream(&self, stream: &str) -> String {
        self.dead_letter.replace("{stream}", stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("runnel.toml"))
    }

    const MINIMAL: &str = r#"
[[plugin]]
name = "p"
path = "p.wasm"
streams = ["s"]
"#;

    #[test]
    fn defaults_fill_everything_but_the_plugin_essentials() {
        let c = parse(MINIMAL).unwrap();
        assert!(matches!(c.backend, Backend::Memory { capacity: 1024 }));
        let p = &c.plugins[0];
        assert_eq!((p.concurrency, p.max_attempts), (4, 5));
        assert_eq!(c.group_of(p), "p");
        assert!(!p.grants.stdio && p.grants.env.is_empty() && p.grants.dirs.is_empty());
    }

    #[test]
    fn an_unknown_key_names_file_line_key_and_reason() {
        let err = parse(&format!("{MINIMAL}concurency = 3\n")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("runnel.toml:"), "{text}");
        assert!(text.contains("concurency"), "{text}");
        assert_eq!(err.line, Some(6), "{text}");
    }

    #[test]
    fn a_backend_typo_names_the_line_of_the_key_and_what_kind_may_be() {
        let err = parse("[backend]\nkind = \"redis\"\nurll = \"redis://127.0.0.1\"\n").unwrap_err();
        assert_eq!(err.line, Some(3), "{err}");
        assert!(err.reason.contains("`urll`"), "{err}");
        let err = parse("[backend]\nkidn = \"redis\"\n").unwrap_err();
        assert_eq!(err.key, "backend", "{err}");
        assert!(
            err.reason.contains(r#"kind = "memory" or kind = "redis""#),
            "{err}"
        );
    }

    #[test]
    fn a_negative_number_is_refused_with_its_key() {
        let err = parse(&format!("{MINIMAL}max_attempts = -1\n")).unwrap_err();
        assert_eq!(err.key, "plugin[0].max_attempts", "{err}");
        assert!(err.reason.contains("-1"), "{err}");
    }

    #[test]
    fn a_zero_limit_is_refused_by_validation() {
        let err = parse(&format!("{MINIMAL}concurrency = 0\n")).unwrap_err();
        assert_eq!(err.key, "plugin[0] (p).concurrency");
        assert_eq!(err.reason, "must be at least 1");
    }

    #[test]
    fn redis_settings_are_checked_against_each_other() {
        let c = parse(&format!(
            "[backend]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\ngroup = \"billing\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.group_of(&c.plugins[0]), "billing.p");
        let err = parse(
            "[backend]\nkind = \"redis\"\nurl = \"redis://x\"\nblock_ms = 5000\nclaim_min_idle_ms = 6000\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "backend.claim_min_idle_ms", "{err}");
    }

    #[test]
    fn a_cluster_is_named_by_seeds_and_stateful_plugins_need_one_hash_tag() {
        let cluster = "[backend]\nkind = \"redis\"\ncluster = [\"redis://127.0.0.1:7000\"]\n";
        let err = parse(&format!(
            "[backend]\nkind = \"redis\"\nurl = \"redis://x\"\ncluster = [\"redis://y\"]\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(err.key, "backend.cluster", "{err}");
        let err = parse(&format!("[backend]\nkind = \"redis\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(err.key, "backend.url", "{err}");
        // Stateless plugins read any streams.
        parse(&format!("{cluster}{MINIMAL}")).unwrap();
        let stateful = |streams: &str, grants: &str| {
            parse(&format!(
                "{cluster}[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstreams = {streams}\ngrants = {grants}\n"
            ))
        };
        let err = stateful(r#"["orders"]"#, r#"{ kv = ["c"] }"#).unwrap_err();
        assert_eq!(err.key, "plugin[0] (p).streams", "{err}");
        assert!(err.reason.contains("hash tag"), "{err}");
        let err = stateful(r#"["{o}", "{o}.x"]"#, r#"{ kv_shared = ["c"] }"#).unwrap_err();
        assert!(err.reason.contains("kv_shared"), "{err}");
        let c = stateful(r#"["{o}", "{o}.x"]"#, r#"{ kv = ["c"] }"#).unwrap();
        assert_eq!(c.plugins[0].kv_namespace(), "{o}:p");
        assert!(c.cluster_warnings().is_empty());
        let routed = |to: &str| {
            parse(&format!(
                "{cluster}[routes]\n\"x\" = \"{to}\"\n[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstreams = [\"{{o}}\"]\ngrants = {{ kv = [\"c\"] }}\n"
            ))
            .unwrap()
            .cluster_warnings()
        };
        assert!(routed("{o}.out").is_empty());
        let warned = routed("invoices");
        assert_eq!(warned.len(), 1);
        assert!(
            warned[0].contains("invoices") && warned[0].contains("at least once"),
            "{warned:?}"
        );
        // On one server the same config is fine, and untagged names keep
        // the plugin's name as their namespace.
        let one = "[backend]\nkind = \"redis\"\nurl = \"redis://x\"\n";
        let c = parse(&format!(
            "{one}[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstreams = [\"orders\"]\ngrants = {{ kv = [\"c\"] }}\n"
        ))
        .unwrap();
        assert_eq!(c.plugins[0].kv_namespace(), "p");
    }

    #[test]
    fn an_unset_instance_pool_fits_every_plugins_concurrency() {
        let plugin = |i: usize| MINIMAL.replace("\"p\"", &format!("\"p{i}\""));
        let few = parse(&format!("{MINIMAL}concurrency = 4\n")).unwrap();
        assert_eq!(few.engine.max_instances, Some(DEFAULT_MAX_INSTANCES));
        // 100 plugins of concurrency 4: more than the default holds.
        let many: String = (0..100)
            .map(|i| format!("{}concurrency = 4\n", plugin(i)))
            .collect();
        let many = parse(&many).unwrap();
        assert_eq!(many.plugins.len(), 100);
        assert_eq!(many.engine.max_instances, Some(400));
    }

    #[test]
    fn the_instance_pool_must_fit_every_plugins_concurrency() {
        let two = format!(
            "[engine]\nmax_instances = 6\n{MINIMAL}concurrency = 4\n{}concurrency = 4\n",
            MINIMAL.replace("\"p\"", "\"q\"")
        );
        let err = parse(&two).unwrap_err();
        assert_eq!(err.key, "engine.max_instances");
        assert!(err.reason.contains("adds up to 8"), "{err}");
    }

    #[test]
    fn routes_prefer_the_longest_matching_pattern() {
        let c = parse(
            r#"
[routes]
"order.*" = "orders"
"order.enriched" = "enriched"
"#,
        )
        .unwrap();
        assert_eq!(c.routes.route("order.enriched"), Some("enriched"));
        assert_eq!(c.routes.route("order.created"), Some("orders"));
        assert_eq!(c.routes.route("user.created"), None);
    }

    #[test]
    fn backoff_grows_exponentially_up_to_its_cap() {
        let b = Backoff {
            initial_ms: 100,
            max_ms: 350,
            multiplier: 2.0,
        };
        let delays: Vec<_> = (1..=4).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
    }
}
