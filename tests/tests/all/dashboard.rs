//! The operator page on the admin port and the API it draws from: plugins
//! with state and latency, streams with backlog, dead letters listed,
//! replayed to their group and deleted.

use runnel_tests::guests;
use std::path::PathBuf;
use std::time::Duration;

use runnel_tests::{call, redis_url, unique, Process};

use crate::util::{admin_url, poll};

const LIMIT: Duration = Duration::from_secs(60);

/// A host on Redis with one plugin, `refunds`, loaded from `path`, and its
/// admin API behind `token`; returns it, the API's base URL and the
/// plugin's stream.
fn host(token: &str, path: &std::path::Path) -> (Process, String, String) {
    let stream = unique("refunds");
    let config = crate::util::write_config(
        "dashboard",
        &format!(
            r#"
[backend]
kind = "redis"
url = "{}"
block_ms = 100

[admin]
listen = "127.0.0.1:0"
token_env = "DASHBOARD_TOKEN"

[[plugin]]
name = "refunds"
path = {:?}
streams = ["{stream}"]
"#,
            redis_url(),
            path.display().to_string()
        ),
    );
    let mut process = Process::run_with(
        &PathBuf::from(env!("CARGO_BIN_EXE_runnel-under-test")),
        &config,
        "info",
        &[("DASHBOARD_TOKEN", token)],
    );
    let url = admin_url(&mut process);
    process.wait_for("consuming", LIMIT);
    (process, url, stream)
}

#[test]
fn the_page_is_served_and_its_api_lists_replays_and_deletes_dead_letters() {
    let token = "dash-token";
    let (process, url, stream) = host(token, &runnel_tests::plugin(guests::REJECTER));
    let at = |path: &str| format!("{url}{path}");

    // The page itself holds no data and needs no token; its data does.
    let (status, page) = call("GET", &at("/"), None, None);
    assert_eq!(status, 200);
    assert!(page.contains("<title>Runnel</title>") && page.contains("/dead-letters"));
    assert_eq!(call("GET", &at("/dead-letters"), None, None).0, 401);

    let ndjson = format!(
        "{{\"name\":\"refund.requested\",\"payload\":{{\"amount\":5}},\"stream\":\"{stream}\"}}\n"
    );
    assert_eq!(
        call("POST", &at("/events"), Some(token), Some(&ndjson)).0,
        202
    );
    let dead_letters = || {
        let (status, body) = call("GET", &at("/dead-letters"), Some(token), None);
        assert_eq!(status, 200, "{body}");
        let groups: serde_json::Value = serde_json::from_str(&body).unwrap();
        groups[0]["letters"].as_array().unwrap().clone()
    };
    poll("the dead letter", || dead_letters().len() == 1);
    let letter = &dead_letters()[0];
    assert_eq!(letter["kind"], "rejected");
    assert_eq!(letter["plugin"], "refunds");
    assert_eq!(letter["attempts"], 1);
    assert_eq!(letter["event_name"], "refund.requested");
    assert!(letter["raw"]["event"]
        .as_str()
        .unwrap()
        .contains("refund.requested"));

    let (_, plugins) = call("GET", &at("/plugins"), Some(token), None);
    let plugins: serde_json::Value = serde_json::from_str(&plugins).unwrap();
    assert_eq!(plugins[0]["state"], "serving");
    assert_eq!(plugins[0]["latency"]["calls"], 1);
    let (_, streams) = call("GET", &at("/streams"), Some(token), None);
    let streams: serde_json::Value = serde_json::from_str(&streams).unwrap();
    assert_eq!(streams[0]["stream"], stream.as_str());
    assert_eq!(streams[0]["backlog"], 0);

    // Replayed to its group: the rejecter handles it again (a second call)
    // and rejects it again, a new dead letter in place of the old one.
    let id = letter["id"].as_str().unwrap().to_string();
    let dead = format!("{stream}.dead");
    let replay = at(&format!("/dead-letters/{dead}/{id}/replay"));
    let (status, body) = call("POST", &replay, Some(token), None);
    assert_eq!(status, 200, "{body}");
    poll("the replayed event to be handled", || {
        let (_, p) = call("GET", &at("/plugins"), Some(token), None);
        let p: serde_json::Value = serde_json::from_str(&p).unwrap();
        p[0]["latency"]["calls"] == 2
    });
    poll("its new dead letter", || {
        let letters = dead_letters();
        letters.len() == 1 && letters[0]["id"] != id.as_str()
    });
    assert_eq!(call("POST", &replay, Some(token), None).0, 404, "gone");
    let again = dead_letters()[0]["id"].as_str().unwrap().to_string();
    let (status, _) = call(
        "DELETE",
        &at(&format!("/dead-letters/{dead}/{again}")),
        Some(token),
        None,
    );
    assert_eq!(status, 200);
    assert!(dead_letters().is_empty());
    let (ok, _) = process.terminate();
    assert!(ok);
}

