//! A circuit breaker per plugin: a plugin that fails call after call is left
//! alone for a while instead of burning every event's attempts.
//!
//! Closed: calls go through; `failures` failed calls in a row (retry, trap,
//! timeout — not `reject`, which is a verdict on one event) trip it. Open:
//! calls wait, their entries stay in flight (pending, kept alive), none is
//! failed or dropped. After `pause` one call goes through as a probe
//! (half-open): success closes the breaker, failure opens it again.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// How often a call waiting on a half-open breaker looks again.
const PROBE_WAIT: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures_in_a_row: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What the breaker reports to health checks and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Closed,
    Open,
    HalfOpen,
}

impl Position {
    pub fn as_str(self) -> &'static str {
        match self {
            Position::Closed => "closed",
            Position::Open => "open",
            Position::HalfOpen => "half-open",
        }
    }
}

/// One plugin's breaker.
#[derive(Debug)]
pub struct Breaker {
    /// Failed calls in a row that trip it; 0 never trips.
    threshold: u32,
    pause: Duration,
    state: Mutex<State>,
    /// Times it opened.
    trips: AtomicU64,
}

impl Breaker {
    /// Times it has opened since it was made.
    pub fn trips(&self) -> u64 {
        self.trips.load(Relaxed)
    }

    pub fn new(threshold: u32, pause: Duration) -> Breaker {
        Breaker {
            threshold,
            pause,
            state: Mutex::new(State::Closed {
                failures_in_a_row: 0,
            }),
            trips: AtomicU64::new(0),
        }
    }

    /// A breaker that never trips.
    pub fn never() -> Breaker {
        Breaker::new(0, Duration::ZERO)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    pub fn position(&self) -> Position {
        match *self.lock() {
            State::Closed { .. } => Position::Closed,
            State::Open { .. } => Position::Open,
            State::HalfOpen => Position::HalfOpen,
        }
    }

    /// Waits until a call may be made.
    pub async fn admit(&self) {
        loop {
            let wait = {
                let mut state = self.lock();
                match *state {
                    State::Closed { .. } => return,
                    State::Open { until } if Instant::now() >= until => {
                        // This caller is the probe; others wait for its verdict.
                        *state = State::HalfOpen;
                        return;
                    }
                    State::Open { until } => until - Instant::now(),
                    State::HalfOpen => PROBE_WAIT,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Records how an admitted call went: `Some(true)` succeeded,
    /// `Some(false)` failed in a way that speaks about the plugin, `None` says
    /// nothing about it (a rejected event).
    pub fn record(&self, plugin: &str, succeeded: Option<bool>) {
        let Some(succeeded) = succeeded else { return };
        let mut state = self.lock();
        *state = match (*state, succeeded) {
            (_, true) => {
                if !matches!(*state, State::Closed { .. }) {
                    tracing::info!(plugin, "circuit breaker closed: the plugin succeeds again");
                }
                State::Closed {
                    failures_in_a_row: 0,
                }
            }
            (State::Closed { failures_in_a_row }, false) => {
                let failures_in_a_row = failures_in_a_row + 1;
                if self.threshold > 0 && failures_in_a_row >= self.threshold {
                    self.trips.fetch_add(1, Relaxed);
                    tracing::warn!(
                        plugin,
                        "circuit breaker open: {failures_in_a_row} failed calls in a row; events wait {:?} for a probe",
                        self.pause
                    );
                    State::Open {
                        until: Instant::now() + self.pause,
                    }
                } else {
                    State::Closed { failures_in_a_row }
                }
            }
            (State::HalfOpen, false) => {
                self.trips.fetch_add(1, Relaxed);
                tracing::warn!(
                    plugin,
                    "circuit breaker probe failed: open again for {:?}",
                    self.pause
                );
                State::Open {
                    until: Instant::now() + self.pause,
                }
            }
            // A call admitted before the breaker opened, failing late.
            (open @ State::Open { .. }, false) => open,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn admitted_within(breaker: &Breaker, limit: Duration) -> bool {
        tokio::time::timeout(limit, breaker.admit()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_trip_it_and_a_probe_after_the_pause_decides() {
        let b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            b.record("p", Some(false));
        }
        b.record("p", Some(true));
        assert_eq!(b.position(), Position::Closed, "a success resets the count");
        for _ in 0..3 {
            assert!(admitted_within(&b, Duration::ZERO).await);
            b.record("p", Some(false));
        }
        assert_eq!((b.position(), b.trips.load(Relaxed)), (Position::Open, 1));
        assert!(
            !admitted_within(&b, Duration::from_secs(9)).await,
            "no call while open"
        );
        assert!(
            admitted_within(&b, Duration::from_secs(2)).await,
            "the probe"
        );
        assert_eq!(b.position(), Position::HalfOpen);
        assert!(
            !admitted_within(&b, Duration::from_secs(1)).await,
            "one probe at a time"
        );
        b.record("p", Some(false));
        assert_eq!((b.position(), b.trips.load(Relaxed)), (Position::Open, 2));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(admitted_within(&b, Duration::ZERO).await);
        b.record("p", Some(true));
        assert_eq!(b.position(), Position::Closed);
        assert!(admitted_within(&b, Duration::ZERO).await);
    }

    #[tokio::test(start_paused = true)]
    async fn rejections_say_nothing_and_a_zero_threshold_never_trips() {
        let b = Breaker::new(2, Duration::from_secs(1));
        for _ in 0..10 {
            b.record("p", None);
        }
        assert_eq!(b.position(), Position::Closed);
        let never = Breaker::never();
        for _ in 0..1000 {
            never.record("p", Some(false));
        }
        assert_eq!(never.position(), Position::Closed);
    }
}
