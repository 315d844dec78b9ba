//! Wires a [`Config`] into running subscribers: one broker, one engine, one
//! subscriber per plugin, all stopped by one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{RedisBroker, Trimming};
use crate::broker::{Broker, MissingGroup};
use crate::commands::input::InputEvent;
use crate::config::{Backend, Config, PluginConfig};
use crate::dead_letter::replay_stream;
use crate::handler::Handler;
use crate::plugin::{Links, PluginEngine, PluginSettings, WasmPlugin};
use crate::publisher::Publisher;
use crate::routes::Routes;
use crate::service::live::{LivePlugin, Version};
use crate::service::reload::Reloader;
use crate::service::shadow::Shadow;
use crate::stats::{Snapshot, Stats};
use crate::subscriber::{ensure_group, Breaker, ReadHealth, Subscriber, Subscription};

/// Entries read at once per subscriber on the in-memory backend.
const READ_COUNT: usize = 64;
/// How long an idle in-memory read waits before the subscriber looks around.
const READ_BLOCK: Duration = Duration::from_millis(250);

/// A plugin as the runtime runs it.
pub struct RunningPlugin {
    pub config: PluginConfig,
    /// The plugin's slot: current version, reloads, shadow.
    pub live: Arc<LivePlugin>,
    /// What the subscriber calls: the slot itself, unless an embedder or a
    /// test wraps it.
    pub handler: Arc<dyn Handler>,
    pub stats: Arc<Stats>,
    pub breaker: Arc<Breaker>,
    /// Whether its subscriber reads, and why not.
    pub health: Arc<ReadHealth>,
}

impl RunningPlugin {
    /// A plugin backed by any handler (native code, a preloaded plugin).
    pub fn new(config: PluginConfig, handler: Arc<dyn Handler>, version: &str) -> RunningPlugin {
        let live = LivePlugin::new(config.name.clone(), Version::new(handler, version));
        let breaker = Breaker::new(
            config.breaker_failures,
            Duration::from_millis(config.breaker_pause_ms),
        );
        RunningPlugin {
            config,
            handler: live.clone(),
            live,
            stats: Arc::default(),
            breaker: Arc::new(breaker),
            health: Arc::default(),
        }
    }

    /// Whether this plugin only shadows another (it has no subscriber).
    pub fn is_shadow(&self) -> bool {
        self.config.shadow_of.is_some()
    }
}

/// Everything a running host is made of.
pub struct Runtime {
    pub config: Config,
    pub broker: Arc<dyn Broker>,
    pub publisher: Publisher,
    /// Plugins' key-value state and the queue their commits go through.
    pub kv: Arc<crate::kv::Store>,
    pub plugins: Vec<RunningPlugin>,
    /// Present when the plugins are WebAssembly files that can be reloaded.
    pub reloader: Option<Arc<Reloader>>,
    /// Cancelled to give up on in-flight events at the shutdown deadline.
    pub abandon: CancellationToken,
    consumer: String,
}

impl Runtime {
    /// Connects the backend and loads every plugin. Fails, naming the plugin
    /// and file, if one does not load: a service should not start half-way.
    pub async fn from_config(config: Config) -> anyhow::Result<Runtime> {
        let broker = connect(&config.backend).await?;
        for warning in config.cluster_warnings() {
            tracing::warn!("{warning}");
        }
        let kv = crate::kv::Store::new(broker.clone());
        let engine = Arc::new(PluginEngine::new(&config.engine)?);
        let routes = Arc::new(config.routes.clone());
        let mut plugins = Vec::new();
        for p in &config.plugins {
            let plugin = WasmPlugin::load(
                &engine,
                &p.name,
                &p.path,
                PluginSettings::of(p, config.max_payload_bytes),
                Links {
                    routes: routes.clone(),
                    store: Some(kv.clone()),
                },
            )
            .with_context(|| format!("plugin {:?}", p.name))?;
            tracing::info!(plugin = %p.name, sha256 = %&plugin.sha256()[..12], "loaded");
            let sha256 = plugin.sha256().to_string();
            plugins.push(RunningPlugin::new(p.clone(), Arc::new(plugin), &sha256));
        }
        let reloader = Reloader::new(
            engine,
            Links {
                routes: routes.clone(),
                store: Some(kv.clone()),
            },
            config.max_payload_bytes,
            plugins.iter().map(|p| (p.config.clone(), p.live.clone())),
        );
        let mut runtime = Runtime::with_handlers(config, broker, routes, plugins);
        runtime.reloader = Some(Arc::new(reloader));
        runtime.kv = kv;
        Ok(runtime)
    }

