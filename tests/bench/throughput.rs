//! Throughput benchmark, against the same nats-server in the same run:
//! - consuming: a native async-nats pull consumer acking each message versus the jetwasm host
//!   running a no-op Rust handler in a fresh sandbox per message, and the per-message cost of
//!   a sandboxed call (p50/p99);
//! - per language: the handler `jetwasm new` writes (one log line, then ack) in Rust, Python,
//!   JavaScript, Go and C, with fresh and with reused instances, against the same native
//!   baseline, and the p50 of one call in each mode;
//! - publishing: native async-nats publishes, each awaiting its PubAck, versus a publisher
//!   component doing the same through the `publish` import; and a burst with 1,000 PubAcks in
//!   flight, natively and through `publish-batch`;
//! - batches: the no-op batch handler (100 messages per call) against the per-message no-op
//!   and native;
//! - HTTP publishers: requests/s and p99 of the intake route, and of a plain `wasi:http`
//!   component on jetwasm and on a plain wasmtime server (see the `http` module);
//! - deploying through the registry: how soon two hosts run a new version, and the
//!   throughput around a swap under load (see the `deploy` module);
//! - tenants: a light tenant's throughput and latency alone and beside a tenant flooding the
//!   CPU, and the cost of tenancy on the no-op handler (see the `tenants` module);
//! - a fleet: one, two and three hosts on one consumer, and `jetwasm replay` over the same
//!   history (see the `fleet` module).
//!
//! Numbers, not assertions: run it with `make bench`. Environment: `BENCH_MESSAGES` (default
//! 100000), `BENCH_ROUNDS` (default 3), `BENCH_CALLS` (default 20000), `BENCH_LANG_MESSAGES`
//! (default 20000, per language and mode), `BENCH_PUBLISHES` (default 10000),
//! `BENCH_BURST` (default 100000) and `BENCH_BURST_WINDOW` (default 1000),
//! `BENCH_IN_FLIGHT` and `BENCH_PREFETCH` (the host's `max_in_flight` and `prefetch`, default
//! 64 and 1024 as in the config), `BENCH_LANGS`
//! (default `rust,python,js,go,c`), `BENCH_HTTP_CONNECTIONS` (default 32) and
//! `BENCH_HTTP_SECS` (default 5), `BENCH_TENANT_SECS` (default 10) and `BENCH_TENANT_MESSAGES`
//! (default 50000), `BENCH_FLEET_MESSAGES` (default 50000); `BENCH_ONLY=deploy`, `tenants`,
//! `fleet`, `publish`, `batches`, `calls` (see the `calls` module), `density` or `memory`
//! runs that part alone (`memory` runs only then: it takes minutes, see the `memory` module);
//! `fresh` runs the first part alone, `languages` it and the per-language rows.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use harness::{handler_wasm, NatsServer};
use jetwasm::bindings::Message;
use jetwasm::components::{Loaded, Loader, Runner};
use jetwasm::config::Config;
use jetwasm::metrics::Metrics;
use jetwasm::scaffold::{self, Kind, Lang};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod calls;
mod density;
mod deploy;
mod fleet;
mod http;
mod memory;
mod tenants;

const STREAM: &str = "BENCH";

/// The smallest component the `handler` world accepts: no imports, a bump allocator for the
/// arguments the host copies in, and `handle` answering `ack` (discriminant 0, returned
/// through memory as the canonical ABI asks for a variant).
const MINIMAL_HANDLER: &str = r#"(component
  (core module $m
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and
        (i32.add (global.get $next) (i32.sub (local.get 2) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get 2))))
      (global.set $next (i32.add (local.get $at) (local.get 3)))
      (local.get $at))
    (func (export "handle")
      (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i64 i64 i32 i64 i64) (result i32)
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.const 0)))
  (core instance $i (instantiate $m))
  (type $message-def (record
    (field "subject" string) (field "payload" (list u8))
    (field "headers" (list (tuple string string)))
    (field "stream" string) (field "consumer" string)
    (field "stream-seq" u64) (field "consumer-seq" u64) (field "delivered" u32)
    (field "published-ms" u64) (field "pending" u64)))
  (export $message "message" (type $message-def))
  (type $disposition-def
    (variant (case "ack") (case "nak" (option u64)) (case "term" string)))
  (export $disposition "disposition" (type $disposition-def))
  (func (export "handle") (param "msg" $message) (result $disposition)
    (canon lift (core func $i "handle") (memory (core memory $i "memory"))
      (realloc (core func $i "realloc")))))"#;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The server's process id, for its CPU time.
