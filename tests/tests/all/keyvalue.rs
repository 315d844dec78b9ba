//! Key-value state through `wasi:keyvalue`, committed exactly once with the
//! event: the `counter` plugin adds 1 to `count:<event name>` per event, so
//! a count that differs from the number of events (by one too many or one
//! too few) is a broken guarantee. Every check runs on the in-memory
//! backend and on Redis; the process checks (kill -9, a Redis restart) on
//! Redis.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runnel::broker::{Append, Broker};
use runnel::event::Event;
use runnel::kv::bucket_storage;
use runnel::publisher::event_fields;
use runnel_tests::redis_server::{RedisServer, PERSISTENT};
use runnel_tests::{broker, redis_url, start, unique, until, Process};

const LIMIT: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

fn backend(b: Backend) -> String {
    match b {
        Backend::Memory => String::new(),
        Backend::Redis => format!(
            "[backend]\nkind = \"redis\"\nurl = \"{}\"\nblock_ms = 100\n",
            redis_url()
        ),
    }
}

/// The `counter` plugin named `name` on `stream`, granted its `counts`
/// bucket (unless `granted` is false), with a quick backoff; `extra` lines
/// go in its section.
fn counter(name: &str, stream: &str, concurrency: u32, granted: bool, extra: &str) -> String {
    let grants = if granted { "kv = [\"counts\"]" } else { "" };
    format!(
        r#"
[[plugin]]
name = "{name}"
path = "@counter"
streams = ["{stream}"]
concurrency = {concurrency}
max_attempts = 5
{extra}
[plugin.backoff]
initial_ms = 1
max_ms = 5
[plugin.grants]
{grants}
"#
    )
}

/// The committed counts of `names` in `plugin`'s `counts` bucket.
async fn counts(broker: &Arc<dyn Broker>, plugin: &str, names: &[&str]) -> Vec<Option<i64>> {
    let keys: Vec<String> = names.iter().map(|n| format!("count:{n}")).collect();
    broker
        .kv_get(&bucket_storage(plugin, "counts", false), &keys)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.map(|b| String::from_utf8(b).unwrap().parse().unwrap()))
        .collect()
}

fn events(name: &str, n: usize, payload: &str) -> Vec<Event> {
    (0..n).map(|_| Event::new(name, payload)).collect()
}

