//! A lane's pull on its durable consumer, asking the server for exactly as many messages as
//! the lane has room to hold.
//!
//! async-nats's pull stream refills itself whenever half its batch has been read, so a lane
//! that stops reading (every slot busy, its waiting queue full) still receives up to one and a
//! half batches into the client's buffer, where nothing keeps them in progress: a slow handler
//! then sees them redelivered and handled twice. Here the lane decides: it asks for `n` more
//! only when it can hold them, so every message the host holds is one the lane has seen and
//! keeps in progress. Requests are pipelined (the next is asked for while the last is still
//! being delivered), each has its own reply subject so the server's end-of-request status
//! closes the right one, and idle heartbeats tell a silent connection from a quiet consumer.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{self, Context};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt as _;
use tokio::time::Instant;

/// Idle heartbeat asked of the server while a request is open. After two missed ones the
/// pull forgets its open requests and asks again (a consumer leader that died took them
/// with it); two more and the pull ends.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// How long the server keeps a request open when it has nothing to deliver.
const EXPIRES: Duration = Duration::from_secs(30);
/// How often an open pull checks whether the client reconnected (the server then forgot its
/// requests: ask again at once rather than after two missed heartbeats).
const RECONNECT_CHECK: Duration = Duration::from_secs(1);
/// How long a pull waits before asking again when JetStream did not answer its request (no
/// responders: the consumer's leader is being elected), and how many times in a row it does
/// so before it ends.
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(500);
const NO_RESPONDERS_TRIES: u32 = 10;
/// How long closing a pull waits for the server to confirm it will send no more.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why a pull ended; the lane rebinds.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The server went silent with a request open.
    #[error("no heartbeat from the server for {0:?} with a pull request open")]
    MissedHeartbeats(Duration),
    /// The consumer is gone.
    #[error("the consumer was deleted")]
    ConsumerDeleted,
    /// The server refused the request (e.g. a push consumer, or past its limits).
    #[error("the server refused the pull: {0}")]
    Refused(String),
    /// Nothing answered the requests (JetStream down or electing).
    #[error("JetStream did not answer {0} pull requests in a row (no responders)")]
    NoResponders(u32),
    /// The client closed the subscription (the connection is gone).
    #[error("the subscription for the pull closed")]
    Closed,
    /// The request could not be sent.
    #[error("cannot send the pull request: {0}")]
    Request(String),
}

/// One open request: its reply subject and the messages it may still deliver.
struct Request {
    reply: Subject,
    remaining: usize,
}

/// A pull on one consumer over one wildcard subscription, with the requests still open.
pub struct Pull {
    consumer: PullConsumer,
    context: Context,
    inbox: String,
    subscriber: Subscriber,
    open: VecDeque<Request>,
    next_id: u64,
    /// The largest request the consumer accepts (`max_batch`), if it sets one.
    max_batch: Option<usize>,
    expires: Duration,
    heartbeat: Duration,
    /// When the server was last heard from on this pull, or the first request sent.
    heard: Instant,
    /// The client's connection count when the pull started.
    connects: u64,
    /// Set when the open requests were given up after a silence, cleared by anything heard.
    asked_again: bool,
    /// Requests in a row JetStream did not answer.
    unanswered: u32,
    /// Counts this pull while it is live: started and not waiting on lost or unanswered
    /// requests (what `/readyz` and `jetwasm_consumer_pulls` report).
    live_pulls: prometheus::IntGauge,
    live: bool,
}

impl Pull {
    /// Subscribes to a fresh inbox for `consumer`'s deliveries and counts itself in
    /// `live_pulls` while live. Nothing is asked for yet.
    pub async fn start(
        context: &Context,
        consumer: &PullConsumer,
        live_pulls: prometheus::IntGauge,
    ) -> Result<Pull, async_nats::SubscribeError> {
        let config = &consumer.cached_info().config;
        let (expires, heartbeat) = timing(config.max_expires);
        let inbox = context.client().new_inbox();
        let subscriber = context.client().subscribe(format!("{inbox}.*")).await?;
        live_pulls.inc();
        Ok(Pull {
            consumer: consumer.clone(),
            context: context.clone(),
            inbox,
            subscriber,
            open: VecDeque::new(),
            next_id: 0,
            max_batch: usize::try_from(config.max_batch).ok().filter(|n| *n > 0),
            expires,
            heartbeat,
            heard: Instant::now(),
            connects: connects(context),
            asked_again: false,
            unanswered: 0,
            live_pulls,
            live: true,
        })
    }

