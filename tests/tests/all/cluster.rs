//! Redis Cluster: what one server cannot show. Reads of streams on several
//! masters, commits that must stay in one slot, several `runnel` processes
//! sharing streams spread over the masters, a process killed, a master
//! failed over and a slot resharded under load. The broker contract and
//! the delivery scenarios run on the cluster too (`contract.rs`,
//! `delivery.rs`).

use runnel_tests::guests;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use runnel::broker::redis::slots::slot_of;
use runnel::broker::redis::RedisBroker;
use runnel::broker::{Append, Broker, StartFrom};
use runnel::event::Event;
use runnel::kv::{Commit, KvEffects, KvWrite, Outcome, Source};
use runnel::publisher::event_fields;
use runnel_tests::redis_cluster::{self, RedisCluster};
use runnel_tests::{cluster_broker, plugin, total_backlog, unique, until, worked_ids, Process};

const LIMIT: Duration = Duration::from_secs(60);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runnel-under-test"))
}

/// `count` stream names with `prefix`, spread so that every master of
/// `cluster` serves at least one of them.
fn streams_on_every_master(cluster: &RedisCluster, prefix: &str, count: usize) -> Vec<String> {
    let masters = cluster
        .nodes
        .iter()
        .filter(|n| redis_cluster::cli(n.port, &["role"]).starts_with("master"))
        .count();
    let mut chosen: Vec<String> = Vec::new();
    let mut served: HashSet<u16> = HashSet::new();
    for i in 0.. {
        if chosen.len() >= count && served.len() >= masters {
            break;
        }
        let name = format!("{prefix}-{i}");
        let master = cluster.master_of(&name);
        if served.insert(master) || served.len() >= masters {
            chosen.push(name);
        }
    }
    chosen
}

async fn fill(broker: &RedisBroker, streams: &[String], per_stream: usize) -> usize {
    let mut n = 0;
    for stream in streams {
        let appends = (0..per_stream)
            .map(|i| {
                n += 1;
                Append {
                    stream: stream.clone(),
                    fields: event_fields(&Event::new("work", format!("{stream}/{i}"))),
                }
            })
            .collect();
        broker.append(appends).await.unwrap();
    }
    n
}

fn config(
    dir: &std::path::Path,
    consumer: &str,
    seeds: &str,
    backend: &str,
    rest: &str,
) -> PathBuf {
    let path = dir.join(format!("{consumer}.toml"));
    std::fs::write(
        &path,
        format!(
            "[backend]\nkind = \"redis\"\ncluster = {seeds}\nconsumer = \"{consumer}\"\n{backend}\n{rest}"
        ),
    )
    .unwrap();
    path
}

fn scratch(name: &str) -> PathBuf {
    runnel_tests::scratch(name)
}

#[tokio::test]
async fn slots_are_computed_as_the_cluster_computes_them() {
    let cluster = redis_cluster::shared();
    let port = cluster.nodes[0].port;
    for key in [
        "orders",
        "{orders}.dead",
        "a{}b",
        "{x}y",
        "runnel:kv:plugin:{o}:p:b",
    ] {
        let said = redis_cluster::cli(port, &["cluster", "keyslot", key]);
        assert_eq!(said.trim(), slot_of(key).to_string(), "slot of {key:?}");
    }
}

