//! The fleet benchmark, against its own nats-server: a backlog drained by one, two and three
//! `jetwasm run` hosts on the same durable consumer (the no-op handler, fresh sandboxes), and
//! `jetwasm replay` over the same history. On a 2-core machine shared with the server, more
//! hosts show the cost of sharing a consumer, not scaling: there are no more cores to use.

use std::process::Command;
use std::time::Instant;

use harness::setup::Setup;
use harness::{handler_wasm, Host};

/// Runs both parts and prints their figures.
pub async fn bench() -> anyhow::Result<()> {
    let n = super::env_or("BENCH_FLEET_MESSAGES", 50_000);
    let setup = Setup::new("max_ack_pending = 20000").await;
    for i in 0..n {
        let ack = setup
            .js
            .publish("orders.created", format!("{i:064}").into())
            .await?;
        if i % 1000 == 999 {
            ack.await?;
        }
    }
    let config = setup.config(&handler_wasm("noop"), "", "");
    let mut one = 0.0;
    for hosts in 1..=3 {
        // Each run starts a new consumer at the beginning of the backlog.
        let stream = setup.stream("ORDERS").await;
        let _ = stream.delete_consumer("proc").await;
        setup.apply_streams().await;
        let rate = drain(&setup, &config, hosts, n).await?;
        if hosts == 1 {
            one = rate;
        }
        println!(
            "fleet: {hosts} host(s) on one consumer drained {n} messages at {rate:.0} msgs/s ({:.2}× one host)",
            rate / one
        );
    }
    let file = setup.dir.path().join("replay.toml");
    std::fs::write(&file, config.replace("{http}", "127.0.0.1:1"))?;
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_jetwasm"))
        .args(["replay", "--handler", "h", "--from-seq", "1", "--config"])
        .arg(&file)
        .args(["--server", &setup.server.url])
        .output()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = n as f64 / elapsed.as_secs_f64();
    println!(
        "fleet: jetwasm replay over the same {n} messages: {replayed:.0} msgs/s, start-up included ({:.2}× one host's live drain)",
        replayed / one
    );
    Ok(())
}

/// Starts `hosts` hosts on the consumer at once and returns messages/s from the first ack to
/// the `n`th, summed over the hosts.
async fn drain(setup: &Setup, config: &str, hosts: usize, n: usize) -> anyhow::Result<f64> {
    let running = (0..hosts)
        .map(|_| Host::spawn(&setup.server.url, config))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let acked = "jetwasm_messages_total{handler=\"h\",outcome=\"ack\"}";
    super::acked_rate(&running, acked, n).await
}
