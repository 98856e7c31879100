//! Publishing to JetStream: the checks a component's publish passes first (pure), and the
//! publish itself, waiting for the stream's acknowledgement, with errors mapped to the
//! contract's `publish-error`. Used by the `publish` import and for dead letters.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use tokio::sync::broadcast;

use async_nats::header::{
    HeaderMap, HeaderName, HeaderValue, NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_MESSAGE_ID,
};
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::{self};
use async_nats::RequestErrorKind;

use crate::bindings::{PublishAck, PublishError};
use crate::config::PublishPolicy;

/// What a component may still publish in the current call.
pub struct Allowance<'a> {
    /// This publish's number in the call, counting from 1.
    pub nth: u32,
    /// Most publishes per call.
    pub max_publishes: u32,
    /// Where the component may publish.
    pub policy: &'a PublishPolicy,
    /// The server's largest payload.
    pub max_payload: usize,
}

/// Checks a component's publish before anything is sent, in the order the contract documents
/// (quota, subject, permission, size, headers, message id), and returns the headers to send,
/// with `msg_id`, if any, as the message id.
pub fn check(
    subject: &str,
    payload_len: usize,
    headers: Vec<(String, String)>,
    msg_id: Option<&str>,
    allowance: &Allowance<'_>,
) -> Result<HeaderMap, PublishError> {
    if allowance.nth > allowance.max_publishes {
        return Err(PublishError::QuotaExceeded);
    }
    if let Err(why) = stream_init::subject::validate(subject) {
        return Err(PublishError::Invalid(format!("subject {subject:?} {why}")));
    }
    if subject.contains(['*', '>']) {
        return Err(PublishError::Invalid(format!(
            "subject {subject:?} has a wildcard"
        )));
    }
    if !allowance.policy.allows(subject) {
        return Err(PublishError::Denied(subject.to_owned()));
    }
    if payload_len > allowance.max_payload {
        return Err(PublishError::TooLarge(allowance.max_payload as u64));
    }
    let mut map = header_map(headers).map_err(PublishError::Invalid)?;
    if let Some(msg_id) = msg_id {
        let id = HeaderValue::from_str(msg_id)
            .map_err(|e| PublishError::Invalid(format!("message id {msg_id:?}: {e}")))?;
        map.insert(NATS_MESSAGE_ID, id);
    }
    Ok(map)
}

fn header_map(headers: Vec<(String, String)>) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let header =
            HeaderName::from_str(&name).map_err(|e| format!("header name {name:?}: {e}"))?;
        if name.to_ascii_lowercase().starts_with("nats-") {
            return Err(format!(
                "header {name:?} is reserved for the server; pass a message id instead"
            ));
        }
        let value =
            HeaderValue::from_str(&value).map_err(|e| format!("header {name:?} value: {e}"))?;
        map.append(header, value);
    }
    Ok(map)
}

/// The subjects of JetStream API requests (what loading a component sends).
pub const JS_API: &str = "$JS.API.";

/// A JetStream connection, and what its server refused: the server enforces the
/// connection's permissions by dropping a forbidden publish and telling the client apart from
/// it, so that is how a publish learns it was denied.
#[derive(Clone)]
pub struct Connection {
    /// The JetStream context.
    pub js: jetstream::Context,
    /// Subjects the server refused to let this connection publish to, as it says so.
    pub denials: Denials,
}

/// The subjects a connection was refused, as the server reports them.
#[derive(Clone)]
pub struct Denials {
    heard: broadcast::Sender<Arc<str>>,
}

impl Default for Denials {
    fn default() -> Self {
        Denials {
            heard: broadcast::channel(64).0,
        }
    }
}

impl Denials {
    /// Notes a server error: returns true when it was a publish permission violation.
    pub fn heard(&self, error: &str) -> bool {
        let Some(subject) = error.strip_prefix("Permissions Violation for Publish to ") else {
            return false;
        };
        let _ = self.heard.send(subject.trim_matches('"').into());
        true
    }

