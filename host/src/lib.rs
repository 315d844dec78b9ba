//! Runnel runs sandboxed WebAssembly event handlers over pub/sub streams.
//!
//! # Layout
//!
//! An event's path, in module order:
//!
//! - [`commands::input`] turns NDJSON lines into events to inject (`runnel run --input`).
//! - [`publisher`] appends events to the streams that [`routes`] pick by name.
//! - [`broker`] is the backend seam, shaped like Redis Streams; the in-memory
//!   backend is [`broker::memory`], the real one [`broker::redis`].
//! - [`subscriber`] owns delivery semantics, once for every backend: a read
//!   loop feeding long-lived delivery lanes, attempts, retries with backoff,
//!   the error handler, dead letters, batched acks.
//! - [`handler`] is what a subscriber calls: a wasm plugin or native code.
//! - [`kv`] is plugins' key-value state: a call's reads and buffered
//!   writes, committed with the event's acknowledgement by the broker.
//! - [`plugin`] runs WebAssembly components: engine, artifact cache, sandbox,
//!   warm instances, and the host side of the WIT contract.
//! - [`dead_letter`] defines what a dead-letter entry holds, and where a
//!   replay of it goes.
//!
//! Around them:
//!
//! - [`event`] is the envelope and its JSON wire format (the Go seed's).
//! - [`config`] reads and checks `runnel.toml`.
//! - [`runtime`] wires a config into running subscribers.
//! - [`stats`] counts outcomes per plugin.
//! - [`errors`] prints an error as one line, each cause once.
//! - [`workers`] picks the async runtime's default worker threads.
//! - [`cli`] is the `runnel` command, a thin dispatcher: one function per
//!   subcommand, grouped as the admin client (`runnel plugins`), the plugin
//!   author's (`new`, `test`, `check`) and the operator's (`emit`, `dlq`); `bench` is `runnel bench`, behind the `bench` feature (on
//!   by default) since a program embedding the library does not need it.
//! - [`commands`] holds the commands beside the service:
//!   [`commands::harness`] is `runnel test` and [`commands::scaffold`] is
//!   `runnel new`, for plugin authors; [`commands::tools`] is `emit`, `dlq`
//!   and `replay`, for operators.
//!
//! Running as a service:
//!
//! - [`service`] is the lifecycle of `runnel run`: start, serve until told
//!   to stop, drain, report. Its modules:
//! - [`service::live`] is a plugin slot whose version can be swapped under
//!   load; [`service::reload`] compiles, vets and installs new versions
//!   (file watcher, admin API, config reload); [`service::shadow`] runs a
//!   candidate beside the live version on dry-run copies and compares.
//! - [`service::admin`] is the HTTP API; [`service::metrics`] renders
//!   Prometheus text. [`telemetry`] exports OpenTelemetry traces of
//!   deliveries and calls.

#[cfg(feature = "bench")]
pub mod bench;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dead_letter;
pub mod errors;
pub mod event;
pub mod handler;
pub mod kv;
pub mod outbound;
pub mod plugin;
pub mod publisher;
pub mod routes;
pub mod runtime;
pub mod service;
pub mod stats;
pub mod subscriber;
pub mod telemetry;
pub mod workers;
