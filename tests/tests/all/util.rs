//! What the modules of this binary share that needs the binary itself
//! (the path of the `runnel` under test is known only here).

use std::process::{Command, Output};

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
