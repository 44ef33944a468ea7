//! Per-invocation memory limit, with the facts needed to classify a failure.
//!
//! When a function asks for more memory than its limit, the grow fails and
//! the guest's allocator usually aborts with a generic trap. Remembering
//! that a grow was refused lets the runtime report "out of memory" instead.

use wasmtime::ResourceLimiter;

pub struct MemoryLimiter {
    limit: u64,
    /// Largest linear-memory size reached, for the invocation log line.
    pub peak: u64,
    /// Whether a grow was refused because of the limit.
    pub refused: bool,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            peak: 0,
            refused: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired as u64);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any
        // real function and keeps a runaway one from eating host memory.
        Ok(desired <= 1_000_000)
    }
}
