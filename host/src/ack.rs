//! What to tell JetStream about a message, given what became of it (the handler's outcome, or
//! why it never reached the handler) and where it is in its delivery budget, and the metric
//! label it is counted under. Pure: no I/O, so every path of the failure model is unit-tested
//! here.

use std::time::Duration;

use crate::dispatch::{Failure, Outcome};
use crate::metrics::outcome;

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The handler ran: its outcome.
    Handled(Outcome),
    /// The payload was over the handler's `max_message_size`; the handler never ran.
    Oversize {
        /// The payload's size in bytes.
        size: usize,
        /// The handler's limit in bytes.
        limit: usize,
    },
    /// The subject or headers could not be read intact (why); the handler never ran.
    Unreadable(String),
}

impl Verdict {
    /// The label the delivery is counted under in `jetwasm_messages_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Handled(Outcome::Ack) => outcome::ACK,
            Verdict::Handled(Outcome::Nak(_)) => outcome::NAK,
            Verdict::Handled(Outcome::Term(_)) => outcome::TERM,
            Verdict::Handled(Outcome::Failed(failure)) => failure.kind(),
            Verdict::Oversize { .. } => outcome::OVERSIZE,
            Verdict::Unreadable(_) => outcome::UNREADABLE,
        }
    }
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Tell JetStream this.
    Settle(Action),
    /// Make the call again where it is, keeping the message in progress: the host had no room
    /// for it (its instance pool was full), which is neither the handler's failure nor a
    /// reason to use up one of the message's deliveries.
    RetryInPlace,
}

/// The JetStream action for one delivery: the whole plan, carried out without deciding
/// anything more.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Acknowledge; with `confirm`, wait for the server to confirm it.
    Ack {
        /// Wait for the server's confirmation (the handler's `confirm_acks`).
        confirm: bool,
    },
    /// Redeliver after this delay (immediately when `None`).
    Nak(Option<Duration>),
    /// Write a dead-letter record, then terminate.
    DeadLetter(DeadLetterPlan),
}

/// How a message is dead-lettered.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterPlan {
    /// Why, as the record says.
    pub reason: String,
    /// The pauses between attempts at writing the record.
    pub retries: RetrySchedule,
    /// If it cannot be written after those: nak with this delay, so the message comes back
    /// (never reached at the last delivery, where the retries do not end).
    pub if_unwritten: Duration,
}

/// Attempts at writing a dead letter when JetStream will deliver the message again.
pub const DEAD_LETTER_ATTEMPTS: u32 = 6;

/// The pauses between attempts at writing a dead-letter record: 250 ms, doubling up to 4 s
/// (about 8 s for [`DEAD_LETTER_ATTEMPTS`]); limited, or without end at a message's last
/// delivery, where a nak would not bring it back.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    pause: Duration,
    /// Retries left; `None`: until written.
    left: Option<u32>,
}

impl RetrySchedule {
    const FIRST: Duration = Duration::from_millis(250);
    const LONGEST: Duration = Duration::from_secs(4);

    /// `attempts` in all: the first, then `attempts - 1` retries.
    pub fn limited(attempts: u32) -> Self {
        RetrySchedule {
            pause: Self::FIRST,
            left: Some(attempts.saturating_sub(1)),
        }
    }

    /// Retries until the record is written.
    pub fn until_written() -> Self {
        RetrySchedule {
            pause: Self::FIRST,
            left: None,
        }
    }
}

impl Iterator for RetrySchedule {
    type Item = Duration;

    /// The pause before the next attempt, or `None` when there is none.
    fn next(&mut self) -> Option<Duration> {
        if let Some(left) = &mut self.left {
            *left = left.checked_sub(1)?;
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(Self::LONGEST);
        Some(pause)
    }
}

/// The consumer's redelivery settings, read when it is bound, and the handler's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryPolicy {
    /// Deliveries allowed per message; `None` is unlimited.
    pub max_deliver: Option<u32>,
    /// Redelivery delays by delivery number; the last one repeats.
    pub backoff: Vec<Duration>,
    /// The host's own cap on deliveries of a message the handler keeps failing on (trap,
    /// timeout, memory), applied only when `max_deliver` is unlimited, so a poison message
    /// does not loop forever.
    pub max_failures: Option<u32>,
    /// Wait for the server to confirm each ack (the handler's `confirm_acks`).
    pub confirm_acks: bool,
}

