//! Every end-to-end test, in one test binary (one link of wasmtime and the
//! host rather than one per file, as ripgrep and wasmtime's own suites do).
//! Each module is one area; `tests/src` holds what they share. Run one area
//! with `cargo test -p runnel-tests --test all delivery::`.
//!
//! The tests of all modules run at once in this one process: none may set
//! environment variables or change the working directory, and each uses
//! streams, groups and keys of its own on the shared Redis.

mod cli;
mod cluster;
mod conformance;
mod contract;
mod dashboard;
mod delivery;
mod engine;
mod examples;
mod faults;
mod hot_reload;
mod keyvalue;
mod redis_cli;
mod redis_interop;
mod redis_processes;
mod scaffold;
mod service;
mod survival;
mod telemetry;
mod util;
