//! One message's life, from the moment its lane gives it a slot: the guest's copy of it, the
//! call (kept in progress with JetStream while it runs, retried in place when the host has no
//! room for it), the verdict decided by [`ack::decide`], and the action carried out without
//! deciding anything: ack, nak, or dead letter then term.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::Info;
use async_nats::jetstream::{self, AckKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::ack::{self, Action, DeadLetterPlan, Decision, DeliveryPolicy, Verdict};
use crate::binding::{Binding, Version};
use crate::bindings::Message;
use crate::dead_letter;
use crate::dispatch::{Failure, Outcome};
use crate::origin::Origin;
use crate::shadow::Shadow;
use crate::telemetry;
use crate::waiting::mark_in_progress;

/// What a delivery needs of its consumer's settings, read at each bind.
pub struct Terms {
    /// Deliveries, backoff and the host's failure cap.
    pub policy: DeliveryPolicy,
    /// Interval for in-progress updates: half the consumer's ack wait.
    pub progress_every: Duration,
}

/// A message's place among the calls in flight: its lane's slot and, when its tenant has an
/// in-flight quota, the tenant's.
pub struct Slot {
    _lane: OwnedSemaphorePermit,
    _tenant: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// A place now, if both the lane (`lane`) and the tenant have one free.
    pub fn try_take(lane: &Arc<Semaphore>, binding: &Binding) -> Option<Slot> {
        let lane = lane.clone().try_acquire_owned().ok()?;
        let tenant = binding.tenant.account.try_call()?;
        Some(Slot {
            _lane: lane,
            _tenant: tenant,
        })
    }

    /// Waits for a place in the lane (`lane`), then in the tenant's quota.
    pub async fn take(lane: &Arc<Semaphore>, binding: &Binding) -> Slot {
        let lane =
            (lane.clone().acquire_owned().await).expect("a lane's semaphore is never closed");
        Slot {
            _lane: lane,
            _tenant: binding.tenant.account.call().await,
        }
    }
}

/// One message, start to finish: its slot stays taken until JetStream has been told.
/// Returns whether the message is settled (acked, or dead-lettered and termed) rather than
/// left to be redelivered.
pub async fn process(
    binding: Arc<Binding>,
    terms: Arc<Terms>,
    message: jetstream::Message,
    _slot: Slot,
) -> bool {
    let Ok(info) = message.info() else {
        // Not a JetStream delivery (no ack subject): nothing can be acked or redelivered.
        tracing::error!(handler = %binding.name, subject = %message.subject, "message without JetStream metadata skipped");
        return true;
    };
    let wit = guest_copy(&message.message, &info);
    let otel = telemetry::message_span(&binding.name, &binding.tenant.name, &wit);
    let delivery = Delivery {
        wit,
        otel,
        version: binding.version(),
        binding: &binding,
        terms: &terms,
        message: &message,
        span: OnceLock::new(),
    };
    match delivery.otel.clone() {
        Some(span) => delivery.handle().instrument(span).await,
        None => delivery.handle().await,
    }
}

/// A message being handled, with what its life needs.
struct Delivery<'a> {
    binding: &'a Binding,
    /// The handler's version when the message got its slot: it handles the message to the
    /// end, retries in place included, even if a new version replaces it meanwhile.
    version: Arc<Version>,
    terms: &'a Terms,
    message: &'a jetstream::Message,
    /// The guest's copy of the message.
    wit: Message,
    /// The `message` span (handler, stream, sequence, delivery) every line about the message
    /// is logged in, the guest's own included; made at the first such line. A span for every
    /// message would cost each one ~1.3 µs of host CPU with the log's formatter (measured,
    /// about a tenth of a fresh sandbox's message), and most messages log nothing.
    span: OnceLock<tracing::Span>,
    /// The exported span of the message's processing, when export is on (see
    /// [`telemetry`]).
    otel: Option<tracing::Span>,
}

