//! Latency under a steady load (`runnel bench --latency`): what users feel
//! when events arrive at a rate the host can sustain, rather than how fast
//! it drains a full stream.
//!
//! Per backend and handler, the drain rate is measured first; then an
//! open-loop producer appends at 25, 50, 75 and 90% of it, each event
//! stamped with the time it was *due*, not the time it went out. A call
//! records how long after its due time it started, in an HDR histogram
//! (`hdrhistogram`). Stamping the due time corrects for coordinated
//! omission: when the producer or the host falls behind, the events that
//! should have gone out meanwhile count every microsecond they waited.
//!
//! The producer runs on a thread of its own with its own runtime, pacing
//! itself with the OS's sleep (tens of µs) rather than the runtime's timer
//! (1 ms granularity), and appends whatever is due in one batch.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::{measure, progress, subscription, Backend, Case};
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{RedisBroker, Trimming};
use crate::broker::{Append, Broker, StartFrom};
use crate::event::Event;
use crate::handler::{ErrorHandled, Failure, Handled, Handler};
use crate::publisher::{event_fields, Publisher};
use crate::routes::Routes;
use crate::stats::Stats;
use crate::subscriber::Subscriber;

/// Where the latency cases run.
#[derive(Clone, Debug)]
pub enum Place {
    Memory,
    Redis(String),
}

/// The shares of the measured drain rate the producer runs at.
const SHARES: [f64; 4] = [0.25, 0.5, 0.75, 0.9];

/// Most events one append carries when the producer catches up.
const MAX_BATCH: usize = 512;

/// A handler that records how late each call starts, then calls through.
struct Stamped {
    inner: Arc<dyn Handler>,
    /// The instant the stamps count from.
    base: Instant,
    /// Microseconds from an event's due time to its call.
    waits: Mutex<Histogram<u64>>,
    /// Microseconds from the moment the producer appended it to its call:
    /// the part of the wait that the broker and the host account for, not
    /// a producer that fell behind its schedule (on a shared 2-core box,
    /// when the scheduler runs something else instead of it).
    from_append: Mutex<Histogram<u64>>,
}

#[async_trait]
impl Handler for Stamped {
    async fn handle(&self, event: &Event) -> Handled {
        if let Some(stamp) = Stamp::read(&event.payload) {
            let now = self.base.elapsed().as_nanos() as u64;
            let micros = |since: u64| (now.saturating_sub(since) / 1000).max(1);
            self.waits.lock().saturating_record(micros(stamp.due));
            self.from_append
                .lock()
                .saturating_record(micros(stamp.appended));
        }
        self.inner.handle(event).await
    }

    async fn handle_error(&self, failure: &Failure, event: Option<&Event>) -> ErrorHandled {
        self.inner.handle_error(failure, event).await
    }
}

/// When an event was due and when the producer appended it, in ns since
/// the base: the payload `{"t":<due>,"a":<appended>}`.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    due: u64,
    appended: u64,
}

impl Stamp {
    fn write(&self) -> Vec<u8> {
        format!("{{\"t\":{},\"a\":{}}}", self.due, self.appended).into_bytes()
    }

    fn read(payload: &[u8]) -> Option<Stamp> {
        let (due, appended) = std::str::from_utf8(payload)
            .ok()?
            .strip_prefix("{\"t\":")?
            .strip_suffix('}')?
            .split_once(",\"a\":")?;
        Some(Stamp {
            due: due.parse().ok()?,
            appended: appended.parse().ok()?,
        })
    }
}

/// The table: per place, handler and rate, the rate reached and the
/// percentiles of the delay from due to call.
pub async fn report(
    args: &super::BenchArgs,
    places: &[Place],
    cases: &[(String, Arc<dyn Handler>)],
) -> anyhow::Result<String> {
    let mut out = format!(
        "\nlatency under a steady load: an open-loop producer at shares of the drain rate measured just before,\n\
         {:.1} s per rate; from an event's due time to its call starting (corrected for coordinated omission), in ms;\n\
         the last two: from the moment the producer appended it (what the broker and the host account for)\n\n\
         {:<8} {:<30} {:>6} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}\n",
        args.latency_secs, "backend", "case", "share", "target/s", "reached/s", "p50", "p90", "p99", "p99.9", "max", "app. p99", "app. p99.9"
    );
    for place in places {
        let backend = match place {
            Place::Memory => Backend::Memory,
            Place::Redis(url) => Backend::Redis(url.clone()),
        };
        let label = match place {
            Place::Memory => "memory",
            Place::Redis(_) => "redis",
        };
        for (name, handler) in cases {
            let case = Case::new(name, handler.clone());
            let drain = measure(&case, &backend, args.events, args.concurrency, super::ORDER)
                .await?
                .rate;
            for share in SHARES {
                let rate = drain * share;
                progress::progress().say(format!(
                    "latency, {label}: {name} at {rate:.0} events/s ({:.0}%)",
                    share * 100.0
                ));
                let (reached, waits, from_append) = open_loop(
                    place,
                    handler.clone(),
                    rate,
                    args.latency_secs,
                    args.concurrency,
                )
                .await?;
                let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                out.push_str(&format!(
                    "{label:<8} {name:<30} {:>5.0}% {rate:>10.0} {reached:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>9.3}\n",
                    share * 100.0,
                    ms(&waits, 0.5),
                    ms(&waits, 0.9),
                    ms(&waits, 0.99),
                    ms(&waits, 0.999),
                    waits.max() as f64 / 1000.0,
                    ms(&from_append, 0.99),
                    ms(&from_append, 0.999),
                ));
            }
        }
    }
    Ok(out)
}

