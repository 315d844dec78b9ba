//! What production does to a host, on real Redis servers: groups and streams
//! that vanish under it, a Redis that is down or full when it starts, a
//! shutdown while a read is blocked, an admin port that clashes or is exposed,
//! a config named by a bare file name. (Issue #17.)

use runnel_tests::guests;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runnel::broker::redis::{Endpoint, RedisBroker, Trimming};
use runnel::broker::{Append, Broker, MissingGroup, StartFrom};
use runnel::event::Event;
use runnel::publisher::event_fields;
use runnel::service::{Service, ServiceOptions};
use runnel_tests::redis_server::{free_port, RedisServer, EPHEMERAL};
use runnel_tests::{broker, call, plugin, redis_url, unique, until, Process};

const LIMIT: Duration = Duration::from_secs(60);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel-under-test"))
}

fn scratch(name: &str) -> PathBuf {
    runnel_tests::scratch(name)
}

/// A `[backend]` section for the Redis at `url` that reads in short blocks
/// and reclaims soon, so that tests take seconds.
fn quick_backend(url: &str) -> String {
    format!(
        "\n[backend]\nkind = \"redis\"\nurl = \"{url}\"\nblock_ms = 300\nclaim_min_idle_ms = 900\n"
    )
}

/// A config with the `worker` plugin on `stream` in `group`, its `worked`
/// events (payload: the handled event's id) routed to `out`.
fn worker_config(dir: &Path, url: &str, stream: &str, group: &str, out: &str) -> PathBuf {
    let path = dir.join("runnel.toml");
    std::fs::write(
        &path,
        format!(
            r#"{backend}
[routes]
"worked" = "{out}"

[[plugin]]
name = "worker"
path = {:?}
group = "{group}"
streams = ["{stream}"]
start = "beginning"
"#,
            plugin(guests::WORKER).display().to_string(),
            backend = quick_backend(url),
        ),
    )
    .unwrap();
    path
}

