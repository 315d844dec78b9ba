//! `runnel new`: every language's project is complete, and the Rust, C, Go
//! and Python ones build with their own build script into a plugin that
//! `runnel test` and the README's `runnel run` line run. (The JavaScript one needs `npm install` in the new
//! project; its toolchain is exercised by the conformance test.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{run_input, runnel, summary_row, text};

use runnel_tests::repo_root;

fn scratch() -> PathBuf {
    runnel_tests::scratch("new")
}

/// Where `scripts/build-guests.sh` installs the toolchains.
fn toolchains() -> PathBuf {
    std::env::var("RUNNEL_TOOLCHAINS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/runnel/toolchains")
        })
}

/// The toolchains `scripts/build-guests.sh` installs, first on PATH.
fn toolchain_path() -> String {
    let tools = toolchains();
    format!(
        "{}:{}:{}:{}",
        tools.join("py-venv/bin").display(),
        tools.join("wit-bindgen-0.63.0-c-go/bin").display(),
        tools.join("go-1.27.3/bin").display(),
        std::env::var("PATH").unwrap()
    )
}

fn new_project(lang: &str, name: &str, dir: &Path) -> PathBuf {
    let out = runnel(&["new", "--lang", lang, name, "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let project = dir.join(name);
    for file in [
        "README.md",
        "build.sh",
        "events.ndjson",
        "runnel.toml",
        "wit/world.wit",
    ] {
        assert!(project.join(file).exists(), "{lang}: {file} missing");
    }
    project
}

/// Builds with the project's own script and runs its sample events.
fn build_and_test(project: &Path, name: &str, env: &[(&str, &str)]) {
    let build = Command::new(project.join("build.sh"))
        .envs(env.iter().copied())
        .env("PATH", toolchain_path())
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{} build failed:\n{}\n{}",
        project.display(),
        text(&build.stdout),
        text(&build.stderr)
    );
    let wasm = project.join(format!("{name}.wasm"));
    let out = runnel(&[
        "test",
        wasm.to_str().unwrap(),
        "--events",
        project.join("events.ndjson").to_str().unwrap(),
    ]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for line in [
        "  attempt 1: ok",
        "    log info: greeting Ada",
        r#"    emit greeted: {"hello":"Ada"}"#,
        r#"  attempt 1: reject: a greet event needs a "name""#,
        "  dead-lettered after 1 attempt\n",
        "event 3: something-else",
    ] {
        assert!(report.contains(line), "{name}: {line:?} missing:\n{report}");
    }
    // The project's README runs its events through a host, from the
    // project's directory: every sample event has a route, the malformed
    // greeting is dead-lettered, the rest handled.
    let (stdout, _) = run_input(project, "runnel.toml", "events.ndjson");
    let row = summary_row(&stdout, name);
    assert_eq!(
        (row[0], row[3]),
        (2, 1),
        "{name}: handled, dead-lettered:\n{stdout}"
    );
}

#[test]
fn new_refuses_bad_names_and_existing_directories() {
    let dir = scratch();
    let out = runnel(&[
        "new",
        "--lang",
        "rust",
        "Bad_Name",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not a plugin name"));
    new_project("js", "twice", &dir);
    let out = runnel(&[
        "new",
        "--lang",
        "js",
        "twice",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert!(dir.join("twice/package.json").exists() && dir.join("twice/runnel.js").exists());
}

#[test]
fn a_new_rust_project_builds_and_runs() {
    let dir = scratch();
    let project = new_project("rust", "hello-rust", &dir);
    // Reuse the plugins' lock file and build directory: same dependency
    // versions, already compiled, and no registry lookups.
    std::fs::copy(
        repo_root().join("plugins/Cargo.lock"),
        project.join("Cargo.lock"),
    )
    .unwrap();
    let target = repo_root().join("plugins/target");
    build_and_test(
        &project,
        "hello-rust",
        &[("CARGO_TARGET_DIR", target.to_str().unwrap())],
    );
}

#[test]
fn a_new_c_project_builds_and_runs() {
    let dir = scratch();
    let project = new_project("c", "hello-c", &dir);
    build_and_test(&project, "hello-c", &[]);
}

#[test]
fn a_new_go_project_builds_and_runs() {
    let dir = scratch();
    let project = new_project("go", "hello-go", &dir);
    // The toolchains' Go build cache (std for wasip1 already compiled) and
    // no module proxy: the project's own build.sh must not need one.
    let cache = toolchains().join("go-cache");
    build_and_test(
        &project,
        "hello-go",
        &[("GOCACHE", cache.to_str().unwrap()), ("GOFLAGS", "")],
    );
}

#[test]
fn a_new_python_project_builds_and_runs() {
    let dir = scratch();
    let project = new_project("python", "hello-python", &dir);
    build_and_test(&project, "hello-python", &[]);
}