/// The delay used after a guest failure when the consumer has no backoff, so a failing
/// message does not spin.
pub const FAILURE_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How often a message whose call is still running is marked in progress: every half of the
/// consumer's ack wait, and no more often than every 100 ms.
pub fn progress_every(ack_wait: Duration) -> Duration {
    (ack_wait / 2).max(Duration::from_millis(100))
}

impl DeliveryPolicy {
    /// A consumer's `max_deliver` as a limit: JetStream reads 0 and -1 (any value under 1)
    /// as unlimited.
    pub fn max_deliver(configured: i64) -> Option<u32> {
        u32::try_from(configured).ok().filter(|n| *n > 0)
    }

    /// True when `delivered` (1-based) is the last delivery JetStream will make.
    pub fn is_last(&self, delivered: u32) -> bool {
        self.max_deliver.is_some_and(|max| delivered >= max)
    }

    /// The backoff delay after delivery number `delivered`, if the consumer has a backoff.
    pub fn backoff_after(&self, delivered: u32) -> Option<Duration> {
        let index = (delivered.max(1) - 1) as usize;
        self.backoff.get(index).or(self.backoff.last()).copied()
    }

    /// True when a failed call on delivery `delivered` is dead-lettered: at the consumer's
    /// last delivery, or, with unlimited deliveries, at the host's `max_failures`.
    fn gives_up_on_failure(&self, delivered: u32) -> bool {
        match self.max_deliver {
            Some(_) => self.is_last(delivered),
            None => self.max_failures.is_some_and(|max| delivered >= max),
        }
    }

    fn budget(&self, delivered: u32) -> String {
        match (self.max_deliver, self.max_failures) {
            (Some(max), _) => format!("delivery {delivered} of {max}"),
            (None, Some(max)) => {
                format!("delivery {delivered}; the host gives up after {max} failed deliveries")
            }
            (None, None) => format!("delivery {delivered}"),
        }
    }
}

/// What to do with this delivery.
pub fn decide(verdict: &Verdict, delivered: u32, policy: &DeliveryPolicy) -> Decision {
    if let Verdict::Handled(Outcome::Failed(Failure::HostCapacity(_) | Failure::Quota(_))) = verdict
    {
        return Decision::RetryInPlace;
    }
    Decision::Settle(settle(verdict, delivered, policy))
}

