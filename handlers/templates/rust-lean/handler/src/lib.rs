//! {{name}}: a jetwasm handler without `std` (the lean Rust template: a fresh sandbox per
//! message costs least). The host calls `handle` once for each JetStream message.
#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

#[cfg(all(target_arch = "wasm32", not(test)))]
mod lean;

use alloc::format;
use jetwasm::runtime::log::{self, Level};

// The bindings for the `handler` world in wit/ (the contract with the host).
wit_bindgen::generate!({ world: "handler", path: "wit" });

struct Component;

impl Guest for Component {
    fn handle(msg: Message) -> Disposition {
        // msg.payload is the body (Vec<u8>); also msg.subject, msg.headers, msg.stream_seq,
        // msg.delivered (1 the first time), ...
        log::log(
            Level::Info,
            &format!("{}: {} bytes", msg.subject, msg.payload.len()),
        );

        // Everything in the contract works as in the `rust` template:
        //     jetwasm::runtime::config::get("limit")
        //     jetwasm::runtime::publish::publish("out.subject", b"data", &[], None)
        //     jetwasm::runtime::kv::get("counts", "c-1")
        // Retry later: `Disposition::Nak(Some(5000))`; give up: `Disposition::Term(reason)`.
        // A panic is logged and traps: the host redelivers with backoff, then dead-letters.
        Disposition::Ack
    }
}

export!(Component);
