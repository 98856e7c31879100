//! What to tell JetStream about a message, given how its call ended and where it is in its
//! delivery budget. Pure: no I/O, so every path of the failure model is unit-tested here.

use std::time::Duration;

use crate::dispatch::Outcome;

/// The JetStream action for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Acknowledge.
    Ack,
    /// Redeliver after this delay (immediately when `None`).
    Nak(Option<Duration>),
    /// Write a dead-letter record with this reason, then terminate.
    DeadLetter(String),
}

/// The consumer's redelivery settings, read when it is bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryPolicy {
    /// Deliveries allowed per message; `None` is unlimited.
    pub max_deliver: Option<u32>,
    /// Redelivery delays by delivery number; the last one repeats.
    pub backoff: Vec<Duration>,
}

/// The delay used after a guest failure when the consumer has no backoff, so a failing
/// message does not spin.
pub const FAILURE_RETRY_DELAY: Duration = Duration::from_secs(1);

impl DeliveryPolicy {
    /// True when `delivered` (1-based) is the last delivery JetStream will make.
    pub fn is_last(&self, delivered: u32) -> bool {
        self.max_deliver.is_some_and(|max| delivered >= max)
    }

    /// The backoff delay after delivery number `delivered`, if the consumer has a backoff.
    pub fn backoff_after(&self, delivered: u32) -> Option<Duration> {
        let index = (delivered.max(1) - 1) as usize;
        self.backoff.get(index).or(self.backoff.last()).copied()
    }

    fn budget(&self, delivered: u32) -> String {
        match self.max_deliver {
            Some(max) => format!("delivery {delivered} of {max}"),
            None => format!("delivery {delivered}"),
        }
    }
}

/// Maps a call's outcome to the action for this delivery.
pub fn decide(outcome: &Outcome, delivered: u32, policy: &DeliveryPolicy) -> Action {
    let last = policy.is_last(delivered);
    match outcome {
        Outcome::Ack => Action::Ack,
        Outcome::Term(reason) => Action::DeadLetter(reason.clone()),
        Outcome::Nak(_) if last => Action::DeadLetter(format!(
            "handler asked for a retry (nak) on the last allowed delivery ({})",
            policy.budget(delivered)
        )),
        Outcome::Nak(delay) => Action::Nak(delay.or_else(|| policy.backoff_after(delivered))),
        Outcome::Failed(failure) if last => Action::DeadLetter(format!(
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
    use crate::dispatch::Failure;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            max_deliver: Some(3),
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
        }
    }

    #[test]
    fn ack_and_term_map_directly() {
        assert_eq!(decide(&Outcome::Ack, 3, &policy()), Action::Ack);
        assert_eq!(
            decide(&Outcome::Term("bad".into()), 1, &policy()),
            Action::DeadLetter("bad".into())
        );
    }

    #[test]
    fn nak_uses_its_delay_else_the_backoff_schedule() {
        let p = policy();
        let delay = Some(Duration::from_millis(300));
        assert_eq!(decide(&Outcome::Nak(delay), 1, &p), Action::Nak(delay));
        assert_eq!(
            decide(&Outcome::Nak(None), 1, &p),
            Action::Nak(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            decide(&Outcome::Nak(None), 2, &p),
            Action::Nak(Some(Duration::from_secs(5)))
        );
        let no_backoff = DeliveryPolicy::default();
        assert_eq!(
            decide(&Outcome::Nak(None), 7, &no_backoff),
            Action::Nak(None)
        );
    }

    #[test]
    fn failures_back_off_then_dead_letter_on_the_last_delivery() {
        let p = policy();
        let trap = Outcome::Failed(Failure::Trap("unreachable".into()));
        assert_eq!(
            decide(&trap, 1, &p),
            Action::Nak(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            decide(&trap, 2, &p),
            Action::Nak(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            decide(&trap, 3, &p),
            Action::DeadLetter("trap: unreachable (delivery 3 of 3)".into())
        );
        let unlimited = DeliveryPolicy::default();
        assert_eq!(
            decide(&trap, 50, &unlimited),
            Action::Nak(Some(FAILURE_RETRY_DELAY))
        );
    }

    #[test]
    fn a_nak_on_the_last_delivery_is_dead_lettered_not_dropped() {
        match decide(&Outcome::Nak(None), 3, &policy()) {
            Action::DeadLetter(reason) => assert!(
                reason.contains("last allowed delivery (delivery 3 of 3)"),
                "{reason}"
            ),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }
}
