//! Host-side bindings generated from `wit/`: the `handler` world, with async imports.

wasmtime::component::bindgen!({
    world: "handler",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use jetwasm::runtime::types::{PublishAck, PublishError};
