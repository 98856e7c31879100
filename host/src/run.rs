//! `jetwasm run`: connect, set up streams, load and check every component, bind the
//! consumers, start the publishers' timers, serve metrics, and on SIGTERM/SIGINT stop pulling
//! and ticking and let in-flight calls finish.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use stream_init::connect::NatsArgs;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::components::{self, Loader};
use crate::config::{Config, Overrides};
use crate::deployments::Deployments;
use crate::metrics::Metrics;
use crate::tenant::Tenants;
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
    let metrics = Metrics::new();
    let tenants = Arc::new(Tenants::start(&config, &nats, &url, &metrics, true).await?);
    let js = tenants.host().js().clone();

    let found = match &config.runtime.handlers_dir {
        Some(dir) => drop_in::scan(dir, &config)?,
        None => Vec::new(),
    };
    let configured = config.components();
    let usable = found.iter().filter_map(|f| f.drop_in.as_ref().ok());
    let pool = components::pool_size(&config.runtime, configured.iter().chain(usable))?;
    let loader = Loader::new(&config, pool, &tenants, &metrics)?;

    let shutdown = CancellationToken::new();
    let calls = TaskTracker::new();
    let deployments = Arc::new(Deployments::new(loader, &metrics, &shutdown, &calls));
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
    // Acks are buffered in the clients: make sure they reach the server before exiting.
    for tenant in tenants.iter() {
        (tenant.js().client().flush().await)
            .with_context(|| format!("flushing tenant {}'s acknowledgements", tenant.name))?;
    }
    Ok(())
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
