//! WebAssembly plugins: load a component, keep warm instances, call it.
//!
//! A [`WasmPlugin`] is compiled once into an `InstancePre` (imports resolved
//! and type-checked up front), then instantiated on demand from wasmtime's
//! pooling allocator. Instances are reused for up to `reuse_instance` events
//! and always discarded after a trap, because a trapped instance's memory is
//! in an unknown state.

mod bindings;
pub mod engine;
mod fast_path;
mod http;
mod keyvalue;
mod limits;
mod link;
mod sandbox;
mod settings;
mod standalone;
mod state;
mod stdio;
mod traps;
mod wait;
mod wasi_config;

use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use wasmtime::component::{Func, InstancePre, ResourceTable, TypedFunc};
use wasmtime::{Store, UpdateDeadline};

use crate::event::Event;
use crate::handler::{ErrorHandled, Failure, FailureKind, Handled, Handler, Verdict};
use crate::kv::{KvAccess, KvEffects, Txn};
use crate::routes::Routes;
use bindings::{wit, HandlerPre};
pub use engine::PluginEngine;
pub use fast_path::eligible as fast_path_eligible;
use fast_path::{FastPathUse, LeaveFastPath};
pub use link::{check, inspect};
use link::{link, Linked};
pub use sandbox::{capabilities, ungranted, Capability, Ungranted};
pub use settings::{Links, PluginSettings};
pub use standalone::Standalone;
use state::{empty_view, fill_view, to_wit, HostState};
use traps::{describe_trap, trap_verdict};

/// The contract this host serves (`wit/world.wit`'s package), and the
/// older one it still serves side by side.
pub const CONTRACT: &str = "runnel:plugin@0.2.0";
pub const CONTRACTS_ALSO_SERVED: &[&str] = &["runnel:plugin@0.1.0"];

/// Added to twice a call's time limit before a call stuck in a host wait
/// is given up on ([`WasmPlugin::backstop`]).
const BACKSTOP_GRACE: Duration = Duration::from_secs(1);

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
    /// The component linked for the synchronous fast path, when eligible.
    fast: Option<InstancePre<HostState>>,
    fast_use: FastPathUse,
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
    /// Warm instances to call on a fiber, and (`warm_direct`) on the fast
    /// path.
    warm: Mutex<Vec<Warm>>,
    warm_direct: Mutex<Vec<Warm>>,
    alive: Arc<AtomicUsize>,
}

struct Warm {
    store: Store<HostState>,
    entry: Entry,
    /// The guest's view of the event being handled, refilled in place.
    view: wit::Event,
    uses: u32,
    _alive: AliveGuard,
}

/// How an instance is called.
enum Entry {
    /// On a fiber (`call_async`): may wait in host calls, and yields its
    /// thread at every epoch tick.
    Fiber(bindings::Handler),
    /// Without a fiber, on the fast path: the exports, their types checked
    /// when the instance was made.
    Direct { handle: Func, handle_error: Func },
}

/// The exports' signatures, as the bindings of `wit/world.wit` type them.
type HandleFunc<'a> = TypedFunc<(&'a wit::Event,), (Result<(), wit::Refusal>,)>;
type HandleErrorFunc<'a> = TypedFunc<(&'a wit::Failure, Option<&'a wit::Event>), ()>;

/// A `handle-error` call's arguments, as the host has them and as the
/// guest gets them.
struct ErrorCall<'a> {
    failure: &'a Failure,
    event: Option<&'a Event>,
    wit_failure: &'a wit::Failure,
    wit_event: Option<&'a wit::Event>,
}

