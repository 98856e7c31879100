//! A tenant's quota account on this host, shared by all its components' calls: calls in
//! flight, linear memory summed over its live instances, and its share of the CPU. Reaching a
//! quota holds back or fails that tenant's calls, never another tenant's.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytesize::ByteSize;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::fair_share::Share;

/// One tenant's account.
pub struct Account {
    /// The tenant's name.
    pub tenant: Arc<str>,
    /// Its calls in flight across its components (`None`: only each component's own limit).
    in_flight: Option<Arc<Semaphore>>,
    /// Linear memory its live instances hold.
    pub memory: MemoryAccount,
    /// Its turns at the CPU for long calls.
    pub share: Share,
}

impl Account {
    /// An account for `tenant`: at most `max_in_flight` calls, `max_memory` bytes of linear
    /// memory (each unlimited when `None`), CPU turns through `share`; `memory_gauge` shows
    /// the memory held.
    pub fn new(
        tenant: &str,
        max_in_flight: Option<usize>,
        max_memory: Option<u64>,
        share: Share,
        memory_gauge: IntGauge,
    ) -> Account {
        Account {
            tenant: tenant.into(),
            in_flight: max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
            memory: MemoryAccount {
                tenant: tenant.into(),
                used: AtomicU64::new(0),
                max: max_memory,
                gauge: memory_gauge,
            },
            share,
        }
    }

    /// A call's place in the tenant's in-flight quota if one is free now; `Some(None)` when the
    /// tenant has no such quota, `None` when it is full.
    pub fn try_call(&self) -> Option<Option<OwnedSemaphorePermit>> {
        match &self.in_flight {
            None => Some(None),
            Some(slots) => slots.clone().try_acquire_owned().ok().map(Some),
        }
    }

    /// Waits for a place in the tenant's in-flight quota (none needed without one).
    pub async fn call(&self) -> Option<OwnedSemaphorePermit> {
        let slots = self.in_flight.as_ref()?;
        Some((slots.clone().acquire_owned().await).expect("the tenant's semaphore is never closed"))
    }

    /// Calls the tenant may still start now (`None`: no quota).
    pub fn in_flight_free(&self) -> Option<usize> {
        self.in_flight.as_ref().map(|s| s.available_permits())
    }
}

/// Linear memory held by a tenant's live instances, capped by its `max_memory`.
pub struct MemoryAccount {
    tenant: Arc<str>,
    used: AtomicU64,
    max: Option<u64>,
    gauge: IntGauge,
}

impl MemoryAccount {
    /// Counts `bytes` more, unless that would pass the quota.
    pub fn grow(&self, bytes: u64) -> Result<(), QuotaExceeded> {
        let result = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let total = used.checked_add(bytes)?;
                self.max.is_none_or(|max| total <= max).then_some(total)
            });
        match result {
            Ok(before) => {
                self.gauge.set((before + bytes) as i64);
                Ok(())
            }
            Err(used) => Err(QuotaExceeded {
                tenant: self.tenant.clone(),
                used,
                asked: bytes,
                max: self.max.unwrap_or(u64::MAX),
            }),
        }
    }

    /// Counts `bytes` fewer (an instance gone).
    pub fn shrink(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.gauge.set(before.saturating_sub(bytes) as i64);
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The quota, if any.
    pub fn max(&self) -> Option<u64> {
        self.max
    }
}

/// A call that would take its tenant past its memory quota; it fails, and the message is
/// retried (it is the tenant's condition, not the message's).
#[derive(Debug)]
pub struct QuotaExceeded {
    tenant: Arc<str>,
    used: u64,
    asked: u64,
    max: u64,
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tenant {}'s memory quota: its instances hold {} of its max_memory {}, and this one \
             asked for {} more",
            self.tenant,
            ByteSize(self.used).display().iec(),
            ByteSize(self.max).display().iec(),
            ByteSize(self.asked).display().iec(),
        )
    }
}

impl std::error::Error for QuotaExceeded {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fair_share::Gate;

    fn account(max_memory: Option<u64>) -> Account {
        let gauge = IntGauge::new("m", "m").unwrap();
        Account::new("a", Some(2), max_memory, Gate::new(1).share(1, 1), gauge)
    }

    #[test]
    fn memory_is_counted_up_to_the_quota_and_given_back() {
        let account = account(Some(100));
        account.memory.grow(60).unwrap();
        let error = account.memory.grow(50).unwrap_err().to_string();
        assert!(error.contains("tenant a's memory quota"), "{error}");
        assert_eq!(account.memory.used(), 60, "a refused grow counts nothing");
        account.memory.grow(40).unwrap();
        account.memory.shrink(60);
        assert_eq!(account.memory.used(), 40);
        account.memory.grow(60).unwrap();
    }

    #[test]
    fn in_flight_is_capped_when_the_tenant_has_a_quota() {
        let account = account(None);
        let first = account.try_call().expect("free");
        let _second = account.try_call().expect("free");
        assert!(account.try_call().is_none(), "two is the quota");
        drop(first);
        assert!(account.try_call().is_some());
        assert!(account.memory.grow(u64::MAX / 2).is_ok(), "no memory quota");
    }
}
