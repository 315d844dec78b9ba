//! One wasmtime [`Engine`] per process, and the compiled-artifact cache.
//!
//! Compiling a component is the slow step (seconds for a Python plugin), so
//! each plugin is compiled once, and the machine code is cached on disk under
//! a key made of the file's SHA-256 and the engine's compatibility hash:
//! a restart with unchanged plugins loads in milliseconds.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::EngineConfig;

/// How often the epoch advances. A running call is checked at every tick:
/// it yields its thread, and traps once past its time limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The largest linear memory any plugin may be configured with.
pub const MAX_MEMORY_BYTES: usize = 4 << 30;

/// Bytes of a linear memory or table that a pooled slot keeps resident and
/// resets by copying when its instance ends (see [`PluginEngine::new`]).
/// A Rust no-op touches a few pages; a Python plugin far more, and the
/// part above this is decommitted as before.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// The shared engine, its epoch ticker and the artifact cache.
pub struct PluginEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
    fuel: bool,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A compiled component, with the hash that identifies its version.
pub struct Compiled {
    pub component: Component,
    /// SHA-256 of the `.wasm` file, hex.
    pub sha256: String,
    /// Whether it came from the on-disk cache.
    pub cached: bool,
}

impl PluginEngine {
    pub fn new(config: &EngineConfig) -> anyhow::Result<Self> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel);
        let n = config
            .max_instances
            .unwrap_or(crate::config::DEFAULT_MAX_INSTANCES);
        let mut pool = PoolingAllocationConfig::default();
        // Components built by language toolchains are made of several core
        // instances, memories and tables (a Python one has dozens), so the
        // per-component limits are generous and the totals scale with `n`.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(64)
            .table_elements(200_000)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(4 << 20)
            .max_memory_size(MAX_MEMORY_BYTES);
        // Where the kernel can say which pages an instance dirtied (Linux's
        // PAGEMAP_SCAN, 6.7 and later), a slot is reset for its next
        // instance by copying back just those, up to a size, instead of
        // `madvise`-ing it all away: that unmaps pages other cores may have
        // cached, and the TLB shootdown it sends them made a fresh instance
        // per event cost ~4x with two worker threads what it cost with one
        // (BENCHMARKS.md, session 11). A working set above the size is still
        // decommitted beyond it. Without the scan, keeping pages resident
        // would mean zeroing the whole size each time, so it stays off.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
                .table_keep_resident(KEEP_RESIDENT_BYTES);
        }
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm)
            .map_err(anyhow::Error::from)
            .context("configuring the wasm engine")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("runnel-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .context("starting the epoch ticker")?;

        let cache_dir = config.cache_dir.clone().or_else(default_cache_dir);
        Ok(PluginEngine {
            engine,
            cache_dir,
            ticker_stop,
            fuel: config.fuel,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, checks and compiles a component file (or loads it from cache).
    pub fn compile_file(&self, path: &Path) -> anyhow::Result<Compiled> {
        let bytes =
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        self.compile(&bytes)
            .with_context(|| path.display().to_string())
    }

    /// Compiles component bytes, through the cache when there is one.
    /// Whether stores count fuel, so that plugins may have a fuel budget.
    pub fn counts_fuel(&self) -> bool {
        self.fuel
    }

    pub fn compile(&self, bytes: &[u8]) -> anyhow::Result<Compiled> {
        check_component_header(bytes)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let cached_path = self.cache_dir.as_ref().map(|dir| {
            let mut h = DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            dir.join(format!("{sha256}-{:016x}.cwasm", h.finish()))
        });
        if let Some(path) = &cached_path {
            if path.exists() {
                // SAFETY: the file was written by `precompile_component` of an
                // engine with the same compatibility hash (it is in the name),
                // in a directory this process owns; a damaged file fails to
                // deserialize and is recompiled below.
                match unsafe { Component::deserialize_file(&self.engine, path) } {
                    Ok(component) => {
                        return Ok(Compiled {
                            component,
                            sha256,
                            cached: true,
                        })
                    }
                    Err(e) => {
                        tracing::warn!("ignoring damaged cache entry {}: {e}", path.display())
                    }
                }
            }
        }
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| anyhow::anyhow!("invalid component: {}", first_line(&e)))?;
        // SAFETY: the bytes were produced just now by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }?;
        if let Some(path) = &cached_path {
            if let Err(e) = write_atomically(path, &compiled) {
                tracing::warn!("cannot cache compiled plugin at {}: {e}", path.display());
            }
        }
        Ok(Compiled {
            component,
            sha256,
            cached: false,
        })
    }
}

/// The first line of an error chain: what went wrong, without a backtrace.
fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Tells a component from a core module or a file that is not wasm at all,
/// because wasmtime's own message for those is hard to act on.
fn check_component_header(bytes: &[u8]) -> anyhow::Result<()> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no \\0asm header)");
    }
    if bytes[6..8] == [0, 0] {
        bail!(
            "a core WebAssembly module, not a component: build for wasm32-wasip2, \
             or wrap it with `wasm-tools component new`"
        );
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Unique per writer: tests and parallel loads of one plugin may race.
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("runnel"))
}
