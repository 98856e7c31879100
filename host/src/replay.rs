//! `jetwasm replay`: runs a configured handler over a stretch of its stream's history through
//! an ordered ephemeral consumer, never touching the durable consumer's position, in the same
//! sandbox and limits as the host, as its tenant. Publishes are captured and counted unless
//! asked for (`--publish on`); nothing is ever acknowledged. Works against a live fleet.
//!
//! With `--publish on`, a replayed publish carries the same derived message id as the live one
//! (the handler's name, the message's stream and sequence, the publish's number): within the
//! output stream's duplicate window the stream keeps one; older ones are stored again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt as _;
use stream_init::connect::NatsArgs;

use crate::bindings::HandlerPre;
use crate::compile_cache::CompileCache;
use crate::config::{Config, Instances, Overrides};
use crate::dispatch::{Dispatcher, Outcome};
use crate::metrics::Metrics;
use crate::sandbox::Sink;
use crate::tenant::Tenants;
use crate::{components, delivery, engine, imports, loader};

/// Where a replay starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// At this stream sequence.
    Seq(u64),
    /// At messages stored this long ago.
    Since(Duration),
    /// At messages stored from this time.
    Time(time::OffsetDateTime),
}

/// What `jetwasm replay` was asked to do.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The host config naming the handler.
    pub config: PathBuf,
    /// The handler to run.
    pub handler: String,
    /// Where to start.
    pub start: Start,
    /// The last stream sequence to replay (default: the last stored when the replay starts).
    pub to_seq: Option<u64>,
    /// Only messages on this subject (default: the durable consumer's filter).
    pub subject: Option<String>,
    /// Send publishes instead of capturing them.
    pub publish: bool,
    /// Count what would be replayed without running the handler.
    pub dry_run: bool,
    /// Connection flags; the URL falls back to the config's.
    pub nats: NatsArgs,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Messages replayed (or that would be, in a dry run).
    pub messages: u64,
    /// The first and last stream sequences seen.
    pub seqs: Option<(u64, u64)>,
    /// Calls by outcome label (`ack`, `nak`, `term`, `trap`, ...).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Publishes the handler made, captured (`None` with `--publish on`: they were sent).
    pub captured: Option<u64>,
}

/// Runs `replay`; `progress(done, total)` is called after each message (`total` as far as
/// known).
pub async fn run(replay: &Replay, mut progress: impl FnMut(u64, u64)) -> anyhow::Result<Summary> {
    let config = Config::load(&replay.config, Overrides::default())?;
    let Some(handler) = config
        .handlers
        .iter()
        .find(|h| h.component.name == replay.handler)
    else {
        let names: Vec<&str> = (config.handlers.iter())
            .map(|h| h.component.name.as_str())
            .collect();
        bail!(
            "{}: no handler {:?} (handlers: {})",
            replay.config.display(),
            replay.handler,
            names.join(", ")
        );
    };
    let url = replay.nats.url_or(config.nats.url.as_deref());
    let metrics = Metrics::new();
    let tenants = Tenants::start(&config, &replay.nats, &url, &metrics, false).await?;
    let tenant = tenants.get(&handler.component.tenant)?;
    let stream = (tenant.js().get_stream(&handler.stream).await)
        .with_context(|| format!("stream {}", handler.stream))?;
    let filters = match &replay.subject {
        Some(subject) => vec![subject.clone()],
        None => {
            let mut durable = (stream.consumer_info(&handler.consumer).await)
                .with_context(|| format!("consumer {}/{}", handler.stream, handler.consumer))?;
            let config = std::mem::take(&mut durable.config);
            match (config.filter_subjects, config.filter_subject) {
                (subjects, _) if !subjects.is_empty() => subjects,
                (_, subject) if !subject.is_empty() => vec![subject],
                _ => Vec::new(),
            }
        }
    };
    let last = stream.cached_info().state.last_sequence;
    let end = replay.to_seq.unwrap_or(last).min(last);
    let deliver_policy = match replay.start {
        Start::Seq(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
        Start::Since(ago) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::now_utc() - ago,
        },
        Start::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
    };
    let ordered = stream
        .create_consumer(pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("reading the stream's history")?;
    let mut summary = Summary::default();
    let total = ordered.cached_info().num_pending;
    if total == 0 {
        return Ok(summary);
    }
    let captured = Arc::new(Mutex::new(Vec::new()));
    let dispatcher = match replay.dry_run {
        true => None,
        false => Some(dispatcher(&config, handler, tenant, replay.publish, &captured).await?),
    };
    let mut messages = ordered.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let seq = info.stream_sequence;
        if seq > end {
            break;
        }
        summary.seqs = Some((summary.seqs.map_or(seq, |(first, _)| first), seq));
        summary.messages += 1;
        if let Some(dispatcher) = &dispatcher {
            let mut guest = delivery::guest_copy(&message.message, &info);
            (guest.delivered, guest.consumer) = (1, "replay".to_owned());
            let outcome = dispatcher.call(&guest).await;
            *summary.outcomes.entry(label(&outcome)).or_default() += 1;
        }
        progress(
            summary.messages,
            total.min(end.saturating_sub(seq) + summary.messages),
        );
        if info.pending == 0 || seq >= end {
            break;
        }
    }
    summary.captured = match replay.publish {
        false => Some(captured.lock().unwrap_or_else(|e| e.into_inner()).len() as u64),
        true => None,
    };
    Ok(summary)
}