static SERVER_PID: OnceLock<u32> = OnceLock::new();

/// CPU time used so far by process `pid`, all its threads, from `/proc/<pid>/task/*/schedstat`
/// (nanoseconds on the CPU).
fn cpu_time(pid: &str) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let nanos = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// CPU time used so far by this process (the client or the host) and by the server.
fn cpu_now() -> (Duration, Duration) {
    let server = SERVER_PID
        .get()
        .map(|pid| pid.to_string())
        .unwrap_or_default();
    (cpu_time("self"), cpu_time(&server))
}

/// One drain: messages per second, and CPU time per message in this process (the native
/// client, or the host) and in the server, over the same part of the drain.
#[derive(Debug, Clone, Copy)]
struct Drain {
    rate: f64,
    local_cpu: Duration,
    server_cpu: Duration,
}

impl std::fmt::Display for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        write!(
            f,
            "{:.1} µs + server {:.1} µs",
            us(self.local_cpu),
            us(self.server_cpu)
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("deploy") => return deploy::bench().await,
        Ok("tenants") => return tenants::bench().await,
        Ok("fleet") => return fleet::bench().await,
        Ok("memory") => return memory::bench().await,
        Ok("density") => return density::bench().await,
        Ok(part @ ("publish" | "batches")) => return alone(part).await,
        _ => {}
    }
    let messages = env_or("BENCH_MESSAGES", 100_000);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let (_server, js) = bench_server().await?;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("calls") {
        return calls::bench(&js).await;
    }
    fill(&js, messages).await?;
    println!("{messages} messages of 64 bytes in a memory stream; {rounds} rounds; 2-core machine");
    let n = fresh(&js, messages, rounds).await?;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("fresh") {
        return Ok(());
    }

    per_language(&js, messages, n).await?;
    if std::env::var("BENCH_ONLY").as_deref() == Ok("languages") {
        return Ok(());
    }

    publishing(&js, rounds).await?;
    batches(&js, messages, rounds).await?;

    http::bench(&js, rounds).await?;
    deploy::bench().await?;
    tenants::bench().await?;
    fleet::bench().await
}

/// The fresh sandbox per message against a native pull consumer (`BENCH_ONLY=fresh`: this
/// part alone), the minimal component beside it, and one sandboxed call's p50/p99; returns the
/// native median.
async fn fresh(js: &jetstream::Context, messages: usize, rounds: usize) -> anyhow::Result<f64> {
    // The host's own floor: the smallest component the handler world allows (no imports at
    // all), beside the Rust no-op (whose std brings WASI's stdio and environment shims) and
    // the same no-op from the lean template (no std, no WASI).
    let scratch = tempfile::tempdir()?;
    let minimal = scratch.path().join("minimal.wasm");
    std::fs::write(&minimal, wat::parse_str(MINIMAL_HANDLER)?)?;

    let (mut native, mut host, mut lean, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let n = drain_native(js, &format!("native{round}"), messages).await?;
        let h = drain_host(js, &handler_wasm("noop"), &format!("host{round}"), messages).await?;
        let l = drain_host(
            js,
            &handler_wasm("noop_lean"),
            &format!("lean{round}"),
            messages,
        )
        .await?;
        let m = drain_host(js, &minimal, &format!("minimal{round}"), messages).await?;
        println!(
            "round {round}: native {:>9.0} msgs/s   host {:>9.0} msgs/s   ratio {:.2}   lean no-op {:.2}   minimal component {:.2}",
            n.rate,
            h.rate,
            h.rate / n.rate,
            l.rate / n.rate,
            m.rate / n.rate
        );
        println!(
            "         CPU per message: native client {n}; host {h}; lean no-op {l}; minimal component {m}"
        );
        native.push(n.rate);
        host.push(h.rate);
        lean.push(l.rate);
        floor.push(m.rate);
    }
    let (n, h) = (median(&mut native), median(&mut host));
    let (l, m) = (median(&mut lean), median(&mut floor));
    println!(
        "median: native {n:.0} msgs/s, host (fresh sandbox per message) {h:.0} msgs/s, ratio {:.2}; the lean (no_std) no-op {l:.0} msgs/s, ratio {:.2}; the minimal component {m:.0} msgs/s, ratio {:.2}",
        h / n,
        l / n,
        m / n
    );

    let calls = env_or("BENCH_CALLS", 20_000);
    for (what, component) in [
        ("Rust no-op", handler_wasm("noop")),
        ("lean Rust no-op", handler_wasm("noop_lean")),
        ("minimal", minimal),
    ] {
        let config = host_config(&component, "fresh", "unused")?;
        let (p50, p99) = call_overhead(js, &config, calls).await?;
        println!(
            "sandboxed call, {what} (new store + instance + handle): p50 {p50:?}, p99 {p99:?}"
        );
    }

    Ok(n)
}

