//! Host-side bindings generated from `wit/`, with async imports. Contract 0.2 (`wit/`) is the
//! current one: its `handler` world at the top level, `publisher` in [`publisher`]. Contract
//! 0.1 (`wit/0.1/`) is in [`v0_1`], for its imports only: every type 0.2 shares with 0.1 has
//! the same shape, and the component model matches types by shape, so 0.2's exports serve
//! 0.1 components too.

// Generated code: its items carry the WIT's own doc comments, not all of them.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::jetwasm::runtime::kv::{Entry, KvError};
pub use self::jetwasm::runtime::types::{Outgoing, PublishAck, PublishError, Tick};

/// The `publisher` world: exports called by host timers.
pub mod publisher {
    wasmtime::component::bindgen!({
        world: "publisher",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "jetwasm:runtime/types": super::jetwasm::runtime::types,
            "jetwasm:runtime/log": super::jetwasm::runtime::log,
            "jetwasm:runtime/config": super::jetwasm::runtime::config,
            "jetwasm:runtime/publish": super::jetwasm::runtime::publish,
            "jetwasm:runtime/kv": super::jetwasm::runtime::kv,
        },
    });
}

/// Contract 0.1: the imports a 0.1 component calls (each served by 0.2's host side, see the
/// `contract_0_1` module).
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "handler",
        path: "../wit/0.1",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// The `batch-handler` world (0.2): `handle-batch` called with a batch of messages.
pub mod batch_handler {
    wasmtime::component::bindgen!({
        world: "batch-handler",
        path: "../wit",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "jetwasm:runtime/types": super::jetwasm::runtime::types,
            "jetwasm:runtime/log": super::jetwasm::runtime::log,
            "jetwasm:runtime/config": super::jetwasm::runtime::config,
            "jetwasm:runtime/publish": super::jetwasm::runtime::publish,
            "jetwasm:runtime/kv": super::jetwasm::runtime::kv,
        },
    });
}
