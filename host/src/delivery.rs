//! One message's life, from the moment its lane gives it a slot: the guest's copy of it, the
//! call (kept in progress with JetStream while it runs, retried in place when the host has no
//! room for it), the verdict decided by [`ack::decide`], and the action carried out without
//! deciding anything: ack, nak, or dead letter then term.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::Info;
use async_nats::jetstream::{self, AckKind};
use tokio::sync::OwnedSemaphorePermit;

use crate::ack::{self, Action, DeliveryPolicy, Verdict};
use crate::binding::Binding;
use crate::bindings::Message;
use crate::dead_letter;
use crate::dispatch::{Failure, Outcome};
use crate::metrics::outcome;
use crate::waiting::mark_in_progress;

/// What a delivery needs of its consumer's settings, read at each bind.
pub struct Terms {
    /// Deliveries, backoff and the host's failure cap.
    pub policy: DeliveryPolicy,
    /// Interval for in-progress updates: half the consumer's ack wait.
    pub progress_every: Duration,
}

/// One message, start to finish: its lane's slot stays taken until JetStream has been told.
pub async fn process(
    binding: Arc<Binding>,
    terms: Arc<Terms>,
    message: jetstream::Message,
    _slot: OwnedSemaphorePermit,
) {
    let Ok(info) = message.info() else {
        // Not a JetStream delivery (no ack subject): nothing can be acked or redelivered.
        tracing::error!(handler = %binding.name, subject = %message.subject, "message without JetStream metadata skipped");
        return;
    };
    let wit = guest_copy(&message, &info);
    let started = Instant::now();
    let unreadable = dead_letter::unreadable(message.headers.as_ref());
    let verdict = if let Some(why) = unreadable {
        Verdict::Unreadable(why)
    } else if wit.payload.len() > binding.max_message_size {
        Verdict::Oversize {
            size: wit.payload.len(),
            limit: binding.max_message_size,
        }
    } else {
        binding.metrics.in_flight.inc();
        let call = pin!(binding.dispatcher.call(&wit));
        let mut outcome = with_progress(call, &message, terms.progress_every).await;
        if let Outcome::Failed(Failure::HostCapacity(_)) = &outcome {
            // Boxed: the rare path, kept out of every message's future.
            outcome = Box::pin(retry_in_place(&binding, &terms, &message, &wit, outcome)).await;
        }
        binding.metrics.in_flight.dec();
        binding
            .metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        Verdict::Handled(outcome)
    };
    let kind = verdict.kind();
    let action = ack::decide(&verdict, wit.delivered, &terms.policy);
    binding.metrics.count(kind);
    let (handler, stream, seq, delivered) =
        (&*binding.name, &wit.stream, wit.stream_seq, wit.delivered);
    match &verdict {
        Verdict::Handled(Outcome::Failed(failure)) if admit(&binding) => {
            tracing::warn!(handler, stream, seq, delivered, failure = %failure.describe(), "handler failed")
        }
        Verdict::Handled(Outcome::Failed(_)) => {}
        _ => tracing::debug!(handler, stream, seq, delivered, outcome = kind, "handled"),
    }
    apply(&binding, &terms, &message, &wit, action).await;
}

/// Pause between attempts at a call the host had no room for.
const HOST_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Retries a call the host had no room for (its instance pool was full) until it runs, with
/// the message kept in progress: the condition is the host's, so it costs the message no
/// delivery and is never counted as the handler's failure (each attempt counts under the
/// `host` outcome). Logged once per message; a host that stays full keeps the message in
/// progress until it exits, and JetStream then redelivers it.
async fn retry_in_place(
    binding: &Binding,
    terms: &Terms,
    message: &jetstream::Message,
    wit: &Message,
    mut outcome: Outcome,
) -> Outcome {
    if let Outcome::Failed(failure) = &outcome {
        tracing::error!(handler = %binding.name, stream = %wit.stream, seq = wit.stream_seq, failure = %failure.describe(), "no room for the call; retrying it in place (a host sizing problem, not the handler's)");
    }
    while let Outcome::Failed(Failure::HostCapacity(_)) = &outcome {
        binding.metrics.count(outcome::HOST);
        let pause = pin!(tokio::time::sleep(HOST_RETRY_PAUSE));
        tick_in_progress(pause, message, terms.progress_every).await;
        let call = pin!(binding.dispatcher.call(wit));
        outcome = tick_in_progress(call, message, terms.progress_every).await;
    }
    outcome
}