/// A config with the `noop` plugin on `stream` in `group` on the Redis at
/// `url`: `backend` lines go under `[backend]` (after `url`), `plugin` lines
/// under the plugin, `rest` between them (another section).
fn noop_config(
    dir: &Path,
    url: &str,
    (stream, group): (&str, &str),
    backend: &str,
    rest: &str,
    plugin_lines: &str,
) -> PathBuf {
    let path = dir.join("runnel.toml");
    std::fs::write(
        &path,
        format!(
            "[backend]\nkind = \"redis\"\nurl = \"{url}\"\n{backend}\n{rest}\n[[plugin]]\nname = \"noop\"\npath = {:?}\nstreams = [\"{stream}\"]\ngroup = \"{group}\"\n{plugin_lines}\n",
            plugin(guests::NOOP).display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// Appends one `work` event, retrying while Redis comes back from a
/// restart; returns its event id.
async fn add(broker: &RedisBroker, stream: &str) -> String {
    let event = Event::new("work", r#"{"iterations":1}"#);
    let append = vec![Append {
        stream: stream.to_string(),
        fields: event_fields(&event),
    }];
    let deadline = Instant::now() + LIMIT;
    while let Err(e) = broker.append(append.clone()).await {
        assert!(Instant::now() < deadline, "cannot append: {e:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    event.id
}

/// The event ids the worker has handled, duplicates included (empty while
/// Redis does not answer).
async fn worked(broker: &RedisBroker, out: &str) -> Vec<String> {
    broker
        .range(out, None, None, usize::MAX)
        .await
        .unwrap_or_default()
        .iter()
        .map(|e| String::from_utf8(Event::from_json(&e.fields[0].1).unwrap().payload).unwrap())
        .collect()
}

async fn start(config: &Path, fail_fast: bool) -> anyhow::Result<Service> {
    let options = ServiceOptions {
        admin: Some("127.0.0.1:0".parse().unwrap()),
        fail_fast,
        ..ServiceOptions::default()
    };
    Service::start(config.to_path_buf(), options).await
}

/// GET on the service's admin API, off the async threads.
async fn get(service: &Service, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", service.admin_addr().unwrap());
    tokio::task::spawn_blocking(move || call("GET", &url, None, None))
        .await
        .unwrap()
}

/// Stops a service the way SIGTERM does, and waits for its drain.
async fn stop(service: Service) {
    service.run(async {}).await.unwrap();
}

/// How a group vanishes under a running host.
#[derive(Clone, Copy, Debug)]
enum Vanish {
    StreamDeleted,
    GroupDestroyed,
    RedisRestartedEmpty,
}

/// Every way a group can vanish: the host creates it again, the event added
/// afterwards is handled exactly once, the one handled before is not handled
/// again, and the recreation is counted in `/metrics`.
async fn a_vanished_group_is_created_again(how: Vanish) {
    let dir = scratch("vanish");
    let mut own =
        matches!(how, Vanish::RedisRestartedEmpty).then(|| RedisServer::start(&dir, EPHEMERAL));
    let url = own.as_ref().map_or_else(redis_url, |s| s.url());
    let (stream, group, out) = (unique("vanish"), unique("g"), unique("worked"));
    let service = start(&worker_config(&dir, &url, &stream, &group, &out), true)
        .await
        .unwrap();
    let redis = broker(&url).await;
    let a1 = add(&redis, &stream).await;
    until(LIMIT, "a1 to be handled", || async {
        worked(&redis, &out).await.contains(&a1)
    })
    .await;

    let mut conn = redis.commands();
    match how {
        Vanish::StreamDeleted => {
            let _: u64 = redis::cmd("DEL")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        Vanish::GroupDestroyed => {
            let _: u64 = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&stream)
                .arg(&group)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        Vanish::RedisRestartedEmpty => {
            let server = own.as_mut().unwrap();
            server.stop();
            // While Redis is down the plugin cannot read, and /readyz says
            // which plugin and which stream.
            until(
                LIMIT,
                "/readyz to name the plugin that cannot read",
                || async {
                    let (status, body) = get(&service, "/readyz").await;
                    status == 503
                        && body.contains("\"plugin\":\"worker\"")
                        && body.contains(&stream)
                },
            )
            .await;
            server.launch();
        }
    }
    let a2 = add(&redis, &stream).await;
    until(LIMIT, "a2 to be handled", || async {
        worked(&redis, &out).await.contains(&a2)
    })
    .await;
    let (_, metrics) = get(&service, "/metrics").await;
    assert!(
        metrics.contains("runnel_groups_recreated_total{plugin=\"worker\"} 1"),
        "{how:?}: the recreation is counted once:\n{metrics}"
    );
    // Whatever else comes in meanwhile has had its chance to be handled.
    until(LIMIT, "the group to finish its stream", || async {
        redis.backlog(&stream, &group).await.ok() == Some(0)
    })
    .await;
    stop(service).await;
    let ids = worked(&redis, &out).await;
    assert_eq!(
        ids.iter().filter(|id| **id == a2).count(),
        1,
        "{how:?}: a2 handled exactly once: {ids:?}"
    );
    if !matches!(how, Vanish::RedisRestartedEmpty) {
        // (After an empty restart, `out` itself starts over.)
        assert_eq!(
            ids.iter().filter(|id| **id == a1).count(),
            1,
            "{how:?}: a1 is not handled again: {ids:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_gets_its_group_back_and_new_entries_are_handled() {
    a_vanished_group_is_created_again(Vanish::StreamDeleted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_group_is_created_after_what_was_read() {
    a_vanished_group_is_created_again(Vanish::GroupDestroyed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_persistence_is_consumed_again() {
    a_vanished_group_is_created_again(Vanish::RedisRestartedEmpty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_group_has_no_backlog_of_zero() {
    let redis = broker(&redis_url()).await;
    let stream = unique("nobacklog");
    let missing = redis.backlog(&stream, "nobody").await.unwrap_err();
    assert!(MissingGroup::in_error(&missing), "{missing:#}");
    add(&redis, &stream).await;
    let missing = redis.backlog(&stream, "nobody").await.unwrap_err();
    assert!(MissingGroup::in_error(&missing), "{missing:#}");
    let memory = runnel::broker::memory::MemoryBroker::new(16);
    let missing = memory.backlog("s", "nobody").await.unwrap_err();
    assert!(MissingGroup::in_error(&missing), "{missing:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_before_its_redis_waits_for_it_then_consumes() {
    let dir = scratch("late");
    let mut server = RedisServer::on_port(free_port(), &dir, EPHEMERAL);
    let (stream, group, out) = (unique("late"), unique("g"), unique("worked"));
    let config = worker_config(&dir, &server.url(), &stream, &group, &out);

    // A batch job asks to fail: one line, naming the server.
    let error = start(&config, true).await.err().expect("fails fast");
    let text = format!("{error:#}");
    assert!(text.contains(&server.url()), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");

    // A service comes up anyway: alive, not ready, and says why.
    let service = start(&config, false).await.unwrap();
    assert_eq!(get(&service, "/healthz").await.0, 200);
    let (status, body) = get(&service, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("127.0.0.1:{}", server.port)),
        "{body}"
    );

    server.launch();
    let redis = broker(&server.url()).await;
    let id = add(&redis, &stream).await;
    until(
        LIMIT,
        "the event to be handled once Redis answers",
        || async { worked(&redis, &out).await.contains(&id) },
    )
    .await;
    until(LIMIT, "/readyz to say ready", || async {
        get(&service, "/readyz").await.0 == 200
    })
    .await;
    stop(service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_is_drained_by_a_host_whose_group_exists() {
    const EVENTS: usize = 500;
    let dir = scratch("full");
    let server = RedisServer::start(&dir, EPHEMERAL);
    let (stream, group) = (unique("full"), unique("g"));
    let redis = broker(&server.url()).await;
    redis
        .create_group(&stream, &group, StartFrom::Beginning)
        .await
        .unwrap();
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
    let appends = (0..EVENTS)
        .map(|_| Append {
            stream: stream.clone(),
            fields: event_fields(&Event::new("work", payload.as_str())),
        })
        .collect();
    redis.append(appends).await.unwrap();
    // Full: Redis now refuses every write that could grow memory, group
    // creation included.
    let mut conn = redis.commands();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .to_string();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(&used)
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = redis
        .create_group(&stream, "another", StartFrom::Beginning)
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("OOM"), "{refused:#}");

    let path = noop_config(
        &dir,
        &server.url(),
        (&stream, &group),
        "block_ms = 300\nclaim_min_idle_ms = 900",
        "",
        "",
    );
    // Fail-fast: a start-up that needed a write would fail here.
    let service = start(&path, true).await.unwrap();
    until(LIMIT, "the full Redis to be drained", || async {
        redis.backlog(&stream, &group).await.ok() == Some(0)
    })
    .await;
    let handled = service.runtime().plugins[0].stats.snapshot().handled;
    stop(service).await;
    assert_eq!(handled, EVENTS as u64);
}

#[test]
fn sigterm_ends_a_blocked_read_at_once() {
    let dir = scratch("unblock");
    let stream = unique("unblock");
    let path = noop_config(
        &dir,
        &redis_url(),
        (&stream, &unique("g")),
        "block_ms = 60000\nclaim_min_idle_ms = 180000",
        "",
        "",
    );
    let mut process = Process::run(&bin(), &path, "info");
    process.wait_for("consuming", LIMIT);
    // Let the first read reach Redis and block there.
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let (ok, _) = process.terminate();
    let took = asked.elapsed();
    println!("exit with a 60 s BLOCK pending took {took:?}");
    assert!(ok, "exits 0");
    // A minute of BLOCK left; the exit must not wait for it.
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_that_skips_entries_says_how_many_and_how_to_include_them() {
    let dir = scratch("skip");
    let stream = unique("skip");
    let redis = broker(&redis_url()).await;
    for _ in 0..3 {
        add(&redis, &stream).await;
    }
    let path = noop_config(
        &dir,
        &redis_url(),
        (&stream, &unique("g")),
        "block_ms = 300\nclaim_min_idle_ms = 900",
        "",
        "start = \"new\"",
    );
    let mut process = Process::run(&bin(), &path, "info");
    let line = process.wait_for("will not be handled", LIMIT);
    assert!(line.contains("the 3 entries"), "{line}");
    assert!(line.contains(&stream), "{line}");
    assert!(line.contains(r#"start = "beginning""#), "{line}");
    assert!(process.terminate().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_port_clash_exits_before_anything_is_read() {
    let dir = scratch("clash");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (stream, group) = (unique("clash"), unique("g"));
    let redis = broker(&redis_url()).await;
    add(&redis, &stream).await;
    let admin = format!("[admin]\nlisten = \"{}\"\n", taken.local_addr().unwrap());
    let path = noop_config(
        &dir,
        &redis_url(),
        (&stream, &group),
        "",
        &admin,
        "start = \"beginning\"",
    );
    let (ok, lines) = Process::run(&bin(), &path, "info").exit_within(LIMIT);
    assert!(!ok, "exits 1: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("admin API: binding")),
        "{lines:?}"
    );
    // Not even the group was made: nothing was taken from the stream.
    let missing = redis.backlog(&stream, &group).await.unwrap_err();
    assert!(MissingGroup::in_error(&missing), "{missing:#}");
}

#[test]
fn an_admin_api_beyond_loopback_needs_a_token() {
    let dir = scratch("exposed");
    let port = free_port();
    let section = |extra: &str| {
        format!(
            "[admin]\nlisten = \"0.0.0.0:{port}\"\n{extra}\n\n[[plugin]]\nname = \"noop\"\npath = {:?}\nstreams = [\"{}\"]\n",
            plugin(guests::NOOP).display().to_string(),
            unique("exposed")
        )
    };
    let path = dir.join("runnel.toml");
    std::fs::write(&path, section("")).unwrap();
    let (ok, lines) = Process::run(&bin(), &path, "info").exit_within(LIMIT);
    assert!(!ok, "refuses to start: {lines:?}");
    let error: Vec<&String> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{lines:?}");
    assert!(error[0].contains("0.0.0.0"), "{}", error[0]);
    assert!(error[0].contains("token_file"), "{}", error[0]);

    // A token from a file (relative to the config) opens it.
    std::fs::write(dir.join("admin.token"), "s3cret-token\n").unwrap();
    std::fs::write(&path, section("token_file = \"admin.token\"")).unwrap();
    let mut process = Process::run(&bin(), &path, "info");
    process.wait_for("admin API listening on", LIMIT);
    let url = format!("http://127.0.0.1:{port}/plugins");
    assert_eq!(call("GET", &url, None, None).0, 401);
    assert_eq!(call("GET", &url, Some("s3cret-token"), None).0, 200);
    let (ok, _) = process.terminate();
    assert!(ok);
}

#[test]
fn a_config_named_by_a_bare_file_name_watches_its_plugins() {
    let dir = scratch("bare");
    std::fs::copy(plugin(guests::NOOP), dir.join("p.wasm")).unwrap();
    std::fs::write(
        dir.join("runnel.toml"),
        format!(
            "[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstreams = [\"{}\"]\n",
            unique("bare")
        ),
    )
    .unwrap();
    let mut command = std::process::Command::new(bin());
    command
        .args(["run", "--config", "runnel.toml"])
        .current_dir(&dir)
        .env("RUNNEL_LOG", "info");
    let mut process = Process::spawn(command);
    process.wait_for("consuming", LIMIT);
    // Replaced the way build tools do: a new file renamed over the old.
    std::fs::copy(plugin(guests::LOGGER), dir.join("p.wasm.new")).unwrap();
    std::fs::rename(dir.join("p.wasm.new"), dir.join("p.wasm")).unwrap();
    process.wait_for("file changed", LIMIT);
    assert!(process.terminate().0);
}

/// The names of a group's consumers.
async fn consumers(redis: &RedisBroker, stream: &str, group: &str) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(&mut redis.commands())
        .await
        .unwrap();
    reply.consumers.into_iter().map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_left_behind_are_removed_unless_they_hold_entries() {
    let dir = scratch("forget");
    let redis = broker(&redis_url()).await;
    let (stream, group, foreign) = (unique("forget"), unique("g"), unique("foreign"));
    for g in [&group, &foreign] {
        redis
            .create_group(&stream, g, StartFrom::Beginning)
            .await
            .unwrap();
    }
    add(&redis, &stream).await;
    let mut conn = redis.commands();
    // "holder" takes the entry and keeps it pending; "gone" holds nothing;
    // "stranger" belongs to a group this host does not own.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&group)
        .arg("holder")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    for (g, name) in [(&group, "gone"), (&foreign, "stranger")] {
        let _: i64 = redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&stream)
            .arg(g)
            .arg(name)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let path = noop_config(
        &dir,
        &redis_url(),
        (&stream, &group),
        "consumer = \"me\"\nblock_ms = 300\nclaim_min_idle_ms = 60000\nforget_idle_consumers_ms = 1",
        "",
        "",
    );
    let service = start(&path, true).await.unwrap();
    until(LIMIT, "the idle consumer to be removed", || async {
        !consumers(&redis, &stream, &group)
            .await
            .contains(&"gone".to_string())
    })
    .await;
    stop(service).await;
    let ours = consumers(&redis, &stream, &group).await;
    assert!(ours.contains(&"holder".to_string()), "{ours:?}");
    let theirs = consumers(&redis, &stream, &foreign).await;
    assert_eq!(theirs, vec!["stranger".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_dead_letter_reaches_only_the_group_that_failed_it() {
    let dir = scratch("replay");
    let url = redis_url();
    let redis = broker(&url).await;
    let (stream, go_group) = (unique("replay"), unique("go-service"));
    // A Go service reads the same stream with a group of its own.
    redis
        .create_group(&stream, &go_group, StartFrom::New)
        .await
        .unwrap();
    let path = dir.join("runnel.toml");
    std::fs::write(
        &path,
        format!(
            r#"{backend}
[[plugin]]
name = "good"
path = {:?}
streams = ["{stream}"]
group = "{good}"

[[plugin]]
name = "bad"
path = {:?}
streams = ["{stream}"]
group = "{bad}"
max_attempts = 1
"#,
            plugin(guests::LOGGER).display().to_string(),
            plugin(guests::REJECTER).display().to_string(),
            good = unique("good"),
            bad = unique("bad"),
            backend = quick_backend(&url),
        ),
    )
    .unwrap();
    let service = start(&path, true).await.unwrap();
    let r1 = Event::new("refund.requested", "{}");
    redis
        .append(vec![Append {
            stream: stream.clone(),
            fields: event_fields(&r1),
        }])
        .await
        .unwrap();
    let dead = format!("{stream}.dead");
    until(LIMIT, "bad to dead-letter r1", || async {
        redis.range(&dead, None, None, 10).await.unwrap().len() == 1
    })
    .await;
    let go_read = |conn: runnel::broker::redis::Connection| {
        let (stream, go_group) = (stream.clone(), go_group.clone());
        async move {
            let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&go_group)
                .arg("go-1")
                .arg("COUNT")
                .arg(10)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut conn.clone())
                .await
                .unwrap();
            reply.map_or(0, |r| r.keys.iter().map(|k| k.ids.len()).sum::<usize>())
        }
    };
    assert_eq!(go_read(redis.commands()).await, 1, "the Go service saw r1");

    let out = std::process::Command::new(bin())
        .args(["dlq", "replay", "--redis", &url, "--stream", &dead])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(LIMIT, "bad to dead-letter the replay", || async {
        redis.range(&dead, None, None, 10).await.unwrap().len() == 1
            && service.runtime().plugins[1].stats.snapshot().dead_lettered == 2
    })
    .await;
    let plugins = &service.runtime().plugins;
    let (good, bad) = (plugins[0].stats.snapshot(), plugins[1].stats.snapshot());
    stop(service).await;
    assert_eq!(good.handled, 1, "good handled r1 once");
    assert_eq!(bad.failed, 2, "bad was called twice");
    assert_eq!(
        go_read(redis.commands()).await,
        0,
        "the Go service never sees it again"
    );
    // The second dead letter names the source stream, not the replay
    // stream, so it can be replayed the same way again.
    let again = redis.range(&dead, None, None, 10).await.unwrap();
    let record = runnel::dead_letter::DeadLetterRecord::from_entry(&again[0]);
    assert_eq!(record.stream, stream);
    assert_eq!(record.event, r1.to_json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_group_restarts_where_the_group_was_not_where_this_host_was() {
    // Another host of the group read and acked a1 before this one started:
    // this host never read anything itself, yet the group must not start
    // over when it is recreated.
    let dir = scratch("position");
    let url = redis_url();
    let redis = broker(&url).await;
    let (stream, group, out) = (unique("position"), unique("g"), unique("worked"));
    redis
        .create_group(&stream, &group, StartFrom::Beginning)
        .await
        .unwrap();
    let a1 = add(&redis, &stream).await;
    let taken = redis
        .read(
            &group,
            "other-host",
            std::slice::from_ref(&stream),
            10,
            Duration::from_millis(10),
        )
        .await
        .unwrap();
    let ids: Vec<String> = taken.iter().map(|d| d.entry.id.clone()).collect();
    redis.ack(&group, &stream, &ids).await.unwrap();

    let service = start(&worker_config(&dir, &url, &stream, &group, &out), true)
        .await
        .unwrap();
    until(LIMIT, "/readyz to say ready", || async {
        get(&service, "/readyz").await.0 == 200
    })
    .await;
    let _: u64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg(&group)
        .query_async(&mut redis.commands())
        .await
        .unwrap();
    let a2 = add(&redis, &stream).await;
    until(LIMIT, "a2 to be handled", || async {
        worked(&redis, &out).await.contains(&a2)
    })
    .await;
    stop(service).await;
    let handled = worked(&redis, &out).await;
    assert!(!handled.contains(&a1), "a1 was handled again: {handled:?}");
    assert_eq!(handled, vec![a2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_refused_at_start_is_tried_again_once_the_user_exists() {
    let dir = scratch("acl");
    let server = RedisServer::start(&dir, EPHEMERAL);
    let url = format!("redis://runnel:pw@127.0.0.1:{}", server.port);
    let (stream, group, out) = (unique("acl"), unique("g"), unique("worked"));
    let service = start(&worker_config(&dir, &url, &stream, &group, &out), false)
        .await
        .unwrap();
    let (status, body) = get(&service, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("pw@"), "no password in answers: {body}");
    // The user is provisioned after the host started.
    let admin = broker(&server.url()).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("runnel")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin.commands())
        .await
        .unwrap();
    let id = add(&admin, &stream).await;
    until(
        LIMIT,
        "the event to be handled once the login works",
        || async { worked(&admin, &out).await.contains(&id) },
    )
    .await;
    stop(service).await;
}

/// A config with the worker plugin on a `rediss://` server, and its
/// `[backend.tls]` section.
fn tls_worker_config(dir: &Path, url: &str, tls: &str, stream: &str, out: &str) -> PathBuf {
    let path = worker_config(dir, url, stream, &unique("g"), out);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "\n[routes]",
        &format!("\n[backend.tls]\n{tls}\n\n[routes]"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_consumes_over_mutual_tls() {
    use runnel_tests::certs::Authority;
    let dir = scratch("tls");
    let ca = Authority::new(&dir, "ca");
    let server = RedisServer::start_tls(&dir, &ca.cert, &ca.server(), true);
    let client = ca.client();
    let tls = format!(
        "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
        ca.cert.display().to_string(),
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let (stream, out) = (unique("tls"), unique("worked"));
    let config = tls_worker_config(&dir, &server.tls_url(), &tls, &stream, &out);
    let service = start(&config, true).await.unwrap();

    // `runnel emit` over TLS too, with the same files as flags.
    let emitted = std::process::Command::new(bin())
        .args(["emit", "--redis", &server.tls_url(), "--stream", &stream])
        .args(["--name", "work", "--payload", r#"{"iterations":1}"#])
        .arg("--tls-ca")
        .arg(&ca.cert)
        .arg("--tls-cert")
        .arg(&client.cert)
        .arg("--tls-key")
        .arg(&client.key)
        .output()
        .unwrap();
    assert!(
        emitted.status.success(),
        "{}",
        String::from_utf8_lossy(&emitted.stderr)
    );
    let redis = service.runtime().broker.clone();
    until(LIMIT, "the event to be handled over TLS", || async {
        redis
            .range(&out, None, None, 10)
            .await
            .is_ok_and(|e| e.len() == 1)
    })
    .await;
    stop(service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_in_one_line() {
    use runnel::broker::redis::TlsFiles;
    use runnel_tests::certs::Authority;
    let dir = scratch("wrongca");
    let ca = Authority::new(&dir, "ca");
    let other = Authority::new(&dir, "other");
    let server = RedisServer::start_tls(&dir, &ca.cert, &ca.server(), false);
    let connect = |ca_file: Option<PathBuf>, insecure_skip_verify: bool| {
        let url = server.tls_url();
        async move {
            let tls = TlsFiles {
                ca_file,
                insecure_skip_verify,
                ..TlsFiles::default()
            };
            RedisBroker::open(&Endpoint::Server(url), Trimming::default(), &tls)
                .await
                .unwrap()
        }
    };
    let stream = unique("wrongca");
    let wrong = connect(Some(other.cert.clone()), false).await;
    for error in [
        wrong.ping().await.unwrap_err(),
        // The blocking reader's own connection says the same.
        wrong
            .read(
                "g",
                "c",
                std::slice::from_ref(&stream),
                1,
                Duration::from_millis(10),
            )
            .await
            .unwrap_err(),
    ] {
        let text = format!("{error:#}");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(&server.tls_url()), "names the server: {text}");
        assert!(text.contains("UnknownIssuer"), "names the problem: {text}");
    }
    // The right CA, or no verification when asked, work.
    connect(Some(ca.cert.clone()), false)
        .await
        .ping()
        .await
        .unwrap();
    let insecure = connect(None, true).await;
    insecure
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    add(&insecure, &stream).await;
    let read = insecure
        .read(
            "g",
            "c",
            std::slice::from_ref(&stream),
            1,
            Duration::from_millis(10),
        )
        .await
        .unwrap();
    assert_eq!(read.len(), 1);

    // By default the system's roots decide (here: the file that
    // SSL_CERT_FILE names, as OpenSSL's tools read it too).
    let emit = |roots: &Path| {
        std::process::Command::new(bin())
            .args(["emit", "--redis", &server.tls_url(), "--stream", &stream])
            .args(["--name", "work", "--payload", "{}"])
            .env("SSL_CERT_FILE", roots)
            .output()
            .unwrap()
    };
    let trusted = emit(&ca.cert);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = emit(&other.cert);
    assert!(!untrusted.status.success());
    let said = String::from_utf8_lossy(&untrusted.stderr);
    assert!(said.contains("UnknownIssuer"), "{said}");
}

#[test]
fn tls_settings_for_a_plain_url_are_a_config_error() {
    let dir = scratch("plaintls");
    let path = worker_config(&dir, &redis_url(), &unique("s"), &unique("g"), &unique("o"));
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "\n[routes]",
        "\n[backend.tls]\ninsecure_skip_verify = true\n\n[routes]",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let error = runnel::config::Config::load(&path).unwrap_err().to_string();
    assert!(error.contains("backend.tls"), "{error}");
    assert!(error.contains("rediss://"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_before_the_group_read_them_are_counted() {
    let dir = scratch("trim");
    let (stream, out) = (unique("trim"), unique("worked"));
    let path = worker_config(&dir, &redis_url(), &stream, &unique("g"), &out);
    // One slow call at a time, one entry per read: the group falls behind.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("block_ms = 300", "block_ms = 300\ncount = 1")
        .replace(
            "start = \"beginning\"",
            "start = \"beginning\"\nconcurrency = 1",
        );
    std::fs::write(&path, text).unwrap();
    let service = start(&path, true).await.unwrap();
    until(LIMIT, "/readyz to say ready", || async {
        get(&service, "/readyz").await.0 == 200
    })
    .await;
    // A producer that trims the stream to its last 20 entries.
    let producer = RedisBroker::connect(
        &redis_url(),
        Trimming {
            max_len: 20,
            per_stream: Default::default(),
            approximate: false,
        },
    )
    .await
    .unwrap();
    let work = |iterations: u64, n: usize| {
        (0..n)
            .map(|_| Append {
                stream: stream.clone(),
                fields: event_fields(&Event::new(
                    "work",
                    format!(r#"{{"iterations":{iterations}}}"#),
                )),
            })
            .collect::<Vec<_>>()
    };
    // Slow events fill the host's room for entries in flight (4 here)...
    producer.append(work(300_000_000, 4)).await.unwrap();
    let group = service
        .runtime()
        .config
        .group_of(&service.runtime().plugins[0].config);
    until(LIMIT, "the slow events to be taken", || async {
        producer
            .group_progress(&stream, &group)
            .await
            .is_ok_and(|p| p.entries_read == Some(4))
    })
    .await;
    // ... so that the group is behind while 200 more come and all but 20
    // are trimmed.
    producer.append(work(1, 200)).await.unwrap();
    until(LIMIT, "the loss to be counted", || async {
        service.runtime().plugins[0].stats.snapshot().removed_unread > 0
    })
    .await;
    let (_, metrics) = get(&service, "/metrics").await;
    let lost: u64 = metrics
        .lines()
        .find(|l| l.starts_with("runnel_entries_lost_to_trimming_total{plugin=\"worker\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no loss counter:\n{metrics}"));
    // 184 entries were trimmed; the group had read the first 4.
    assert_eq!(lost, 180);
    stop(service).await;
}

#[test]
fn every_failed_attempt_is_logged_until_a_storm_is_cut_short() {
    let dir = scratch("attempts");
    std::fs::write(
        dir.join("runnel.toml"),
        format!(
            "[[plugin]]\nname = \"hostile\"\npath = {:?}\nstreams = [\"s\"]\nmax_attempts = 3\nbackoff = {{ initial_ms = 1, max_ms = 1 }}\nbreaker_failures = 0\n",
            plugin(guests::HOSTILE).display().to_string()
        ),
    )
    .unwrap();
    // One event fails three times; then a storm of 100 more.
    let line = |i: usize| {
        format!("{{\"name\":\"attack\",\"payload\":\"panic\",\"stream\":\"s\",\"correlation_id\":\"c-{i}\"}}\n")
    };
    std::fs::write(dir.join("one.ndjson"), line(0)).unwrap();
    std::fs::write(
        dir.join("storm.ndjson"),
        (1..=100).map(line).collect::<String>(),
    )
    .unwrap();
    let run = |input: &str| {
        let mut command = std::process::Command::new(bin());
        command
            .args([
                "run",
                "--config",
                "runnel.toml",
                "--exit-when-idle",
                "--input",
                input,
            ])
            .current_dir(&dir)
            .env("RUNNEL_LOG", "info");
        let (ok, lines) = Process::spawn(command).exit_within(LIMIT);
        assert!(ok, "{lines:?}");
        lines
    };
    let lines = run("one.ndjson");
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("failed, retrying"))
        .collect();
    assert_eq!(failed.len(), 2, "attempts 1 and 2, at warn: {lines:#?}");
    assert!(
        failed[0].contains("WARN") && failed[0].contains("attempt 1 of 3"),
        "{}",
        failed[0]
    );
    assert!(failed[0].contains("kind=\"trap\""), "{}", failed[0]);
    assert!(failed[0].contains("panicked on purpose"), "{}", failed[0]);
    assert_eq!(
        lines.iter().filter(|l| l.contains("dead-lettered")).count(),
        1
    );

    // 300 failed attempts: the log gets a bounded share of them.
    let lines = run("storm.ndjson");
    let written = lines
        .iter()
        .filter(|l| l.contains("failed, retrying") || l.contains("dead-lettered"))
        .count();
    assert!(
        (20..300).contains(&written),
        "{written} failure lines for 300 failures"
    );
}

#[test]
fn an_error_says_each_cause_once() {
    let closed = format!("redis://127.0.0.1:{}", free_port());
    let out = std::process::Command::new(bin())
        .args(["emit", "--redis", &closed, "--stream", "s", "--name", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    assert_eq!(said.matches("Connection refused").count(), 1, "{said}");
    assert!(said.contains(&closed), "names the server: {said}");

    // A file that is not a component: its path once.
    let dir = scratch("once");
    std::fs::write(dir.join("p.wasm"), "not wasm").unwrap();
    std::fs::write(
        dir.join("runnel.toml"),
        "[[plugin]]\nname = \"p\"\npath = \"p.wasm\"\nstreams = [\"s\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(dir.join("runnel.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    let path = dir.join("p.wasm").display().to_string();
    assert_eq!(said.matches(&path).count(), 1, "{said}");
}

/// A short seeded fault campaign; `scripts/chaos.sh 600` runs the long one
/// (RELIABILITY.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fault_campaign_loses_nothing() {
    use runnel_tests::chaos::{run, Campaign};
    let duration = Duration::from_secs(40);
    let campaign = Campaign {
        duration,
        seed: 17,
        hosts: 3,
        rate: 100,
        bin: bin(),
        plugin: plugin(guests::CHAOS),
        dir: scratch("chaos"),
    };
    let outcome = run(campaign).await.unwrap();
    let table = outcome.table(17, duration);
    println!("{table}");
    assert_eq!(outcome.lost, 0, "{table}");
    assert_eq!(outcome.pending, 0, "{table}");
    assert_eq!(outcome.poison_short, 0, "{table}");
    assert_eq!(outcome.dead_not_poison, 0, "{table}");
    assert!(outcome.faults.values().sum::<u32>() >= 8, "{table}");
    assert!(outcome.handled > 0 && outcome.dead_lettered > 0, "{table}");
}
