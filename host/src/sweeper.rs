//! The last delivery needs no host. When a message uses up its deliveries without being
//! settled (its host was killed holding it, say), JetStream publishes a max-deliveries
//! advisory and delivers it no more. Every host listens for its consumers' advisories, in one
//! queue group so that one host takes each, and writes the dead letter from the stream's copy
//! of the message. JetStream also gives up on a message a host still works on when its ack
//! wait runs out on the last delivery, so the sweeper first waits [`Version::sweep_delay`](crate::binding::Version::sweep_delay)
//! (the handler's call timeout and a margin): a host still working writes its own record
//! first, and the record's message id, the one a host uses, makes the sweeper's a duplicate
//! that the stream drops. Sweeps still waiting when the host stops are dropped with it.

use std::sync::Arc;

use async_nats::jetstream;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ack::RetrySchedule;
use crate::binding::Binding;
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
/// while this host runs) and writes a dead letter for each until `shutdown` (see the module's
/// notes on timing); the listening task is on `tracker`.
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
    let (js, shutdown) = (js.clone(), shutdown.clone());
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
                    let (binding, js, stop) = (binding.clone(), js.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = sweep(binding, js, advisory) => {}
                        }
                    });
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
    tokio::time::sleep(binding.version().sweep_delay).await;
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
    match dead_letter::write(
        &binding.tenant.connection,
        prefix,
        &source,
        &reason,
        &contents,
        RetrySchedule::until_written(),
    )
    .await
    {
        Ok(true) => {
            binding.metrics.dead_letters.inc();
            tracing::warn!(handler, stream, seq, reason, "dead-lettered");
        }
        Ok(false) => {
            tracing::debug!(handler, stream, seq, "a host had already dead-lettered it")
        }
        Err(e) => {
            tracing::error!(handler, stream, seq, error = %format!("{e:#}"), "dead letter not written")
        }
    }
}
