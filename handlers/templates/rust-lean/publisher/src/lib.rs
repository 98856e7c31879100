//! {{name}}: a jetwasm publisher without `std` (the lean Rust template). The host calls
//! `on_tick` each time its timer fires.
//!
//! Config key: `subject`, where the ticks go (default `ticks`).
#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

#[cfg(all(target_arch = "wasm32", not(test)))]
mod lean;

use alloc::{format, string::String};
use jetwasm::runtime::{config, publish};

// The bindings for the `publisher` world in wit/ (the contract with the host).
wit_bindgen::generate!({ world: "publisher", path: "wit" });

struct Component;

impl Guest for Component {
    fn on_tick(tick: Tick) -> Result<(), String> {
        let subject = config::get("subject").unwrap_or_else(|| "ticks".into());
        let payload = format!(r#"{{"tick":{},"now_ms":{}}}"#, tick.seq, tick.now_ms);
        // No message id (None): the host derives one, so a retried tick is not stored twice.
        publish::publish(&subject, payload.as_bytes(), &[], None)
            .map(|_ack| ())
            // An error is logged and counted by the host; the timer goes on.
            .map_err(|e| format!("publishing tick {} to {subject} failed: {e:?}", tick.seq))
    }
}

export!(Component);
