//! The fault suite: a plugin that misbehaves in every way the sandbox must
//! contain, each time beside a well-behaved plugin that must keep being
//! served. Each test prints what it measured (time to detect, host memory).

use std::time::{Duration, Instant};

use runnel::dead_letter::DeadLetterRecord;
use runnel::event::Event;
use runnel::handler::{Handler as _, Verdict};
use runnel_tests::{start, Call, Running};

const LIMIT: Duration = Duration::from_secs(60);

/// The hostile plugin on stream `bad`, the logger on stream `good`.
async fn pair(hostile_settings: &str) -> Running {
    start(&format!(
        r#"
[engine]
max_instances = 16

[[plugin]]
name = "hostile"
path = "@hostile"
streams = ["bad"]
max_attempts = 1
{hostile_settings}

[[plugin]]
name = "logger"
path = "@logger"
streams = ["good"]
"#
    ))
    .await
    .unwrap()
}

fn host_peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends one hostile event and `good` well-behaved ones, waits for the end,
/// and returns the hostile event's dead letter and the time to detect.
async fn run_fault(run: &Running, mode: &str, good: usize) -> (DeadLetterRecord, Duration) {
    let started = Instant::now();
    run.inject("bad", vec![Event::new("attack", mode)])
        .await
        .unwrap();
    run.inject(
        "good",
        (0..good)
            .map(|i| Event::new("fine", format!("{i}")))
            .collect(),
    )
    .await
    .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let detected = started.elapsed();
    let dead = run
        .runtime
        .broker
        .range("bad.dead", None, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "the hostile event is dead-lettered");
    let handled = run.recorders[1].calls().len();
    assert_eq!(
        handled, good,
        "the well-behaved plugin handled all its events"
    );
    println!(
        "{mode}: detected and dead-lettered in {detected:?}; host peak RSS {} MiB",
        host_peak_rss_kib() / 1024
    );
    (DeadLetterRecord::from_entry(&dead[0]), detected)
}

