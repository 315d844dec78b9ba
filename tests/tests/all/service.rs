//! `runnel run` as a service: the admin API over HTTP, and SIGTERM under
//! load on the real Redis.

use runnel_tests::guests;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use runnel::broker::redis::{RedisBroker, Trimming};
use runnel::broker::{Append, Broker};
use runnel::event::Event;
use runnel::publisher::event_fields;
use runnel_tests::{call, plugin, redis_url, unique, Process};

use crate::util::{admin_url, poll, write_config};

const LIMIT: Duration = Duration::from_secs(60);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel-under-test"))
}

#[test]
fn a_host_on_a_quiet_stream_is_ready_before_its_first_read_returns() {
    // The first read of an empty stream blocks for five minutes: ready
    // must not wait for it, only for the group.
    let config = write_config(
        "quiet",
        &format!(
            r#"
            [backend]
            kind = "redis"
            url = {:?}
            block_ms = 300000
            claim_min_idle_ms = 900000
            [admin]
            listen = "127.0.0.1:0"
            [[plugin]]
            name = "noop"
            path = {:?}
            streams = [{:?}]
            "#,
            redis_url(),
            plugin(guests::NOOP),
            unique("quiet")
        ),
    );
    let mut process = Process::run(&bin(), &config, "info");
    let base = admin_url(&mut process);
    poll("/readyz to say ready", || {
        call("GET", &format!("{base}/readyz"), None, None).0 == 200
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_name_one_group_on_different_streams_do_not_wait_on_each_other() {
    // A group is per stream in Redis, so two plugins may name the same one
    // on streams of their own. Each read blocks for five minutes when its
    // stream is quiet: an event on either stream must not wait behind the
    // other plugin's read.
    let (first, second) = (unique("shared-a"), unique("shared-b"));
    let config = write_config(
        "shared-group",
        &format!(
            r#"
            [backend]
            kind = "redis"
            url = {url:?}
            block_ms = 300000
            claim_min_idle_ms = 900000
            [admin]
            listen = "127.0.0.1:0"
            [[plugin]]
            name = "first"
            path = {noop:?}
            streams = [{first:?}]
            group = "shared"
            [[plugin]]
            name = "second"
            path = {noop:?}
            streams = [{second:?}]
            group = "shared"
            "#,
            url = redis_url(),
            noop = plugin(guests::NOOP),
        ),
    );
    let mut process = Process::run(&bin(), &config, "info");
    let base = admin_url(&mut process);
    poll("/readyz to say ready", || {
        call("GET", &format!("{base}/readyz"), None, None).0 == 200
    });
    let redis = RedisBroker::connect(&redis_url(), Trimming::default())
        .await
        .unwrap();
    // Events on one stream at a time, twice each: with one connection for
    // both readers, the second event on a stream at the latest would queue
    // behind the other plugin's blocked read.
    let deadline = Instant::now() + LIMIT;
    for stream in [&second, &second, &first, &first] {
        fill(&redis, stream, &["one"]).await;
        while redis.backlog(stream, "shared").await.unwrap() > 0 {
            assert!(
                Instant::now() < deadline,
                "the event on {stream} is still waiting"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[test]
fn the_admin_api_answers_checks_its_token_and_reports_plugins_and_metrics() {
    let config = write_config(
        "admin",
        &format!(
            r#"
            [admin]
            listen = "127.0.0.1:0"
            token_env = "TEST_ADMIN_TOKEN"
            [routes]
            "order.enriched" = "out"
            [[plugin]]
            name = "enricher"
            path = {:?}
            streams = ["orders"]
            "#,
            plugin(guests::ORDER_ENRICHER)
        ),
    );
    let token = "s3cret-token";
    let mut process = Process::run_with(&bin(), &config, "info", &[("TEST_ADMIN_TOKEN", token)]);
    let base = admin_url(&mut process);
    let url = |path: &str| format!("{base}{path}");

    // Probes need no token. The API answers before consuming starts
    // (it binds first), and says ready once the plugin reads.
    assert_eq!(call("GET", &url("/healthz"), None, None).0, 200);
    poll("/readyz to say ready", || {
        call("GET", &url("/readyz"), None, None).0 == 200
    });

    // Everything else does, and only the right one.
    assert_eq!(call("GET", &url("/plugins"), None, None).0, 401);
    assert_eq!(call("GET", &url("/plugins"), Some("wrong"), None).0, 401);
    let (status, list) = call("GET", &url("/plugins"), Some(token), None);
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "enricher");
    assert_eq!(list[0]["version"].as_str().unwrap().len(), 64, "a sha256");

    let (status, body) = call("POST", &url("/plugins/nope/reload"), Some(token), None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nope"));
    let (status, body) = call("POST", &url("/plugins/enricher/reload"), Some(token), None);
    assert_eq!((status, body.contains("unchanged")), (200, true), "{body}");
    let (status, body) = call("POST", &url("/plugins/enricher/promote"), Some(token), None);
    assert_eq!(status, 422, "not a shadow: {body}");

    // Injected events are handled, and show up in the counters.
    let ndjson: String = (0..5)
        .map(|i| format!("{{\"name\":\"order.placed\",\"stream\":\"orders\",\"payload\":{{\"order_id\":\"o{i}\",\"sku\":\"a\",\"quantity\":1,\"unit_cents\":100}}}}\n"))
        .collect();
    let (status, body) = call("POST", &url("/events"), Some(token), Some(&ndjson));
    assert_eq!(status, 202, "{body}");
    let (status, body) = call("POST", &url("/events"), Some(token), Some("{not json"));
    assert_eq!(status, 400, "{body}");
    poll("five events handled", || {
        let (_, body) = call("GET", &url("/plugins/enricher"), Some(token), None);
        let p: serde_json::Value = serde_json::from_str(&body).unwrap();
        p["counters"]["handled"] == 5
    });
    let (status, metrics) = call("GET", &url("/metrics"), Some(token), None);
    assert_eq!(status, 200);
    for line in [
        r#"runnel_events_handled_total{plugin="enricher"} 5"#,
        r#"runnel_handler_duration_seconds_count{plugin="enricher"} 5"#,
        r#"runnel_backlog_entries{plugin="enricher",stream="orders"} 0"#,
        "runnel_backend_up 1",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from:\n{metrics}");
    }
    let (ok, summary) = process.terminate();
    assert!(ok, "{summary}");
}

async fn fill(broker: &RedisBroker, stream: &str, payloads: &[&str]) -> Vec<String> {
    let events: Vec<Event> = payloads
        .iter()
        .map(|p| Event::new("work", p.as_bytes()))
        .collect();
    let appends = events
        .iter()
        .map(|e| Append {
            stream: stream.to_string(),
            fields: event_fields(e),
        })
        .collect();
    broker.append(appends).await.unwrap();
    events.into_iter().map(|e| e.id).collect()
}

/// Ids of the events the `worker` plugin reported as handled.
async fn worked(broker: &RedisBroker, stream: &str) -> Vec<String> {
    broker
        .range(stream, None, None, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| String::from_utf8(Event::from_json(&e.fields[0].1).unwrap().payload).unwrap())
        .collect()
}

/// An entry as XRANGE returns it: id and fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Ids of the entries pending in a group, by the events they carry.
async fn pending_events(stream: &str, group: &str) -> Vec<String> {
    let mut conn = runnel_tests::redis_conn().await;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (entry, ..) in pending {
        let range: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&entry)
            .arg(&entry)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(Event::from_json(&range[0].1[0].1).unwrap().id);
    }
    ids
}

fn worker_config(stream: &str, out: &str, group: &str, deadline_ms: u64, extra: &str) -> PathBuf {
    write_config(
        "sigterm",
        &format!(
            r#"
            [backend]
            kind = "redis"
            url = "{}"
            block_ms = 100
            count = 8
            [service]
            shutdown_deadline_ms = {deadline_ms}
            [routes]
            "worked" = "{out}"
            [[plugin]]
            name = "worker"
            path = {:?}
            group = "{group}"
            streams = ["{stream}"]
            start = "beginning"
            concurrency = 2
            {extra}
            "#,
            redis_url(),
            plugin(guests::WORKER)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_and_acks_what_was_taken_and_leaves_the_rest() {
    let (stream, out, group) = (unique("term-in"), unique("term-out"), unique("g"));
    let redis = RedisBroker::connect(&redis_url(), Trimming::default())
        .await
        .unwrap();
    // About a millisecond of work each: enough to be mid-stream at SIGTERM.
    let payloads = vec![r#"{"iterations": 1000000}"#; 2000];
    let all = fill(&redis, &stream, &payloads).await;
    let config = worker_config(&stream, &out, &group, 30_000, "");
    let mut process = Process::run(&bin(), &config, "info");
    process.wait_for("consuming", LIMIT);
    let deadline = Instant::now() + LIMIT;
    while worked(&redis, &out).await.len() < 50 {
        assert!(Instant::now() < deadline, "nothing handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (ok, summary) = process.terminate();
    println!("exited in {:?}:\n{summary}", started.elapsed());
    assert!(ok, "exit 0 after SIGTERM");

    let handled = worked(&redis, &out).await;
    let unique_handled: HashSet<&String> = handled.iter().collect();
    assert_eq!(unique_handled.len(), handled.len(), "nothing handled twice");
    assert!(handled.len() < all.len(), "stopped before the end");
    let pending = pending_events(&stream, &group).await;
    assert!(
        pending.is_empty(),
        "a drain within the deadline acks all it took: {pending:?}"
    );

    // Another process takes what was never read, and only that.
    let again = Process::run(&bin(), &config, "info");
    let deadline = Instant::now() + LIMIT;
    while redis.backlog(&stream, &group).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the rest was not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.terminate().0);
    let handled = worked(&redis, &out).await;
    let unique_handled: HashSet<&String> = handled.iter().collect();
    assert_eq!(handled.len(), all.len(), "each event handled exactly once");
    assert_eq!(unique_handled, all.iter().collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_shutdown_deadline_unfinished_events_stay_pending_and_the_exit_is_clean() {
    let (stream, out, group) = (unique("deadline-in"), unique("deadline-out"), unique("g"));
    let redis = RedisBroker::connect(&redis_url(), Trimming::default())
        .await
        .unwrap();
    // Far more work than the deadline allows (the time limit is higher).
    let taken = fill(&redis, &stream, &[r#"{"iterations": 100000000000}"#; 2]).await;
    let config = worker_config(&stream, &out, &group, 300, "timeout_ms = 120000");
    let mut process = Process::run(&bin(), &config, "info");
    process.wait_for("consuming", LIMIT);
    let deadline = Instant::now() + LIMIT;
    while pending_events(&stream, &group).await.len() < 2 {
        assert!(Instant::now() < deadline, "the events were not taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let (ok, _) = process.terminate();
    let took = started.elapsed();
    println!("exited {took:?} after SIGTERM with a 300 ms deadline");
    assert!(ok, "exit 0 even when giving up");
    assert!(
        took < Duration::from_secs(30),
        "gave up at the deadline instead of waiting for the calls: {took:?}"
    );
    assert!(worked(&redis, &out).await.is_empty());
    let mut pending = pending_events(&stream, &group).await;
    pending.sort();
    let mut taken = taken;
    taken.sort();
    assert_eq!(
        pending, taken,
        "unfinished events stay pending for another consumer"
    );
}
