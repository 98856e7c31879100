//! Binding a handler to its durable pull consumer and running every message through it.
//!
//! A handler's `max_in_flight` calls are split into lanes, one per runtime worker thread,
//! each a task with its own pull on the consumer. A message is taken only when its lane has a
//! free slot for it, and its call starts inline in the lane: one that finishes without
//! waiting (most do) costs no task or timer of its own, so the host's cost per message stays
//! close to the sandbox's; one that waits becomes a task and is kept in progress with
//! JetStream (one message's life is the [`delivery`] module's). A lane rebinds when its pull
//! fails (a deleted consumer, a dead connection) or the [`watchdog`] finds it stalled.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use futures::FutureExt as _;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ack::{self, DeliveryPolicy};
use crate::binding::Binding;
use crate::delivery::{self, Slot, Terms};
use crate::liveness;
use crate::ordering::{KeyGate, OrderingKey};
use crate::pull::Pull;
use crate::waiting::Waiting;
use crate::watchdog::{self, Activity};

/// Wait before rebinding after a failure.
const REBIND_DELAY: Duration = Duration::from_secs(1);

/// The consumer and its settings that shape processing, read at each bind.
struct BoundConsumer {
    consumer: PullConsumer,
    terms: Arc<Terms>,
}

/// Looks up the durable consumer and reads its redelivery settings. Fails, naming the
/// handler, stream and consumer, when it does not exist or is not a pull consumer.
async fn bind(js: &jetstream::Context, binding: &Binding) -> anyhow::Result<BoundConsumer> {
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
        max_deliver: DeliveryPolicy::max_deliver(config.max_deliver),
        backoff: config.backoff.clone(),
        max_failures: Some(binding.max_failures),
        confirm_acks: binding.confirm_acks,
    };
    let terms = Terms {
        policy,
        progress_every: ack::progress_every(config.ack_wait),
    };
    Ok(BoundConsumer {
        consumer,
        terms: Arc::new(terms),
    })
}

/// Checks that every handler's consumer exists, before any message is taken; warns about
/// settings that will hurt (see [`ack_pending_advice`]).
pub async fn check_bindable(js: &jetstream::Context, binding: &Binding) -> anyhow::Result<()> {
    let bound = bind(js, binding).await?;
    let max_ack_pending = bound.consumer.cached_info().config.max_ack_pending;
    if let Some(advice) =
        ack_pending_advice(max_ack_pending, binding.max_in_flight, binding.prefetch)
    {
        tracing::warn!(
            handler = %binding.name,
            stream = %binding.stream,
            consumer = %binding.consumer,
            "{advice}"
        );
    }
    if bound.terms.policy.max_deliver.is_none() {
        tracing::warn!(
            handler = %binding.name,
            stream = %binding.stream,
            consumer = %binding.consumer,
            max_failures = binding.max_failures,
            "the consumer's max_deliver is unlimited: a message the handler keeps failing on is dead-lettered by the host after max_failures deliveries; set max_deliver on the consumer to choose"
        );
    }
    Ok(())
}

/// Advice when a consumer's `max_ack_pending` is below what one host may hold of it: up to
/// `max_in_flight` running plus `prefetch` waiting. JetStream then stops delivering to every
/// host on the consumer while this one holds that many, and its pull requests wait. The host
/// sees only itself: with N hosts on the consumer, it needs N times as many.
pub fn ack_pending_advice(
    max_ack_pending: i64,
    max_in_flight: usize,
    prefetch: usize,
) -> Option<String> {
    let held = max_in_flight + prefetch;
    (max_ack_pending > 0 && (max_ack_pending as usize) < held).then(|| {
        format!(
            "the consumer's max_ack_pending is {max_ack_pending}, but this host alone may hold {held} \
             of its messages unacknowledged (max_in_flight {max_in_flight} + prefetch {prefetch}): \
             while it does, JetStream delivers nothing more to any host on the consumer. Raise \
             max_ack_pending to at least {held} × the number of hosts on it (this host cannot \
             see how many others pull from it), or lower prefetch"
        )
    })
}

