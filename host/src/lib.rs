//! Runnel runs sandboxed WebAssembly event handlers over pub/sub streams.
//!
//! # Layout
//!
//! - [`event`]: the event envelope and its JSON wire format (the Go seed's).
//! - [`broker`]: the backend seam, shaped like Redis Streams;
//!   [`broker::memory`] is the embedded backend.
//! - [`publisher`] and [`routes`]: emitting events onto the streams their
//!   names route to.
//! - [`subscriber`]: delivery semantics, once for every backend: attempts,
//!   retries with backoff, the error handler, dead letters, batched acks.
//! - [`handler`]: what a subscriber calls, a plugin or native code.
//! - [`plugin`]: WebAssembly components: engine, artifact cache, sandbox,
//!   warm instances, and the host side of the WIT contract.
//! - [`dead_letter`]: what a dead-letter entry holds.
//! - [`config`]: `runnel.toml`.
//! - [`runtime`]: wires a config into running subscribers.
//! - [`input`]: events to inject, from NDJSON.
//! - [`stats`]: counters per plugin.

pub mod bench;
pub mod broker;
pub mod config;
pub mod dead_letter;
pub mod event;
pub mod handler;
pub mod input;
pub mod plugin;
pub mod publisher;
pub mod routes;
pub mod runtime;
pub mod stats;
pub mod subscriber;