/// The outcome's metric label.
fn label(outcome: &Outcome) -> &'static str {
    use crate::metrics::outcome as o;
    match outcome {
        Outcome::Ack => o::ACK,
        Outcome::Nak(_) => o::NAK,
        Outcome::Term(_) => o::TERM,
        Outcome::Failed(failure) => failure.kind(),
    }
}

/// The handler's component, compiled (through the compile cache) and ready to call as its
/// tenant, its publishes sent (`publish`) or kept in `captured`.
async fn dispatcher(
    config: &Config,
    handler: &crate::config::Handler,
    tenant: &crate::tenant::Tenant,
    publish: bool,
    captured: &Arc<Mutex<Vec<crate::sandbox::Captured>>>,
) -> anyhow::Result<Dispatcher> {
    let what = crate::config::DropIn::Handler(handler.clone());
    let pool = components::pool_size(&config.runtime, std::iter::once(&what))?;
    let engine = engine::new(pool)?;
    let linker = imports::linker(&engine)?;
    let cache = (config.runtime.compile_cache.clone())
        .or_else(CompileCache::default_dir)
        .map(|dir| CompileCache::new(dir, config.runtime.compile_cache_max.as_u64()));
    let component = &handler.component;
    let pre = loader::load::<HandlerPre<_>>(&engine, &linker, &component.wasm, cache.as_ref())
        .await
        .with_context(|| format!("handler {}", component.name))?
        .pre;
    let sink = match publish {
        true => Sink::JetStream(Box::new(tenant.connection.clone())),
        false => Sink::Capture(captured.clone()),
    };
    let admission = crate::admission::Admission::new(pool.reservable as usize);
    let memory = prometheus::IntGauge::new("replay_memory", "unregistered")?;
    let env = components::environment(component, tenant, sink, &admission, memory);
    let reuse = match handler.instances {
        Instances::Fresh => None,
        Instances::Reuse { per_instance } => Some(per_instance),
    };
    let instances = prometheus::IntCounter::new("replay_instances", "instances")?;
    Ok(Dispatcher::new(
        pre,
        env,
        component.limits,
        reuse,
        instances,
    ))
}

/// An RFC 3339 time, for `--from-time`.
pub fn rfc3339(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (e.g. 2026-11-29T10:00:00Z): {e}"))
}

/// Runs `replay` with a progress bar, and prints its summary.
pub async fn print(replay: Replay) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} messages, {per_sec}, ETA {eta}",
        )
        .expect("a valid template"),
    );
    let summary = run(&replay, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    let range = summary.seqs.map_or_else(
        || "nothing".to_owned(),
        |(a, b)| format!("sequences {a}–{b}"),
    );
    let verb = if replay.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} messages ({range}) through {}",
        summary.messages, replay.handler
    );
    for (outcome, n) in &summary.outcomes {
        println!("  {outcome:<10} {n}");
    }
    match summary.captured {
        Some(n) if !replay.dry_run => println!("  publishes  {n} captured, not sent"),
        None => println!("  publishes  sent (--publish on)"),
        Some(_) => {}
    }
    Ok(())
}
