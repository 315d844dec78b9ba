//! Several `runnel` processes on the real Redis: sharing a group, one killed
//! with SIGKILL mid-run, connections killed and Redis restarted under them,
//! and a poison event across process restarts. Nothing may be lost.

use runnel_tests::guests;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use runnel::broker::redis::RedisBroker;
use runnel::broker::{Append, Broker, StartFrom};
use runnel::dead_letter::DeadLetterRecord;
use runnel::event::Event;
use runnel::publisher::event_fields;
use runnel_tests::redis_server::{RedisServer, PERSISTENT};
use runnel_tests::{
    broker, handled_in_summary, plugin, redis_url, total_backlog, unique, until, worked_ids,
    Process,
};

const LIMIT: Duration = Duration::from_secs(60);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel-under-test"))
}

struct Setup {
    dir: PathBuf,
    url: String,
}

impl Setup {
    fn new(name: &str, url: &str) -> Setup {
        let dir = runnel_tests::scratch(name);
        Setup {
            dir,
            url: url.to_string(),
        }
    }

    /// A config for one process: its consumer name, and the plugin section.
    fn config(&self, consumer: &str, backend_extra: &str, rest: &str) -> PathBuf {
        let path = self.dir.join(format!("{consumer}.toml"));
        std::fs::write(
            &path,
            format!(
                "[backend]\nkind = \"redis\"\nurl = \"{}\"\nconsumer = \"{consumer}\"\n{backend_extra}\n{rest}",
                self.url
            ),
        )
        .unwrap();
        path
    }
}

async fn fill(broker: &RedisBroker, streams: &[String], per_stream: usize, payload: &str) {
    for stream in streams {
        let appends = (0..per_stream)
            .map(|_| Append {
                stream: stream.clone(),
                fields: event_fields(&Event::new("work", payload)),
            })
            .collect();
        broker.append(appends).await.unwrap();
    }
}

