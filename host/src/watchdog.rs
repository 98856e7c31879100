//! Watching a bound consumer: keeps the pending and ack-pending gauges current, and declares
//! the pull stalled when the server holds messages for us, the host has free slots, and still
//! nothing has arrived for a while (a pull lost across a reconnect or leader change).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::consumer::Binding;

/// How often the consumer's state is read.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Idle time, with messages pending and slots free, after which the pull counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(15);

/// When the pull loop last received a message.
pub struct Activity {
    since: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Activity starting now.
    pub fn new() -> Self {
        Activity {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records a received message.
    pub fn touch(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// True when the pull should be re-issued.
pub fn is_stalled(pending: u64, idle: Duration, free_slots: usize) -> bool {
    pending > 0 && free_slots > 0 && idle >= STALL_AFTER
}

/// Runs until `stop`; cancels `stalled` (once) when the pull looks stuck.
pub async fn watch(
    binding: Arc<Binding>,
    mut consumer: PullConsumer,
    slots: Arc<Semaphore>,
    activity: Arc<Activity>,
    stalled: CancellationToken,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let Ok(info) = consumer.info().await else {
            continue;
        };
        binding.metrics.pending.set(info.num_pending as i64);
        binding.metrics.ack_pending.set(info.num_ack_pending as i64);
        if is_stalled(info.num_pending, activity.idle(), slots.available_permits()) {
            tracing::warn!(handler = %binding.name, pending = info.num_pending, "pull stalled; re-issuing it");
            stalled.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_only_with_work_waiting_room_to_take_it_and_a_long_silence() {
        assert!(is_stalled(5, STALL_AFTER, 1));
        assert!(!is_stalled(0, STALL_AFTER * 2, 1), "nothing pending");
        assert!(
            !is_stalled(5, STALL_AFTER * 2, 0),
            "every slot busy: not pulling is right"
        );
        assert!(
            !is_stalled(5, STALL_AFTER / 2, 1),
            "not silent for long enough"
        );
    }

    #[test]
    fn activity_measures_idle_time() {
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(activity.idle() >= Duration::from_millis(20));
        activity.touch();
        assert!(activity.idle() < Duration::from_millis(20));
    }
}
