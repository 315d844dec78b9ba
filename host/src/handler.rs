//! What a subscriber calls: a plugin, or native Rust code.
//!
//! The seed library's `Handler` and `ErrorHandler`, as one trait, so that a
//! WebAssembly plugin and a native handler (the benchmark's baseline, and
//! embedders' own code) run through exactly the same delivery path.

use async_trait::async_trait;

use crate::event::Event;

/// How a call to `handle` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handled: publish what it emitted, then acknowledge.
    Done,
    /// Transient failure: try again after backoff while attempts remain.
    Retry(String),
    /// Permanent failure: dead-letter now.
    Reject(String),
    /// The plugin trapped; the instance was discarded.
    Trap(String),
    /// The call ran past its time limit.
    Timeout(String),
    /// The plugin trapped after the host refused it memory (or a table)
    /// beyond its limits; the instance was discarded.
    OutOfMemory(String),
    /// The call used up its fuel budget (`fuel_per_call`).
    OutOfFuel(String),
}

impl Verdict {
    /// The failure this verdict reports, if it is one.
    pub fn failure_kind(&self) -> Option<(FailureKind, &str)> {
        match self {
            Verdict::Done => None,
            Verdict::Retry(m) => Some((FailureKind::HandlerError, m)),
            Verdict::Reject(m) => Some((FailureKind::Rejected, m)),
            Verdict::Trap(m) => Some((FailureKind::Trap, m)),
            Verdict::Timeout(m) => Some((FailureKind::Timeout, m)),
            Verdict::OutOfMemory(m) => Some((FailureKind::Memory, m)),
            Verdict::OutOfFuel(m) => Some((FailureKind::Fuel, m)),
        }
    }

    /// The verdict's name, as the WIT contract's `outcome` names it
    /// (`done`, `retry`, `reject`) or as the host names a trap.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Done => "done",
            Verdict::Retry(_) => "retry",
            Verdict::Reject(_) => "reject",
            Verdict::Trap(_) => "trap",
            Verdict::Timeout(_) => "timeout",
            Verdict::OutOfMemory(_) => "out-of-memory",
            Verdict::OutOfFuel(_) => "out-of-fuel",
        }
    }

    /// Whether the call ended the instance (a trap of any kind): it is
    /// discarded, and the call counts as a trap.
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            Verdict::Trap(_)
                | Verdict::Timeout(_)
                | Verdict::OutOfMemory(_)
                | Verdict::OutOfFuel(_)
        )
    }
}

/// How a verdict reads in reports (`runnel test`, `runnel replay`).
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Done => write!(f, "ok"),
            Verdict::Retry(m) => write!(f, "retry: {m}"),
            Verdict::Reject(m) => write!(f, "reject: {m}"),
            Verdict::Trap(m) => write!(f, "trap: {m}"),
            Verdict::Timeout(m) => write!(f, "timeout: {m}"),
            Verdict::OutOfMemory(m) => write!(f, "out of memory: {m}"),
            Verdict::OutOfFuel(m) => write!(f, "out of fuel: {m}"),
        }
    }
}

/// Severity of a plugin's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// The level's name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// An emitted event and the stream its name routes to (`[routes]`).
#[derive(Clone, Debug, PartialEq)]
pub struct Routed {
    pub stream: String,
    pub event: Event,
}

/// A line a plugin logged during a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub level: Level,
    pub text: String,
}

/// The result of one call: the verdict, the events to publish if it is
/// [`Verdict::Done`], and what the plugin logged.
#[derive(Clone, Debug)]
pub struct Handled {
    pub verdict: Verdict,
    /// Emitted events, each with the stream it is routed to.
    pub emitted: Vec<Routed>,
    pub logs: Vec<LogLine>,
    /// What a successful call read and wrote in its key-value buckets: to
    /// be committed with its emits and the ack, in one step (empty for a
    /// failed call, and for a handler without buckets).
    pub kv: crate::kv::KvEffects,
    /// The HTTP requests the call sent or tried to send, in order.
    pub http: Vec<crate::outbound::Exchange>,
}

impl Handled {
    /// A verdict with nothing emitted, logged or written.
    pub fn verdict(verdict: Verdict) -> Self {
        Handled {
            verdict,
            emitted: Vec::new(),
            logs: Vec::new(),
            kv: Default::default(),
            http: Vec::new(),
        }
    }
}

