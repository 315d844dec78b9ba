//! `runnel bench`: events/s through the real subscriber, for a native Rust
//! handler (the baseline) and for a wasm plugin under several instance-reuse
//! settings, all measured in one run; with `--redis`, also end to end on
//! Redis Streams beside `redis-benchmark`'s XADD rate on the same server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::Broker;
use crate::config::{EngineConfig, Grants};
use crate::event::Event;
use crate::handler::{ErrorHandled, Failure, Handled, Handler, Verdict};
use crate::plugin::{Links, PluginEngine, PluginSettings, WasmPlugin};
use crate::routes::Routes;

mod acked;
mod calls;
mod ceiling;
mod cpu;
mod drain;
mod hiccup;
mod latency;
mod progress;
mod rss;
mod scale;
mod swap;

use ceiling::{ceiling_name, redis_benchmark};
use drain::{measure, room_for, subscription, Memory, Round};

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
    /// Only the cases whose name contains this text (baselines always run).
    #[arg(long)]
    pub only: Option<String>,
    /// Also measure the Redis Streams path on this server.
    #[arg(long)]
    pub redis: Option<String>,
    /// Skip the in-memory cases (with --redis or --redis-cluster).
    #[arg(long)]
    pub redis_only: bool,
    /// Also measure the Redis Streams path on this Redis Cluster (seed
    /// URLs, comma-separated), beside the server of `--redis` when given.
    #[arg(long, value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// Also measure latency under a steady load: an open-loop producer at
    /// 25, 50, 75 and 90% of the rate measured first, each for
    /// `--latency-secs`; time from the event's scheduled append to the
    /// call starting and to its ack, in HDR histograms, beside a hiccup
    /// meter's (the machine's own stalls) over the same seconds.
    #[arg(long)]
    pub latency: bool,
    /// Payload of every pre-filled event, in bytes (default: a 62-byte
    /// order). With it, the Redis ceiling is `redis-benchmark`'s SET of
    /// values this size (the XADD command line cannot carry a large value),
    /// and the Redis table adds MiB/s.
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// Also measure a host process with this many no-op plugins, each on a
    /// stream of its own, beside one with a single plugin (needs --redis):
    /// time to ready, events/s and resident memory.
    #[arg(long)]
    pub plugins: Option<usize>,
    /// Seconds each latency rate runs.
    #[arg(long, default_value_t = 3.0)]
    pub latency_secs: f64,
    /// Plugin versions to hot-swap under load when measuring the swap pause
    /// (0: skip that measurement).
    #[arg(long, default_value_t = 10)]
    pub swaps: usize,
}

/// The usual payload: a small order, as the examples send.
const ORDER: &[u8] = br#"{"order_id":"o-1","sku":"A-1","quantity":2,"unit_cents":1999}"#;

/// The payload the cases' events carry: [`ORDER`], or `--payload-bytes` of
/// JSON (`{"blob":"xxx…"}`, so that a plugin that parses it can).
fn payload(args: &BenchArgs) -> Vec<u8> {
    match args.payload_bytes {
        None => ORDER.to_vec(),
        Some(n) => {
            let frame = br#"{"blob":""}"#;
            let mut out = frame[..9].to_vec();
            out.resize(n.max(frame.len()) - 2, b'x');
            out.extend_from_slice(b"\"}");
            out
        }
    }
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

/// Where a case runs.
#[derive(Clone)]
enum Backend {
    Memory,
    Redis(String),
    /// A Redis Cluster's seeds, and how many streams a case drains: one
    /// (one master does the work) or one per master.
    Cluster(Vec<String>, Spread),
}

/// How a cluster case places its streams.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spread {
    OneStream,
    OnePerMaster,
}

/// A case: its name, its handler, and for a handler with key-value state
/// the store it reads, whose broker the case then runs on (so that its
/// reads and commits meet).
#[derive(Clone)]
struct Case {
    name: String,
    handler: Arc<dyn Handler>,
    kv: Option<Arc<crate::kv::Store>>,
    /// Distinct event names in the stream (the counter plugin's keys): 1
    /// for the usual `order.created`.
    names: usize,
}

impl Case {
    fn new(name: &str, handler: Arc<dyn Handler>) -> Case {
        Case {
            name: name.to_string(),
            handler,
            kv: None,
            names: 1,
        }
    }
}