/// The action for a delivery that is not retried in place.
fn settle(verdict: &Verdict, delivered: u32, policy: &DeliveryPolicy) -> Action {
    let dead_letter = |reason: String| {
        Action::DeadLetter(DeadLetterPlan {
            reason,
            retries: if policy.is_last(delivered) {
                RetrySchedule::until_written()
            } else {
                RetrySchedule::limited(DEAD_LETTER_ATTEMPTS)
            },
            if_unwritten: policy
                .backoff_after(delivered)
                .unwrap_or(FAILURE_RETRY_DELAY),
        })
    };
    let outcome = match verdict {
        Verdict::Handled(outcome) => outcome,
        Verdict::Oversize { size, limit } => {
            return dead_letter(format!(
                "message is {size} bytes, over the handler's {limit}-byte limit"
            ))
        }
        Verdict::Unreadable(why) => return dead_letter(why.clone()),
    };
    let last = policy.is_last(delivered);
    match outcome {
        Outcome::Ack => Action::Ack {
            confirm: policy.confirm_acks,
        },
        Outcome::Term(reason) => dead_letter(reason.clone()),
        Outcome::Nak(_) if last => dead_letter(format!(
            "handler asked for a retry (nak) on the last allowed delivery ({})",
            policy.budget(delivered)
        )),
        Outcome::Nak(delay) => Action::Nak(delay.or_else(|| policy.backoff_after(delivered))),
        Outcome::Failed(failure) if policy.gives_up_on_failure(delivered) => dead_letter(format!(
            "{} ({})",
            failure.describe(),
            policy.budget(delivered)
        )),
        Outcome::Failed(_) => Action::Nak(Some(
            policy
                .backoff_after(delivered)
                .unwrap_or(FAILURE_RETRY_DELAY),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason of a dead-letter action.
    fn reason(action: &Action) -> &str {
        match action {
            Action::DeadLetter(plan) => &plan.reason,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    /// The action decided for `verdict`, which must not be retried in place.
    fn settled(verdict: &Verdict, delivered: u32, policy: &DeliveryPolicy) -> Action {
        match decide(verdict, delivered, policy) {
            Decision::Settle(action) => action,
            Decision::RetryInPlace => panic!("{verdict:?} retried in place"),
        }
    }

    /// The action for a delivery the handler ran.
    fn handled(outcome: &Outcome, delivered: u32, policy: &DeliveryPolicy) -> Action {
        settled(&Verdict::Handled(outcome.clone()), delivered, policy)
    }

    #[test]
    fn a_message_the_handler_never_saw_is_dead_lettered_at_any_delivery() {
        let oversize = Verdict::Oversize {
            size: 2_000_000,
            limit: 1_048_576,
        };
        let unreadable = Verdict::Unreadable("a header is not valid UTF-8".into());
        for delivered in [1, 2, 3] {
            assert_eq!(
                reason(&settled(&oversize, delivered, &policy())),
                "message is 2000000 bytes, over the handler's 1048576-byte limit"
            );
            assert_eq!(
                reason(&settled(&unreadable, delivered, &policy())),
                "a header is not valid UTF-8"
            );
        }
    }

    #[test]
    fn every_verdict_has_its_metric_label_and_failures_share_the_ticks_labels() {
        let labels = [
            (Verdict::Handled(Outcome::Ack), "ack"),
            (Verdict::Handled(Outcome::Nak(None)), "nak"),
            (Verdict::Handled(Outcome::Term("x".into())), "term"),
            (
                Verdict::Handled(Outcome::Failed(Failure::Trap("x".into()))),
                "trap",
            ),
            (
                Verdict::Handled(Outcome::Failed(Failure::CpuTime(Duration::ZERO))),
                "timeout",
            ),
            (
                Verdict::Handled(Outcome::Failed(Failure::Timeout(Duration::ZERO))),
                "timeout",
            ),
            (
                Verdict::Handled(Outcome::Failed(Failure::Memory("x".into()))),
                "memory",
            ),
            (
                Verdict::Handled(Outcome::Failed(Failure::HostCapacity("x".into()))),
                "host",
            ),
            (Verdict::Oversize { size: 2, limit: 1 }, "oversize"),
            (Verdict::Unreadable("x".into()), "unreadable"),
        ];
        for (verdict, label) in labels {
            assert_eq!(verdict.kind(), label, "{verdict:?}");
            assert!(outcome::ALL.contains(&label), "{label} is registered");
        }
    }

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            max_deliver: Some(3),
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            max_failures: Some(10),
            confirm_acks: false,
        }
    }

    #[test]
    fn ack_and_term_map_directly_and_confirm_acks_asks_for_confirmation() {
        let ack = handled(&Outcome::Ack, 3, &policy());
        assert_eq!(ack, Action::Ack { confirm: false });
        let confirming = DeliveryPolicy {
            confirm_acks: true,
            ..policy()
        };
        let ack = handled(&Outcome::Ack, 1, &confirming);
        assert_eq!(ack, Action::Ack { confirm: true });
        assert_eq!(
            reason(&handled(&Outcome::Term("bad".into()), 1, &policy())),
            "bad"
        );
    }

    #[test]
    fn a_record_not_written_is_retried_a_few_times_then_the_message_comes_back_at_its_backoff_step()
    {
        let Action::DeadLetter(plan) = handled(&Outcome::Term("bad".into()), 2, &policy()) else {
            panic!("a term is dead-lettered");
        };
        let pauses: Vec<u64> = plan.retries.map(|p| p.as_millis() as u64).collect();
        assert_eq!(pauses, [250, 500, 1000, 2000, 4000], "six attempts in all");
        assert_eq!(
            plan.if_unwritten,
            Duration::from_secs(5),
            "backoff after delivery 2"
        );
        let no_backoff = DeliveryPolicy {
            backoff: Vec::new(),
            ..policy()
        };
        let Action::DeadLetter(plan) = handled(&Outcome::Term("bad".into()), 1, &no_backoff) else {
            panic!("a term is dead-lettered");
        };
        assert_eq!(plan.if_unwritten, FAILURE_RETRY_DELAY);
    }

    #[test]
    fn at_the_last_delivery_the_record_is_retried_until_written() {
        let Action::DeadLetter(plan) = handled(&Outcome::Term("bad".into()), 3, &policy()) else {
            panic!("a term is dead-lettered");
        };
        let pauses: Vec<u64> = plan
            .retries
            .take(100)
            .map(|p| p.as_millis() as u64)
            .collect();
        assert_eq!(pauses.len(), 100, "no end");
        assert_eq!(pauses[..6], [250, 500, 1000, 2000, 4000, 4000]);
        assert!(pauses.iter().all(|p| *p <= 4000));
    }

    #[test]
    fn nak_uses_its_delay_else_the_backoff_schedule() {
        let p = policy();
        let delay = Some(Duration::from_millis(300));
        assert_eq!(handled(&Outcome::Nak(delay), 1, &p), Action::Nak(delay));
        assert_eq!(
            handled(&Outcome::Nak(None), 1, &p),
            Action::Nak(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            handled(&Outcome::Nak(None), 2, &p),
            Action::Nak(Some(Duration::from_secs(5)))
        );
        let no_backoff = DeliveryPolicy::default();
        assert_eq!(
            handled(&Outcome::Nak(None), 7, &no_backoff),
            Action::Nak(None)
        );
    }

    #[test]
    fn failures_back_off_then_dead_letter_on_the_last_delivery() {
        let p = policy();
        let trap = Outcome::Failed(Failure::Trap("unreachable".into()));
        assert_eq!(
            handled(&trap, 1, &p),
            Action::Nak(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            handled(&trap, 2, &p),
            Action::Nak(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            reason(&handled(&trap, 3, &p)),
            "trap: unreachable (delivery 3 of 3)"
        );
        let unlimited = DeliveryPolicy::default();
        assert_eq!(
            handled(&trap, 50, &unlimited),
            Action::Nak(Some(FAILURE_RETRY_DELAY))
        );
    }

    #[test]
    fn with_unlimited_deliveries_the_host_gives_up_on_a_poison_message_at_max_failures() {
        let p = DeliveryPolicy {
            max_deliver: None,
            backoff: Vec::new(),
            max_failures: Some(10),
            confirm_acks: false,
        };
        let trap = Outcome::Failed(Failure::Trap("unreachable".into()));
        assert_eq!(
            handled(&trap, 9, &p),
            Action::Nak(Some(FAILURE_RETRY_DELAY))
        );
        assert_eq!(
            reason(&handled(&trap, 10, &p)),
            "trap: unreachable (delivery 10; the host gives up after 10 failed deliveries)"
        );
        // A nak is the handler's own choice to retry: not a failure, never capped.
        assert_eq!(handled(&Outcome::Nak(None), 50, &p), Action::Nak(None));
        // The consumer's own max_deliver wins over the host's cap.
        let consumer = DeliveryPolicy {
            max_deliver: Some(20),
            ..p
        };
        assert_eq!(
            handled(&trap, 10, &consumer),
            Action::Nak(Some(FAILURE_RETRY_DELAY))
        );
    }

    #[test]
    fn no_room_for_the_call_is_retried_in_place_at_any_delivery_even_the_last() {
        let full = Verdict::Handled(Outcome::Failed(Failure::HostCapacity("pool full".into())));
        for delivered in [1, 3, 50] {
            assert_eq!(decide(&full, delivered, &policy()), Decision::RetryInPlace);
        }
        let unlimited = DeliveryPolicy::default();
        assert_eq!(decide(&full, 10, &unlimited), Decision::RetryInPlace);
    }

    #[test]
    fn max_deliver_under_one_is_unlimited() {
        assert_eq!(DeliveryPolicy::max_deliver(-1), None);
        assert_eq!(DeliveryPolicy::max_deliver(0), None);
        assert_eq!(DeliveryPolicy::max_deliver(5), Some(5));
        assert_eq!(
            DeliveryPolicy::max_deliver(i64::MAX),
            None,
            "past u32: as unlimited"
        );
    }

    #[test]
    fn a_running_call_is_marked_in_progress_every_half_ack_wait() {
        assert_eq!(
            progress_every(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            progress_every(Duration::from_millis(50)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn a_nak_on_the_last_delivery_is_dead_lettered_not_dropped() {
        let action = handled(&Outcome::Nak(None), 3, &policy());
        let reason = reason(&action);
        assert!(
            reason.contains("last allowed delivery (delivery 3 of 3)"),
            "{reason}"
        );
    }
}
