//! The example handler for the ORDERS stream: validates each order, publishes a processed-order
//! event, and acks. Malformed orders are dead-lettered; busy inventory is retried after a delay.
//!
//! Config keys: `output_subject` (default `orders.processed`) and `retry_delay_ms` (default 2000).

use jetwasm::runtime::log::{self, Level};
use jetwasm::runtime::types::PublishError;
use jetwasm::runtime::{config, publish};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

const DEFAULT_OUTPUT_SUBJECT: &str = "orders.processed";
const DEFAULT_RETRY_DELAY_MS: u64 = 2000;

/// An incoming order. Only the item count matters here, so items are not inspected.
#[derive(Debug, Deserialize)]
struct Order {
    id: String,
    customer: String,
    items: Vec<IgnoredAny>,
    total: f64,
    /// Inventory cannot take the order right now: a transient condition worth retrying.
    #[serde(default)]
    inventory_busy: bool,
}

/// The event published for each processed order.
#[derive(Serialize)]
struct Processed<'a> {
    id: &'a str,
    customer: &'a str,
    total: f64,
    items: usize,
    processed_seq: u64,
}

/// Parses and validates an order; the error is the reason to dead-letter it.
fn parse_order(payload: &[u8]) -> Result<Order, String> {
    let order: Order = serde_json::from_slice(payload).map_err(|e| match e.classify() {
        Category::Data => format!("invalid order: {e}"),
        Category::Io | Category::Syntax | Category::Eof => format!("invalid JSON: {e}"),
    })?;
    if order.items.is_empty() {
        return Err("invalid order: no items".to_string());
    }
    Ok(order)
}

struct Orders;

impl Guest for Orders {
    fn handle(msg: Message) -> Disposition {
        let order = match parse_order(&msg.payload) {
            Ok(order) => order,
            Err(reason) => return Disposition::Term(reason),
        };
        if order.inventory_busy {
            let delay = config::get("retry_delay_ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_RETRY_DELAY_MS);
            return Disposition::Nak(Some(delay));
        }

        let subject =
            config::get("output_subject").unwrap_or_else(|| DEFAULT_OUTPUT_SUBJECT.to_string());
        let event = serde_json::to_vec(&Processed {
            id: &order.id,
            customer: &order.customer,
            total: order.total,
            items: order.items.len(),
            processed_seq: msg.stream_seq,
        })
        .expect("a processed event always serializes");
        let headers = [("order-id".to_string(), order.id.clone())];

        match publish::publish(&subject, &event, &headers, None) {
            Ok(_) => {
                log::log(Level::Info, &format!("processed order {}", order.id));
                Disposition::Ack
            }
            Err(PublishError::Denied(subject)) => {
                Disposition::Term(format!("cannot publish: denied subject {subject}"))
            }
            Err(e) => {
                log::log(
                    Level::Warn,
                    &format!("publishing order {} failed: {e:?}", order.id),
                );
                Disposition::Nak(None)
            }
        }
    }
}

export!(Orders);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_valid_order() {
        let order = parse_order(
            br#"{"id":"o-1","customer":"c-42","items":[{"sku":"A1","qty":2,"price":9.5}],"total":19.0}"#,
        )
        .unwrap();
        assert_eq!((order.id.as_str(), order.items.len()), ("o-1", 1));
        assert!(!order.inventory_busy);
    }

    #[test]
    fn rejects_malformed_json() {
        let reason = parse_order(b"{not json").unwrap_err();
        assert!(reason.starts_with("invalid JSON: "), "{reason}");
    }

    #[test]
    fn names_a_missing_field() {
        let reason = parse_order(br#"{"id":"o-1","items":[{}],"total":1.0}"#).unwrap_err();
        assert!(
            reason.starts_with("invalid order: missing field `customer`"),
            "{reason}"
        );
    }

    #[test]
    fn rejects_an_order_without_items() {
        let reason =
            parse_order(br#"{"id":"o-1","customer":"c","items":[],"total":0.0}"#).unwrap_err();
        assert_eq!(reason, "invalid order: no items");
    }
}
