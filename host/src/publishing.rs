//! Publishing to JetStream and waiting for the stream's acknowledgement, with errors mapped
//! to the contract's `publish-error`. Used by the `publish` import and for dead letters.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::header::HeaderMap;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::{self};

use crate::bindings::{PublishAck, PublishError};

/// Publishes and waits for the PubAck. A timed-out publish is retried once with the same
/// message id, which the stream deduplicates. While the connection is down it fails at once
/// with `unavailable` and sends nothing: the client would otherwise buffer the message and
/// store it on reconnect, long after the caller was told it failed.
pub async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<PublishAck, PublishError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        if js.client().connection_state() != State::Connected {
            return Err(PublishError::Unavailable(
                "not connected to NATS (reconnecting); nothing was published".to_owned(),
            ));
        }
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
                PublishErrorKind::StreamNotFound => {
                    return Err(no_stream_or_unavailable(js, subject).await)
                }
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

/// A publish nobody answered means either that no stream captures the subject, or that the
/// stream capturing it has no leader right now (an election after a node loss). Only the first
/// is `no-stream`: a handler that terms on it must not dead-letter good messages at every
/// failover. The meta leader knows the streams even while a stream elects its leader.
async fn no_stream_or_unavailable(js: &jetstream::Context, subject: String) -> PublishError {
    match js.stream_by_subject(subject.clone()).await {
        Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => PublishError::NoStream(subject),
        Ok(stream) => PublishError::Unavailable(format!(
            "stream {stream} did not answer (no leader: an election or a lost node); retry"
        )),
        Err(e) => PublishError::Unavailable(format!(
            "no stream answered for {subject} and JetStream could not say which captures it: {e}"
        )),
    }
}
