//! The seeded fault campaign (issue #17): several `runnel` hosts share one
//! consumer group on a private Redis with an append-only file, a producer
//! emits numbered events (some poison, some flaky, some that emit a
//! follow-up), and faults from a seeded schedule hit them: `kill -9` and
//! SIGTERM of a host, Redis restarts, `CLIENT KILL`, the plugin file
//! replaced by a good or a broken version, config reloads, the stream
//! trimmed under load. At the end a checker reads what the plugin recorded
//! (`done` events) and the dead letters: every event handled or
//! dead-lettered, never neither.
//!
//! Loopback only, bounded in time, stops by itself. `scripts/chaos.sh`
//! runs it; the test suite runs a short one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runnel::broker::redis::{RedisBroker, Trimming};
use runnel::broker::{Append, Broker, GroupProgress};
use runnel::dead_letter::DeadLetterRecord;
use runnel::event::Event;
use runnel::publisher::event_fields;

use crate::redis_server::{RedisServer, PERSISTENT};

/// The stream the producer fills and the hosts consume.
const INPUT: &str = "chaos-in";
/// Where the plugin records what it handled.
const DONE: &str = "chaos-done";
const GROUP: &str = "chaos";
const MAX_ATTEMPTS: u32 = 4;

/// What to run.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// How long the producer and the faults go on, then the hosts drain.
    pub duration: Duration,
    pub seed: u64,
    /// Hosts in the group. Host 1 is never killed nor stopped, so that one
    /// process lives the whole run and its memory can be watched.
    pub hosts: usize,
    /// Events per second from the producer.
    pub rate: u32,
    /// The `runnel` binary.
    pub bin: PathBuf,
    /// The campaign's plugin (`plugins/rust/chaos`).
    pub plugin: PathBuf,
    /// Where the run keeps its files (configs, Redis's, hosts' logs).
    pub dir: PathBuf,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events the producer emitted (follow-ups not included).
    pub events: usize,
    pub follow_ups: usize,
    pub faults: BTreeMap<&'static str, u32>,
    /// Distinct events handled (follow-ups included).
    pub handled: usize,
    /// Extra handlings of an event already handled (at-least-once).
    pub duplicates: usize,
    pub dead_lettered: usize,
    /// Poison events dead-lettered with fewer attempts than the maximum.
    pub poison_short: usize,
    /// Events other than poison that were dead-lettered (by consumers that
    /// kept dying while handling them, say). Expected 0.
    pub dead_not_poison: usize,
    /// Events that were neither handled nor dead-lettered, follow-ups that
    /// never appeared included. Must be 0.
    pub lost: usize,
    /// Entries still pending in the group at the end. Must be 0.
    pub pending: u64,
    /// Host 1's resident memory after warm-up and at the end, KiB.
    pub rss_kib: (u64, u64),
}

impl Outcome {
    /// The campaign's one table.
    pub fn table(&self, seed: u64, duration: Duration) -> String {
        let faults: u32 = self.faults.values().sum();
        let by_kind: Vec<String> = self
            .faults
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        format!(
            "seed {seed}, {}s of faults\n\
             | events | follow-ups | faults | handled | duplicates | dead-lettered | lost | pending |\n\
             |-------:|-----------:|-------:|--------:|-----------:|--------------:|-----:|--------:|\n\
             | {} | {} | {} | {} | {} | {} | {} | {} |\n\
             faults by kind: {}\n\
             poison dead-lettered before max_attempts: {}; other events dead-lettered: {}\n\
             host 1 RSS: {} KiB after warm-up, {} KiB at the end\n",
            duration.as_secs(),
            self.events,
            self.follow_ups,
            faults,
            self.handled,
            self.duplicates,
            self.dead_lettered,
            self.lost,
            self.pending,
            by_kind.join(", "),
            self.poison_short,
            self.dead_not_poison,
            self.rss_kib.0,
            self.rss_kib.1,
        )
    }
}

