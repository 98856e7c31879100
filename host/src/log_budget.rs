//! A rate limit on each component's log lines, so a guest, or a flood of failing calls each
//! logging its failure (a full stream refusing every publish, say), cannot drown the host's
//! log: at most [`LINES_PER_SECOND`] lines a second per component; the rest are dropped,
//! counted, and the count is reported with the next line that passes. The host's own lines
//! about each call (a failure, a dead letter, a refused request) have a budget of their own
//! per component, so a storm of failing calls cannot drown the log either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines one component may log per second.
pub const LINES_PER_SECOND: u64 = 100;

/// One component's budget, shared by all its calls.
#[derive(Debug, Default)]
pub struct LogBudget {
    /// The second (since the epoch) the count is for.
    second: AtomicU64,
    used: AtomicU64,
    dropped: AtomicU64,
}

/// Whether a line may be logged.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `dropped` lines were dropped since the last one logged.
    Log {
        /// Lines dropped before this one.
        dropped: u64,
    },
    /// Drop it (counted).
    Drop,
}

impl LogBudget {
    /// Takes one line from the budget of second `now` (seconds since the epoch).
    pub fn take(&self, now: u64) -> Verdict {
        let second = self.second.load(Ordering::Relaxed);
        if second != now
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            Verdict::Log {
                dropped: self.dropped.swap(0, Ordering::Relaxed),
            }
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Verdict::Drop
        }
    }
}

impl LogBudget {
    /// Logs how many host lines about `component`'s calls were dropped since the last report,
    /// if any: called now and then, so that drops at the end of a storm are reported too.
    pub fn report_dropped(&self, component: &str) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                component,
                dropped,
                "host log lines about this component's calls dropped: over {LINES_PER_SECOND} a second"
            );
        }
    }

    /// Whether the host may log a line about a call of `component` now. When earlier lines
    /// were dropped, logs how many first.
    pub fn admit(&self, component: &str) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        match self.take(now) {
            Verdict::Drop => false,
            Verdict::Log { dropped } => {
                if dropped > 0 {
                    tracing::warn!(
                        component,
                        dropped,
                        "host log lines about this component's calls dropped: over {LINES_PER_SECOND} a second"
                    );
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_dropped_and_counted_until_the_next_second() {
        let budget = LogBudget::default();
        for _ in 0..LINES_PER_SECOND {
            assert_eq!(budget.take(7), Verdict::Log { dropped: 0 });
        }
        assert_eq!(budget.take(7), Verdict::Drop);
        assert_eq!(budget.take(7), Verdict::Drop);
        assert_eq!(budget.take(8), Verdict::Log { dropped: 2 }, "a new second");
        assert_eq!(budget.take(8), Verdict::Log { dropped: 0 });
    }
}