/// How the bench's plugins run: `reuse` events per instance, no grants.
fn settings(reuse: u32) -> PluginSettings {
    PluginSettings::ungranted(reuse, Duration::from_secs(10))
}

/// "1 worker thread" or "N worker threads": the runtime the cases ran on.
/// Said in each table's heading because the default depends on the
/// backends a run uses (one fewer than the cores beside a local Redis,
/// `workers.rs`), in-memory cases included, and tables of different
/// thread counts do not compare.
fn worker_threads() -> String {
    match tokio::runtime::Handle::current().metrics().num_workers() {
        1 => "1 worker thread".to_string(),
        n => format!("{n} worker threads"),
    }
}

/// Runs every case and returns the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<String> {
    let engine = Arc::new(PluginEngine::new(&EngineConfig {
        max_instances: Some(64),
        ..EngineConfig::default()
    })?);
    // `fast_path: false`: the same plugin called on a fiber always, the
    // baseline of the synchronous fast path in the same run.
    let wasm_with = |reuse: u32, fast_path: bool| -> anyhow::Result<Arc<dyn Handler>> {
        let settings = PluginSettings {
            fast_path,
            ..settings(reuse)
        };
        Ok(Arc::new(WasmPlugin::load(
            &engine,
            "noop",
            &args.plugin,
            settings,
            Links::routes_only(Arc::new(Routes::default())),
        )?))
    };
    let wasm = |reuse: u32| wasm_with(reuse, true);
    const ON_A_FIBER: &str = "wasm, reuse 1000, on a fiber";
    let native = Case::new("native Rust handler (baseline)", Arc::new(NativeNoop));
    // The counter plugin: every event increments the key of its name,
    // its writes committed with the ack; with one name, every call reads
    // what the previous one wrote (the hottest case).
    let counter = |broker: Arc<dyn Broker>, names: usize| -> anyhow::Result<Case> {
        let kv = crate::kv::Store::new(broker);
        let namespace = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let settings = PluginSettings {
            grants: Grants {
                kv: vec!["counts".into()],
                ..Grants::default()
            },
            kv_buckets: vec![(
                "counts".into(),
                crate::kv::bucket_storage(&namespace, "counts", false),
            )],
            ..settings(1000)
        };
        let path = args.plugin.with_file_name("counter.wasm");
        let links = Links {
            routes: Arc::new(Routes::default()),
            store: Some(kv.clone()),
        };
        let plugin = WasmPlugin::load(&engine, "counter", &path, settings, links)?;
        Ok(Case {
            name: match names {
                1 => "wasm counter, one hot key".to_string(),
                n => format!("wasm counter, {n} keys"),
            },
            handler: Arc::new(plugin),
            kv: Some(kv),
            names,
        })
    };
    let memory_cases = select(
        &args,
        vec![
            native.clone(),
            Case::new("wasm, warm instances (reuse ∞)", wasm(u32::MAX)?),
            Case::new("wasm, reuse 1000 (default)", wasm(1000)?),
            Case::new(ON_A_FIBER, wasm_with(1000, false)?),
            Case::new("wasm, reuse 100", wasm(100)?),
            Case::new("wasm, reuse 10", wasm(10)?),
            Case::new("wasm, fresh instance per event", wasm(1)?),
            counter(MemoryBroker::new(args.events + 1), 1)?,
            counter(MemoryBroker::new(args.events + 1), 1000)?,
        ],
    );
    let rows = if args.redis_only {
        Vec::new()
    } else {
        measure_cases(&args, &Backend::Memory, &memory_cases).await?
    };
    let mut out = String::new();
    if !args.redis_only {
        out = format!(
            "in-memory backend, no-op handler, {} events per case, concurrency {}, {}, median of {} rounds\n\n{:<34} {:>12} {:>10} {:>12}\n",
            args.events, args.concurrency, worker_threads(), args.rounds.max(1), "case", "events/s", "vs native", "host µs/ev"
        );
        for (name, round) in &rows {
            out.push_str(&format!(
                "{name:<34} {:>12.0} {:>10.2} {:>12.2}\n",
                round.rate, round.vs_native, round.host_us
            ));
        }
    }

    if !args.redis_only {
        let call_cases = vec![
            (native.name.clone(), native.handler.clone()),
            ("wasm, warm instances (reuse ∞)".into(), wasm(u32::MAX)?),
            ("wasm, reuse 1000 (default)".into(), wasm(1000)?),
            (ON_A_FIBER.into(), wasm_with(1000, false)?),
        ];
        progress::progress().say("the cost of one call".into());
        // A plugin that fails here (a warm instance that leaks past its
        // memory limit, say) still leaves the table above to report.
        match calls::report(&call_cases, args.rounds).await {
            Ok(table) => out.push_str(&table),
            Err(e) => out.push_str(&format!("\none call, no subscriber: not measured: {e:#}\n")),
        }
    }

    if let Some(url) = &args.redis {
        let rss_before = rss::current_kib();
        let redis_cases = select(
            &args,
            vec![
                native.clone(),
                Case::new("wasm, reuse 1000 (default)", wasm(1000)?),
                Case::new(ON_A_FIBER, wasm_with(1000, false)?),
                counter(RedisBroker::connect(url, room_for(args.events)).await?, 1)?,
                counter(
                    RedisBroker::connect(url, room_for(args.events)).await?,
                    1000,
                )?,
            ],
        );
        let rows = measure_cases(&args, &Backend::Redis(url.clone()), &redis_cases).await?;
        out.push_str(&format!(
            "\nRedis Streams at {url}: consume, handle and ack a pre-filled stream, same events, rounds and {};\n\
             the XADD ceiling is measured again in every round, ratios are medians of per-round ratios\n\
             (CPU per event: this process, and the Redis server; MiB: this process's resident memory as the drain\n\
             starts, its peak while draining, and as the drain ends)\n\n{:<34} {:>12} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9} {:>9}{}\n",
            worker_threads(), "case", "events/s", "vs ceiling", "vs native", "host µs/ev", "redis µs/ev", "start MiB", "peak MiB", "end MiB",
            match args.payload_bytes {
                Some(_) => format!(" {:>10}", "MiB/s"),
                None => String::new(),
            }
        ));
        let blank = |x: f64| {
            if x.is_nan() {
                "-".to_string()
            } else {
                format!("{x:.2}")
            }
        };
        for (name, round) in &rows {
            out.push_str(&format!(
                "{name:<34} {:>12.0} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9} {:>9}{}\n",
                round.rate,
                blank(round.vs_xadd.unwrap_or(f64::NAN)),
                blank(round.vs_native),
                blank(round.host_us),
                blank(round.redis_us.unwrap_or(f64::NAN)),
                blank(round.memory.start),
                blank(round.memory.peak),
                blank(round.memory.end),
                match args.payload_bytes {
                    Some(n) => format!(" {:>10.1}", round.rate * n as f64 / (1 << 20) as f64),
                    None => String::new(),
                }
            ));
        }
        out.push_str(&format!(
            "\nresident memory of this process: {} MiB before the Redis cases, {} MiB after\n",
            rss_before / 1024,
            rss::current_kib() / 1024
        ));
    }
    if let Some(plugins) = args.plugins {
        let url = args
            .redis
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("--plugins measures hosts on Redis: give --redis"))?;
        out.push_str(&scale::report(&args, url, plugins).await?);
    }
    if !args.redis_cluster.is_empty() {
        out.push_str(&cluster_report(&args, &native, wasm(1000)?).await?);
    }
    if args.latency {
        let mut places = Vec::new();
        if !args.redis_only {
            places.push(latency::Place::Memory);
        }
        if let Some(url) = &args.redis {
            places.push(latency::Place::Redis(url.clone()));
        }
        let case = |name: &str, handler, rates_of_previous| latency::LatencyCase {
            name: name.to_string(),
            handler,
            rates_of_previous,
        };
        let cases = vec![
            case(&native.name, native.handler.clone(), false),
            case("wasm, reuse 1000 (default)", wasm(1000)?, false),
            // The fast path's baseline, at the same rates.
            case(ON_A_FIBER, wasm_with(1000, false)?, true),
        ];
        out.push_str(&latency::report(&args, &places, &cases).await?);
    }
    if args.swaps > 0 && !args.redis_only {
        progress::progress().say(format!("hot swap pauses, {} swaps", args.swaps));
        out.push_str(&swap::pause_report(engine.clone(), &args).await?);
    }
    progress::progress().done();
    Ok(out)
}

