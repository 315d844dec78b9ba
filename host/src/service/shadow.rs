//! Shadow runs: try a new version of a plugin on live traffic with nothing
//! at risk.
//!
//! After each live call, the shadow gets a copy of the event marked
//! `is_dry_run`. What it emits is compared with what the live version
//! emitted and then dropped: a shadow never publishes, never acks, never
//! delays the live path (its calls run beside it, and when it falls behind
//! events are skipped and counted rather than queued without bound).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::event::Event;
use crate::handler::{Handled, Handler, Routed, Verdict};

/// Shadow calls running at once per live plugin; beyond, events are skipped.
const MAX_SHADOW_CALLS: usize = 64;

/// A shadow plugin attached to a live one. It holds the shadow as a
/// [`Handler`] (its own slot, so a reload of the shadow's file reaches it),
/// not as a slot type, so the live slot that calls it does not depend on
/// what a shadow is made of.
pub struct Shadow {
    /// The shadow plugin's name, as `[[plugin]] name` gives it.
    pub name: String,
    handler: Arc<dyn Handler>,
    pub stats: Arc<ShadowStats>,
    calls: Arc<Semaphore>,
}

/// How a shadow compares with the live version.
#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Events where both gave the same verdict and emitted the same events.
    pub agreed: AtomicU64,
    pub disagreed: AtomicU64,
    /// Events not shadowed because the shadow was still busy.
    pub skipped: AtomicU64,
    /// The latest difference, in words.
    pub last_difference: Mutex<Option<String>>,
}

/// The shadow's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agreement {
    pub agreed: u64,
    pub disagreed: u64,
    pub skipped: u64,
}

impl ShadowStats {
    pub fn agreement(&self) -> Agreement {
        Agreement {
            agreed: self.agreed.load(Relaxed),
            disagreed: self.disagreed.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
        }
    }

    pub fn last_difference(&self) -> Option<String> {
        self.last_difference.lock().clone()
    }
}

impl Shadow {
    pub fn new(name: &str, handler: Arc<dyn Handler>) -> Arc<Shadow> {
        Arc::new(Shadow {
            name: name.to_string(),
            handler,
            stats: Arc::default(),
            calls: Arc::new(Semaphore::new(MAX_SHADOW_CALLS)),
        })
    }

    /// Runs the shadow on a dry-run copy of `event` in the background and
    /// records whether it agrees with the live result.
    pub fn follow(&self, event: &Event, live: &Handled) {
        let Ok(permit) = self.calls.clone().try_acquire_owned() else {
            self.stats.skipped.fetch_add(1, Relaxed);
            return;
        };
        let mut dry = event.clone();
        dry.meta.is_dry_run = true;
        let live = Outcome::of(live);
        let (handler, stats, name) = (self.handler.clone(), self.stats.clone(), self.name.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let shadow = Outcome::of(&handler.handle(&dry).await);
            match live.difference(&shadow) {
                None => {
                    stats.agreed.fetch_add(1, Relaxed);
                }
                Some(difference) => {
                    stats.disagreed.fetch_add(1, Relaxed);
                    tracing::info!(shadow = %name, event_id = %dry.id, correlation_id = %dry.meta.correlation_id, "shadow disagrees: {difference}");
                    *stats.last_difference.lock() = Some(format!("event {}: {difference}", dry.id));
                }
            }
        });
    }
}

/// What a call did, reduced to what two versions should agree on: the kind
/// of verdict and the emitted events' streams, names and payloads (ids and
/// times are fresh on every call, so they never match).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    verdict: &'static str,
    emitted: Vec<(String, String, Vec<u8>)>,
}

impl Outcome {
    fn of(handled: &Handled) -> Outcome {
        Outcome {
            verdict: match handled.verdict {
                Verdict::Done => "done",
                Verdict::Retry(_) => "retry",
                Verdict::Reject(_) => "reject",
                Verdict::Trap(_) => "trap",
                Verdict::Timeout(_) => "timeout",
                Verdict::OutOfMemory(_) => "memory",
                Verdict::OutOfFuel(_) => "fuel",
            },
            emitted: handled
                .emitted
                .iter()
                .map(|Routed { stream, event: e }| {
                    (stream.clone(), e.name.clone(), e.payload.clone())
                })
                .collect(),
        }
    }

    fn difference(&self, shadow: &Outcome) -> Option<String> {
        if self == shadow {
            return None;
        }
        Some(format!(
            "live: {}, shadow: {}",
            self.describe(),
            shadow.describe()
        ))
    }

    fn describe(&self) -> String {
        let emitted: Vec<String> = self
            .emitted
            .iter()
            .map(|(stream, name, payload)| {
                let text = String::from_utf8_lossy(payload);
                let cut: String = text.chars().take(120).collect();
                format!("{name}→{stream} {cut}")
            })
            .collect();
        format!("{} emitting [{}]", self.verdict, emitted.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handled(verdict: Verdict, payloads: &[&str]) -> Handled {
        Handled {
            verdict,
            emitted: payloads
                .iter()
                .map(|p| Routed {
                    stream: "out".to_string(),
                    event: Event::new("x", p.as_bytes().to_vec()),
                })
                .collect(),
            logs: Vec::new(),
            kv: Default::default(),
            http: Vec::new(),
        }
    }

    #[test]
    fn fresh_ids_and_times_do_not_count_as_a_difference() {
        let a = Outcome::of(&handled(Verdict::Done, &["1", "2"]));
        let b = Outcome::of(&handled(Verdict::Done, &["1", "2"]));
        assert_eq!(a.difference(&b), None);
    }

    #[test]
    fn a_different_payload_or_verdict_is_a_difference_named_in_words() {
        let live = Outcome::of(&handled(Verdict::Done, &["1"]));
        let other_payload = Outcome::of(&handled(Verdict::Done, &["2"]));
        let retry = Outcome::of(&handled(Verdict::Retry("later".into()), &[]));
        let text = live.difference(&other_payload).unwrap();
        assert!(
            text.contains("x→out 1") && text.contains("x→out 2"),
            "{text}"
        );
        assert!(live.difference(&retry).unwrap().contains("shadow: retry"));
    }
}
