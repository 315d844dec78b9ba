//! End to end through compiled wasm plugins, every scenario on every
//! backend (the in-memory one and Redis): success, emit chains, retries,
//! rejects, traps, decode failures, deduplication, the causal depth bound;
//! and backpressure, which only the bounded memory backend has.

use std::time::Duration;

use runnel::broker::Append;
use runnel::config::Backend;
use runnel::dead_letter::DeadLetterRecord;
use runnel::event::Event;
use runnel::handler::{FailureKind, Verdict};
use runnel_tests::{logs, start, unique, Call, Running};

const LIMIT: Duration = Duration::from_secs(30);

/// The backend a scenario runs on, and the stream names it uses there: on
/// a shared Redis (or cluster) each scenario's streams get a suffix of
/// their own.
struct On {
    /// `[backend]` after `kind = "redis"` (`url = ...` or `cluster = [...]`);
    /// `None` for the memory backend.
    redis: Option<String>,
    suffix: String,
}

impl On {
    fn memory() -> On {
        On {
            redis: None,
            suffix: String::new(),
        }
    }

    fn redis() -> On {
        On {
            redis: Some(format!("url = \"{}\"", runnel_tests::redis_url())),
            suffix: unique(""),
        }
    }

    /// A Redis Cluster of three masters: a scenario's streams land in
    /// several slots, on several masters.
    fn cluster() -> On {
        let cluster = runnel_tests::redis_cluster::shared();
        On {
            redis: Some(format!("cluster = {}", cluster.toml_seeds())),
            suffix: unique(""),
        }
    }

    /// The stream `name` on this backend.
    fn s(&self, name: &str) -> String {
        format!("{name}{}", self.suffix)
    }

    /// Starts `toml` on this backend; `$name` in it is the stream
    /// [`On::s`]`(name)`.
    async fn start(&self, toml: &str) -> Running {
        let mut text = String::with_capacity(toml.len());
        let mut rest = toml;
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            let name: String = rest[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            text.push_str(&self.s(&name));
            rest = &rest[at + 1 + name.len()..];
        }
        text.push_str(rest);
        if let Some(redis) = &self.redis {
            // Tables may follow the plugins; top-level keys come first.
            text.push_str(&format!(
                "\n[backend]\nkind = \"redis\"\n{redis}\nblock_ms = 100\n"
            ));
        }
        let run = start(&text).await.unwrap();
        assert_eq!(
            matches!(run.runtime.config.backend, Backend::Redis(_)),
            self.redis.is_some(),
            "the scenario runs on the backend it is named for"
        );
        run
    }
}

/// Runs each scenario (`async fn name(on: On)`) on every backend, as
/// `memory::name`, `redis::name` and `redis_cluster::name`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        on_every_backend!(@on memory, memory, $($name),*);
        on_every_backend!(@on redis, redis, $($name),*);
        on_every_backend!(@on redis_cluster, cluster, $($name),*);
    };
    (@on $module:ident, $backend:ident, $($name:ident),*) => {
        mod $module {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::On::$backend()).await
            })*
        }
    };
}

on_every_backend!(
    an_order_is_enriched_and_the_follow_up_is_handled_downstream,
    emitted_events_inherit_correlation_id_and_dry_run,
    a_flaky_event_is_retried_exactly_until_it_succeeds,
    after_max_attempts_the_event_reaches_handle_error_and_the_dead_letter_stream,
    a_rejected_event_is_dead_lettered_at_once,
    a_trap_is_contained_and_the_next_event_is_handled,
    a_trap_in_handle_error_is_counted_and_delivery_goes_on,
    an_entry_that_is_not_an_event_is_dead_lettered_with_its_raw_fields,
    events_of_other_names_are_skipped_without_a_call,
    a_redelivered_event_within_the_dedup_window_is_acked_without_a_call,
    malformed_and_oversized_entries_are_dead_lettered_and_the_stream_flows_on,
    a_cycle_through_plugins_stops_at_the_causal_depth_bound,
);