/// The consume-handle-ack cases on a Redis Cluster: one stream (one
/// master works) and one stream per master, native and wasm; events/s,
/// the ratio to the same case on one stream, and CPU per event of this
/// process and of all the masters together.
async fn cluster_report(
    args: &BenchArgs,
    native: &Case,
    wasm: Arc<dyn Handler>,
) -> anyhow::Result<String> {
    let seeds = args.redis_cluster.clone();
    let cases = select(
        args,
        vec![
            native.clone(),
            Case::new("wasm, reuse 1000 (default)", wasm),
        ],
    );
    let mut out = format!(
        "\nRedis Cluster at {}: consume, handle and ack pre-filled streams, same events and rounds;\n\
         \"spread\" ratios are against the same case on one stream in the same round\n\
         (CPU per event: this process, and every master together)\n\n{:<52} {:>12} {:>11} {:>12} {:>12}\n",
        seeds.join(","),
        "case", "events/s", "vs 1 stream", "host µs/ev", "redis µs/ev"
    );
    let one = Backend::Cluster(seeds.clone(), Spread::OneStream);
    let spread = Backend::Cluster(seeds, Spread::OnePerMaster);
    let payload = payload(args);
    let warm = args.events / 10 + 1;
    for case in &cases {
        measure(case, &one, warm, args.concurrency, &payload).await?;
        measure(case, &spread, warm, args.concurrency, &payload).await?;
    }
    for case in &cases {
        let (mut singles, mut spreads) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            let single = measure(case, &one, args.events, args.concurrency, &payload).await?;
            let mut wide = measure(case, &spread, args.events, args.concurrency, &payload).await?;
            wide.vs_native = wide.rate / single.rate;
            singles.push(single);
            spreads.push(wide);
        }
        for (label, rounds) in [("1 stream", &singles), ("1 stream per master", &spreads)] {
            let r = Round::median(rounds);
            let ratio = match label {
                "1 stream" => "1.00".to_string(),
                _ => format!("{:.2}", r.vs_native),
            };
            out.push_str(&format!(
                "{:<52} {:>12.0} {:>11} {:>12.2} {:>12.2}\n",
                format!("{}, {label}", case.name),
                r.rate,
                ratio,
                r.host_us,
                r.redis_us.unwrap_or(f64::NAN)
            ));
        }
    }
    Ok(out)
}

