//! The linker and the host side of the WIT imports (`log`, `config`, `publish`), working on
//! the store data the [`sandbox`](crate::sandbox) owns. WASI is linked with an empty context:
//! no files, no environment, no network; guest stdout and stderr go to the log.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::jetwasm::runtime::{config, log, publish, types};
use crate::bindings::{Handler, PublishAck, PublishError};
use crate::log_budget::{Verdict, LINES_PER_SECOND};
use crate::origin::Origin;
use crate::publish::{check, publish_acked, Allowance};
use crate::sandbox::{Captured, HostState, Sink};
use crate::{telemetry, trace};

/// A linker with WASI (no capabilities), `wasi:http` (incoming only: outgoing requests are
/// refused) and the jetwasm imports.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Handler::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    Ok(linker)
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
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
        mut headers: Vec<(String, String)>,
        msg_id: Option<String>,
    ) -> wasmtime::Result<Result<PublishAck, PublishError>> {
        self.published += 1;
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(trace::TRACEPARENT))
        {
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
            max_payload: match &env.sink {
                Sink::JetStream(connection) => connection.js.client().server_info().max_payload,
                Sink::Capture(_) => CAPTURED_MAX_PAYLOAD,
            },
        };
        let id = msg_id.unwrap_or_else(|| derived_msg_id(&env.name, &self.origin, self.published));
        let headers = match check(&subject, payload.len(), headers, &id, &allowance) {
            Ok(headers) => headers,
            Err(PublishError::Denied(subject)) => {
                if env.host_log.admit(&env.name) {
                    tracing::warn!(subject, "publish denied");
                }
                return Ok(Err(PublishError::Denied(subject)));
            }
            Err(refused) => return Ok(Err(refused)),
        };
        match &env.sink {
            Sink::JetStream(connection) => {
                let copy = (self.recorded.is_some()).then(|| Captured {
                    subject: subject.clone(),
                    headers: flatten(&headers),
                    payload: payload.clone(),
                });
                let acked = publish_acked(connection, subject, headers, payload.into()).await;
                if let (Some(recorded), Some(copy), Ok(_)) = (&mut self.recorded, copy, &acked) {
                    recorded.push(copy);
                }
                Ok(acked)
            }
            Sink::Capture(captured) => {
                let mut captured = captured.lock().unwrap_or_else(|e| e.into_inner());
                captured.push(Captured {
                    subject,
                    headers: flatten(&headers),
                    payload,
                });
                Ok(Ok(PublishAck {
                    stream: "(captured)".to_owned(),
                    seq: captured.len() as u64,
                    duplicate: false,
                }))
            }
        }
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
