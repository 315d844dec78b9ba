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

/// The configs shown in the README are what Runnel reads: every ```toml
/// block parses and validates as a `runnel.toml` (fragments included: each
/// table is optional).
#[test]
fn every_config_shown_in_the_readme_is_valid() {
    let readme = std::fs::read_to_string(runnel_tests::repo_root().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 5, "found {} toml blocks", blocks.len());
    let wrong: Vec<String> = blocks
        .iter()
        .filter_map(|block| {
            let parsed = runnel::config::Config::parse(block, std::path::Path::new("README.md"));
            parsed.err().map(|e| format!("{e}\n{block}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "README configs that do not load:\n{}",
        wrong.join("\n---\n")
    );
}