#[tokio::test]
async fn a_read_of_streams_on_several_masters_returns_when_any_has_entries() {
    let cluster = redis_cluster::shared();
    let broker = cluster_broker().await;
    let streams = streams_on_every_master(cluster, &unique("spread"), 3);
    for s in &streams {
        broker.create_group(s, "g", StartFrom::New).await.unwrap();
    }
    // Nothing there: a blocking read waits. An entry on one master ends
    // it, long before the read's BLOCK, and the reads on the other
    // masters are woken and answer whole.
    let reader = broker.clone();
    let read_streams = streams.clone();
    let read = tokio::spawn(async move {
        reader
            .read("g", "c", &read_streams, 10, Duration::from_secs(120))
            .await
    });
    let last = streams.last().unwrap().clone();
    let writer = cluster_broker().await;
    until(LIMIT, "the read to block on every master", || async {
        // Each master's reader is blocked (CLIENT LIST shows the command).
        cluster
            .nodes
            .iter()
            .all(|n| redis_cluster::cli(n.port, &["client", "list"]).contains("cmd=xreadgroup"))
    })
    .await;
    writer
        .append(vec![Append {
            stream: last.clone(),
            fields: vec![("event".into(), b"x".to_vec())],
        }])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("woken: the read did not wait out its BLOCK")
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].stream, last);
    // The readers are still usable: entries on every master are read.
    for s in &streams {
        writer
            .append(vec![Append {
                stream: s.clone(),
                fields: vec![("event".into(), b"y".to_vec())],
            }])
            .await
            .unwrap();
    }
    let seen = std::sync::Mutex::new(HashSet::new());
    until(LIMIT, "entries of every master to be read", || async {
        let read = broker
            .read("g", "c", &streams, 10, Duration::from_millis(200))
            .await
            .unwrap();
        let mut seen = seen.lock().unwrap();
        seen.extend(read.into_iter().map(|d| d.stream));
        seen.len() == streams.len()
    })
    .await;
}

