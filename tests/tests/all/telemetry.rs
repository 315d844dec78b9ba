//! OpenTelemetry traces, received by a small OTLP receiver on loopback: one
//! event handled by plugin A, which emits an event that plugin B handles,
//! gives one trace, B's spans descendants of A's call, with the messaging
//! attributes.

use runnel_tests::guests;
use std::time::Duration;

use runnel::broker::Broker as _;
use runnel::event::Event;
use runnel_tests::otlp::{Receiver, Span};
use runnel_tests::{plugin, redis_url, unique, until, Process};

const LIMIT: Duration = Duration::from_secs(60);

/// The one span named `name` of `plugin`'s deliveries.
fn one<'a>(spans: &'a [Span], name: &str, plugin: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == name && s.attributes.get("runnel.plugin").map(String::as_str) == Some(plugin)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one span {name:?} of {plugin} among {spans:#?}"
    );
    found[0]
}

/// Runs the enricher → logger pipeline on Redis over one event, with
/// `telemetry` as the `[telemetry]` table, until idle; returns the
/// streams (orders, enriched).
async fn run_pipeline(telemetry: &str) -> (String, String) {
    let (orders, enriched) = (unique("orders"), unique("enriched"));
    let config = crate::util::write_config(
        "telemetry",
        &format!(
            r#"
[backend]
kind = "redis"
url = "{}"
block_ms = 100

[telemetry]
{telemetry}

[routes]
"order.enriched" = "{enriched}"

[[plugin]]
name = "enricher"
path = {:?}
streams = ["{orders}"]
start = "beginning"

[[plugin]]
name = "logger"
path = {:?}
streams = ["{enriched}"]
start = "beginning"

[[plugin]]
name = "rejecter"
path = {:?}
streams = ["{orders}"]
start = "beginning"
"#,
            redis_url(),
            plugin(guests::ORDER_ENRICHER).display().to_string(),
            plugin(guests::LOGGER).display().to_string(),
            plugin(guests::REJECTER).display().to_string(),
        ),
    );
    let input = config.with_file_name("events.ndjson");
    std::fs::write(
        &input,
        format!(
            "{{\"name\":\"order.created\",\"payload\":{{\"order_id\":\"t-1\",\"sku\":\"A-1\",\"quantity\":2,\"unit_cents\":500}},\"correlation_id\":\"corr-trace-1\",\"stream\":\"{orders}\"}}\n"
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_runnel-under-test"));
    command
        .args(["run", "--exit-when-idle", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .env("RUNNEL_LOG", "info");
    let run = Process::spawn(command);
    let (ok, lines) = tokio::task::spawn_blocking(move || run.exit_within(LIMIT))
        .await
        .unwrap();
    assert!(ok, "the run succeeded: {lines:#?}");
    (orders, enriched)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_carries_the_trace_to_the_plugin_that_handles_it() {
    let receiver = Receiver::start().await;
    let (orders, enriched) = run_pipeline(&format!(
        "otlp_endpoint = \"{}\"\nservice_name = \"trace-test\"",
        receiver.endpoint()
    ))
    .await;
    let sent = runnel_tests::broker(&redis_url())
        .await
        .range(&orders, None, None, 10)
        .await
        .unwrap();
    let event = Event::from_json(&sent[0].fields[0].1).unwrap();

    // The run flushes its spans before it exits; the receiver may still
    // be decoding the last request.
    until(LIMIT, "the spans of the three deliveries", || async {
        receiver.spans().len() >= 7
    })
    .await;
    let spans = receiver.spans();
    let a = one(&spans, &format!("process {orders}"), "enricher");
    let a_call = one(&spans, "handle enricher", "enricher");
    let b = one(&spans, &format!("process {enriched}"), "logger");
    let b_call = one(&spans, "handle logger", "logger");

    // One trace: A's delivery is its root; B's delivery continues it from
    // the call that emitted B's event.
    assert!(a.parent_span_id.is_empty(), "A starts the trace: {a:#?}");
    for s in [a_call, b, b_call] {
        assert_eq!(s.trace_id, a.trace_id, "one trace: {s:#?}");
    }
    assert_eq!(a_call.parent_span_id, a.span_id);
    assert_eq!(b.parent_span_id, a_call.span_id, "B descends from A's call");
    assert_eq!(b_call.parent_span_id, b.span_id);

    // The messaging conventions, on the consumer spans.
    assert_eq!(a.kind, 5, "a consumer span");
    let attr = |s: &Span, k: &str| s.attributes.get(k).cloned().unwrap_or_default();
    assert_eq!(attr(a, "messaging.system"), "redis");
    assert_eq!(attr(a, "messaging.operation.type"), "process");
    assert_eq!(attr(a, "messaging.destination.name"), orders);
    assert_eq!(attr(a, "messaging.consumer.group.name"), "enricher");
    assert_eq!(attr(a, "messaging.message.id"), event.id);
    assert_eq!(attr(a, "messaging.message.conversation_id"), "corr-trace-1");
    assert_eq!(attr(a, "runnel.outcome"), "acked");
    assert_eq!(attr(b, "messaging.destination.name"), enriched);
    assert_eq!(
        attr(b, "messaging.message.conversation_id"),
        "corr-trace-1",
        "the emitted event keeps the correlation id"
    );
    // The calls: plugin, version, attempt, verdict.
    assert_eq!(attr(a_call, "runnel.plugin"), "enricher");
    assert_eq!(attr(a_call, "runnel.plugin.version").len(), 12);
    assert_eq!(attr(a_call, "runnel.attempt"), "1");
    assert_eq!(attr(a_call, "runnel.verdict"), "done");
    assert_eq!(attr(b_call, "runnel.plugin"), "logger");
    assert!(spans.iter().all(|s| s.service == "trace-test"));

    // The rejecter's copy of the event: its own trace (the entry carried
    // none), a failed call, then the error handler, both under it.
    let r = one(&spans, &format!("process {orders}"), "rejecter");
    let r_call = one(&spans, "handle rejecter", "rejecter");
    let r_error = one(&spans, "handle-error rejecter", "rejecter");
    assert_ne!(r.trace_id, a.trace_id, "another delivery, another trace");
    assert_eq!(r_call.parent_span_id, r.span_id);
    assert_eq!(r_error.parent_span_id, r.span_id);
    assert_eq!(attr(r_call, "runnel.verdict"), "reject");
    assert_eq!(attr(r_call, "runnel.failure.kind"), "rejected");
    assert_eq!(
        attr(r, "runnel.outcome"),
        "acked",
        "dead-lettered, then acked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_ratio_of_zero_records_no_trace() {
    let receiver = Receiver::start().await;
    run_pipeline(&format!(
        "otlp_endpoint = \"{}\"\nsample_ratio = 0.0",
        receiver.endpoint()
    ))
    .await;
    // The run flushed before it exited: whatever it recorded has arrived.
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
}
