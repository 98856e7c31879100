//! The linker and the host side of the WIT imports (`log`, `config`, `publish`), working on
//! the store data the [`sandbox`](crate::sandbox) owns. WASI is linked with an empty context:
//! no files, no environment, no network; guest stdout and stderr go to the log.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::jetwasm::runtime::{config, log, publish, types};
use crate::bindings::{Handler, PublishAck, PublishError};
use crate::log_budget::{Verdict, LINES_PER_SECOND};
use crate::publishing::publish_acked;
use crate::sandbox::{HostState, Origin};

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
        let name = &*self.env.name;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let dropped = match self.env.log_budget.take(now) {
            Verdict::Drop => return Ok(()),
            Verdict::Log { dropped } => dropped,
        };
        let span = match &self.origin {
            Origin::Message { stream, seq } => {
                tracing::info_span!("call", handler = name, stream, seq)
            }
            Origin::Tick { due_ms } => tracing::info_span!("tick", publisher = name, due_ms),
            Origin::Request { id } => tracing::info_span!("request", publisher = name, id),
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
        self.published += 1;
        if self.published > self.env.max_publishes {
            return Ok(Err(PublishError::QuotaExceeded));
        }
        if let Err(why) = stream_init::subject::validate(&subject) {
            return Ok(Err(PublishError::Invalid(format!(
                "subject {subject:?} {why}"
            ))));
        }
        if subject.contains(['*', '>']) {
            return Ok(Err(PublishError::Invalid(format!(
                "subject {subject:?} has a wildcard"
            ))));
        }
        if !(self.env.may_publish)(&subject) {
            if self.env.host_log.admit(&self.env.name) {
                tracing::warn!(handler = %self.env.name, subject, "publish denied");
            }
            return Ok(Err(PublishError::Denied(subject)));
        }
        let max_payload = self.env.js.client().server_info().max_payload;
        if payload.len() > max_payload {
            return Ok(Err(PublishError::TooLarge(max_payload as u64)));
        }
        let mut map = match header_map(headers) {
            Ok(map) => map,
            Err(why) => return Ok(Err(PublishError::Invalid(why))),
        };
        let id =
            msg_id.unwrap_or_else(|| derived_msg_id(&self.env.name, &self.origin, self.published));
        match HeaderValue::from_str(&id) {
            Ok(value) => map.insert(NATS_MESSAGE_ID, value),
            Err(e) => {
                return Ok(Err(PublishError::Invalid(format!(
                    "message id {id:?}: {e}"
                ))))
            }
        }
        Ok(publish_acked(&self.env.js, subject, map, payload.into()).await)
    }
}

/// `name:origin:n` (e.g. `orders:ORDERS:42:1`, `generator:tick:1764316800000:1`): the same for every
/// delivery of a message, so a redelivery's publishes are dropped as duplicates within the
/// stream's duplicate window.
fn derived_msg_id(name: &str, origin: &Origin, n: u32) -> String {
    format!("{name}:{origin}:{n}")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_per_message_and_distinct_per_publish() {
        let origin = Origin::Message {
            stream: "ORDERS".into(),
            seq: 42,
        };
        assert_eq!(derived_msg_id("orders", &origin, 1), "orders:ORDERS:42:1");
        assert_eq!(
            derived_msg_id("gen", &Origin::Tick { due_ms: 1_000 }, 2),
            "gen:tick:1000:2"
        );
        assert_ne!(
            derived_msg_id("orders", &origin, 1),
            derived_msg_id("orders", &origin, 2)
        );
    }

    #[test]
    fn headers_keep_repeats_and_refuse_bad_or_reserved_names() {
        let map = header_map(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).unwrap();
        let values: Vec<&str> = map.get_all("a").map(|v| v.as_str()).collect();
        assert_eq!(values, ["1", "2"]);
        assert!(header_map(vec![("bad:name".into(), "x".into())])
            .unwrap_err()
            .contains("bad:name"));
        assert!(header_map(vec![("Nats-Msg-Id".into(), "x".into())])
            .unwrap_err()
            .contains("reserved"));
        assert!(header_map(vec![("a".into(), "line\r\nbreak".into())]).is_err());
    }
}