async fn every_event_counts_exactly_once(b: Backend) {
    let (name, stream) = (unique("counter"), unique("kv-in"));
    let run = start(&format!(
        "{}{}",
        backend(b),
        counter(&name, &stream, 4, true, "")
    ))
    .await
    .unwrap();
    let mut batch = events("a", 120, "");
    batch.extend(events("b", 60, ""));
    batch.extend(events("flaky", 1, r#"{"fail_times": 2}"#));
    batch.extend(events("rejected", 1, r#"{"reject": true}"#));
    batch.extend(events("trapped", 1, r#"{"trap": true}"#));
    let mut dry = Event::new("dry", "");
    dry.meta.is_dry_run = true;
    batch.push(dry);
    run.inject(&stream, batch).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let broker = run.runtime.broker.clone();
    let got = counts(
        &broker,
        &name,
        &["a", "b", "flaky", "rejected", "trapped", "dry"],
    )
    .await;
    assert_eq!(
        got,
        vec![Some(120), Some(60), Some(1), None, None, None],
        "{b:?}: a, b once per event; the flaky event once although its first two attempts wrote; a rejected, a trapped and a dry-run call leave nothing"
    );
    let stats = &run.runtime.plugins[0].stats;
    until(LIMIT, "every commit to be counted", || async {
        stats.snapshot().kv_commits >= 181
    })
    .await;
    let stats = stats.snapshot();
    assert_eq!(stats.kv_commits, 181, "{b:?}: {stats:?}");
    assert_eq!(
        stats.dead_lettered, 2,
        "{b:?}: the rejected and the trapped event"
    );
    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_counts_exactly_once_in_memory() {
    every_event_counts_exactly_once(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_counts_exactly_once_on_redis() {
    every_event_counts_exactly_once(Backend::Redis).await;
}

/// Eight calls at once read and increment one key: the commit finds those
/// that read a value another commit changed and runs them again, so no
/// increment is lost.
async fn concurrent_increments_lose_nothing(b: Backend) {
    const N: usize = 400;
    let (name, stream) = (unique("counter"), unique("kv-hot"));
    let run = start(&format!(
        "{}{}",
        backend(b),
        counter(&name, &stream, 8, true, "")
    ))
    .await
    .unwrap();
    run.inject(&stream, events("hot", N, "")).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let got = counts(&run.runtime.broker, &name, &["hot"]).await;
    assert_eq!(got, vec![Some(N as i64)], "{b:?}");
    // Counted once the outcome reached the subscriber, just after the ack.
    let stats = &run.runtime.plugins[0].stats;
    until(LIMIT, "every commit to be counted", || async {
        stats.snapshot().kv_commits >= N as u64
    })
    .await;
    let stats = stats.snapshot();
    assert_eq!(stats.kv_commits, N as u64, "{b:?}");
    assert_eq!(stats.failed, 0, "{b:?}: conflicts are not failed attempts");
    println!("{b:?}: {} conflicts for {N} events", stats.kv_conflicts);
    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_lose_nothing_in_memory() {
    concurrent_increments_lose_nothing(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_lose_nothing_on_redis() {
    concurrent_increments_lose_nothing(Backend::Redis).await;
}

/// Two hosts share a group and increment one key: within a host calls on
/// one key take turns, but across hosts only the commit can tell that a
/// value read has changed. The loser runs again (not an attempt) and no
/// increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_incrementing_one_key_lose_nothing() {
    const N: usize = 600;
    let (name, stream) = (unique("counter"), unique("kv-two"));
    let host = |consumer: &str| {
        format!(
            "[backend]\nkind = \"redis\"\nurl = \"{}\"\nblock_ms = 100\nconsumer = \"{consumer}\"\ncount = 8\n{}",
            redis_url(),
            counter(&name, &stream, 4, true, "")
        )
    };
    let one = start(&host("h1")).await.unwrap();
    let two = start(&host("h2")).await.unwrap();
    one.inject(&stream, events("hot", N, "")).await.unwrap();
    let store = one.runtime.broker.clone();
    until(LIMIT, "every event to be counted", || async {
        store.backlog(&stream, &name).await.unwrap() == 0
    })
    .await;
    let got = counts(&store, &name, &["hot"]).await;
    assert_eq!(got, vec![Some(N as i64)]);
    // Counted once the outcome reached the subscriber, just after the ack.
    until(LIMIT, "every commit to be counted", || async {
        let a = one.runtime.plugins[0].stats.snapshot().kv_commits;
        a + two.runtime.plugins[0].stats.snapshot().kv_commits >= N as u64
    })
    .await;
    let (a, b) = (
        one.runtime.plugins[0].stats.snapshot(),
        two.runtime.plugins[0].stats.snapshot(),
    );
    assert_eq!(a.kv_commits + b.kv_commits, N as u64, "{a:?} {b:?}");
    assert!(
        a.kv_commits > 0 && b.kv_commits > 0,
        "both hosts worked: {a:?} {b:?}"
    );
    assert_eq!(a.failed + b.failed, 0, "conflicts are not failed attempts");
    assert!(
        a.kv_conflicts + b.kv_conflicts > 0,
        "two hosts on one key conflict at least once (else this test checks nothing)"
    );
    println!(
        "{} + {} commits, {} + {} conflicts run again",
        a.kv_commits, b.kv_commits, a.kv_conflicts, b.kv_conflicts
    );
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

/// A shadow reads the live plugin's buckets and runs every call, but its
/// writes are never committed: the counts are the live plugin's alone.
async fn a_shadow_writes_nothing(b: Backend) {
    const N: usize = 60;
    let (name, stream) = (unique("counter"), unique("kv-shadow"));
    let shadow = format!(
        "\n[[plugin]]\nname = \"{name}-next\"\npath = \"@counter\"\nshadow_of = \"{name}\"\n[plugin.grants]\nkv = [\"counts\"]\n"
    );
    let run = start(&format!(
        "{}{}{shadow}",
        backend(b),
        counter(&name, &stream, 1, true, "")
    ))
    .await
    .unwrap();
    run.inject(&stream, events("seen", N, "")).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let live = run.runtime.plugins[0].live.clone();
    until(LIMIT, "the shadow to follow every event", || async {
        live.shadow()
            .map(|s| s.stats.agreement())
            .is_some_and(|a| a.agreed + a.disagreed + a.skipped >= N as u64)
    })
    .await;
    let got = counts(&run.runtime.broker, &name, &["seen"]).await;
    assert_eq!(
        got,
        vec![Some(N as i64)],
        "{b:?}: the shadow's writes are absent"
    );
    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_writes_nothing_in_memory() {
    a_shadow_writes_nothing(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_writes_nothing_on_redis() {
    a_shadow_writes_nothing(Backend::Redis).await;
}

/// With a dedup window, the same event (one id) delivered as several
/// entries at once is applied once: the mark is set in the same step as
/// the writes, so the copies cannot all pass the check before any commits.
async fn duplicates_apply_once_with_a_dedup_window(b: Backend) {
    let (name, stream) = (unique("counter"), unique("kv-dup"));
    let config = counter(&name, &stream, 4, true, "dedup_window_ms = 60000");
    let run = start(&format!("{}{config}", backend(b))).await.unwrap();
    let event = Event::new("dup", "");
    run.inject(&stream, vec![event.clone(); 8]).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let stats = &run.runtime.plugins[0].stats;
    until(LIMIT, "every copy to be settled", || async {
        let s = stats.snapshot();
        s.handled + s.deduplicated >= 8
    })
    .await;
    let got = counts(&run.runtime.broker, &name, &["dup"]).await;
    assert_eq!(
        got,
        vec![Some(1)],
        "{b:?}: eight copies of one event count once"
    );
    let s = stats.snapshot();
    assert_eq!((s.handled, s.deduplicated), (1, 7), "{b:?}: {s:?}");
    run.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_apply_once_with_a_dedup_window_in_memory() {
    duplicates_apply_once_with_a_dedup_window(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_apply_once_with_a_dedup_window_on_redis() {
    duplicates_apply_once_with_a_dedup_window(Backend::Redis).await;
}

/// A bucket the config does not grant cannot be opened: the plugin hears
/// `access-denied`, and the SDK's message names the grant to add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_bucket_is_denied_with_the_grant_to_add() {
    let (name, stream) = (unique("counter"), unique("kv-denied"));
    let run = start(&counter(&name, &stream, 1, false, "")).await.unwrap();
    run.inject(&stream, events("x", 1, "")).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let calls = run.recorders[0].calls();
    let Some(runnel_tests::Call::Handle { result, .. }) = calls.first() else {
        panic!("no call: {calls:?}");
    };
    let verdict = result.verdict.to_string();
    assert!(
        verdict.contains(r#"key-value bucket "counts": not granted: add kv = ["counts"]"#),
        "{verdict}"
    );
    let got = counts(&run.runtime.broker, &name, &["x"]).await;
    assert_eq!(got, vec![None]);
    run.stop().await.unwrap();
}

/// Each limit of `[plugin.kv_limits]` refuses what passes it with a
/// message naming the limit and where it is set; the call fails and
/// nothing of it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_by_name() {
    let (name, stream) = (unique("counter"), unique("kv-limits"));
    let limits =
        "\n[plugin.kv_limits]\nmax_value_bytes = 100\nmax_ops_per_call = 6\nmax_key_bytes = 16\n";
    let config =
        counter(&name, &stream, 1, true, "max_attempts = 1").replace("max_attempts = 5\n", "");
    let run = start(&format!("{config}{limits}")).await.unwrap();
    let cases = [
        (r#"{"blob_bytes": 100}"#, None),
        (
            r#"{"blob_bytes": 101}"#,
            Some(r#"value of key "blob" is 101 bytes, more than the limit of 100 ([plugin.kv_limits] max_value_bytes)"#),
        ),
        (
            r#"{"extra_keys": 3}"#,
            Some("more than 6 key-value operations in one call ([plugin.kv_limits] max_ops_per_call)"),
        ),
        (
            r#"{"key_bytes": 17}"#,
            Some("key of 17 bytes is longer than the limit of 16 ([plugin.kv_limits] max_key_bytes)"),
        ),
    ];
    for (payload, _) in &cases {
        run.inject(&stream, events("limited", 1, payload))
            .await
            .unwrap();
        run.idle_within(LIMIT).await.unwrap();
    }
    let verdicts: Vec<String> = run.recorders[0]
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            runnel_tests::Call::Handle { result, .. } => Some(result.verdict.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts.len(), cases.len(), "{verdicts:?}");
    for ((_, expected), verdict) in cases.iter().zip(&verdicts) {
        match expected {
            None => assert_eq!(verdict, "ok"),
            Some(text) => assert!(
                verdict.starts_with("retry: ") && verdict.contains(text),
                "{verdict:?} should say {text:?}"
            ),
        }
    }
    let got = counts(&run.runtime.broker, &name, &["limited"]).await;
    assert_eq!(
        got,
        vec![Some(1)],
        "only the call within the limits counted"
    );
    run.stop().await.unwrap();
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel-under-test"))
}

/// Two hosts share a group on a Redis with an append-only file; one is
/// killed with SIGKILL mid-stream and Redis is restarted under the other.
/// Every count equals the number of events exactly, and every event's
/// emitted `counted` event exists exactly once: the writes, the emits and
/// the ack were one step, so the crash fell before it (delivered again,
/// nothing applied) or after it (acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_across_kill_9_and_a_redis_restart() {
    const PER_NAME: usize = 300;
    const NAMES: [&str; 4] = ["n0", "n1", "n2", "n3"];
    let dir = runnel_tests::scratch("kv-crash");
    let mut server = RedisServer::start(&dir, PERSISTENT);
    let url = server.url();
    let (name, stream, out) = (unique("counter"), unique("kv-crash"), unique("counted"));
    let config = |consumer: &str| {
        let path = dir.join(format!("{consumer}.toml"));
        let text = format!(
            "[backend]\nkind = \"redis\"\nurl = \"{url}\"\nconsumer = \"{consumer}\"\nblock_ms = 100\nclaim_min_idle_ms = 1500\ncount = 16\n\n[routes]\n\"counted\" = \"{out}\"\n{}",
            counter(&name, &stream, 2, true, "start = \"beginning\"")
        );
        let text = runnel_tests::expand_plugins(&text);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut a = Process::run(&bin(), &config("a"), "info");
    let mut b = Process::run(&bin(), &config("b"), "info");
    a.wait_for("consuming", LIMIT);
    b.wait_for("consuming", LIMIT);

    let redis = broker(&url).await;
    let payload = r#"{"emit": true, "iterations": 400000}"#;
    for name in NAMES {
        let appends = (0..PER_NAME)
            .map(|_| Append {
                stream: stream.clone(),
                fields: event_fields(&Event::new(name, payload)),
            })
            .collect();
        redis.append(appends).await.unwrap();
    }
    let store: Arc<dyn Broker> = redis.clone();
    let total = || async {
        counts(&store, &name, &NAMES)
            .await
            .into_iter()
            .map(|c| c.unwrap_or(0))
            .sum::<i64>()
    };
    until(LIMIT, "a quarter of the events to be counted", || async {
        total().await >= (NAMES.len() * PER_NAME / 4) as i64
    })
    .await;
    a.kill9();
    until(LIMIT, "half of the events to be counted", || async {
        total().await >= (NAMES.len() * PER_NAME / 2) as i64
    })
    .await;
    server.restart();
    let redis = broker(&url).await;
    until(LIMIT, "the survivor to finish everything", || async {
        redis.backlog(&stream, &name).await.unwrap_or(1) == 0
    })
    .await;
    let store: Arc<dyn Broker> = redis.clone();
    let got = counts(&store, &name, &NAMES).await;
    assert_eq!(
        got,
        vec![Some(PER_NAME as i64); NAMES.len()],
        "each name counted once per event, not at least once"
    );
    let emitted = redis.range(&out, None, None, usize::MAX).await.unwrap();
    assert_eq!(
        emitted.len(),
        NAMES.len() * PER_NAME,
        "each event's emit exactly once"
    );
    let (ok, log) = b.terminate();
    assert!(ok, "{log}");
    println!("a killed, Redis restarted: every count exact, every emit once");
}