/// Runs `call`, telling JetStream the message is in progress every `every` meanwhile. The
/// call's own deadline bounds how long that goes on. A call that finishes in its first poll
/// (most do) needs no timer.
async fn with_progress<F: Future<Output = Outcome>>(
    mut call: Pin<&mut F>,
    message: &jetstream::Message,
    every: Duration,
) -> Outcome {
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

/// Tells JetStream what became of the message. A dead letter is written and confirmed before
/// the term; if it cannot be written the message is nak'd so it comes back.
async fn apply(
    binding: &Binding,
    terms: &Terms,
    message: &jetstream::Message,
    wit: &Message,
    action: Action,
) {
    let (handler, stream, seq) = (&*binding.name, &wit.stream, wit.stream_seq);
    let policy = &terms.policy;
    let result = match action {
        // Boxed, like the other paths that wait on the server, to keep the common future small.
        Action::Ack if binding.confirm_acks => Box::pin(message.double_ack()).await,
        Action::Ack => message.ack().await,
        Action::Nak(delay) => message.ack_with(AckKind::Nak(delay)).await,
        Action::DeadLetter(reason) => {
            let source = dead_letter::Source {
                handler,
                subject: &wit.subject,
                stream,
                consumer: &wit.consumer,
                seq,
                delivered: wit.delivered,
            };
            // At the last delivery a nak would not bring the message back: keep trying.
            let attempts = if policy.is_last(wit.delivered) {
                u32::MAX
            } else {
                dead_letter::ATTEMPTS
            };
            // In progress all along (attempts and pauses can outlast the ack wait), so the
            // handler does not run again meanwhile. Boxed: the rare path, kept out of every
            // message's future.
            let (js, prefix) = (&message.context, &binding.dead_letter);
            let mut written = Box::pin(async {
                let contents = dead_letter::Contents::of(message, &source).await;
                dead_letter::write(js, prefix, &source, &reason, &contents, attempts).await
            });
            let every = terms.progress_every;
            match Box::pin(tick_in_progress(written.as_mut(), message, every)).await {
                Ok(_) => {
                    binding.metrics.dead_letters.inc();
                    if admit(binding) {
                        tracing::warn!(handler, stream, seq, reason, "dead-lettered");
                    }
                    message.ack_with(AckKind::Term).await
                }
                Err(e) => {
                    if admit(binding) {
                        tracing::error!(handler, stream, seq, error = %format!("{e:#}"), "dead letter not written after retries; message nak'd");
                    }
                    let delay = policy
                        .backoff_after(wit.delivered)
                        .unwrap_or(ack::FAILURE_RETRY_DELAY);
                    message.ack_with(AckKind::Nak(Some(delay))).await
                }
            }
        }
    };
    if let Err(e) = result {
        // The message stays unacknowledged and JetStream redelivers it after the ack wait.
        if admit(binding) {
            tracing::warn!(handler, stream, seq, error = %e, "acknowledgement failed; JetStream will redeliver");
        }
    }
}

/// Whether the host may log another line about this handler's calls now (see
/// [`crate::log_budget`]): the metrics count every outcome, the log shows at most a hundred
/// lines a second of them.
fn admit(binding: &Binding) -> bool {
    binding.dispatcher.env().host_log.admit(&binding.name)
}

/// The message as the contract hands it to the guest: subject, payload and headers as
/// received, and the delivery's JetStream metadata.
fn guest_copy(message: &jetstream::Message, info: &Info<'_>) -> Message {
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