    /// Messages asked for and not delivered yet.
    pub fn outstanding(&self) -> usize {
        self.open.iter().map(|r| r.remaining).sum()
    }

    /// The most a request for `n` messages asks for: `n`, or the consumer's cap.
    pub fn largest_request(&self, n: usize) -> usize {
        self.max_batch.map_or(n, |max| n.min(max))
    }

    /// Asks for up to `n` more messages (fewer when the consumer caps requests); returns how
    /// many were asked for.
    pub async fn request(&mut self, n: usize) -> Result<usize, PullError> {
        let n = self.largest_request(n);
        if n == 0 {
            return Ok(0);
        }
        self.next_id += 1;
        let reply = Subject::from(format!("{}.{}", self.inbox, self.next_id));
        let batch = BatchConfig {
            batch: n,
            expires: Some(self.expires),
            idle_heartbeat: self.heartbeat,
            ..Default::default()
        };
        self.consumer
            .request_batch(batch, reply.clone())
            .await
            .map_err(|e| PullError::Request(e.to_string()))?;
        if self.open.is_empty() {
            self.heard = Instant::now();
        }
        self.open.push_back(Request {
            reply,
            remaining: n,
        });
        Ok(n)
    }

    /// The next message delivered, or `None` when the open requests were given up and the
    /// caller should ask again: the client reconnected (the server forgot them), the server
    /// went silent for two heartbeats (a consumer leader that died takes its requests with
    /// it), or JetStream did not answer (the consumer's leader is being elected). Statuses are handled here: a heartbeat shows
    /// the path works, the end of a request (expired, or ended by the server) closes it;
    /// anything that means the pull cannot go on is an error, as is a second silence in a
    /// row. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<jetstream::Message>, PullError> {
        loop {
            let silent_until = self.heard + self.heartbeat * 2;
            let message = tokio::select! {
                message = self.subscriber.next() => message.ok_or(PullError::Closed)?,
                _ = tokio::time::sleep_until(silent_until), if !self.open.is_empty() => {
                    if self.asked_again {
                        return Err(PullError::MissedHeartbeats(self.heartbeat * 4));
                    }
                    self.asked_again = true;
                    self.open.clear();
                    self.set_live(false);
                    return Ok(None);
                }
                _ = tokio::time::sleep(RECONNECT_CHECK), if !self.open.is_empty() => {
                    // The client subscribes again by itself; only the requests are gone.
                    let now = connects(&self.context);
                    if now == self.connects {
                        continue;
                    }
                    self.connects = now;
                    self.open.clear();
                    self.set_live(false);
                    return Ok(None);
                }
            };
            self.asked_again = false;
            self.heard = Instant::now();
            match message.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    self.unanswered = 0;
                    self.set_live(true);
                    if let Some(oldest) = self.open.front_mut() {
                        oldest.remaining -= 1;
                        if oldest.remaining == 0 {
                            self.open.pop_front();
                        }
                    }
                    return Ok(Some(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                StatusCode::IDLE_HEARTBEAT => {
                    self.unanswered = 0;
                    self.set_live(true);
                }
                StatusCode::NO_RESPONDERS => {
                    // The consumer has no leader for now (an election): ask again shortly.
                    self.open.retain(|r| r.reply != message.subject);
                    self.unanswered += 1;
                    if self.unanswered >= NO_RESPONDERS_TRIES {
                        return Err(PullError::NoResponders(self.unanswered));
                    }
                    self.set_live(false);
                    tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
                    return Ok(None);
                }
                StatusCode::TIMEOUT | StatusCode::NOT_FOUND | StatusCode::REQUEST_TERMINATED => {
                    let description = message.description.unwrap_or_default();
                    match end_of_request(&description) {
                        Ended::Request => self.open.retain(|r| r.reply != message.subject),
                        Ended::Consumer => return Err(PullError::ConsumerDeleted),
                        Ended::Pull => return Err(PullError::Refused(description)),
                    }
                }
                status => {
                    let description = message.description.unwrap_or_default();
                    return Err(PullError::Refused(format!("{status} {description}")));
                }
            }
        }
    }
}

