//! Per-key order (`ordering = { key = "subject:2" }` or `{ key = "header:Order-Id" }` on a
//! handler): the messages of one key are handled one at a time, in stream order, while
//! different keys run in parallel. A message whose key is busy is held (kept in progress with
//! JetStream) until the key's message before it is settled. A message that is not settled (a
//! nak, a trap, a failed ack) blocks its key until its redelivery is settled, so a retry never
//! lets a later message of its key overtake it. When `max_deliver` runs out the host
//! dead-letters it, which settles it, and the key moves on.
//!
//! A handler with an ordering key runs one lane (one pull on its consumer), so messages reach
//! the gate in the order the server delivers them; `max_in_flight` still bounds the calls
//! running at once, across keys. Ordering holds within one host: several hosts on one
//! consumer each see part of a key's messages (see README.md, "Per-key order", for
//! partitioning a stream by key over several consumers instead).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};

use crate::waiting::mark_in_progress;

/// Where a message's ordering key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderingKey {
    /// The subject's token at this position, from 1 (`subject:2` of `orders.o-17.created`
    /// is `o-17`).
    SubjectToken(usize),
    /// The first value of this header (any case).
    Header(String),
}

impl FromStr for OrderingKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wrong = || {
            format!(
                "ordering key {text:?}: expected \"subject:N\" (the subject's Nth token, from 1) or \"header:NAME\""
            )
        };
        match text.split_once(':') {
            Some(("subject", n)) => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(OrderingKey::SubjectToken(n)),
                _ => Err(wrong()),
            },
            Some(("header", name)) if !name.trim().is_empty() && !name.contains(' ') => {
                Ok(OrderingKey::Header(name.to_owned()))
            }
            _ => Err(wrong()),
        }
    }
}

impl fmt::Display for OrderingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderingKey::SubjectToken(n) => write!(f, "subject:{n}"),
            OrderingKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl OrderingKey {
    /// The key of a message with `subject` and `headers`; `None` when it has none (too few
    /// subject tokens, no such header): such a message is not ordered.
    pub fn of(&self, subject: &str, headers: Option<&async_nats::HeaderMap>) -> Option<String> {
        match self {
            OrderingKey::SubjectToken(n) => subject.split('.').nth(n - 1).map(str::to_owned),
            OrderingKey::Header(name) => {
                let headers = headers?;
                (headers.iter())
                    .find(|(key, _)| key.to_string().eq_ignore_ascii_case(name))
                    .and_then(|(_, values)| values.first())
                    .map(|value| value.to_string())
            }
        }
    }
}

/// One key's state: the message of it that may run, the one blocking it, and those held.
struct KeyState<M> {
    /// The message of this key allowed to run now (running, or waiting for a slot).
    active: Option<u64>,
    /// A message of this key that was not settled: the key waits for its redelivery.
    blocked_by: Option<u64>,
    /// Later messages, by stream sequence, each with when it was last kept in progress.
    held: BTreeMap<u64, (Instant, M)>,
}

/// The gate between a lane's incoming messages and its calls, for a handler with an
/// ordering key. Generic over the message so that its rules are tested without a server.
pub struct KeyGate<M> {
    keys: HashMap<String, KeyState<M>>,
    /// While recovering: the last stream sequence the consumer had delivered (to a host
    /// killed since, say) when the lane bound it; messages above it wait in `parked`.
    recovering: Option<u64>,
    /// Messages above `recovering`, by stream sequence, with their keys.
    parked: BTreeMap<u64, (Instant, String, M)>,
}

impl<M> Default for KeyGate<M> {
    fn default() -> Self {
        KeyGate {
            keys: HashMap::new(),
            recovering: None,
            parked: BTreeMap::new(),
        }
    }
}

impl<M> KeyGate<M> {
    /// The consumer, as the lane binds it, had delivered up to stream sequence `delivered`
    /// and been acknowledged up to `ack_floor`. When messages in between are unacknowledged
    /// (in flight on a host that died, or handed back), their redeliveries come only after
    /// their ack wait, and later messages of their keys would otherwise overtake them: until
    /// the ack floor reaches `delivered`, every later message waits (see [`Self::recovered`]).
    /// Returns the messages a recovery of an earlier bind held that may run now.
    pub fn recover(&mut self, delivered: u64, ack_floor: u64) -> Vec<M> {
        if ack_floor < delivered {
            self.recovering = self.recovering.max(Some(delivered));
            return Vec::new();
        }
        self.recovered(ack_floor)
    }

    /// Whether later messages wait for earlier ones' redeliveries.
    pub fn recovering(&self) -> bool {
        self.recovering.is_some()
    }

    /// The consumer's ack floor is now `ack_floor`: once it reaches the recovery's end, the
    /// waiting messages go through the gate in stream order; returns those that may run now.
    pub fn recovered(&mut self, ack_floor: u64) -> Vec<M> {
        match self.recovering {
            Some(until) if ack_floor >= until => self.recovering = None,
            _ => return Vec::new(),
        }
        let parked = std::mem::take(&mut self.parked);
        (parked.into_iter())
            .filter_map(|(seq, (_, key, message))| self.admit(key, seq, message))
            .collect()
    }

