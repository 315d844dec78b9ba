//! The per-instance state behind a plugin's imports: what `log` and `emit`
//! do, and the context of the call in progress.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::runnel::plugin::{host, types};
use super::bindings::{v0_1, wit};
use super::limits::Limits;
use super::sandbox::EventClock;
use super::stdio::{CallTag, StderrTail, MAX_LOG_LINE};
use crate::event::Event;
use crate::handler::{Level, LogLine, Routed};
use crate::kv::{KvEffects, Txn};
use crate::routes::Routes;

/// Most events one call may emit; a plugin in a loop is stopped here.
pub const MAX_EMITS_PER_CALL: usize = 10_000;
/// Most log lines kept per call for tools that show them (`runnel test`);
/// all of them still reach the host log.
const MAX_LOGS_KEPT: usize = 1_000;

/// Everything a store carries.
pub struct HostState {
    pub plugin: Arc<str>,
    pub routes: Arc<Routes>,
    /// Largest payload of an emitted event (`max_payload_bytes`).
    pub max_emitted_payload: usize,
    pub limits: Limits,
    /// The last bytes the guest wrote to stderr in this call, granted or
    /// not: a trap's reason quotes them (a panic message).
    pub stderr_tail: StderrTail,
    /// Present only for components that import WASI.
    pub wasi: Option<WasiCtx>,
    pub table: ResourceTable,
    pub clock: EventClock,
    /// Present with the `stdio` grant: tells the output streams which event
    /// their lines belong to.
    pub stdio_tag: Option<CallTag>,
    pub call: Call,
    /// The call's key-value transaction (denies every bucket when the
    /// plugin is granted none).
    pub kv: Txn,
    /// The plugin's configuration (`wasi:config/store`), and its secrets to
    /// keep out of log lines.
    pub config: Arc<super::wasi_config::ConfigValues>,
    /// Longest wait for a key's lock in this host (the call's time limit).
    pub kv_lock_wait: std::time::Duration,
    /// When the running call must stop; checked at every epoch tick and
    /// by every wait in a host call.
    pub deadline: Option<Instant>,
    /// Set while a call runs on the fast path, without a fiber: an epoch
    /// tick then ends the attempt instead of yielding.
    pub direct_call: bool,
    /// Present only for components that import `wasi:http`: the grants and
    /// limits their requests go through.
    pub http: Option<Box<super::http::HttpState>>,
}

/// The event being handled and what the call has produced so far.
#[derive(Default)]
pub struct Call {
    /// Id and correlation id that log lines carry, even when the plugin is
    /// not given the event (`handle-error` before the last attempt).
    pub event_id: String,
    pub correlation_id: String,
    /// Inherited by emitted events, with the correlation id.
    pub is_dry_run: bool,
    /// Only `handle` may emit: what `handle-error` would emit has no
    /// successful call to be published with.
    pub may_emit: bool,
    pub emitted: Vec<Routed>,
    pub logs: Vec<LogLine>,
}

impl HostState {
    /// Starts a call on `event`: new output, the plugin's clock set to the
    /// event's time.
    pub fn begin(&mut self, event: Option<&Event>, may_emit: bool) {
        if let Some(e) = event {
            let nanos = e.meta.created_at_utc.unix_timestamp_nanos();
            self.clock.set(u64::try_from(nanos).unwrap_or_default());
        }
        if let Some(tag) = &self.stdio_tag {
            let mut tag = tag.lock();
            tag.0.clear();
            tag.1.clear();
            if let Some(e) = event {
                tag.0.push_str(&e.id);
                tag.1.push_str(&e.meta.correlation_id);
            }
        }
        // Refilled in place: the strings keep their buffers from call to call.
        let call = &mut self.call;
        call.event_id.clear();
        call.correlation_id.clear();
        if let Some(e) = event {
            call.event_id.push_str(&e.id);
            call.correlation_id.push_str(&e.meta.correlation_id);
        }
        call.is_dry_run = event.is_some_and(|e| e.meta.is_dry_run);
        call.may_emit = may_emit && event.is_some();
        call.emitted.clear();
        call.logs.clear();
        self.kv.reset(call.is_dry_run);
        if let Some(http) = &mut self.http {
            http.begin(&call.event_id, call.is_dry_run);
        }
        self.limits.refused = None;
        self.stderr_tail.clear();
    }

    /// Writes the lines a call on the fast path held back (all it kept) to
    /// the host log, once the call is known not to run again.
    pub fn release_held_logs(&self) {
        for line in &self.call.logs {
            self.trace_log(line.level, &line.text);
        }
    }

    /// One of the plugin's log lines, to the host log, tagged with the
    /// plugin and the event it handles.
    fn trace_log(&self, level: Level, message: &str) {
        let (event_id, correlation_id) = (&*self.call.event_id, &*self.call.correlation_id);
        let plugin = &*self.plugin;
        match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", plugin, event_id, correlation_id, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", plugin, event_id, correlation_id, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", plugin, event_id, correlation_id, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", plugin, event_id, correlation_id, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", plugin, event_id, correlation_id, "{message}")
            }
        }
    }

    /// Ends the call and hands back its output.
    pub fn finish(&mut self) -> Output {
        self.deadline = None;
        Output {
            emitted: std::mem::take(&mut self.call.emitted),
            logs: std::mem::take(&mut self.call.logs),
            kv: self.kv.finish(),
            http: self.http.as_mut().map(|h| h.finish()).unwrap_or_default(),
        }
    }
}

