//! Shadow runs (`shadow = { component = "orders-v2.wasm", sample = 0.1 }` on a handler): a
//! sample of the handler's messages also runs through a candidate version, after the live
//! version has decided, in a sandbox of its own whose publishes are captured, never sent.
//! The host compares the candidate's disposition and publishes with the live call's and
//! counts the result (`jetwasm_shadow_total{handler, result}`: agree, differ, or skipped
//! when the candidate is still busy with an earlier message), logging the first differences
//! in full.
//!
//! The candidate cannot change what JetStream sees: it never holds the message (no ack, no
//! nak, no dead letter), its publishes stay in memory, it runs detached after the live
//! outcome is decided, one call at a time on an instance of its own (reserved in the pool
//! beside the handler's), within the handler's limits, so a trap, a loop or a nak only shows
//! in its counts and the log.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use tokio::sync::Semaphore;

use crate::bindings::Message;
use crate::dispatch::{Dispatcher, Outcome};
use crate::sandbox::Captured;
use crate::trace::TRACEPARENT;

/// Differences logged in full per candidate; later ones are only counted.
const DIFFERENCES_LOGGED: u32 = 10;

/// A handler's candidate version and what its runs need.
pub struct Shadow {
    /// Runs the candidate, its publishes going to `captured`.
    dispatcher: Dispatcher,
    captured: Arc<Mutex<Vec<Captured>>>,
    /// The share of messages it sees.
    sample: f64,
    /// One run at a time.
    running: Arc<Semaphore>,
    /// Differences logged so far.
    logged: AtomicU32,
    /// The handler's `jetwasm_shadow_total` counters, by result.
    counters: [(&'static str, IntCounter); 3],
}

impl Shadow {
    /// A shadow running `dispatcher`, whose environment's sink is `captured`, on `sample`
    /// of the messages, counting into `counters`.
    pub fn new(
        dispatcher: Dispatcher,
        captured: Arc<Mutex<Vec<Captured>>>,
        sample: f64,
        counters: [(&'static str, IntCounter); 3],
    ) -> Shadow {
        Shadow {
            dispatcher,
            captured,
            sample,
            running: Arc::new(Semaphore::new(1)),
            logged: AtomicU32::new(0),
            counters,
        }
    }

    /// Whether this message is one of the sample.
    pub fn sampled(&self) -> bool {
        fastrand::f64() < self.sample
    }

    fn count(&self, result: &str) {
        if let Some((_, counter)) = self.counters.iter().find(|(r, _)| *r == result) {
            counter.inc();
        }
    }

    /// Runs `msg` through the candidate, detached, and compares what it does with `live`
    /// and the publishes the live call made; skipped when a run is still going.
    pub fn run_beside(self: &Arc<Self>, msg: Message, live: Outcome, published: Vec<Captured>) {
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            self.count("skipped");
            return;
        };
        let shadow = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            shadow.lock_captured().clear();
            let outcome = shadow.dispatcher.call(&msg).await;
            let candidate = std::mem::take(&mut *shadow.lock_captured());
            let (live, candidate) = (
                Behaviour::of(&live, &published),
                Behaviour::of(&outcome, &candidate),
            );
            if live == candidate {
                shadow.count("agree");
                return;
            }
            shadow.count("differ");
            if shadow.logged.fetch_add(1, Ordering::Relaxed) < DIFFERENCES_LOGGED {
                let handler = &*shadow.dispatcher.env().name;
                let at = format!("{}:{}", msg.stream, msg.stream_seq);
                tracing::warn!(handler, at, live = %live, candidate = %candidate, "shadow candidate differs from the live version");
            }
        });
    }

    fn lock_captured(&self) -> std::sync::MutexGuard<'_, Vec<Captured>> {
        self.captured.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a call did, as compared: its disposition and its publishes in order (subject,
/// headers in any order but `traceparent`, which is new for every call, and payload).
#[derive(Debug, PartialEq)]
struct Behaviour {
    disposition: String,
    publishes: Vec<Captured>,
}

impl Behaviour {
    fn of(outcome: &Outcome, published: &[Captured]) -> Behaviour {
        let disposition = match outcome {
            Outcome::Ack => "ack".to_owned(),
            Outcome::Nak(None) => "nak".to_owned(),
            Outcome::Nak(Some(delay)) => format!("nak {delay:?}"),
            Outcome::Term(reason) => format!("term: {reason}"),
            Outcome::Failed(failure) => format!("failed: {}", failure.kind()),
        };
        let publishes = (published.iter())
            .map(|p| {
                // Sorted: a header map's order is not the guest's.
                let mut headers: Vec<_> = (p.headers.iter())
                    .filter(|(name, _)| !name.eq_ignore_ascii_case(TRACEPARENT))
                    .cloned()
                    .collect();
                headers.sort();
                Captured {
                    subject: p.subject.clone(),
                    headers,
                    payload: p.payload.clone(),
                }
            })
            .collect();
        Behaviour {
            disposition,
            publishes,
        }
    }
}

impl std::fmt::Display for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.disposition)?;
        for Captured {
            subject,
            headers,
            payload,
        } in &self.publishes
        {
            let headers: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let text = String::from_utf8_lossy(&payload[..payload.len().min(200)]);
            write!(f, "; publish {subject} [{}] {text}", headers.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn publish(subject: &str, trace: &str, payload: &str) -> Captured {
        Captured {
            subject: subject.into(),
            headers: vec![
                ("traceparent".into(), trace.into()),
                ("Nats-Msg-Id".into(), "h:ORDERS:1:1".into()),
            ],
            payload: payload.into(),
        }
    }

    #[test]
    fn calls_agree_on_disposition_and_publishes_but_not_trace_context() {
        let live = Behaviour::of(&Outcome::Ack, &[publish("out", "00-a-1-01", "x")]);
        let mut same = publish("out", "00-b-2-01", "x");
        same.headers.reverse();
        let same = Behaviour::of(&Outcome::Ack, &[same]);
        assert_eq!(
            live, same,
            "a new traceparent or another order is no difference"
        );
        for other in [
            Behaviour::of(&Outcome::Ack, &[publish("out", "t", "y")]),
            Behaviour::of(&Outcome::Ack, &[publish("elsewhere", "t", "x")]),
            Behaviour::of(&Outcome::Ack, &[]),
            Behaviour::of(&Outcome::Nak(Some(Duration::from_secs(1))), &[]),
        ] {
            assert_ne!(live, other, "{other}");
        }
        assert_eq!(
            live.to_string(),
            "ack; publish out [Nats-Msg-Id=h:ORDERS:1:1] x"
        );
    }
}
