//! The linker and the host side of the WIT imports (`log`, `config`, `publish`; `kv` is in
//! the [`kv`](crate::kv) module, contract 0.1's are served by these), working on the store
//! data the [`sandbox`](crate::sandbox) owns. WASI is linked with an empty context:
//! no files, no environment, no network; guest stdout and stderr go to the log.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::jetwasm::runtime::{config, log, publish, types};
use crate::bindings::{v0_1, Handler, Outgoing, PublishAck, PublishError};
use crate::log_budget::{Verdict, LINES_PER_SECOND};
use crate::origin::Origin;
use crate::publish::{check, publish_acked, publish_atomic, publish_pipelined, Allowance};
use crate::sandbox::{Captured, HostState, Sink, LAST_ERROR_CHARS};
use crate::{telemetry, trace};

/// A linker with WASI (no capabilities), `wasi:http` (incoming only: outgoing requests are
/// refused) and the jetwasm imports.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Handler::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    v0_1::Handler::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    Ok(linker)
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        // Kept whether or not the line is logged: a trap's reason quotes it.
        if matches!(level, log::Level::Error) {
            self.last_error = Some(message.chars().take(LAST_ERROR_CHARS).collect());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let dropped = match self.env.log_budget.take(now) {
            Verdict::Drop => return Ok(()),
            Verdict::Log { dropped } => dropped,
        };
        // A handler's call has no span of its own (one per message would cost every message
        // ~1.3 µs; see the delivery module): its lines get the message's span here. Ticks and
        // requests run inside theirs.
        let span = match &self.origin {
            origin @ Origin::Message { .. } => origin.span(&self.env.name),
            Origin::Tick { .. } | Origin::Request { .. } => tracing::Span::none(),
        };
        let _entered = span.enter();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "log lines dropped: over {LINES_PER_SECOND} a second from this component"
            );
        }
        match level {
            log::Level::Trace => tracing::trace!("{message}"),
            log::Level::Debug => tracing::debug!("{message}"),
            log::Level::Info => tracing::info!("{message}"),
            log::Level::Warn => tracing::warn!("{message}"),
            log::Level::Error => tracing::error!("{message}"),
        }
        Ok(())
    }
}

impl config::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .env
            .config
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone()))
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.env.config.clone())
    }
}

impl publish::Host for HostState {
    async fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        msg_id: Option<String>,
    ) -> wasmtime::Result<Result<PublishAck, PublishError>> {
        let message = Outgoing {
            subject,
            payload,
            headers,
            msg_id,
        };
        let ready = self.prepare(message, self.env.derive_message_ids, self.max_payload());
        let mut results = self.deliver(vec![ready]).await;
        Ok(results.pop().expect("one result per publish"))
    }

    async fn publish_batch(
        &mut self,
        messages: Vec<Outgoing>,
    ) -> wasmtime::Result<Vec<Result<PublishAck, PublishError>>> {
        let (derive, max_payload) = (self.env.derive_message_ids, self.max_payload());
        let batch = messages
            .into_iter()
            .map(|m| self.prepare(m, derive, max_payload))
            .collect();
        Ok(self.deliver(batch).await)
    }

    async fn publish_atomic(
        &mut self,
        messages: Vec<Outgoing>,
    ) -> wasmtime::Result<Result<PublishAck, PublishError>> {
        Ok(self.publish_all_or_nothing(messages).await)
    }
}

/// A publish that passed its checks, with its headers stamped, ready to send.
struct Ready {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
}

impl Ready {
    fn captured(&self) -> Captured {
        Captured {
            subject: self.subject.clone(),
            headers: flatten(&self.headers),
            payload: self.payload.clone(),
        }
    }
}

impl HostState {
    /// The largest payload a publish may carry: the server's, read once per import call (the
    /// client hands out a copy of the whole server info).
    fn max_payload(&self) -> usize {
        match &self.env.sink {
            Sink::JetStream(connection) => connection.js.client().server_info().max_payload,
            Sink::Capture(_) => CAPTURED_MAX_PAYLOAD,
        }
    }

