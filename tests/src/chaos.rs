//! The chaos suite's instruments: a steady load of orders published from outside the host,
//! and a checker, independent of the host, that reads what reached the streams and counts the
//! orders lost, handled twice, or stuck.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Message};
use futures::StreamExt as _;

use crate::setup::order;

/// Orders published at a steady rate until stopped: `o-0`, `o-1`, and so on, each with its id
/// as its message id, each retried through outages until JetStream acknowledges it (with the
/// same id, so a retry of one the server already stored is dropped as a duplicate).
pub struct Load {
    stop: Arc<AtomicBool>,
    published: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Starts publishing `per_second` orders to `orders.created` through `js`.
    pub fn start(js: jetstream::Context, per_second: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicUsize::new(0));
        let (stopping, count) = (stop.clone(), published.clone());
        let task = tokio::spawn(async move {
            let per_tick = (per_second / 100).max(1);
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            let mut next = 0;
            while !stopping.load(Ordering::SeqCst) {
                ticks.tick().await;
                let acks: Vec<_> = (next..next + per_tick)
                    .map(|i| publish_until_stored(&js, i))
                    .collect();
                futures::future::join_all(acks).await;
                next += per_tick;
                count.store(next, Ordering::SeqCst);
            }
        });
        Load {
            stop,
            published,
            task,
        }
    }

    /// Orders stored so far.
    pub fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }

    /// Stops publishing; returns how many orders were stored (`o-0` to `o-(n-1)`).
    pub async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the load task does not panic");
        self.published.load(Ordering::SeqCst)
    }
}

/// Publishes order `o-i` until JetStream acknowledges it.
async fn publish_until_stored(js: &jetstream::Context, i: usize) {
    loop {
        let publish = PublishMessage::build()
            .payload(order(i).into())
            .message_id(format!("o-{i}"));
        if let Ok(ack) = js.send_publish("orders.created", publish).await {
            if ack.await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What became of every order, read from the streams by the checker.
#[derive(Debug)]
pub struct Verdict {
    /// Orders expected.
    pub expected: usize,
    /// Orders with a processed event.
    pub processed: usize,
    /// Orders with a dead-letter record.
    pub dead_lettered: usize,
    /// Orders with neither.
    pub lost: Vec<String>,
    /// Orders with more than one record (processed or dead-lettered) between them.
    pub duplicated: Vec<String>,
    /// Messages the consumer still had pending or unacknowledged when the checker gave up
    /// waiting for it to settle.
    pub stuck: u64,
    /// How long the consumer took to settle after the load stopped.
    pub settled_in: Duration,
}

impl Verdict {
    /// Panics, with the figures and `context`, unless nothing was lost, duplicated or stuck.
    pub fn assert_clean(&self, context: &str) {
        assert!(
            self.lost.is_empty() && self.duplicated.is_empty() && self.stuck == 0,
            "{self}\nlost: {:?}\nduplicated: {:?}\n{context}",
            first(&self.lost),
            first(&self.duplicated)
        );
    }
}

fn first(ids: &[String]) -> &[String] {
    &ids[..ids.len().min(20)]
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} orders: {} processed, {} dead-lettered, {} lost, {} duplicated, {} stuck; settled in {:.1}s",
            self.expected,
            self.processed,
            self.dead_lettered,
            self.lost.len(),
            self.duplicated.len(),
            self.stuck,
            self.settled_in.as_secs_f64()
        )
    }
}