/// The result of a call to `handle_error`: what it logged, or why it failed.
pub type ErrorHandled = Result<Vec<LogLine>, String>;

/// Kinds of failure reported to `handle_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    HandlerError,
    Rejected,
    Trap,
    Timeout,
    Decode,
    /// The plugin trapped after the host refused it memory beyond
    /// `memory_mb` (plugins see `trap`).
    Memory,
    /// The call used up its fuel budget (plugins see `timeout`).
    Fuel,
    /// The event is too far down a causal chain (an event emitted while
    /// handling an event emitted while handling ...): a cycle through
    /// plugins, most likely. The host's refusal; plugins see `rejected`.
    ChainDepth,
}

impl FailureKind {
    /// The kind's name in logs and dead letters.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::HandlerError => "handler-error",
            FailureKind::Rejected => "rejected",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Decode => "decode",
            FailureKind::ChainDepth => "chain-depth",
            FailureKind::Memory => "memory",
            FailureKind::Fuel => "fuel",
        }
    }

    /// Every kind, in the order metrics list them.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::HandlerError,
        FailureKind::Rejected,
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::Decode,
        FailureKind::Memory,
        FailureKind::Fuel,
        FailureKind::ChainDepth,
    ];
}

/// A failed attempt, as the error handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub kind: FailureKind,
    pub attempt: u32,
    pub is_last_attempt: bool,
    /// Id and correlation id of the failed event, for the host's logs: the
    /// plugin itself gets the event only on the last attempt. Empty when the
    /// entry did not decode.
    pub event_id: String,
    pub correlation_id: String,
    /// Whether the failed event is a dry run, so that `handle-error` has
    /// no side effects either. An entry that did not decode counts as one:
    /// nothing says it is not.
    pub is_dry_run: bool,
}

impl Failure {
    /// What a call's `verdict` on attempt `attempt` of `max_attempts` is as
    /// a failure, `None` for a success. The rule for the last attempt lives
    /// here, for the host and `runnel test` alike: a rejection is the last,
    /// and so is the attempt that uses up `max_attempts`.
    pub fn of_attempt(
        verdict: &Verdict,
        event: &Event,
        attempt: u32,
        max_attempts: u32,
    ) -> Option<Failure> {
        let (kind, message) = verdict.failure_kind()?;
        Some(Failure {
            message: message.to_string(),
            kind,
            attempt,
            is_last_attempt: kind == FailureKind::Rejected || attempt >= max_attempts,
            event_id: event.id.clone(),
            correlation_id: event.meta.correlation_id.clone(),
            is_dry_run: event.meta.is_dry_run,
        })
    }

    /// A failure decided before any call (an entry that does not decode, a
    /// chain too deep, deliveries used up by consumers that died): always
    /// the last. `event` is `None` when the entry did not decode.
    pub fn before_call(
        kind: FailureKind,
        message: String,
        attempt: u32,
        event: Option<&Event>,
    ) -> Failure {
        Failure {
            message,
            kind,
            attempt,
            is_last_attempt: true,
            event_id: event.map(|e| e.id.clone()).unwrap_or_default(),
            correlation_id: event
                .map(|e| e.meta.correlation_id.clone())
                .unwrap_or_default(),
            is_dry_run: event.is_none_or(|e| e.meta.is_dry_run),
        }
    }
}

/// An event handler with its error handler.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one event; `event.meta.attempts` already counts this call.
    async fn handle(&self, event: &Event) -> Handled;

    /// Told about a failed attempt; gets the event only on the last one.
    /// Returns what it logged. An `Err` means the error handler itself failed
    /// (trapped): it is logged and counted, and delivery goes on.
    async fn handle_error(&self, failure: &Failure, event: Option<&Event>) -> ErrorHandled;

    /// Instances kept alive for this handler (warm or running), for metrics;
    /// native handlers have none.
    fn instances_alive(&self) -> usize {
        0
    }

    /// Calls that began on a plugin's synchronous fast path and were run
    /// again on a fiber (they waited on I/O or ran past an epoch tick),
    /// since the version now serving was loaded; native handlers have none.
    fn fast_path_left(&self) -> u64 {
        0
    }

    /// The version now serving, for traces: a plugin's short content hash;
    /// `None` for native handlers.
    fn version(&self) -> Option<String> {
        None
    }
}
