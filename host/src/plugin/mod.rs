//! WebAssembly plugins: load a component, keep warm instances, call it.
//!
//! A [`WasmPlugin`] is compiled once into an `InstancePre` (imports resolved
//! and type-checked up front), then instantiated on demand from wasmtime's
//! pooling allocator. Instances are reused for up to `reuse_instance` events
//! and always discarded after a trap, because a trapped instance's memory is
//! in an unknown state.

mod bindings;
pub mod engine;
mod http;
mod keyvalue;
mod limits;
mod sandbox;
mod state;
mod stdio;
mod wasi_config;

use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};

use crate::config::Grants;
use crate::event::Event;
use crate::handler::{ErrorHandled, Failure, FailureKind, Handled, Handler, Verdict};
use crate::kv::{KvAccess, KvEffects, KvLimits, Txn};
use crate::outbound::{Allowlist, CannedResponses, HttpLimits};
use crate::routes::Routes;
use bindings::{wit, HandlerPre};
pub use engine::PluginEngine;
use state::{empty_view, fill_view, to_wit, HostState};

/// The contract this host serves (`wit/world.wit`'s package), and the
/// older one it still serves side by side.
pub const CONTRACT: &str = "runnel:plugin@0.2.0";
pub const CONTRACTS_ALSO_SERVED: &[&str] = &["runnel:plugin@0.1.0"];

/// Added to twice a call's time limit before a call stuck in a host wait
/// is given up on ([`WasmPlugin::backstop`]).
const BACKSTOP_GRACE: Duration = Duration::from_secs(1);

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