/// Sends one event that the plugin rejects, and waits for its dead letter.
fn one_dead_letter(url: &str, token: &str, stream: &str) {
    let ndjson = format!(
        "{{\"name\":\"refund.requested\",\"payload\":{{\"amount\":5}},\"stream\":\"{stream}\"}}\n"
    );
    assert_eq!(
        call("POST", &format!("{url}/events"), Some(token), Some(&ndjson)).0,
        202
    );
    poll("the dead letter", || {
        let (_, body) = call("GET", &format!("{url}/dead-letters"), Some(token), None);
        body.contains("refund.requested")
    });
}

#[test]
fn an_operator_replays_a_dead_letter_from_the_dashboard_in_a_real_browser() {
    // What the browser needs, installed on first use (chromium from apt,
    // playwright-core pinned by tests/browser/package-lock.json).
    let root = runnel_tests::repo_root();
    let tools = std::process::Command::new(root.join("scripts/browser-tools.sh"))
        .output()
        .expect("scripts/browser-tools.sh");
    assert!(
        tools.status.success(),
        "installing the browser tools: {}",
        String::from_utf8_lossy(&tools.stderr)
    );
    let playwright = String::from_utf8(tools.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();

    // The plugin rejects the event; then a fixed version is deployed (the
    // file replaced and reloaded), and the operator replays the dead letter
    // from the page.
    let dir = runnel_tests::scratch("browser");
    let file = dir.join("refunds.wasm");
    std::fs::copy(runnel_tests::plugin(guests::REJECTER), &file).unwrap();
    let token = "browser-token";
    let (process, url, stream) = host(token, &file);
    one_dead_letter(&url, token, &stream);
    std::fs::copy(runnel_tests::plugin(guests::NOOP), &file).unwrap();
    let (status, body) = call(
        "POST",
        &format!("{url}/plugins/refunds/reload"),
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{body}");

    let screenshot = std::env::var("RUNNEL_DASHBOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.join("dashboard.png"));
    let out = std::process::Command::new("node")
        .arg(root.join("tests/browser/dashboard.mjs"))
        .args([&url, token, "refunds"])
        .arg(&screenshot)
        .env("PLAYWRIGHT_DIR", &playwright)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(screenshot.exists(), "the page was photographed");
    let (_, plugins) = call("GET", &format!("{url}/plugins"), Some(token), None);
    let plugins: serde_json::Value = serde_json::from_str(&plugins).unwrap();
    assert_eq!(
        plugins[0]["counters"]["handled"], 1,
        "handled once, after the replay"
    );
    let (ok, _) = process.terminate();
    assert!(ok);
}

#[test]
fn the_cli_lists_plugins_and_dead_letters_as_tables_or_json() {
    let token = "cli-token";
    let (process, url, stream) = host(token, &runnel_tests::plugin(guests::REJECTER));
    one_dead_letter(&url, token, &stream);
    let runnel = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_runnel-under-test"))
            .args(args)
            .env("RUNNEL_ADMIN_TOKEN", token)
            .env("RUNNEL_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Options of the group are taken after the subcommand too.
    let table = runnel(&["plugins", "list", "--admin", &url]);
    let mut lines = table.lines();
    let head = lines.next().unwrap();
    assert!(
        head.starts_with("PLUGIN") && head.contains("HANDLED / FAILED / DEAD"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("refunds") && row.contains("serving") && row.contains("0 / 1 / 1"),
        "{table}"
    );
    let json = runnel(&["plugins", "--admin", &url, "list", "--output", "json"]);
    let plugins: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(plugins[0]["name"], "refunds");
    let dead = format!("{stream}.dead");
    let letters = runnel(&[
        "dlq",
        "list",
        "--redis",
        &redis_url(),
        "--stream",
        &dead,
        "--output",
        "json",
    ]);
    let letters: serde_json::Value = serde_json::from_str(&letters).unwrap();
    assert_eq!(letters[0]["kind"], "rejected");
    assert_eq!(letters[0]["event_name"], "refund.requested");
    let (ok, _) = process.terminate();
    assert!(ok);
}
