//! One sandboxed call (new store + instance + `handle`) for several components, interleaved
//! so that the machine's slow and fast phases fall on all of them alike: `BENCH_ONLY=calls`.
//! `BENCH_COMPONENTS` lists them, comma-separated, as paths or handler names (default
//! `noop,noop_lean`, beside the minimal component); each round makes `BENCH_CALLS` calls per
//! component (default 20000), `BENCH_ROUNDS` rounds (default 5). Prints each round's p50 and
//! the median of them.

use std::path::PathBuf;

use async_nats::jetstream;
use harness::handler_wasm;

use super::{env_or, host_config, median, MINIMAL_HANDLER};

/// Runs the comparison on `js` and prints it.
pub async fn bench(js: &jetstream::Context) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let minimal = scratch.path().join("minimal.wasm");
    std::fs::write(&minimal, wat::parse_str(MINIMAL_HANDLER)?)?;
    let listed = std::env::var("BENCH_COMPONENTS").unwrap_or_else(|_| "noop,noop_lean".into());
    let mut components: Vec<(String, PathBuf)> = (listed.split(','))
        .map(|name| match name.contains('/') {
            true => (name.to_owned(), PathBuf::from(name)),
            false => (name.to_owned(), handler_wasm(name)),
        })
        .collect();
    components.push(("minimal".into(), minimal));

    let mut dispatchers = Vec::new();
    for (i, (_, path)) in components.iter().enumerate() {
        let config = host_config(path, "fresh", &format!("calls{i}"))?;
        dispatchers.push(super::unbound_handler(js, &config).await?);
    }

    let (calls, rounds) = (env_or("BENCH_CALLS", 20_000), env_or("BENCH_ROUNDS", 5));
    let mut p50s = vec![Vec::new(); components.len()];
    for _ in 0..rounds {
        for (binding, p50) in dispatchers.iter().zip(&mut p50s) {
            let times = super::timed_calls(&binding.version().dispatcher, calls).await;
            p50.push(times[calls / 2].as_secs_f64() * 1e6);
        }
    }
    println!("sandboxed call p50 (new store + instance + handle), {rounds} interleaved rounds of {calls} calls:");
    for ((name, _), p50) in components.iter().zip(&mut p50s) {
        let rounds: Vec<String> = p50.iter().map(|us| format!("{us:.2}")).collect();
        println!(
            "  {name:<20} median {:>6.2} µs   rounds {}",
            median(p50),
            rounds.join(" ")
        );
    }
    Ok(())
}