/// Runs a call on the fast path: `None` if it had to leave (the store's
/// instance is then in the middle of the call, and must be dropped).
fn direct<R>(
    store: &mut Store<HostState>,
    call: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
) -> Option<wasmtime::Result<R>> {
    // Two ticks, not one: the first may come a moment after the call
    // starts, and a short call must not leave the fast path for it. So a
    // call leaves after 10-20 ms of running, where one on a fiber yields
    // after up to 10.
    store.set_epoch_deadline(2);
    store.data_mut().direct_call = true;
    let result = call(store);
    store.data_mut().direct_call = false;
    match result {
        Err(e) if LeaveFastPath::is(&e) => None,
        result => {
            store.data().release_held_logs();
            Some(result)
        }
    }
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
            fast,
            uses_wasi,
            uses_http,
        } = link(
            engine,
            &compiled.component,
            settings
                .fast_path
                .then_some(!settings.grants.dirs.is_empty()),
        )
        .with_context(|| path.display().to_string())?;
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
            fast,
            fast_use: FastPathUse::default(),
            uses_wasi,
            uses_http,
            counts_fuel: engine.counts_fuel(),
            settings,
            routes: links.routes,
            kv,
            config,
            warm: Mutex::new(Vec::new()),
            warm_direct: Mutex::new(Vec::new()),
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
    ///
    /// An instance for the fast path when the plugin has one; if that cannot
    /// start (its initialisers wait in the host), one for a fiber, whose
    /// error is the one reported.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        if self.fast.is_some() {
            if let Some(warm) = self.take_direct_instance().await {
                self.warm_direct.lock().push(warm);
                return Ok(());
            }
        }
        let warm = self.take_instance(false).await?;
        self.warm.lock().push(warm);
        Ok(())
    }

    fn pool(&self, direct: bool) -> &Mutex<Vec<Warm>> {
        if direct {
            &self.warm_direct
        } else {
            &self.warm
        }
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
            direct_call: false,
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
        // A call on the fast path cannot yield: at its tick it goes to a
        // fiber instead, unless its time is already up.
        store.epoch_deadline_callback(|ctx| match ctx.data().deadline {
            Some(deadline) if Instant::now() >= deadline => Ok(UpdateDeadline::Interrupt),
            _ if ctx.data().direct_call => Err(LeaveFastPath::Tick.into()),
            _ => Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            )),
        });
        Ok(store)
    }

    /// A warm instance to call on the fast path (`direct`) or on a fiber.
    async fn take_instance(&self, direct: bool) -> anyhow::Result<Warm> {
        if let Some(warm) = self.pool(direct).lock().pop() {
            return Ok(warm);
        }
        // Boxed: instantiating is rare and its future is large, and every
        // call's future would otherwise carry (and copy) room for it.
        Box::pin(self.instantiate(direct)).await
    }

    /// Makes an instance. On a fiber either way: a component's
    /// initialisers may run long, and must yield like any call.
    async fn instantiate(&self, direct: bool) -> anyhow::Result<Warm> {
        // A warm instance of the other kind goes first: a plugin then never
        // holds more instances than it has calls at once, which is what
        // sizes the pool (`engine.max_instances`), so an event never fails
        // for want of a slot.
        // Dropped here, outside the pool's lock.
        let evicted = self.pool(!direct).lock().pop();
        drop(evicted);
        let mut store = self.new_store()?;
        store.data_mut().deadline = Some(Instant::now() + self.settings.timeout);
        store.set_epoch_deadline(1);
        self.refuel(&mut store);
        let failed = |e: wasmtime::Error| anyhow::anyhow!("instantiating: {}", describe_trap(&e));
        let entry = match (&self.fast, direct) {
            (Some(fast), true) => {
                let instance = fast.instantiate_async(&mut store).await.map_err(failed)?;
                let handle: HandleFunc<'_> = instance
                    .get_typed_func(&mut store, "handle")
                    .map_err(failed)?;
                let handle_error: HandleErrorFunc<'_> = instance
                    .get_typed_func(&mut store, "handle-error")
                    .map_err(failed)?;
                Entry::Direct {
                    handle: *handle.func(),
                    handle_error: *handle_error.func(),
                }
            }
            _ => Entry::Fiber(
                self.pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(failed)?,
            ),
        };
        self.alive.fetch_add(1, Relaxed);
        Ok(Warm {
            store,
            entry,
            view: empty_view(),
            uses: 0,
            _alive: AliveGuard(self.alive.clone()),
        })
    }

    fn give_back(&self, mut warm: Warm) {
        warm.uses += 1;
        if warm.uses < self.settings.reuse_instance {
            let direct = matches!(warm.entry, Entry::Direct { .. });
            self.pool(direct).lock().push(warm);
        }
    }

    fn arm(&self, warm: &mut Warm, event: Option<&Event>, may_emit: bool) {
        let state = warm.store.data_mut();
        state.begin(event, may_emit);
        state.deadline = Some(Instant::now() + self.settings.timeout);
        warm.store.set_epoch_deadline(1);
        self.refuel(&mut warm.store);
    }

    /// Runs a call into the guest until it ends, or gives it up (`None`) at
    /// the backstop: for host waits that do not end at the call's deadline
    /// (those of `wasi:io` streams nobody reads). Generous, because waits
    /// for a key's lock move the deadline.
    async fn within_backstop<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        let backstop = || Some(Instant::now() + 2 * self.settings.timeout + BACKSTOP_GRACE);
        wait::bounded(call, backstop).await.ok()
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

