//! One timed drain: pre-fill a stream, let a subscriber empty it, and
//! measure the rate, the CPU per event of this process and of Redis, and
//! this process's memory over it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{cpu, progress, rss, Backend, Case, Spread};
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::{Endpoint, RedisBroker, Trimming};
use crate::broker::{Append, Broker, StartFrom};
use crate::config::Backoff;
use crate::event::Event;
use crate::publisher::{event_fields, Publisher};
use crate::routes::Routes;
use crate::stats::Stats;
use crate::subscriber::{Subscriber, Subscription};

/// This process's resident memory over a drain, in MiB: as it starts, its
/// peak (NaN where the kernel does not let the peak be reset), and as it
/// ends.
#[derive(Clone, Copy, Debug)]
pub(super) struct Memory {
    pub(super) start: f64,
    pub(super) peak: f64,
    pub(super) end: f64,
}

impl Default for Memory {
    /// Not measured.
    fn default() -> Self {
        Memory {
            start: f64::NAN,
            peak: f64::NAN,
            end: f64::NAN,
        }
    }
}

/// One timed drain: its rate, and the CPU each event cost this process and
/// (on Redis) the server.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Round {
    pub(super) rate: f64,
    pub(super) host_us: f64,
    pub(super) redis_us: Option<f64>,
    /// Against the XADD ceiling measured in the same round.
    pub(super) vs_xadd: Option<f64>,
    /// Against the native handler in the same round.
    pub(super) vs_native: f64,
    /// This process's resident memory over the drain.
    pub(super) memory: Memory,
}

