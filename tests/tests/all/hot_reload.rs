//! Hot reload and shadow runs under load, in process on the in-memory
//! backend: which version handled each event is read off the events the
//! `versioned` plugin emits.

use runnel_tests::guests;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel::event::Event;
use runnel::service::live::LivePlugin;
use runnel_tests::{plugin, start, Running};

const LIMIT: Duration = Duration::from_secs(60);

/// The `versioned` plugin's bytes with its version byte set to `v`.
fn versioned(v: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin(guests::VERSIONED)).unwrap();
    let marker = b"RUNNEL-VERSION=";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the marker is in the data section");
    bytes[at + marker.len()] = v;
    bytes
}

fn temp_dir(name: &str) -> PathBuf {
    runnel_tests::scratch(name)
}

/// Writes a file the way a build tool does: elsewhere, then renamed over.
fn replace_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `ready` until it holds; panics naming `what` after [`LIMIT`].
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (event id → versions that handled it) from the `handled-by` events.
async fn handled_by(running: &Running, stream: &str) -> BTreeMap<String, Vec<String>> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in running.events_on(stream).await {
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        seen.entry(v["id"].as_str().unwrap().to_string())
            .or_default()
            .push(v["version"].as_str().unwrap().to_string());
    }
    seen
}

fn live(running: &Running, name: &str) -> Arc<LivePlugin> {
    running
        .runtime
        .plugins
        .iter()
        .find(|p| p.config.name == name)
        .unwrap()
        .live
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_file_replacements_under_load_lose_nothing_and_keep_the_last_good_version() {
    let dir = temp_dir("hot-reload");
    let file = dir.join("versioned.wasm");
    std::fs::write(&file, versioned(b'0')).unwrap();
    let running = Arc::new(
        start(&format!(
            r#"
            [backend]
            kind = "memory"
            capacity = 1000000
            [routes]
            "handled-by" = "out"
            [[plugin]]
            name = "v"
            path = {file:?}
            streams = ["in"]
            concurrency = 4
            "#
        ))
        .await
        .unwrap(),
    );
    let reloader = running.runtime.reloader.clone().unwrap();
    reloader.watch(running.shutdown.clone()).unwrap();
    let slot = live(&running, "v");

    // Load: batches of events for as long as the replacements go on.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn({
        let (running, stop) = (running.clone(), stop.clone());
        async move {
            let mut ids = Vec::new();
            while !stop.load(Relaxed) {
                let batch: Vec<Event> = (0..20)
                    .map(|_| Event::new("work", b"{}".to_vec()))
                    .collect();
                ids.extend(batch.iter().map(|e| e.id.clone()));
                running.inject("in", batch).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ids
        }
    });

    let truncated = |v: u8| versioned(v)[..4096].to_vec();
    // Each bad step with what its refusal must say.
    let (invalid, not_wasm, trapped) = (
        "invalid component",
        "not a WebAssembly file",
        "trapped on its first call",
    );
    let steps: Vec<(&str, Vec<u8>, &str)> = vec![
        ("good 1", versioned(b'1'), ""),
        ("truncated", truncated(b'1'), invalid),
        ("good 2", versioned(b'2'), ""),
        ("not wasm", b"this is not a component".to_vec(), not_wasm),
        ("good 3", versioned(b'3'), ""),
        ("traps", versioned(b'T'), trapped),
        ("good 4", versioned(b'4'), ""),
        ("good 5", versioned(b'5'), ""),
        ("truncated", truncated(b'5'), invalid),
        ("good 6", versioned(b'6'), ""),
    ];
    let mut good_versions: HashSet<String> = HashSet::from(["0".to_string()]);
    for (i, (what, bytes, says)) in steps.iter().enumerate() {
        let before = slot.status();
        // Half the writes in place (several write calls as an editor may
        // make), half by rename as build tools do.
        if i % 2 == 0 {
            replace_atomically(&file, bytes);
        } else {
            std::fs::write(&file, bytes).unwrap();
        }
        if let Some(v) = what.strip_prefix("good ") {
            good_versions.insert(v.to_string());
            until(&format!("{what} to serve"), || {
                slot.status().reloads > before.reloads
            })
            .await;
            // And it really handles events.
            let deadline = Instant::now() + LIMIT;
            while !handled_by(&running, "out")
                .await
                .values()
                .any(|vs| vs.contains(&v.to_string()))
            {
                assert!(Instant::now() < deadline, "{what} never handled an event");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            // Waits for the refusal that names this step's fault. A file
            // written in place can be read half-written (the process
            // descheduled between truncating and writing it, past the
            // watcher's settle time, on a loaded machine): that read is
            // refused first, as not wasm or an invalid component, and for
            // the trapping build the full read is then installed (which
            // clears the last error) before its first call trips.
            let refused = || {
                let s = slot.status();
                s.refused > before.refused
                    && s.last_error.as_deref().is_some_and(|e| e.contains(says))
            };
            until(&format!("{what} to be refused, saying {says:?}"), refused).await;
        }
    }
    stop.store(true, Relaxed);
    let injected = producer.await.unwrap();
    running.idle_within(LIMIT).await.unwrap();

    let seen = handled_by(&running, "out").await;
    let status = slot.status();
    println!(
        "{} events across {} replacements: {} reloads, {} refused, {} calls rescued",
        injected.len(),
        steps.len(),
        status.reloads,
        status.refused,
        slot.rescued_calls()
    );
    assert_eq!(seen.len(), injected.len(), "every event handled");
    for id in &injected {
        let versions = &seen[id];
        assert_eq!(versions.len(), 1, "event {id} handled by {versions:?}");
        assert!(good_versions.contains(&versions[0]), "{versions:?}");
    }
    // The trapping build is installed, trips on its first call and is
    // replaced: a reload and a refusal. The three others never install.
    // A half-written read (see above) adds a refusal, never a reload.
    assert_eq!(status.reloads, 7, "six good versions and the trapping one");
    assert!(
        status.refused >= 4,
        "two truncated, not wasm, traps: {} refused",
        status.refused
    );
    let last: serde_json::Value =
        serde_json::from_slice(&running.events_on("out").await.last().unwrap().payload).unwrap();
    assert_eq!(last["version"], "6");
    match Arc::try_unwrap(running) {
        Ok(r) => {
            r.stop().await.unwrap();
        }
        Err(_) => panic!("the runtime is still shared"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_compared_never_published_and_can_be_promoted() {
    let dir = temp_dir("shadow");
    let (live_file, differs, same) = (
        dir.join("live.wasm"),
        dir.join("differs.wasm"),
        dir.join("same.wasm"),
    );
    std::fs::write(&live_file, versioned(b'0')).unwrap();
    std::fs::write(&differs, versioned(b'9')).unwrap();
    std::fs::write(&same, versioned(b'0')).unwrap();
    let running = start(&format!(
        r#"
        [backend]
        kind = "memory"
        capacity = 100000
        [routes]
        "handled-by" = "out"
        [[plugin]]
        name = "live-a"
        path = {live_file:?}
        streams = ["in-a"]
        [[plugin]]
        name = "candidate"
        path = {differs:?}
        shadow_of = "live-a"
        [[plugin]]
        name = "live-b"
        path = {live_file:?}
        streams = ["in-b"]
        [[plugin]]
        name = "twin"
        path = {same:?}
        shadow_of = "live-b"
        "#
    ))
    .await
    .unwrap();
    let n = 200;
    for stream in ["in-a", "in-b"] {
        let events = (0..n)
            .map(|i| Event::new("work", format!("{i}").into_bytes()))
            .collect();
        running.inject(stream, events).await.unwrap();
    }
    running.idle_within(LIMIT).await.unwrap();
    let (a, b) = (live(&running, "live-a"), live(&running, "live-b"));
    let (shadow_a, shadow_b) = (a.shadow().unwrap(), b.shadow().unwrap());
    let compared = |s: &runnel::service::shadow::ShadowStats| {
        s.agreed.load(Relaxed) + s.disagreed.load(Relaxed) + s.skipped.load(Relaxed)
    };
    until("every shadow call to finish", || {
        compared(&shadow_a.stats) == n && compared(&shadow_b.stats) == n
    })
    .await;
    assert_eq!(shadow_a.stats.agreed.load(Relaxed), 0);
    assert!(shadow_a.stats.disagreed.load(Relaxed) > 0);
    let difference = shadow_a.stats.last_difference().unwrap();
    assert!(
        difference.contains(r#""version":"0""#) && difference.contains(r#""version":"9""#),
        "{difference}"
    );
    assert_eq!(shadow_b.stats.disagreed.load(Relaxed), 0);
    assert!(shadow_b.stats.agreed.load(Relaxed) > 0);

    let out = handled_by(&running, "out").await;
    assert_eq!(out.len(), 2 * n as usize, "live output only");
    assert!(
        out.values().all(|v| v == &["0".to_string()]),
        "nothing a shadow emitted was published"
    );

    // Promotion: the candidate's version serves live-a from now on.
    let reloader = running.runtime.reloader.clone().unwrap();
    reloader.promote("candidate").await.unwrap();
    assert!(a.shadow().is_none(), "detached once promoted");
    assert!(reloader.promote("candidate").await.is_err(), "only once");
    let after: Vec<Event> = (0..10)
        .map(|_| Event::new("work", b"{}".to_vec()))
        .collect();
    let ids: Vec<String> = after.iter().map(|e| e.id.clone()).collect();
    running.inject("in-a", after).await.unwrap();
    running.idle_within(LIMIT).await.unwrap();
    let out = handled_by(&running, "out").await;
    for id in ids {
        assert_eq!(out[&id], ["9"], "handled by the promoted version");
    }
    running.stop().await.unwrap();
}
