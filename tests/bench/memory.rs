//! Memory, against its own nats-server: one host running the orders handler in each of the
//! five languages, each on its own consumer of the same orders. Resident memory (RSS) when
//! ready, right after every handler has handled `BENCH_MEMORY_MESSAGES` orders (default 4000),
//! and `BENCH_MEMORY_SETTLE_SECS` later (default 60), with fresh instances and with reused
//! ones. The question #17 asks: does memory come back after a load stops?
//! `BENCH_KEEP_RESIDENT` sets `[runtime] keep_resident`. `BENCH_MEMORY_SMAPS=DIR` saves the host's `/proc/PID/smaps` there after the settle.

use std::time::Duration;

use harness::setup::{order, Setup};
use harness::{handler_wasm, Host};

const LANGS: [(&str, &str); 5] = [
    ("rust", "orders"),
    ("python", "orders_python"),
    ("js", "orders_js"),
    ("go", "orders_go"),
    ("c", "orders_c"),
];

/// Runs the measurement for both instance modes and prints the figures.
pub async fn bench() -> anyhow::Result<()> {
    let n = super::env_or("BENCH_MEMORY_MESSAGES", 4000);
    let settle = Duration::from_secs(super::env_or("BENCH_MEMORY_SETTLE_SECS", 60) as u64);
    for mode in ["fresh", "reuse"] {
        let consumers: String = (LANGS.iter())
            .map(|(lang, _)| {
                format!("\n[[stream.consumer]]\ndurable = \"{lang}\"\nfilter_subjects = [\"orders.created\"]\nmax_deliver = 5\nmax_ack_pending = 20000\n")
            })
            .collect();
        // The languages' consumers, added under ORDERS after the test consumer.
        let setup = Setup::new(&consumers).await;
        let spec = setup.dir.path().join("streams.toml");
        let mut config = format!(
            "streams = \"{}\"\n\n[runtime]\nhttp = \"{{http}}\"\n",
            spec.display()
        );
        if let Ok(size) = std::env::var("BENCH_KEEP_RESIDENT") {
            config.push_str(&format!("keep_resident = \"{size}\"\n"));
        }
        for (lang, wasm) in LANGS {
            config.push_str(&format!(
                "\n[[handler]]\nname = \"{lang}\"\ncomponent = \"{}\"\nstream = \"ORDERS\"\nconsumer = \"{lang}\"\npublish = [\"orders.processed\"]\ninstances = \"{mode}\"\nconfig = {{ output_subject = \"orders.processed\" }}\n",
                handler_wasm(wasm).display()
            ));
        }
        let host = Host::start(&setup.server.url, &config).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = mib(host.rss_bytes()?);
        setup.publish_all((0..n).map(order)).await;
        for (lang, _) in LANGS {
            let acked = format!("jetwasm_messages_total{{handler=\"{lang}\",outcome=\"ack\"}}");
            host.wait_metric(&acked, n as f64, Duration::from_secs(600))
                .await?;
        }
        let loaded = mib(host.rss_bytes()?);
        tokio::time::sleep(settle).await;
        let settled = mib(host.rss_bytes()?);
        if let Ok(dir) = std::env::var("BENCH_MEMORY_SMAPS") {
            // Every mapping's sizes, to tell the instance pool's slots from the heap.
            let smaps = std::fs::read(format!("/proc/{}/smaps", host.pid()))?;
            std::fs::write(format!("{dir}/smaps-{mode}.txt"), smaps)?;
        }
        let parts: Vec<String> = [
            ("status", "RssAnon"),
            ("status", "RssFile"),
            ("status", "RssShmem"),
            ("smaps_rollup", "Pss"),
        ]
        .iter()
        .map(|(file, field)| Ok(format!("{field} {:.0}", mib(host.proc_bytes(file, field)?))))
        .collect::<anyhow::Result<_>>()?;
        println!(
            "memory ({mode}): five orders handlers, {n} orders each: RSS {idle:.0} MiB ready, {loaded:.0} MiB after the load, {settled:.0} MiB {}s later ({} MiB)",
            settle.as_secs(),
            parts.join(", ")
        );
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