/// A server for the benchmark, with the memory stream `BENCH` (subjects `bench.>`).
async fn bench_server() -> anyhow::Result<(NatsServer, jetstream::Context)> {
    let server = NatsServer::start().await?;
    SERVER_PID.get_or_init(|| server.pid());
    let js = server.jetstream().await?;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["bench.>".into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    Ok((server, js))
}

/// `BENCH_ONLY=publish` or `batches`: that part alone, on a server and stream of its own.
async fn alone(part: &str) -> anyhow::Result<()> {
    let (messages, rounds) = (env_or("BENCH_MESSAGES", 100_000), env_or("BENCH_ROUNDS", 3));
    let (_server, js) = bench_server().await?;
    if part == "publish" {
        return publishing(&js, rounds).await;
    }
    fill(&js, messages).await?;
    batches(&js, messages, rounds).await
}

/// Publishing from a component against native publishing: one at a time, each awaiting its
/// PubAck, and a burst with a window of PubAcks in flight (`publish-batch`).
async fn publishing(js: &jetstream::Context, rounds: usize) -> anyhow::Result<()> {
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
        let n = publish_native(js, publishes).await?;
        let c = publish_component(js, publishes).await?;
        println!("publish round {round}: native {n:>7.0} msgs/s   component {c:>7.0} msgs/s   ratio {:.2}", c / n);
        native.push(n);
        component.push(c);
    }
    let (n, c) = (median(&mut native), median(&mut component));
    println!("publish median ({publishes} sequential publishes, each awaiting its PubAck): native {n:.0} msgs/s, component {c:.0} msgs/s, ratio {:.2}", c / n);

    let burst = env_or("BENCH_BURST", 100_000);
    let window = env_or("BENCH_BURST_WINDOW", 1000);
    let (mut native, mut with_ids) = (Vec::new(), Vec::new());
    let (mut component, mut given, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    const GIVEN: &str = "message_ids = \"given\"";
    const BARE: &str = "message_ids = \"given\"\ntraceparent = \"given\"";
    // Each burst starts on an empty stream: a memory stream gets slower to append to as it
    // grows, which would favour whichever burst runs first.
    let out = js.get_stream("BENCHPUB").await?;
    for round in 1..=rounds {
        out.purge().await?;
        let native_cost = costed(burst, publish_native_pipelined(js, burst, window, false)).await?;
        let n = native_cost.rate;
        out.purge().await?;
        let i = publish_native_pipelined(js, burst, window, true).await?;
        out.purge().await?;
        let c = publish_component_batched(js, burst, window, "").await?;
        out.purge().await?;
        let g = publish_component_batched(js, burst, window, GIVEN).await?;
        out.purge().await?;
        let bare_cost = costed(burst, publish_component_batched(js, burst, window, BARE)).await?;
        let b = bare_cost.rate;
        println!("pipelined publish round {round}: native {n:>7.0} msgs/s   native with ids {i:>7.0} msgs/s   component (publish-batch) {c:>7.0} msgs/s ({:.2} / {:.2})   component, message_ids = given {g:>7.0} msgs/s ({:.2})   component, bare {b:>7.0} msgs/s ({:.2})", c / n, c / i, g / n, b / n);
        println!(
            "         CPU per message: native client {native_cost}; host, bare burst {bare_cost}"
        );
        native.push(n);
        with_ids.push(i);
        component.push(c);
        given.push(g);
        bare.push(b);
    }
    let (n, i) = (median(&mut native), median(&mut with_ids));
    let (c, g, b) = (
        median(&mut component),
        median(&mut given),
        median(&mut bare),
    );
    println!("pipelined publish median ({burst} publishes, {window} acks in flight): native {n:.0} msgs/s, native with a message id and traceparent each (what the component sends) {i:.0} msgs/s, component with publish-batch {c:.0} msgs/s (ratio {:.2} to native, {:.2} to native with ids); with message_ids = \"given\" {g:.0} msgs/s (ratio {:.2} to native); bare (message_ids and traceparent = \"given\": no headers, as native) {b:.0} msgs/s (ratio {:.2} to native)", c / n, c / i, g / n, b / n);

    Ok(())
}

/// What `run` (`n` messages) returns, its rate, with the CPU time per message it cost this
/// process and the server.
async fn costed(
    n: usize,
    run: impl std::future::Future<Output = anyhow::Result<f64>>,
) -> anyhow::Result<Drain> {
    let (local, server) = cpu_now();
    let rate = run.await?;
    let (local_now, server_now) = cpu_now();
    let per = |d: Duration| d / u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Drain {
        rate,
        local_cpu: per(local_now - local),
        server_cpu: per(server_now - server),
    })
}