impl WasmPlugin {
    /// Handles an event on the fast path, or says (`None`) that it must be
    /// handled on a fiber instead; an attempt's instance is then dropped
    /// in the middle of its call, and nothing it did takes effect.
    async fn handle_direct(&self, event: &Event) -> Option<Handled> {
        let mut warm = self.take_direct_instance().await?;
        let Entry::Direct { handle, .. } = warm.entry else {
            unreachable!("the fast path's pool holds only direct instances")
        };
        self.arm(&mut warm, Some(event), true);
        fill_view(&mut warm.view, event);
        // SAFETY: `handle`'s type was checked against `HandleFunc` when the
        // instance was made, and it belongs to this store.
        let handle: HandleFunc<'_> = unsafe { TypedFunc::new_unchecked(handle) };
        let result = direct(&mut warm.store, |store| handle.call(store, (&warm.view,)))?;
        let result = result.map(|(r,)| r);
        Some(self.conclude(warm, result))
    }

    /// Handles an event on a fiber: the call may wait in the host, and
    /// yields its thread at every epoch tick.
    async fn handle_on_fiber(&self, event: &Event) -> Handled {
        let mut warm = match self.take_instance(false).await {
            Ok(w) => w,
            Err(e) => return Handled::verdict(Verdict::Trap(format!("{e:#}"))),
        };
        self.arm(&mut warm, Some(event), true);
        fill_view(&mut warm.view, event);
        let Entry::Fiber(instance) = &warm.entry else {
            unreachable!("the fiber pool holds only fiber instances")
        };
        let call = instance.call_handle(&mut warm.store, &warm.view);
        let Some(result) = self.within_backstop(call).await else {
            // The instance is in the middle of a call: it goes.
            return Handled::verdict(self.stuck());
        };
        self.conclude(warm, result)
    }

    /// Runs `direct` when the plugin may try the fast path now, and
    /// `on_fiber` if it may not or the attempt left it. Neither future does
    /// anything until awaited.
    async fn fast_path_first<T>(
        &self,
        direct: impl std::future::Future<Output = Option<T>>,
        on_fiber: impl std::future::Future<Output = T>,
    ) -> T {
        if self.fast.is_some() && self.fast_use.try_now() {
            if let Some(done) = direct.await {
                return done;
            }
            self.fast_use.left();
        }
        on_fiber.await
    }

    /// A warm instance for the fast path. One that cannot be made (its
    /// initialisers wait in the host, say) may still be on a fiber, which
    /// reports the error if not; the plugin then stops trying the fast path.
    async fn take_direct_instance(&self) -> Option<Warm> {
        match self.take_instance(true).await {
            Ok(warm) => Some(warm),
            Err(e) => {
                tracing::debug!(plugin = %self.name, "no instance for the fast path, calls go to a fiber: {e:#}");
                self.fast_use.stop();
                None
            }
        }
    }

