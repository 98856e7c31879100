//! The order the ORDERS examples exchange, and its validation, shared by the orders handler
//! and the HTTP intake so they accept exactly the same orders.
//!
//! An order is `{"id": string, "customer": string, "items": [..non-empty..], "total": number}`,
//! optionally with `"inventory_busy": true` (a transient condition the handler retries) and
//! `"crash": true` (the handler fails, to show the host's failure handling); other fields are
//! allowed.

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::error::Category;
use serde_json::{Map, Value};

/// The fields of an order the examples use. Items are only counted, not inspected.
#[derive(Debug, Deserialize)]
pub struct Order {
    /// The order's id.
    pub id: String,
    /// Who placed it.
    pub customer: String,
    /// Its items (at least one).
    pub items: Vec<IgnoredAny>,
    /// Its total.
    pub total: f64,
    /// Inventory cannot take the order right now.
    #[serde(default)]
    pub inventory_busy: bool,
    /// Make the handler crash on this order: shows (and tests) what the host does when a
    /// guest fails.
    #[serde(default)]
    pub crash: bool,
}

/// Parses and validates an order; the error is the reason to reject it, starting with
/// `invalid JSON:` or `invalid order:`.
///
/// The payload is parsed to a JSON object first: serde would otherwise also accept an array
/// of the fields in order, which is not an order.
pub fn parse_order(payload: &[u8]) -> Result<Order, String> {
    let object: Map<String, Value> =
        serde_json::from_slice(payload).map_err(|e| match e.classify() {
            Category::Data => format!("invalid order: {e}"),
            Category::Io | Category::Syntax | Category::Eof => format!("invalid JSON: {e}"),
        })?;
    let order =
        Order::deserialize(Value::Object(object)).map_err(|e| format!("invalid order: {e}"))?;
    if order.items.is_empty() {
        return Err("invalid order: no items".to_string());
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_a_valid_order_and_names_what_is_wrong_otherwise() {
        let order =
            parse_order(br#"{"id":"o-1","customer":"c","items":[{"sku":"A"}],"total":9.5}"#)
                .unwrap();
        assert_eq!(
            (order.id.as_str(), order.items.len(), order.inventory_busy),
            ("o-1", 1, false)
        );
        assert!(parse_order(b"{not json")
            .unwrap_err()
            .starts_with("invalid JSON"));
        let missing = parse_order(br#"{"id":"o-1","items":[1],"total":1}"#).unwrap_err();
        assert!(missing.contains("missing field `customer`"), "{missing}");
        let empty = parse_order(br#"{"id":"o","customer":"c","items":[],"total":0}"#).unwrap_err();
        assert_eq!(empty, "invalid order: no items");
        let array = parse_order(br#"["o","c",[{}],1.0]"#).unwrap_err();
        assert!(array.starts_with("invalid order"), "{array}");
    }
}