/// Messages/s acked by `hosts` together (`acked` names the sample), from the first ack to the
/// `n`th: the drain rate of a backlog, start-up left out.
async fn acked_rate(hosts: &[harness::Host], acked: &str, n: usize) -> anyhow::Result<f64> {
    let (mut first, deadline) = (None, Instant::now() + Duration::from_secs(300));
    loop {
        // Zero until a host's listener is up.
        let done: f64 = hosts.iter().map(|h| h.metric(acked).unwrap_or(0.0)).sum();
        let done = done as usize;
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        if done >= n {
            let (at, from) = first.expect("set above");
            return Ok((n - from) as f64 / at.elapsed().as_secs_f64());
        }
        anyhow::ensure!(Instant::now() < deadline, "not drained: {done} of {n}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

/// The baseline for bursts: publishes with up to `window` PubAcks awaited together; with
/// `ids`, each carries a `Nats-Msg-Id` and a `traceparent` as a component's publishes do (the
/// stream then tracks every id for deduplication).
async fn publish_native_pipelined(
    js: &jetstream::Context,
    n: usize,
    window: usize,
    ids: bool,
) -> anyhow::Result<f64> {
    let payload = bytes::Bytes::from(vec![b'x'; 64]);
    let start = Instant::now();
    let mut acks = Vec::with_capacity(window);
    let run = fastrand::u64(..);
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        if ids {
            let traceparent = format!("00-{run:016x}{i:016x}-{i:016x}-01");
            headers.insert("traceparent", traceparent.as_str());
            headers.insert("Nats-Msg-Id", format!("burst:{run}:{i}").as_str());
        }
        let publish = js.publish_with_headers("benchpub.out", headers, payload.clone());
        acks.push(publish.await?);
        if acks.len() == window {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A publisher component making the same publishes through `publish-batch`, `window` at a
/// time, with the publisher keys `keys` (e.g. `message_ids = "given"`).
async fn publish_component_batched(
    js: &jetstream::Context,
    n: usize,
    window: usize,
    keys: &str,
) -> anyhow::Result<f64> {
    burst(js, n, &format!(", batch = {window}"), keys).await
}

/// A publisher component making the same publishes in one tick, through the `publish` import.
async fn publish_component(js: &jetstream::Context, n: usize) -> anyhow::Result<f64> {
    burst(js, n, "", "").await
}

/// The burst publisher's tick rate: `n` publishes, with `extra` config keys and the
/// publisher keys `keys`.
async fn burst(js: &jetstream::Context, n: usize, extra: &str, keys: &str) -> anyhow::Result<f64> {
    let text = format!(
        r#"
[[publisher]]
name = "burst"
component = "{}"
every = "1h"
publish = ["benchpub.out"]
{keys}
limits = {{ max_publishes = {n}, timeout = "10m", cpu_time = "10m" }}
config = {{ count = {n}, subject = "benchpub.out"{extra} }}
"#,
        handler_wasm("fixture_publish_burst").display()
    );
    let config = Config::parse(&text, Path::new(".")).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let publisher = match load_all(&config, js).await?.remove(0).runner {
        Runner::Timer(publisher) => publisher,
        _ => anyhow::bail!("the burst publisher is a timer publisher"),
    };
    let firing = jetwasm::schedule::Firing {
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

/// Waits until `consumer` has seen all its `n` messages (stream sequences from `first`) acked.
/// Measures over the second half, so that start-up (binding, the first pulls, a component's
/// load) does not count; from `start` when the drain was too quick to split.
async fn wait_drained(
    js: &jetstream::Context,
    consumer: &str,
    first: u64,
    n: usize,
    start: (Instant, (Duration, Duration)),
) -> anyhow::Result<Drain> {
    let stream = js.get_stream(STREAM).await?;
    let (half, last) = (first + n as u64 / 2, first + n as u64 - 1);
    let mut halfway = None;
    loop {
        let info = stream.consumer_info(consumer).await?;
        let floor = info.ack_floor.stream_sequence;
        if halfway.is_none() && floor >= half {
            halfway = Some((Instant::now(), cpu_now(), floor));
        }
        if info.num_pending == 0 && info.num_ack_pending == 0 && floor >= last {
            let ((at, (local, server)), done) = match halfway {
                Some((at, cpu, from)) if floor - from >= n as u64 / 4 => ((at, cpu), floor - from),
                _ => (start, n as u64),
            };
            let (local_now, server_now) = cpu_now();
            return Ok(Drain {
                rate: done as f64 / at.elapsed().as_secs_f64(),
                local_cpu: (local_now - local) / done as u32,
                server_cpu: (server_now - server) / done as u32,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The baseline: a plain pull consumer that acks each message as it arrives.
async fn drain_native(js: &jetstream::Context, name: &str, n: usize) -> anyhow::Result<Drain> {
    let consumer = js
        .get_stream(STREAM)
        .await?
        .create_consumer(consumer_config(name))
        .await?;
    let start = (Instant::now(), cpu_now());
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
    wait_drained(js, name, 1, n, start).await
}

/// The host running `component` (fresh instances), on its own consumer, in this process.
async fn drain_host(
    js: &jetstream::Context,
    component: &Path,
    name: &str,
    n: usize,
) -> anyhow::Result<Drain> {
    let config = host_config(component, "fresh", name)?;
    drain_with(js, &config, consumer_config(name), n).await
}

/// The host running `config`'s handler on `consumer` until it has acked `n` messages.
async fn drain_with(
    js: &jetstream::Context,
    config: &Config,
    consumer: pull::Config,
    n: usize,
) -> anyhow::Result<Drain> {
    let name = consumer.durable_name.clone().unwrap_or_default();
    let first = match consumer.deliver_policy {
        jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence } => start_sequence,
        _ => 1,
    };
    js.get_stream(STREAM)
        .await?
        .create_consumer(consumer)
        .await?;
    let bindings = handlers(config, js).await?;
    let shutdown = CancellationToken::new();
    let calls = TaskTracker::new();
    let start = (Instant::now(), cpu_now());
    for binding in bindings {
        jetwasm::consumer::start(binding, js, &shutdown, &calls);
    }
    let rate = wait_drained(js, &name, first, n, start).await?;
    shutdown.cancel();
    calls.close();
    calls.wait().await;
    Ok(rate)
}

/// The no-op batch handler (fresh sandbox per call, 100 messages per batch) against the
/// per-message no-op and native, draining the same backlog.
async fn batches(js: &jetstream::Context, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let (mut native, mut single, mut batched) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let n = drain_native(js, &format!("bnative{round}"), messages).await?;
        let s = drain_host(
            js,
            &handler_wasm("noop"),
            &format!("bsingle{round}"),
            messages,
        )
        .await?;
        let name = format!("batched{round}");
        let config = batch_config(&handler_wasm("noop_batch"), &name)?;
        let b = drain_with(js, &config, consumer_config(&name), messages).await?;
        println!(
            "batch round {round}: native {:>9.0} msgs/s   per message {:>9.0} ({:.2})   batches of 100 {:>9.0} ({:.2})",
            n.rate, s.rate, s.rate / n.rate, b.rate, b.rate / n.rate
        );
        native.push(n.rate);
        single.push(s.rate);
        batched.push(b.rate);
    }
    let (n, s, b) = (
        median(&mut native),
        median(&mut single),
        median(&mut batched),
    );
    println!(
        "batch median: native {n:.0} msgs/s, no-op per message {s:.0} (ratio {:.2}), no-op batch handler {b:.0} (ratio {:.2}; fresh sandbox per call)",
        s / n,
        b / n
    );
    Ok(())
}

/// A host config running the batch handler `component` on `consumer`: batches of 100, fresh
/// sandboxes.
fn batch_config(component: &Path, consumer: &str) -> anyhow::Result<Config> {
    let in_flight = env_or("BENCH_IN_FLIGHT", 64).max(200);
    let prefetch = env_or("BENCH_PREFETCH", 1024);
    let text = format!(
        r#"{}
[[handler]]
name = "bench"
component = "{}"
stream = "{STREAM}"
consumer = "{consumer}"
batch = {{ max = 100, max_wait = "5ms" }}
limits = {{ max_in_flight = {in_flight}, prefetch = {prefetch} }}
"#,
        runtime_section(),
        component.display()
    );
    Config::parse(&text, Path::new(".")).map_err(|e| anyhow::anyhow!(e.join("; ")))
}

/// A host config running `component` on `consumer` with `instances` (`fresh` or `reuse`).
fn host_config(component: &Path, instances: &str, consumer: &str) -> anyhow::Result<Config> {
    let in_flight = env_or("BENCH_IN_FLIGHT", 64);
    let prefetch = env_or("BENCH_PREFETCH", 1024);
    let text = format!(
        r#"{}
[[handler]]
name = "bench"
component = "{}"
stream = "{STREAM}"
consumer = "{consumer}"
instances = "{instances}"
limits = {{ max_in_flight = {in_flight}, prefetch = {prefetch} }}
"#,
        runtime_section(),
        component.display()
    );
    Config::parse(&text, Path::new(".")).map_err(|e| anyhow::anyhow!(e.join("; ")))
}

/// `[runtime] keep_resident = BENCH_KEEP_RESIDENT` when that is set (e.g. `"512KiB"`), to
/// measure what the pool's keep-resident size buys; else nothing (the default).
fn runtime_section() -> String {
    match std::env::var("BENCH_KEEP_RESIDENT") {
        Ok(size) => format!("[runtime]\nkeep_resident = \"{size}\"\n"),
        Err(_) => String::new(),
    }
}

/// A row per language and instance mode: the `jetwasm new` handler draining the last
/// `BENCH_LANG_MESSAGES` of the stream, against the `native` msgs/s measured above.
async fn per_language(js: &jetstream::Context, stored: usize, native: f64) -> anyhow::Result<()> {
    let n = env_or("BENCH_LANG_MESSAGES", 20_000).min(stored);
    let langs = std::env::var("BENCH_LANGS").unwrap_or_else(|_| "rust,python,js,go,c".into());
    let projects = tempfile::tempdir()?;
    println!("per language: the `jetwasm new` handler (a log line, then ack), {n} messages each; native {native:.0} msgs/s");
    for lang in langs.split(',') {
        let lang: Lang = clap::ValueEnum::from_str(lang, true).map_err(anyhow::Error::msg)?;
        let component = build_template(lang, projects.path())?;
        for instances in ["fresh", "reuse"] {
            let consumer = format!("{lang}-{instances}");
            let config = host_config(&component, instances, &consumer)?;
            let mut from_tail = consumer_config(&consumer);
            from_tail.deliver_policy = jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: (stored - n + 1) as u64,
            };
            let drain = drain_with(js, &config, from_tail, n).await?;
            let calls = (n / 5).max(100);
            let (p50, _) = call_overhead(js, &config, calls).await?;
            println!(
                "  {lang:<6} {instances:<5} {:>8.0} msgs/s   ratio {:.2}   call p50 {p50:?}   CPU per message: host {drain}",
                drain.rate,
                drain.rate / native
            );
        }
    }
    Ok(())
}

/// `jetwasm new handler` in `lang`, built with its own `./build.sh`; the component's path.
fn build_template(lang: Lang, dir: &Path) -> anyhow::Result<PathBuf> {
    let name = format!("bench-{lang}");
    let project = scaffold::create(Kind::Handler, &name, lang, dir)?;
    let target = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("new-projects"))
        .ok_or_else(|| anyhow::anyhow!("locating the target directory"))?;
    let build = std::process::Command::new(project.join("build.sh"))
        .current_dir(&project)
        .env_remove("JETWASM_WIT")
        .env_remove("JETWASM_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", target)
        .output()?;
    if !build.status.success() {
        anyhow::bail!(
            "building the {lang} template: {}",
            String::from_utf8_lossy(&build.stderr)
        );
    }
    Ok(project.join(format!("{name}.wasm")))
}

/// p50 and p99 of one call of `config`'s handler, one at a time.
async fn call_overhead(
    js: &jetstream::Context,
    config: &Config,
    calls: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let binding = unbound_handler(js, config).await?;
    let times = timed_calls(&binding.version().dispatcher, calls).await;
    Ok((times[calls / 2], times[calls * 99 / 100]))
}

/// `config`'s first handler, loaded to be called directly: loading checks its consumer (made
/// here if the drains did not), which the calls never pull from.
async fn unbound_handler(
    js: &jetstream::Context,
    config: &Config,
) -> anyhow::Result<std::sync::Arc<jetwasm::binding::Binding>> {
    let name = config.handlers[0].consumer.clone();
    let consumer = pull::Config {
        durable_name: Some(name.clone()),
        ..Default::default()
    };
    let stream = js.get_stream(STREAM).await?;
    stream.get_or_create_consumer(&name, consumer).await?;
    Ok(handlers(config, js).await?.remove(0))
}

/// How long each of `calls` calls of [`message`] took (each acked), shortest first.
async fn timed_calls(dispatcher: &jetwasm::dispatch::Dispatcher, calls: usize) -> Vec<Duration> {
    let message = message();
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let outcome = dispatcher.call(&message).await;
        times.push(start.elapsed());
        assert_eq!(outcome, jetwasm::dispatch::Outcome::Ack);
    }
    times.sort();
    times
}

/// The message every timed call handles: 64 bytes on `bench.1`.
fn message() -> Message {
    Message {
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
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Every component of `config`, loaded and checked.
async fn load_all(config: &Config, js: &jetstream::Context) -> anyhow::Result<Vec<Loaded>> {
    let loader = Loader::for_config(config, js, &Metrics::new())?;
    let mut loaded = Vec::new();
    for component in config.components() {
        loaded.push(loader.load(&component).await?);
    }
    Ok(loaded)
}

/// `config`'s handlers, loaded and not bound yet.
async fn handlers(
    config: &Config,
    js: &jetstream::Context,
) -> anyhow::Result<Vec<std::sync::Arc<jetwasm::binding::Binding>>> {
    let loaded = load_all(config, js).await?;
    Ok(loaded
        .into_iter()
        .filter_map(|loaded| match loaded.runner {
            Runner::Handler(binding) => Some(binding),
            _ => None,
        })
        .collect())
}
