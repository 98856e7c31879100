//! The example handler for the ORDERS stream: validates each order, publishes a processed-order
//! event, and acks. Malformed orders are dead-lettered; busy inventory is retried after a delay.
//!
//! Config keys: `output_subject` (default `orders.processed`) and `retry_delay_ms` (default 2000).

use jetwasm::runtime::log::{self, Level};
use jetwasm::runtime::types::PublishError;
use jetwasm::runtime::{config, publish};
use order_model::parse_order;
use serde::Serialize;

// Contract 0.2 (`wit/`); the `orders-0-1` crate builds this same source against 0.1.
#[cfg(not(feature = "contract-0-1"))]
wit_bindgen::generate!({ world: "handler", path: "../../../wit" });
#[cfg(feature = "contract-0-1")]
wit_bindgen::generate!({ world: "handler", path: "../../../wit/0.1" });

const DEFAULT_OUTPUT_SUBJECT: &str = "orders.processed";
const DEFAULT_RETRY_DELAY_MS: u64 = 2000;

/// The event published for each processed order.
#[derive(Serialize)]
struct Processed<'a> {
    id: &'a str,
    customer: &'a str,
    total: f64,
    items: usize,
    processed_seq: u64,
}

struct Orders;

impl Guest for Orders {
    fn handle(msg: Message) -> Disposition {
        let order = match parse_order(&msg.payload) {
            Ok(order) => order,
            Err(reason) => return Disposition::Term(reason),
        };
        if order.crash {
            panic!("crash requested by order {}", order.id);
        }
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
