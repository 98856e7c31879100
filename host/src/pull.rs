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

/// Idle heartbeat asked of the server while a request is open; two missed ones end the pull.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the server keeps a request open when it has nothing to deliver.
const EXPIRES: Duration = Duration::from_secs(30);

/// Why a pull ended; the lane rebinds.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("no heartbeat from the server for {0:?} with a pull request open")]
    MissedHeartbeats(Duration),
    #[error("the consumer was deleted")]
    ConsumerDeleted,
    #[error("the server refused the pull: {0}")]
    Refused(String),
    #[error("JetStream did not answer the pull request (no responders)")]
    NoResponders,
    #[error("the subscription for the pull closed")]
    Closed,
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
}

impl Pull {
    /// Subscribes to a fresh inbox for `consumer`'s deliveries. Nothing is asked for yet.
    pub async fn start(
        context: &Context,
        consumer: &PullConsumer,
    ) -> Result<Pull, async_nats::SubscribeError> {
        let config = &consumer.cached_info().config;
        let (expires, heartbeat) = timing(config.max_expires);
        let inbox = context.client().new_inbox();
        let subscriber = context.client().subscribe(format!("{inbox}.*")).await?;
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

    /// The next message delivered. Statuses are handled here: a heartbeat shows the path
    /// works, the end of a request (expired, or ended by the server) closes it; anything that
    /// means the pull cannot go on is an error, as is silence for two heartbeats while a
    /// request is open. Cancel-safe.
    pub async fn next(&mut self) -> Result<jetstream::Message, PullError> {
        loop {
            let silent_until = self.heard + self.heartbeat * 2;
            let message = tokio::select! {
                message = self.subscriber.next() => message.ok_or(PullError::Closed)?,
                _ = tokio::time::sleep_until(silent_until), if !self.open.is_empty() => {
                    return Err(PullError::MissedHeartbeats(self.heartbeat * 2));
                }
            };
            self.heard = Instant::now();
            match message.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    if let Some(oldest) = self.open.front_mut() {
                        oldest.remaining -= 1;
                        if oldest.remaining == 0 {
                            self.open.pop_front();
                        }
                    }
                    return Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    });
                }
                StatusCode::IDLE_HEARTBEAT => {}
                StatusCode::NO_RESPONDERS => return Err(PullError::NoResponders),
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

/// The request's expiry and heartbeat: 30 s and 5 s, or shorter for a consumer that caps how
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
    fn a_request_waits_30s_with_5s_heartbeats_unless_the_consumer_caps_it() {
        let secs = Duration::from_secs;
        assert_eq!(timing(Duration::ZERO), (secs(30), secs(5)));
        assert_eq!(timing(secs(60)), (secs(30), secs(5)));
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