#[tokio::test]
async fn an_endless_loop_times_out_while_other_plugins_are_served() {
    let run = pair("timeout_ms = 1500").await;
    run.inject("bad", vec![Event::new("attack", "loop")])
        .await
        .unwrap();
    // While the loop runs, the other plugin handles its events.
    run.inject(
        "good",
        (0..50)
            .map(|i| Event::new("fine", format!("{i}")))
            .collect(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + LIMIT;
    while run.recorders[1].calls().len() < 50 {
        assert!(Instant::now() < deadline, "the good plugin starved");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        run.runtime.plugins[0].stats.snapshot().dead_lettered,
        0,
        "the well-behaved events were served before the loop was stopped"
    );
    let started = Instant::now();
    run.idle_within(LIMIT).await.unwrap();
    let dead = run
        .runtime
        .broker
        .range("bad.dead", None, None, 10)
        .await
        .unwrap();
    let record = DeadLetterRecord::from_entry(&dead[0]);
    assert_eq!(record.kind, "timeout", "{record:?}");
    assert!(record.reason.contains("time limit"), "{record:?}");
    println!(
        "loop: stopped {:?} after the good events were done",
        started.elapsed()
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_call_asleep_in_a_host_wait_is_given_up_at_the_backstop() {
    // An hour's sleep waits on a clock's pollable in the host, where no
    // epoch tick reaches it; the backstop (twice the limit, plus a second)
    // ends the call, and the instance goes with it.
    let run = pair("timeout_ms = 300").await;
    let (record, _) = run_fault(&run, "sleep", 20).await;
    assert_eq!(record.kind, "timeout", "{record:?}");
    assert!(record.reason.contains("stuck in a host call"), "{record:?}");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn allocation_past_the_memory_cap_fails_inside_the_guest() {
    let run = pair("memory_mb = 32").await;
    let (record, _) = run_fault(&run, "alloc", 20).await;
    assert_eq!(record.kind, "handler-error", "{record:?}");
    let mib: u64 = record
        .reason
        .trim_start_matches("allocation failed after ")
        .trim_end_matches(" MiB")
        .parse()
        .unwrap_or_else(|_| panic!("{record:?}"));
    assert!(mib < 32, "the guest got {mib} MiB past a 32 MiB cap");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_stack_overflow_is_a_trap_not_a_crash() {
    let run = pair("").await;
    let (record, _) = run_fault(&run, "recurse", 20).await;
    // Either wasmtime's own stack limit or the guest's shadow stack running
    // out of linear memory: a trap either way, caught and reported.
    assert_eq!(record.kind, "trap", "{record:?}");
    println!("recurse: {}", record.reason);
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_million_emits_in_one_call_are_refused() {
    // Building and passing a million events takes seconds of CPU, and
    // ran past the default 5 s limit on a loaded machine (a cold CI run, its
    // other tests beside it): the refusal is what is tested, not the time.
    let run = pair("memory_mb = 512\ntimeout_ms = 30000").await;
    let (record, _) = run_fault(&run, "emit-flood", 10).await;
    assert!(
        record
            .reason
            .contains("too many events emitted in one call"),
        "{record:?}"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn an_emitted_payload_past_the_limit_is_refused() {
    let run = pair("").await;
    let (record, _) = run_fault(&run, "emit-huge", 10).await;
    assert!(
        record
            .reason
            .contains("payload of 17825792 bytes is larger than the limit"),
        "{record:?}"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_100_mb_log_line_is_cut() {
    let run = pair("memory_mb = 512").await;
    run.inject("bad", vec![Event::new("attack", "log-flood")])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let calls = run.recorders[0].calls();
    let Some(Call::Handle { result, .. }) = calls.first() else {
        panic!("{calls:?}")
    };
    assert_eq!(result.verdict, Verdict::Done);
    let kept = &result.logs[0].text;
    assert!(kept.len() <= 16 * 1024 + 16, "kept {} bytes", kept.len());
    assert!(kept.ends_with("(cut)"));
    println!(
        "log-flood: host peak RSS {} MiB",
        host_peak_rss_kib() / 1024
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn without_grants_files_environment_and_network_are_denied() {
    let run = pair("").await;
    for mode in ["open-file", "read-env", "connect"] {
        run.inject("bad", vec![Event::new("probe", mode)])
            .await
            .unwrap();
    }
    run.idle_within(LIMIT).await.unwrap();
    let dead = run
        .runtime
        .broker
        .range("bad.dead", None, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 3);
    for entry in &dead {
        let record = DeadLetterRecord::from_entry(entry);
        assert!(record.reason.starts_with("denied: "), "{record:?}");
    }
    run.stop().await.unwrap();
}

#[tokio::test]
async fn grants_open_exactly_what_they_name() {
    let dir = runnel_tests::scratch("grant");
    std::fs::write(dir.join("hostname"), "granted-host\n").unwrap();
    let run = pair(&format!(
        "grants = {{ env = [\"HOME\"], dirs = [{{ host = {:?}, guest = \"/etc\" }}] }}",
        dir.display().to_string()
    ))
    .await;
    for mode in ["open-file", "read-env", "connect"] {
        run.inject("bad", vec![Event::new("probe", mode)])
            .await
            .unwrap();
    }
    run.idle_within(LIMIT).await.unwrap();
    let reasons: Vec<String> = run
        .runtime
        .broker
        .range("bad.dead", None, None, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| DeadLetterRecord::from_entry(e).reason)
        .collect();
    // Dead letters arrive in whatever order the calls finished.
    let has = |text: &str| reasons.iter().any(|r| r == text);
    assert!(
        has("read the file: granted-host"),
        "the granted directory, not the host's /etc: {reasons:?}"
    );
    assert!(
        has(&format!("read HOME={}", std::env::var("HOME").unwrap())),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| r.starts_with("denied: ")).count(),
        1,
        "network was not granted: {reasons:?}"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn strict_grants_refuse_at_load_and_say_what_to_grant() {
    let refused = start(
        r#"
[[plugin]]
name = "hostile"
path = "@hostile"
streams = ["bad"]
strict_grants = true
grants = { env = ["HOME"] }
"#,
    )
    .await
    .err()
    .expect("refused at load");
    let message = format!("{refused:#}");
    assert!(
        message.contains("hostile") && message.contains("filesystem (to allow: grants.dirs)"),
        "{message}"
    );
    assert!(
        !message.contains("environment"),
        "granted, so not listed: {message}"
    );
}

#[tokio::test]
async fn a_plugin_failing_every_call_trips_its_breaker_and_loses_nothing() {
    // Every attempt fails (retry): after 3 in a row the breaker opens, the
    // events wait, a probe after the pause fails and opens it again; each
    // event still reaches its fourth and last attempt and is dead-lettered.
    let run = start(
        r#"
[[plugin]]
name = "enricher"
path = "@order_enricher"
streams = ["orders"]
max_attempts = 4
backoff = { initial_ms = 1, max_ms = 1 }
breaker_failures = 3
breaker_pause_ms = 50
"#,
    )
    .await
    .unwrap();
    let events: Vec<Event> = (0..5)
        .map(|i| {
            Event::new(
                "order.created",
                format!(
                    r#"{{"order_id":"o{i}","sku":"OUT-OF-STOCK","quantity":1,"unit_cents":1}}"#
                ),
            )
        })
        .collect();
    run.inject("orders", events).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let plugin = &run.runtime.plugins[0];
    let trips = plugin.breaker.trips();
    let s = plugin.stats.snapshot();
    println!("breaker trips: {trips}; {s:?}");
    assert!(trips >= 2, "tripped, and a failed probe tripped it again");
    assert_eq!(s.dead_lettered, 5, "every event reached its last attempt");
    assert_eq!(s.failed, 20, "4 attempts each, none skipped by the breaker");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_fuel_budget_stops_an_endless_loop_at_the_same_point_every_time() {
    let run = start(
        r#"
[engine]
fuel = true

[[plugin]]
name = "hostile"
path = "@hostile"
streams = ["bad"]
max_attempts = 2
backoff = { initial_ms = 1, max_ms = 1 }
timeout_ms = 60000
fuel_per_call = 50000000
"#,
    )
    .await
    .unwrap();
    let started = Instant::now();
    run.inject("bad", vec![Event::new("probe", "loop")])
        .await
        .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let dead = run
        .runtime
        .broker
        .range("bad.dead", None, None, 10)
        .await
        .unwrap();
    let record = DeadLetterRecord::from_entry(&dead[0]);
    println!(
        "fuel: detected in {:?}: {}",
        started.elapsed(),
        record.reason
    );
    assert_eq!((record.kind.as_str(), record.attempts), ("fuel", 2));
    assert!(
        record.reason.contains("fuel budget of 50000000"),
        "{}",
        record.reason
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_directory_grant_is_read_only_unless_it_says_writable() {
    for writable in [false, true] {
        let dir = runnel_tests::scratch("dir-grant");
        let run = pair(&format!(
            "grants = {{ dirs = [{{ host = {:?}, guest = \"/etc\", writable = {writable} }}] }}",
            dir.display().to_string()
        ))
        .await;
        let (record, _) = run_fault(&run, "write-file", 0).await;
        let written = dir.join("written-by-plugin");
        if writable {
            assert_eq!(record.reason, "wrote the file");
            assert!(
                written.exists(),
                "the write landed in the granted directory"
            );
        } else {
            assert!(record.reason.starts_with("denied: "), "{record:?}");
            assert!(!written.exists());
        }
        run.stop().await.unwrap();
    }
}

#[tokio::test]
async fn an_allocation_that_aborts_past_the_memory_cap_names_the_limit() {
    let run = pair("memory_mb = 32").await;
    let (record, _) = run_fault(&run, "alloc-abort", 5).await;
    println!("memory: {}", record.reason);
    assert_eq!(record.kind, "memory", "{record:?}");
    assert!(record.reason.contains("memory limit"), "{}", record.reason);
    assert!(
        record.reason.contains("memory_mb = 32"),
        "{}",
        record.reason
    );
    let metrics = runnel::service::metrics::Scrape::take(&run.runtime)
        .await
        .render();
    assert!(
        metrics.contains(r#"runnel_events_failed_total{plugin="hostile",kind="memory"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"runnel_events_failed_total{plugin="hostile",kind="trap"} 0"#),
        "{metrics}"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn a_panic_message_reaches_the_dead_letter_without_the_stdio_grant() {
    let run = pair("").await;
    let (record, _) = run_fault(&run, "panic", 5).await;
    assert_eq!(record.kind, "trap", "{record:?}");
    assert!(
        record
            .reason
            .contains("the plugin panicked on purpose handling"),
        "{}",
        record.reason
    );
    assert_eq!(record.reason.lines().count(), 1, "{}", record.reason);
    run.stop().await.unwrap();
}

#[tokio::test]
async fn the_emitted_payload_cap_follows_the_configured_max_payload_bytes() {
    let run = start(
        r#"
max_payload_bytes = 1024

[routes]
"echoed" = "out"

[[plugin]]
name = "echo"
path = "@conformance"
streams = ["in"]
max_attempts = 1
"#,
    )
    .await
    .unwrap();
    run.inject(
        "in",
        vec![
            Event::new("echo", "x".repeat(1000)),
            Event::new("echo", "y".repeat(2000)),
        ],
    )
    .await
    .unwrap();
    run.idle_within(LIMIT).await.unwrap();
    assert_eq!(
        run.events_on("out").await.len(),
        1,
        "the small echo went out"
    );
    let dead = run
        .runtime
        .broker
        .range("in.dead", None, None, 10)
        .await
        .unwrap();
    let record = DeadLetterRecord::from_entry(&dead[0]);
    assert!(
        record
            .reason
            .contains("payload of 2000 bytes is larger than the limit of 1024 (max_payload_bytes)"),
        "{record:?}"
    );
    run.stop().await.unwrap();
}

#[tokio::test]
async fn calls_that_wait_or_run_long_leave_the_fast_path_and_count_once() {
    // Copies of the worker, each on its own stream. Its calls start
    // without a fiber; one that runs past two epoch ticks, or sleeps (a
    // wait on a clock's pollable in the host), is run again on a fiber,
    // and what the abandoned attempt emitted must not go out with it.
    let run = start(
        r#"
[routes]
"worked" = "done"

[[plugin]]
name = "long"
path = "@worker"
streams = ["long"]

[[plugin]]
name = "sleeper"
path = "@worker"
streams = ["sleeper"]

[[plugin]]
name = "quick"
path = "@worker"
streams = ["quick"]

[[plugin]]
name = "fiber"
path = "@worker"
streams = ["fiber"]
fast_path = false
"#,
    )
    .await
    .unwrap();
    // About 50 ms of computing or more: past two 10 ms ticks.
    for (stream, payload, n) in [
        ("long", r#"{"iterations":50000000}"#, 2),
        ("sleeper", r#"{"iterations":0,"sleep_ms":30}"#, 2),
        ("quick", r#"{"iterations":1000}"#, 50),
        ("fiber", r#"{"iterations":0,"sleep_ms":30}"#, 2),
    ] {
        let events: Vec<Event> = (0..n).map(|_| Event::new("work", payload)).collect();
        run.inject(stream, events).await.unwrap();
    }
    run.idle_within(LIMIT).await.unwrap();
    for (i, (name, events)) in [("long", 2), ("sleeper", 2), ("quick", 50), ("fiber", 2)]
        .into_iter()
        .enumerate()
    {
        let calls = run.recorders[i].calls();
        assert_eq!(calls.len(), events, "{name}: one call per event");
        for call in &calls {
            let Call::Handle { event, result } = call else {
                panic!("{name}: {call:?}")
            };
            assert_eq!(result.verdict, Verdict::Done, "{name}: {event:?}");
            assert_eq!(result.emitted.len(), 1, "{name}: one `worked` per event");
        }
    }
    let left = |i: usize| run.runtime.plugins[i].live.fast_path_left();
    assert!(left(0) >= 1, "the long call left the fast path");
    assert!(left(1) >= 1, "the sleeping call left the fast path");
    assert_eq!(left(2), 0, "a short call stays on the fast path");
    assert_eq!(left(3), 0, "`fast_path = false`: never tried");
    run.stop().await.unwrap();
}

#[tokio::test]
async fn leaving_the_fast_path_and_coming_back_keeps_one_instance_per_call_at_once() {
    // The pool is sized by the plugins' concurrency, so a plugin must never
    // keep a warm instance for each way of calling it: a sleeping call
    // leaves the fast path (its instance dropped, one made for a fiber),
    // the next thousand calls go to the fiber, and the one after comes
    // back to the fast path, whose new instance replaces the fiber's.
    let run = start(
        r#"
[routes]
"worked" = "done"

[[plugin]]
name = "worker"
path = "@worker"
streams = ["work"]
concurrency = 1
"#,
    )
    .await
    .unwrap();
    let mut events = vec![Event::new("work", r#"{"iterations":0,"sleep_ms":5}"#)];
    events.extend((0..1_005).map(|_| Event::new("work", r#"{"iterations":0}"#)));
    run.inject("work", events).await.unwrap();
    run.idle_within(LIMIT).await.unwrap();
    let plugin = &run.runtime.plugins[0];
    assert_eq!(plugin.live.fast_path_left(), 1);
    assert_eq!(plugin.stats.snapshot().handled, 1_006);
    assert_eq!(
        plugin.live.instances_alive(),
        1,
        "one call at once, one instance"
    );
    run.stop().await.unwrap();
}
