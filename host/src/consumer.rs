//! Binding a handler to its durable pull consumer and running every message through it:
//! admission (a free in-flight slot) before each message is taken, in-progress while a call
//! runs, the outcome applied to JetStream, and a rebind when the pull stream fails (missed
//! heartbeats, a deleted consumer) or the [`watchdog`] finds it stalled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ack::{self, Action, DeliveryPolicy};
use crate::bindings::Message;
use crate::dead_letter;
use crate::dispatch::{Dispatcher, Failure, Outcome};
use crate::metrics::{outcome, HandlerMetrics};
use crate::watchdog::{self, Activity};

/// Idle heartbeat asked of the server; two missed ones end the pull stream and force a rebind.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Wait before rebinding after a failure.
const REBIND_DELAY: Duration = Duration::from_secs(1);

/// One handler bound to one durable consumer.
pub struct Binding {
    /// Handler name.
    pub name: Arc<str>,
    /// Runs the calls.
    pub dispatcher: Dispatcher,
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// Dead-letter subject prefix.
    pub dead_letter: String,
    /// Wait for the server to confirm each ack.
    pub confirm_acks: bool,
    /// Most calls at once.
    pub max_in_flight: usize,
    /// Largest payload handed to the handler.
    pub max_message_size: usize,
    /// The handler's metrics.
    pub metrics: HandlerMetrics,
}

/// The consumer's settings that shape processing, read at each bind.
struct Bound {
    consumer: PullConsumer,
    policy: DeliveryPolicy,
    /// Interval for in-progress updates: half the consumer's ack wait.
    progress_every: Duration,
}

/// Looks up the durable consumer and reads its redelivery settings. Fails, naming the
/// handler, stream and consumer, when it does not exist or is not a pull consumer.
async fn bind(js: &jetstream::Context, binding: &Binding) -> anyhow::Result<Bound> {
    let what = || {
        format!(
            "handler {}: binding consumer {}/{}",
            binding.name, binding.stream, binding.consumer
        )
    };
    let stream = js.get_stream(&binding.stream).await.with_context(what)?;
    let consumer: PullConsumer = stream
        .get_consumer(&binding.consumer)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(what)?;
    let config = &consumer.cached_info().config;
    let policy = DeliveryPolicy {
        max_deliver: u32::try_from(config.max_deliver).ok().filter(|n| *n > 0),
        backoff: config.backoff.clone(),
    };
    let progress_every = (config.ack_wait / 2).max(Duration::from_millis(100));
    Ok(Bound {
        consumer,
        policy,
        progress_every,
    })
}

/// Checks that every handler's consumer exists, before any message is taken.
pub async fn check_bindable(js: &jetstream::Context, binding: &Binding) -> anyhow::Result<()> {
    bind(js, binding).await.map(drop)
}

/// Pulls and processes messages until `shutdown` is cancelled. Calls already running are
/// tracked by `tracker`, so the caller can wait for them.
pub async fn run(
    binding: Arc<Binding>,
    js: jetstream::Context,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(binding.max_in_flight));
    while !shutdown.is_cancelled() {
        let bound = match bind(&js, &binding).await {
            Ok(bound) => Arc::new(bound),
            Err(e) => {
                tracing::warn!(handler = %binding.name, error = %format!("{e:#}"), "cannot bind consumer; retrying");
                pause(&shutdown).await;
                continue;
            }
        };
        let scope = shutdown.child_token();
        let stalled = CancellationToken::new();
        let activity = Arc::new(Activity::new());
        tracker.spawn(watchdog::watch(
            binding.clone(),
            bound.consumer.clone(),
            slots.clone(),
            activity.clone(),
            stalled.clone(),
            scope.clone(),
        ));
        let batch = binding.max_in_flight.clamp(1, 256);
        let messages = bound
            .consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(HEARTBEAT)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(handler = %binding.name, error = %e, "cannot start pulling; rebinding");
                scope.cancel();
                pause(&shutdown).await;
                continue;
            }
        };
        tracing::info!(handler = %binding.name, stream = %binding.stream, consumer = %binding.consumer, "consumer bound");
        loop {
            // Admission first: a message is only taken when a slot is free to run it.
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = stalled.cancelled() => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    activity.touch();
                    tracker.spawn(process(binding.clone(), bound.clone(), message, permit));
                }
                Some(Err(e)) => {
                    tracing::warn!(handler = %binding.name, error = %e, "pull failed; rebinding");
                    break;
                }
                None => {
                    tracing::warn!(handler = %binding.name, "pull stream ended; rebinding");
                    break;
                }
            }
        }
        scope.cancel();
        pause(&shutdown).await;
    }
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(REBIND_DELAY) => {}
    }
}