/// Starts `binding`'s lanes on `tracker`. Each pulls and processes messages until `shutdown`
/// is cancelled; calls still running then are tasks on `tracker` too, so the caller can wait
/// for it (within a grace period) to let in-flight messages complete.
pub fn start(
    binding: Arc<Binding>,
    js: &jetstream::Context,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let workers = match binding.ordering {
        // One pull, so that messages reach the key gate in the order the server sends them.
        Some(_) => 1,
        None => tokio::runtime::Handle::current().metrics().num_workers(),
    };
    for lane in plan_lanes(binding.max_in_flight, binding.prefetch, workers) {
        let lane = run_lane(
            binding.clone(),
            js.clone(),
            lane,
            shutdown.clone(),
            tracker.clone(),
        );
        tracker.spawn(lane);
    }
}

/// One lane's share of a handler's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Lane {
    /// Which lane, from 1, for the logs.
    number: usize,
    /// Most calls in progress at once.
    capacity: usize,
    /// Messages asked of the server ahead of need (the pull batch).
    batch: usize,
}

/// Splits `max_in_flight` calls and `prefetch` messages into lanes, one per runtime worker
/// thread (fewer when fewer calls are allowed), as evenly as possible.
fn plan_lanes(max_in_flight: usize, prefetch: usize, workers: usize) -> Vec<Lane> {
    let max_in_flight = max_in_flight.max(1);
    let lanes = workers.clamp(1, max_in_flight);
    let share = |total: usize, i: usize| total / lanes + usize::from(i < total % lanes);
    (0..lanes)
        .map(|i| Lane {
            number: i + 1,
            capacity: share(max_in_flight, i),
            batch: share(prefetch, i).max(1),
        })
        .collect()
}

