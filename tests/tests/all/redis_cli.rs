//! The Redis commands of the CLI against the real server: `emit`,
//! `dlq list`, `dlq replay`, `replay`.

use runnel_tests::guests;
use std::time::Duration;

use runnel::event::Event;
use runnel_tests::{plugin, redis_conn, redis_url, start, unique};

use crate::util::runnel_ok as runnel;

async fn events_on(stream: &str) -> Vec<Event> {
    let mut conn = redis_conn().await;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .iter()
        .map(|id| match id.map.get("event") {
            Some(redis::Value::BulkString(b)) => Event::from_json(b).unwrap(),
            other => panic!("no event field: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn emit_publishes_one_event_or_ndjson_from_stdin() {
    let url = redis_url();
    let stream = unique("emit");
    runnel(
        &[
            "emit",
            "--redis",
            &url,
            "--stream",
            &stream,
            "--name",
            "order.created",
            "--payload",
            r#"{"a":1}"#,
            "--correlation-id",
            "c-1",
        ],
        None,
    );
    let lines = format!(
        "{{\"name\":\"x\",\"payload\":1}}\n{{\"name\":\"y\",\"payload\":\"text\"}}\n{{\"name\":\"z\",\"payload\":{{}},\"stream\":\"{stream}-other\"}}\n"
    );
    let out = runnel(
        &["emit", "--redis", &url, "--stream", &stream],
        Some(&lines),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "emitted 3 events"
    );

    let events = events_on(&stream).await;
    let names: Vec<_> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["order.created", "x", "y"]);
    assert_eq!(events[0].payload, br#"{"a":1}"#);
    assert_eq!(events[0].meta.correlation_id, "c-1");
    assert_eq!(events[2].payload, b"text");
    assert_eq!(events_on(&format!("{stream}-other")).await.len(), 1);
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_to_the_group_that_failed_them() {
    let url = redis_url();
    let stream = unique("dlq");
    let dead = format!("{stream}.dead");
    let run = start(&format!(
        "[backend]\nkind = \"redis\"\nurl = \"{url}\"\nblock_ms = 100\nclaim_min_idle_ms = 5000\n\n[[plugin]]\nname = \"rejecter\"\npath = \"@rejecter\"\nstreams = [\"{stream}\"]\n"
    ))
    .await
    .unwrap();
    let event = Event::new("refund.requested", r#"{"amount":5}"#);
    run.inject(&stream, vec![event.clone()]).await.unwrap();
    run.idle_within(Duration::from_secs(30)).await.unwrap();
    run.stop().await.unwrap();

    let listed = String::from_utf8_lossy(
        &runnel(&["dlq", "list", "--redis", &url, "--stream", &dead], None).stdout,
    )
    .into_owned();
    assert!(
        listed.contains(&format!("refund.requested {}", event.id)),
        "{listed}"
    );
    assert!(
        listed.contains("plugin=rejecter group=rejecter kind=rejected attempts=1"),
        "{listed}"
    );
    assert!(
        listed.contains("refund.requested is never acceptable"),
        "{listed}"
    );

    let out = runnel(&["dlq", "replay", "--redis", &url, "--stream", &dead], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1 dead letters"));
    assert_eq!(
        events_on(&stream).await.len(),
        1,
        "nothing goes back on the source stream, which every group reads"
    );
    let back = events_on(&format!("{stream}.replay.rejecter")).await;
    assert_eq!(back, vec![event], "the original envelope, unchanged");
    assert!(
        events_on(&dead).await.is_empty(),
        "replayed letters leave the dead-letter stream"
    );
}

#[tokio::test]
async fn replay_runs_a_plugin_over_a_range_without_publishing_or_acking() {
    let url = redis_url();
    let stream = unique("replay");
    let lines = [
        r#"{"name":"order.created","payload":{"order_id":"r-1","sku":"A","quantity":2,"unit_cents":100}}"#,
        r#"{"name":"order.created","payload":{"order_id":"r-2","sku":"OUT-OF-STOCK","quantity":1,"unit_cents":5}}"#,
    ]
    .join("\n");
    runnel(
        &["emit", "--redis", &url, "--stream", &stream],
        Some(&lines),
    );
    let wasm = plugin(guests::ORDER_ENRICHER);
    let out = runnel(
        &[
            "replay",
            "--redis",
            &url,
            "--stream",
            &stream,
            wasm.to_str().unwrap(),
        ],
        None,
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("→ ok"), "{report}");
    assert!(report.contains(r#"would emit order.enriched: {"order_id":"r-1","sku":"A","total_cents":200,"priority":false}"#), "{report}");
    assert!(
        report.contains("log info: order r-1 totals 200 cents"),
        "{report}"
    );
    assert!(
        report.contains("→ retry: inventory has no stock for order r-2"),
        "{report}"
    );
    assert!(report.contains("2 events replayed"), "{report}");

    let mut conn = redis_conn().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2, "nothing published");
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        groups.is_empty(),
        "no consumer group, so nothing was acknowledged"
    );
}
