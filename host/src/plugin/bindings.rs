//! Host-side bindings of the `handler` world, generated from `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    exports: { default: async },
});

pub use self::runnel::plugin::types as wit;
