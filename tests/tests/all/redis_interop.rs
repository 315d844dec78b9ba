//! Redis Streams with a real server: wire compatibility with the Go library
//! in both directions, and delivery semantics (retry, dead letter, ack) on
//! Redis. Every test uses its own streams and groups.

use std::time::Duration;

use base64::Engine as _;
use redis::AsyncCommands as _;
use runnel::dead_letter::DeadLetterRecord;
use runnel::event::Event;
use runnel_tests::{redis_conn, redis_url, start, unique, Call};

const LIMIT: Duration = Duration::from_secs(30);

/// The sample envelope of `shared/reference/wire-format.md`.
const GO_ENVELOPE: &str = r#"{"id":"2f1c7a3e-6b0d-4c1e-9a55-0c2b9d7e8f10","name":"user.created","meta":{"created_at_utc":"2023-02-12T18:00:59.123456789Z","correlation_id":"","attempts":0,"is_dry_run":false},"payload":"eyJoZWxsbyI6IndvcmxkIn0="}"#;

fn redis_backend() -> String {
    format!(
        "[backend]\nkind = \"redis\"\nurl = \"{}\"\nblock_ms = 200\nclaim_min_idle_ms = 5000\n",
        redis_url()
    )
}

#[tokio::test]
async fn an_entry_written_as_the_go_library_writes_it_reaches_the_plugin_unchanged() {
    let stream = unique("go-in");
    let run = start(&format!(
        "{}\n[[plugin]]\nname = \"logger\"\npath = \"@logger\"\nstreams = [\"{stream}\"]\n",
        redis_backend()
    ))
    .await
    .unwrap();
    // As the Go library publishes: XADD <stream> MAXLEN 1000000 * event <json>.
    let mut conn = redis_conn().await;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(1_000_000)
        .arg("*")
        .arg("event")
        .arg(GO_ENVELOPE)
        .query_async(&mut conn)
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let calls = run.recorders[0].calls();
    let [Call::Handle { event, .. }] = &calls[..] else {
        panic!("one call expected: {calls:?}");
    };
    assert_eq!(event.id, "2f1c7a3e-6b0d-4c1e-9a55-0c2b9d7e8f10");
    assert_eq!(event.name, "user.created");
    assert_eq!(event.payload, br#"{"hello":"world"}"#);
    assert_eq!(event.meta.attempts, 1, "incremented before the call");
    let mut as_received = event.clone();
    as_received.meta.attempts = 0;
    assert_eq!(
        as_received.to_json(),
        GO_ENVELOPE.as_bytes(),
        "same meta, byte for byte"
    );

    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("logger")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(summary) = pending else {
        panic!("{pending:?}")
    };
    assert_eq!(
        summary[0],
        redis::Value::Int(0),
        "acknowledged after handling"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn entries_runnel_writes_decode_under_the_go_rules() {
    let stream = unique("go-out");
    let run = start(&format!(
        "{}\n[routes]\n\"user.*\" = \"{stream}\"\n",
        redis_backend()
    ))
    .await
    .unwrap();
    let mut event = Event::new("user.created", br#"{"hello":"world"}"#.to_vec());
    event.meta.correlation_id = "corr-7".into();
    run.runtime.publisher.emit(&[event.clone()]).await.unwrap();

    let mut conn = redis_conn().await;
    let raw: redis::Value = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let redis::Value::Array(entries) = raw else {
        panic!("{raw:?}")
    };
    assert_eq!(entries.len(), 1);
    let redis::Value::Array(entry) = &entries[0] else {
        panic!()
    };
    let redis::Value::Array(fields) = &entry[1] else {
        panic!()
    };
    assert_eq!(fields.len(), 2, "exactly one field");
    assert_eq!(
        fields[0],
        redis::Value::BulkString(b"event".to_vec()),
        "named event, first"
    );
    let redis::Value::BulkString(json) = &fields[1] else {
        panic!()
    };

    // Decode as Go's encoding/json would, into the seed's struct.
    let v: serde_json::Value = serde_json::from_slice(json).unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    let order = [
        "\"id\"",
        "\"name\"",
        "\"meta\"",
        "\"created_at_utc\"",
        "\"correlation_id\"",
        "\"attempts\"",
        "\"is_dry_run\"",
        "\"payload\"",
    ];
    let positions: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "keys in the seed's order: {text}"
    );
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str().unwrap())
        .expect("standard base64 with padding");
    assert_eq!(payload, br#"{"hello":"world"}"#);
    let created = v["meta"]["created_at_utc"].as_str().unwrap();
    assert!(created.ends_with('Z'));
    runnel::event::parse_rfc3339(created).expect("RFC 3339");
    assert_eq!(v["meta"]["attempts"], 0);
    assert_eq!(v["meta"]["correlation_id"], "corr-7");
    assert_eq!(v["id"], event.id.as_str());

    let unrouted = run
        .runtime
        .publisher
        .emit(&[Event::new("invoice.paid", "{}")])
        .await
        .unwrap_err();
    assert!(
        unrouted.to_string().contains("\"invoice.paid\""),
        "{unrouted}"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_event_is_retried_dead_lettered_and_acked_on_redis() {
    let stream = unique("retry");
    let run = start(&format!(
        "{}\n[[plugin]]\nname = \"flaky\"\npath = \"@flaky\"\nstreams = [\"{stream}\"]\nmax_attempts = 3\nbackoff = {{ initial_ms = 1, max_ms = 2 }}\n",
        redis_backend()
    ))
    .await
    .unwrap();
    let event = Event::new("job", r#"{"fail_times":100}"#);
    let ok = Event::new("job", r#"{"fail_times":1}"#);
    run.inject(&stream, vec![event.clone(), ok]).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let dead = run
        .runtime
        .broker
        .range(&format!("{stream}.dead"), None, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let record = DeadLetterRecord::from_entry(&dead[0]);
    assert_eq!(
        (
            record.attempts,
            record.plugin.as_str(),
            record.kind.as_str()
        ),
        (3, "flaky", "handler-error")
    );
    assert_eq!(Event::from_json(&record.event).unwrap(), event);
    let mut conn = redis_conn().await;
    let pending: u64 = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("flaky")
        .query_async::<(u64, redis::Value, redis::Value, redis::Value)>(&mut conn)
        .await
        .unwrap()
        .0;
    assert_eq!(pending, 0, "both entries acked after their final outcome");
    let runtime = run.stop().await.unwrap();
    let s = runtime.summary()[0].1;
    assert_eq!((s.handled, s.dead_lettered, s.retried), (1, 1, 3));
    let _: () = conn
        .del(&[stream.clone(), format!("{stream}.dead")])
        .await
        .unwrap();
}

#[tokio::test]
async fn the_dedup_window_lives_in_redis_and_skips_a_redelivered_id() {
    let stream = unique("dedup");
    let toml = format!(
        "{}\n[[plugin]]\nname = \"logger\"\npath = \"@logger\"\ngroup = \"{stream}-g\"\nstreams = [\"{stream}\"]\ndedup_window_ms = 60000\n",
        redis_backend()
    );
    let event = Event::new("x", "once");
    let first = start(&toml).await.unwrap();
    first.inject(&stream, vec![event.clone()]).await.unwrap();
    first.idle_within(LIMIT).await.unwrap();
    first.stop().await.unwrap();

    // Another process (a restart) sees the same id again.
    let second = start(&toml).await.unwrap();
    second.inject(&stream, vec![event.clone()]).await.unwrap();
    second.idle_within(LIMIT).await.unwrap();
    assert!(second.recorders[0].calls().is_empty(), "not called again");
    let runtime = second.stop().await.unwrap();
    assert_eq!(runtime.summary()[0].1.deduplicated, 1);
}