fn worker_plugin(group: &str, streams: &[String], extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"worker\"\npath = {:?}\ngroup = \"{group}\"\nstreams = {streams:?}\nstart = \"beginning\"\n{extra}\n",
        plugin(guests::WORKER).display().to_string()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_in_one_group_share_every_event_exactly_once() {
    const PER_STREAM: usize = 1000;
    let setup = Setup::new("share", &redis_url());
    let streams: Vec<String> = (1..=3).map(|i| unique(&format!("share{i}"))).collect();
    let group = unique("g");
    let section = format!(
        "[[plugin]]\nname = \"noop\"\npath = {:?}\ngroup = \"{group}\"\nstreams = {streams:?}\nstart = \"beginning\"\n",
        plugin(guests::NOOP).display().to_string()
    );
    let backend = "block_ms = 100\ncount = 64";
    let mut a = Process::run(&bin(), &setup.config("a", backend, &section), "info");
    let mut b = Process::run(&bin(), &setup.config("b", backend, &section), "info");
    a.wait_for("consuming", LIMIT);
    b.wait_for("consuming", LIMIT);

    let redis = broker(&setup.url).await;
    fill(&redis, &streams, PER_STREAM, "{}").await;
    until(LIMIT, "both processes to drain the streams", || async {
        total_backlog(&redis, &streams, &group).await == 0
    })
    .await;

    let (handled_a, handled_b) =
        runnel_tests::shared_exactly_once(a, b, "noop", 3 * PER_STREAM as u64);
    println!("split: a handled {handled_a}, b handled {handled_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_run_leaves_its_events_to_the_other() {
    const EVENTS: usize = 400;
    let setup = Setup::new("kill9", &redis_url());
    let streams = vec![unique("kill9")];
    let done = unique("worked");
    let group = unique("g");
    let section = format!(
        "[routes]\n\"worked\" = \"{done}\"\n\n{}",
        worker_plugin(&group, &streams, "concurrency = 2")
    );
    let backend = "block_ms = 100\nclaim_min_idle_ms = 1500\ncount = 16";
    let mut a = Process::run(&bin(), &setup.config("a", backend, &section), "info");
    let mut b = Process::run(&bin(), &setup.config("b", backend, &section), "info");
    a.wait_for("consuming", LIMIT);
    b.wait_for("consuming", LIMIT);

    let redis = broker(&setup.url).await;
    fill(&redis, &streams, EVENTS, r#"{"iterations":3000000}"#).await;
    until(LIMIT, "some events to be handled", || async {
        worked_ids(&redis, &done).await.len() >= EVENTS / 8
    })
    .await;
    a.kill9();
    // What the dead process held: delivered to it, never acknowledged.
    let mut conn = runnel_tests::redis_conn().await;
    let held: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&streams[0])
        .arg(&group)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .arg("a")
        .query_async(&mut conn)
        .await
        .unwrap();
    until(
        LIMIT,
        "the survivor to reclaim and finish everything",
        || async { total_backlog(&redis, &streams, &group).await == 0 },
    )
    .await;

    let ids = worked_ids(&redis, &done).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), EVENTS, "every event handled");
    let duplicates = ids.len() - counts.len();
    assert!(
        duplicates <= held.len(),
        "duplicates ({duplicates}) only among what the dead process held ({})",
        held.len()
    );
    let (ok, _) = b.terminate();
    assert!(ok);
    println!(
        "killed a holding {} entries; {duplicates} handled twice",
        held.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_and_a_redis_restart_lose_nothing() {
    const EVENTS: usize = 300;
    let setup = Setup::new("restart", "");
    let mut server = RedisServer::start(&setup.dir, PERSISTENT);
    let setup = Setup {
        url: server.url(),
        ..setup
    };
    let streams = vec![unique("restart")];
    let done = unique("worked");
    let group = unique("g");
    let section = format!(
        "[routes]\n\"worked\" = \"{done}\"\n\n{}",
        worker_plugin(&group, &streams, "concurrency = 2")
    );
    let backend = "block_ms = 100\nclaim_min_idle_ms = 1500\ncount = 8";
    let mut p = Process::run(&bin(), &setup.config("p", backend, &section), "info");
    p.wait_for("consuming", LIMIT);
    let redis = broker(&setup.url).await;
    fill(&redis, &streams, EVENTS, r#"{"iterations":2000000}"#).await;

    until(LIMIT, "a first third to be handled", || async {
        worked_ids(&redis, &done).await.len() >= EVENTS / 3
    })
    .await;
    let mut conn = redis::Client::open(setup.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1, "the consumer's connections were killed");

    until(LIMIT, "two thirds to be handled", || async {
        worked_ids(&redis, &done).await.len() >= 2 * EVENTS / 3
    })
    .await;
    server.restart();
    let redis = broker(&setup.url).await;
    until(
        LIMIT,
        "everything to be handled after the restart",
        || async { redis.backlog(&streams[0], &group).await.unwrap_or(1) == 0 },
    )
    .await;
    let ids = worked_ids(&redis, &done).await;
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(
        distinct.len(),
        EVENTS,
        "nothing lost across CLIENT KILL and a restart"
    );
    let (ok, _) = p.terminate();
    assert!(ok);
    println!("{} handled, {} distinct", ids.len(), distinct.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_after_max_attempts_across_restarts() {
    let setup = Setup::new("poison", &redis_url());
    let stream = unique("poison");
    let group = unique("g");
    let section = format!(
        "[[plugin]]\nname = \"trapper\"\npath = {:?}\ngroup = \"{group}\"\nstreams = [\"{stream}\"]\nstart = \"beginning\"\nmax_attempts = 3\nbackoff = {{ initial_ms = 60000, max_ms = 60000 }}\n",
        plugin(guests::TRAPPER).display().to_string()
    );
    // Short enough to reclaim quickly from the previous (stopped) process.
    let backend = "block_ms = 100\nclaim_min_idle_ms = 600";
    let redis = broker(&redis_url()).await;
    redis
        .append(vec![Append {
            stream: stream.clone(),
            fields: event_fields(&Event::new("x", "trap")),
        }])
        .await
        .unwrap();

    // Each process makes one attempt, traps, and is stopped while it waits
    // out its (long) backoff, so the entry stays pending for the next one.
    for round in 1..=2 {
        let mut p = Process::run(
            &bin(),
            &setup.config(&format!("c{round}"), backend, &section),
            "runnel=debug",
        );
        p.wait_for(&format!("attempt={round}"), LIMIT);
        let (ok, _) = p.terminate();
        assert!(ok);
    }
    let mut last = Process::run(
        &bin(),
        &setup.config("c3", backend, &section),
        "runnel=debug",
    );
    last.wait_for("dead-lettered", LIMIT);
    let (ok, out) = last.terminate();
    assert!(ok);

    let dead = redis
        .range(&format!("{stream}.dead"), None, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let record = DeadLetterRecord::from_entry(&dead[0]);
    assert_eq!(
        (record.attempts, record.kind.as_str()),
        (3, "trap"),
        "{record:?}"
    );
    assert_eq!(
        redis.backlog(&stream, &group).await.unwrap(),
        0,
        "acked: no more deliveries"
    );
    assert!(out.contains("trapper"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handling_longer_than_the_claim_idle_time_is_not_stolen() {
    // With COUNT 1 and concurrency 1 a process holds at most 4 entries
    // (two reads' worth plus twice its concurrency), and then waits for room.
    const EVENTS: usize = 3;
    let setup = Setup::new("long", &redis_url());
    let streams = vec![unique("long")];
    let done = unique("worked");
    let group = unique("g");
    let section = format!(
        "[routes]\n\"worked\" = \"{done}\"\n\n{}",
        worker_plugin(&group, &streams, "concurrency = 1\ntimeout_ms = 20000")
    );
    // Each event takes far longer than the idle time after which a silent
    // consumer's entries are taken over.
    let backend = "block_ms = 100\nclaim_min_idle_ms = 300\ncount = 1";
    let mut a = Process::run(&bin(), &setup.config("a", backend, &section), "info");
    a.wait_for("consuming", LIMIT);
    let redis = broker(&setup.url).await;
    fill(&redis, &streams, EVENTS, r#"{"iterations":400000000}"#).await;
    let conn = runnel_tests::redis_conn().await;
    until(LIMIT, "the first process to hold every entry", || {
        let mut conn = conn.clone();
        let (stream, group) = (streams[0].clone(), group.clone());
        async move {
            let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(&group)
                .query_async(&mut conn)
                .await
                .unwrap();
            pending.0 == EVENTS as u64
        }
    })
    .await;
    // An idle second consumer, eager to reclaim anything idle for 300 ms.
    let mut b = Process::run(&bin(), &setup.config("b", backend, &section), "info");
    b.wait_for("consuming", LIMIT);
    until(LIMIT, "all events to be handled", || async {
        total_backlog(&redis, &streams, &group).await == 0
    })
    .await;
    let ids = worked_ids(&redis, &done).await;
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), EVENTS);
    assert_eq!(
        ids.len(),
        EVENTS,
        "no entry was taken from a consumer still handling it"
    );
    let (ok_a, _) = a.terminate();
    let (ok_b, out_b) = b.terminate();
    assert!(ok_a && ok_b);
    assert_eq!(
        handled_in_summary(&out_b, "worker"),
        0,
        "the idle consumer stole nothing"
    );
}

/// The blocking reader has a connection of its own: it must log in and pick
/// the database the URL names, like every other command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_logs_in_and_selects_the_database_of_the_url() {
    let setup = Setup::new("auth", "");
    let server = RedisServer::start(&setup.dir, &["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/3", server.port);
    let redis = broker(&url).await;
    let stream = unique("auth");
    redis
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    fill(&redis, std::slice::from_ref(&stream), 5, "{}").await;
    let read = redis
        .read(
            "g",
            "c",
            std::slice::from_ref(&stream),
            10,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
    assert_eq!(read.len(), 5, "the reader sees the stream of database 3");

    let mut db0 = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/0", server.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(&stream)
        .query_async(&mut db0)
        .await
        .unwrap();
    assert_eq!(exists, 0, "nothing was written to database 0");
}