/// What a call produced.
pub struct Output {
    pub emitted: Vec<Routed>,
    pub logs: Vec<LogLine>,
    /// What it read and wrote in its buckets (to commit if it succeeded).
    pub kv: KvEffects,
    /// The requests it sent.
    pub http: super::http::HttpOutput,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self
                .wasi
                .as_mut()
                .expect("WASI is linked only for plugins that import it, and those get a context"),
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        let http = self
            .http
            .as_mut()
            .expect("wasi:http is linked only for plugins that import it, and those get its state");
        // The deadline moves while a call waits for a key's lock.
        http.hooks.deadline = self.deadline;
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut http.ctx,
            table: &mut self.table,
            hooks: &mut http.hooks,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: wit::Level, message: String) {
        let mut message = self.config.scrub(message);
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("… (cut)");
        }
        let level = match level {
            wit::Level::Trace => Level::Trace,
            wit::Level::Debug => Level::Debug,
            wit::Level::Info => Level::Info,
            wit::Level::Warn => Level::Warn,
            wit::Level::Error => Level::Error,
        };
        let kept = self.call.logs.len() < MAX_LOGS_KEPT;
        // On the fast path a kept line is held until the call ends: an
        // attempt that leaves it runs again, and would log twice.
        if !(kept && self.direct_call) {
            self.trace_log(level, &message);
        }
        if kept {
            self.call.logs.push(LogLine {
                level,
                text: message,
            });
        }
    }

    fn emit(&mut self, events: Vec<wit::NewEvent>) -> Result<(), String> {
        if !self.call.may_emit {
            return Err("emit is only possible in handle, not in handle-error".into());
        }
        if self.call.emitted.len() + events.len() > MAX_EMITS_PER_CALL {
            return Err(format!(
                "too many events emitted in one call (limit {MAX_EMITS_PER_CALL})"
            ));
        }
        let mut routed = Vec::with_capacity(events.len());
        for new in events {
            if new.payload.len() > self.max_emitted_payload {
                return Err(format!(
                    "event {:?}: payload of {} bytes is larger than the limit of {} (max_payload_bytes)",
                    new.name,
                    new.payload.len(),
                    self.max_emitted_payload
                ));
            }
            routed.push(self.routes.send(Event::inheriting(
                &self.call.correlation_id,
                self.call.is_dry_run,
                new.name,
                new.payload,
            ))?);
        }
        self.call.emitted.extend(routed);
        Ok(())
    }
}

/// The guest's view of an event.
pub fn to_wit(event: &Event) -> wit::Event {
    let mut view = empty_view();
    fill_view(&mut view, event);
    view
}

/// A view to be filled by [`fill_view`].
pub fn empty_view() -> wit::Event {
    wit::Event {
        id: String::new(),
        name: String::new(),
        meta: wit::Meta {
            created_at_utc: String::new(),
            correlation_id: String::new(),
            attempts: 0,
            is_dry_run: false,
        },
        payload: Vec::new(),
    }
}

/// Rewrites `view` to show `event`, reusing its buffers: an instance keeps
/// one view, so a warm call allocates nothing to pass its event.
pub fn fill_view(view: &mut wit::Event, event: &Event) {
    view.id.clone_from(&event.id);
    view.name.clone_from(&event.name);
    view.meta.created_at_utc.clear();
    crate::event::write_rfc3339_nano(event.meta.created_at_utc, &mut view.meta.created_at_utc);
    view.meta
        .correlation_id
        .clone_from(&event.meta.correlation_id);
    view.meta.attempts = event.meta.attempts;
    view.meta.is_dry_run = event.meta.is_dry_run;
    view.payload.clone_from(&event.payload);
}

impl v0_1::runnel::plugin::types::Host for HostState {}

/// Components built against `runnel:plugin@0.1.0` get the same `log` and
/// `emit`: the interface did not change.
impl v0_1::runnel::plugin::host::Host for HostState {
    fn log(&mut self, level: v0_1::runnel::plugin::types::Level, message: String) {
        use v0_1::runnel::plugin::types::Level as Old;
        let level = match level {
            Old::Trace => wit::Level::Trace,
            Old::Debug => wit::Level::Debug,
            Old::Info => wit::Level::Info,
            Old::Warn => wit::Level::Warn,
            Old::Error => wit::Level::Error,
        };
        host::Host::log(self, level, message)
    }

    fn emit(&mut self, events: Vec<v0_1::runnel::plugin::types::NewEvent>) -> Result<(), String> {
        let events = events
            .into_iter()
            .map(|e| wit::NewEvent {
                name: e.name,
                payload: e.payload,
            })
            .collect();
        host::Host::emit(self, events)
    }
}
