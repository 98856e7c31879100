//! `jetwasm try`: one call of a handler in the host's own sandbox and default limits, without
//! NATS. It prints the disposition, the publishes the handler attempted (recorded, never
//! sent) and, on stderr, its log lines; it fails for a term or a failed call, so a handler can
//! be unit-tested from a shell or a CI job in any language.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::bindings::{HandlerPre, Message};
use crate::compile_cache::CompileCache;
use crate::config::{Limits, PublishPolicy};
use crate::dispatch::{Dispatcher, Outcome};
use crate::log_budget::LogBudget;
use crate::sandbox::{Captured, ComponentEnv, Sink};
use crate::{engine, imports, loader};

/// What to try.
#[derive(Debug, Clone)]
pub struct Trial {
    /// The handler component.
    pub component: PathBuf,
    /// The message's payload.
    pub payload: Vec<u8>,
    /// Its subject.
    pub subject: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// The handler's `config` table.
    pub config: Vec<(String, String)>,
    /// Which delivery of the message this is (from 1).
    pub delivered: u32,
    /// The publish allow-list; empty: every subject but the host's own.
    pub publish: Vec<String>,
}

/// What the call did.
#[derive(Debug)]
pub struct Tried {
    /// The handler's disposition, or how the call failed.
    pub outcome: Outcome,
    /// The publishes it made, in order.
    pub published: Vec<Captured>,
}

impl Tried {
    /// True for an ack or a nak; false for a term or a failed call.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Outcome::Ack | Outcome::Nak(_))
    }

    /// The disposition, then one line per publish.
    pub fn report(&self) -> String {
        let mut out = match &self.outcome {
            Outcome::Ack => "ack".to_owned(),
            Outcome::Nak(Some(delay)) => format!("nak (redeliver after {delay:?})"),
            Outcome::Nak(None) => "nak (redeliver after the consumer's backoff)".to_owned(),
            Outcome::Term(reason) => format!("term: {reason}"),
            Outcome::Failed(failure) => format!("failed: {}", failure.describe()),
        };
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

/// Runs `trial` once.
pub async fn run(trial: Trial) -> anyhow::Result<Tried> {
    let limits = Limits::default();
    let engine = engine::new(engine::PoolSize {
        reservable: 1,
        instances: 2,
        max_memory: limits.memory.as_u64() as usize,
    })?;
    let linker = imports::linker(&engine)?;
    let cache = CompileCache::default_dir()
        .map(|dir| CompileCache::new(dir, crate::config::DEFAULT_COMPILE_CACHE_MAX.as_u64()));
    let pre: HandlerPre<_> = loader::load(&engine, &linker, &trial.component, cache.as_ref())
        .await
        .with_context(|| format!("{} as a handler", trial.component.display()))?;
    let captured = Arc::new(Mutex::new(Vec::new()));
    let mut config = trial.config.clone();
    config.sort();
    let allowed = if trial.publish.is_empty() {
        vec![">".to_owned()]
    } else {
        trial.publish.clone()
    };
    let env = Arc::new(ComponentEnv {
        name: name_of(&trial.component).into(),
        config,
        publish: PublishPolicy::new(allowed),
        max_publishes: limits.max_publishes,
        sink: Sink::Capture(captured.clone()),
        log_budget: LogBudget::default(),
        host_log: LogBudget::default(),
    });
    let instances = prometheus::IntCounter::new("try_instances", "instances")?;
    let dispatcher = Dispatcher::new(pre, env, limits, None, instances);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let message = Message {
        subject: trial.subject.clone(),
        payload: trial.payload.clone(),
        headers: trial.headers.clone(),
        stream: "TRY".into(),
        consumer: "try".into(),
        stream_seq: 1,
        consumer_seq: 1,
        delivered: trial.delivered,
        published_ms: now_ms,
        pending: 0,
    };
    let outcome = dispatcher.call(&message).await;
    let published = captured.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Tried { outcome, published })
}

/// The component's name: its file's stem.
fn name_of(component: &Path) -> String {
    (component.file_stem()).map_or_else(|| "try".to_owned(), |s| s.to_string_lossy().into_owned())
}