/// One message, start to finish. Holds its in-flight slot until JetStream has been told.
async fn process(
    binding: Arc<Binding>,
    bound: Arc<Bound>,
    message: jetstream::Message,
    _slot: OwnedSemaphorePermit,
) {
    let Ok(info) = message.info() else {
        // Not a JetStream delivery (no ack subject): nothing can be acked or redelivered.
        tracing::error!(handler = %binding.name, subject = %message.subject, "message without JetStream metadata skipped");
        return;
    };
    let wit = Message {
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
    };
    let started = Instant::now();
    let outcome = if wit.payload.len() > binding.max_message_size {
        None
    } else {
        binding.metrics.in_flight.inc();
        let outcome = with_progress(
            binding.dispatcher.call(&wit),
            &message,
            bound.progress_every,
        )
        .await;
        binding.metrics.in_flight.dec();
        binding
            .metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        Some(outcome)
    };
    let (kind, action) = match &outcome {
        None => (
            outcome::OVERSIZE,
            Action::DeadLetter(format!(
                "message is {} bytes, over the handler's {}-byte limit",
                wit.payload.len(),
                binding.max_message_size
            )),
        ),
        Some(outcome) => (
            outcome_kind(outcome),
            ack::decide(outcome, wit.delivered, &bound.policy),
        ),
    };
    binding.metrics.count(kind);
    let (handler, stream, seq, delivered) =
        (&*binding.name, &wit.stream, wit.stream_seq, wit.delivered);
    match &outcome {
        Some(Outcome::Failed(failure)) => {
            tracing::warn!(handler, stream, seq, delivered, failure = %failure.describe(), "handler failed")
        }
        _ => tracing::debug!(handler, stream, seq, delivered, outcome = kind, "handled"),
    }
    apply(&binding, &message, &wit, action, &bound.policy).await;
}

fn outcome_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ack => outcome::ACK,
        Outcome::Nak(_) => outcome::NAK,
        Outcome::Term(_) => outcome::TERM,
        Outcome::Failed(Failure::Trap(_)) => outcome::TRAP,
        Outcome::Failed(Failure::Timeout(_) | Failure::CpuTime(_)) => outcome::TIMEOUT,
        Outcome::Failed(Failure::Memory(_)) => outcome::MEMORY,
    }
}

/// Runs `call`, telling JetStream the message is in progress every `every` meanwhile. The
/// call's own deadline bounds how long that goes on.
async fn with_progress<F: std::future::Future<Output = Outcome>>(
    call: F,
    message: &jetstream::Message,
    every: Duration,
) -> Outcome {
    tokio::pin!(call);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            outcome = &mut call => return outcome,
            _ = ticks.tick() => {
                if let Err(e) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "in-progress update failed");
                }
            }
        }
    }
}

/// Tells JetStream what became of the message. A dead letter is written and confirmed before
/// the term; if it cannot be written the message is nak'd so it comes back.
async fn apply(
    binding: &Binding,
    message: &jetstream::Message,
    wit: &Message,
    action: Action,
    policy: &DeliveryPolicy,
) {
    let (handler, stream, seq) = (&*binding.name, &wit.stream, wit.stream_seq);
    let result = match action {
        Action::Ack if binding.confirm_acks => message.double_ack().await,
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
            match write_dead_letter(binding, message, &source, &reason).await {
                Ok(()) => {
                    binding.metrics.dead_letters.inc();
                    tracing::warn!(handler, stream, seq, reason, "dead-lettered");
                    message.ack_with(AckKind::Term).await
                }
                Err(e) => {
                    // At the last delivery JetStream will not redeliver: this is logged as an
                    // error so an operator can recover the message from the stream.
                    tracing::error!(handler, stream, seq, error = %format!("{e:#}"), "dead letter not written after retries; message nak'd");
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
        tracing::warn!(handler, stream, seq, error = %e, "acknowledgement failed; JetStream will redeliver");
    }
}

/// Attempts at writing a dead letter before giving up on this delivery.
const DEAD_LETTER_ATTEMPTS: u32 = 6;

/// Writes the dead-letter record, retrying with a growing pause (about 8s in all) while
/// telling JetStream the message is still in progress, so a brief outage of the dead-letter
/// stream loses nothing.
async fn write_dead_letter(
    binding: &Binding,
    message: &jetstream::Message,
    source: &dead_letter::Source<'_>,
    reason: &str,
) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        let written = dead_letter::publish(
            &message.context,
            &binding.dead_letter,
            source,
            reason,
            message.payload.clone(),
            message.headers.as_ref(),
        )
        .await;
        match written {
            Err(e) if attempt < DEAD_LETTER_ATTEMPTS => {
                tracing::warn!(handler = source.handler, seq = source.seq, attempt, error = %format!("{e:#}"), "dead letter not written; retrying");
                let _ = message.ack_with(AckKind::Progress).await;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
                attempt += 1;
            }
            result => return result,
        }
    }
}