/// Appends at `rate` events/s for `secs` while a subscriber handles them;
/// returns the rate the producer reached and the delays, from due and from
/// append.
async fn open_loop(
    place: &Place,
    handler: Arc<dyn Handler>,
    rate: f64,
    secs: f64,
    concurrency: usize,
) -> anyhow::Result<(f64, Histogram<u64>, Histogram<u64>)> {
    let total = ((rate * secs) as usize).max(1);
    let (broker, read_count): (Arc<dyn Broker>, usize) = match place {
        Place::Memory => (MemoryBroker::new(total + 1), 256),
        Place::Redis(url) => (RedisBroker::connect(url, Trimming::default()).await?, 512),
    };
    let stream = format!("runnel-bench-latency-{}", uuid::Uuid::new_v4().simple());
    broker
        .create_group(&stream, "bench", StartFrom::Beginning)
        .await?;
    let base = Instant::now();
    let stamped = Arc::new(Stamped {
        inner: handler,
        base,
        waits: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        from_append: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let stats = Arc::new(Stats::default());
    let subscriber = Subscriber::new(
        broker.clone(),
        Publisher::new(broker.clone(), Arc::new(Routes::default())),
        subscription(
            vec![stream.clone()],
            concurrency,
            read_count,
            Duration::from_millis(100),
        ),
        stats.clone(),
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(subscriber.consume(stamped.clone(), shutdown.clone()));
    warm_up(broker.as_ref(), &stream, &stats).await?;

    let producer = {
        let (place, broker, stream) = (place.clone(), broker.clone(), stream.clone());
        // Named, so that `top -H` or `perf sched` can tell it from the host's
        // own threads.
        std::thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || produce(&place, broker, stream, base, rate, total))?
    };
    let reached = tokio::task::spawn_blocking(move || producer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the latency producer panicked"))??;
    while broker.backlog(&stream, "bench").await? > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shutdown.cancel();
    task.await??;
    if let Place::Redis(url) = place {
        let redis = RedisBroker::connect(url, Trimming::default()).await?;
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .query_async(&mut redis.commands())
            .await?;
    }
    let waits = stamped.waits.lock().clone();
    let from_append = stamped.from_append.lock().clone();
    Ok((reached, waits, from_append))
}

/// One unstamped event through the subscriber before the clock starts, so
/// that the figures are of a host under a steady load, not of its start
/// (the group's first read, the first instance).
async fn warm_up(broker: &dyn Broker, stream: &str, stats: &Stats) -> anyhow::Result<()> {
    broker
        .append(vec![Append {
            stream: stream.to_string(),
            fields: event_fields(&Event::new("order.created", b"{}".to_vec())),
        }])
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.snapshot().handled == 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up event was not handled in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// The producer's loop, on its own thread and runtime: event `i` is due at
/// `start + i / rate`; whatever is due goes out in one append. On Redis it
/// has a connection of its own, driven by its own runtime, as a producer
/// in another process has: the host's connection is driven by the host's
/// worker, and appending through it made the producer wait for the host
/// (p50 at half load 1.6 ms that way).
fn produce(
    place: &Place,
    memory: Arc<dyn Broker>,
    stream: String,
    base: Instant,
    rate: f64,
    total: usize,
) -> anyhow::Result<f64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let broker: Arc<dyn Broker> = match place {
        Place::Memory => memory,
        Place::Redis(url) => runtime.block_on(RedisBroker::connect(url, Trimming::default()))?,
    };
    let start = base.elapsed();
    let due = |i: usize| start + Duration::from_secs_f64(i as f64 / rate);
    let mut i = 0;
    while i < total {
        let now = base.elapsed();
        if now < due(i) {
            std::thread::sleep(due(i) - now);
            continue;
        }
        let mut batch = Vec::new();
        while i < total && due(i) <= now && batch.len() < MAX_BATCH {
            let payload = Stamp {
                due: due(i).as_nanos() as u64,
                appended: now.as_nanos() as u64,
            }
            .write();
            batch.push(Append {
                stream: stream.clone(),
                fields: event_fields(&Event::new("order.created", payload)),
            });
            i += 1;
        }
        runtime.block_on(broker.append(batch))?;
    }
    Ok(total as f64 / (base.elapsed() - start).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back() {
        let stamp = Stamp {
            due: 12345,
            appended: 12400,
        };
        assert_eq!(Stamp::read(&stamp.write()), Some(stamp));
        assert_eq!(Stamp::read(br#"{"t":12345}"#), None);
        assert_eq!(Stamp::read(br#"{"order_id":"o"}"#), None);
    }
}
