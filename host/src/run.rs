//! `jetwasm run`: connect, set up streams, load and check every component, bind the
//! consumers, start the publishers' timers, serve metrics, and on SIGTERM/SIGINT stop pulling
//! and ticking and let in-flight calls finish.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use stream_init::connect::NatsArgs;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::components::{self, Components};
use crate::config::{Config, DropIn, Overrides, Streams};
use crate::consumer;
use crate::metrics::Metrics;
use crate::status::ComponentStatus;
use crate::{drop_in, listener, sweeper, timer_publisher};

/// What `jetwasm run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The `jetwasm.toml` to load.
    pub config: PathBuf,
    /// Settings overriding the config file's (`--http`, `--handlers-dir`).
    pub overrides: Overrides,
    /// Connection flags; the URL falls back to the config file's.
    pub nats: NatsArgs,
}

/// Runs the host until a shutdown signal, then drains. Fails before consuming anything if a
/// handler's component or consumer is unusable.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let config = Config::load(&options.config, options.overrides.clone())?;
    let mut nats = options.nats.clone();
    if nats.creds.is_none() {
        nats.creds = config.nats.creds.clone();
    }
    let url = nats.url_or(config.nats.url.as_deref());
    let client = nats.connect(&url).await?;
    let js = jetstream::new(client.clone());
    tracing::info!(%url, "connected to NATS");

    let spec = match &config.streams {
        Some(streams) => Some(set_up_streams(&js, streams).await?),
        None => None,
    };

    let metrics = Metrics::new();
    let (drop_ins, unreadable) = match &config.runtime.handlers_dir {
        Some(dir) => dropped_in(dir, &config)?,
        None => Default::default(),
    };
    let Components {
        handlers,
        publishers,
        http_publishers,
        mut status,
    } = components::load(&config, &drop_ins, spec.as_ref(), &js, &metrics).await?;
    status.extend(unreadable);
    for refused in status.iter().filter(|s| s.state == "refused") {
        let (name, error) = (&refused.name, refused.error.as_deref().unwrap_or_default());
        tracing::error!(
            drop_in = name,
            error,
            "drop-in refused; the host runs without it"
        );
        metrics.deploy_failure(name);
    }

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.runtime.http {
        let pulls = (handlers.iter())
            .map(|h| (h.name.clone(), h.metrics.pulls.clone()))
            .collect();
        let in_flight = (handlers.iter())
            .map(|h| (h.name.clone(), h.metrics.in_flight.clone()))
            .collect();
        let state = listener::Status {
            metrics: metrics.clone(),
            ready: ready.clone(),
            pulls,
            components: Arc::new(status),
            in_flight,
        };
        let bound = listener::serve(addr, state, http_publishers, shutdown.clone()).await?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz and /status");
    }

    let calls = TaskTracker::new();
    let (handler_count, publisher_count) = (handlers.len(), publishers.len());
    for binding in handlers {
        sweeper::start(binding.clone(), &js, &shutdown, &calls)
            .await
            .with_context(|| {
                format!(
                    "handler {}: listening for max-deliveries advisories",
                    binding.name
                )
            })?;
        consumer::start(binding, &js, &shutdown, &calls);
    }
    for publisher in publishers {
        calls.spawn(timer_publisher::run(publisher, shutdown.clone()));
    }
    ready.store(true, Ordering::SeqCst);
    tracing::info!(
        handlers = handler_count,
        publishers = publisher_count,
        "jetwasm running"
    );

    shutdown_signal().await?;
    ready.store(false, Ordering::SeqCst);
    tracing::info!(grace = ?config.runtime.grace_period, "shutting down: no new pull requests; waiting for in-flight calls");
    shutdown.cancel();
    calls.close();
    tokio::select! {
        _ = calls.wait() => tracing::info!("in-flight calls finished"),
        _ = tokio::time::sleep(config.runtime.grace_period) => {
            tracing::warn!(still_running = calls.len(), "grace period over; unfinished messages will be redelivered")
        }
        _ = shutdown_signal() => tracing::warn!("second signal; exiting now, unfinished messages will be redelivered"),
    }
    // Acks are buffered in the client: make sure they reach the server before exiting.
    client.flush().await.context("flushing acknowledgements")?;
    Ok(())
}

/// Applies the streams spec (refusing destructive changes unless allowed); returns it, so each
/// handler can watch its consumer for changes made by hand.
async fn set_up_streams(
    js: &jetstream::Context,
    streams: &Streams,
) -> anyhow::Result<stream_init::Spec> {
    let file = &streams.spec;
    let spec = stream_init::Spec::load(file, streams.env.as_deref())?;
    let plan = stream_init::plan(js, &spec)
        .await
        .with_context(|| format!("planning {}", file.display()))?;
    plan.check_destructive(streams.allow_destructive)
        .with_context(|| format!("applying {}", file.display()))?;
    if plan.is_empty() {
        tracing::info!(file = %file.display(), "streams up to date");
    }
    for line in stream_init::apply(js, &plan).await? {
        tracing::info!(file = %file.display(), "stream-init: {line}");
    }
    Ok(spec)
}

/// The drop-ins in `dir` whose manifests are usable, and the status of the others (refused,
/// naming the file and the problem).
fn dropped_in(
    dir: &std::path::Path,
    config: &Config,
) -> anyhow::Result<(Vec<DropIn>, Vec<ComponentStatus>)> {
    let (mut usable, mut refused) = (Vec::new(), Vec::new());
    for found in drop_in::scan(dir, config)? {
        match found.drop_in {
            Ok(drop_in) => usable.push(drop_in),
            Err(error) => refused.push(ComponentStatus {
                name: found.name,
                kind: None,
                source: "folder".to_owned(),
                component: None,
                version: None,
                state: "refused".to_owned(),
                error: Some(error),
                in_flight: None,
            }),
        }
    }
    tracing::info!(folder = %dir.display(), usable = usable.len(), refused = refused.len(), "handlers folder read");
    Ok((usable, refused))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        interrupted = tokio::signal::ctrl_c() => interrupted?,
    }
    Ok(())
}
