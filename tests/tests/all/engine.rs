//! The plugin engine: the compiled-artifact cache and instance reuse.

use runnel_tests::guests;
use std::sync::Arc;
use std::time::Duration;

use runnel::config::EngineConfig;
use runnel::event::Event;
use runnel::handler::{Handler, Verdict};
use runnel::plugin::{PluginEngine, PluginSettings, WasmPlugin};
use runnel::routes::Routes;
use runnel_tests::plugin;

fn engine(cache: &std::path::Path) -> PluginEngine {
    PluginEngine::new(&EngineConfig {
        cache_dir: Some(cache.to_path_buf()),
        max_instances: Some(8),
        ..EngineConfig::default()
    })
    .unwrap()
}

fn settings(reuse: u32) -> PluginSettings {
    PluginSettings::ungranted(reuse, Duration::from_secs(5))
}

#[test]
fn a_second_load_of_the_same_file_comes_from_the_disk_cache() {
    let cache = runnel_tests::scratch("cache");
    let first = engine(&cache)
        .compile_file(&plugin(guests::LOGGER))
        .unwrap();
    assert!(!first.cached);
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one artifact, named by content hash");
    let name = files[0]
        .as_ref()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    assert!(name.starts_with(&first.sha256), "{name}");

    // A new engine, as after a restart.
    let second = engine(&cache)
        .compile_file(&plugin(guests::LOGGER))
        .unwrap();
    assert!(second.cached);
    assert_eq!(second.sha256, first.sha256);

    // Another file is another artifact.
    let other = engine(&cache).compile_file(&plugin(guests::NOOP)).unwrap();
    assert!(!other.cached);
    assert_ne!(other.sha256, first.sha256);
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_damaged_cache_entry_is_recompiled() {
    let cache = runnel_tests::scratch("cache");
    engine(&cache).compile_file(&plugin(guests::NOOP)).unwrap();
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"damaged").unwrap();
    let again = engine(&cache).compile_file(&plugin(guests::NOOP)).unwrap();
    assert!(!again.cached, "a damaged artifact must not be trusted");
    std::fs::remove_dir_all(&cache).unwrap();
}

#[tokio::test]
async fn warm_instances_are_reused_up_to_the_limit_and_dropped_after_a_trap() {
    let cache = runnel_tests::scratch("cache");
    let engine = engine(&cache);
    let trapper = WasmPlugin::load(
        &engine,
        "trapper",
        &plugin(guests::TRAPPER),
        settings(3),
        runnel::plugin::Links::routes_only(Arc::new(Routes::default())),
    )
    .unwrap();
    let ok = Event::new("x", "fine");
    assert_eq!(trapper.handle(&ok).await.verdict, Verdict::Done);
    assert_eq!(trapper.instances_alive(), 1, "kept warm after a success");
    assert_eq!(trapper.handle(&ok).await.verdict, Verdict::Done);
    assert_eq!(trapper.instances_alive(), 1, "the same instance was reused");
    assert_eq!(trapper.handle(&ok).await.verdict, Verdict::Done);
    assert_eq!(
        trapper.instances_alive(),
        0,
        "retired after reuse_instance = 3 events"
    );

    assert_eq!(trapper.handle(&ok).await.verdict, Verdict::Done);
    assert_eq!(trapper.instances_alive(), 1);
    let trapped = trapper.handle(&Event::new("x", "trap")).await.verdict;
    assert!(matches!(trapped, Verdict::Trap(_)), "{trapped:?}");
    assert_eq!(
        trapper.instances_alive(),
        0,
        "a trapped instance is never reused"
    );
    assert_eq!(
        trapper.handle(&ok).await.verdict,
        Verdict::Done,
        "a fresh instance serves the next event"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}