impl Pull {
    /// Ends the pull: unsubscribes, and returns the messages the server sent before the
    /// unsubscribe took effect (its requests may still have been open), so that none is left
    /// unseen to wait out its ack wait. Gives up after `CLOSE_WAIT` on a connection that no
    /// longer answers.
    pub async fn close(mut self) -> Vec<jetstream::Message> {
        self.set_live(false);
        let mut left = Vec::new();
        if self.subscriber.drain().await.is_err() {
            return left;
        }
        let until = Instant::now() + CLOSE_WAIT;
        while let Ok(Some(message)) = tokio::time::timeout_at(until, self.subscriber.next()).await {
            if message.status.is_none_or(|s| s == StatusCode::OK) {
                left.push(jetstream::Message {
                    message,
                    context: self.context.clone(),
                });
            }
        }
        left
    }
}

impl Pull {
    fn set_live(&mut self, live: bool) {
        if live != self.live {
            self.live = live;
            if live {
                self.live_pulls.inc();
            } else {
                self.live_pulls.dec();
            }
        }
    }
}

/// How many times the client behind `context` has connected.
fn connects(context: &Context) -> u64 {
    let statistics = context.client().statistics();
    statistics
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The request's expiry and heartbeat: 30 s and 3 s, or shorter for a consumer that caps how
/// long a request may wait (`max_expires`); the server wants the heartbeat under half the
/// expiry.
fn timing(max_expires: Duration) -> (Duration, Duration) {
    let expires = if max_expires.is_zero() {
        EXPIRES
    } else {
        EXPIRES.min(max_expires)
    };
    (expires, HEARTBEAT.min(expires / 3))
}

/// What a status that ends a request means for the pull.
#[derive(Debug, PartialEq)]
enum Ended {
    /// Only that request ended (it expired, the leader changed, too many were waiting):
    /// ask again.
    Request,
    /// The consumer is gone: rebind.
    Consumer,
    /// The same request would be refused again (a limit of the consumer, a push consumer):
    /// rebind, which reads the consumer's limits again.
    Pull,
}

fn end_of_request(description: &str) -> Ended {
    if description == "Consumer Deleted" {
        Ended::Consumer
    } else if description == "Consumer is push based"
        || description.starts_with("Exceeded MaxRequest")
    {
        Ended::Pull
    } else {
        Ended::Request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_waits_30s_with_3s_heartbeats_unless_the_consumer_caps_it() {
        let secs = Duration::from_secs;
        assert_eq!(timing(Duration::ZERO), (secs(30), secs(3)));
        assert_eq!(timing(secs(60)), (secs(30), secs(3)));
        assert_eq!(timing(secs(6)), (secs(6), secs(2)));
    }

    #[test]
    fn only_a_deleted_consumer_or_a_refused_request_ends_the_pull() {
        assert_eq!(end_of_request("Request Timeout"), Ended::Request);
        assert_eq!(end_of_request("Leadership Change"), Ended::Request);
        assert_eq!(end_of_request("Exceeded MaxWaiting"), Ended::Request);
        assert_eq!(end_of_request("Consumer Deleted"), Ended::Consumer);
        assert_eq!(
            end_of_request("Exceeded MaxRequestBatch of 10"),
            Ended::Pull
        );
        assert_eq!(end_of_request("Consumer is push based"), Ended::Pull);
    }
}
