//! Builds the plugins in `plugins/` for wasm32-wasip2 before the tests
//! compile, the way wasmtime's `test-programs` hands guests to host tests:
//! the tests find them in `plugins/target/wasm32-wasip2/release` of their
//! checkout (`runnel_tests::plugin`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    for watched in ["plugins/Cargo.toml", "plugins/rust", "guest-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("plugins/target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings are for the host, not for wasm guests.
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        build.env_remove(var);
    }
    let status = build.status().expect("running cargo to build the plugins");
    assert!(
        status.success(),
        "building the plugins failed; is the target installed? `rustup target add wasm32-wasip2`"
    );
}
