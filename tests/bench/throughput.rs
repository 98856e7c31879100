//! Throughput benchmark, against the same nats-server in the same run:
//! - consuming: a native async-nats pull consumer acking each message versus the jetwasm host
//!   running a no-op Rust handler in a fresh sandbox per message, and the per-message cost of
//!   a sandboxed call (p50/p99);
//! - publishing: native async-nats publishes, each awaiting its PubAck, versus a publisher
//!   component doing the same through the `publish` import.
//!
//! Numbers, not assertions: run it with `make bench`. Environment: `BENCH_MESSAGES` (default
//! 100000), `BENCH_ROUNDS` (default 3), `BENCH_CALLS` (default 20000), `BENCH_PUBLISHES`
//! (default 10000), `BENCH_IN_FLIGHT` (the host's max in flight, default 64 as in the config).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use harness::{handler_wasm, NatsServer};
use jetwasm::bindings::Message;
use jetwasm::config::Config;
use jetwasm::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const STREAM: &str = "BENCH";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages = env_or("BENCH_MESSAGES", 100_000);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let server = NatsServer::start().await?;
    let js = server.jetstream().await?;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["bench.>".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    fill(&js, messages).await?;
    println!("{messages} messages of 64 bytes in a memory stream; {rounds} rounds; 2-core machine");

    let mut native = Vec::new();
    let mut host = Vec::new();
    for round in 1..=rounds {
        let n = drain_native(&js, &format!("native{round}"), messages).await?;
        let h = drain_host(&js, &format!("host{round}"), messages).await?;
        println!(
            "round {round}: native {n:>9.0} msgs/s   host {h:>9.0} msgs/s   ratio {:.2}",
            h / n
        );
        native.push(n);
        host.push(h);
    }
    let (n, h) = (median(&mut native), median(&mut host));
    println!(
        "median: native {n:.0} msgs/s, host (fresh sandbox per message) {h:.0} msgs/s, ratio {:.2}",
        h / n
    );

    let (p50, p99) = call_overhead(&js, env_or("BENCH_CALLS", 20_000)).await?;
    println!("sandboxed call (new store + instance + handle): p50 {p50:?}, p99 {p99:?}");

    let publishes = env_or("BENCH_PUBLISHES", 10_000);
    js.create_stream(stream::Config {
        name: "BENCHPUB".into(),
        subjects: vec!["benchpub.out".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    let mut native = Vec::new();
    let mut component = Vec::new();
    for round in 1..=rounds {
        let n = publish_native(&js, publishes).await?;
        let c = publish_component(&js, publishes).await?;
        println!("publish round {round}: native {n:>7.0} msgs/s   component {c:>7.0} msgs/s   ratio {:.2}", c / n);
        native.push(n);
        component.push(c);
    }
    let (n, c) = (median(&mut native), median(&mut component));
    println!("publish median ({publishes} sequential publishes, each awaiting its PubAck): native {n:.0} msgs/s, component {c:.0} msgs/s, ratio {:.2}", c / n);
    Ok(())
}

/// The baseline: publishes one after another, each awaiting its PubAck.
async fn publish_native(js: &jetstream::Context, n: usize) -> anyhow::Result<f64> {
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    let start = Instant::now();
    for _ in 0..n {
        js.publish("benchpub.out", payload.clone()).await?.await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A publisher component making the same publishes in one tick, through the `publish` import.
async fn publish_component(js: &jetstream::Context, n: usize) -> anyhow::Result<f64> {
    let text = format!(
        r#"
[[publisher]]
name = "burst"
component = "{}"
every = "1h"
publish = ["benchpub.out"]
limits = {{ max_publishes = {n}, timeout = "10m", cpu_time = "10m" }}
config = {{ count = {n}, subject = "benchpub.out" }}
"#,
        handler_wasm("fixture_publish_burst").display()
    );
    let config = Config::parse(&text, std::path::Path::new("."))
        .map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let publisher = jetwasm::components::load(&config, js, &Metrics::new())
        .await?
        .publishers
        .remove(0);
    let firing = jetwasm::publisher::Firing {
        seq: 1,
        at: std::time::SystemTime::now(),
        missed: 0,
    };
    let start = Instant::now();
    publisher
        .tick(&firing)
        .await
        .map_err(|e| anyhow::anyhow!("tick failed: {e:?}"))?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Publishes `n` small messages, pipelined.
async fn fill(js: &jetstream::Context, n: usize) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    let mut acks = Vec::with_capacity(1000);
    for i in 0..n {
        acks.push(
            js.publish(format!("bench.{}", i % 16), payload.clone())
                .await?,
        );
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

fn consumer_config(name: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.into()),
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Waits until `consumer` has delivered and seen acked every message; returns msgs/s from `start`.
async fn wait_drained(
    js: &jetstream::Context,
    consumer: &str,
    n: usize,
    start: Instant,
) -> anyhow::Result<f64> {
    let stream = js.get_stream(STREAM).await?;
    loop {
        let info = stream.consumer_info(consumer).await?;
        if info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.stream_sequence as usize >= n
        {
            return Ok(n as f64 / start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The baseline: a plain pull consumer that acks each message as it arrives.
async fn drain_native(js: &jetstream::Context, name: &str, n: usize) -> anyhow::Result<f64> {
    let consumer = js
        .get_stream(STREAM)
        .await?
        .create_consumer(consumer_config(name))
        .await?;
    let start = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await?;
    let mut seen = 0;
    while seen < n {
        let message = messages.next().await.expect("stream ended")?;
        message.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        seen += 1;
    }
    wait_drained(js, name, n, start).await
}

/// The host: the no-op component bound to its own consumer, in this process.
async fn drain_host(js: &jetstream::Context, name: &str, n: usize) -> anyhow::Result<f64> {
    js.get_stream(STREAM)
        .await?
        .create_consumer(consumer_config(name))
        .await?;
    let config = host_config(name)?;
    let bindings = jetwasm::components::load(&config, js, &Metrics::new())
        .await?
        .handlers;
    let shutdown = CancellationToken::new();
    let calls = TaskTracker::new();
    let start = Instant::now();
    let loops: Vec<_> = bindings
        .into_iter()
        .map(|b| {
            tokio::spawn(jetwasm::consumer::run(
                b,
                js.clone(),
                shutdown.clone(),
                calls.clone(),
            ))
        })
        .collect();
    let rate = wait_drained(js, name, n, start).await?;
    shutdown.cancel();
    for l in loops {
        l.await?;
    }
    calls.close();
    calls.wait().await;
    Ok(rate)
}

fn host_config(consumer: &str) -> anyhow::Result<Config> {
    let in_flight = env_or("BENCH_IN_FLIGHT", 64);
    let text = format!(
        r#"
[[handler]]
name = "noop"
component = "{}"
stream = "{STREAM}"
consumer = "{consumer}"
limits = {{ max_in_flight = {in_flight} }}
"#,
        handler_wasm("noop").display()
    );
    Config::parse(&text, std::path::Path::new(".")).map_err(|e| anyhow::anyhow!(e.join("; ")))
}

/// p50 and p99 of one sandboxed call on the no-op handler, one at a time.
async fn call_overhead(
    js: &jetstream::Context,
    calls: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let bindings = jetwasm::components::load(&host_config("unused")?, js, &Metrics::new())
        .await?
        .handlers;
    let dispatcher = &bindings[0].dispatcher;
    let message = Message {
        subject: "bench.1".into(),
        payload: vec![b'x'; 64],
        headers: vec![],
        stream: STREAM.into(),
        consumer: "unused".into(),
        stream_seq: 1,
        consumer_seq: 1,
        delivered: 1,
        published_ms: 0,
        pending: 0,
    };
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let outcome = dispatcher.call(&message).await;
        times.push(start.elapsed());
        assert_eq!(outcome, jetwasm::dispatch::Outcome::Ack);
    }
    times.sort();
    Ok((times[calls / 2], times[calls * 99 / 100]))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
