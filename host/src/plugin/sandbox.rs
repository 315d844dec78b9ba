//! What a plugin can reach: nothing but the `host` interface unless granted.
//!
//! Components built for `wasm32-wasip2` (Rust's std, Python, JavaScript
//! runtimes) import WASI interfaces even when they never use them, so those
//! imports are satisfied, but by a context that denies by default: no
//! preopened directories, no environment, no sockets, stdio to nowhere (or,
//! granted, to the host's log, line by line), and a
//! wall clock frozen at the time of the event being handled. Each grant in the
//! config opens one of these, no more.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx};

use super::stdio::{CallTag, LogStream, StderrTail};
use crate::config::Grants;

/// The time a plugin without the `clock` grant sees: the current event's
/// creation time, in nanoseconds since the Unix epoch.
#[derive(Clone, Default)]
pub struct EventClock(Arc<AtomicU64>);

impl EventClock {
    pub fn set(&self, unix_nanos: u64) {
        self.0.store(unix_nanos, Relaxed);
    }
}

impl HostWallClock for EventClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Relaxed))
    }
}

/// A monotonic clock that tells nothing about real time: it advances by one
/// nanosecond per reading, enough for code that measures intervals.
#[derive(Default)]
struct CountingClock(AtomicU64);

impl HostMonotonicClock for CountingClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1, Relaxed)
    }
}

/// A capability a component imports, and whether its grants open it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    pub capability: &'static str,
    /// What to put in the plugin's config to open it.
    pub grant: &'static str,
    pub granted: bool,
}

/// A capability a component imports but its grants do not open: calls to
/// it will be denied at run time.
pub type Ungranted = Capability;

/// The capabilities `imports` reach for, each with whether `grants` open it.
pub fn capabilities(imports: &[String], grants: &Grants) -> Vec<Capability> {
    let rules: [(&str, &'static str, &'static str, bool); 7] = [
        (
            "wasi:filesystem/",
            "filesystem",
            "grants.dirs",
            !grants.dirs.is_empty(),
        ),
        (
            "wasi:cli/environment",
            "environment",
            "grants.env",
            !grants.env.is_empty(),
        ),
        (
            "wasi:cli/stdout",
            "stdout/stderr",
            "grants.stdio = true",
            grants.stdio,
        ),
        (
            "wasi:clocks/wall-clock",
            "wall clock",
            "grants.clock = true",
            grants.clock,
        ),
        (
            "wasi:keyvalue/",
            "key-value",
            "grants.kv = [\"BUCKET\"]",
            !grants.kv.is_empty() || !grants.kv_shared.is_empty(),
        ),
        (
            "wasi:http/outgoing-handler",
            "outbound HTTP",
            "grants.http = [\"https://HOST\"]",
            !grants.http.is_empty(),
        ),
        (
            "wasi:sockets/",
            "network",
            "nothing yet: no network grant exists",
            false,
        ),
    ];
    rules
        .iter()
        .filter(|(prefix, ..)| imports.iter().any(|i| i.starts_with(prefix)))
        .map(|&(_, capability, grant, granted)| Capability {
            capability,
            grant,
            granted,
        })
        .collect()
}

/// The capabilities `imports` reach for that `grants` leave closed.
pub fn ungranted(imports: &[String], grants: &Grants) -> Vec<Ungranted> {
    capabilities(imports, grants)
        .into_iter()
        .filter(|c| !c.granted)
        .collect()
}

/// Builds the WASI context a plugin's instance gets from its grants.
pub fn wasi_context(
    grants: &Grants,
    clock: &EventClock,
    plugin: &Arc<str>,
    tag: &CallTag,
    stderr_tail: &StderrTail,
) -> anyhow::Result<WasiCtx> {
    let mut b = WasiCtx::builder();
    if grants.stdio {
        b.stdout(LogStream::new(plugin.clone(), "stdout", tag.clone()));
    }
    // Kept for a trapped call's reason either way; logged only if granted.
    b.stderr(
        LogStream::new(plugin.clone(), "stderr", tag.clone())
            .keeping_tail(stderr_tail.clone(), grants.stdio),
    );
    for name in &grants.env {
        if let Ok(value) = std::env::var(name) {
            b.env(name, value);
        }
    }
    for dir in &grants.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        b.preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("granting directory {}", dir.host.display()))?;
    }
    if !grants.clock {
        b.wall_clock(clock.clone());
        b.monotonic_clock(CountingClock::default());
    }
    Ok(b.build())
}