/// One lane: its own pull on the durable consumer and up to `capacity` calls in progress. It
/// asks the server for messages only for room it has (up to `batch` held beyond its running
/// calls, fewer per request if the consumer caps pulls with `max_batch`), so a message that
/// arrives while every slot is busy waits in the lane, kept in progress with JetStream (see
/// [`Waiting`]), and none sits unseen in a client buffer. Each call starts inline, in the
/// lane's task: most finish there, costing no task or timer of their own. A call that has to
/// wait (a publish awaiting its ack, a long computation yielding at an epoch tick) carries on
/// as a task of its own, so it never holds up the lane. The lane rebinds when its pull fails
/// or stalls, keeping its waiting messages; on shutdown it asks for nothing more, takes what
/// its open requests still bring (see [`Finishing`]) and hands back what it could not start.
async fn run_lane(
    binding: Arc<Binding>,
    js: jetstream::Context,
    Lane {
        number,
        capacity,
        batch,
    }: Lane,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(capacity));
    let mut waiting = Waiting::default();
    // With an ordering key: the gate holding messages behind their key's earlier one, and the
    // calls' reports of how each of their messages ended.
    let mut gate = KeyGate::default();
    let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel::<Ended>();
    let ordered = binding.ordering.as_ref().map(|key| (key, &ended));
    while !shutdown.is_cancelled() {
        let bound = match bind(&js, &binding).await {
            Ok(bound) => Arc::new(bound),
            Err(e) => {
                tracing::warn!(handler = %binding.name, error = %format!("{e:#}"), "cannot bind consumer; retrying");
                pause(&shutdown).await;
                continue;
            }
        };
        // Cancelled on shutdown, or by the watchdog when the pull stalls; ends this bind.
        let pull = shutdown.child_token();
        let activity = Arc::new(Activity::default());
        tokio::spawn(watchdog::watch(
            binding.clone(),
            bound.consumer.clone(),
            slots.clone(),
            activity.clone(),
            pull.clone(),
        ));
        let live_pulls = binding.metrics.pulls.clone();
        let mut messages = match Pull::start(&js, &bound.consumer, live_pulls).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(handler = %binding.name, error = %e, "cannot start pulling; rebinding");
                pull.cancel();
                pause(&shutdown).await;
                continue;
            }
        };
        tracing::info!(handler = %binding.name, stream = %binding.stream, consumer = %binding.consumer, lane = number, in_flight = capacity, prefetch = batch, request = messages.largest_request(batch), "consumer bound");
        if ordered.is_some() {
            let info = bound.consumer.cached_info();
            let (delivered, floor) = (
                info.delivered.stream_sequence,
                info.ack_floor.stream_sequence,
            );
            for released in gate.recover(delivered, floor) {
                waiting.push(released);
            }
            if gate.recovering() {
                tracing::info!(handler = %binding.name, delivered, ack_floor = floor, "messages up to {delivered} are unacknowledged (a host stopped with them): later ones wait for their redelivery, so that no key's messages overtake each other");
            }
        }
        let mut pull_ended = pin!(pull.cancelled());
        // A waiting message is kept in progress once it has waited a quarter of its ack wait;
        // a recovering gate asks how far the consumer's acks have come at least every second.
        let every = bound.terms.progress_every / 2;
        let mut ticks = tokio::time::interval(every.min(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = |message, slot| start_call(&binding, &bound, &tracker, message, slot, ordered);
        // Set on shutdown: the lane asks for nothing more and takes what its open requests
        // still bring, so that none is open when its subscription closes.
        let mut finishing: Option<Finishing> = None;
        loop {
            match &finishing {
                // Ask for more only for room the lane has, so that every message it receives
                // is one it holds and keeps in progress; in halves, so requests stay large.
                None => {
                    let room = batch.saturating_sub(waiting.len() + messages.outstanding());
                    if room >= refill_at(batch) {
                        if let Err(e) = messages.request(room).await {
                            tracing::warn!(handler = %binding.name, error = %e, "pull failed; rebinding");
                            break;
                        }
                    }
                }
                Some(_) if messages.outstanding() == 0 => break,
                Some(_) => {}
            }
            let finish_by = finishing.as_ref().map(Finishing::deadline);
            tokio::select! {
                biased;
                _ = &mut pull_ended, if finishing.is_none() => {
                    if !shutdown.is_cancelled() {
                        break;
                    }
                    finishing = Some(Finishing::new());
                }
                _ = tokio::time::sleep_until(finish_by.unwrap_or_else(tokio::time::Instant::now)), if finish_by.is_some() => {
                    let open = messages.outstanding();
                    if finishing.as_ref().is_some_and(Finishing::out_of_time) {
                        tracing::info!(handler = %binding.name, lane = number, open, "stopping with pull requests still being filled; a message the server sends as the subscription closes is redelivered after its ack wait");
                    } else {
                        tracing::debug!(handler = %binding.name, lane = number, open, "stopping with idle pull requests open");
                    }
                    break;
                }
                _ = ticks.tick(), if !waiting.is_empty() || gate.held() > 0 => {
                    waiting.keep_in_progress(every).await;
                    gate.keep_in_progress(every).await;
                    if gate.recovering() {
                        if let Ok(info) = bound.consumer.clone().info().await {
                            for next in gate.recovered(info.ack_floor.stream_sequence) {
                                start_or_wait(next, &slots, &binding, &mut waiting, start);
                            }
                        }
                    }
                }
                Some(end) = ends.recv() => {
                    if let Some(next) = gate.finish(&end.key, end.seq, end.settled) {
                        if start_or_wait(next, &slots, &binding, &mut waiting, start) {
                            tokio::task::yield_now().await;
                        }
                    }
                }
                // An async block, so the semaphore is only touched when a message waits.
                slot = Slot::take(&slots, &binding), if !waiting.is_empty() => {
                    if start(waiting.pop(), slot) {
                        tokio::task::yield_now().await;
                    }
                }
                next = messages.next() => match next {
                    Ok(None) => {
                        tracing::info!(handler = %binding.name, lane = number, "pull requests lost or unanswered (a reconnect, missed heartbeats, a leader election); asking again");
                        // Meanwhile make sure the connection itself is alive: a dead one is
                        // replaced, and the pull asks again on the new one.
                        let js = js.clone();
                        tokio::spawn(async move { liveness::check(&js).await });
                    }
                    Ok(Some(message)) => {
                        activity.received();
                        if let Some(finishing) = &mut finishing {
                            finishing.heard = tokio::time::Instant::now();
                        }
                        let Some(message) = admit(&mut gate, ordered, message) else {
                            continue;
                        };
                        if start_or_wait(message, &slots, &binding, &mut waiting, start) {
                            tokio::task::yield_now().await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(handler = %binding.name, error = %e, "pull failed; rebinding");
                        break;
                    }
                },
            }
        }
        pull.cancel();
        // What the server sent before the pull ended waits with the rest: processed after
        // the rebind, or handed back on shutdown.
        for message in messages.close().await {
            if let Some(message) = admit(&mut gate, ordered, message) {
                waiting.push(message);
            }
        }
        if !shutdown.is_cancelled() {
            liveness::check(&js).await;
        }
        pause(&shutdown).await;
    }
    waiting.hand_back(&binding.name).await;
    gate.hand_back(&binding.name).await;
}

/// Starts `message` with `start` when a slot is free and no message waits before it, else
/// queues it with the waiting ones; returns what `start` says (yield before the next).
fn start_or_wait(
    message: jetstream::Message,
    slots: &Arc<Semaphore>,
    binding: &Binding,
    waiting: &mut Waiting,
    start: impl FnOnce(jetstream::Message, Slot) -> bool,
) -> bool {
    match Slot::try_take(slots, binding) {
        Some(slot) if waiting.is_empty() => start(message, slot),
        _ => {
            waiting.push(message);
            false
        }
    }
}

/// How a call on an ordered handler's message ended, for its key's gate.
struct Ended {
    key: String,
    seq: u64,
    settled: bool,
}

/// For a handler with an ordering key: the message's key and stream sequence, when it has a
/// key (a message without one is not ordered).
fn key_of(key: &OrderingKey, message: &jetstream::Message) -> Option<(String, u64)> {
    let seq = message.info().ok()?.stream_sequence;
    Some((key.of(&message.subject, message.headers.as_ref())?, seq))
}

/// Lets `message` through now, or holds it in the gate behind its key's earlier message.
fn admit(
    gate: &mut KeyGate<jetstream::Message>,
    ordered: Option<(&OrderingKey, &UnboundedSender<Ended>)>,
    message: jetstream::Message,
) -> Option<jetstream::Message> {
    match ordered.and_then(|(key, _)| key_of(key, &message)) {
        Some((key, seq)) => gate.admit(key, seq, message),
        None => Some(message),
    }
}

/// Starts processing `message` in its slot, inline: most calls finish in this first poll; one
/// that has to wait carries on as a task on `tracker`. Returns true when the first poll was
/// long (a CPU-heavy call runs up to an epoch tick in it): the lane then lets other tasks run
/// before it starts another, so a tenant's burst of heavy messages cannot hold a worker
/// thread for many ticks in a row.
fn start_call(
    binding: &Arc<Binding>,
    bound: &Arc<BoundConsumer>,
    tracker: &TaskTracker,
    message: jetstream::Message,
    slot: Slot,
    ordered: Option<(&OrderingKey, &UnboundedSender<Ended>)>,
) -> bool {
    let started = std::time::Instant::now();
    // An ordered message's end is reported to its key's gate, a panic as not settled.
    let report = ordered.and_then(|(key, ended)| Some((key_of(key, &message)?, ended.clone())));
    let call = delivery::process(binding.clone(), bound.terms.clone(), message, slot);
    let call = AssertUnwindSafe(call).catch_unwind().map(move |outcome| {
        if let Some(((key, seq), ended)) = report {
            let settled = matches!(outcome, Ok(true));
            let _ = ended.send(Ended { key, seq, settled });
        }
        outcome.map(drop)
    });
    let mut call = Box::pin(call);
    // A no-op waker is enough for this first poll: a call that is not ready moves to a task of
    // its own, which polls it again at once and so registers its real waker.
    let waker = futures::task::noop_waker();
    match call
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker))
    {
        Poll::Ready(outcome) => contain_panic(&binding.name, outcome),
        Poll::Pending => {
            let name = binding.name.clone();
            tracker.spawn(async move { contain_panic(&name, call.await) });
        }
    }
    started.elapsed() >= LONG_FIRST_POLL
}

