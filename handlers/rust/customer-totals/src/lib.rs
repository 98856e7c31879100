//! The stateful example: keeps each customer's order count and total (in cents) in a KV
//! bucket (config `bucket`, default `customer-totals`), one key per customer.
//!
//! It is a read-modify-write, and stays right when messages are redelivered (a kill -9 after
//! the write but before the ack) or calls race:
//! - the value remembers the stream sequence of the last order it counted, and an order at
//!   or below it was counted already: acked without counting it twice. That needs a
//!   customer's orders handled one at a time, in order: bind it with
//!   `ordering = { key = ... }` naming where the customer is (a subject token or a header);
//! - the write is `update` at the revision read (`create` for a new customer), so a write
//!   that raced another is refused (`wrong-revision`) and retried on a fresh read.

use jetwasm::runtime::config;
use jetwasm::runtime::kv::{self, KvError};
use order_model::parse_order;
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

/// A customer's running totals, as stored.
#[derive(Default, Serialize, Deserialize)]
struct Totals {
    orders: u64,
    total_cents: i64,
    /// The stream sequence of the last order counted.
    last_seq: u64,
}

/// Attempts at a write that races others before the message is retried.
const ATTEMPTS: u32 = 5;

struct CustomerTotals;

impl Guest for CustomerTotals {
    fn handle(msg: Message) -> Disposition {
        let order = match parse_order(&msg.payload) {
            Ok(order) => order,
            Err(reason) => return Disposition::Term(reason),
        };
        let bucket = config::get("bucket").unwrap_or_else(|| "customer-totals".into());
        for _ in 0..ATTEMPTS {
            let (mut totals, revision) = match kv::get(&bucket, &order.customer) {
                Ok(Some(entry)) => match serde_json::from_slice::<Totals>(&entry.value) {
                    Ok(totals) => (totals, Some(entry.revision)),
                    Err(e) => return Disposition::Term(format!("stored totals unreadable: {e}")),
                },
                Ok(None) => (Totals::default(), None),
                Err(e) => return failed(e),
            };
            if msg.stream_seq <= totals.last_seq {
                return Disposition::Ack; // counted before this delivery: do not count twice
            }
            totals.orders += 1;
            totals.total_cents += (order.total * 100.0).round() as i64;
            totals.last_seq = msg.stream_seq;
            let value = serde_json::to_vec(&totals).expect("totals serialize");
            let written = match revision {
                Some(revision) => kv::update(&bucket, &order.customer, &value, revision),
                None => kv::create(&bucket, &order.customer, &value),
            };
            match written {
                Ok(_) => return Disposition::Ack,
                Err(KvError::WrongRevision) => continue, // raced another write: read again
                Err(e) => return failed(e),
            }
        }
        Disposition::Nak(Some(100))
    }
}

/// What to do when the bucket failed us: retry what may pass later, dead-letter the rest.
fn failed(e: KvError) -> Disposition {
    match e {
        KvError::Unavailable(_) | KvError::WrongRevision => Disposition::Nak(Some(500)),
        KvError::Denied(why) => Disposition::Term(format!("kv denied: {why}")),
        KvError::NotFound(bucket) => Disposition::Term(format!("no kv bucket {bucket}")),
        KvError::TooLarge(limit) => Disposition::Term(format!("totals over {limit} bytes")),
        KvError::Invalid(why) => Disposition::Term(format!("customer is not a key: {why}")),
    }
}

export!(CustomerTotals);