impl Round {
    /// The median of each figure on its own.
    pub(super) fn median(rounds: &[Round]) -> Round {
        let median = |figure: &dyn Fn(&Round) -> f64| {
            let mut values: Vec<f64> = rounds.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let optional = |figure: fn(&Round) -> Option<f64>| {
            rounds
                .iter()
                .all(|r| figure(r).is_some())
                .then(|| median(&|r| figure(r).unwrap_or(f64::NAN)))
        };
        Round {
            rate: median(&|r| r.rate),
            host_us: median(&|r| r.host_us),
            redis_us: optional(|r| r.redis_us),
            vs_xadd: optional(|r| r.vs_xadd),
            vs_native: median(&|r| r.vs_native),
            memory: Memory {
                start: median(&|r| r.memory.start),
                peak: median(&|r| r.memory.peak),
                end: median(&|r| r.memory.end),
            },
        }
    }
}

/// Pre-fills a stream with `events`, then times a subscriber draining it.
pub(super) async fn measure(
    case: &Case,
    backend: &Backend,
    events: usize,
    concurrency: usize,
    payload: &[u8],
) -> anyhow::Result<Round> {
    let place = match backend {
        Backend::Memory => "memory",
        Backend::Redis(_) => "redis",
        Backend::Cluster(_, Spread::OneStream) => "cluster, 1 stream",
        Backend::Cluster(_, Spread::OnePerMaster) => "cluster, 1 stream per master",
    };
    progress::progress().say(format!("{place}: {}, {events} events", case.name));
    let stream = format!("runnel-bench-{}", uuid::Uuid::new_v4().simple());
    let mut streams = vec![stream.clone()];
    let (broker, read_count, block): (Arc<dyn Broker>, usize, Duration) = match (backend, &case.kv)
    {
        (Backend::Cluster(seeds, spread), _) => {
            let cluster = RedisBroker::open(
                &Endpoint::Cluster(seeds.clone()),
                room_for(events),
                &Default::default(),
            )
            .await?;
            if *spread == Spread::OnePerMaster {
                streams = cluster.one_key_per_master(&stream).await?;
            }
            (cluster, 512, Duration::from_millis(100))
        }
        (_, Some(kv)) => (
            kv.broker().clone(),
            read_count(backend),
            Duration::from_millis(100),
        ),
        (Backend::Memory, None) => (MemoryBroker::new(events), 256, Duration::from_millis(100)),
        (Backend::Redis(url), None) => (
            RedisBroker::connect(url, room_for(events)).await?,
            512,
            Duration::from_millis(100),
        ),
    };
    let handler = case.handler.clone();
    for stream in &streams {
        broker
            .create_group(stream, "bench", StartFrom::Beginning)
            .await?;
    }
    fill(broker.as_ref(), &streams, events, payload, case.names).await?;
    let subscription = subscription(streams.clone(), concurrency, read_count, block);
    let stats = Arc::new(Stats::default());
    let publisher = Publisher::new(broker.clone(), Arc::new(Routes::default()));
    let mut subscriber = Subscriber::new(broker.clone(), publisher, subscription, stats.clone());
    if let Some(kv) = &case.kv {
        subscriber = subscriber.with_kv(kv.clone());
    }
    let shutdown = CancellationToken::new();
    // The servers whose CPU the case costs: the one, or every master.
    let servers: Vec<String> = match backend {
        Backend::Redis(url) => vec![url.clone()],
        Backend::Cluster(seeds, _) => {
            let cluster = RedisBroker::open(
                &Endpoint::Cluster(seeds.clone()),
                room_for(events),
                &Default::default(),
            )
            .await?;
            cluster.masters().await?
        }
        Backend::Memory => Vec::new(),
    };
    let mut redis_conns = Vec::new();
    for url in &servers {
        redis_conns.push(
            redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?,
        );
    }
    let redis_before = match redis_conns.is_empty() {
        true => None,
        false => Some(cpu::redis_all(&mut redis_conns).await?),
    };
    let rss_reset = rss::reset_peak();
    let start_mib = rss::current_kib() as f64 / 1024.0;
    let host_before = cpu::process();
    let started = Instant::now();
    let task = tokio::spawn(subscriber.consume(handler, shutdown.clone()));
    let poll = match backend {
        Backend::Memory => Duration::from_micros(200),
        Backend::Redis(_) | Backend::Cluster(..) => Duration::from_millis(2),
    };
    for stream in &streams {
        while broker.backlog(stream, "bench").await? > 0 {
            tokio::time::sleep(poll).await;
        }
    }
    let elapsed = started.elapsed();
    let host_cpu = cpu::process().saturating_sub(host_before);
    let memory = Memory {
        start: start_mib,
        peak: match rss_reset {
            Ok(()) => rss::peak_kib() as f64 / 1024.0,
            Err(_) => f64::NAN,
        },
        end: rss::current_kib() as f64 / 1024.0,
    };
    shutdown.cancel();
    task.await??;
    let mut redis_us = None;
    if let Some(before) = redis_before {
        // Includes the backlog polls (one XINFO per 2 ms), which is noise.
        redis_us = Some(cpu::micros_each(
            cpu::redis_all(&mut redis_conns)
                .await?
                .saturating_sub(before),
            events,
        ));
    }
    let endpoint = match backend {
        Backend::Redis(url) => Some(Endpoint::Server(url.clone())),
        Backend::Cluster(seeds, _) => Some(Endpoint::Cluster(seeds.clone())),
        Backend::Memory => None,
    };
    if let Some(endpoint) = endpoint {
        let redis = RedisBroker::open(&endpoint, room_for(events), &Default::default()).await?;
        for stream in &streams {
            let _: () = redis::cmd("DEL")
                .arg(stream)
                .query_async(&mut redis.commands())
                .await?;
        }
    }
    let handled = stats.snapshot().handled as usize;
    anyhow::ensure!(
        handled == events,
        "benchmark lost events: {handled} of {events} handled"
    );
    Ok(Round {
        rate: events as f64 / elapsed.as_secs_f64(),
        host_us: cpu::micros_each(host_cpu, events),
        redis_us,
        vs_xadd: None,
        vs_native: 1.0,
        memory,
    })
}

/// Appends `events` of `payload`, spread evenly over `streams`, named as
/// [`event_name`] says for `names` names; appends of at most ~8 MiB (and
/// 1000 events), so that big payloads do not make the fill itself the peak
/// of the process's memory.
pub(super) async fn fill(
    broker: &dyn Broker,
    streams: &[String],
    events: usize,
    payload: &[u8],
    names: usize,
) -> anyhow::Result<()> {
    let per_append = (8 << 20) / payload.len().max(1);
    let mut left = events;
    while left > 0 {
        let n = left.min(per_append.clamp(1, 1000));
        left -= n;
        let appends = (0..n)
            .map(|i| Append {
                stream: streams[(left + i) % streams.len()].clone(),
                fields: event_fields(&Event::new(event_name(names, left + i), payload.to_vec())),
            })
            .collect();
        broker.append(appends).await?;
    }
    Ok(())
}

/// Trimming that keeps a case's whole pre-fill: streams are trimmed to
/// 1 000 000 entries by default, and a longer backlog would lose its
/// oldest entries before they were read.
pub(super) fn room_for(events: usize) -> Trimming {
    Trimming {
        max_len: (events as u64 + 1).max(crate::broker::redis::DEFAULT_MAX_LEN),
        ..Trimming::default()
    }
}

/// The bench's subscription of `streams`: group and consumer `bench`,
/// one attempt, nothing published or deduplicated.
pub(super) fn subscription(
    streams: Vec<String>,
    concurrency: usize,
    read_count: usize,
    block: Duration,
) -> Subscription {
    Subscription {
        plugin: "bench".into(),
        group: "bench".into(),
        start: StartFrom::Beginning,
        consumer: "bench".into(),
        streams,
        events: Vec::new(),
        concurrency,
        max_attempts: 1,
        backoff: Backoff::default(),
        read_count,
        block,
        claim_min_idle: Duration::from_secs(600),
        dead_letter: "{stream}.dead".into(),
        max_chain_depth: u32::MAX,
        forget_consumers_after: None,
        dedup_window: None,
        max_envelope_bytes: usize::MAX,
        max_in_flight_bytes: crate::subscriber::DEFAULT_IN_FLIGHT_BYTES,
    }
}

/// The name of the `i`th event of a case with `names` distinct names.
pub(super) fn event_name(names: usize, i: usize) -> String {
    match names {
        0 | 1 => "order.created".to_string(),
        n => format!("order.created.{}", i % n),
    }
}

/// Entries per read: what the plain cases of `backend` use.
pub(super) fn read_count(backend: &Backend) -> usize {
    match backend {
        Backend::Memory => 256,
        Backend::Redis(_) | Backend::Cluster(..) => 512,
    }
}