fn order(id: &str, sku: &str) -> Event {
    Event::new(
        "order.created",
        format!(r#"{{"order_id":"{id}","sku":"{sku}","quantity":3,"unit_cents":500}}"#),
    )
}

const PIPELINE: &str = r#"
[engine]
max_instances = 16

[routes]
"order.enriched" = "$enriched"

[[plugin]]
name = "enricher"
path = "@order_enricher"
streams = ["$orders"]
events = ["order.*"]
max_attempts = 3
backoff = { initial_ms = 1, max_ms = 5 }

[[plugin]]
name = "logger"
path = "@logger"
streams = ["$enriched"]
"#;

async fn an_order_is_enriched_and_the_follow_up_is_handled_downstream(on: On) {
    let run = on.start(PIPELINE).await;
    run.inject(&on.s("orders"), vec![order("o-1", "A-1")])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let enriched = run.events_on(&on.s("enriched")).await;
    assert_eq!(enriched.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&enriched[0].payload).unwrap();
    assert_eq!(body["order_id"], "o-1");
    assert_eq!(body["total_cents"], 1500);
    let logger_calls = run.recorders[1].calls();
    assert!(
        matches!(&logger_calls[..], [Call::Handle { event, result }] if event.id == enriched[0].id && result.verdict == Verdict::Done),
        "{logger_calls:?}"
    );
    let runtime = run.stop().await.unwrap();
    let summary = runtime.summary();
    assert_eq!(summary[0].1.handled, 1);
    assert_eq!(summary[1].1.handled, 1);
}

async fn emitted_events_inherit_correlation_id_and_dry_run(on: On) {
    let run = on.start(PIPELINE).await;
    let mut source = order("o-2", "A-1");
    source.meta.correlation_id = "corr-42".into();
    source.meta.is_dry_run = true;
    run.inject(&on.s("orders"), vec![source.clone()])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let enriched = run.events_on(&on.s("enriched")).await;
    assert_eq!(enriched.len(), 1);
    let child = &enriched[0];
    assert_eq!(child.meta.correlation_id, "corr-42");
    assert!(child.meta.is_dry_run);
    assert_eq!(child.meta.attempts, 0, "producers write 0 attempts");
    assert_ne!(child.id, source.id);
    assert_eq!(child.name, "order.enriched");
    run.stop().await.unwrap();
}

const FLAKY: &str = r#"
[engine]
max_instances = 16

[[plugin]]
name = "flaky"
path = "@flaky"
streams = ["$work"]
max_attempts = 4
backoff = { initial_ms = 1, max_ms = 2 }
"#;

fn flaky(fail_times: u32) -> Event {
    Event::new("job", format!(r#"{{"fail_times":{fail_times}}}"#))
}

async fn a_flaky_event_is_retried_exactly_until_it_succeeds(on: On) {
    let run = on.start(FLAKY).await;
    let event = flaky(2);
    run.inject(&on.s("work"), vec![event.clone()])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let calls = run.recorders[0].calls();
    let attempts: Vec<u32> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Handle { event, .. } => Some(event.meta.attempts),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "attempts count from 1, incremented before each call"
    );
    let errors: Vec<_> = calls
        .iter()
        .filter_map(|c| match c {
            Call::HandleError {
                failure,
                event,
                result,
            } => Some((failure.clone(), event.is_some(), logs(result))),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 2);
    for (i, (failure, has_event, logs)) in errors.iter().enumerate() {
        assert_eq!(failure.attempt, i as u32 + 1);
        assert!(!failure.is_last_attempt);
        assert_eq!(failure.kind, FailureKind::HandlerError);
        assert!(
            !has_event,
            "the event goes to handle-error only on the last attempt"
        );
        assert_eq!(
            logs,
            &vec![format!(
                "handle-error attempt={} last=false kind=FailureKind::HandlerError event=none",
                i + 1
            )]
        );
    }
    let runtime = run.stop().await.unwrap();
    let s = runtime.summary()[0].1;
    assert_eq!(
        (s.handled, s.retried, s.failed, s.dead_lettered),
        (1, 2, 2, 0)
    );
}

async fn after_max_attempts_the_event_reaches_handle_error_and_the_dead_letter_stream(on: On) {
    let run = on.start(FLAKY).await;
    let event = flaky(100);
    run.inject(&on.s("work"), vec![event.clone()])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let calls = run.recorders[0].calls();
    let handles = calls
        .iter()
        .filter(|c| matches!(c, Call::Handle { .. }))
        .count();
    assert_eq!(handles, 4, "exactly max_attempts calls");
    let last = calls.last().unwrap();
    match last {
        Call::HandleError {
            failure,
            event: Some(e),
            result,
        } => {
            assert!(failure.is_last_attempt);
            assert_eq!(failure.attempt, 4);
            assert_eq!(e.id, event.id);
            assert_eq!(
                logs(result),
                vec![format!(
                    "handle-error attempt=4 last=true kind=FailureKind::HandlerError event={}",
                    event.id
                )],
                "the plugin itself received the event"
            );
        }
        other => panic!("last call should be handle-error with the event: {other:?}"),
    }
    let dead = run
        .runtime
        .broker
        .range(&format!("{}.dead", on.s("work")), None, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let record = DeadLetterRecord::from_entry(&dead[0]);
    assert_eq!(record.attempts, 4);
    assert_eq!(record.kind, "handler-error");
    assert_eq!(record.plugin, "flaky");
    assert_eq!(record.stream, on.s("work"));
    assert!(record.reason.contains("failing attempt 4"), "{record:?}");
    let original = Event::from_json(&record.event).unwrap();
    assert_eq!(original, event, "the original envelope is kept as it was");
    let runtime = run.stop().await.unwrap();
    let s = runtime.summary()[0].1;
    assert_eq!(
        (s.handled, s.retried, s.failed, s.dead_lettered),
        (0, 3, 4, 1)
    );
}

async fn a_rejected_event_is_dead_lettered_at_once(on: On) {
    let run = on
        .start(
            r#"
[[plugin]]
name = "rejecter"
path = "@rejecter"
streams = ["$in"]
max_attempts = 5
"#,
        )
        .await;
    run.inject(&on.s("in"), vec![Event::new("thing", "x")])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let calls = run.recorders[0].calls();
    assert_eq!(calls.len(), 2, "one handle, one handle-error: {calls:?}");
    assert!(
        matches!(&calls[1], Call::HandleError { failure, event: Some(_), .. } if failure.kind == FailureKind::Rejected && failure.is_last_attempt && failure.attempt == 1)
    );
    let dead = run
        .runtime
        .broker
        .range(&format!("{}.dead", on.s("in")), None, None, 10)
        .await
        .unwrap();
    let record = DeadLetterRecord::from_entry(&dead[0]);
    assert_eq!((record.kind.as_str(), record.attempts), ("rejected", 1));
    assert_eq!(record.reason, "thing is never acceptable");
    run.stop().await.unwrap();
}

async fn a_trap_is_contained_and_the_next_event_is_handled(on: On) {
    let run = on
        .start(
            r#"
[[plugin]]
name = "trapper"
path = "@trapper"
streams = ["$in"]
max_attempts = 2
concurrency = 1
backoff = { initial_ms = 1, max_ms = 1 }
"#,
        )
        .await;
    let bad = Event::new("x", "trap");
    let good = Event::new("x", "fine");
    run.inject(&on.s("in"), vec![bad.clone(), good.clone()])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let calls = run.recorders[0].calls();
    let verdict_of = |id: &str| -> Vec<Verdict> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Handle { event, result } if event.id == id => Some(result.verdict.clone()),
                _ => None,
            })
            .collect()
    };
    let bad_verdicts = verdict_of(&bad.id);
    assert_eq!(bad_verdicts.len(), 2);
    assert!(
        bad_verdicts
            .iter()
            .all(|v| matches!(v, Verdict::Trap(m) if m.contains("trapped"))),
        "{bad_verdicts:?}"
    );
    assert_eq!(verdict_of(&good.id), vec![Verdict::Done]);
    let dead = run
        .runtime
        .broker
        .range(&format!("{}.dead", on.s("in")), None, None, 10)
        .await
        .unwrap();
    assert_eq!(DeadLetterRecord::from_entry(&dead[0]).kind, "trap");
    let runtime = run.stop().await.unwrap();
    let s = runtime.summary()[0].1;
    assert_eq!((s.handled, s.traps, s.dead_lettered), (1, 2, 1));
}

async fn a_trap_in_handle_error_is_counted_and_delivery_goes_on(on: On) {
    let run = on
        .start(
            r#"
[[plugin]]
name = "trapper"
path = "@trapper"
streams = ["$in"]
concurrency = 1
"#,
        )
        .await;
    let bad = Event::new("x", "reject-then-trap");
    let good = Event::new("x", "fine");
    run.inject(&on.s("in"), vec![bad.clone(), good])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let calls = run.recorders[0].calls();
    let trapped = calls.iter().any(|c| {
        matches!(c, Call::HandleError { event: Some(e), result: Err(m), .. } if e.id == bad.id && m.contains("trapped"))
    });
    assert!(trapped, "{calls:?}");
    let dead = run
        .runtime
        .broker
        .range(&format!("{}.dead", on.s("in")), None, None, 10)
        .await
        .unwrap();
    assert_eq!(
        dead.len(),
        1,
        "the rejected event is dead-lettered all the same"
    );
    let runtime = run.stop().await.unwrap();
    let s = runtime.summary()[0].1;
    assert_eq!(
        (s.handled, s.dead_lettered, s.error_handler_failures),
        (1, 1, 1)
    );
}

async fn an_entry_that_is_not_an_event_is_dead_lettered_with_its_raw_fields(on: On) {
    let run = on.start(FLAKY).await;
    run.runtime
        .broker
        .append(vec![Append {
            stream: on.s("work"),
            fields: vec![
                ("event".into(), b"{not json".to_vec()),
                ("extra".into(), b"kept".to_vec()),
            ],
        }])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let calls = run.recorders[0].calls();
    assert!(
        matches!(&calls[..], [Call::HandleError { failure, event: None, .. }] if failure.kind == FailureKind::Decode && failure.is_last_attempt),
        "decode failures go to handle-error with no event: {calls:?}"
    );
    let dead = run
        .runtime
        .broker
        .range(&format!("{}.dead", on.s("work")), None, None, 10)
        .await
        .unwrap();
    let fields = &dead[0].fields;
    assert_eq!(fields[0], ("event".to_string(), b"{not json".to_vec()));
    let raw = fields.iter().find(|(k, _)| k == "raw_fields").unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw.1).unwrap();
    assert_eq!(raw["extra"], "kept");
    run.stop().await.unwrap();
}

