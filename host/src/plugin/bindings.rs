//! Host-side bindings of the `handler` world, generated from `wit/`, and of
//! the frozen `runnel:plugin@0.1.0` imports that older components use.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        // Async: reads wait on the store. Trappable: a wait past the call's
        // deadline ends the call as a timeout.
        "wasi:keyvalue": async | trappable,
    },
    exports: { default: async },
    with: {
        "wasi:keyvalue/store.bucket": crate::plugin::keyvalue::BucketHandle,
        "wasi:keyvalue/atomics.cas": crate::plugin::keyvalue::CasHandle,
    },
});

pub use self::runnel::plugin::types as wit;

/// Links what the host itself implements of the `handler` world: `host`
/// and the key-value and config interfaces. Not the world's own
/// `add_to_linker`, which would link `wasi:http` through these bindings'
/// copy of it: `wasi:http` (with `wasi:io` and `wasi:clocks`) is wasmtime's,
/// linked only for components that import it.
///
/// `with_keyvalue: false` leaves out `wasi:keyvalue`, whose functions wait
/// on the store: a component that imports it then fails to link, which is
/// how the synchronous fast path's linker refuses it.
pub fn add_contract_to_linker(
    linker: &mut wasmtime::component::Linker<super::state::HostState>,
    with_keyvalue: bool,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    type Own = HasSelf<super::state::HostState>;
    runnel::plugin::types::add_to_linker::<_, Own>(linker, |s| s)?;
    runnel::plugin::host::add_to_linker::<_, Own>(linker, |s| s)?;
    if with_keyvalue {
        wasi::keyvalue::store::add_to_linker::<_, Own>(linker, |s| s)?;
        wasi::keyvalue::atomics::add_to_linker::<_, Own>(linker, |s| s)?;
        wasi::keyvalue::batch::add_to_linker::<_, Own>(linker, |s| s)?;
    }
    wasi::config::store::add_to_linker::<_, Own>(linker, |s| s)
}

/// `runnel:plugin@0.1.0`, as released: components built against it import
/// `runnel:plugin/host@0.1.0`, which the linker cannot alias to 0.2.0 (a
/// new minor version of a 0.x package is a breaking one). Its `host` and
/// `types` are unchanged in 0.2.0, so the host serves both from one
/// implementation; its exports have the same shape and are called through
/// the 0.2.0 bindings.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "wit-0.1.0",
        world: "handler",
        exports: { default: async },
    });
}
