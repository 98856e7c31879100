//! `jetwasm try`: calls a component in the host's own sandbox and default limits, without
//! NATS: a handler with one message (or each file of a folder; a batch handler gets each as a
//! batch of one), a timer publisher with one tick, an HTTP publisher with one request. It
//! prints what the call decided and the publishes it attempted (recorded, answered as
//! stored, never sent); the guest's log lines go to stderr. A term or a failed call is a
//! failure, so a component can be unit-tested from a shell or a CI job in any language.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};

use crate::bindings::publisher::PublisherPre;
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::batch::Gatherer;
use crate::bindings::batch_handler::BatchHandlerPre;
use crate::bindings::{HandlerPre, Message};
use crate::compile_cache::CompileCache;
use crate::config::{HttpRoute, Limits, PublishPolicy, DEFAULT_TENANT};
use crate::dispatch::{Dispatcher, Entry, Outcome};
use crate::fair_share::Gate;
use crate::http_publisher::{HttpPublisher, RequestFailure};
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::quota::Account;
use crate::sandbox::{Captured, ComponentEnv, Sink};
use crate::schedule::{Firing, Schedule};
use crate::timer_publisher::{TickError, TimerPublisher};
use crate::{engine, imports, loader};

/// A message to try a handler with.
#[derive(Debug, Clone, Default)]
pub struct TryMessage {
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its subject.
    pub subject: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Which delivery this is (from 1).
    pub delivered: u32,
}

/// What one call did.
#[derive(Debug)]
pub struct Tried {
    /// `ack`, `nak (...)`, `term: reason`, `ok`, `error: reason` or `failed: ...`.
    pub verdict: String,
    /// False for a term, a tick's error or a failed call.
    pub succeeded: bool,
    /// The publishes the call made, in order.
    pub published: Vec<Captured>,
}

impl Tried {
    /// The verdict, then one line per publish.
    pub fn report(&self) -> String {
        let mut out = self.verdict.clone();
        for p in &self.published {
            let headers: Vec<String> = p.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let payload = String::from_utf8_lossy(&p.payload);
            let _ = write!(
                out,
                "\npublish {} [{}] {payload}",
                p.subject,
                headers.join(", ")
            );
        }
        out
    }
}

/// A component loaded for trying: a handler or a timer publisher.
pub struct Trier {
    kind: Kind,
    captured: Arc<Mutex<Vec<Captured>>>,
}

enum Kind {
    Handler(Dispatcher),
    Publisher(TimerPublisher),
    Http(HttpPublisher),
}

impl Trier {
    /// Compiles `component` (through the default compile cache) and prepares it with its
    /// `config` table and publish allow-list (empty: every subject but the host's own).
    pub async fn new(
        component: &Path,
        mut config: Vec<(String, String)>,
        publish: Vec<String>,
    ) -> anyhow::Result<Trier> {
        let limits = Limits::default();
        let engine = engine::new(engine::PoolSize {
            reservable: 1,
            instances: 2,
            max_memory: limits.memory.as_u64() as usize,
            keep_resident: crate::config::DEFAULT_KEEP_RESIDENT.as_u64() as usize,
        })?;
        let linker = imports::linker(&engine)?;
        let cache = CompileCache::default_dir()
            .map(|dir| CompileCache::new(dir, crate::config::DEFAULT_COMPILE_CACHE_MAX.as_u64()));
        let compiled = loader::compile(&engine, component, cache.as_ref())
            .await?
            .component;
        let captured = Arc::new(Mutex::new(Vec::new()));
        config.sort();
        let allowed = if publish.is_empty() {
            vec![">".to_owned()]
        } else {
            publish
        };
        let name = (component.file_stem())
            .map_or_else(|| "try".to_owned(), |s| s.to_string_lossy().into_owned());
        let env = Arc::new(ComponentEnv {
            name: name.as_str().into(),
            config,
            publish: PublishPolicy::new(allowed),
            max_publishes: limits.max_publishes,
            derive_message_ids: true,
            stamp_traceparent: true,
            sink: Sink::Capture(captured.clone()),
            kv: crate::buckets::Buckets::new(Vec::new()),
            log_budget: LogBudget::default(),
            host_log: LogBudget::default(),
            account: Arc::new(Account::new(
                DEFAULT_TENANT,
                None,
                None,
                Gate::new(1).share(0, 1),
                prometheus::IntGauge::new("try_memory", "memory")?,
            )),
            memory: prometheus::IntGauge::new("try_component_memory", "unregistered")?,
            admission: crate::admission::Admission::new(1),
        });
        let kind = if let Ok(pre) = loader::check::<HandlerPre<_>>(&linker, &compiled) {
            let instances = prometheus::IntCounter::new("try_instances", "instances")?;
            Kind::Handler(Dispatcher::new(pre, env, limits, None, instances))
        } else if let Ok(pre) = loader::check::<BatchHandlerPre<_>>(&linker, &compiled) {
            // Each message a batch of one.
            let instances = prometheus::IntCounter::new("try_instances", "instances")?;
            let gatherer = Gatherer::new(1, Duration::from_millis(1));
            let entry = Entry::Batch { pre, gatherer };
            Kind::Handler(Dispatcher::new(entry, env, limits, None, instances))
        } else if let Ok(pre) = loader::check::<PublisherPre<_>>(&linker, &compiled) {
            let schedule = Schedule::Every(Duration::from_secs(1));
            let metrics = Metrics::new().publisher(DEFAULT_TENANT, &name);
            Kind::Publisher(TimerPublisher::new(pre, env, limits, schedule, metrics))
        } else if let Ok(pre) = loader::check::<ProxyPre<_>>(&linker, &compiled) {
            let route = HttpRoute {
                method: "POST".into(),
                path: "/".into(),
            };
            Kind::Http(HttpPublisher::new(pre, env, limits, route))
        } else {
            bail!(
                "{} fits no jetwasm world (`jetwasm check` says why)",
                component.display()
            );
        };
        Ok(Trier { kind, captured })
    }

