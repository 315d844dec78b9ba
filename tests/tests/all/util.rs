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
