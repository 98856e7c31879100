//! Publishing to JetStream and waiting for the stream's acknowledgement, with errors mapped
//! to the contract's `publish-error`. Used by the `publish` import and for dead letters.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};

use crate::bindings::{PublishAck, PublishError};

/// Publishes and waits for the PubAck. A timed-out publish is retried once with the same
/// message id, which the stream deduplicates.
pub async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<PublishAck, PublishError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sent = js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await;
        let result = match sent {
            Ok(ack) => ack.await,
            Err(e) => return Err(PublishError::Unavailable(e.to_string())),
        };
        match result {
            Ok(ack) => {
                return Ok(PublishAck {
                    stream: ack.stream,
                    seq: ack.sequence,
                    duplicate: ack.duplicate,
                })
            }
            Err(e) => match e.kind() {
                PublishErrorKind::StreamNotFound => return Err(PublishError::NoStream(subject)),
                PublishErrorKind::TimedOut if attempt < 2 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                PublishErrorKind::TimedOut => return Err(PublishError::Timeout),
                PublishErrorKind::MaxPayloadExceeded => {
                    return Err(PublishError::TooLarge(
                        js.client().server_info().max_payload as u64,
                    ))
                }
                _ => return Err(PublishError::Unavailable(e.to_string())),
            },
        }
    }
}