impl Delivery<'_> {
    /// Logs `line` in the message's span.
    fn log(&self, line: impl FnOnce()) {
        let span = self.span.get_or_init(|| {
            let origin = Origin::Message {
                stream: self.wit.stream.clone(),
                seq: self.wit.stream_seq,
                delivered: self.wit.delivered,
                traceparent: None,
            };
            origin.span(&self.binding.name)
        });
        span.in_scope(line);
    }

    /// Whether the host may log another line about this handler's calls now (see
    /// [`crate::log_budget`]): the metrics count every outcome, the log shows at most a
    /// hundred lines a second of them.
    fn admit(&self) -> bool {
        (self.version.dispatcher.env().host_log).admit(&self.binding.name)
    }

    /// Decides the message's verdict (unreadable, oversize, or the handler's outcome) and
    /// carries out the action it calls for; returns whether that settled the message.
    async fn handle(&self) -> bool {
        let (binding, terms, wit) = (self.binding, self.terms, &self.wit);
        let started = Instant::now();
        let unreadable = dead_letter::unreadable(self.message.headers.as_ref());
        let never_ran = if let Some(why) = unreadable {
            Some(Verdict::Unreadable(why))
        } else if wit.payload.len() > self.version.max_message_size {
            Some(Verdict::Oversize {
                size: wit.payload.len(),
                limit: self.version.max_message_size,
            })
        } else {
            None
        };
        let ran = never_ran.is_none();
        let verdict = match never_ran {
            Some(verdict) => verdict,
            None => {
                binding.metrics.in_flight.inc();
                let dispatcher = &self.version.dispatcher;
                match self
                    .version
                    .shadow
                    .as_ref()
                    .filter(|shadow| shadow.sampled())
                {
                    None => {
                        let call = pin!(dispatcher.call(wit));
                        Verdict::Handled(
                            with_progress(call, self.message, terms.progress_every).await,
                        )
                    }
                    // Boxed: the rare path, kept out of every message's future.
                    Some(shadow) => Box::pin(self.call_beside(shadow)).await,
                }
            }
        };
        let (verdict, action) = match ack::decide(&verdict, wit.delivered, &terms.policy) {
            Decision::Settle(action) => (verdict, action),
            // Boxed: the rare path, kept out of every message's future.
            Decision::RetryInPlace => Box::pin(self.retry_in_place(verdict)).await,
        };
        if ran {
            binding.metrics.in_flight.dec();
            binding
                .metrics
                .latency
                .observe(started.elapsed().as_secs_f64());
        }
        let kind = verdict.kind();
        binding.metrics.count(kind);
        if let Some(span) = &self.otel {
            let error = match &verdict {
                Verdict::Handled(Outcome::Failed(failure)) => Some(failure.describe()),
                _ => None,
            };
            telemetry::finish(span, kind, error.as_deref());
        }
        match &verdict {
            Verdict::Handled(Outcome::Failed(failure)) if self.admit() => {
                self.log(|| tracing::warn!(failure = %failure.describe(), "handler failed"))
            }
            Verdict::Handled(Outcome::Failed(_)) => {}
            _ if tracing::enabled!(tracing::Level::DEBUG) => {
                self.log(|| tracing::debug!(outcome = kind, "handled"))
            }
            _ => {}
        }
        self.apply(action).await
    }

    /// The live call, recording its publishes, then the same message through `shadow`'s
    /// candidate, detached: the candidate never holds up or changes the live outcome.
    async fn call_beside(&self, shadow: &Arc<Shadow>) -> Verdict {
        let call = pin!(self.version.dispatcher.call_recording(&self.wit));
        let (outcome, published) =
            with_progress(call, self.message, self.terms.progress_every).await;
        // A call the host had no room for is retried in place: nothing to compare yet.
        let host_side = matches!(
            outcome,
            Outcome::Failed(Failure::HostCapacity(_) | Failure::Quota(_))
        );
        if !host_side {
            shadow.run_beside(self.wit.clone(), outcome.clone(), published);
        }
        Verdict::Handled(outcome)
    }

    /// Makes the call again, with the message kept in progress, until it runs: the host had
    /// no room for it (its instance pool was full), so it costs the message no delivery and
    /// is never counted as the handler's failure (each attempt counts under the `host`
    /// outcome). Logged once per message; a host that stays full keeps the message in
    /// progress until it exits, and JetStream then redelivers it.
    async fn retry_in_place(&self, mut verdict: Verdict) -> (Verdict, Action) {
        let (binding, every) = (self.binding, self.terms.progress_every);
        if let Verdict::Handled(Outcome::Failed(failure)) = &verdict {
            self.log(|| tracing::error!(failure = %failure.describe(), "no room for the call; retrying it in place (the host's instance pool or the tenant's quota is full, not the handler's failure)"));
        }
        loop {
            binding.metrics.count(verdict.kind());
            let pause = pin!(tokio::time::sleep(HOST_RETRY_PAUSE));
            tick_in_progress(pause, self.message, every).await;
            let call = pin!(self.version.dispatcher.call(&self.wit));
            verdict = Verdict::Handled(tick_in_progress(call, self.message, every).await);
            match ack::decide(&verdict, self.wit.delivered, &self.terms.policy) {
                Decision::Settle(action) => return (verdict, action),
                Decision::RetryInPlace => {}
            }
        }
    }

    /// Writes the dead letter (in progress all along: attempts and pauses can outlast the ack
    /// wait, and the handler must not run again meanwhile), then terms the message; naks it
    /// when the record could not be written, so that it comes back. Also says whether the
    /// message was termed (settled) or nak'd.
    async fn dead_letter(&self, plan: DeadLetterPlan) -> (Result<(), async_nats::Error>, bool) {
        let (binding, message, wit) = (self.binding, self.message, &self.wit);
        let source = dead_letter::Source {
            handler: &binding.name,
            subject: &wit.subject,
            stream: &wit.stream,
            consumer: &wit.consumer,
            seq: wit.stream_seq,
            delivered: wit.delivered,
        };
        let (connection, prefix) = (&binding.tenant.connection, &binding.dead_letter);
        let reason = &plan.reason;
        let mut written = pin!(async {
            let contents = dead_letter::Contents::of(message, &source).await;
            let retries = plan.retries;
            dead_letter::write(connection, prefix, &source, reason, &contents, retries).await
        });
        match tick_in_progress(written.as_mut(), message, self.terms.progress_every).await {
            Ok(_) => {
                binding.metrics.dead_letters.inc();
                if self.admit() {
                    self.log(|| tracing::warn!(reason, "dead-lettered"));
                }
                (message.ack_with(AckKind::Term).await, true)
            }
            Err(e) => {
                if self.admit() {
                    self.log(|| tracing::error!(error = %format!("{e:#}"), "dead letter not written after retries; message nak'd"));
                }
                let nak = AckKind::Nak(Some(plan.if_unwritten));
                (message.ack_with(nak).await, false)
            }
        }
    }

    /// Tells JetStream what became of the message; returns whether that settled it. A dead
    /// letter is written and confirmed before the term; if it cannot be written the message
    /// is nak'd so it comes back.
    async fn apply(&self, action: Action) -> bool {
        let message = self.message;
        let (result, settles) = match action {
            // Boxed, like the other paths that wait on the server, to keep the common future
            // small.
            Action::Ack { confirm: true } => (Box::pin(message.double_ack()).await, true),
            Action::Ack { confirm: false } => (message.ack().await, true),
            Action::Nak(delay) => (message.ack_with(AckKind::Nak(delay)).await, false),
            Action::DeadLetter(plan) => Box::pin(self.dead_letter(plan)).await,
        };
        if let Err(e) = &result {
            // The message stays unacknowledged and JetStream redelivers it after the ack wait.
            if self.admit() {
                self.log(|| tracing::warn!(error = %e, "acknowledgement failed; JetStream will redeliver"));
            }
        }
        settles && result.is_ok()
    }
}

