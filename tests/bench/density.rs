//! Density, against its own nats-server (`BENCH_ONLY=density`): `BENCH_DENSITY_HANDLERS`
//! drop-ins (default 1000) in one host's handlers folder, each on a consumer of its own that
//! its manifest declares: Rust no-op handlers, and a few of the Python and JavaScript orders
//! handlers (`BENCH_DENSITY_POLYGLOT` of each, default 5). It prints how long the host takes
//! to run them all (a first start creating the consumers, then a restart with everything in
//! place and the compile cache warm), its resident memory once idle, how soon an idle
//! handler handles a message, and two busy handlers' throughput beside the idle crowd against
//! the same two alone. The question #17 asks: can one host hold a thousand handlers?

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use harness::{handler_wasm, http_get, Host};
use jetwasm::status::StatusBody;

use super::{bench_server, env_or, median};

/// Runs the measurement and prints the figures.
pub async fn bench() -> anyhow::Result<()> {
    let handlers = env_or("BENCH_DENSITY_HANDLERS", 1000);
    let polyglot = env_or("BENCH_DENSITY_POLYGLOT", 5);
    let busy_messages = env_or("BENCH_DENSITY_MESSAGES", 20_000);
    let (server, js) = bench_server().await?;
    js.create_stream(jetstream::stream::Config {
        name: "DEADLETTER".into(),
        subjects: vec!["deadletter.>".into()],
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await?;
    let folder = tempfile::tempdir()?;
    let mut names = Vec::with_capacity(handlers);
    for i in 0..handlers {
        let (wasm, extra) = match i {
            i if i < polyglot => (
                "orders_python",
                "publish = [\"bench.out\"]\nconfig = { output_subject = \"bench.out\" }\n",
            ),
            i if i < 2 * polyglot => (
                "orders_js",
                "publish = [\"bench.out\"]\nconfig = { output_subject = \"bench.out\" }\n",
            ),
            _ => ("noop", ""),
        };
        let name = format!("d{i:04}");
        drop_in(folder.path(), &name, wasm, extra)?;
        names.push(name);
    }
    let config = "[runtime]\nhttp = \"{http}\"\n";
    let flags = ["--handlers-dir", folder.path().to_str().unwrap_or_default()];

    let (mut host, first) = start_and_wait(&server.url, config, &flags, handlers).await?;
    println!(
        "density: {handlers} handlers ({polyglot} Python, {polyglot} JavaScript, the rest Rust no-ops), each on its own consumer: all running {first:.1?} after the start (first start: consumers created)"
    );
    host.kill()?;
    let (host, again) = start_and_wait(&server.url, config, &flags, handlers).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss = host.rss_bytes()? as f64 / (1024.0 * 1024.0);
    let pss = host.proc_bytes("smaps_rollup", "Pss")? as f64 / (1024.0 * 1024.0);
    let virt = host.proc_bytes("status", "VmSize")? as f64 / (1024.0 * 1024.0 * 1024.0);
    println!(
        "density: restart, all running after {again:.1?}; idle 10 s later: RSS {rss:.0} MiB (PSS {pss:.0} MiB), virtual {virt:.0} GiB"
    );

    // An idle handler's first message: from its publish to its ack, as the consumer sees it.
    let mut firsts = Vec::new();
    for name in names.iter().rev().step_by(97).take(10) {
        let started = Instant::now();
        let seq = js
            .publish(format!("bench.{name}"), "x".into())
            .await?
            .await?
            .sequence;
        acked_through(&js, name, seq).await?;
        firsts.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "density: an idle handler's first message, publish to ack: median {:.1} ms, worst {:.1} ms (10 handlers)",
        median(&mut firsts.clone()),
        firsts.iter().cloned().fold(0.0, f64::max)
    );

    // Two handlers busy beside the crowd, then the same two on a host of their own.
    let busy = [&names[handlers - 1], &names[handlers - 2]];
    let crowd = drain(&js, &busy, busy_messages).await?;
    drop(host);
    let alone_folder = tempfile::tempdir()?;
    for name in busy {
        drop_in(alone_folder.path(), name, "noop", "")?;
    }
    let alone_flags = [
        "--handlers-dir",
        alone_folder.path().to_str().unwrap_or_default(),
    ];
    let (alone_host, _) = start_and_wait(&server.url, config, &alone_flags, 2).await?;
    let alone = drain(&js, &busy, busy_messages).await?;
    drop(alone_host);
    println!(
        "density: two busy handlers, {busy_messages} messages each: {crowd:.0} msgs/s beside {} idle ones, {alone:.0} msgs/s alone (ratio {:.2})",
        handlers - 2,
        crowd / alone
    );
    Ok(())
}

/// Drops `wasm` into `dir` as `name`, with a manifest declaring its own consumer on
/// `bench.NAME`.
fn drop_in(dir: &Path, name: &str, wasm: &str, extra: &str) -> anyhow::Result<()> {
    std::fs::copy(handler_wasm(wasm), dir.join(format!("{name}.wasm")))?;
    let manifest = format!(
        "stream = \"BENCH\"\n{extra}\n[consumer]\ndurable = \"{name}\"\nfilter_subjects = [\"bench.{name}\"]\nmax_ack_pending = 100000\n"
    );
    std::fs::write(dir.join(format!("{name}.toml")), manifest)?;
    Ok(())
}

/// Starts a host and waits until `/status` shows `n` components running; returns how long
/// that took from the spawn.
async fn start_and_wait(
    url: &str,
    config: &str,
    flags: &[&str],
    n: usize,
) -> anyhow::Result<(Host, Duration)> {
    let started = Instant::now();
    let host = Host::start_with(url, config, flags).await?;
    let deadline = started + Duration::from_secs(600);
    loop {
        if let Ok((200, body)) = http_get(host.http, "/status") {
            let status: StatusBody = serde_json::from_str(&body)?;
            let running = (status.components.iter())
                .filter(|c| c.state == "running")
                .count();
            if running >= n {
                return Ok((host, started.elapsed()));
            }
            if let Some(refused) = status.components.iter().find(|c| c.state == "refused") {
                anyhow::bail!("{} was refused: {:?}", refused.name, refused.error);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not all running after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until consumer `name` has acknowledged stream sequence `seq`.
async fn acked_through(js: &jetstream::Context, name: &str, seq: u64) -> anyhow::Result<()> {
    let mut consumer: jetstream::consumer::PullConsumer = (js.get_stream("BENCH").await?)
        .get_consumer(name)
        .await
        .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.info().await?.ack_floor.stream_sequence < seq {
        anyhow::ensure!(Instant::now() < deadline, "{name}: not acked after 30 s");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// Publishes `n` messages to each of `busy` and returns the messages/s they were acked at,
/// together, from the first publish.
async fn drain(js: &jetstream::Context, busy: &[&String], n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut last = vec![0; busy.len()];
    let mut acks = Vec::with_capacity(1000);
    for i in 0..n {
        for (b, name) in busy.iter().enumerate() {
            acks.push((b, js.publish(format!("bench.{name}"), "x".into()).await?));
        }
        if acks.len() >= 1000 || i + 1 == n {
            for (b, ack) in acks.drain(..) {
                last[b] = last[b].max(ack.await?.sequence);
            }
        }
    }
    for (name, last) in busy.iter().zip(last) {
        acked_through(js, name, last).await?;
    }
    Ok((n * busy.len()) as f64 / started.elapsed().as_secs_f64())
}
