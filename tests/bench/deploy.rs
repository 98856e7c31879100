//! The registry benchmark (drop-in deployment across hosts), against its own nats-server:
//! - convergence: the time from `registry::deploy` returning (what `jetwasm deploy` does) to
//!   both of two `jetwasm run --registry` hosts running the new revision, for the Rust and the
//!   Python orders handler, with each host's compile cache empty (cold) and then holding the
//!   component (warm);
//! - the swap under load: one host draining a backlog of orders with the Rust orders handler
//!   while the C one is deployed over it (compile cache warm), acks per second over the
//!   second before the deploy, the first second after it, and the second after the host runs
//!   the new version.

use std::time::{Duration, Instant};

use harness::setup::{order, Setup};
use harness::{handler_wasm, http_get, Host};
use jetwasm::status::StatusBody;

const ACKED: &str = "jetwasm_messages_total{handler=\"orders\",outcome=\"ack\"}";

/// Runs both parts and prints their figures.
pub async fn bench() -> anyhow::Result<()> {
    convergence().await?;
    swap_under_load().await
}

/// The manifest of the orders handler on the test consumer.
fn manifest() -> String {
    "stream = \"ORDERS\"\nconsumer = \"proc\"\npublish = [\"orders.processed\"]\n".to_owned()
}

/// A host following the registry, with a compile cache of its own (empty at first).
async fn registry_host(setup: &Setup, cache: &std::path::Path) -> anyhow::Result<Host> {
    let config = format!(
        "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\ncompile_cache = \"{}\"\n",
        setup.dir.path().join("streams.toml").display(),
        cache.display()
    );
    Host::start_with(&setup.server.url, &config, &["--registry"]).await
}

/// Deploys `component` as `orders`; returns the revision.
async fn deploy(setup: &Setup, component: &str) -> anyhow::Result<u64> {
    let bytes = std::fs::read(handler_wasm(component))?;
    jetwasm::registry::deploy(&setup.js, "orders", &bytes, &manifest()).await
}

/// Waits until every host runs `orders` at `revision`; returns when the last one did.
async fn converged(hosts: &[&Host], revision: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(300);
    for host in hosts {
        loop {
            let (_, body) = http_get(host.http, "/status")?;
            let status: StatusBody = serde_json::from_str(&body)?;
            let orders = status.components.iter().find(|c| c.name == "orders");
            if orders.is_some_and(|c| c.state == "running" && c.revision == Some(revision)) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "revision {revision} never ran: {orders:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(Instant::now())
}

async fn convergence() -> anyhow::Result<()> {
    let setup = Setup::new("").await;
    let caches = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = registry_host(&setup, caches[0].path()).await?;
    let b = registry_host(&setup, caches[1].path()).await?;
    println!("deploy: two hosts following the registry, each with its own compile cache");
    for cache in ["cold", "warm"] {
        for (language, component) in [("Rust", "orders"), ("Python", "orders_python")] {
            let revision = deploy(&setup, component).await?;
            let returned = Instant::now();
            let done = converged(&[&a, &b], revision).await?;
            println!(
                "deploy {language:<6} ({cache} compile cache): both hosts run it {:>9.1?} after the deploy returned",
                done - returned
            );
        }
    }
    Ok(())
}

async fn swap_under_load() -> anyhow::Result<()> {
    let setup = Setup::new("").await;
    let cache = tempfile::tempdir()?;
    let host = registry_host(&setup, cache.path()).await?;
    // Both components compiled once, so the swap measures the swap, not a first compile.
    for component in ["orders_c", "orders"] {
        let revision = deploy(&setup, component).await?;
        converged(&[&host], revision).await?;
    }
    let backlog = 150_000;
    setup.publish_all((0..backlog).map(order)).await;
    let mut samples = vec![(Instant::now(), host.metric(ACKED)?)];
    sample(&host, &mut samples, Instant::now() + Duration::from_secs(2)).await?;
    let deployed = Instant::now();
    let revision = deploy(&setup, "orders_c").await?;
    let swapped = converged(&[&host], revision).await?;
    sample(&host, &mut samples, swapped + Duration::from_millis(1_500)).await?;
    let rate = |from: Instant| acks_per_second(&samples, from, from + Duration::from_secs(1));
    println!(
        "deploy under load (Rust → C orders handler, warm cache, {backlog} orders backlog): acks/s the second before {:.0}, the first second after the deploy {:.0}, the second after the swap {:.0}; swapped {:.1?} after the deploy",
        rate(deployed - Duration::from_secs(1)),
        rate(deployed),
        rate(swapped),
        swapped - deployed
    );
    Ok(())
}

/// Samples the host's ack count every 50ms until `until`.
async fn sample(
    host: &Host,
    samples: &mut Vec<(Instant, f64)>,
    until: Instant,
) -> anyhow::Result<()> {
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        samples.push((Instant::now(), host.metric(ACKED)?));
    }
    Ok(())
}

/// Acks per second between the samples nearest `from` and `to`.
fn acks_per_second(samples: &[(Instant, f64)], from: Instant, to: Instant) -> f64 {
    let nearest = |t: Instant| {
        samples
            .iter()
            .min_by_key(|(at, _)| if *at > t { *at - t } else { t - *at })
            .copied()
            .unwrap_or((t, 0.0))
    };
    let ((t0, n0), (t1, n1)) = (nearest(from), nearest(to));
    (n1 - n0) / (t1 - t0).as_secs_f64().max(1e-3)
}
