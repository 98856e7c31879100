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

use crate::components::{self, Loader};
use crate::config::{Config, Overrides, Streams};
use crate::deployments::Deployments;
use crate::metrics::Metrics;
use crate::{drop_in, folder, listener, registry};

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
    let config = Arc::new(Config::load(&options.config, options.overrides.clone())?);
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
    let found = match &config.runtime.handlers_dir {
        Some(dir) => drop_in::scan(dir, &config)?,
        None => Vec::new(),
    };
    let configured = config.components();
    let usable = found.iter().filter_map(|f| f.drop_in.as_ref().ok());
    let pool = components::pool_size(&config.runtime, configured.iter().chain(usable))?;
    let loader = Loader::new(&config, pool, spec.map(Arc::new), &js, &metrics)?;

    let shutdown = CancellationToken::new();
    let calls = TaskTracker::new();
    let deployments = Arc::new(Deployments::new(loader, &js, &metrics, &shutdown, &calls));
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = config.runtime.http {
        let state = listener::Status {
            metrics: metrics.clone(),
            ready: ready.clone(),
            deployments: deployments.clone(),
        };
        let bound = listener::serve(addr, state, shutdown.clone()).await?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz and /status");
    }
    deployments.start_configured(&configured).await?;
    if let Some(dir) = &config.runtime.handlers_dir {
        let refused = found.iter().filter(|f| f.drop_in.is_err()).count();
        tracing::info!(folder = %dir.display(), drop_ins = found.len(), refused, "handlers folder read; watching it");
        deployments.apply_folder(found).await;
        folder::watch(
            dir.clone(),
            config.clone(),
            deployments.clone(),
            shutdown.clone(),
        )?;
    }
    // Components fetched from the registry, by digest, for this run.
    let registry_dir = tempfile::Builder::new()
        .prefix("jetwasm-registry-")
        .tempdir()?;
    if config.runtime.registry {
        let dir = registry_dir.path().to_owned();
        registry::watch(
            &js,
            config.clone(),
            deployments.clone(),
            dir,
            shutdown.clone(),
        )
        .await?;
        tracing::info!(bucket = registry::HANDLERS, "watching the registry");
    }
    ready.store(true, Ordering::SeqCst);
    let running = deployments.status();
    let count = |kind: &str| {
        (running.iter())
            .filter(|c| c.state == "running" && c.kind.as_deref() == Some(kind))
            .count()
    };
    tracing::info!(
        handlers = count("handler"),
        publishers = count("publisher"),
        http_publishers = count("http-publisher"),
        instances = pool.reservable,
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

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        interrupted = tokio::signal::ctrl_c() => interrupted?,
    }
    Ok(())
}
