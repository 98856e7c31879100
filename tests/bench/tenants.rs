//! The tenants benchmark, against its own nats-server running `deploy/tenants/nats-server.conf`
//! (accounts ACME and GLOBEX, the example's least-privilege users):
//! - noisy neighbour: GLOBEX's orders handler under steady light traffic (50 orders/s), its
//!   messages/s and order-to-processed latency (p50/p99, from the streams' timestamps) alone,
//!   then beside ACME flooding the host with CPU-heavy messages (`spin 20`: 20 ms of guest
//!   CPU each, far more than two cores can do in the time), both at `cpu_share = 1`;
//! - the cost of tenancy itself: a backlog drained by the no-op handler as the host's own (no
//!   tenants) and as a tenant's (its own connection, quotas counted), messages/s each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use harness::setup::order;
use harness::{handler_wasm, workspace_root, Host, NatsServer};

/// Runs both parts and prints their figures.
pub async fn bench() -> anyhow::Result<()> {
    let rate = 50;
    let secs = super::env_or("BENCH_TENANT_SECS", 10);
    let conf = workspace_root().join("deploy/tenants/nats-server.conf");
    let server = NatsServer::start_with_config(&conf).await?;
    let admin = |user: &'static str, password: &'static str| {
        let server = &server;
        async move { anyhow::Ok(jetstream::new(server.client_as(user, password).await?)) }
    };
    let (acme, globex) = (
        admin("acme-admin", "acme-admin-secret").await?,
        admin("globex-admin", "globex-admin-secret").await?,
    );
    let host = Host::start(&server.url, &noisy_config()).await?;
    let alone = steady(&globex, &host, "alone", rate, secs).await?;
    let flood = secs * 150;
    for _ in 0..flood {
        acme.publish("orders.created", "spin 20".into()).await?;
    }
    acme.publish("orders.created", "spin 20".into())
        .await?
        .await?;
    let beside = steady(&globex, &host, "beside", rate, secs).await?;
    let heavy = host.metric("jetwasm_messages_total{tenant=\"acme\",outcome=\"ack\"}")?;
    println!(
        "noisy neighbour: GLOBEX at {rate} orders/s for {secs}s alone {alone}; beside ACME's flood ({flood} × 20 ms of CPU, {heavy:.0} done meanwhile) {beside}"
    );
    drop(host);

    let messages = super::env_or("BENCH_TENANT_MESSAGES", 50_000);
    let (mut own, mut tenant) = (Vec::new(), Vec::new());
    for round in 1..=super::env_or("BENCH_ROUNDS", 3) {
        let o = drain(&server, &acme, messages, false).await?;
        let t = drain(&server, &acme, messages, true).await?;
        println!("tenancy round {round}: the host's own {o:.0} msgs/s, a tenant's {t:.0} msgs/s, ratio {:.2}", t / o);
        own.push(o);
        tenant.push(t);
    }
    let (o, t) = (super::median(&mut own), super::median(&mut tenant));
    println!(
        "cost of tenancy (no-op handler, {messages} messages, fresh sandboxes), median: the host's own {o:.0} msgs/s, a tenant's {t:.0} msgs/s, ratio {:.2}",
        t / o
    );
    Ok(())
}

/// Both tenants as the example declares them: ACME's CPU-heavy fixture, GLOBEX's orders.
fn noisy_config() -> String {
    let streams = workspace_root().join("deploy/tenants/streams.toml");
    format!(
        r#"
[runtime]
http = "{{http}}"

[[tenant]]
name = "acme"
user = "acme-jetwasm"
password = "acme-secret"
streams = {streams:?}

[[tenant]]
name = "globex"
user = "globex-jetwasm"
password = "globex-secret"
streams = {streams:?}

[[handler]]
name = "heavy"
tenant = "acme"
component = {heavy:?}
stream = "ORDERS"
consumer = "orders-processor"
limits = {{ max_in_flight = 64 }}

[[handler]]
name = "orders"
tenant = "globex"
component = {orders:?}
stream = "ORDERS"
consumer = "orders-processor"
publish = ["orders.processed"]
"#,
        heavy = handler_wasm("fixture_loop").display().to_string(),
        orders = handler_wasm("orders").display().to_string(),
    )
}

/// What one steady run of GLOBEX's measured.
struct Steady {
    rate: f64,
    p50: f64,
    p99: f64,
}

