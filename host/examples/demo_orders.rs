//! The demo's order source and scoreboard: publishes a mix of orders to `orders.created`
//! (mostly valid, some malformed, some hitting "inventory busy"), then follows the host's
//! `/metrics` and prints what became of them until the consumer has nothing pending.
//!
//! `cargo run --example demo_orders -- [ORDERS] [METRICS_URL]` (defaults: 40,
//! `127.0.0.1:9090`); the NATS URL comes from `NATS_URL`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn order(i: usize) -> String {
    match i % 10 {
        // Malformed: dead-lettered at once with the reason.
        3 => format!(r#"{{"id":"o-{i}","items":[{{"sku":"B2","qty":1}}],"total":4.5}}"#),
        7 => "{\"id\": \"o-broken\", ".to_owned(),
        // Inventory busy: retried after a delay, dead-lettered once deliveries run out.
        9 => format!(
            r#"{{"id":"o-{i}","customer":"c-9","items":[{{"sku":"C3","qty":2}}],"total":12.0,"inventory_busy":true}}"#
        ),
        _ => format!(
            r#"{{"id":"o-{i}","customer":"c-{}","items":[{{"sku":"A1","qty":{}}}],"total":{}.5}}"#,
            i % 13,
            1 + i % 3,
            10 + i
        ),
    }
}

/// The order's customer, when it has one.
fn customer_of(order: &str) -> Option<String> {
    let order: serde_json::Value = serde_json::from_str(order).ok()?;
    Some(order.get("customer")?.as_str()?.to_owned())
}

/// Prints the busiest customers' totals, as the customer-totals handler keeps them in KV.
async fn totals(js: &async_nats::jetstream::Context) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let bucket = js.get_key_value("customer-totals").await?;
    let mut keys = bucket.keys().await?;
    let mut rows = Vec::new();
    while let Some(customer) = keys.next().await {
        let customer = customer?;
        if let Some(value) = bucket.get(&customer).await? {
            let totals: serde_json::Value = serde_json::from_slice(&value)?;
            let orders = totals["orders"].as_u64().unwrap_or(0);
            let cents = totals["total_cents"].as_i64().unwrap_or(0);
            rows.push((orders, cents, customer));
        }
    }
    rows.sort_by(|a, b| b.cmp(a));
    println!(
        "customer totals in the KV bucket customer-totals ({} customers; the busiest):",
        rows.len()
    );
    for (orders, cents, customer) in rows.iter().take(5) {
        println!(
            "  {customer:<12} {orders:>4} orders  {:>10.2}",
            *cents as f64 / 100.0
        );
    }
    Ok(())
}

/// `(processed, retried, dead-lettered, generated)` from the host's metrics.
fn scoreboard(metrics: &str) -> anyhow::Result<(u64, u64, u64, u64)> {
    let mut stream = TcpStream::connect(metrics)?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    // The series named as in `sample` whose labels include the ones it gives (every series
    // has a `tenant` label too), summed.
    let sample = |sample: &str| -> u64 {
        let (name, wanted) = sample.split_once('{').unwrap_or((sample, "}"));
        let wanted: Vec<&str> = wanted.trim_end_matches('}').split(',').collect();
        text.lines()
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let (series_name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                let fits = series_name == name && wanted.iter().all(|w| labels.contains(w));
                fits.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum::<f64>() as u64
    };
    let processed = sample("jetwasm_messages_total{handler=\"orders\",outcome=\"ack\"}");
    let retried = sample("jetwasm_messages_total{handler=\"orders\",outcome=\"nak\"}");
    let dead = sample("jetwasm_dead_letters_total{handler=\"orders\"}");
    let generated =
        sample("jetwasm_publisher_ticks_total{outcome=\"ok\",publisher=\"orders-generator\"}");
    Ok((processed, retried, dead, generated))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(40);
    let metrics = args.next().unwrap_or_else(|| "127.0.0.1:9090".to_owned());
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);

    let before = scoreboard(&metrics)?;
    let mut sequences = Vec::with_capacity(count);
    for i in 0..count {
        let order = order(i);
        // The customer as a header too: the customer-totals handler orders by it.
        let mut headers = async_nats::HeaderMap::new();
        if let Some(customer) = customer_of(&order) {
            headers.insert("customer", customer.as_str());
        }
        let ack = js
            .publish_with_headers("orders.created", headers, order.into())
            .await?
            .await?;
        sequences.push(ack.sequence);
    }
    println!(
        "published {count} orders to orders.created (ORDERS seq {}..{}): 3 in 10 are malformed or busy",
        sequences.first().unwrap_or(&0),
        sequences.last().unwrap_or(&0)
    );
    let started = Instant::now();
    let mut last = None;
    loop {
        let (processed, retried, dead, generated) = scoreboard(&metrics)?;
        let now = (
            processed - before.0,
            retried - before.1,
            dead - before.2,
            generated - before.3,
        );
        if last != Some(now) {
            println!(
                "sent by hand {count} + by the generator {} | processed {} | retried {} | dead-lettered {}",
                now.3, now.0, now.1, now.2
            );
            last = Some(now);
        }
        let info = js
            .get_stream("ORDERS")
            .await?
            .consumer_info("orders-processor")
            .await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            println!(
                "every order accounted for in {:.1?}: nothing pending on ORDERS/orders-processor",
                started.elapsed()
            );
            return totals(&js).await;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "orders still unaccounted for after 2 minutes"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
