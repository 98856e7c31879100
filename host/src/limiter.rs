//! The per-store memory cap, and the store's share of its tenant's memory quota. A denied
//! `memory.grow` traps the guest with a typed error, so a memory breach is told apart from
//! other traps, and the instance's own cap from its tenant's quota.

use std::fmt;
use std::sync::Arc;

use prometheus::IntGauge;

use crate::quota::Account;

/// The error a call fails with when the guest tries to grow memory past its cap.
#[derive(Debug)]
pub struct MemoryLimitExceeded {
    /// Bytes the guest asked for.
    pub desired: usize,
    /// The cap in bytes.
    pub limit: usize,
}

impl fmt::Display for MemoryLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "memory limit exceeded: the guest asked for {} bytes, the cap is {}",
            self.desired, self.limit
        )
    }
}

impl std::error::Error for MemoryLimitExceeded {}

/// Caps every linear memory of a store at `limit` bytes and tables at a fixed size, and
/// counts the memory against the tenant's account until the store is dropped.
pub struct MemoryLimiter {
    limit: usize,
    account: Arc<Account>,
    /// The component's gauge of the memory its live instances hold.
    gauge: IntGauge,
    /// Bytes counted against the account (and in the gauge).
    held: u64,
}

/// Table elements one instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    /// A limiter allowing `limit` bytes per linear memory, counted against `account` and
    /// in `gauge`.
    pub fn new(limit: usize, account: Arc<Account>, gauge: IntGauge) -> Self {
        MemoryLimiter {
            limit,
            account,
            gauge,
            held: 0,
        }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        self.account.memory.shrink(self.held);
        self.gauge.sub(i64::try_from(self.held).unwrap_or(i64::MAX));
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                desired,
                limit: self.limit,
            }));
        }
        let more = desired.saturating_sub(current) as u64;
        self.account
            .memory
            .grow(more)
            .map_err(wasmtime::Error::new)?;
        self.held += more;
        self.gauge.add(i64::try_from(more).unwrap_or(i64::MAX));
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
