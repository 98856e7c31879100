//! Dead-letter records: the original message (payload and headers) with what happened to it,
//! published to `<prefix>.<stream>.<consumer>` and confirmed by the stream before the original
//! is terminated.

use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream;

use crate::publishing::publish_acked;

/// Where a dead-lettered message came from.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    /// The handler that gave up on it.
    pub handler: &'a str,
    /// Its subject.
    pub subject: &'a str,
    /// Its stream.
    pub stream: &'a str,
    /// The consumer that delivered it.
    pub consumer: &'a str,
    /// Its stream sequence.
    pub seq: u64,
    /// Deliveries so far.
    pub delivered: u32,
}

/// Header names of a dead-letter record.
pub mod headers {
    /// The original subject.
    pub const SUBJECT: &str = "Jetwasm-Subject";
    /// The original stream.
    pub const STREAM: &str = "Jetwasm-Stream";
    /// The consumer that delivered it.
    pub const CONSUMER: &str = "Jetwasm-Consumer";
    /// The original stream sequence.
    pub const SEQUENCE: &str = "Jetwasm-Sequence";
    /// Deliveries made.
    pub const DELIVERED: &str = "Jetwasm-Delivered";
    /// The handler.
    pub const HANDLER: &str = "Jetwasm-Handler";
    /// Why it was dead-lettered.
    pub const REASON: &str = "Jetwasm-Reason";
}

/// Longest reason kept in a record.
const MAX_REASON: usize = 1024;

/// The subject records of `stream`/`consumer` go to.
pub fn subject(prefix: &str, stream: &str, consumer: &str) -> String {
    format!("{prefix}.{stream}.{consumer}")
}

/// Publishes the record and waits for the stream to store it. Its message id is derived from
/// the original, so a retried dead-lettering stores one record.
pub async fn publish(
    js: &jetstream::Context,
    prefix: &str,
    source: &Source<'_>,
    reason: &str,
    payload: bytes::Bytes,
    original: Option<&HeaderMap>,
) -> anyhow::Result<()> {
    let map = record_headers(source, reason, original);
    publish_acked(
        js,
        subject(prefix, source.stream, source.consumer),
        map,
        payload,
    )
    .await
    .map(drop)
    .map_err(|e| anyhow::anyhow!("dead-letter publish failed: {e:?}"))
}

fn record_headers(source: &Source<'_>, reason: &str, original: Option<&HeaderMap>) -> HeaderMap {
    let mut map = HeaderMap::new();
    // The original's headers travel along, except the server's own (Nats-Msg-Id above all,
    // which would make the record a "duplicate" of unrelated traffic).
    for (name, values) in original.into_iter().flat_map(HeaderMap::iter) {
        if name.to_string().to_ascii_lowercase().starts_with("nats-") {
            continue;
        }
        for value in values {
            map.append(name.clone(), value.clone());
        }
    }
    let one_line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON)
        .collect();
    for (name, value) in [
        (headers::SUBJECT, source.subject.to_owned()),
        (headers::STREAM, source.stream.to_owned()),
        (headers::CONSUMER, source.consumer.to_owned()),
        (headers::SEQUENCE, source.seq.to_string()),
        (headers::DELIVERED, source.delivered.to_string()),
        (headers::HANDLER, source.handler.to_owned()),
        (headers::REASON, one_line),
    ] {
        let name = HeaderName::from_str(name).expect("constant header names are valid");
        let value =
            HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from("(unprintable)"));
        map.insert(name, value);
    }
    let id = format!("dlq:{}:{}:{}", source.stream, source.consumer, source.seq);
    map.insert(NATS_MESSAGE_ID, HeaderValue::from(id.as_str()));
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_original_headers_and_names_what_happened() {
        let mut original = HeaderMap::new();
        original.append("order-id", "o-1");
        original.append("order-id", "o-2");
        original.insert(NATS_MESSAGE_ID, "client-id");
        let source = Source {
            handler: "orders",
            subject: "orders.created",
            stream: "ORDERS",
            consumer: "proc",
            seq: 7,
            delivered: 3,
        };
        let map = record_headers(&source, "bad\nthing", Some(&original));
        let ids: Vec<&str> = map.get_all("order-id").map(|v| v.as_str()).collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(map.get(headers::REASON).unwrap().as_str(), "bad thing");
        assert_eq!(map.get(headers::SEQUENCE).unwrap().as_str(), "7");
        assert_eq!(
            map.get(NATS_MESSAGE_ID).unwrap().as_str(),
            "dlq:ORDERS:proc:7"
        );
        assert_eq!(
            subject("deadletter", "ORDERS", "proc"),
            "deadletter.ORDERS.proc"
        );
    }
}