    /// Takes a message of `key` at stream sequence `seq`: returns it when it may run now,
    /// else holds it until the key's earlier message is settled (or, while recovering, until
    /// every earlier message is).
    pub fn admit(&mut self, key: String, seq: u64, message: M) -> Option<M> {
        if self.recovering.is_some_and(|until| seq > until) {
            self.parked.insert(seq, (Instant::now(), key, message));
            return None;
        }
        let state = self.keys.entry(key).or_insert_with(|| KeyState {
            active: None,
            blocked_by: None,
            held: BTreeMap::new(),
        });
        let free = state.active.is_none()
            && match state.blocked_by {
                None => state.held.is_empty(),
                // The unsettled message itself, redelivered, goes first.
                Some(blocker) => blocker == seq,
            };
        if free {
            state.active = Some(seq);
            Some(message)
        } else {
            // A redelivery of a held message replaces it (its newer delivery is the one to
            // acknowledge).
            state.held.insert(seq, (Instant::now(), message));
            None
        }
    }

    /// The message of `key` at `seq` ended: `settled` (acked, or dead-lettered and termed)
    /// or not (it will be redelivered). Returns the key's next message when it may run now.
    pub fn finish(&mut self, key: &str, seq: u64, settled: bool) -> Option<M> {
        let state = self.keys.get_mut(key)?;
        if state.active == Some(seq) {
            state.active = None;
        }
        if settled {
            if state.blocked_by == Some(seq) {
                state.blocked_by = None;
            }
        } else {
            state.blocked_by = Some(seq);
            // Its redelivery may already be held: it goes first.
            if let Some((_, message)) = state.held.remove(&seq) {
                state.active = Some(seq);
                return Some(message);
            }
        }
        if state.active.is_some() || state.blocked_by.is_some() {
            return None;
        }
        match state.held.pop_first() {
            Some((next, (_, message))) => {
                state.active = Some(next);
                Some(message)
            }
            None => {
                self.keys.remove(key);
                None
            }
        }
    }

    /// How many messages are held.
    pub fn held(&self) -> usize {
        self.keys
            .values()
            .map(|state| state.held.len())
            .sum::<usize>()
            + self.parked.len()
    }

    /// The messages held for at least `every` since they arrived or were last kept in
    /// progress; their time starts again.
    fn due(&mut self, every: Duration) -> Vec<&M> {
        let now = Instant::now();
        let held = (self.keys.values_mut())
            .flat_map(|state| state.held.values_mut())
            .map(|(since, message)| (since, &*message));
        let parked = (self.parked.values_mut()).map(|(since, _, message)| (since, &*message));
        held.chain(parked)
            .filter(|(since, _)| now.duration_since(**since) >= every)
            .map(|(since, message)| {
                *since = now;
                message
            })
            .collect()
    }

    /// Empties the gate, returning every held message.
    fn drain(&mut self) -> Vec<M> {
        let keys = std::mem::take(&mut self.keys);
        let parked = std::mem::take(&mut self.parked);
        (keys.into_values())
            .flat_map(|state| state.held.into_values().map(|(_, message)| message))
            .chain(parked.into_values().map(|(_, _, message)| message))
            .collect()
    }
}

impl KeyGate<jetstream::Message> {
    /// Keeps the held messages in progress with JetStream (as a lane's waiting ones are).
    pub async fn keep_in_progress(&mut self, every: Duration) {
        for message in self.due(every) {
            mark_in_progress(message).await;
        }
    }

