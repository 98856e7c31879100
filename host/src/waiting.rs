//! Messages a lane holds without a free slot for them yet, kept in progress with JetStream
//! while they wait, and the in-progress signal itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};

/// Messages a lane has received but has no free slot for yet. Their ack wait runs while they
/// wait, so each is kept in progress with JetStream, like a running call, and none is
/// redelivered for waiting its turn. They stay across a rebind; on shutdown they are handed
/// back.
#[derive(Default)]
pub struct Waiting {
    messages: VecDeque<(Instant, jetstream::Message)>,
}

impl Waiting {
    /// True when no message waits.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Queues `message`; its wait starts now.
    pub fn push(&mut self, message: jetstream::Message) {
        self.messages.push_back((Instant::now(), message));
    }

    /// The message that has waited longest. Only called when one waits.
    pub fn pop(&mut self) -> jetstream::Message {
        let (_, message) = self.messages.pop_front().expect("a message is waiting");
        message
    }

    /// Sends in-progress for every message that has waited `every` since it arrived or since
    /// its last in-progress.
    pub async fn keep_in_progress(&mut self, every: Duration) {
        let now = Instant::now();
        for (since, message) in self.messages.iter_mut() {
            if now.duration_since(*since) >= every {
                mark_in_progress(message).await;
                *since = now;
            }
        }
    }

    /// Naks every waiting message, so that JetStream redelivers it now (to another host, or
    /// to this one when it is back) rather than after its ack wait.
    pub async fn hand_back(&mut self, handler: &str) {
        let count = self.messages.len();
        for (_, message) in self.messages.drain(..) {
            if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(handler, error = %e, "handing back a waiting message failed; JetStream redelivers it after its ack wait");
            }
        }
        if count > 0 {
            tracing::info!(
                handler,
                count,
                "handed back messages still waiting for a slot"
            );
        }
    }
}

/// Tells JetStream that `message` is still being worked on, so its ack wait starts again.
pub async fn mark_in_progress(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Progress).await {
        tracing::warn!(error = %e, "in-progress update failed");
    }
}
