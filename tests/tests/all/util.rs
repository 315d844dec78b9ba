//! What the modules of this binary share that needs the binary itself
//! (the path of the `runnel` under test is known only here).

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// Runs the `runnel` command under test with `args`, logging warnings only.
pub fn runnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel-under-test"))
        .args(args)
        .env("RUNNEL_LOG", "warn")
        .output()
        .expect("running the CLI")
}

/// `runnel run --config CONFIG --input EVENTS --exit-when-idle` from the
/// directory `dir` (the paths may be relative to it), logging at `info`;
/// asserts it succeeded and returns its stdout and stderr.
pub fn run_input(
    dir: &std::path::Path,
    config: impl AsRef<std::ffi::OsStr>,
    events: impl AsRef<std::ffi::OsStr>,
) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runnel-under-test"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--input")
        .arg(events)
        .arg("--exit-when-idle")
        .current_dir(dir)
        .env("RUNNEL_LOG", "info")
        .output()
        .expect("running the CLI");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "runnel run failed: {stderr}");
    (stdout, stderr)
}

/// The figures of a plugin's row in `runnel run`'s summary: handled,
/// retried, failed, dead-lettered, skipped, deduplicated.
pub fn summary_row(stdout: &str, plugin: &str) -> Vec<u64> {
    stdout
        .lines()
        .find(|l| l.starts_with(plugin))
        .unwrap_or_else(|| panic!("no row for {plugin}: {stdout}"))
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `runnel` with `args` and `stdin`, and asserts that it succeeded
/// (the error names the command and its stderr).
pub fn runnel_ok(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel-under-test"))
        .args(args)
        .env("RUNNEL_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "runnel {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// How long the helpers below wait.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The admin API's address, from the host's "admin API listening on
/// http://..." log line.
pub fn admin_url(process: &mut runnel_tests::Process) -> String {
    let line = process.wait_for("admin API listening on", LIMIT);
    let at = line.find("http://").unwrap();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

/// Polls `done` (a blocking check) until it holds, failing after a minute.
pub fn poll(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + LIMIT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Writes `text` as `runnel.toml` in a scratch directory of its own
/// (named after `name`), and returns its path.
pub fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = runnel_tests::scratch(name);
    let path = dir.join("runnel.toml");
    std::fs::write(&path, text).unwrap();
    path
}