/// Logs a panic in a message's processing: a host bug, kept from taking the lane down. A
/// message not yet acknowledged is redelivered by JetStream after its ack wait.
fn contain_panic(handler: &str, outcome: std::thread::Result<()>) {
    if outcome.is_err() {
        tracing::error!(
            handler,
            "processing a message panicked; unless acknowledged, it is redelivered after its ack wait"
        );
    }
}

/// A call's first poll at least this long makes its lane yield before starting another.
const LONG_FIRST_POLL: Duration = Duration::from_millis(1);

/// How long a stopping lane waits for its open pull requests to be filled, at most.
const FINISH_WITHIN: Duration = Duration::from_secs(3);
/// How long a stopping lane that hears nothing waits before it closes with requests open: the
/// consumer has nothing to send, so nothing is likely to be sent as the subscription closes.
const FINISH_QUIET: Duration = Duration::from_millis(500);

/// A stopping lane's last phase. Closing a pull's subscription while a request is open can
/// leave one message behind until its ack wait: one the server decided to send just before
/// the unsubscribe reached it, dropped by the server (no interest any more) or by the client
/// (the subscription gone). So a stopping lane asks for nothing more and takes, and processes,
/// what its open requests still bring, until none is open; under load that takes moments.
/// An idle lane's requests would stay open until they expire, so it stops after a quiet
/// spell instead, and a lane that is slow to fill them stops after `FINISH_WITHIN`.
struct Finishing {
    until: tokio::time::Instant,
    heard: tokio::time::Instant,
}

