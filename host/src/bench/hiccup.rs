//! The machine's own stalls during a latency run, measured as jHiccup does:
//! a thread that does nothing but sleep [`INTERVAL`] at a time records how
//! much later than asked it woke. Whatever delays that thread (the
//! scheduler running something else on both cores, the hypervisor taking
//! the vCPU away, page reclaim) delays the host's threads and Redis as much,
//! so its percentiles are the floor under the latency table's: a host tail
//! no larger than the hiccups' is the platform's, not the host's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How long the meter asks to sleep each time (jHiccup's default).
const INTERVAL: Duration = Duration::from_millis(1);

/// A running hiccup meter; [`Hiccups::stop`] ends it and returns what it saw.
pub(super) struct Hiccups {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Histogram<u64>>,
}

impl Hiccups {
    /// Starts the meter on a thread of its own (named `bench-hiccups`).
    pub(super) fn start() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut hiccups = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bench-hiccups".into())
                .spawn(move || {
                    let interval = INTERVAL.as_micros() as u64;
                    while !stop.load(Ordering::Relaxed) {
                        let asked = Instant::now();
                        std::thread::sleep(INTERVAL);
                        let late = (asked.elapsed().as_micros() as u64).saturating_sub(interval);
                        // A stall of n intervals also hid the n wake-ups
                        // that should have happened in it; counting them
                        // (shorter by one interval each) is the same
                        // coordinated-omission correction as the producer's.
                        let _ = hiccups.record_correct(late.max(1), interval);
                    }
                    hiccups
                })?
        };
        Ok(Hiccups { stop, thread })
    }

    /// Stops the meter: how late each wake-up was, in µs.
    pub(super) fn stop(self) -> anyhow::Result<Histogram<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the hiccup meter panicked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_records_one_wake_up_per_interval_at_least() {
        let meter = Hiccups::start().unwrap();
        let since = Instant::now();
        // Not a synchronisation: the meter is given time to wake many times.
        std::thread::sleep(Duration::from_millis(30));
        let hiccups = meter.stop().unwrap();
        let ran = since.elapsed().as_micros() as u64;
        // Corrected for omission, every interval the meter lived through
        // is counted, stalled or not (the first and last may straddle the
        // test's window).
        let interval = INTERVAL.as_micros() as u64;
        assert!(
            !hiccups.is_empty() && hiccups.len() + 2 >= ran / (interval + hiccups.max().max(1)),
            "{} wake-ups in {ran} µs",
            hiccups.len()
        );
        assert!(hiccups.max() < 600_000_000);
    }
}