fn select(args: &BenchArgs, cases: Vec<Case>) -> Vec<Case> {
    cases
        .into_iter()
        .enumerate()
        .filter(|(i, case)| *i == 0 || args.only.as_ref().is_none_or(|o| case.name.contains(o)))
        .map(|(_, case)| case)
        .collect()
}

/// Warms every case up, then measures them in turns; the median per case
/// of each figure. On Redis, each round starts by measuring the XADD ceiling
/// again: this machine's speed drifts by a factor of two over minutes, so a
/// ratio is only fair against a ceiling taken at the same moment. Ratios are
/// the medians of the per-round ratios. The XADD row comes first.
async fn measure_cases(
    args: &BenchArgs,
    backend: &Backend,
    cases: &[Case],
) -> anyhow::Result<Vec<(String, Round)>> {
    let payload = payload(args);
    for case in cases {
        measure(
            case,
            backend,
            args.events / 10 + 1,
            args.concurrency,
            &payload,
        )
        .await?;
    }
    let mut rounds = vec![Vec::new(); cases.len()];
    let mut ceilings = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let ceiling = match backend {
            Backend::Redis(url) => {
                let (rate, redis_us) = redis_benchmark(url, args.payload_bytes).await?;
                ceilings.push(Round {
                    rate,
                    host_us: f64::NAN,
                    redis_us: Some(redis_us),
                    vs_xadd: Some(1.0),
                    vs_native: f64::NAN,
                    memory: Memory::default(),
                });
                Some(rate)
            }
            Backend::Memory | Backend::Cluster(..) => None,
        };
        for (i, case) in cases.iter().enumerate() {
            let mut round = measure(case, backend, args.events, args.concurrency, &payload).await?;
            round.vs_xadd = ceiling.map(|c| round.rate / c);
            if i > 0 {
                // The native case ran first in this round.
                let native: &Round = rounds[0].last().expect("measured first");
                round.vs_native = round.rate / native.rate;
            }
            rounds[i].push(round);
        }
    }
    let mut rows: Vec<(String, Round)> = cases
        .iter()
        .zip(rounds)
        .map(|(case, r)| (case.name.clone(), Round::median(&r)))
        .collect();
    if !ceilings.is_empty() {
        rows.insert(
            0,
            (ceiling_name(args.payload_bytes), Round::median(&ceilings)),
        );
    }
    Ok(rows)
}
