//! The `runnel` command: the demo end to end, `check`, and one-line errors.

use runnel_tests::guests;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::{run_input, runnel, summary_row, text};

use runnel_tests::http_server::{demo_price_service, TestServer, HELLO};
use runnel_tests::{plugin, repo_root};

/// A scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    runnel_tests::scratch(&format!("cli-{name}"))
}

/// Asserts a failure printed as exactly one line naming `path` and `reason`.
fn assert_one_line_error(out: &Output, path: &Path, reason: &str) {
    assert!(!out.status.success(), "should fail");
    let stderr = text(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, no backtrace: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(&path.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(lines[0].contains(reason), "says {reason:?}: {stderr}");
}

#[test]
fn the_demo_runs_the_order_pipeline_and_prints_its_summary() {
    demo_price_service();
    // As scripts/demo.sh runs it, from the repository's root.
    let (stdout, _) = run_input(
        &repo_root(),
        "examples/orders/runnel.toml",
        "examples/orders/events.ndjson",
    );
    let row = |name: &str| summary_row(&stdout, name);
    // handled, retried, failed, dead-lettered, skipped, deduplicated
    assert_eq!(row("order-enricher"), vec![4, 2, 4, 2, 0, 0], "{stdout}");
    assert_eq!(row("logger"), vec![4, 0, 0, 0, 0, 0], "{stdout}");
    // Prices came from the price service (the orders carry none), and each
    // customer's count holds the orders handled for real: not the dry run,
    // not the one out of stock.
    assert!(
        stdout.contains("key-value bucket customers (order-enricher):\n  orders:c-ada = 2\n  orders:c-grace = 1\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kind=handler-error attempts=3: inventory has no stock for order o-1003"),
        "{stdout}"
    );
    assert!(stdout.contains("kind=rejected attempts=1"), "{stdout}");
}

#[test]
fn sigterm_drains_and_exits_zero_with_a_summary() {
    use std::io::{BufRead, BufReader};
    demo_price_service();
    let root = repo_root();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-under-test"))
        .args(["run", "--config"])
        .arg(root.join("examples/orders/runnel.toml"))
        .arg("--input")
        .arg(root.join("examples/orders/events.ndjson"))
        .env("RUNNEL_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the service has taken its input, then ask it to stop.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("injected 6 events") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::spawn(move || lines.for_each(drop));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit code {:?}", out.status.code());
    assert!(
        text(&out.stdout).contains("order-enricher"),
        "the summary is printed"
    );
}

#[test]
fn check_lists_what_a_plugin_exports_and_imports() {
    let path = plugin(guests::ORDER_ENRICHER);
    let out = runnel(&["check", path.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("exports: handle, handle-error"), "{stdout}");
    assert!(stdout.contains("runnel:plugin/host@0.2.0"), "{stdout}");
    // Capabilities are imported only by a plugin that uses them, and named
    // as capabilities to grant.
    let logger = runnel(&["check", plugin(guests::LOGGER).to_str().unwrap()]);
    let logger = text(&logger.stdout);
    assert!(
        !logger.contains("wasi:keyvalue") && !logger.contains("wasi:http"),
        "{logger}"
    );
    // Which way its calls go: the enricher's HTTP and key-value wait in
    // the host; the logger's imports never do.
    assert!(logger.contains("calls: without a fiber first"), "{logger}");
    assert!(stdout.contains("calls: on a fiber"), "{stdout}");
    assert!(
        stdout.contains(r#"outbound HTTP  grants.http = ["https://HOST"]"#),
        "{stdout}"
    );
    // With a config: what it grants the plugins that load this file.
    let demo = repo_root().join("examples/orders/runnel.toml");
    let out = runnel(&[
        "check",
        path.to_str().unwrap(),
        "--config",
        demo.to_str().unwrap(),
    ]);
    let granted = text(&out.stdout);
    for line in [
        r#"capabilities of plugin "order-enricher""#,
        "outbound HTTP  granted: http://127.0.0.1:18471",
        "key-value      granted: customers",
        "stdout/stderr  denied (to allow: grants.stdio = true)",
    ] {
        assert!(granted.contains(line), "{line:?} missing:\n{granted}");
    }
    // A config with an error: the error alone, no "ok" printed above it.
    let bad = scratch("check-bad-config").join("runnel.toml");
    std::fs::write(&bad, "[backend]\nkind = \"memory\"\ncapacty = 8\n").unwrap();
    let out = runnel(&[
        "check",
        path.to_str().unwrap(),
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &bad, "unknown field `capacty`");
    assert!(
        text(&out.stderr).contains("runnel.toml:3:"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "", "nothing printed before the error");
    let out = runnel(&["check", plugin(guests::COUNTER).to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("wasi:keyvalue/store@0.2.0-draft2"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"key-value      grants.kv = ["BUCKET"]"#),
        "{stdout}"
    );
}

#[test]
fn check_refuses_a_file_that_is_not_wasm() {
    let path = scratch("garbage").join("garbage.wasm");
    std::fs::write(&path, b"this is not webassembly at all").unwrap();
    assert_one_line_error(
        &runnel(&["check", path.to_str().unwrap()]),
        &path,
        "not a WebAssembly file",
    );
}

#[test]
fn check_refuses_a_truncated_component() {
    let whole = std::fs::read(plugin(guests::ORDER_ENRICHER)).unwrap();
    let path = scratch("truncated").join("truncated.wasm");
    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    assert_one_line_error(
        &runnel(&["check", path.to_str().unwrap()]),
        &path,
        "invalid component",
    );
}

#[test]
fn check_refuses_a_core_module() {
    let path = scratch("core").join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    assert_one_line_error(
        &runnel(&["check", path.to_str().unwrap()]),
        &path,
        "not a component",
    );
}

#[test]
fn check_refuses_a_component_of_another_world() {
    // The smallest valid component: it exports nothing.
    let path = scratch("empty").join("empty.wasm");
    std::fs::write(&path, b"\0asm\x0d\0\x01\0").unwrap();
    assert_one_line_error(
        &runnel(&["check", path.to_str().unwrap()]),
        &path,
        "does not implement the runnel:plugin/handler world",
    );
}

#[test]
fn a_missing_plugin_file_is_named() {
    let path = scratch("missing").join("nowhere.wasm");
    assert_one_line_error(
        &runnel(&["check", path.to_str().unwrap()]),
        &path,
        "cannot read",
    );
}

#[test]
fn a_bad_config_names_file_line_key_and_reason() {
    let path = scratch("config").join("runnel.toml");
    std::fs::write(
        &path,
        "[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstreams = [\"s\"]\nmax_attempts = -3\n",
    )
    .unwrap();
    let out = runnel(&["run", "--config", path.to_str().unwrap()]);
    assert_one_line_error(
        &out,
        &path,
        ":5: plugin[0].max_attempts: invalid value: integer `-3`",
    );
}

#[test]
fn a_plugin_that_fails_to_load_stops_the_service_with_its_name() {
    let dir = scratch("badplugin");
    std::fs::write(dir.join("broken.wasm"), b"\0asm\x0d\0\x01\0garbage").unwrap();
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        "[[plugin]]\nname = \"broken\"\npath = \"broken.wasm\"\nstreams = [\"s\"]\n",
    )
    .unwrap();
    let out = runnel(&["run", "--config", config.to_str().unwrap()]);
    assert_one_line_error(&out, &dir.join("broken.wasm"), "plugin \"broken\"");
}

#[test]
fn a_call_that_leaves_the_fast_path_logs_its_lines_once() {
    // The worker logs, then sleeps: a wait in the host, which ends its
    // attempt on the fast path; the call runs again on a fiber and logs
    // again. Only the second attempt's line may reach the host log.
    let dir = scratch("fast-path-log");
    let events = dir.join("events.ndjson");
    std::fs::write(
        &events,
        r#"{"name":"work","stream":"in","payload":"{\"iterations\":0,\"sleep_ms\":20,\"log\":\"logged-once-marker\"}"}"#,
    )
    .unwrap();
    let config = dir.join("runnel.toml");
    std::fs::write(
        &config,
        format!(
            "[routes]\n\"worked\" = \"done\"\n\n[[plugin]]\nname = \"worker\"\npath = {:?}\nstreams = [\"in\"]\n",
            plugin(guests::WORKER)
        ),
    )
    .unwrap();
    let (stdout, stderr) = run_input(&dir, &config, &events);
    let row = summary_row(&stdout, "worker");
    assert_eq!(row[0], 1, "handled once: {stdout}");
    let logged = stderr.matches("logged-once-marker").count();
    assert_eq!(logged, 1, "{stderr}");
}

#[test]
fn granted_stdio_goes_to_the_host_log_tagged_and_ungranted_stdio_nowhere() {
    let dir = scratch("stdio");
    let events = dir.join("events.ndjson");
    std::fs::write(
        &events,
        "{\"name\":\"probe\",\"stream\":\"in\",\"payload\":\"print\",\"correlation_id\":\"corr-7\"}\n",
    )
    .unwrap();
    for granted in [true, false] {
        let config = dir.join(format!("stdio-{granted}.toml"));
        std::fs::write(
            &config,
            format!(
                "[[plugin]]\nname = \"printer\"\npath = {:?}\nstreams = [\"in\"]\ngrants = {{ stdio = {granted} }}\n",
                plugin(guests::HOSTILE)
            ),
        )
        .unwrap();
        let (stdout, stderr) = run_input(&dir, &config, &events);
        assert!(
            !stdout.contains("printed by"),
            "the host's own stdout carries only its report: {stdout}"
        );
        let printed = stderr
            .lines()
            .find(|l| l.contains("printed by"))
            .map(str::to_string);
        let complained = stderr.lines().find(|l| l.contains("complained by"));
        if granted {
            let line = printed.expect("the line is in the host log");
            for field in [
                "plugin=\"printer\"",
                "stream=\"stdout\"",
                "correlation_id=\"corr-7\"",
                "event_id=",
            ] {
                assert!(line.contains(field), "{field} missing: {line}");
            }
            assert!(
                complained.unwrap().contains("WARN"),
                "stderr logs as a warning"
            );
        } else {
            assert!(printed.is_none() && complained.is_none(), "{stderr}");
        }
    }
}

#[test]
fn runnel_test_reports_each_attempt_and_pins_it_with_expect() {
    let dir = scratch("harness");
    let events = dir.join("events.ndjson");
    std::fs::write(
        &events,
        concat!(
            r#"{"name":"order.created","payload":{"order_id":"o-1","sku":"A","quantity":2,"unit_cents":150}}"#,
            "\n",
            r#"{"name":"order.created","payload":{"order_id":"o-2","sku":"OUT-OF-STOCK","quantity":1,"unit_cents":1}}"#,
            "\n",
            r#"{"name":"order.created","payload":"not an order"}"#,
            "\n",
        ),
    )
    .unwrap();
    let enricher = plugin(guests::ORDER_ENRICHER);
    let args = [
        "test",
        enricher.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--max-attempts",
        "2",
    ];
    let out = runnel(&args);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        "event 1: order.created",
        "  attempt 1: ok",
        r#"    emit order.enriched: {"order_id":"o-1","sku":"A","total_cents":300"#,
        "  attempt 2: retry: inventory has no stock for order o-2",
        "    handle-error (handler-error)",
        "  dead-lettered after 2 attempts",
        "event 3: order.created",
    ] {
        assert!(report.contains(line), "{line:?} missing:\n{report}");
    }
    // Without a config the plugin is named after its file in the log
    // lines (its error handler logs each give-up at error level).
    let stderr = text(&out.stderr);
    assert!(stderr.contains(r#"plugin="order_enricher""#), "{stderr}");
    let again = text(&runnel(&args).stdout);
    assert_eq!(report, again, "nothing in the report changes between runs");

    let expected = dir.join("expected.txt");
    std::fs::write(&expected, &report).unwrap();
    let mut with_expect = args.to_vec();
    with_expect.extend(["--expect", expected.to_str().unwrap()]);
    assert!(runnel(&with_expect).status.success());
    std::fs::write(
        &expected,
        report.replace("attempt 1: ok", "attempt 1: reject: no"),
    )
    .unwrap();
    let out = runnel(&with_expect);
    assert!(!out.status.success(), "a difference fails");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 2:") && stderr.contains("expected:   attempt 1: reject: no"),
        "{stderr}"
    );
}

#[test]
fn runnel_test_shows_key_value_writes_and_keeps_them_only_when_asked() {
    let dir = scratch("harness-kv");
    let events = dir.join("events.ndjson");
    std::fs::write(
        &events,
        concat!(
            r#"{"name":"a","payload":{}}"#,
            "\n",
            r#"{"name":"a","payload":{"reject":true}}"#,
            "\n",
            r#"{"name":"a","payload":{}}"#,
            "\n",
        ),
    )
    .unwrap();
    let seed = dir.join("kv.json");
    std::fs::write(&seed, r#"{"counts": {"count:a": "41"}}"#).unwrap();
    let counter = plugin(guests::COUNTER);
    let report = |extra: &[&str]| {
        let mut args = vec![
            "test",
            counter.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--grant-kv",
            "counts",
            "--kv",
            seed.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = runnel(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // Without --kv-commit every event starts from the seed.
    let dry = report(&[]);
    assert_eq!(
        dry.matches(r#"kv counts "count:a" = "42" (not kept: --kv-commit keeps it)"#)
            .count(),
        2,
        "{dry}"
    );
    // With it, the rejected event's write is absent and the third event
    // sees the first one's.
    let kept = report(&["--kv-commit"]);
    for line in [
        r#"    kv counts "count:a" = "42" (committed)"#,
        "  attempt 1: reject: asked to reject",
        r#"    kv counts "count:a" = "43" (committed)"#,
    ] {
        assert!(kept.contains(line), "{line:?} missing:\n{kept}");
    }
    // Not granted: the call is refused with the grant to add.
    let out = runnel(&[
        "test",
        counter.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ]);
    let refused = text(&out.stdout);
    assert!(
        refused.contains(r#"not granted: add kv = ["counts"]"#),
        "{refused}"
    );
}

/// Runs `runnel test` with the fetcher plugin over `events` (NDJSON lines)
/// and returns the report.
fn fetch_report(dir: &Path, events: &[String], extra: &[&str]) -> String {
    let file = dir.join("events.ndjson");
    std::fs::write(&file, events.join("\n") + "\n").unwrap();
    let fetcher = plugin(guests::FETCHER);
    let mut args = vec![
        "test",
        fetcher.to_str().unwrap(),
        "--events",
        file.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = runnel(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn runnel_test_sends_granted_requests_and_refuses_the_rest() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::start());
    // A port nothing granted listens on (nor need it: it is refused first).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = closed.local_addr().unwrap().port();
    let base = server.base();
    let host = text(&Command::new("hostname").output().unwrap().stdout)
        .trim()
        .to_string();
    let named = format!("http://{host}:{}", server.addr.port());
    let fetch =
        |json: serde_json::Value| serde_json::json!({"name": "f", "payload": json}).to_string();
    let events = [
        fetch(serde_json::json!({"url": format!("{base}/hello")})),
        fetch(serde_json::json!({"url": format!("http://127.0.0.1:{other}/hello")})),
        fetch(serde_json::json!({"url": format!("{base}/away")})),
        fetch(serde_json::json!({"url": format!("{base}/echo"), "method": "POST", "body": "b"})),
        // A dry run (a shadow, a replay) may read but not act.
        serde_json::json!({
            "id": "dry-1", "name": "f", "meta": {"created_at_utc": "2026-11-30T00:00:00Z", "correlation_id": "", "attempts": 0, "is_dry_run": true},
            // The wire format's payload: base64.
            "payload": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                serde_json::json!({"url": format!("{base}/echo"), "method": "POST", "body": "b"}).to_string(),
            ),
        })
        .to_string(),
        fetch(serde_json::json!({"url": format!("{base}/slow")})),
        fetch(serde_json::json!({"url": format!("{base}/big")})),
        fetch(serde_json::json!({"url": format!("{base}/hello"), "times": 17})),
        // Past max_request_bytes (4 MiB): the guest reads the limit.
        fetch(serde_json::json!({"url": format!("{base}/echo"), "method": "POST", "body_bytes": 5 << 20})),
        // A granted name that leads to the host's own network is refused
        // (this machine's name resolves to a loopback or private address).
        fetch(serde_json::json!({"url": format!("http://{host}:{port}/hello", port = server.addr.port())})),
    ];
    let dir = scratch("http");
    let report = fetch_report(
        &dir,
        &events,
        &[
            "--grant-http",
            &base,
            "--grant-http",
            &named,
            "--timeout-ms",
            "1500",
        ],
    );
    let port = server.addr.port();
    for line in [
        // Status, headers (the body) and the exchange reach the report.
        format!("    emit fetched: 200 {HELLO}"),
        format!("    http GET {base}/hello -> 200"),
        // Another port of the same host is another grant.
        format!(r#"    http GET http://127.0.0.1:{other}/hello -> refused: not granted (to allow: grants.http = ["http://127.0.0.1:{other}"])"#),
        // A redirect is followed, and its target must be granted too.
        format!("    http GET {base}/away -> 302"),
        format!(r#"    http GET http://localhost:{port}/hello -> refused: not granted (to allow: grants.http = ["http://localhost:{port}"])"#),
        // The SDK sends the event id as the idempotency key.
        "    emit fetched: 201 key=event-4 body=b".to_string(),
        format!("    http POST {base}/echo -> refused: a dry run may only GET or HEAD (no side effects)"),
        // A slow server cannot hold the call past its time limit.
        "  attempt 1: timeout: ran past its time limit of 1.5s waiting for an HTTP response".to_string(),
        format!("    http GET {base}/slow -> timed out at the call's deadline"),
        format!(r#"    http GET {base}/hello -> refused: more than 16 requests in one call (http_limits.max_requests_per_call)"#),
    ] {
        assert!(report.contains(&line), "{line:?} missing:\n{report}");
    }
    assert!(
        report.contains("attempt 1: reject: HTTP request denied")
            && report.contains("/big: HTTP response body size exceeds limit: 4194304 bytes")
            && report.contains(
                "/big -> 200, body cut at 4194304 bytes (http_limits.max_response_bytes)"
            )
            && report.contains("/echo: ErrorCode::HttpRequestBodySize(Some(4194304))")
            && report.contains(&format!(
                "http GET {named}/hello -> refused: {host} resolves to "
            )),
        "{report}"
    );
    // The dry run's POST never reached the server; the granted one did, and
    // so did the start of the one cut at the body cap.
    assert_eq!(server.hits("POST /echo"), 2);
    assert_eq!(server.hits("GET /hello"), 1 + 16);

    // Without the grant, nothing goes out at all.
    let report = fetch_report(&dir, &events[..1], &[]);
    assert!(
        report.contains(&format!(
            r#"refused: not granted (to allow: grants.http = ["{base}"])"#
        )),
        "{report}"
    );
    assert_eq!(server.hits("GET /hello"), 1 + 16);
}

#[test]
fn runnel_test_answers_requests_from_canned_responses() {
    let dir = scratch("http-canned");
    let canned = dir.join("http.json");
    std::fs::write(
        &canned,
        r#"[
            {"request": "POST http://pay.test/charge", "status": 503},
            {"request": "POST http://pay.test/charge", "status": 200, "json": {"charged": true}}
        ]"#,
    )
    .unwrap();
    let events = [
        r#"{"name": "f", "payload": {"url": "http://pay.test/charge", "method": "POST"}}"#
            .to_string(),
        r#"{"name": "f", "payload": {"url": "http://pay.test/refund", "method": "POST"}}"#
            .to_string(),
    ];
    let report = fetch_report(
        &dir,
        &events,
        &[
            "--grant-http",
            "http://pay.test",
            "--http",
            canned.to_str().unwrap(),
            "--max-attempts",
            "2",
        ],
    );
    for line in [
        "  attempt 1: retry: status 503",
        "    http POST http://pay.test/charge -> 503 (canned)",
        "  attempt 2: ok",
        r#"    emit fetched: 200 {"charged":true}"#,
        "    http POST http://pay.test/refund -> failed: no canned response for POST http://pay.test/refund",
    ] {
        assert!(report.contains(line), "{line:?} missing:\n{report}");
    }
}

#[test]
fn version_completions_and_man_page_come_from_the_command_definitions() {
    let out = runnel(&["--version"]);
    let version = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        version.starts_with("runnel ") && version.contains("runnel:plugin@0.2.0"),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = runnel(&["completions", shell]);
        let script = text(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        // Subcommands and their flags are offered.
        for word in ["emit", "dlq", "--grant-http"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = runnel(&["man"]);
    let page = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        page.starts_with(".ie") || page.contains(".TH runnel"),
        "{page}"
    );
    assert!(
        page.contains("completions") && page.contains("Runs sandboxed WebAssembly"),
        "{page}"
    );
}

#[test]
fn runnel_test_runs_a_plugin_as_its_config_does() {
    let dir = scratch("test-config");
    let canned = dir.join("prices.json");
    std::fs::write(
        &canned,
        r#"[
            {"request": "GET http://127.0.0.1:18471/prices/KB-42", "json": {"unit_cents": 100}},
            {"request": "GET http://127.0.0.1:18471/prices/MON-27", "json": {"unit_cents": 200}},
            {"request": "GET http://127.0.0.1:18471/prices/USB-C", "status": 503}
        ]"#,
    )
    .unwrap();
    let root = repo_root();
    let config = root.join("examples/orders/runnel.toml");
    let events = root.join("examples/orders/events.ndjson");
    let enricher = plugin(guests::ORDER_ENRICHER);
    let out = runnel(&[
        "test",
        enricher.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--http",
        canned.to_str().unwrap(),
    ]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        // The config's grant and its price_service value: the enricher
        // asked for prices, answered from the file.
        "    http GET http://127.0.0.1:18471/prices/KB-42 -> 200 (canned)",
        r#"    emit order.enriched: {"order_id":"o-1001","sku":"KB-42","total_cents":200,"priority":false}"#,
        // Its key-value grant and customer_counts value.
        r#"    kv customers "orders:c-ada" = "1" (not kept: --kv-commit keeps it)"#,
        // Its max_attempts (3), not the flag's default of 1.
        "  attempt 3: retry: inventory has no stock for order o-1003",
        "  attempt 3: retry: price service answered 503 for USB-C",
    ] {
        assert!(report.contains(line), "{line:?} missing:\n{report}");
    }
    let out = runnel(&[
        "test",
        enricher.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--plugin",
        "nope",
        "--events",
        events.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &config, r#"no [[plugin]] is named "nope""#);
}

#[test]
fn the_bench_measures_latency_under_a_steady_load() {
    let noop = plugin(guests::NOOP).display().to_string();
    let out = crate::util::runnel_ok(
        &[
            "--threads",
            "1",
            "bench",
            "--events",
            "2000",
            "--rounds",
            "1",
            "--swaps",
            "0",
            "--only",
            "reuse 1000",
            "--latency",
            "--latency-secs",
            "0.3",
            "--plugin",
            &noop,
        ],
        None,
    );
    let report = text(&out.stdout);
    // The heading says which runtime the cases ran on: the default
    // differs with the backends, and tables of different thread counts
    // do not compare.
    assert!(
        report.contains("concurrency 2, 1 worker thread, median of 1 rounds"),
        "{report}"
    );
    // Per handler, four rates, each with a reached rate and five figures
    // in ms, in order (p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ max), then p99 and p99.9
    // from the append, p50, p99 and p99.9 to the ack, and the hiccup
    // meter's p99, p99.9 and max.
    let mut targets = Vec::new();
    for case in [
        "native Rust handler (baseline)",
        "wasm, reuse 1000 (default)",
        "wasm, reuse 1000, on a fiber",
    ] {
        let rows: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with("memory") && l.contains(case))
            .collect();
        assert_eq!(rows.len(), 4, "{report}");
        let mut case_targets = Vec::new();
        for row in rows {
            let figures: Vec<f64> = row[row.find(case).unwrap() + case.len()..]
                .split_whitespace()
                .map(|f| f.trim_end_matches('%').parse().unwrap())
                .collect();
            assert_eq!(figures.len(), 16, "{row}");
            assert!(figures[1] > 0.0 && figures[2] > 0.0, "rates: {row}");
            let delays = &figures[3..8];
            assert!(delays.windows(2).all(|w| w[0] <= w[1]), "ordered: {row}");
            // From the append: p99 ≤ p99.9, each at most the wait from due
            // (an event is appended at or after its due time).
            let (p99, p999) = (figures[8], figures[9]);
            assert!(p99 > 0.0 && p99 <= p999, "{row}");
            assert!(p99 <= figures[5] && p999 <= figures[6], "{row}");
            // Every event is acked after its call started: each quantile
            // to the ack is at least the same quantile to the call.
            let acked = &figures[10..13];
            assert!(acked[0] > 0.0, "acks timed: {row}");
            assert!(acked.windows(2).all(|w| w[0] <= w[1]), "ordered: {row}");
            assert!(acked[0] >= figures[3] && acked[1] >= figures[5], "{row}");
            let hiccups = &figures[13..16];
            assert!(hiccups[0] > 0.0, "the meter ran: {row}");
            assert!(hiccups.windows(2).all(|w| w[0] <= w[1]), "ordered: {row}");
            case_targets.push(figures[1]);
        }
        targets.push(case_targets);
    }
    // The fast path's baseline is loaded at the fast path's rates; the
    // fast path at its own.
    assert_eq!(targets[2], targets[1], "{report}");
    assert_ne!(targets[1], targets[0], "{report}");
}

#[test]
fn the_bench_measures_big_payloads_and_many_plugins_on_redis() {
    let noop = plugin(guests::NOOP).display().to_string();
    let url = runnel_tests::redis_url();
    let out = crate::util::runnel_ok(
        &[
            "bench",
            "--redis",
            &url,
            "--redis-only",
            "--events",
            "300",
            "--rounds",
            "1",
            "--swaps",
            "0",
            "--only",
            "reuse 1000",
            "--payload-bytes",
            "100000",
            "--plugins",
            "3",
            "--plugin",
            &noop,
        ],
        None,
    );
    let report = text(&out.stdout);
    let figures = |row: &str, after: &str| -> Vec<f64> {
        row[row.find(after).unwrap() + after.len()..]
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(f64::NAN))
            .collect()
    };
    // The ceiling is SET of values the payload's size; each case's row
    // ends with its memory (start, peak, end) and MiB/s, which is
    // events/s × 100 000 B.
    assert!(
        report.contains("redis-benchmark -P 16 SET -d 100000"),
        "{report}"
    );
    let case = "wasm, reuse 1000 (default)";
    let row = report.lines().find(|l| l.starts_with(case)).expect(&report);
    let f = figures(row, case);
    assert_eq!(f.len(), 9, "{row}");
    let (rate, start, peak, end, mib_s) = (f[0], f[5], f[6], f[7], f[8]);
    assert!(
        start > 0.0 && end > 0.0 && peak >= start && peak >= end,
        "{row}"
    );
    assert!(rate > 0.0 && peak > 0.0, "{row}");
    assert!(
        (mib_s - rate * 100_000.0 / 1048576.0).abs() < 0.1 + mib_s * 0.01,
        "{row}"
    );
    // Hosts with 1 and 3 plugins: time to ready, events/s, the ratio (1 for
    // the one plugin), CPU, peak and final memory.
    let table = &report[report.find("Many plugins").expect(&report)..];
    for n in ["1", "3"] {
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n))
            .expect(table);
        let f = figures(row, n);
        assert_eq!(f.len(), 6, "{row}");
        assert!(
            f[0] > 0.0 && f[1] > 0.0 && f[4] > 0.0 && f[5] > 0.0,
            "{row}"
        );
        if n == "1" {
            assert_eq!(f[2], 1.0, "{row}");
        }
    }
}
