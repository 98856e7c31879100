//! Dead-letter records: the original message (payload and headers) with what happened to it,
//! published to `<prefix>.<stream>.<consumer>` and confirmed by the stream before the original
//! is terminated.

use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream;

use crate::ack::{RetrySchedule, DEAD_LETTER_ATTEMPTS};
use crate::publish::{publish_acked, Connection};

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
    /// [`unreadable`](crate::dead_letter::unreadable)): the original's raw header block, base64, as the stream stores it.
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

/// What a record carries of the original message.
pub struct Contents<'a> {
    /// The original payload (cut to fit when too large: see [`headers::TRUNCATED`]).
    pub payload: bytes::Bytes,
    /// The original headers, copied into the record but for the server's own.
    pub headers: Option<&'a HeaderMap>,
    /// The original header block, base64, when it could not be read as headers.
    pub raw_headers: Option<String>,
}

impl<'a> Contents<'a> {
    /// What a delivered message's record carries; a message the client read lossily keeps
    /// its raw headers too (read back from the stream).
    pub async fn of(message: &'a jetstream::Message, source: &Source<'_>) -> Contents<'a> {
        let raw_headers = match unreadable(message.headers.as_ref()) {
            Some(_) => raw_headers(&message.context, source.stream, source.seq).await,
            None => None,
        };
        Contents {
            payload: message.payload.clone(),
            headers: message.headers.as_ref(),
            raw_headers,
        }
    }
}

/// Writes the record, pausing as `retries` says between attempts (see
/// [`RetrySchedule`]); the caller keeps the message in progress meanwhile, so an outage of the
/// dead-letter stream loses nothing. Returns false when the stream already held a record of
/// this message (its message id is derived from the original).
pub async fn write(
    connection: &Connection,
    prefix: &str,
    source: &Source<'_>,
    reason: &str,
    contents: &Contents<'_>,
    mut retries: RetrySchedule,
) -> anyhow::Result<bool> {
    let mut attempt = 1;
    loop {
        let result = publish(connection, prefix, source, reason, contents).await;
        match (result, retries.next()) {
            (Err(e), Some(pause)) => {
                if attempt < DEAD_LETTER_ATTEMPTS {
                    tracing::warn!(handler = source.handler, seq = source.seq, attempt, error = %format!("{e:#}"), "dead letter not written; retrying");
                } else {
                    tracing::error!(handler = source.handler, seq = source.seq, attempt, error = %format!("{e:#}"), "dead letter still not written on the message's last delivery; holding it and retrying");
                }
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            (result, _) => return result,
        }
    }
}

/// Publishes the record and waits for the stream to store it. Its message id is derived from
/// the original, so a retried dead-lettering stores one record.
async fn publish(
    connection: &Connection,
    prefix: &str,
    source: &Source<'_>,
    reason: &str,
    contents: &Contents<'_>,
) -> anyhow::Result<bool> {
    let mut map = record_headers(source, reason, contents.headers);
    let payload = contents.payload.clone();
    if let Some(raw) = contents.raw_headers.as_deref() {
        let name = HeaderName::from_str(headers::ORIGINAL_HEADERS).expect("a valid header name");
        map.insert(name, HeaderValue::from(raw));
    }
    let max_payload = connection.js.client().server_info().max_payload;
    let payload = match fitting_payload(payload.len(), header_bytes(&map), max_payload) {
        Some(fits) => {
            let name = HeaderName::from_str(headers::TRUNCATED).expect("a valid header name");
            map.insert(name, HeaderValue::from(payload.len().to_string().as_str()));
            payload.slice(..fits)
        }
        None => payload,
    };
    publish_acked(
        connection,
        subject(prefix, source.stream, source.consumer),
        map,
        payload,
    )
    .await
    .map(|ack| !ack.duplicate)
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

/// A message as its stream stores it, read back through the message-get API: bytes the
/// client's parser would not take are intact there.
pub struct Stored {
    /// Its subject (lossy where it is not UTF-8).
    pub subject: String,
    /// Its payload.
    pub payload: bytes::Bytes,
    /// Its header block, base64, if it has one.
    pub raw_headers: Option<String>,
}

/// Reads message `seq` of `stream` as the stream stores it.
pub async fn stored(js: &jetstream::Context, stream: &str, seq: u64) -> anyhow::Result<Stored> {
    use base64::Engine as _;
    let value: serde_json::Value = js
        .request(
            format!("STREAM.MSG.GET.{stream}"),
            &serde_json::json!({ "seq": seq }),
        )
        .await?;
    if let Some(error) = value.get("error") {
        anyhow::bail!("reading message {seq} of {stream}: {error}");
    }
    let message = &value["message"];
    let data = message["data"].as_str().unwrap_or_default();
    let payload = base64::engine::general_purpose::STANDARD.decode(data)?;
    Ok(Stored {
        subject: message["subject"].as_str().unwrap_or_default().to_owned(),
        payload: payload.into(),
        raw_headers: message["hdrs"].as_str().map(str::to_owned),
    })
}

async fn raw_headers(js: &jetstream::Context, stream: &str, seq: u64) -> Option<String> {
    match stored(js, stream, seq).await {
        Ok(stored) => stored.raw_headers,
        Err(e) => {
            tracing::warn!(stream, seq, error = %format!("{e:#}"), "cannot read the raw message for its dead letter");
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
