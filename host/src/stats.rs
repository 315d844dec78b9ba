//! Counters per plugin: what the summary table and the metrics report.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::handler::FailureKind;

/// Monotonic counters, updated lock-free from every delivery task.
#[derive(Debug)]
pub struct Stats {
    /// Seconds per call to `handle`: 10 µs to about 10 s in ×4 steps.
    pub latency: Histogram,
    /// Calls to `handle` timed in `latency`, and their total time in ns:
    /// what a mean latency over an interval is computed from (the
    /// histogram does not tell its sum).
    pub calls: AtomicU64,
    pub call_nanos: AtomicU64,
    /// Events handled successfully.
    pub handled: AtomicU64,
    /// Failed attempts that were scheduled for another try.
    pub retried: AtomicU64,
    /// Failed attempts of any kind (a dead-lettered event counts its last one).
    pub failed: AtomicU64,
    /// `failed`, by kind, in the order of [`FailureKind::ALL`].
    pub failed_by_kind: [AtomicU64; FailureKind::ALL.len()],
    /// Events moved to a dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Events on the plugin's streams whose name it does not handle.
    pub skipped: AtomicU64,
    /// Redeliveries of events already handled, acknowledged without a call.
    pub deduplicated: AtomicU64,
    /// Traps, in `handle` or `handle-error`.
    pub traps: AtomicU64,
    /// Calls to `handle-error` that trapped.
    pub error_handler_failures: AtomicU64,
    /// Consumer groups created again after they vanished from a stream.
    pub groups_recreated: AtomicU64,
    /// Entries trimmed (or deleted) from a source stream before the
    /// plugin's group read them.
    pub removed_unread: AtomicU64,
    /// Successful calls whose key-value writes, emits and ack were
    /// committed in one step.
    pub kv_commits: AtomicU64,
    /// Calls run again because a key they read changed before their commit
    /// (not counted as attempts).
    pub kv_conflicts: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Calls to `handle` timed, and their total time in ns.
    pub calls: u64,
    pub call_nanos: u64,
    pub handled: u64,
    pub retried: u64,
    pub failed: u64,
    /// Failed attempts by kind, in the order of [`FailureKind::ALL`].
    pub failed_by_kind: [u64; FailureKind::ALL.len()],
    pub dead_lettered: u64,
    pub skipped: u64,
    pub deduplicated: u64,
    pub traps: u64,
    pub error_handler_failures: u64,
    pub groups_recreated: u64,
    pub removed_unread: u64,
    pub kv_commits: u64,
    pub kv_conflicts: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: Histogram::new(exponential_buckets(1e-5, 4.0, 11)),
            calls: AtomicU64::default(),
            call_nanos: AtomicU64::default(),
            handled: AtomicU64::default(),
            retried: AtomicU64::default(),
            failed: AtomicU64::default(),
            failed_by_kind: Default::default(),
            dead_lettered: AtomicU64::default(),
            skipped: AtomicU64::default(),
            deduplicated: AtomicU64::default(),
            traps: AtomicU64::default(),
            error_handler_failures: AtomicU64::default(),
            groups_recreated: AtomicU64::default(),
            removed_unread: AtomicU64::default(),
            kv_commits: AtomicU64::default(),
            kv_conflicts: AtomicU64::default(),
        }
    }
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Times one call to `handle`.
    pub fn call_took(&self, took: std::time::Duration) {
        self.latency.observe(took.as_secs_f64());
        self.calls.fetch_add(1, Relaxed);
        self.call_nanos
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Counts a failed attempt of `kind`.
    pub fn failed(&self, kind: FailureKind) {
        Stats::bump(&self.failed);
        let i = FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind is listed");
        Stats::bump(&self.failed_by_kind[i]);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            calls: self.calls.load(Relaxed),
            call_nanos: self.call_nanos.load(Relaxed),
            handled: self.handled.load(Relaxed),
            retried: self.retried.load(Relaxed),
            failed: self.failed.load(Relaxed),
            failed_by_kind: std::array::from_fn(|i| self.failed_by_kind[i].load(Relaxed)),
            dead_lettered: self.dead_lettered.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            deduplicated: self.deduplicated.load(Relaxed),
            traps: self.traps.load(Relaxed),
            error_handler_failures: self.error_handler_failures.load(Relaxed),
            groups_recreated: self.groups_recreated.load(Relaxed),
            removed_unread: self.removed_unread.load(Relaxed),
            kv_commits: self.kv_commits.load(Relaxed),
            kv_conflicts: self.kv_conflicts.load(Relaxed),
        }
    }
}

/// Renders the per-plugin summary as an aligned table.
pub fn summary_table(rows: &[(String, Snapshot)]) -> String {
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(6);
    let mut out = format!(
        "{:<width$}  {:>8}  {:>8}  {:>8}  {:>13}  {:>8}  {:>12}\n",
        "plugin", "handled", "retried", "failed", "dead-lettered", "skipped", "deduplicated"
    );
    for (name, s) in rows {
        out.push_str(&format!(
            "{:<width$}  {:>8}  {:>8}  {:>8}  {:>13}  {:>8}  {:>12}\n",
            name, s.handled, s.retried, s.failed, s.dead_lettered, s.skipped, s.deduplicated
        ));
    }
    out
}