/// What a component imports and exports, as `runnel check` prints it.
#[derive(Clone, Debug)]
pub struct Interface {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// A loaded plugin, ready to handle events.
pub struct WasmPlugin {
    name: Arc<str>,
    sha256: String,
    pre: HandlerPre<HostState>,
    /// Whether the component imports WASI (then it gets a deny-by-default
    /// context; otherwise none is built at all).
    uses_wasi: bool,
    /// Whether it imports `wasi:http` (then its stores carry the hooks that
    /// enforce its grants).
    uses_http: bool,
    /// Whether the engine counts fuel: then every store needs some.
    counts_fuel: bool,
    settings: PluginSettings,
    routes: Arc<Routes>,
    /// The plugin's buckets and their store, when it is granted some.
    kv: Option<Arc<KvAccess>>,
    /// Its configuration, secrets read.
    config: Arc<wasi_config::ConfigValues>,
    warm: Mutex<Vec<Warm>>,
    alive: Arc<AtomicUsize>,
}

struct Warm {
    store: Store<HostState>,
    instance: bindings::Handler,
    /// The guest's view of the event being handled, refilled in place.
    view: wit::Event,
    uses: u32,
    _alive: AliveGuard,
}

/// Counts live instances; dropping one decrements.
struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl WasmPlugin {
    /// Loads a component file: reads, compiles (or loads from cache), links
    /// and checks it against the `handler` world. Every error names the file.
    pub fn load(
        engine: &PluginEngine,
        name: &str,
        path: &Path,
        settings: PluginSettings,
        links: Links,
    ) -> anyhow::Result<WasmPlugin> {
        let compiled = engine.compile_file(path)?;
        let Linked {
            pre,
            uses_wasi,
            uses_http,
        } = link(engine, &compiled.component).with_context(|| path.display().to_string())?;
        let closed = sandbox::ungranted(
            &inspect(engine, &compiled.component).imports,
            &settings.grants,
        );
        if !closed.is_empty() {
            let list: Vec<String> = closed
                .iter()
                .map(|u| format!("{} (to allow: {})", u.capability, u.grant))
                .collect();
            if settings.strict_grants {
                anyhow::bail!(
                    "{}: imports capabilities it was not granted: {}",
                    path.display(),
                    list.join(", ")
                );
            }
            tracing::info!(plugin = %name, "imports capabilities it was not granted; their calls will be denied: {}", list.join(", "));
        }
        let name: Arc<str> = name.into();
        let config = Arc::new(wasi_config::ConfigValues::resolve(&settings.config)?);
        let kv = match (&links.store, settings.kv_buckets.is_empty()) {
            (Some(store), false) => Some(Arc::new(KvAccess {
                store: store.clone(),
                buckets: settings.kv_buckets.clone(),
                limits: settings.kv_limits,
                plugin: name.clone(),
            })),
            _ => None,
        };
        Ok(WasmPlugin {
            name,
            sha256: compiled.sha256,
            pre,
            uses_wasi,
            uses_http,
            counts_fuel: engine.counts_fuel(),
            settings,
            routes: links.routes,
            kv,
            config,
            warm: Mutex::new(Vec::new()),
            alive: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the component file: the plugin's version.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Instantiates one instance and keeps it warm: runs the component's
    /// initialisers once, so that a version that cannot even start is found
    /// before it serves, and its first event does not pay for instantiation.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        let warm = self.take_instance().await?;
        self.warm.lock().push(warm);
        Ok(())
    }

    fn new_store(&self) -> anyhow::Result<Store<HostState>> {
        let clock = sandbox::EventClock::default();
        let stdio_tag = stdio::CallTag::default();
        let stderr_tail = stdio::StderrTail::default();
        let state = HostState {
            plugin: self.name.clone(),
            routes: self.routes.clone(),
            max_emitted_payload: self.settings.max_emitted_payload,
            limits: limits::Limits::new(self.settings.memory_bytes),
            stderr_tail: stderr_tail.clone(),
            wasi: if self.uses_wasi {
                Some(sandbox::wasi_context(
                    &self.settings.grants,
                    &clock,
                    &self.name,
                    &stdio_tag,
                    &stderr_tail,
                )?)
            } else {
                None
            },
            stdio_tag: (self.uses_wasi && self.settings.grants.stdio).then_some(stdio_tag.clone()),
            table: ResourceTable::new(),
            clock,
            call: Default::default(),
            kv: Txn::new(self.kv.clone()),
            config: self.config.clone(),
            kv_lock_wait: self.settings.timeout,
            deadline: None,
            http: self.uses_http.then(|| {
                Box::new(http::HttpState::new(
                    self.name.clone(),
                    self.settings.http_allow.clone(),
                    self.settings.http_limits,
                    self.settings.http_canned.clone(),
                    self.config.clone(),
                ))
            }),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        // At every epoch tick: past the deadline, trap; otherwise yield the
        // thread so that a long call cannot starve other events. Through
        // tokio's yield_now, which runs the I/O driver before the call
        // resumes: a plain wake-up put the call back first, and on one
        // worker thread a CPU-bound call then held off the reader and the
        // keep-alive for seconds (the claim-idle test failed that way).
        store.epoch_deadline_callback(|ctx| match ctx.data().deadline {
            Some(deadline) if Instant::now() >= deadline => Ok(UpdateDeadline::Interrupt),
            _ => Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            )),
        });
        Ok(store)
    }

    async fn take_instance(&self) -> anyhow::Result<Warm> {
        if let Some(warm) = self.warm.lock().pop() {
            return Ok(warm);
        }
        // Boxed: instantiating is rare and its future is large, and every
        // call's future would otherwise carry (and copy) room for it.
        Box::pin(self.instantiate()).await
    }

    async fn instantiate(&self) -> anyhow::Result<Warm> {
        let mut store = self.new_store()?;
        store.data_mut().deadline = Some(Instant::now() + self.settings.timeout);
        store.set_epoch_deadline(1);
        self.refuel(&mut store);
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("instantiating: {}", describe_trap(&e)))?;
        self.alive.fetch_add(1, Relaxed);
        Ok(Warm {
            store,
            instance,
            view: empty_view(),
            uses: 0,
            _alive: AliveGuard(self.alive.clone()),
        })
    }

    fn give_back(&self, mut warm: Warm) {
        warm.uses += 1;
        if warm.uses < self.settings.reuse_instance {
            self.warm.lock().push(warm);
        }
    }

    fn arm(&self, warm: &mut Warm, event: Option<&Event>, may_emit: bool) {
        let state = warm.store.data_mut();
        state.begin(event, may_emit);
        state.deadline = Some(Instant::now() + self.settings.timeout);
        warm.store.set_epoch_deadline(1);
        self.refuel(&mut warm.store);
    }

    /// When a call still running is given up on, whatever it waits for: a
    /// backstop for host waits that do not end at the call's deadline
    /// (those of `wasi:io` streams nobody reads). Generous, because waits for
    /// a key's lock move the deadline.
    fn backstop(&self) -> Instant {
        Instant::now() + 2 * self.settings.timeout + BACKSTOP_GRACE
    }

    /// The verdict of a call given up on at the backstop.
    fn stuck(&self) -> Verdict {
        Verdict::Timeout(format!(
            "stuck in a host call well past its time limit of {:?}; the instance is discarded",
            self.settings.timeout
        ))
    }

    /// A fresh fuel budget for the next call (unlimited without one).
    fn refuel(&self, store: &mut Store<HostState>) {
        if self.counts_fuel {
            let fuel = self.settings.fuel.unwrap_or(u64::MAX);
            // Cannot fail: the engine counts fuel.
            let _ = store.set_fuel(fuel);
        }
    }
}

#[async_trait]
impl Handler for WasmPlugin {
    async fn handle(&self, event: &Event) -> Handled {
        let mut warm = match self.take_instance().await {
            Ok(w) => w,
            Err(e) => return Handled::verdict(Verdict::Trap(format!("{e:#}"))),
        };
        self.arm(&mut warm, Some(event), true);
        fill_view(&mut warm.view, event);
        let call = warm.instance.call_handle(&mut warm.store, &warm.view);
        let Ok(result) = tokio::time::timeout_at(self.backstop().into(), call).await else {
            // The instance is in the middle of a call: it goes.
            return Handled::verdict(self.stuck());
        };
        let call = warm.store.data_mut().finish();
        // A refusal's reason and a trap's stderr end up in logs and dead
        // letters: no secret of the plugin's config goes with them.
        let scrub = |m: String| self.config.scrub(m);
        let verdict = match result {
            Ok(Ok(())) => Verdict::Done,
            Ok(Err(wit::Refusal::Retry(m))) => Verdict::Retry(scrub(m)),
            Ok(Err(wit::Refusal::Reject(m))) => Verdict::Reject(scrub(m)),
            Err(trap) => {
                let state = warm.store.data_mut();
                let refused = state.limits.refused.take();
                let stderr = scrub(state.stderr_tail.take_text());
                trap_verdict(&trap, &self.settings, refused, &stderr)
            }
        };
        // A response that did not come by the deadline ends the call as a
        // timeout, even if the guest went on and returned: the call's time
        // is up either way.
        let verdict = match verdict {
            Verdict::Done | Verdict::Retry(_) | Verdict::Reject(_) | Verdict::Timeout(_)
                if call.http.deadline_hit =>
            {
                Verdict::Timeout(format!(
                    "ran past its time limit of {:?} waiting for an HTTP response",
                    self.settings.timeout
                ))
            }
            v => v,
        };
        if !verdict.is_trap() {
            self.give_back(warm);
        }
        let done = verdict == Verdict::Done;
        Handled {
            emitted: if done { call.emitted } else { Vec::new() },
            kv: if done { call.kv } else { KvEffects::default() },
            verdict,
            logs: call.logs,
            http: call.http.exchanges,
        }
    }

