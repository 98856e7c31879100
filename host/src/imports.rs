//! The host side of the WIT imports (`log`, `config`, `publish`) and the per-call store data
//! they work on. WASI is linked with an empty context: no files, no environment, no network;
//! guest stdout and stderr go to the log.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::jetstream;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::jetwasm::runtime::{config, log, publish, types};
use crate::bindings::{Handler, PublishAck, PublishError};
use crate::config::Limits;
use crate::guest_output::GuestOutput;
use crate::http_guest::NoOutgoingRequests;
use crate::limiter::MemoryLimiter;
use crate::log_budget::{LogBudget, Verdict, LINES_PER_SECOND};
use crate::publishing::publish_acked;
use crate::sandbox::Budget;

/// What a component's imports may see and do; shared by all its calls.
pub struct ComponentEnv {
    /// The component's name (handler or publisher), for logs and derived message ids.
    pub name: Arc<str>,
    /// The `config` table, sorted by key.
    pub config: Vec<(String, String)>,
    /// Whether the component may publish to a subject.
    pub may_publish: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Most publishes per call.
    pub max_publishes: u32,
    /// Where publishes go.
    pub js: jetstream::Context,
    /// The rate limit on the component's log lines.
    pub log_budget: LogBudget,
    /// The rate limit on the host's lines about the component's calls.
    pub host_log: LogBudget,
}

/// What a call is working on, for log fields and derived message ids.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A handler call on the message at `seq` in `stream`; shown as `ORDERS:42`.
    Message {
        /// The message's stream.
        stream: String,
        /// Its stream sequence.
        seq: u64,
    },
    /// A publisher's firing due at `due_ms` (Unix milliseconds; unique across restarts,
    /// unlike the tick's sequence number); shown as `tick:1764316800000`.
    Tick {
        /// When the firing was due.
        due_ms: u64,
    },
    /// An HTTP request to a publisher, `id` unique to it; shown as `req:<id>`.
    Request {
        /// Arrival time in Unix milliseconds and a counter, e.g. `1764316800000-7`.
        id: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Message { stream, seq } => write!(f, "{stream}:{seq}"),
            Origin::Tick { due_ms } => write!(f, "tick:{due_ms}"),
            Origin::Request { id } => write!(f, "req:{id}"),
        }
    }
}

/// Store data: one per instance, so one per message unless the handler reuses instances.
pub struct HostState {
    /// Built on the guest's first WASI call: most handler calls make none.
    wasi: Option<Wasi>,
    http: WasiHttpCtx,
    http_hooks: NoOutgoingRequests,
    table: ResourceTable,
    /// Enforces the handler's memory limit.
    pub limiter: MemoryLimiter,
    /// Set when the host interrupts the call, saying why.
    pub interrupted: Option<crate::dispatch::Failure>,
    /// The time the current call may still use.
    pub budget: Budget,
    env: Arc<ComponentEnv>,
    origin: Origin,
    published: u32,
}

impl HostState {
    /// Store data for calls of `env`'s component, the first on behalf of `origin`.
    pub fn new(env: Arc<ComponentEnv>, origin: Origin, limits: &Limits) -> Self {
        HostState {
            wasi: None,
            http: WasiHttpCtx::new(),
            http_hooks: NoOutgoingRequests,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory.as_u64() as usize),
            interrupted: None,
            budget: Budget::new(limits),
            env,
            origin,
            published: 0,
        }
    }

    /// Starts another call on the same store (a reused instance): a new origin, publish
    /// count and time budget.
    pub fn begin_call(&mut self, origin: Origin, limits: &Limits) {
        self.origin = origin;
        self.published = 0;
        self.interrupted = None;
        self.budget = Budget::new(limits);
        if let Some(wasi) = &self.wasi {
            wasi.output.iter().for_each(GuestOutput::begin_call);
        }
    }
}

/// A WASI context with no capabilities, its stdout and stderr going to the log.
struct Wasi {
    ctx: WasiCtx,
    /// Guest stdout and stderr, whose output budget starts again with each call.
    output: [GuestOutput; 2],
}

impl Wasi {
    fn new(name: &Arc<str>) -> Self {
        let output = [
            GuestOutput::new(name.clone(), "stdout"),
            GuestOutput::new(name.clone(), "stderr"),
        ];
        let ctx = WasiCtx::builder()
            .stdout(output[0].clone())
            .stderr(output[1].clone())
            .build();
        Wasi { ctx, output }
    }
}

/// A linker with WASI (no capabilities), `wasi:http` (incoming only: outgoing requests are
/// refused) and the jetwasm imports.
pub fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Handler::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |state| state)?;
    Ok(linker)
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.http_hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let name = &self.env.name;
        let wasi = self.wasi.get_or_insert_with(|| Wasi::new(name));
        WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut self.table,
        }
    }
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