#[tokio::test]
async fn a_commit_whose_state_spans_slots_is_refused_by_name_and_emits_elsewhere_go_first() {
    let broker = cluster_broker().await;
    let tag = unique("t");
    let stream = format!("{{{tag}}}.src");
    let (far, far_bucket) = (unique("elsewhere"), unique("bucket"));
    assert_ne!(slot_of(&stream), slot_of(&far));
    assert_ne!(slot_of(&stream), slot_of(&far_bucket));
    broker
        .create_group(&stream, "g", StartFrom::Beginning)
        .await
        .unwrap();
    let ids = broker
        .append(vec![
            Append {
                stream: stream.clone(),
                fields: vec![("event".into(), b"a".to_vec())],
            },
            Append {
                stream: stream.clone(),
                fields: vec![("event".into(), b"b".to_vec())],
            },
        ])
        .await
        .unwrap();
    let read = broker
        .read("g", "c", std::slice::from_ref(&stream), 2, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(read.len(), 2);
    let commit = |id: &str, bucket: &str, emit_to: &str| Commit {
        source: Some(Source {
            stream: stream.clone(),
            group: "g".into(),
            consumer: "c".into(),
            id: id.into(),
        }),
        effects: KvEffects {
            reads: vec![],
            writes: vec![KvWrite {
                bucket: bucket.into(),
                key: "k".into(),
                value: Some(b"1".to_vec()),
            }],
            locks: Default::default(),
        },
        appends: vec![Append {
            stream: emit_to.into(),
            fields: vec![("event".into(), id.as_bytes().to_vec())],
        }],
        mark: None,
    };
    let home_bucket = format!("{{{tag}}}.bucket");
    let outcomes = broker
        .commit(&[
            // State in another slot: refused, naming the keys.
            commit(&ids[0], &far_bucket, &stream),
            // State in the source's slot, an emit elsewhere: committed,
            // the emit appended beside it.
            commit(&ids[1], &home_bucket, &far),
        ])
        .await
        .unwrap();
    match &outcomes[0] {
        Outcome::Failed(reason) => {
            assert!(reason.contains("hash slot"), "{reason}");
            assert!(reason.contains(&far_bucket), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(outcomes[1], Outcome::Committed);
    assert_eq!(
        broker.kv_get(&home_bucket, &["k".into()]).await.unwrap(),
        vec![Some(b"1".to_vec())]
    );
    assert_eq!(
        broker.kv_get(&far_bucket, &["k".into()]).await.unwrap(),
        vec![None]
    );
    let emitted = broker.range(&far, None, None, 10).await.unwrap();
    assert_eq!(emitted.len(), 1, "the emit elsewhere was appended once");
    assert_eq!(
        broker.backlog(&stream, "g").await.unwrap(),
        1,
        "only the second acked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_six_streams_over_three_masters_exactly_once() {
    const PER_STREAM: usize = 300;
    let cluster = redis_cluster::shared();
    let dir = scratch("cluster-share");
    let streams = streams_on_every_master(cluster, &unique("share"), 6);
    let group = unique("g");
    let section = format!(
        "[[plugin]]\nname = \"noop\"\npath = {:?}\ngroup = \"{group}\"\nstreams = {streams:?}\nstart = \"beginning\"\n",
        plugin(guests::NOOP).display().to_string()
    );
    let seeds = cluster.toml_seeds();
    let backend = "block_ms = 100\ncount = 64";
    let mut a = Process::run(
        &bin(),
        &config(&dir, "a", &seeds, backend, &section),
        "info",
    );
    let mut b = Process::run(
        &bin(),
        &config(&dir, "b", &seeds, backend, &section),
        "info",
    );
    a.wait_for("consuming", LIMIT);
    b.wait_for("consuming", LIMIT);

    let redis = cluster_broker().await;
    let total = fill(&redis, &streams, PER_STREAM).await;
    until(LIMIT, "both processes to drain the streams", || async {
        total_backlog(&redis, &streams, &group).await == 0
    })
    .await;
    runnel_tests::shared_exactly_once(a, b, "noop", total as u64);
}

/// `worker` processes on `cluster` handling `events` spread over
/// `streams`, their `worked` events going to `done`; returns the processes
/// once both consume.
fn workers(
    cluster: &RedisCluster,
    dir: &std::path::Path,
    streams: &[String],
    group: &str,
    done: &str,
) -> (Process, Process) {
    let section = format!(
        "[routes]\n\"worked\" = \"{done}\"\n\n[[plugin]]\nname = \"worker\"\npath = {:?}\ngroup = \"{group}\"\nstreams = {streams:?}\nstart = \"beginning\"\nconcurrency = 2\n",
        plugin(guests::WORKER).display().to_string()
    );
    let seeds = cluster.toml_seeds();
    let backend = "block_ms = 100\nclaim_min_idle_ms = 1500\ncount = 16";
    let mut a = Process::run(&bin(), &config(dir, "a", &seeds, backend, &section), "info");
    let mut b = Process::run(&bin(), &config(dir, "b", &seeds, backend, &section), "info");
    a.wait_for("consuming", LIMIT);
    b.wait_for("consuming", LIMIT);
    (a, b)
}

/// Every event was handled (none lost); returns how many twice.
fn lost_and_twice(handled: &[String], expected: usize) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in handled {
        *counts.entry(id).or_default() += 1;
    }
    assert_eq!(counts.len(), expected, "every event handled, none lost");
    handled.len() - counts.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_on_a_cluster_leaves_its_events_to_the_other() {
    const PER_STREAM: usize = 60;
    let cluster = redis_cluster::shared();
    let dir = scratch("cluster-kill9");
    let streams = streams_on_every_master(cluster, &unique("kill9"), 3);
    let (group, done) = (unique("g"), unique("worked"));
    let (a, b) = workers(cluster, &dir, &streams, &group, &done);
    let redis = cluster_broker().await;
    // Slow events (the worker spins), so that a holds some when killed.
    for s in &streams {
        let appends = (0..PER_STREAM)
            .map(|i| Append {
                stream: s.clone(),
                fields: event_fields(&Event::new(
                    "work",
                    format!(r#"{{"iterations":2000000,"id":"{s}/{i}"}}"#),
                )),
            })
            .collect();
        redis.append(appends).await.unwrap();
    }
    let total = PER_STREAM * streams.len();
    until(LIMIT, "some events to be handled", || async {
        worked_ids(&redis, &done).await.len() >= total / 8
    })
    .await;
    a.kill9();
    until(
        LIMIT,
        "the survivor to reclaim and finish everything",
        || async { total_backlog(&redis, &streams, &group).await == 0 },
    )
    .await;
    let twice = lost_and_twice(&worked_ids(&redis, &done).await, total);
    let (ok, _) = b.terminate();
    assert!(ok);
    println!("killed a; {twice} handled twice (what it held)");
}

/// A broker on `cluster` (not the shared one).
async fn broker_on(cluster: &RedisCluster) -> std::sync::Arc<RedisBroker> {
    RedisBroker::open(
        &runnel::broker::redis::Endpoint::Cluster(cluster.seeds()),
        runnel::broker::redis::Trimming::default(),
        &Default::default(),
    )
    .await
    .unwrap()
}

/// Appends `per_stream` slow events to each of `streams`, numbered from
/// `from`.
async fn fill_slow(broker: &RedisBroker, streams: &[String], from: usize, per_stream: usize) {
    for s in streams {
        let appends = (from..from + per_stream)
            .map(|i| Append {
                stream: s.clone(),
                fields: event_fields(&Event::new(
                    "work",
                    format!(r#"{{"iterations":1000000,"id":"{s}/{i}"}}"#),
                )),
            })
            .collect();
        broker.append(appends).await.unwrap();
    }
}

/// A stream name served by a master other than `port`.
fn name_not_on(cluster: &RedisCluster, port: u16, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|n| cluster.master_of(n) != port)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_and_its_replica_promoted_mid_stream_loses_nothing() {
    const PER_STREAM: usize = 50;
    let mut cluster = RedisCluster::start(3, 1);
    let dir = scratch("cluster-failover");
    let streams = streams_on_every_master(&cluster, &unique("failover"), 6);
    let victim = cluster.master_of(&streams[0]);
    let done = name_not_on(&cluster, victim, &unique("worked"));
    let group = unique("g");
    let (a, b) = workers(&cluster, &dir, &streams, &group, &done);
    let redis = broker_on(&cluster).await;
    fill_slow(&redis, &streams, 0, PER_STREAM).await;
    // Replication is asynchronous: what a master acknowledged but never
    // sent its replica is Redis's loss, not Runnel's. Wait until the
    // replicas have the events, so that every loss counted is Runnel's.
    for master in cluster.masters() {
        let synced = redis_cluster::cli(master, &["wait", "1", "10000"]);
        assert_eq!(synced.trim(), "1", "master {master}'s replica caught up");
    }
    let total = PER_STREAM * streams.len();
    until(LIMIT, "a quarter to be handled", || async {
        worked_ids(&redis, &done).await.len() >= total / 4
    })
    .await;
    cluster.node(victim).kill9();
    cluster.wait_until_ok(LIMIT);
    assert_ne!(
        cluster.master_of(&streams[0]),
        victim,
        "a replica took over"
    );
    until(
        2 * LIMIT,
        "everything to be handled after the failover",
        || async { total_backlog(&redis, &streams, &group).await == 0 },
    )
    .await;
    let twice = lost_and_twice(&worked_ids(&redis, &done).await, total);
    let (ok_a, out_a) = a.terminate();
    let (ok_b, out_b) = b.terminate();
    assert!(
        ok_a && ok_b,
        "both exit 0 after the failover:\n{out_a}\n{out_b}"
    );
    println!("failover: {total} events, {twice} handled twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_resharded_under_load_loses_nothing() {
    const PER_STREAM: usize = 50;
    const MOVED_SLOTS: usize = 50;
    let cluster = RedisCluster::start(3, 0);
    let dir = scratch("cluster-reshard");
    // The first stream sits in one of the slots the reshard moves: the
    // lowest of its master's.
    let prefix = unique("reshard");
    let masters = cluster.masters();
    let from = masters[0];
    let first = cluster.first_slot_of(from);
    let moving = (0..)
        .map(|i| format!("{prefix}-m{i}"))
        .find(|n| (first..first + MOVED_SLOTS as u16).contains(&slot_of(n)))
        .unwrap();
    let mut streams = vec![moving];
    streams.extend(streams_on_every_master(&cluster, &prefix, 2));
    let to = masters[1];
    let done = unique("worked");
    let group = unique("g");
    let (a, b) = workers(&cluster, &dir, &streams, &group, &done);
    let redis = broker_on(&cluster).await;
    fill_slow(&redis, &streams, 0, PER_STREAM).await;
    until(LIMIT, "a quarter to be handled", || async {
        worked_ids(&redis, &done).await.len() >= PER_STREAM * streams.len() / 4
    })
    .await;
    // The slots move while both processes read and ack the stream and a
    // producer keeps appending to it.
    let producer = {
        let redis = redis.clone();
        let stream = streams[0].clone();
        tokio::spawn(async move {
            for round in 0..20 {
                fill_slow(&redis, std::slice::from_ref(&stream), 1000 + round * 5, 5).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // redis-cli blocks this thread; the runtime's other worker drives the
    // producer meanwhile.
    tokio::task::block_in_place(|| cluster.reshard(from, to, MOVED_SLOTS));
    producer.await.unwrap();
    assert_eq!(cluster.master_of(&streams[0]), to, "the slot moved");
    let total = PER_STREAM * streams.len() + 20 * 5;
    until(LIMIT, "everything to be handled after the move", || async {
        total_backlog(&redis, &streams, &group).await == 0
    })
    .await;
    let twice = lost_and_twice(&worked_ids(&redis, &done).await, total);
    assert_eq!(twice, 0, "a moved slot hands nothing out twice");
    let (ok_a, out_a) = a.terminate();
    let (ok_b, out_b) = b.terminate();
    assert!(
        ok_a && ok_b,
        "both exit 0 after the move:\n{out_a}\n{out_b}"
    );
}

/// `runnel ...` with `stdin`; its stdout, after asserting success.
fn cli(args: &[&str], stdin: &str) -> String {
    crate::util::text(&crate::util::runnel_ok(args, Some(stdin)).stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_and_dead_letters_work_on_a_cluster_from_the_command_line() {
    let cluster = redis_cluster::shared();
    let seeds = cluster.seeds().join(",");
    let streams = streams_on_every_master(cluster, &unique("cli"), 3);
    let run = runnel_tests::start(&format!(
        "[backend]\nkind = \"redis\"\ncluster = {}\nblock_ms = 100\n\n[[plugin]]\nname = \"rejecter\"\npath = \"@rejecter\"\nstreams = {streams:?}\n",
        cluster.toml_seeds()
    ))
    .await
    .unwrap();
    // One event per stream, each on its own master.
    let lines: String = streams
        .iter()
        .map(|s| format!("{{\"name\":\"refund.requested\",\"payload\":1,\"stream\":\"{s}\"}}\n"))
        .collect();
    let out = cli(
        &["emit", "--redis-cluster", &seeds, "--stream", &streams[0]],
        &lines,
    );
    assert_eq!(out.trim(), "emitted 3 events");
    run.idle_within(LIMIT).await.unwrap();
    run.stop().await.unwrap();
    for stream in &streams {
        let dead = format!("{stream}.dead");
        let listed = cli(
            &["dlq", "list", "--redis-cluster", &seeds, "--stream", &dead],
            "",
        );
        assert!(listed.contains("kind=rejected"), "{listed}");
        let replayed = cli(
            &[
                "dlq",
                "replay",
                "--redis-cluster",
                &seeds,
                "--stream",
                &dead,
            ],
            "",
        );
        assert!(replayed.contains("replayed 1 dead letters"), "{replayed}");
        let broker = cluster_broker().await;
        let back = broker
            .range(&format!("{stream}.replay.rejecter"), None, None, 10)
            .await
            .unwrap();
        assert_eq!(back.len(), 1, "the replay went to the group's stream");
        assert!(broker
            .range(&dead, None, None, 10)
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_drains_one_stream_and_one_per_master_on_a_cluster() {
    let seeds = redis_cluster::shared().seeds().join(",");
    let noop = plugin(guests::NOOP).display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        crate::util::runnel_ok(
            &[
                "bench",
                "--events",
                "300",
                "--rounds",
                "1",
                "--swaps",
                "0",
                "--redis-only",
                "--redis-cluster",
                &seeds,
                "--plugin",
                &noop,
            ],
            None,
        )
    })
    .await
    .unwrap();
    let report = crate::util::text(&out.stdout);
    // Not a terminal: one line per measurement on stderr, what and where.
    let said = crate::util::text(&out.stderr);
    assert!(
        said.contains(
            "bench: cluster, 1 stream per master: wasm, reuse 1000 (default), 300 events"
        ),
        "{said}"
    );
    // Every case drained all its events (the bench fails otherwise) on
    // both layouts, and the masters' CPU was read.
    for row in [
        "native Rust handler (baseline), 1 stream ",
        "native Rust handler (baseline), 1 stream per master",
        "wasm, reuse 1000 (default), 1 stream per master",
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{report}"));
        let figures: Vec<f64> = line[row.len()..]
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        assert_eq!(figures.len(), 4, "{line}");
        // Events/s and the ratio; CPU per event may round to 0 over a
        // few hundred events (the process clock counts 10 ms ticks).
        assert!(figures[0] > 0.0 && figures[1] > 0.0, "{line}");
        assert!(figures[2] >= 0.0 && figures[3] >= 0.0, "{line}");
    }
}
