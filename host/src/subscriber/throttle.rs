//! A per-plugin bound on failure lines in the log: every failed attempt and
//! every dead letter deserves a line, but a storm of them (a broken
//! dependency failing thousands of events a second) must not flood the log
//! or slow the host. Past the bound, lines are counted, and the next line
//! let through says how many were left out.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Lines let through per window.
const LINES: u32 = 20;
/// The window.
const WINDOW: Duration = Duration::from_secs(1);

/// Lets [`LINES`] lines through per [`WINDOW`].
#[derive(Debug)]
pub(super) struct LogThrottle {
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    let_through: u32,
    /// Lines left out since the last one let through.
    left_out: u64,
}

impl Default for LogThrottle {
    fn default() -> Self {
        LogThrottle {
            state: Mutex::new(Window {
                started: Instant::now(),
                let_through: 0,
                left_out: 0,
            }),
        }
    }
}

impl LogThrottle {
    /// Whether a line may be written now: `Some(n)` with the number of
    /// lines left out before it, `None` to leave this one out.
    pub(super) fn admit(&self) -> Option<u64> {
        let mut w = self.state.lock();
        if w.started.elapsed() >= WINDOW {
            w.started = Instant::now();
            w.let_through = 0;
        }
        if w.let_through >= LINES {
            w.left_out += 1;
            return None;
        }
        w.let_through += 1;
        Some(std::mem::take(&mut w.left_out))
    }
}

/// " (N similar lines left out)" after a line that follows left-out ones.
pub(super) fn left_out_note(left_out: u64) -> String {
    match left_out {
        0 => String::new(),
        n => format!(" ({n} more failure lines of this plugin were left out of the log)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_cut_to_the_bound_and_the_next_line_counts_the_rest() {
        let throttle = LogThrottle::default();
        let admitted = (0..100).filter(|_| throttle.admit().is_some()).count();
        assert_eq!(admitted, LINES as usize);
        // A new window: the first line says how many were left out.
        throttle.state.lock().started -= WINDOW;
        assert_eq!(throttle.admit(), Some(100 - u64::from(LINES)));
        assert_eq!(throttle.admit(), Some(0));
    }
}