/// Pause between attempts at a call the host had no room for.
const HOST_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Runs `call`, telling JetStream the message is in progress every `every` meanwhile. The
/// call's own deadline bounds how long that goes on. A call that finishes in its first poll
/// (most do) needs no timer.
async fn with_progress<T, F: Future<Output = T>>(
    mut call: Pin<&mut F>,
    message: &jetstream::Message,
    every: Duration,
) -> T {
    if let Poll::Ready(outcome) = futures::poll!(call.as_mut()) {
        return outcome;
    }
    // Boxed: the rare path, kept out of every message's future.
    Box::pin(tick_in_progress(call, message, every)).await
}

/// Runs `work` to its end, marking the message in progress every `every`.
async fn tick_in_progress<T, F: Future<Output = T>>(
    mut call: Pin<&mut F>,
    message: &jetstream::Message,
    every: Duration,
) -> T {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            outcome = call.as_mut() => return outcome,
            _ = ticks.tick() => mark_in_progress(message).await,
        }
    }
}

/// The message as the contract hands it to the guest: subject, payload and headers as
/// received, and the delivery's JetStream metadata.
pub fn guest_copy(message: &async_nats::Message, info: &Info<'_>) -> Message {
    Message {
        subject: message.subject.to_string(),
        payload: message.payload.to_vec(),
        headers: message
            .headers
            .iter()
            .flat_map(|map| map.iter())
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (name.to_string(), v.to_string()))
            })
            .collect(),
        stream: info.stream.to_owned(),
        consumer: info.consumer.to_owned(),
        stream_seq: info.stream_sequence,
        consumer_seq: info.consumer_sequence,
        delivered: u32::try_from(info.delivered).unwrap_or(u32::MAX),
        published_ms: u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
        pending: info.pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;

    fn info(delivered: i64, published_ns: i128) -> Info<'static> {
        Info {
            domain: None,
            acc_hash: None,
            stream: "ORDERS",
            consumer: "processor",
            stream_sequence: 42,
            consumer_sequence: 7,
            delivered,
            pending: 3,
            published: async_nats::datetime::from_nanos(published_ns).unwrap(),
            token: None,
        }
    }

    fn message(headers: Option<HeaderMap>) -> async_nats::Message {
        async_nats::Message {
            subject: "orders.eu".into(),
            reply: Some("$JS.ACK.ORDERS.processor.1.42.7.0.3".into()),
            payload: bytes::Bytes::from_static(b"{\"id\":1}"),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn the_guest_copy_keeps_subject_payload_every_header_value_and_the_metadata() {
        let mut headers = HeaderMap::new();
        headers.append("Order-Id", "1");
        headers.append("Tag", "a");
        headers.append("Tag", "b");
        let copy = guest_copy(&message(Some(headers)), &info(2, 1_764_316_800_123_456_789));
        assert_eq!(copy.subject, "orders.eu");
        assert_eq!(copy.payload, b"{\"id\":1}");
        let mut got = copy.headers.clone();
        got.sort();
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            got,
            [pair("Order-Id", "1"), pair("Tag", "a"), pair("Tag", "b")]
        );
        assert_eq!(
            (copy.stream.as_str(), copy.consumer.as_str()),
            ("ORDERS", "processor")
        );
        assert_eq!((copy.stream_seq, copy.consumer_seq), (42, 7));
        assert_eq!((copy.delivered, copy.pending), (2, 3));
        assert_eq!(copy.published_ms, 1_764_316_800_123);
    }

    #[test]
    fn the_guest_copy_saturates_what_does_not_fit_the_contract() {
        let copy = guest_copy(&message(None), &info(i64::MAX, -5_000_000));
        assert!(copy.headers.is_empty());
        assert_eq!(copy.delivered, u32::MAX);
        // A publish time before 1970 (a clock gone wrong) reads as 0, not as a wrapped number.
        assert_eq!(copy.published_ms, 0);
    }
}