    /// Naks every held message, so JetStream redelivers it now (on shutdown).
    pub async fn hand_back(&mut self, handler: &str) {
        let held = self.drain();
        let count = held.len();
        for message in held {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(handler, error = %e, "handing back a held message failed; JetStream redelivers it after its ack wait");
            }
        }
        if count > 0 {
            tracing::info!(handler, count, "handed back messages held behind their key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed_or_refused_with_the_forms() {
        assert_eq!("subject:2".parse(), Ok(OrderingKey::SubjectToken(2)));
        assert_eq!(
            "header:Order-Id".parse(),
            Ok(OrderingKey::Header("Order-Id".into()))
        );
        for bad in ["subject:0", "subject:x", "header:", "body:1", "subject", ""] {
            let err = bad.parse::<OrderingKey>().unwrap_err();
            assert!(err.contains("subject:N") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn a_key_comes_from_a_subject_token_or_a_header() {
        let token = OrderingKey::SubjectToken(2);
        assert_eq!(
            token.of("orders.o-17.created", None).as_deref(),
            Some("o-17")
        );
        assert_eq!(token.of("orders", None), None, "too few tokens: unordered");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("order-id", "o-9");
        let header = OrderingKey::Header("Order-Id".into());
        assert_eq!(header.of("x", Some(&headers)).as_deref(), Some("o-9"));
        assert_eq!(header.of("x", None), None);
    }

    #[test]
    fn one_message_of_a_key_runs_at_a_time_in_stream_order() {
        let mut gate = KeyGate::default();
        assert_eq!(gate.admit("a".into(), 1, "a1"), Some("a1"));
        assert_eq!(
            gate.admit("b".into(), 2, "b2"),
            Some("b2"),
            "other keys run"
        );
        assert_eq!(gate.admit("a".into(), 3, "a3"), None, "held behind a1");
        assert_eq!(gate.admit("a".into(), 4, "a4"), None);
        assert_eq!(gate.held(), 2);
        assert_eq!(gate.finish("a", 1, true), Some("a3"));
        assert_eq!(gate.finish("a", 3, true), Some("a4"));
        assert_eq!(gate.finish("a", 4, true), None);
        assert_eq!(gate.finish("b", 2, true), None);
        assert!(gate.keys.is_empty(), "idle keys are forgotten");
    }

    #[test]
    fn an_unsettled_message_blocks_its_key_until_its_redelivery_is_settled() {
        let mut gate = KeyGate::default();
        assert_eq!(gate.admit("a".into(), 1, "a1"), Some("a1"));
        assert_eq!(gate.admit("a".into(), 2, "a2"), None);
        assert_eq!(gate.finish("a", 1, false), None, "a nak: a2 stays held");
        assert_eq!(gate.admit("a".into(), 3, "a3"), None, "new ones too");
        assert_eq!(
            gate.admit("a".into(), 1, "a1 again"),
            Some("a1 again"),
            "the redelivery goes first"
        );
        assert_eq!(gate.finish("a", 1, false), None, "naked again");
        assert_eq!(gate.admit("a".into(), 1, "a1 third"), Some("a1 third"));
        assert_eq!(
            gate.finish("a", 1, true),
            Some("a2"),
            "settled: the key moves on"
        );
        assert_eq!(gate.finish("a", 2, true), Some("a3"));
    }

    #[test]
    fn a_redelivery_that_arrives_before_the_nak_is_seen_runs_right_after() {
        let mut gate = KeyGate::default();
        assert_eq!(gate.admit("a".into(), 1, "a1"), Some("a1"));
        assert_eq!(gate.admit("a".into(), 2, "a2"), None);
        // a1's ack wait ran out while it ran: its redelivery is held like any other.
        assert_eq!(gate.admit("a".into(), 1, "a1 again"), None);
        assert_eq!(gate.finish("a", 1, false), Some("a1 again"));
        assert_eq!(gate.finish("a", 1, true), Some("a2"));
    }

    #[test]
    fn after_a_crash_later_messages_wait_until_every_earlier_one_is_settled() {
        let mut gate = KeyGate::default();
        // The last host was delivered up to 10 and acked up to 7: 8..=10 come back later.
        assert_eq!(gate.recover(10, 7), Vec::<&str>::new());
        assert!(gate.recovering());
        assert_eq!(gate.admit("a".into(), 11, "a11"), None, "a new one waits");
        assert_eq!(gate.admit("b".into(), 12, "b12"), None);
        assert_eq!(gate.admit("a".into(), 13, "a13"), None);
        assert_eq!(gate.held(), 3);
        assert_eq!(
            gate.admit("a".into(), 9, "a9"),
            Some("a9"),
            "a redelivery runs"
        );
        assert_eq!(
            gate.recovered(8),
            Vec::<&str>::new(),
            "not yet: 9 and 10 open"
        );
        assert_eq!(gate.finish("a", 9, true), None);
        // a9 settled and 10 too (it went to another key, or was acked elsewhere).
        assert_eq!(
            gate.recovered(10),
            ["a11", "b12"],
            "through the gate, in order"
        );
        assert!(!gate.recovering());
        assert_eq!(gate.held(), 1, "a13 waits behind a11");
        assert_eq!(gate.finish("a", 11, true), Some("a13"));
    }

    #[test]
    fn a_consumer_with_nothing_unacknowledged_needs_no_recovery() {
        let mut gate = KeyGate::<&str>::default();
        assert_eq!(gate.recover(10, 10), Vec::<&str>::new());
        assert!(!gate.recovering());
        assert_eq!(gate.admit("a".into(), 11, "a11"), Some("a11"));
    }

    #[test]
    fn a_rebind_that_finds_everything_acknowledged_releases_what_waited() {
        let mut gate = KeyGate::default();
        assert_eq!(gate.recover(10, 7), Vec::<&str>::new());
        assert_eq!(gate.admit("a".into(), 11, "a11"), None);
        // The pull failed and the lane bound the consumer again: all acked meanwhile.
        assert_eq!(gate.recover(12, 12), ["a11"]);
        assert!(!gate.recovering());
    }

    #[test]
    fn a_redelivered_held_message_replaces_the_held_one() {
        let mut gate = KeyGate::default();
        assert_eq!(gate.admit("a".into(), 1, "a1"), Some("a1"));
        assert_eq!(gate.admit("a".into(), 2, "a2"), None);
        assert_eq!(gate.admit("a".into(), 2, "a2 again"), None);
        assert_eq!(gate.held(), 1);
        assert_eq!(gate.finish("a", 1, true), Some("a2 again"));
        assert_eq!(gate.drain(), Vec::<&str>::new());
    }
}
