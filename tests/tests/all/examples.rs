//! Every example config loads and validates, so that none rots: the demo
//! (`examples/orders`) and the service (`examples/service`, Redis, admin
//! API, a shadow, grants, with its systemd unit).

#[test]
fn every_example_config_loads() {
    let examples = runnel_tests::repo_root().join("examples");
    let mut loaded = Vec::new();
    for dir in std::fs::read_dir(&examples).unwrap() {
        let config = dir.unwrap().path().join("runnel.toml");
        if !config.exists() {
            continue;
        }
        let parsed = runnel::config::Config::load(&config)
            .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
        assert!(!parsed.plugins.is_empty(), "{}", config.display());
        loaded.push(config);
    }
    assert!(loaded.len() >= 2, "found {loaded:?}");
    // The service's unit starts the binary on the config it ships with.
    let unit = std::fs::read_to_string(examples.join("service/runnel.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/runnel run --config /etc/runnel/runnel.toml"));
    assert!(unit.contains("DynamicUser=yes") && unit.contains("ProtectSystem=strict"));
}