    /// Runs `work` unless the server refuses this connection a subject starting with `prefix`
    /// meanwhile: then the error is that subject, at once (a refused request would otherwise
    /// wait for its timeout). The prefix keeps other work on the same connection out of it: a
    /// running handler's refused publish must not fail a component loading beside it, whose
    /// requests are all `$JS.API.` calls.
    pub async fn during<T>(
        &self,
        prefix: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Arc<str>> {
        let mut heard = self.heard.subscribe();
        let refused = async {
            loop {
                match heard.recv().await {
                    Ok(subject) if subject.starts_with(prefix) => return subject,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return "(a refused subject: too many refusals to tell which)".into()
                    }
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            biased;
            done = work => Ok(done),
            subject = refused => Err(subject),
        }
    }
}

/// Publishes and waits for the PubAck. A timed-out publish with a message id is retried once
/// (the stream deduplicates it); one without is not. While the connection is down it fails at once
/// with `unavailable` and sends nothing: the client would otherwise buffer the message and
/// store it on reconnect, long after the caller was told it failed. A publish the server
/// refuses (the connection's permissions) fails with `denied` as soon as the server says so.
pub async fn publish_acked(
    connection: &Connection,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<PublishAck, PublishError> {
    let mut denied = connection.denials.heard.subscribe();
    let refused = async {
        loop {
            match denied.recv().await {
                Ok(s) if *s == subject => return,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                _ => {}
            }
        }
    };
    tokio::select! {
        biased;
        result = acked(&connection.js, &subject, headers, payload) => result,
        () = refused => Err(PublishError::Denied(format!(
            "{subject} (refused by the NATS server: the connection's permissions do not allow it)"
        ))),
    }
}

async fn acked(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> Result<PublishAck, PublishError> {
    let subject = subject.to_owned();
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
            // A timed-out publish with an id is sent again (the stream drops a second copy);
            // one without an id is not, since the first may have been stored.
            Err(e) if e.kind() == PublishErrorKind::TimedOut && attempt < 2 && has_id(&headers) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(ack_error(js, subject, e).await),
        }
    }
}

/// Whether a publish carries a message id, so that sending it again stores it once.
fn has_id(headers: &HeaderMap) -> bool {
    headers.get(NATS_MESSAGE_ID).is_some()
}

/// The contract's error for a publish the stream did not acknowledge.
async fn ack_error(
    js: &jetstream::Context,
    subject: String,
    error: jetstream::context::PublishError,
) -> PublishError {
    match error.kind() {
        PublishErrorKind::StreamNotFound => no_stream_or_unavailable(js, subject).await,
        PublishErrorKind::TimedOut => PublishError::Timeout,
        PublishErrorKind::MaxPayloadExceeded => {
            PublishError::TooLarge(js.client().server_info().max_payload as u64)
        }
        _ => PublishError::Unavailable(error.to_string()),
    }
}

/// Publishes every message of `batch` at once and then awaits their PubAcks together: what
/// the client does for a burst, far faster than [`publish_acked`] one after another. A
/// message whose ack does not come back fine (a timeout, no stream, a refusal) is published
/// again through [`publish_acked`] when it has a message id (so the stream stores it once),
/// which says what went wrong; without one it is not sent twice, and the error is its own.
pub async fn publish_pipelined(
    connection: &Connection,
    batch: Vec<(String, HeaderMap, bytes::Bytes)>,
) -> Vec<Result<PublishAck, PublishError>> {
    let js = &connection.js;
    if js.client().connection_state() != State::Connected {
        let down = "not connected to NATS (reconnecting); nothing was published";
        return (batch.iter())
            .map(|_| Err(PublishError::Unavailable(down.to_owned())))
            .collect();
    }
    let mut sent = Vec::with_capacity(batch.len());
    for (subject, headers, payload) in batch {
        let ack = js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await;
        sent.push((ack.ok(), (subject, headers, payload)));
    }
    let mut results = Vec::with_capacity(sent.len());
    for (ack, (subject, headers, payload)) in sent {
        results.push(match ack {
            Some(ack) => match ack.await {
                Ok(ack) => Ok(PublishAck {
                    stream: ack.stream,
                    seq: ack.sequence,
                    duplicate: ack.duplicate,
                }),
                // Sent again only with an id: the first may have been stored.
                Err(_) if has_id(&headers) => {
                    publish_acked(connection, subject, headers, payload).await
                }
                Err(e) => Err(ack_error(js, subject, e).await),
            },
            // Not sent at all.
            None => publish_acked(connection, subject, headers, payload).await,
        });
    }
    results
}

/// Publishes `batch` as one JetStream atomic batch (nats-server 2.12+, a stream with
/// `allow_atomic`): the first message as a request (so a stream that refuses batches says so
/// before the rest is sent), the middle ones without waiting, the last with the commit marker,
/// whose acknowledgement is the batch's. The stream stores all or none.
pub async fn publish_atomic(
    connection: &Connection,
    batch: Vec<(String, HeaderMap, bytes::Bytes)>,
) -> Result<PublishAck, PublishError> {
    let client = connection.js.client();
    if client.connection_state() != State::Connected {
        return Err(PublishError::Unavailable(
            "not connected to NATS (reconnecting); nothing was published".to_owned(),
        ));
    }
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let last = batch.len();
    for (n, (subject, mut headers, payload)) in batch.into_iter().enumerate() {
        let n = n + 1;
        headers.insert(NATS_BATCH_ID, id.as_str());
        headers.insert(NATS_BATCH_SEQUENCE, n.to_string().as_str());
        if n == last {
            headers.insert(NATS_BATCH_COMMIT, "1");
        }
        if n == 1 || n == last {
            let reply = client
                .request_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|e| match e.kind() {
                    RequestErrorKind::NoResponders => PublishError::NoStream(subject.clone()),
                    RequestErrorKind::TimedOut => PublishError::Timeout,
                    RequestErrorKind::MaxPayloadExceeded => {
                        PublishError::TooLarge(client.server_info().max_payload as u64)
                    }
                    RequestErrorKind::InvalidSubject | RequestErrorKind::Other => {
                        PublishError::Unavailable(e.to_string())
                    }
                })?;
            let answer = batch_answer(&reply.payload)?;
            if n == last {
                return answer.ok_or_else(|| {
                    PublishError::Unavailable("the batch's commit was not acknowledged".into())
                });
            }
        } else {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        }
    }
    unreachable!("the last message of a non-empty batch returns")
}

/// What the stream answered to a message of an atomic batch: an error, nothing (a message
/// before the commit), or the batch's acknowledgement.
fn batch_answer(payload: &[u8]) -> Result<Option<PublishAck>, PublishError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        error: Option<ApiError>,
        stream: Option<String>,
        seq: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        #[serde(default)]
        description: String,
    }
    if payload.is_empty() {
        return Ok(None);
    }
    let answer: Answer = serde_json::from_slice(payload).map_err(|e| {
        PublishError::Unavailable(format!(
            "the stream's answer to the batch is unreadable: {e}"
        ))
    })?;
    match answer {
        Answer {
            error: Some(error), ..
        } if error.description.contains("atomic publish is disabled") => {
            Err(PublishError::Invalid(format!(
                "the stream refuses atomic batches ({}): set allow_atomic = true on it in the \
                 streams spec",
                error.description
            )))
        }
        Answer {
            error: Some(error), ..
        } => Err(PublishError::Unavailable(format!(
            "the stream refused the batch: {}",
            error.description
        ))),
        Answer {
            stream: Some(stream),
            seq: Some(seq),
            ..
        } => Ok(Some(PublishAck {
            stream,
            seq,
            duplicate: false,
        })),
        _ => Ok(None),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_fails_only_on_a_refusal_of_its_own_kind() {
        let denials = Denials::default();
        let (tell, told) = tokio::sync::oneshot::channel::<()>();
        let refusing = denials.clone();
        let work = async move {
            refusing.heard("Permissions Violation for Publish to \"orders.refunded\"");
            tokio::task::yield_now().await;
            refusing.heard("Permissions Violation for Publish to \"$JS.API.STREAM.INFO.X\"");
            let _ = told.await;
        };
        let result = denials.during("$JS.API.", work).await;
        assert_eq!(result.err().as_deref(), Some("$JS.API.STREAM.INFO.X"));
        drop(tell);
        let calm = denials.during("$JS.API.", async { 7 }).await;
        assert_eq!(calm.ok(), Some(7));
    }

    fn allowance(nth: u32, policy: &PublishPolicy) -> Allowance<'_> {
        Allowance {
            nth,
            max_publishes: 2,
            policy,
            max_payload: 8,
        }
    }

    fn outcome(subject: &str, len: usize, headers: &[(&str, &str)], id: &str, nth: u32) -> String {
        let only_orders = PublishPolicy::new(vec!["orders.>".into()]);
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        match check(
            subject,
            len,
            headers,
            Some(id),
            &allowance(nth, &only_orders),
        ) {
            Ok(_) => "published".into(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn each_rule_refuses_with_its_own_error_in_the_contracts_order() {
        type Case = (&'static str, usize, &'static [(&'static str, &'static str)]);
        let cases: [(Case, &str, u32, &str); 9] = [
            // (subject, payload length, headers, message id, nth publish, result)
            (("orders.a", 8, &[]), "id", 2, "published"),
            (("orders.a", 8, &[]), "id", 3, "QuotaExceeded"),
            (("payments.*", 9, &[]), "id", 3, "QuotaExceeded"),
            (
                ("orders..a", 1, &[]),
                "id",
                1,
                r#"Invalid("subject \"orders..a\""#,
            ),
            (("orders.*", 1, &[]), "id", 1, "has a wildcard"),
            (("payments.a", 9, &[]), "id", 1, r#"Denied("payments.a")"#),
            (("orders.a", 9, &[]), "id", 1, "TooLarge(8)"),
            (
                ("orders.a", 1, &[("Nats-Expected-Stream", "X")]),
                "id",
                1,
                "reserved",
            ),
            (("orders.a", 1, &[]), "two\r\nlines", 1, "message id"),
        ];
        for ((subject, len, headers), id, nth, expected) in cases {
            let got = outcome(subject, len, headers, id, nth);
            assert!(
                got.contains(expected),
                "{subject} {len} {headers:?} {id:?} #{nth}: {got}"
            );
        }
    }

    #[test]
    fn the_message_id_is_set_and_repeated_headers_are_kept() {
        let anything = PublishPolicy::new(vec![">".into()]);
        let headers = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        let map = check(
            "orders.a",
            1,
            headers,
            Some("orders:ORDERS:1:1"),
            &allowance(1, &anything),
        )
        .unwrap();
        let values: Vec<&str> = map.get_all("a").map(|v| v.as_str()).collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(
            map.get(NATS_MESSAGE_ID).unwrap().as_str(),
            "orders:ORDERS:1:1"
        );
        let bare = check("orders.a", 1, Vec::new(), None, &allowance(1, &anything)).unwrap();
        assert!(
            bare.get(NATS_MESSAGE_ID).is_none(),
            "no id given, none derived"
        );
    }

    #[test]
    fn headers_refuse_bad_or_reserved_names() {
        assert!(header_map(vec![("bad:name".into(), "x".into())])
            .unwrap_err()
            .contains("bad:name"));
        assert!(header_map(vec![("Nats-Msg-Id".into(), "x".into())])
            .unwrap_err()
            .contains("reserved"));
        assert!(header_map(vec![("a".into(), "line\r\nbreak".into())]).is_err());
    }
}