    /// A runtime over given handlers (native or preloaded), for embedding,
    /// tests and benchmarks.
    pub fn with_handlers(
        config: Config,
        broker: Arc<dyn Broker>,
        routes: Arc<Routes>,
        plugins: Vec<RunningPlugin>,
    ) -> Runtime {
        for shadow in plugins.iter().filter(|p| p.is_shadow()) {
            let live_name = shadow.config.shadow_of.as_deref();
            if let Some(live) = plugins
                .iter()
                .find(|p| Some(p.config.name.as_str()) == live_name)
            {
                live.live
                    .set_shadow(Some(Shadow::new(&shadow.config.name, shadow.live.clone())));
            }
        }
        Runtime {
            publisher: Publisher::new(broker.clone(), routes),
            kv: crate::kv::Store::new(broker.clone()),
            broker,
            plugins,
            consumer: match &config.backend {
                Backend::Redis(r) => r.consumer.clone().unwrap_or_else(consumer_name),
                Backend::Memory { .. } => consumer_name(),
            },
            config,
            reloader: None,
            abandon: CancellationToken::new(),
        }
    }

    /// Creates the consumer groups and starts one subscriber per plugin.
    /// They run until `shutdown` is cancelled; the returned set finishes when
    /// they have drained. Fails if a group cannot be created: see
    /// [`Runtime::spawn_subscribers`] for a start that waits for the backend.
    pub async fn start(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<JoinSet<anyhow::Result<()>>> {
        self.create_groups().await?;
        Ok(self.spawn_subscribers(shutdown))
    }

    /// Creates every plugin's consumer groups that do not exist yet, once.
    /// Before anything is injected: a group that starts at "new" would not
    /// see events appended before it.
    pub async fn create_groups(&self) -> anyhow::Result<()> {
        for p in self.plugins.iter().filter(|p| !p.is_shadow()) {
            let group = self.config.group_of(&p.config);
            for stream in &p.config.streams {
                ensure_group(
                    &*self.broker,
                    &p.config.name,
                    stream,
                    &group,
                    p.config.start.clone(),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Starts one subscriber per plugin. Each creates its groups if they are
    /// missing, waiting (and retrying) while the backend does not answer, so
    /// a service comes up before its backend does.
    pub fn spawn_subscribers(&self, shutdown: &CancellationToken) -> JoinSet<anyhow::Result<()>> {
        let mut tasks = JoinSet::new();
        for p in self.plugins.iter().filter(|p| !p.is_shadow()) {
            let subscriber = Subscriber::new(
                self.broker.clone(),
                self.publisher.clone(),
                self.subscription(&p.config),
                p.stats.clone(),
            )
            .abandon_on(self.abandon.clone())
            .with_breaker(p.breaker.clone())
            .with_health(p.health.clone())
            .with_kv(self.kv.clone());
            tasks.spawn(subscriber.consume(p.handler.clone(), shutdown.clone()));
        }
        tasks
    }

    fn subscription(&self, p: &PluginConfig) -> Subscription {
        let timeout = Duration::from_millis(p.timeout_ms);
        let (read_count, block, claim_min_idle) = match &self.config.backend {
            Backend::Redis(r) => (
                r.count,
                Duration::from_millis(r.block_ms),
                Duration::from_millis(r.claim_min_idle_ms),
            ),
            // In one process nobody dies alone; reclaiming only matters if a
            // delivery task was lost, so it can wait.
            Backend::Memory { .. } => (
                READ_COUNT,
                READ_BLOCK,
                (timeout * 2).max(Duration::from_secs(30)),
            ),
        };
        Subscription {
            plugin: p.name.clone(),
            group: self.config.group_of(p),
            start: p.start.clone(),
            consumer: self.consumer.clone(),
            streams: p.streams.clone(),
            events: p.events.clone(),
            concurrency: p.concurrency as usize,
            max_attempts: p.max_attempts,
            backoff: p.backoff,
            read_count,
            block,
            claim_min_idle,
            dead_letter: self.config.dead_letter.clone(),
            max_chain_depth: self.config.max_chain_depth,
            forget_consumers_after: match &self.config.backend {
                Backend::Redis(r) if r.forget_idle_consumers_ms > 0 => {
                    Some(Duration::from_millis(r.forget_idle_consumers_ms))
                }
                _ => None,
            },
            dedup_window: p.dedup_window_ms.map(Duration::from_millis),
            // Base64 grows a payload by 4/3; the rest of the envelope is small.
            max_envelope_bytes: self.config.max_payload_bytes / 3 * 4 + 64 * 1024,
            max_in_flight_bytes: crate::subscriber::DEFAULT_IN_FLIGHT_BYTES,
        }
    }

    /// Publishes injected events (`--input`, `POST /events`) in one batch,
    /// each to its own stream or else its name's route. Fails before
    /// publishing anything if one has neither, or if the plugins' groups
    /// cannot be made sure of first: a group created after the events (the
    /// backend was down at start, say) would skip them at `start = "new"`.
    pub async fn inject(&self, events: Vec<InputEvent>) -> anyhow::Result<()> {
        self.create_groups().await?;
        let mut routed = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            routed.push(match e.stream {
                Some(stream) => crate::handler::Routed {
                    stream,
                    event: e.event,
                },
                None => self
                    .config
                    .routes
                    .send(e.event)
                    .map_err(|m| anyhow::anyhow!("event {}: {m}", i + 1))?,
            });
        }
        self.publisher.publish(&routed).await
    }

    /// Every stream a plugin's group reads: its sources, then their replay
    /// streams (see [`crate::dead_letter::replay_stream`]).
    pub fn streams_read_by(&self, p: &PluginConfig) -> Vec<String> {
        let group = self.config.group_of(p);
        let replays = p.streams.iter().map(|s| replay_stream(s, &group));
        p.streams.iter().cloned().chain(replays).collect()
    }

    /// Whether every plugin has finished every entry of its streams. A
    /// group that does not exist (yet, or any more) has not.
    pub async fn is_idle(&self) -> anyhow::Result<bool> {
        for p in &self.plugins {
            for stream in &self.streams_read_by(&p.config) {
                match self
                    .broker
                    .backlog(stream, &self.config.group_of(&p.config))
                    .await
                {
                    Ok(0) => {}
                    Ok(_) => return Ok(false),
                    Err(e) if MissingGroup::in_error(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(true)
    }

    /// Waits until [`Runtime::is_idle`], polling. A backend that does not
    /// answer is waited for, as the subscribers wait for it.
    pub async fn wait_idle(&self) -> anyhow::Result<()> {
        let mut failures = 0u32;
        loop {
            match self.is_idle().await {
                Ok(true) => return Ok(()),
                Ok(false) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!("cannot tell whether everything is handled yet: {e:#}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The dead-letter streams of every plugin's streams, each once, sorted.
    pub fn dead_letter_streams(&self) -> Vec<String> {
        let mut streams: Vec<String> = self
            .plugins
            .iter()
            .flat_map(|p| p.config.streams.iter())
            .map(|s| self.config.dead_letter_stream(s))
            .collect();
        streams.sort();
        streams.dedup();
        streams
    }

    /// Counters per plugin, in config order.
    pub fn summary(&self) -> Vec<(String, Snapshot)> {
        self.plugins
            .iter()
            .map(|p| (p.config.name.clone(), p.stats.snapshot()))
            .collect()
    }
}

/// Connects the configured backend.
pub async fn connect(backend: &Backend) -> anyhow::Result<Arc<dyn Broker>> {
    Ok(match backend {
        Backend::Memory { capacity } => MemoryBroker::new(*capacity),
        Backend::Redis(r) => {
            RedisBroker::open(
                &r.endpoint(),
                Trimming {
                    max_len: r.max_len,
                    per_stream: r.max_len_per_stream.clone(),
                    approximate: r.approximate_trim,
                },
                &r.tls,
            )
            .await?
        }
    })
}

/// One consumer name per process: host, pid and a random suffix, so that a
/// restarted process never inherits a dead one's pending entries by name.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}