    /// Counts one publish against the call's limit, checks it (its payload against
    /// `max_payload`) and stamps its headers (the call's traceparent, the message id given,
    /// or derived when `derive` says so).
    fn prepare(
        &mut self,
        message: Outgoing,
        derive: bool,
        max_payload: usize,
    ) -> Result<Ready, PublishError> {
        let Outgoing {
            subject,
            payload,
            mut headers,
            msg_id,
        } = message;
        self.published += 1;
        let stamp = self.env.stamp_traceparent;
        if stamp && !(headers.iter()).any(|(k, _)| k.eq_ignore_ascii_case(trace::TRACEPARENT)) {
            // An exported call's traceparent names its own span: the publish hangs under it.
            let traceparent = match self.origin.traceparent() {
                Some(own) if telemetry::enabled() => own.to_owned(),
                parent => trace::child(parent),
            };
            headers.push((trace::TRACEPARENT.to_owned(), traceparent));
        }
        let env = &self.env;
        let allowance = Allowance {
            nth: self.published,
            max_publishes: env.max_publishes,
            policy: &env.publish,
            max_payload,
        };
        let id = msg_id
            .or_else(|| derive.then(|| derived_msg_id(&env.name, &self.origin, self.published)));
        match check(&subject, payload.len(), headers, id.as_deref(), &allowance) {
            Ok(headers) => Ok(Ready {
                subject,
                headers,
                payload,
            }),
            Err(PublishError::Denied(subject)) => {
                if env.host_log.admit(&env.name) {
                    tracing::warn!(subject, "publish denied");
                }
                Err(PublishError::Denied(subject))
            }
            Err(refused) => Err(refused),
        }
    }

    /// Sends the ready publishes of `batch` with their acknowledgements awaited together, in
    /// order; a publish that failed its checks keeps its error. Recorded when the call is.
    async fn deliver(
        &mut self,
        batch: Vec<Result<Ready, PublishError>>,
    ) -> Vec<Result<PublishAck, PublishError>> {
        let env = self.env.clone();
        match &env.sink {
            Sink::JetStream(connection) => {
                let copies: Vec<Option<Captured>> = match self.recorded {
                    Some(_) => (batch.iter())
                        .map(|r| r.as_ref().ok().map(Ready::captured))
                        .collect(),
                    None => Vec::new(),
                };
                let results = match &batch[..] {
                    [_] => {
                        let ready = batch.into_iter().next().expect("one");
                        let acked = match ready {
                            Ok(r) => {
                                publish_acked(connection, r.subject, r.headers, r.payload.into())
                                    .await
                            }
                            Err(refused) => Err(refused),
                        };
                        vec![acked]
                    }
                    _ => pipelined(connection, batch).await,
                };
                if let Some(recorded) = &mut self.recorded {
                    for (copy, result) in copies.into_iter().zip(&results) {
                        if let (Some(copy), Ok(_)) = (copy, result) {
                            recorded.push(copy);
                        }
                    }
                }
                results
            }
            Sink::Capture(captured) => {
                let mut captured = captured.lock().unwrap_or_else(|e| e.into_inner());
                (batch.into_iter())
                    .map(|ready| {
                        captured.push(ready?.captured());
                        Ok(captured_ack(captured.len()))
                    })
                    .collect()
            }
        }
    }

