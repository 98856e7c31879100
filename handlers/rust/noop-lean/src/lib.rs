//! Acks every message, built like `jetwasm new --lang rust-lean` projects (with the template's
//! own `lean.rs` and `build.rs`): no `std`, so no WASI imports. A message whose payload is
//! `panic` makes it panic, to show how a lean handler's panic is reported.
#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

#[cfg(all(target_arch = "wasm32", not(test)))]
#[path = "../../../templates/rust-lean/src/lean.rs"]
mod lean;

extern crate alloc;

wit_bindgen::generate!({ world: "handler", path: "../../../wit" });

struct NoopLean;

impl Guest for NoopLean {
    fn handle(msg: Message) -> Disposition {
        if msg.payload == b"panic" {
            panic!("noop-lean: asked to panic");
        }
        Disposition::Ack
    }
}

export!(NoopLean);