/// Waits up to `within` for consumer `proc` on ORDERS to have nothing pending and nothing
/// unacknowledged, then reads every processed event (`orders.processed`, by its `order-id`
/// header) and every dead-letter record (by the `id` in its payload) and accounts for each of
/// `ids`. Right after a leader change the consumer can read as settled a moment before the
/// host acks a delivery it is still handling (its event stored just after the read), so an
/// order missing then is looked for again until `within` has passed: lost means still missing
/// at the end.
pub async fn check(
    js: &jetstream::Context,
    ids: impl IntoIterator<Item = String>,
    within: Duration,
) -> anyhow::Result<Verdict> {
    let ids: Vec<String> = ids.into_iter().collect();
    let started = Instant::now();
    let deadline = started + within;
    loop {
        let stuck = settle(js, deadline.saturating_duration_since(Instant::now())).await?;
        let settled_in = started.elapsed();
        let verdict = account(&ids, &records(js).await?, stuck, settled_in);
        if verdict.lost.is_empty() || Instant::now() >= deadline {
            return Ok(verdict);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Per order id, its processed events and its dead-letter records, as the streams hold them.
async fn records(js: &jetstream::Context) -> anyhow::Result<HashMap<String, (usize, usize)>> {
    let mut records: HashMap<String, (usize, usize)> = HashMap::new();
    for message in read_with_retries(js, "ORDERS", "orders.processed").await? {
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("order-id"))
            .map(|v| v.to_string())
            .context("a processed event without an order-id header")?;
        records.entry(id).or_default().0 += 1;
    }
    for message in read_with_retries(js, "DEADLETTER", "deadletter.>").await? {
        let payload: serde_json::Value =
            serde_json::from_slice(&message.payload).unwrap_or_default();
        if let Some(id) = payload.get("id").and_then(|id| id.as_str()) {
            records.entry(id.to_owned()).or_default().1 += 1;
        }
    }
    Ok(records)
}

/// What became of each of `ids`, by `records`.
fn account(
    ids: &[String],
    records: &HashMap<String, (usize, usize)>,
    stuck: u64,
    settled_in: Duration,
) -> Verdict {
    let (mut processed, mut dead_lettered) = (0, 0);
    let (mut lost, mut duplicated) = (Vec::new(), Vec::new());
    for id in ids {
        let (done, dead) = records.get(id).copied().unwrap_or_default();
        processed += usize::from(done > 0);
        dead_lettered += usize::from(dead > 0);
        match done + dead {
            0 => lost.push(id.clone()),
            1 => {}
            _ => duplicated.push(id.clone()),
        }
    }
    Verdict {
        expected: ids.len(),
        processed,
        dead_lettered,
        lost,
        duplicated,
        stuck,
        settled_in,
    }
}

/// Waits until consumer `proc` on ORDERS has nothing pending or unacknowledged; returns what
/// it still had after `within` (0 when it settled).
pub async fn settle(js: &jetstream::Context, within: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let consumer = js.get_consumer_from_stream::<pull::Config, _, _>("proc", "ORDERS");
        let unsettled = match consumer.await {
            Ok(mut consumer) => match consumer.info().await {
                Ok(info) => Some(info.num_pending + info.num_ack_pending as u64),
                Err(_) => None,
            },
            // The server (or the stream's leader) may still be coming back.
            Err(_) => None,
        };
        if unsettled == Some(0) {
            return Ok(0);
        }
        if Instant::now() >= deadline {
            return unsettled.context("the consumer cannot be read");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`read_all`], tried again a few times: right after a fault a busy cluster may time out
/// the checker's own API requests (creating its consumer), which says nothing about the host.
async fn read_with_retries(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> anyhow::Result<Vec<Message>> {
    let mut attempt = 1;
    loop {
        match read_all(js, stream, filter).await {
            Ok(all) => return Ok(all),
            Err(e) if attempt < 5 => {
                println!("checker: reading {stream} failed ({e:#}); trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context(format!("reading {stream} {attempt} times"))),
        }
    }
}

/// Every message in `stream` under `filter`, read by a consumer of the checker's own.
async fn read_all(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> anyhow::Result<Vec<Message>> {
    let stream = js.get_stream(stream).await?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: filter.to_owned(),
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    let mut remaining = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    let mut all = Vec::new();
    while remaining > 0 {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("reading the stream stalled")?
            .context("the stream ended")??;
        all.push(message);
        remaining -= 1;
    }
    Ok(all)
}

/// The ids `o-0` to `o-(n-1)` a [`Load`] of `n` orders published.
pub fn order_ids(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("o-{i}"))
}