impl std::fmt::Display for Steady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} processed/s, latency p50 {:.1} ms p99 {:.1} ms",
            self.rate, self.p50, self.p99
        )
    }
}

/// Publishes `rate` orders per second for `secs` seconds to GLOBEX (ids `prefix-i`), waits
/// until all are processed, and measures.
async fn steady(
    js: &jetstream::Context,
    host: &Host,
    prefix: &str,
    rate: usize,
    secs: usize,
) -> anyhow::Result<Steady> {
    let n = rate * secs;
    let before = processed(js).await?;
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
    for i in 0..n {
        ticks.tick().await;
        let payload = order(i).replacen("\"id\":\"", &format!("\"id\":\"{prefix}-"), 1);
        js.publish("orders.created", payload.into()).await?.await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while processed(js).await? < before + n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "GLOBEX's orders not processed:\n{}",
            harness::setup::tail(&host.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = latencies(js, prefix).await?;
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Ok(Steady {
        rate: n as f64 / started.elapsed().as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    })
}

/// `orders.processed` messages in the account of `js`.
async fn processed(js: &jetstream::Context) -> anyhow::Result<usize> {
    use futures::StreamExt as _;
    let stream = js.get_stream("ORDERS").await?;
    let mut subjects = stream.info_with_subjects("orders.processed").await?;
    Ok(match subjects.next().await {
        Some(entry) => entry?.1,
        None => 0,
    })
}

/// Milliseconds from each `prefix` order's `orders.created` to its `orders.processed`.
async fn latencies(js: &jetstream::Context, prefix: &str) -> anyhow::Result<Vec<f64>> {
    let stream = js.get_stream("ORDERS").await?;
    let last = stream.cached_info().state.last_sequence;
    let (mut created, mut out) = (BTreeMap::new(), Vec::new());
    for seq in 1..=last {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap_or_default();
        let Some(id) = body["id"].as_str().filter(|id| id.starts_with(prefix)) else {
            continue;
        };
        let at = message.time.unix_timestamp_nanos() as f64 / 1e6;
        if message.subject.as_str() == "orders.created" {
            created.insert(id.to_owned(), at);
        } else if let Some(start) = created.get(id) {
            out.push(at - start);
        }
    }
    Ok(out)
}

/// Drains `n` messages from a fresh ORDERS backlog in ACME's account with the no-op handler,
/// as a tenant's (`as_tenant`) or as the host's own with ACME's admin credentials; returns
/// messages/s from the first ack to the last.
async fn drain(
    server: &NatsServer,
    acme: &jetstream::Context,
    n: usize,
    as_tenant: bool,
) -> anyhow::Result<f64> {
    let name = if as_tenant { "tenant" } else { "own" };
    acme.get_or_create_stream(jetstream::stream::Config {
        name: "DEADLETTER".into(),
        subjects: vec!["deadletter.>".into()],
        ..Default::default()
    })
    .await?;
    let _ = acme.delete_stream("DRAIN").await;
    acme.create_stream(jetstream::stream::Config {
        name: "DRAIN".into(),
        subjects: vec!["drain.>".into()],
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await?
    .create_consumer(jetstream::consumer::pull::Config {
        durable_name: Some(name.into()),
        ..Default::default()
    })
    .await?;
    for i in 0..n {
        let ack = acme.publish("drain.x", format!("{i:064}").into()).await?;
        if i % 1000 == 999 {
            ack.await?;
        }
    }
    let handler = format!(
        "[[handler]]\nname = \"noop\"\n{}component = {:?}\nstream = \"DRAIN\"\nconsumer = {name:?}\n",
        if as_tenant { "tenant = \"acme\"\n" } else { "" },
        handler_wasm("noop").display().to_string()
    );
    let config = if as_tenant {
        "[runtime]\nhttp = \"{http}\"\n\n[[tenant]]\nname = \"acme\"\nuser = \"acme-admin\"\npassword = \"acme-admin-secret\"\nmax_in_flight = 64\nmax_memory = \"1GiB\"\n\n".to_owned() + &handler
    } else {
        "[runtime]\nhttp = \"{http}\"\n\n".to_owned() + &handler
    };
    // The host's own connection is ACME's admin user here, so both read the same stream.
    let admin = ["--user", "acme-admin", "--password", "acme-admin-secret"];
    let host = Host::start_with(&server.url, &config, &admin).await?;
    let acked = "jetwasm_messages_total{handler=\"noop\",outcome=\"ack\"}";
    super::acked_rate(&[host], acked, n).await
}
