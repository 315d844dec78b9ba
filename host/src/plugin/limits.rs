//! The per-instance resource limiter, which remembers what it refused.
//!
//! A guest that asks for more memory than `memory_mb` gets a failed
//! `memory.grow`, and most guests then abort (Rust's allocation failure, a
//! C `abort()`): the trap alone reads "unreachable ... in abort", the same
//! as a panic. The limiter knows better, so the failure reason names the
//! limit that was hit.

use wasmtime::{ResourceLimiter, StoreLimits};

/// wasmtime's [`StoreLimits`], plus the first refusal of the current call.
pub struct Limits {
    inner: StoreLimits,
    memory_bytes: usize,
    /// What was refused during the current call, in words; cleared when a
    /// call begins.
    pub refused: Option<String>,
}

impl Limits {
    /// Linear memory capped at `memory_bytes` per instance.
    pub fn new(memory_bytes: usize) -> Limits {
        Limits {
            inner: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .build(),
            memory_bytes,
            refused: None,
        }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if !allowed && self.refused.is_none() {
            self.refused = Some(format!(
                "memory limit: growing linear memory from {} to {} MiB was refused (memory_mb = {})",
                current >> 20,
                desired.div_ceil(1 << 20),
                self.memory_bytes >> 20
            ));
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.inner.table_growing(current, desired, maximum)?;
        if !allowed && self.refused.is_none() {
            self.refused = Some(format!(
                "table limit: growing a table from {current} to {desired} elements was refused"
            ));
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