    async fn handle_error(&self, failure: &Failure, event: Option<&Event>) -> ErrorHandled {
        let mut warm = self.take_instance().await.map_err(|e| format!("{e:#}"))?;
        self.arm(&mut warm, event, false);
        let state = warm.store.data_mut();
        let call = &mut state.call;
        call.event_id.clone_from(&failure.event_id);
        call.correlation_id.clone_from(&failure.correlation_id);
        // The failed event's dry-run flag holds for its error handler too.
        call.is_dry_run = failure.is_dry_run;
        if let Some(http) = &mut state.http {
            http.begin(&failure.event_id, failure.is_dry_run);
        }
        let wit_failure = wit::Failure {
            message: failure.message.clone(),
            kind: match failure.kind {
                FailureKind::HandlerError => wit::FailureKind::HandlerError,
                // The contract's kinds stay as they are (old components must
                // load): the host's own refusal reads as a rejection.
                FailureKind::Rejected | FailureKind::ChainDepth => wit::FailureKind::Rejected,
                FailureKind::Trap | FailureKind::Memory => wit::FailureKind::Trap,
                FailureKind::Timeout | FailureKind::Fuel => wit::FailureKind::Timeout,
                FailureKind::Decode => wit::FailureKind::Decode,
            },
            attempt: failure.attempt,
            is_last_attempt: failure.is_last_attempt,
        };
        let wit_event = event.map(to_wit);
        let call =
            warm.instance
                .call_handle_error(&mut warm.store, &wit_failure, wit_event.as_ref());
        let Ok(result) = tokio::time::timeout_at(self.backstop().into(), call).await else {
            return Err(format!("handle-error {}", self.stuck()));
        };
        let call = warm.store.data_mut().finish();
        match result {
            Ok(()) => {
                self.give_back(warm);
                Ok(call.logs)
            }
            Err(trap) => Err(format!("handle-error {}", describe_trap(&trap))),
        }
    }

    fn instances_alive(&self) -> usize {
        self.alive.load(Relaxed)
    }

