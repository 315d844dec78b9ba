//! `runnel bench`: events/s through the real subscriber on the in-memory
//! backend, for a native Rust handler (the baseline) and for a wasm plugin
//! under several instance-reuse settings, all measured in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::broker::memory::MemoryBroker;
use crate::broker::{Append, Broker, StartFrom};
use crate::config::{Backoff, EngineConfig, Grants};
use crate::event::Event;
use crate::handler::{ErrorHandled, Failure, Handled, Handler, Verdict};
use crate::plugin::{PluginEngine, PluginSettings, WasmPlugin};
use crate::publisher::{event_fields, Publisher};
use crate::routes::Routes;
use crate::stats::Stats;
use crate::subscriber::{Subscriber, Subscription};

/// Options of `runnel bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Events per case.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Handler calls at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// The no-op plugin.
    #[arg(long, default_value = "plugins/target/wasm32-wasip2/release/noop.wasm")]
    pub plugin: PathBuf,
    /// Runs of each case; the median is reported. Cases take turns, so
    /// that a noisy moment of the machine does not hit one case only.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Only the cases whose name contains this text (the baseline always runs).
    #[arg(long)]
    pub only: Option<String>,
}

/// The baseline: the same no-op, compiled into the host.
struct NativeNoop;

#[async_trait]
impl Handler for NativeNoop {
    async fn handle(&self, event: &Event) -> Handled {
        std::hint::black_box(event);
        Handled::verdict(Verdict::Done)
    }
    async fn handle_error(&self, _: &Failure, _: Option<&Event>) -> ErrorHandled {
        Ok(Vec::new())
    }
}

/// Runs every case and returns the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let engine = PluginEngine::new(&EngineConfig {
        max_instances: 64,
        ..EngineConfig::default()
    })?;
    let wasm = |reuse: u32| -> anyhow::Result<Arc<dyn Handler>> {
        let settings = PluginSettings {
            reuse_instance: reuse,
            timeout: Duration::from_secs(10),
            memory_bytes: 64 << 20,
            grants: Grants::default(),
        };
        Ok(Arc::new(WasmPlugin::load(
            &engine,
            "noop",
            &args.plugin,
            settings,
            Arc::new(Routes::default()),
        )?))
    };
    let cases: Vec<(String, Arc<dyn Handler>)> = vec![
        (
            "native Rust handler (baseline)".into(),
            Arc::new(NativeNoop),
        ),
        ("wasm, warm instances (reuse ∞)".into(), wasm(u32::MAX)?),
        ("wasm, reuse 1000 (default)".into(), wasm(1000)?),
        ("wasm, reuse 100".into(), wasm(100)?),
        ("wasm, reuse 10".into(), wasm(10)?),
        ("wasm, fresh instance per event".into(), wasm(1)?),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .enumerate()
        .filter(|(i, (name, _))| *i == 0 || args.only.as_ref().is_none_or(|o| name.contains(o)))
        .map(|(_, case)| case)
        .collect();
    // Warm-up: code paths, allocator, the instance pool.
    for (_, handler) in &cases {
        measure(handler.clone(), args.events / 10 + 1, args.concurrency).await?;
    }
    let mut rates = vec![Vec::new(); cases.len()];
    for _ in 0..args.rounds.max(1) {
        for (i, (_, handler)) in cases.iter().enumerate() {
            rates[i].push(measure(handler.clone(), args.events, args.concurrency).await?);
        }
    }
    let rows: Vec<(String, f64)> = cases
        .into_iter()
        .zip(rates)
        .map(|((name, _), mut r)| {
            r.sort_by(f64::total_cmp);
            (name, r[r.len() / 2])
        })
        .collect();
    let baseline = rows[0].1;
    let mut out = format!(
        "in-memory backend, no-op handler, {} events per case, concurrency {}, median of {} rounds\n\n{:<34} {:>12} {:>10}\n",
        args.events, args.concurrency, args.rounds.max(1), "case", "events/s", "vs native"
    );
    for (name, rate) in rows {
        out.push_str(&format!(
            "{name:<34} {rate:>12.0} {:>10.2}\n",
            rate / baseline
        ));
    }
    Ok(out)
}

/// Pre-fills a stream with `events`, then times a subscriber draining it.
async fn measure(
    handler: Arc<dyn Handler>,
    events: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let broker = MemoryBroker::new(events);
    broker
        .create_group("bench", "bench", StartFrom::Beginning)
        .await?;
    let payload = br#"{"order_id":"o-1","sku":"A-1","quantity":2,"unit_cents":1999}"#.to_vec();
    for chunk in (0..events).collect::<Vec<_>>().chunks(1000) {
        let appends = chunk
            .iter()
            .map(|_| Append {
                stream: "bench".into(),
                fields: event_fields(&Event::new("order.created", payload.clone())),
            })
            .collect();
        broker.append(appends).await?;
    }
    let broker: Arc<dyn Broker> = broker;
    let subscription = Subscription {
        plugin: "bench".into(),
        group: "bench".into(),
        consumer: "bench".into(),
        streams: vec!["bench".into()],
        events: Vec::new(),
        concurrency,
        max_attempts: 1,
        backoff: Backoff::default(),
        read_count: 256,
        block: Duration::from_millis(100),
        claim_min_idle: Duration::from_secs(600),
        dead_letter: "{stream}.dead".into(),
    };
    let stats = Arc::new(Stats::default());
    let publisher = Publisher::new(broker.clone(), Arc::new(Routes::default()));
    let subscriber = Subscriber::new(broker.clone(), publisher, subscription, stats.clone());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(subscriber.consume(handler, shutdown.clone()));
    while broker.backlog("bench", "bench").await? > 0 {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await??;
    let handled = stats.snapshot().handled as usize;
    anyhow::ensure!(
        handled == events,
        "benchmark lost events: {handled} of {events} handled"
    );
    Ok(events as f64 / elapsed.as_secs_f64())
}