/// One `runnel run` process of the campaign.
struct Host {
    name: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Host {
    fn start(&mut self, bin: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("host log file");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUNNEL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting runnel");
        self.child = Some(child);
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the drain (the config's deadline is short).
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn signal(&self, name: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([&format!("-{name}"), &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn host_config(server: &RedisServer, name: &str, plugin: &Path, timeout_ms: u64) -> String {
    format!(
        r#"
max_chain_depth = 8

[backend]
kind = "redis"
url = "{url}"
consumer = "{name}"
block_ms = 200
claim_min_idle_ms = 1500
forget_idle_consumers_ms = 60000

[service]
shutdown_deadline_ms = 5000

[routes]
"done" = "{DONE}"
"follow-up" = "{INPUT}"

[[plugin]]
name = "chaos"
path = {plugin:?}
group = "{GROUP}"
streams = ["{INPUT}"]
start = "beginning"
max_attempts = {MAX_ATTEMPTS}
backoff = {{ initial_ms = 10, max_ms = 200, multiplier = 2.0 }}
timeout_ms = {timeout_ms}
breaker_failures = 0
"#,
        url = server.url(),
        plugin = plugin.display().to_string(),
    )
}

/// An event the producer emitted: its id and kind.
#[derive(Clone, Debug)]
struct Produced {
    id: String,
    kind: &'static str,
}

/// A copy of the plugin that behaves the same but has other bytes (a custom
/// section with a nonce at the end), so that a reload swaps it in.
fn plugin_variant(original: &[u8], nonce: u64) -> Vec<u8> {
    let name = b"chaos-nonce";
    let payload = nonce.to_le_bytes();
    let mut out = original.to_vec();
    out.push(0); // a custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// Replaces `path` the way build tools do: a new file renamed over it.
fn replace_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("writing the plugin");
    std::fs::rename(&tmp, path).expect("replacing the plugin");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs the campaign and checks its end state.
pub async fn run(c: Campaign) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&c.dir)?;
    let mut server = RedisServer::start(&c.dir, PERSISTENT);
    let plugin_path = c.dir.join("chaos.wasm");
    let original = std::fs::read(&c.plugin)?;
    std::fs::write(&plugin_path, &original)?;
    let mut hosts: Vec<Host> = (1..=c.hosts)
        .map(|i| {
            let name = format!("host-{i}");
            let config = c.dir.join(format!("{name}.toml"));
            std::fs::write(&config, host_config(&server, &name, &plugin_path, 5000))
                .expect("writing a config");
            Host {
                log: c.dir.join(format!("{name}.log")),
                name,
                config,
                child: None,
            }
        })
        .collect();
    for host in &mut hosts {
        host.start(&c.bin);
    }

    let redis = RedisBroker::connect(&server.url(), Trimming::default()).await?;
    let produced: Arc<Mutex<Vec<Produced>>> = Arc::default();
    let stop_producing = tokio_util::sync::CancellationToken::new();
    let producer = tokio::spawn(produce(
        redis.clone(),
        c.seed,
        c.rate,
        produced.clone(),
        stop_producing.clone(),
    ));

    let mut rng = fastrand::Rng::with_seed(c.seed);
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let warm_up = (c.duration / 5).min(Duration::from_secs(60));
    let mut timeout_ms = 5000;
    while started.elapsed() < c.duration {
        tokio::time::sleep(Duration::from_millis(rng.u64(1500..4000))).await;
        if outcome.rss_kib.0 == 0 && started.elapsed() >= warm_up {
            outcome.rss_kib.0 = hosts[0].pid().map_or(0, rss_kib);
        }
        let victim = if hosts.len() > 1 {
            rng.usize(1..hosts.len())
        } else {
            0
        };
        let fault: &'static str = match rng.u32(0..100) {
            0..=17 if victim > 0 => "kill -9 host",
            18..=29 if victim > 0 => "SIGTERM host",
            30..=41 => "Redis restart",
            42..=55 => "CLIENT KILL",
            56..=67 => "plugin replaced (good)",
            68..=77 => "plugin replaced (broken)",
            78..=87 => "config reload",
            _ => "stream trimmed",
        };
        match fault {
            "kill -9 host" => {
                hosts[victim].kill9();
                tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
                hosts[victim].start(&c.bin);
            }
            "SIGTERM host" => {
                let host = &mut hosts[victim];
                tokio::task::block_in_place(|| host.terminate());
                hosts[victim].start(&c.bin);
            }
            "Redis restart" => tokio::task::block_in_place(|| server.restart()),
            "CLIENT KILL" => {
                let _: Result<redis::Value, _> = redis::cmd("CLIENT")
                    .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
                    .query_async(&mut redis.commands())
                    .await;
            }
            "plugin replaced (good)" => {
                replace_file(&plugin_path, &plugin_variant(&original, rng.u64(..)));
            }
            "plugin replaced (broken)" => {
                // Refused by every host, which keep the version they run;
                // put back before any host could need to start from it.
                replace_file(&plugin_path, b"this is not a component");
                tokio::time::sleep(Duration::from_millis(rng.u64(500..1500))).await;
                replace_file(&plugin_path, &plugin_variant(&original, rng.u64(..)));
            }
            "config reload" => {
                // A setting a reload applies: the plugin's time limit.
                timeout_ms = if timeout_ms == 5000 { 6000 } else { 5000 };
                for host in &hosts {
                    std::fs::write(
                        &host.config,
                        host_config(&server, &host.name, &plugin_path, timeout_ms),
                    )?;
                    host.signal("HUP");
                }
            }
            _ => trim_what_is_finished(&redis).await,
        }
        *outcome.faults.entry(fault).or_default() += 1;
    }

    // The end: no more faults or events; every host up; let them drain.
    stop_producing.cancel();
    producer.await??;
    for host in &mut hosts {
        if host
            .child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        {
            host.start(&c.bin);
        }
    }
    let drained = Instant::now();
    // Finished: nothing unread, nothing pending (a poison event's last
    // retries take a moment). The checker says what did not finish in time.
    while drained.elapsed() < Duration::from_secs(180)
        && !matches!(redis.backlog(INPUT, GROUP).await, Ok(0))
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    outcome.rss_kib.1 = hosts[0].pid().map_or(0, rss_kib);
    for host in &mut hosts {
        tokio::task::block_in_place(|| host.terminate());
    }
    let produced = produced.lock().unwrap().clone();
    check(&redis, &produced, &mut outcome).await?;
    Ok(outcome)
}

/// Emits numbered events at `rate` a second until `stop`: 80% ok, 5%
/// poison, 10% flaky (failing 1 to 2 times), 5% with a follow-up. An
/// event is recorded once Redis has taken it; one whose XADD failed is
/// sent again with the same id (a duplicate entry if the first did land).
async fn produce(
    redis: Arc<RedisBroker>,
    seed: u64,
    rate: u32,
    produced: Arc<Mutex<Vec<Produced>>>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut seq = 0u64;
    while !stop.is_cancelled() {
        tick.tick().await;
        seq += 1;
        let (kind, payload) = match rng.u32(0..100) {
            0..=4 => ("poison", r#"{"kind":"poison"}"#.to_string()),
            5..=14 => (
                "flaky",
                format!(r#"{{"kind":"flaky","fail":{}}}"#, rng.u32(1..=2)),
            ),
            15..=19 => ("follow", r#"{"kind":"follow"}"#.to_string()),
            _ => ("ok", r#"{"kind":"ok"}"#.to_string()),
        };
        let mut event = Event::new("work", payload);
        event.meta.correlation_id = format!("seq-{seq}");
        let append = vec![Append {
            stream: INPUT.to_string(),
            fields: event_fields(&event),
        }];
        // Recorded only once Redis took it; if the campaign ends while it
        // keeps failing, it was never produced.
        loop {
            if redis.append(append.clone()).await.is_ok() {
                produced
                    .lock()
                    .unwrap()
                    .push(Produced { id: event.id, kind });
                break;
            }
            if stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Trims the input stream up to the oldest entry the group has not
/// finished: history, as retention would, never work in progress.
async fn trim_what_is_finished(redis: &RedisBroker) {
    let Ok(GroupProgress {
        last_delivered: Some(last),
        ..
    }) = redis.group_progress(INPUT, GROUP).await
    else {
        return;
    };
    let mut conn = redis.commands();
    let pending: Result<redis::Value, _> = redis::cmd("XPENDING")
        .arg(INPUT)
        .arg(GROUP)
        .query_async(&mut conn)
        .await;
    let oldest_pending = match pending {
        Ok(redis::Value::Array(parts)) => match parts.get(1) {
            Some(redis::Value::BulkString(id)) => Some(String::from_utf8_lossy(id).into_owned()),
            _ => None,
        },
        _ => return,
    };
    // Everything up to the last delivered entry is finished unless pending.
    let (ms, seq) = runnel::broker::parse_entry_id(&last).unwrap_or_default();
    let after_last = format!("{ms}-{}", seq + 1);
    let min_id = oldest_pending.unwrap_or(after_last);
    let _: Result<u64, _> = redis::cmd("XTRIM")
        .arg(INPUT)
        .arg("MINID")
        .arg(&min_id)
        .query_async(&mut conn)
        .await;
}

/// What the plugin recorded and what was dead-lettered, against what was
/// produced.
async fn check(
    redis: &RedisBroker,
    produced: &[Produced],
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    outcome.events = produced.len();
    let mut handled: HashMap<String, usize> = HashMap::new();
    let mut follow_ups: HashMap<String, Vec<String>> = HashMap::new();
    for entry in redis.range(DONE, None, None, usize::MAX).await? {
        let event = Event::from_json(&entry.fields[0].1)?;
        let done: serde_json::Value = serde_json::from_slice(&event.payload)?;
        let id = done["id"].as_str().unwrap_or_default().to_string();
        let parent = done["parent"].as_str().unwrap_or_default();
        if !parent.is_empty() {
            follow_ups
                .entry(parent.to_string())
                .or_default()
                .push(id.clone());
        }
        *handled.entry(id).or_default() += 1;
    }
    let mut dead: HashMap<String, DeadLetterRecord> = HashMap::new();
    for entry in redis
        .range(&format!("{INPUT}.dead"), None, None, usize::MAX)
        .await?
    {
        let record = DeadLetterRecord::from_entry(&entry);
        if let Ok(event) = Event::from_json(&record.event) {
            // A follow-up that was dead-lettered still answers for its
            // parent.
            if let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&event.payload) {
                if let Some(parent) = spec["parent"].as_str().filter(|p| !p.is_empty()) {
                    follow_ups
                        .entry(parent.to_string())
                        .or_default()
                        .push(event.id.clone());
                }
            }
            dead.insert(event.id, record);
        }
    }
    outcome.handled = handled.len();
    outcome.duplicates = handled.values().map(|n| n - 1).sum();
    outcome.dead_lettered = dead.len();
    outcome.follow_ups = follow_ups.values().map(Vec::len).sum();
    for p in produced {
        let was_handled = handled.contains_key(&p.id);
        match dead.get(&p.id) {
            Some(record) if p.kind == "poison" && record.attempts < MAX_ATTEMPTS => {
                outcome.poison_short += 1
            }
            Some(_) if p.kind != "poison" => outcome.dead_not_poison += 1,
            Some(_) => {}
            None if was_handled => {}
            None => outcome.lost += 1,
        }
        if p.kind == "follow" && was_handled && !follow_ups.contains_key(&p.id) {
            outcome.lost += 1;
        }
    }
    let mut conn = redis.commands();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(INPUT)
        .arg(GROUP)
        .query_async(&mut conn)
        .await?;
    if let redis::Value::Array(parts) = pending {
        if let Some(redis::Value::Int(n)) = parts.first() {
            outcome.pending = *n as u64;
        }
    }
    Ok(())
}