    fn version(&self) -> Option<String> {
        Some(self.sha256()[..12].to_string())
    }
}

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

/// A component with its imports resolved, and which of the optional ones
/// it needed.
struct Linked {
    pre: HandlerPre<HostState>,
    uses_wasi: bool,
    uses_http: bool,
}

/// Resolves a component's imports (WASI and `wasi:http` only if it asks for
/// them) and checks its exports against the `handler` world.
fn link(
    engine: &PluginEngine,
    component: &wasmtime::component::Component,
) -> anyhow::Result<Linked> {
    let mut linker: Linker<HostState> = Linker::new(engine.engine());
    bindings::add_contract_to_linker(&mut linker)?;
    // What components built against the 0.1.0 contract import.
    bindings::v0_1::Handler::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        &mut linker,
        |s| s,
    )?;
    let imports = inspect(engine, component).imports;
    let uses_wasi = imports.iter().any(|name| name.starts_with("wasi:"));
    let uses_http = imports.iter().any(|name| name.starts_with("wasi:http/"));
    if uses_wasi {
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    }
    if uses_http {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("imports something the host does not provide: {e}"))?;
    let pre = HandlerPre::new(pre)
        .map_err(|e| anyhow::anyhow!("does not implement the runnel:plugin/handler world: {e}"))?;
    Ok(Linked {
        pre,
        uses_wasi,
        uses_http,
    })
}

/// Lists a component's imports and exports by name.
pub fn inspect(engine: &PluginEngine, component: &wasmtime::component::Component) -> Interface {
    let ty = component.component_type();
    Interface {
        imports: ty
            .imports(engine.engine())
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(engine.engine())
            .map(|(name, _)| name.to_string())
            .collect(),
    }
}

/// Loads a component and checks it the way `runnel run` would, returning
/// what it imports and exports.
pub use sandbox::{capabilities, ungranted, Capability, Ungranted};

pub fn check(engine: &PluginEngine, path: &Path) -> anyhow::Result<Interface> {
    let compiled = engine.compile_file(path)?;
    link(engine, &compiled.component).with_context(|| path.display().to_string())?;
    Ok(inspect(engine, &compiled.component))
}

/// What a trapped call's verdict says: the limit it hit, if the host
/// refused it something (memory, a table) during the call, and what the
/// guest last wrote to stderr (a panic message, say) even without the
/// `stdio` grant.
fn trap_verdict(
    error: &wasmtime::Error,
    settings: &PluginSettings,
    refused: Option<String>,
    stderr: &str,
) -> Verdict {
    let with_stderr = |text: String| match stderr.trim() {
        "" => text,
        said => format!("{text}; stderr: {said}"),
    };
    match (error.downcast_ref::<wasmtime::Trap>(), refused) {
        (Some(wasmtime::Trap::Interrupt), _) => {
            Verdict::Timeout(format!("ran past its time limit of {:?}", settings.timeout))
        }
        (Some(wasmtime::Trap::OutOfFuel), _) => Verdict::OutOfFuel(format!(
            "used up its fuel budget of {}",
            settings.fuel.unwrap_or(u64::MAX)
        )),
        (_, Some(limit)) => Verdict::OutOfMemory(with_stderr(format!(
            "{limit}, then it {}",
            describe_trap(error)
        ))),
        _ => Verdict::Trap(with_stderr(describe_trap(error))),
    }
}

/// A trap in one line: its code and the innermost guest frame when known.
fn describe_trap(error: &wasmtime::Error) -> String {
    let mut text = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => {
            "trapped: call stack exhausted (the stack limit)".to_string()
        }
        Some(trap) => format!("trapped: {trap}"),
        None if error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some() =>
        {
            format!(
                "failed: {} (the instance pool: [engine] max_instances)",
                error.root_cause()
            )
        }
        None => format!("failed: {}", error.root_cause()),
    };
    if let Some(bt) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
        if let Some(name) = bt.frames().first().and_then(|f| f.func_name()) {
            text.push_str(&format!(" in {name}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{CONTRACT, CONTRACTS_ALSO_SERVED};

    #[test]
    fn the_contract_constants_name_the_wit_packages_the_host_is_built_from() {
        let package = |wit: &str| {
            wit.lines()
                .find_map(|l| l.strip_prefix("package "))
                .map(|p| p.trim_end_matches(';').to_string())
        };
        assert_eq!(
            package(include_str!("../../../wit/world.wit")).as_deref(),
            Some(CONTRACT)
        );
        assert_eq!(
            package(include_str!("../../wit-0.1.0/world.wit")).as_deref(),
            Some(CONTRACTS_ALSO_SERVED[0])
        );
        // `runnel --version` says them too.
        let version = crate::cli::version();
        assert!(version.contains(CONTRACT), "{version}");
        assert!(
            CONTRACTS_ALSO_SERVED.iter().all(|c| version.contains(c)),
            "{version}"
        );
    }
}
