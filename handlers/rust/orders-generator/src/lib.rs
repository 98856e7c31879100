//! The example publisher that feeds the ORDERS stream: on each timer tick it publishes one
//! realistic order, its contents derived deterministically from the tick's sequence number and
//! its id (`gen-<tick ms>-<seq>`) unique across restarts. The message id is left to the host,
//! which derives it from the firing. Every `invalid_every`-th tick publishes an order without a
//! `customer` instead, so the demo also exercises `term` and dead letters.
//!
//! Config keys: `subject` (default `orders.created`) and `invalid_every` (default 20; 0 never
//! publishes an invalid order).

use jetwasm::runtime::log::{self, Level};
use jetwasm::runtime::{config, publish};
use serde::Serialize;

wit_bindgen::generate!({ world: "publisher", path: "../../../wit" });

const DEFAULT_SUBJECT: &str = "orders.created";
const DEFAULT_INVALID_EVERY: u64 = 20;
const CUSTOMERS: u64 = 500;
const MAX_QTY: u64 = 5;

/// What the generator sells: SKU and unit price in cents. Its length must be a power of two.
const CATALOG: &[(&str, u64)] = &[
    ("WIDGET-S", 499),
    ("WIDGET-L", 1299),
    ("GADGET-PRO", 4950),
    ("CABLE-USB-C", 899),
    ("MUG-LOGO", 1250),
    ("TSHIRT-M", 1999),
    ("STICKER-PACK", 350),
    ("BATTERY-AA4", 675),
];

/// One order line.
#[derive(Debug, Serialize)]
struct Item {
    sku: &'static str,
    qty: u64,
    price: f64,
}

/// A generated order; `customer` is `None` only in the deliberately invalid ones.
#[derive(Debug, Serialize)]
struct Order {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer: Option<String>,
    items: Vec<Item>,
    total: f64,
}

/// splitmix64: a small, good-enough generator whose whole state is one `u64`.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`); the modulo bias is irrelevant for demo data.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The order for tick `seq`; invalid (no customer) when `invalid_every` divides `seq`.
fn generate_order(seq: u64, now_ms: u64, invalid_every: u64) -> Order {
    let mut rng = SplitMix64(seq);
    let customer = format!("c-{}", 1 + rng.below(CUSTOMERS));
    let lines = 1 + rng.below(3);
    let mut total_cents = 0;
    // Distinct SKUs per order: walk the catalog from a random start with an odd step, which
    // is coprime to its (power-of-two) length.
    let len = CATALOG.len() as u64;
    let start = rng.below(len);
    let step = 1 + 2 * rng.below(len / 2);
    let items = (0..lines)
        .map(|line| {
            let (sku, price_cents) = CATALOG[((start + line * step) % len) as usize];
            let qty = 1 + rng.below(MAX_QTY);
            total_cents += qty * price_cents;
            Item {
                sku,
                qty,
                price: cents(price_cents),
            }
        })
        .collect();
    let invalid = invalid_every != 0 && seq.is_multiple_of(invalid_every);
    Order {
        id: format!("gen-{now_ms}-{seq}"),
        customer: (!invalid).then_some(customer),
        items,
        total: cents(total_cents),
    }
}

/// Cents as a decimal amount, e.g. 1299 as 12.99.
fn cents(c: u64) -> f64 {
    c as f64 / 100.0
}

struct OrdersGenerator;

impl Guest for OrdersGenerator {
    fn on_tick(tick: Tick) -> Result<(), String> {
        let subject = config::get("subject").unwrap_or_else(|| DEFAULT_SUBJECT.to_string());
        let invalid_every = config::get("invalid_every")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_INVALID_EVERY);
        let order = generate_order(tick.seq, tick.now_ms, invalid_every);
        let payload = serde_json::to_vec(&order).expect("an order always serializes");

        // The customer as a header too: the customer-totals handler orders by it.
        let headers: Vec<(String, String)> = (order.customer.iter())
            .map(|customer| ("customer".to_string(), customer.clone()))
            .collect();
        let ack = publish::publish(&subject, &payload, &headers, None)
            .map_err(|e| format!("publish failed: {e:?}"))?;
        log::log(
            Level::Info,
            &format!("published order {} (seq {})", order.id, ack.seq),
        );
        Ok(())
    }
}

export!(OrdersGenerator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_deterministic() {
        let a = serde_json::to_string(&generate_order(7, 1_000, 20)).unwrap();
        let b = serde_json::to_string(&generate_order(7, 1_000, 20)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn totals_add_up() {
        for seq in 1..200 {
            let order = generate_order(seq, 1_000, 20);
            assert!((1..=3).contains(&order.items.len()));
            let sum: f64 = order.items.iter().map(|i| i.qty as f64 * i.price).sum();
            assert!((sum - order.total).abs() < 0.005, "{order:?}");
        }
    }

    #[test]
    fn skus_within_an_order_are_distinct() {
        for seq in 1..200 {
            let order = generate_order(seq, 1_000, 20);
            let mut skus: Vec<_> = order.items.iter().map(|i| i.sku).collect();
            skus.sort_unstable();
            skus.dedup();
            assert_eq!(skus.len(), order.items.len(), "{order:?}");
        }
    }

    #[test]
    fn every_nth_order_lacks_a_customer() {
        assert!(generate_order(40, 1_000, 20).customer.is_none());
        assert!(generate_order(41, 1_000, 20).customer.is_some());
        assert!(generate_order(40, 1_000, 0).customer.is_some());
        let json = serde_json::to_string(&generate_order(20, 1_000, 20)).unwrap();
        assert!(!json.contains("customer"), "{json}");
    }
}
