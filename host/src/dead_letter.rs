//! Dead-letter records: the original message (payload and headers) with what happened to it,
//! published to `<prefix>.<stream>.<consumer>` and confirmed by the stream before the original
//! is terminated.

use std::str::FromStr;
use std::time::Duration;

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
    /// Set on the record of a message the client could only read lossily (see
    /// [`unreadable`]): the original's raw header block, base64, as the stream stores it.
    pub const ORIGINAL_HEADERS: &str = "Jetwasm-Original-Headers";
    /// Set when the record carries only the start of the payload (it would not fit the
    /// server's max payload with the record's headers): the original payload's size in bytes.
    /// The whole message stays in its stream at `Jetwasm-Sequence` while the stream keeps it.
    pub const TRUNCATED: &str = "Jetwasm-Truncated";
}

/// Longest reason kept in a record.
const MAX_REASON: usize = 1024;

/// The subject records of `stream`/`consumer` go to.
pub fn subject(prefix: &str, stream: &str, consumer: &str) -> String {
    format!("{prefix}.{stream}.{consumer}")
}

/// Attempts at writing a dead letter before giving up on this delivery, when JetStream will
/// deliver the message again.
pub const ATTEMPTS: u32 = 6;

/// Writes the record of `message`, up to `attempts` times with a growing pause (about 8s for
/// the first [`ATTEMPTS`], then every 4s); the caller keeps the message in progress
/// meanwhile, so an outage of the dead-letter stream loses nothing.
pub async fn write(
    message: &jetstream::Message,
    prefix: &str,
    source: &Source<'_>,
    reason: &str,
    attempts: u32,
) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(250);
    let mut attempt = 1;
    // A message the client read lossily keeps its raw headers in the record.
    let raw_headers = match unreadable(message.headers.as_ref()) {
        Some(_) => raw_headers(&message.context, source.stream, source.seq).await,
        None => None,
    };
    loop {
        let written = publish(
            &message.context,
            prefix,
            source,
            reason,
            message.payload.clone(),
            message.headers.as_ref(),
            raw_headers.as_deref(),
        )
        .await;
        match written {
            Err(e) if attempt < attempts => {
                if attempt < ATTEMPTS {
                    tracing::warn!(handler = source.handler, seq = source.seq, attempt, error = %format!("{e:#}"), "dead letter not written; retrying");
                } else {
                    tracing::error!(handler = source.handler, seq = source.seq, attempt, error = %format!("{e:#}"), "dead letter still not written on the message's last delivery; holding it and retrying");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(4));
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Publishes the record and waits for the stream to store it. Its message id is derived from
/// the original, so a retried dead-lettering stores one record.
async fn publish(
    js: &jetstream::Context,
    prefix: &str,
    source: &Source<'_>,
    reason: &str,
    payload: bytes::Bytes,
    original: Option<&HeaderMap>,
    raw_headers: Option<&str>,
) -> anyhow::Result<()> {
    let mut map = record_headers(source, reason, original);
    if let Some(raw) = raw_headers {
        let name = HeaderName::from_str(headers::ORIGINAL_HEADERS).expect("a valid header name");
        map.insert(name, HeaderValue::from(raw));
    }
    let max_payload = js.client().server_info().max_payload;
    let payload = match fitting_payload(payload.len(), header_bytes(&map), max_payload) {
        Some(fits) => {
            let name = HeaderName::from_str(headers::TRUNCATED).expect("a valid header name");
            map.insert(name, HeaderValue::from(payload.len().to_string().as_str()));
            payload.slice(..fits)
        }
        None => payload,
    };
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

/// Why `message` cannot be handed to a handler as it is, if it cannot: the client read its
/// subject or headers lossily (bytes that are not UTF-8, a header line it could not parse),
/// and the contract's subject and headers are strings, so they would not arrive intact.
pub fn unreadable(headers: Option<&HeaderMap>) -> Option<String> {
    let lossy = headers?.get(async_nats::header::NATS_CLIENT_LOSSY)?;
    Some(format!(
        "the message cannot reach the handler intact: {}; its raw headers are in {}",
        lossy.as_str(),
        headers::ORIGINAL_HEADERS
    ))
}

/// The raw header block of message `seq` in `stream`, base64, as the stream's message-get
/// API returns it (bytes the client's parser would not take are intact there).
pub async fn raw_headers(js: &jetstream::Context, stream: &str, seq: u64) -> Option<String> {
    let response: Result<serde_json::Value, _> = js
        .request(
            format!("STREAM.MSG.GET.{stream}"),
            &serde_json::json!({ "seq": seq }),
        )
        .await;
    match response {
        Ok(value) => value["message"]["hdrs"].as_str().map(str::to_owned),
        Err(e) => {
            tracing::warn!(stream, seq, error = %e, "cannot read the raw message for its dead letter");
            None
        }
    }
}

/// Room kept for the `Jetwasm-Truncated` header and the protocol's framing.
const TRUNCATION_MARGIN: usize = 128;

/// `None` when a record with this payload and these header bytes fits `max_payload`; else how
/// many payload bytes fit beside the headers and the truncation header.
fn fitting_payload(payload: usize, headers: usize, max_payload: usize) -> Option<usize> {
    (payload + headers > max_payload)
        .then(|| max_payload.saturating_sub(headers + TRUNCATION_MARGIN))
}

/// The size of `map` on the wire: the version line, `Name: value` lines and the blank line.
fn header_bytes(map: &HeaderMap) -> usize {
    let lines: usize = map
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |v| (name, v)))
        .map(|(name, value)| AsRef::<[u8]>::as_ref(name).len() + value.as_str().len() + 4)
        .sum();
    "NATS/1.0\r\n\r\n".len() + lines
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

    /// Message 7 of ORDERS, on its `delivered`th delivery to `proc`.
    fn source(delivered: u32) -> Source<'static> {
        Source {
            handler: "orders",
            subject: "orders.created",
            stream: "ORDERS",
            consumer: "proc",
            seq: 7,
            delivered,
        }
    }

    #[test]
    fn a_message_read_lossily_is_unreadable_with_what_was_wrong() {
        assert_eq!(unreadable(None), None);
        let mut map = HeaderMap::new();
        map.insert("order-id", "o-1");
        assert_eq!(unreadable(Some(&map)), None);
        map.insert(
            async_nats::header::NATS_CLIENT_LOSSY,
            "a header is not valid UTF-8",
        );
        let why = unreadable(Some(&map)).unwrap();
        assert!(why.contains("a header is not valid UTF-8"), "{why}");
    }

    #[test]
    fn a_record_too_large_for_the_server_keeps_the_start_of_the_payload() {
        let map = record_headers(&source(1), "too big to handle", None);
        let headers = header_bytes(&map);
        assert!((150..400).contains(&headers), "{headers}");
        assert_eq!(fitting_payload(1000, headers, 1 << 20), None);
        assert_eq!(fitting_payload((1 << 20) - headers, headers, 1 << 20), None);
        let fits = fitting_payload(1 << 20, headers, 1 << 20).unwrap();
        assert_eq!(fits, (1 << 20) - headers - TRUNCATION_MARGIN);
        assert_eq!(
            fitting_payload(10, 500, 300),
            Some(0),
            "headers alone too big"
        );
    }

    #[test]
    fn record_keeps_original_headers_and_names_what_happened() {
        let mut original = HeaderMap::new();
        original.append("order-id", "o-1");
        original.append("order-id", "o-2");
        original.insert(NATS_MESSAGE_ID, "client-id");
        let map = record_headers(&source(3), "bad\nthing", Some(&original));
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
