//! Resolving a component's imports against what the host provides, and
//! checking its exports against the `handler` world.

use std::path::Path;

use anyhow::Context as _;
use wasmtime::component::Linker;

use super::bindings::{self, HandlerPre};
use super::state::HostState;
use super::{Interface, PluginEngine};

/// A component with its imports resolved, and which of the optional ones
/// it needed.
pub(super) struct Linked {
    pub pre: HandlerPre<HostState>,
    pub uses_wasi: bool,
    pub uses_http: bool,
}

/// Resolves a component's imports (WASI and `wasi:http` only if it asks for
/// them) and checks its exports against the `handler` world.
pub(super) fn link(
    engine: &PluginEngine,
    component: &wasmtime::component::Component,
) -> anyhow::Result<Linked> {
    let mut linker: Linker<HostState> = Linker::new(engine.engine());
    bindings::add_contract_to_linker(&mut linker)?;
    // What components built against the 0.1.0 contract import.
    bindings::v0_1::Handler::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        &mut linker,
        |s| s,
    )?;
    let imports = inspect(engine, component).imports;
    let uses_wasi = imports.iter().any(|name| name.starts_with("wasi:"));
    let uses_http = imports.iter().any(|name| name.starts_with("wasi:http/"));
    if uses_wasi {
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    }
    if uses_http {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    }
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("imports something the host does not provide: {e}"))?;
    let pre = HandlerPre::new(pre)
        .map_err(|e| anyhow::anyhow!("does not implement the runnel:plugin/handler world: {e}"))?;
    Ok(Linked {
        pre,
        uses_wasi,
        uses_http,
    })
}

/// Lists a component's imports and exports by name.
pub fn inspect(engine: &PluginEngine, component: &wasmtime::component::Component) -> Interface {
    let ty = component.component_type();
    Interface {
        imports: ty
            .imports(engine.engine())
            .map(|(name, _)| name.to_string())
            .collect(),
        exports: ty
            .exports(engine.engine())
            .map(|(name, _)| name.to_string())
            .collect(),
    }
}

/// Loads a component and checks it the way `runnel run` would, returning
/// what it imports and exports.
pub fn check(engine: &PluginEngine, path: &Path) -> anyhow::Result<Interface> {
    let compiled = engine.compile_file(path)?;
    link(engine, &compiled.component).with_context(|| path.display().to_string())?;
    Ok(inspect(engine, &compiled.component))
}