    /// Calls the handler with `message`.
    pub async fn message(&self, message: &TryMessage) -> anyhow::Result<Tried> {
        let Kind::Handler(dispatcher) = &self.kind else {
            bail!("a publisher takes ticks, not messages: use --tick");
        };
        let message = Message {
            subject: message.subject.clone(),
            payload: message.payload.clone(),
            headers: message.headers.clone(),
            stream: "TRY".into(),
            consumer: "try".into(),
            stream_seq: 1,
            consumer_seq: 1,
            delivered: message.delivered,
            published_ms: now_ms(),
            pending: 0,
        };
        let (verdict, succeeded) = match dispatcher.call(&message).await {
            Outcome::Ack => ("ack".to_owned(), true),
            Outcome::Nak(Some(delay)) => (format!("nak (redeliver after {delay:?})"), true),
            Outcome::Nak(None) => (
                "nak (redeliver after the consumer's backoff)".to_owned(),
                true,
            ),
            Outcome::Term(reason) => (format!("term: {reason}"), false),
            Outcome::Failed(failure) => (format!("failed: {}", failure.describe()), false),
        };
        Ok(self.done(verdict, succeeded))
    }

    /// Calls the publisher's `on-tick` once.
    pub async fn tick(&self) -> anyhow::Result<Tried> {
        let Kind::Publisher(publisher) = &self.kind else {
            bail!("a handler takes messages, not ticks: use --message");
        };
        let firing = Firing {
            seq: 1,
            at: SystemTime::now(),
            missed: 0,
        };
        let (verdict, succeeded) = match publisher.tick(&firing).await {
            Ok(()) => ("ok".to_owned(), true),
            Err(TickError::Returned(reason)) => (format!("error: {reason}"), false),
            Err(TickError::Failed(failure)) => (format!("failed: {}", failure.describe()), false),
        };
        Ok(self.done(verdict, succeeded))
    }

    /// Sends an HTTP publisher `method` `path` with `headers` and `body`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Tried> {
        let Kind::Http(publisher) = &self.kind else {
            bail!("only an HTTP publisher takes requests");
        };
        let mut request = hyper::Request::builder().method(method).uri(path);
        if !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"))
        {
            request = request.header("host", "localhost");
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .context("building the request")?;
        let (verdict, succeeded) = match publisher.call(request).await {
            Ok(response) => {
                let status = response.status();
                let (body, whole) = match response.into_body().collect().await {
                    Ok(b) => (String::from_utf8_lossy(&b.to_bytes()).into_owned(), true),
                    Err(e) => (format!("(the body failed: {e})"), false),
                };
                let success = whole && (status.is_success() || status.is_redirection());
                (format!("{} {body}", status.as_u16()), success)
            }
            Err(RequestFailure::Failed(failure)) => {
                (format!("failed: {}", failure.describe()), false)
            }
            Err(RequestFailure::NoResponse(why)) => (format!("no response: {why}"), false),
            Err(RequestFailure::Busy) => ("busy".to_owned(), false),
        };
        Ok(self.done(verdict, succeeded))
    }

    /// The call's result, with the publishes it made (the record starts afresh).
    fn done(&self, verdict: String, succeeded: bool) -> Tried {
        let published =
            std::mem::take(&mut *self.captured.lock().unwrap_or_else(|e| e.into_inner()));
        Tried {
            verdict,
            succeeded,
            published,
        }
    }
}

/// Tries the handler with every file in `dir` (sorted by name); returns each file's name and
/// result.
pub async fn folder(
    trier: &Trier,
    dir: &Path,
    message: &TryMessage,
) -> anyhow::Result<Vec<(String, Tried)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the messages folder {}", dir.display()))?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let mut results = Vec::new();
    for file in files {
        let payload =
            std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let tried = trier
            .message(&TryMessage {
                payload,
                ..message.clone()
            })
            .await?;
        results.push((name, tried));
    }
    Ok(results)
}

/// One line per file: its name, its verdict and how many publishes it made.
pub fn table(results: &[(String, Tried)]) -> String {
    let width = results
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut out = format!("{:<width$}  {:>9}  VERDICT\n", "FILE", "PUBLISHES");
    for (name, tried) in results {
        let _ = writeln!(
            out,
            "{name:<width$}  {:>9}  {}",
            tried.published.len(),
            tried.verdict
        );
    }
    out
}

fn now_ms() -> u64 {
    (SystemTime::now().duration_since(UNIX_EPOCH))
        .unwrap_or_default()
        .as_millis() as u64
}