    /// `publish-atomic`: every message checked first, then one JetStream atomic batch.
    async fn publish_all_or_nothing(
        &mut self,
        messages: Vec<Outgoing>,
    ) -> Result<PublishAck, PublishError> {
        if messages.is_empty() || messages.len() > MAX_ATOMIC_BATCH {
            return Err(PublishError::Invalid(format!(
                "an atomic batch has 1 to {MAX_ATOMIC_BATCH} messages, not {}",
                messages.len()
            )));
        }
        if let Some(n) = messages.iter().position(|m| m.msg_id.is_some()) {
            return Err(PublishError::Invalid(format!(
                "message {n} of the atomic batch has a message id: JetStream refuses \
                 Nats-Msg-Id inside an atomic batch"
            )));
        }
        let (mut batch, max_payload) = (Vec::with_capacity(messages.len()), self.max_payload());
        for (n, message) in messages.into_iter().enumerate() {
            // No id: JetStream refuses one inside an atomic batch.
            batch.push(
                self.prepare(message, false, max_payload)
                    .map_err(|e| in_batch(n, e))?,
            );
        }
        let env = self.env.clone();
        match &env.sink {
            Sink::JetStream(connection) => {
                let copies: Vec<Captured> = match self.recorded {
                    Some(_) => batch.iter().map(Ready::captured).collect(),
                    None => Vec::new(),
                };
                let batch = (batch.into_iter())
                    .map(|r| (r.subject, r.headers, r.payload.into()))
                    .collect();
                let acked = publish_atomic(connection, batch).await;
                if let (Some(recorded), Ok(_)) = (&mut self.recorded, &acked) {
                    recorded.extend(copies);
                }
                acked
            }
            Sink::Capture(captured) => {
                let mut captured = captured.lock().unwrap_or_else(|e| e.into_inner());
                captured.extend(batch.iter().map(Ready::captured));
                Ok(captured_ack(captured.len()))
            }
        }
    }
}

/// Sends the ready publishes of `batch` pipelined, keeping the errors of those that failed
/// their checks, in order.
async fn pipelined(
    connection: &crate::publish::Connection,
    batch: Vec<Result<Ready, PublishError>>,
) -> Vec<Result<PublishAck, PublishError>> {
    let mut sendable = Vec::with_capacity(batch.len());
    let mut slots = Vec::with_capacity(batch.len());
    for ready in batch {
        slots.push(match ready {
            Ok(r) => {
                sendable.push((r.subject, r.headers, r.payload.into()));
                Ok(())
            }
            Err(refused) => Err(refused),
        });
    }
    let mut acked = publish_pipelined(connection, sendable).await.into_iter();
    (slots.into_iter())
        .map(|slot| slot.and_then(|()| acked.next().expect("one result per message sent")))
        .collect()
}

/// Most messages in one atomic batch (the server's limit).
const MAX_ATOMIC_BATCH: usize = 1000;

/// `error`, saying which message of an atomic batch it is about.
fn in_batch(n: usize, error: PublishError) -> PublishError {
    match error {
        PublishError::Invalid(why) => PublishError::Invalid(format!("message {n}: {why}")),
        PublishError::Denied(subject) => PublishError::Denied(format!("{subject} (message {n})")),
        other => other,
    }
}

/// The answer to a captured publish, the `n`th captured.
fn captured_ack(n: usize) -> PublishAck {
    PublishAck {
        stream: "(captured)".to_owned(),
        seq: n as u64,
        duplicate: false,
    }
}

/// Headers as (name, value) pairs, in order.
fn flatten(headers: &async_nats::HeaderMap) -> Vec<(String, String)> {
    (headers.iter())
        .flat_map(|(name, values)| {
            (values.iter()).map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect()
}

/// The largest payload a captured publish may carry: a NATS server's default `max_payload`.
const CAPTURED_MAX_PAYLOAD: usize = 1024 * 1024;

/// `name:origin:n` (e.g. `orders:ORDERS:42:1`, `generator:tick:1764316800000:1`): the same for every
/// delivery of a message, so a redelivery's publishes are dropped as duplicates within the
/// stream's duplicate window.
fn derived_msg_id(name: &str, origin: &Origin, n: u32) -> String {
    format!("{name}:{origin}:{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_per_message_and_distinct_per_publish() {
        let origin = Origin::Message {
            stream: "ORDERS".into(),
            seq: 42,
            delivered: 1,
            traceparent: None,
        };
        assert_eq!(derived_msg_id("orders", &origin, 1), "orders:ORDERS:42:1");
        assert_eq!(
            derived_msg_id(
                "gen",
                &Origin::Tick {
                    due_ms: 1_000,
                    traceparent: None,
                },
                2
            ),
            "gen:tick:1000:2"
        );
        assert_ne!(
            derived_msg_id("orders", &origin, 1),
            derived_msg_id("orders", &origin, 2)
        );
    }
}
