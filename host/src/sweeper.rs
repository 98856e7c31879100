//! The last delivery needs no host. When a message uses up its deliveries without being
//! settled (its host was killed holding it, say), JetStream publishes a max-deliveries
//! advisory and delivers it no more. Every host listens for its consumers' advisories, in one
//! queue group so that one host takes each, and writes the dead letter from the stream's copy
//! of the message. The record's message id is the one a host handling the last delivery uses,
//! so it is stored once even if both happen.

use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::consumer::Binding;
use crate::dead_letter::{self, Contents, Source};

/// The queue group every host's sweepers share.
const QUEUE_GROUP: &str = "jetwasm-dead-letters";

/// What the advisory says (`io.nats.jetstream.advisory.v1.max_deliver`).
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// The advisory subject for `stream`/`consumer`.
pub fn subject(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

/// Subscribes to `binding`'s advisories (before any message is pulled, so none is missed
/// while this host runs) and writes a dead letter for each until `shutdown`; each write is a
/// task on `tracker`, retried until the record is stored.
pub async fn start(
    binding: Arc<Binding>,
    js: &jetstream::Context,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let subject = subject(&binding.stream, &binding.consumer);
    let mut advisories = js
        .client()
        .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
        .await?;
    js.client().flush().await?;
    let (js, shutdown, writes) = (js.clone(), shutdown.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let advisory = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = advisories.next() => match next {
                    Some(advisory) => advisory,
                    None => return,
                },
            };
            match serde_json::from_slice::<MaxDeliveries>(&advisory.payload) {
                Ok(advisory) => {
                    writes.spawn(sweep(binding.clone(), js.clone(), advisory));
                }
                Err(e) => {
                    tracing::warn!(handler = %binding.name, %subject, error = %e, "unreadable max-deliveries advisory")
                }
            }
        }
    });
    Ok(())
}

/// Writes the dead letter of the message the advisory names, read back from its stream.
async fn sweep(binding: Arc<Binding>, js: jetstream::Context, advisory: MaxDeliveries) {
    let (handler, stream, seq) = (&*binding.name, &binding.stream, advisory.stream_seq);
    let stored = match dead_letter::stored(&js, stream, seq).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(handler, stream, seq, error = %format!("{e:#}"), "a message used up its deliveries with no host to settle it, and it is no longer in its stream: no dead letter");
            return;
        }
    };
    let source = Source {
        handler,
        subject: &stored.subject,
        stream,
        consumer: &binding.consumer,
        seq,
        delivered: u32::try_from(advisory.deliveries).unwrap_or(u32::MAX),
    };
    let reason = format!(
        "used up its {} deliveries with no host to settle the last one (dead-lettered from the stream on JetStream's max-deliveries advisory)",
        advisory.deliveries
    );
    let contents = Contents {
        payload: stored.payload,
        headers: None,
        raw_headers: stored.raw_headers,
    };
    let prefix = &binding.dead_letter;
    match dead_letter::write(&js, prefix, &source, &reason, &contents, u32::MAX).await {
        Ok(()) => {
            binding.metrics.dead_letters.inc();
            tracing::warn!(handler, stream, seq, reason, "dead-lettered");
        }
        Err(e) => {
            tracing::error!(handler, stream, seq, error = %format!("{e:#}"), "dead letter not written")
        }
    }
}