    /// `handle-error` on the fast path, or `None`: run it on a fiber.
    async fn handle_error_direct(&self, call: &ErrorCall<'_>) -> Option<ErrorHandled> {
        let mut warm = self.take_direct_instance().await?;
        let Entry::Direct { handle_error, .. } = warm.entry else {
            unreachable!("the fast path's pool holds only direct instances")
        };
        self.arm_error(&mut warm, call);
        // SAFETY: as in `handle_direct`, checked against `HandleErrorFunc`.
        let handle_error: HandleErrorFunc<'_> = unsafe { TypedFunc::new_unchecked(handle_error) };
        let result = direct(&mut warm.store, |store| {
            handle_error.call(store, (call.wit_failure, call.wit_event))
        })?;
        Some(self.conclude_error(warm, result))
    }

    /// `handle-error` on a fiber.
    async fn handle_error_on_fiber(&self, call: &ErrorCall<'_>) -> ErrorHandled {
        let mut warm = self
            .take_instance(false)
            .await
            .map_err(|e| format!("{e:#}"))?;
        self.arm_error(&mut warm, call);
        let Entry::Fiber(instance) = &warm.entry else {
            unreachable!("the fiber pool holds only fiber instances")
        };
        let run = instance.call_handle_error(&mut warm.store, call.wit_failure, call.wit_event);
        let Some(result) = self.within_backstop(run).await else {
            return Err(format!("handle-error {}", self.stuck()));
        };
        self.conclude_error(warm, result)
    }

    /// Starts a `handle-error` call: its log lines and requests carry the
    /// failed event's id, and the event's dry-run flag holds for it too.
    fn arm_error(&self, warm: &mut Warm, call: &ErrorCall<'_>) {
        self.arm(warm, call.event, false);
        let state = warm.store.data_mut();
        let out = &mut state.call;
        out.event_id.clone_from(&call.failure.event_id);
        out.correlation_id.clone_from(&call.failure.correlation_id);
        out.is_dry_run = call.failure.is_dry_run;
        if let Some(http) = &mut state.http {
            http.begin(&call.failure.event_id, call.failure.is_dry_run);
        }
    }

    /// What a finished `handle-error` call comes to.
    fn conclude_error(&self, mut warm: Warm, result: wasmtime::Result<()>) -> ErrorHandled {
        let call = warm.store.data_mut().finish();
        match result {
            Ok(()) => {
                self.give_back(warm);
                Ok(call.logs)
            }
            Err(trap) => Err(format!("handle-error {}", describe_trap(&trap))),
        }
    }

    /// What a finished `handle` call comes to; gives its instance back
    /// unless it trapped.
    fn conclude(
        &self,
        mut warm: Warm,
        result: wasmtime::Result<Result<(), wit::Refusal>>,
    ) -> Handled {
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
}

#[async_trait]
impl Handler for WasmPlugin {
    async fn handle(&self, event: &Event) -> Handled {
        self.fast_path_first(self.handle_direct(event), self.handle_on_fiber(event))
            .await
    }

    async fn handle_error(&self, failure: &Failure, event: Option<&Event>) -> ErrorHandled {
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
        let call = ErrorCall {
            failure,
            event,
            wit_failure: &wit_failure,
            wit_event: wit_event.as_ref(),
        };
        self.fast_path_first(
            self.handle_error_direct(&call),
            self.handle_error_on_fiber(&call),
        )
        .await
    }

    fn instances_alive(&self) -> usize {
        self.alive.load(Relaxed)
    }

    fn fast_path_left(&self) -> u64 {
        self.fast_use.times_left()
    }

    fn version(&self) -> Option<String> {
        Some(self.sha256()[..12].to_string())
    }
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
