//! Watching a lane's pull: keeps the consumer's pending and ack-pending gauges current, and
//! declares the pull stalled when the server holds messages for us, the lane has room for
//! more, and still nothing has arrived for a while (a pull lost across a reconnect or leader
//! change).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::binding::Binding;
use crate::heap;

/// How often the consumer's state is read while the lane receives messages.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How often once the lane has been silent for [`STALL_AFTER`]: a thousand idle handlers
/// would otherwise ask the server for their consumers' state a thousand times a second.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Idle time, with messages pending and slots free, after which the pull counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(15);

/// The messages a lane has received: a plain counter, so counting costs the lane no clock
/// read.
#[derive(Default)]
pub struct Activity {
    received: AtomicU64,
}

impl Activity {
    /// Counts a received message.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long a counter has stood still, from readings taken now and then.
struct Silence {
    count: u64,
    since: Instant,
}

impl Silence {
    fn new(now: Instant) -> Self {
        Silence {
            count: 0,
            since: now,
        }
    }

    /// Takes a reading of `count` at `now`; returns how long it has not changed.
    fn observe(&mut self, count: u64, now: Instant) -> Duration {
        if count != self.count {
            self.count = count;
            self.since = now;
        }
        now.saturating_duration_since(self.since)
    }
}

/// True when the pull should be re-issued.
pub fn is_stalled(pending: u64, idle: Duration, free_slots: usize) -> bool {
    pending > 0 && free_slots > 0 && idle >= STALL_AFTER
}

/// Runs until `pull` is cancelled; cancels it when the pull looks stuck, so the lane rebinds.
pub async fn watch(
    binding: Arc<Binding>,
    mut consumer: PullConsumer,
    slots: Arc<Semaphore>,
    activity: Arc<Activity>,
    pull: CancellationToken,
) {
    let mut silence = Silence::new(Instant::now());
    let mut drift = String::new();
    let mut next = Duration::ZERO;
    loop {
        tokio::select! {
            _ = pull.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
        let version = binding.version();
        (version.dispatcher.env().host_log).report_dropped(&binding.name);
        let dropped = version.dispatcher.trim_idle(version.warm_idle);
        if dropped > 0 {
            tracing::debug!(handler = %binding.name, dropped, "warm instances unused for warm_idle dropped");
        }
        binding.metrics.warm.set(version.dispatcher.warm() as i64);
        drop(version);
        if binding.give_back_idle_memory().await || dropped > 0 {
            heap::release_freed();
        }
        let idle = silence.observe(activity.received.load(Ordering::Relaxed), Instant::now());
        next = check_after(idle);
        let Ok(info) = consumer.info().await else {
            binding.metrics.pending.set(f64::NAN);
            binding.metrics.ack_pending.set(f64::NAN);
            continue;
        };
        binding.metrics.pending.set(info.num_pending as f64);
        binding.metrics.ack_pending.set(info.num_ack_pending as f64);
        binding.metrics.redelivered.set(info.num_redelivered as f64);
        if let Some(declared) = &binding.declared {
            report_drift(&binding, declared, &info.config, &mut drift);
        }
        // A call needs a slot in its lane and one in its tenant's quota.
        let tenant_free = binding
            .tenant
            .account
            .in_flight_free()
            .unwrap_or(usize::MAX);
        let free = slots.available_permits().min(tenant_free);
        if is_stalled(info.num_pending, idle, free) {
            tracing::warn!(handler = %binding.name, pending = info.num_pending, "pull stalled; re-issuing it");
            pull.cancel();
            return;
        }
    }
}

/// When to read the consumer's state next, after `idle` without a message.
fn check_after(idle: Duration) -> Duration {
    if idle >= STALL_AFTER {
        IDLE_CHECK_EVERY
    } else {
        CHECK_EVERY
    }
}

/// Sets the drift gauge and logs when the consumer's changes by hand differ from `last`.
fn report_drift(
    binding: &Binding,
    declared: &stream_init::spec::ConsumerSpec,
    actual: &async_nats::jetstream::consumer::Config,
    last: &mut String,
) {
    let changes = stream_init::plan::consumer_drift(declared, actual);
    binding.metrics.drift.set(changes.len() as i64);
    let now: Vec<String> = (changes.iter())
        .map(|c| format!("{} {} (the spec says {})", c.field, c.old, c.new))
        .collect();
    let now = now.join(", ");
    if now != *last {
        if now.is_empty() {
            tracing::info!(handler = %binding.name, consumer = %binding.consumer, "consumer matches the streams spec again");
        } else {
            tracing::warn!(handler = %binding.name, stream = %binding.stream, consumer = %binding.consumer, changes = %now, "consumer changed by hand since the streams spec was applied; stream-init apply (or a host restart) restores it");
        }
        *last = now;
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
    fn a_silent_lane_is_checked_less_often() {
        assert_eq!(check_after(Duration::ZERO), CHECK_EVERY);
        assert_eq!(check_after(STALL_AFTER / 2), CHECK_EVERY);
        assert_eq!(check_after(STALL_AFTER), IDLE_CHECK_EVERY);
        assert!(
            IDLE_CHECK_EVERY < STALL_AFTER,
            "a stall is still seen soon after"
        );
    }

    #[test]
    fn silence_is_the_time_since_the_count_last_moved() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut silence = Silence::new(start);
        assert_eq!(silence.observe(0, at(4)), Duration::from_secs(4));
        assert_eq!(
            silence.observe(3, at(6)),
            Duration::ZERO,
            "messages arrived"
        );
        assert_eq!(silence.observe(3, at(20)), Duration::from_secs(14));
        assert_eq!(silence.observe(4, at(21)), Duration::ZERO);
    }
}
