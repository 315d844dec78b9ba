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
//!
//! Beside the call's start, each row has the time to the ack (`acked.rs`)
//! and the machine's own stalls in the same seconds (`hiccup.rs`): the
//! baseline that says how much of a tail any program on this box would
//! have had.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use super::acked::{AckTimed, STAMP_FIELD};
use super::hiccup::Hiccups;
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
pub(super) struct Stamp {
    pub(super) due: u64,
    pub(super) appended: u64,
}

impl Stamp {
    pub(super) fn write(&self) -> Vec<u8> {
        format!("{{\"t\":{},\"a\":{}}}", self.due, self.appended).into_bytes()
    }

    pub(super) fn read(payload: &[u8]) -> Option<Stamp> {
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
/// A handler to measure, and at which rates.
pub struct LatencyCase {
    pub name: String,
    pub handler: Arc<dyn Handler>,
    /// Load it at the shares of the previous case's drain rate, not its
    /// own: two variants of one handler are then compared at the same
    /// rates (a drain rate measured in one round spreads too widely).
    pub rates_of_previous: bool,
}

pub async fn report(
    args: &super::BenchArgs,
    places: &[Place],
    cases: &[LatencyCase],
) -> anyhow::Result<String> {
    let mut out = format!(
        "\nlatency under a steady load: an open-loop producer at shares of the drain rate measured just before\n\
         (\"on a fiber\": at the rates of the case above it, for a comparison at equal load),\n\
         {:.1} s per rate; in ms. p50..max: from an event's due time to its call starting (corrected for\n\
         coordinated omission); app.: from the moment the producer appended it (what the broker and the host\n\
         account for); ack: from its due time to its ack's return; hiccup: how late a thread that only sleeps\n\
         1 ms at a time woke in the same seconds (the machine's own stalls: the floor under the rest)\n\n\
         {:<8} {:<24} {:>6} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>8}\n",
        args.latency_secs, "backend", "case", "share", "target/s", "reached/s", "p50", "p90", "p99", "p99.9", "max",
        "app.p99", "app.p999", "ack p50", "ack p99", "ack p999", "hic.p99", "hic.p999", "hic.max"
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
        let mut drain = 0.0;
        for LatencyCase {
            name,
            handler,
            rates_of_previous,
        } in cases
        {
            if !rates_of_previous || drain == 0.0 {
                let case = Case::new(name, handler.clone());
                drain = measure(&case, &backend, args.events, args.concurrency, super::ORDER)
                    .await?
                    .rate;
            }
            for share in SHARES {
                let rate = drain * share;
                progress::progress().say(format!(
                    "latency, {label}: {name} at {rate:.0} events/s ({:.0}%)",
                    share * 100.0
                ));
                let run = open_loop(
                    place,
                    handler.clone(),
                    rate,
                    args.latency_secs,
                    args.concurrency,
                )
                .await?;
                let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                let max = |h: &Histogram<u64>| h.max() as f64 / 1000.0;
                out.push_str(&format!(
                    "{label:<8} {name:<24} {:>5.0}% {rate:>9.0} {:>9.0} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>8.3} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>8.3} {:>8.3}\n",
                    share * 100.0,
                    run.reached,
                    ms(&run.waits, 0.5),
                    ms(&run.waits, 0.9),
                    ms(&run.waits, 0.99),
                    ms(&run.waits, 0.999),
                    max(&run.waits),
                    ms(&run.from_append, 0.99),
                    ms(&run.from_append, 0.999),
                    ms(&run.acked, 0.5),
                    ms(&run.acked, 0.99),
                    ms(&run.acked, 0.999),
                    ms(&run.hiccups, 0.99),
                    ms(&run.hiccups, 0.999),
                    max(&run.hiccups),
                ));
            }
        }
    }
    Ok(out)
}

/// What one rate of an open-loop run measured; delays in µs.
struct Run {
    /// Events/s the producer reached.
    reached: f64,
    /// From due to the call's start.
    waits: Histogram<u64>,
    /// From the append to the call's start.
    from_append: Histogram<u64>,
    /// From due to the ack's return.
    acked: Histogram<u64>,
    /// The hiccup meter's, over the same seconds.
    hiccups: Histogram<u64>,
}

/// Appends at `rate` events/s for `secs` while a subscriber handles them.
async fn open_loop(
    place: &Place,
    handler: Arc<dyn Handler>,
    rate: f64,
    secs: f64,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let total = ((rate * secs) as usize).max(1);
    let (broker, read_count): (Arc<dyn Broker>, usize) = match place {
        // The default capacity, as `runnel run` has it: a producer that
        // outruns the host then waits (counted: its events' due times do
        // not move). Room for the whole run instead let the stream's buffer
        // grow by doubling under the broker's lock, copying up to half a
        // million entries at a time: the native handler's p99 at 25% load
        // was 22-34 ms that way, 0.5-2.9 ms with this capacity.
        Place::Memory => (
            MemoryBroker::new(crate::config::DEFAULT_MEMORY_CAPACITY),
            256,
        ),
        Place::Redis(url) => (RedisBroker::connect(url, Trimming::default()).await?, 512),
    };
    let stream = format!("runnel-bench-latency-{}", uuid::Uuid::new_v4().simple());
    broker
        .create_group(&stream, "bench", StartFrom::Beginning)
        .await?;
    let base = Instant::now();
    let timed = Arc::new(AckTimed::new(broker.clone(), base)?);
    let stamped = Arc::new(Stamped {
        inner: handler,
        base,
        waits: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        from_append: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
    });
    let stats = Arc::new(Stats::default());
    let subscriber = Subscriber::new(
        timed.clone(),
        Publisher::new(timed.clone(), Arc::new(Routes::default())),
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

    let hiccups = Hiccups::start()?;
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
    let hiccups = hiccups.stop()?;
    shutdown.cancel();
    task.await??;
    if let Place::Redis(url) = place {
        let redis = RedisBroker::connect(url, Trimming::default()).await?;
        // UNLINK: a stream of a few hundred thousand entries took DEL 11-18
        // ms of Redis's own time (its slow log), which the next rate's
        // warm-up would otherwise wait out.
        let _: () = redis::cmd("UNLINK")
            .arg(&stream)
            .query_async(&mut redis.commands())
            .await?;
    }
    let waits = stamped.waits.lock().clone();
    let from_append = stamped.from_append.lock().clone();
    Ok(Run {
        reached,
        waits,
        from_append,
        acked: timed.acked(),
        hiccups,
    })
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
            let stamp = Stamp {
                due: due(i).as_nanos() as u64,
                appended: now.as_nanos() as u64,
            }
            .write();
            let mut fields = event_fields(&Event::new("order.created", stamp.clone()));
            fields.push((STAMP_FIELD.to_string(), stamp));
            batch.push(Append {
                stream: stream.clone(),
                fields,
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
