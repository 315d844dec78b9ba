//! One behaviour spec (`plugins/CONFORMANCE.md`), one test, every guest
//! language: the Rust, C, Go, JavaScript and Python builds of the conformance
//! plugin must give the same verdicts, emitted events and log lines for the
//! same events, attempt by attempt.
//!
//! The Rust build comes from `tests/build.rs`; the others from
//! `scripts/build-guests.sh`, which the test command runs first. A Rust
//! build made against `runnel:plugin@0.1.0` (`tests/fixtures/`) runs too:
//! components built for an older contract keep working.

use runnel_tests::guests;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use runnel::event::Event;
use runnel::handler::{LogLine, Verdict};
use runnel_tests::http_server::{TestServer, HELLO};
use runnel_tests::{plugin, repo_root, start, Call};

const LIMIT: Duration = Duration::from_secs(300);

/// The conformance component of a language.
fn component(lang: &str) -> PathBuf {
    if lang == "rust" {
        return plugin(guests::CONFORMANCE);
    }
    if lang == "rust-0.1.0" {
        // Built against the first contract, before it gained key-value:
        // old components must keep running unchanged.
        return repo_root().join("tests/fixtures/runnel-plugin-0.1.0/conformance.wasm");
    }
    let path = repo_root().join(format!("plugins/target/guests/{lang}-conformance.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-guests.sh (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Events with fixed ids and times, so that every language sees the same.
fn events() -> Vec<Event> {
    let cases: [(&str, &[u8]); 22] = [
        ("echo", b"any bytes \xff\x00 even these"),
        ("inherit", b""),
        ("batch", b""),
        ("fail-n", br#"{"n": 2}"#),
        ("reject", b""),
        ("retry", b""),
        ("log", "hello, log \u{e9}".as_bytes()),
        ("meta", b""),
        ("no-route", b""),
        ("trap", b""),
        ("something-else", b"{}"),
        ("kv-count", b""),
        ("kv-count", b""),
        ("kv-lost", b""),
        ("kv-check", b""),
        ("kv-denied", b""),
        ("config", b""),
        ("config-reject", b""),
        ("http-get", b""),
        ("http-post", b"posted body"),
        ("http-denied", b""),
        ("http-redirect", b""),
    ];
    cases
        .iter()
        .enumerate()
        .map(|(i, (name, payload))| {
            let mut e = Event::new(*name, payload.to_vec());
            e.id = format!("00000000-0000-4000-8000-{i:012}");
            e.meta.correlation_id = format!("corr-{name}");
            e.meta.created_at_utc =
                runnel::event::parse_rfc3339("2026-11-27T08:00:00.123456789Z").unwrap();
            e
        })
        .collect()
}

/// Everything a language's build did for one event, in attempt order, with
/// what the spec leaves open (trap messages and the logs around a trap)
/// left out.
fn transcript(
    lang: &str,
    server: &TestServer,
    token: &std::path::Path,
) -> BTreeMap<String, Vec<String>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let run = start(&format!(
            r#"
            [routes]
            "echoed" = "out"
            "child" = "out"
            "first" = "out"
            "second" = "out"
            "recovered" = "out"
            "meta-echoed" = "out"
            "counted" = "out"
            "kv-checked" = "out"
            "configured" = "out"
            "http-got" = "out"
            "http-posted" = "out"
            [[plugin]]
            name = "conformance"
            path = {:?}
            streams = ["in"]
            concurrency = 1
            max_attempts = 3
            backoff = {{ initial_ms = 1, max_ms = 1 }}
            timeout_ms = 60000
            [plugin.grants]
            kv = ["conformance"]
            http = [{base:?}]
            [plugin.config]
            greeting = "hello"
            token = {{ file = {token:?} }}
            http_base = {base:?}
            http_denied = "http://localhost:{port}"
            "#,
            component(lang),
            token = token.display().to_string(),
            base = server.base(),
            port = server.addr.port(),
        ))
        .await
        .unwrap_or_else(|e| panic!("{lang}: {e:#}"));
        run.inject("in", events()).await.unwrap();
        run.idle_within(LIMIT).await.unwrap();
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let names: BTreeMap<String, String> =
            events().into_iter().map(|e| (e.id, e.name)).collect();
        for call in run.recorders[0].calls() {
            match call {
                Call::Handle { event, result } => {
                    let trapped = matches!(result.verdict, Verdict::Trap(_));
                    let verdict = match &result.verdict {
                        Verdict::Trap(_) => "trap".to_string(),
                        other => other.to_string(),
                    };
                    let mut lines = vec![format!("attempt {}: {verdict}", event.meta.attempts)];
                    if !trapped {
                        lines.extend(logs(&result.logs));
                    }
                    for x in &result.http {
                        lines.push(format!("http {} {} -> {}", x.method, x.url, x.outcome));
                    }
                    for runnel::handler::Routed { stream, event: e } in &result.emitted {
                        assert_eq!(
                            (e.meta.correlation_id.as_str(), e.meta.is_dry_run),
                            (event.meta.correlation_id.as_str(), false),
                            "{lang}: emitted events inherit correlation id and dry run"
                        );
                        lines.push(format!(
                            "emit {} to {stream}: {:?}",
                            e.name,
                            String::from_utf8_lossy(&e.payload)
                        ));
                    }
                    seen.entry(event.name.clone()).or_default().extend(lines);
                }
                Call::HandleError {
                    failure, result, ..
                } => {
                    let name = names[&failure.event_id].clone();
                    let mut lines = vec![format!(
                        "handle-error {} attempt {} last={}",
                        failure.kind.as_str(),
                        failure.attempt,
                        failure.is_last_attempt
                    )];
                    match result {
                        Ok(l) => lines.extend(logs(&l)),
                        Err(e) => lines.push(format!("handle-error failed: {e}")),
                    }
                    seen.entry(name).or_default().extend(lines);
                }
            }
        }
        run.stop().await.unwrap();
        seen
    })
}

fn logs(logs: &[LogLine]) -> Vec<String> {
    logs.iter()
        .map(|LogLine { level, text }| format!("log {}: {text}", level.as_str()))
        .collect()
}

#[test]
fn every_language_behaves_exactly_like_the_spec() {
    // A secret for the plugin's config, from a file (not the environment:
    // this process runs every test at once); it must never reach what the
    // host records (log lines, verdicts).
    let dir = runnel_tests::scratch("conformance");
    let token = dir.join("token.txt");
    std::fs::write(&token, "tok-3f9a-secret\n").unwrap();
    // The server the HTTP cases call, on a runtime of its own that outlives
    // each language's.
    let server_runtime = tokio::runtime::Runtime::new().unwrap();
    let server = server_runtime.block_on(TestServer::start());
    let base = server.base();
    let rust = transcript("rust", &server, &token);
    let rendered = |t: &BTreeMap<String, Vec<String>>| {
        t.iter()
            .map(|(name, lines)| format!("{name}:\n  {}", lines.join("\n  ")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    println!("rust:\n{}", rendered(&rust));

    // The spec, checked on the reference build.
    let has = |name: &str, line: &str| {
        assert!(
            rust[name].iter().any(|l| l == line),
            "{name}: {line:?} missing from {:?}",
            rust[name]
        )
    };
    has("echo", r#"emit echoed to out: "any bytes �\0 even these""#);
    has(
        "inherit",
        r#"emit child to out: "00000000-0000-4000-8000-000000000001""#,
    );
    has("batch", r#"emit second to out: "2""#);
    has("fail-n", "attempt 2: retry: attempt 2 of 2 fails");
    has("fail-n", r#"emit recovered to out: "{\"attempts\":3}""#);
    has(
        "fail-n",
        "log error: handle-error: handler-error attempt 2 last=false event=none",
    );
    has("reject", "attempt 1: reject: rejected by conformance");
    has(
        "reject",
        "log error: handle-error: rejected attempt 1 last=true event=00000000-0000-4000-8000-000000000004",
    );
    has("retry", "attempt 3: retry: retry requested");
    has("log", "log info: hello, log \u{e9}");
    has("log", "log warn: conformance warn line");
    has(
        "meta",
        r#"emit meta-echoed to out: "{\"id\":\"00000000-0000-4000-8000-000000000007\",\"name\":\"meta\",\"correlation_id\":\"corr-meta\",\"attempts\":1,\"is_dry_run\":false,\"created_at_utc\":\"2026-11-27T08:00:00.123456789Z\"}""#,
    );
    assert!(
        rust["no-route"][0].starts_with("attempt 1: retry: ")
            && rust["no-route"][0].contains("unrouted"),
        "{:?}",
        rust["no-route"]
    );
    has("trap", "attempt 3: trap");
    has("something-else", "attempt 1: ok");
    // Key-value: reads see the call's own writes, a commit only on success.
    assert_eq!(
        rust["kv-count"],
        [
            "attempt 1: ok",
            r#"emit counted to out: "1""#,
            "attempt 1: ok",
            r#"emit counted to out: "2""#
        ]
    );
    has("kv-lost", "attempt 1: reject: kv write then reject");
    has(
        "kv-check",
        r#"emit kv-checked to out: "lost=false count=2""#,
    );
    has(
        "config",
        r#"emit configured to out: "greeting=hello missing=none""#,
    );
    has("config", "log info: token=[secret]");
    has("config-reject", "attempt 1: reject: bad token [secret]");
    has(
        "kv-denied",
        r#"attempt 3: retry: key-value bucket "other": not granted: add kv = ["other"] under the plugin's [plugin.grants]"#,
    );
    // Outbound HTTP: status, headers and body reach the plugin; the SDK
    // sends the event id as the idempotency key; what is not granted
    // (another host, or a redirect to one) is refused by the host.
    has(
        "http-get",
        &format!(r#"emit http-got to out: "status=200 x-conformance=yes body={HELLO}""#),
    );
    has("http-get", &format!("http GET {base}/hello -> 200"));
    has(
        "http-post",
        r#"emit http-posted to out: "status=201 key=00000000-0000-4000-8000-000000000019 body=posted body""#,
    );
    let port = server.addr.port();
    let refused = format!(
        r#"http GET http://localhost:{port}/hello -> refused: not granted (to allow: grants.http = ["http://localhost:{port}"])"#
    );
    has("http-denied", "attempt 1: reject: http denied");
    has("http-denied", &refused);
    has("http-redirect", "attempt 1: reject: http denied");
    has("http-redirect", &format!("http GET {base}/away -> 302"));
    has("http-redirect", &refused);
    assert_eq!(
        server.hits("GET /hello"),
        1,
        "the refused requests never reached the server"
    );

    let mut differing = Vec::new();
    for lang in ["c", "go", "js", "python", "rust-0.1.0"] {
        let mut other = transcript(lang, &server, &token);
        let mut rust = rust.clone();
        if lang == "rust-0.1.0" {
            // Built before the contract had key-value state and config.
            let new_in_0_2 = |name: &str| {
                name.starts_with("kv-") || name.starts_with("config") || name.starts_with("http-")
            };
            rust.retain(|name, _| !new_in_0_2(name));
            other.retain(|name, _| !new_in_0_2(name));
        }
        if other != rust {
            differing.push(format!("{lang}:\n{}", rendered(&other)));
        }
    }
    assert!(
        differing.is_empty(),
        "differs from the Rust build:\n{}",
        differing.join("\n\n")
    );
}

/// The order enricher of every compiled language (JavaScript and Python
/// differ where their JSON does: `plugins/LANGUAGES.md`) gives the same
/// verdicts, logs and bytes for orders with their `unit_cents`, including
/// edge cases: a u64 total that wraps, escapes and non-ASCII text, numbers
/// that are not a u32 quantity, `null`, an array.
#[test]
fn compiled_order_enrichers_agree_byte_for_byte() {
    let events = repo_root().join("tests/fixtures/orders-edge.ndjson");
    let report = |path: PathBuf| {
        let out = crate::util::runnel(&[
            "test",
            path.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ]);
        // Reasons after this prefix are each language's own (CONFORMANCE.md).
        let prefix = "payload is not the expected JSON: ";
        crate::util::text(&out.stdout)
            .lines()
            .map(|line| match line.find(prefix) {
                Some(at) => format!("{}{prefix}…", &line[..at]),
                None => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rust = report(plugin(guests::ORDER_ENRICHER));
    assert!(
        rust.contains("totals 18446744073709551614 cents") && rust.contains("dead-lettered"),
        "{rust}"
    );
    for lang in ["c", "go"] {
        let path = repo_root().join(format!("plugins/target/guests/{lang}-order-enricher.wasm"));
        assert_eq!(report(path), rust, "{lang}'s order enricher differs");
    }
}

/// Go's garbage collector reads the wall clock, an import, and the
/// component model forbids imports while the host places arguments in
/// the plugin's memory (`cabi_realloc`): a collection starting there
/// trapped about one call in twenty of these before the Go SDK moved
/// collection to the end of each call. Every call must succeed, and the
/// heap must be collected (the instance stays within its memory limit).
#[test]
fn go_plugins_survive_allocation_heavy_calls() {
    let dir = runnel_tests::scratch("go-gc");
    let events = dir.join("big.ndjson");
    let payload = "x".repeat(256 * 1024);
    let line = format!("{{\"name\":\"echo\",\"payload\":\"{payload}\"}}\n");
    std::fs::write(&events, line.repeat(120)).unwrap();
    let out = crate::util::runnel(&[
        "test",
        component("go").to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ]);
    let report = crate::util::text(&out.stdout);
    assert_eq!(
        report.matches("  attempt 1: ok").count(),
        120,
        "{}",
        report
            .lines()
            .filter(|l| l.contains("trap"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