impl Finishing {
    fn new() -> Finishing {
        let now = tokio::time::Instant::now();
        Finishing {
            until: now + FINISH_WITHIN,
            heard: now,
        }
    }

    /// True once the lane has waited `FINISH_WITHIN`.
    fn out_of_time(&self) -> bool {
        tokio::time::Instant::now() >= self.until
    }

    /// When the lane closes with requests still open.
    fn deadline(&self) -> tokio::time::Instant {
        self.until.min(self.heard + FINISH_QUIET)
    }
}

/// The room at which a lane asks for more: half its batch, so requests stay large.
fn refill_at(batch: usize) -> usize {
    (batch / 2).max(1)
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(REBIND_DELAY) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_ack_pending_below_what_one_host_holds_gets_advice() {
        assert_eq!(ack_pending_advice(-1, 64, 1024), None, "unlimited");
        assert_eq!(ack_pending_advice(2000, 64, 1024), None);
        let advice = ack_pending_advice(1000, 64, 1024).unwrap();
        assert!(
            advice.contains("max_ack_pending is 1000")
                && advice.contains("may hold 1088")
                && advice.contains("× the number of hosts"),
            "{advice}"
        );
    }

    fn lanes(max_in_flight: usize, prefetch: usize, workers: usize) -> Vec<(usize, usize)> {
        plan_lanes(max_in_flight, prefetch, workers)
            .into_iter()
            .map(|lane| (lane.capacity, lane.batch))
            .collect()
    }

    #[test]
    fn calls_and_prefetch_are_shared_evenly_with_one_lane_per_worker() {
        assert_eq!(lanes(64, 1024, 2), [(32, 512), (32, 512)]);
        assert_eq!(lanes(5, 7, 2), [(3, 4), (2, 3)]);
        assert_eq!(lanes(64, 1024, 1), [(64, 1024)]);
    }

    #[test]
    fn never_more_lanes_than_calls_and_every_lane_pulls_something() {
        assert_eq!(lanes(1, 1024, 8), [(1, 1024)]);
        assert_eq!(lanes(3, 1, 8), [(1, 1), (1, 1), (1, 1)]);
        assert_eq!(lanes(4, 100, 0), [(4, 100)], "no worker count: one lane");
    }
}
