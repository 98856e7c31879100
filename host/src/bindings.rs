//! Host-side bindings generated from `wit/`, with async imports: the `handler` world at the
//! top level, the `publisher` world in [`publisher`] (sharing the same import interfaces, so
//! one linker serves both).

// Generated code: its items carry the WIT's own doc comments, not all of them.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::jetwasm::runtime::types::{PublishAck, PublishError, Tick};

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
        },
    });
}