async fn events_of_other_names_are_skipped_without_a_call(on: On) {
    let run = on.start(PIPELINE).await;
    run.inject(
        &on.s("orders"),
        vec![Event::new("invoice.paid", "{}"), order("o-3", "A-1")],
    )
    .await
    .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let handled: Vec<String> = run.recorders[0]
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Handle { event, .. } => Some(event.name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(handled, vec!["order.created"]);
    let runtime = run.stop().await.unwrap();
    assert_eq!(runtime.summary()[0].1.skipped, 1);
}

#[tokio::test]
async fn a_slow_plugin_makes_emit_wait_and_nothing_is_lost() {
    const CAPACITY: u64 = 8;
    const EVENTS: usize = 200;
    let run = start(&format!(
        r#"
[backend]
kind = "memory"
capacity = {CAPACITY}

[routes]
"worked" = "done"

[[plugin]]
name = "worker"
path = "@worker"
streams = ["slow"]
concurrency = 2
"#
    ))
    .await
    .unwrap();
    let mut max_backlog = 0;
    for _ in 0..EVENTS {
        run.inject("slow", vec![Event::new("work", r#"{"iterations":20000}"#)])
            .await
            .unwrap();
        let backlog = run.runtime.broker.backlog("slow", "worker").await.unwrap();
        max_backlog = max_backlog.max(backlog);
    }
    assert!(
        max_backlog <= CAPACITY,
        "emit must wait while the stream is full: backlog reached {max_backlog}"
    );
    assert!(
        max_backlog >= CAPACITY - 2,
        "the producer outran the slow plugin, so it must have waited: max backlog {max_backlog}"
    );
    run.idle_within(LIMIT).await.unwrap();
    let runtime = run.stop().await.unwrap();
    assert_eq!(
        runtime.summary()[0].1.handled,
        EVENTS as u64,
        "N in = N handled"
    );
}

async fn a_redelivered_event_within_the_dedup_window_is_acked_without_a_call(on: On) {
    let run = on
        .start(
            r#"
[[plugin]]
name = "logger"
path = "@logger"
streams = ["$in"]
dedup_window_ms = 60000
"#,
        )
        .await;
    let event = Event::new("x", "once");
    run.inject(&on.s("in"), vec![event.clone()]).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();
    // The same event again, as after a lost ack or a producer's retry.
    run.inject(&on.s("in"), vec![event.clone(), Event::new("x", "other")])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let handled: Vec<String> = run.recorders[0]
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Handle { event, .. } => Some(event.id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        handled.iter().filter(|id| **id == event.id).count(),
        1,
        "{handled:?}"
    );
    assert_eq!(handled.len(), 2);
    let runtime = run.stop().await.unwrap();
    let s = runtime.summary()[0].1;
    assert_eq!((s.handled, s.deduplicated), (2, 1));
}

async fn malformed_and_oversized_entries_are_dead_lettered_and_the_stream_flows_on(on: On) {
    let run = on
        .start(
            r#"
max_payload_bytes = 1024

[[plugin]]
name = "logger"
path = "@logger"
streams = ["$in"]
"#,
        )
        .await;
    let good = Event::new("x", "fine").to_json();
    let text = String::from_utf8(good.clone()).unwrap();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"{{{".to_vec()),
        (
            "wrong type",
            text.replace(r#""attempts":0"#, r#""attempts":"zero""#)
                .into_bytes(),
        ),
        (
            "bad base64",
            text.replace(r#""payload":"ZmluZQ==""#, r#""payload":"@@@""#)
                .into_bytes(),
        ),
        (
            "oversized",
            Event::new("x", vec![b'a'; 200 * 1024]).to_json(),
        ),
    ];
    let mut appends: Vec<Append> = bad
        .iter()
        .map(|(_, bytes)| Append {
            stream: on.s("in"),
            fields: vec![("event".into(), bytes.clone())],
        })
        .collect();
    appends.push(Append {
        stream: on.s("in"),
        fields: vec![("event".into(), good)],
    });
    run.runtime.broker.append(appends).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();

    let dead = run
        .runtime
        .broker
        .range(&format!("{}.dead", on.s("in")), None, None, 10)
        .await
        .unwrap();
    let reasons: Vec<String> = dead
        .iter()
        .map(|e| DeadLetterRecord::from_entry(e).reason)
        .collect();
    assert_eq!(dead.len(), 4, "{reasons:?}");
    assert!(dead
        .iter()
        .all(|e| DeadLetterRecord::from_entry(e).kind == "decode"));
    assert!(reasons.iter().any(|r| r.contains("base64")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("max_payload_bytes")),
        "{reasons:?}"
    );
    let handled: Vec<_> = run.recorders[0]
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Handle { .. }))
        .collect();
    assert_eq!(handled.len(), 1, "the good event after them was handled");
    run.stop().await.unwrap();
}

async fn a_cycle_through_plugins_stops_at_the_causal_depth_bound(on: On) {
    let run = on
        .start(
            r#"
max_chain_depth = 5

[routes]
"ping" = "$pings"
"pong" = "$pongs"

[[plugin]]
name = "a"
path = "@relay"
streams = ["$pings"]

[[plugin]]
name = "b"
path = "@relay"
streams = ["$pongs"]
"#,
        )
        .await;
    let mut ping = Event::new("ping", "{}");
    ping.meta.correlation_id = "chain-1".into();
    run.inject(&on.s("pings"), vec![ping]).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();

    // Depths 0 to 5 are handled; the event at depth 6 is not.
    let handled: u64 = run
        .runtime
        .plugins
        .iter()
        .map(|p| p.stats.snapshot().handled)
        .sum();
    assert_eq!(handled, 6);
    let mut dead = Vec::new();
    for stream in [on.s("pings"), on.s("pongs")] {
        let dead_stream = format!("{stream}.dead");
        let entries = run.runtime.broker.range(&dead_stream, None, None, 10).await;
        dead.extend(entries.unwrap().iter().map(DeadLetterRecord::from_entry));
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].kind, "chain-depth");
    assert!(dead[0].reason.contains("chain-1"), "{}", dead[0].reason);
    assert!(
        dead[0].reason.contains("6 emits away"),
        "{}",
        dead[0].reason
    );
    assert!(
        dead[0].reason.contains("max_chain_depth = 5"),
        "{}",
        dead[0].reason
    );

    // What Go readers see is unchanged: the envelope comes first; the
    // depth follows it.
    let entries = run
        .runtime
        .broker
        .range(&on.s("pongs"), None, None, 1)
        .await
        .unwrap();
    assert_eq!(entries[0].fields[0].0, "event");
    assert_eq!(
        entries[0].fields[1],
        ("runnel-depth".to_string(), b"1".to_vec())
    );
}
