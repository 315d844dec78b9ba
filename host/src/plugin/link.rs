//! Resolving a component's imports against what the host provides, and
//! checking its exports against the `handler` world.

use std::path::Path;

use anyhow::Context as _;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use super::bindings::{self, HandlerPre};
use super::fast_path::{self, NonBlocking, NonBlockingIo};
use super::state::HostState;
use super::{Interface, PluginEngine};

/// A component with its imports resolved, and which of the optional ones
/// it needed.
pub(super) struct Linked {
    pub pre: HandlerPre<HostState>,
    /// The same component linked for the synchronous fast path, when all
    /// of its imports can be served without waiting ([`fast_path`]).
    pub fast: Option<InstancePre<HostState>>,
    pub uses_wasi: bool,
    pub uses_http: bool,
}

/// Resolves a component's imports (WASI and `wasi:http` only if it asks for
/// them) and checks its exports against the `handler` world. With
/// `fast_path: Some(dirs_granted)` (whether its config grants it
/// directories), links it for the fast path too when it is
/// [`fast_path::eligible`].
pub(super) fn link(
    engine: &PluginEngine,
    component: &wasmtime::component::Component,
    fast_path: Option<bool>,
) -> anyhow::Result<Linked> {
    let mut linker: Linker<HostState> = Linker::new(engine.engine());
    bindings::add_contract_to_linker(&mut linker, true)?;
    add_older_contracts(&mut linker)?;
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
    let fast = match fast_path {
        // Not expected to fail (every import linked the async way); if it
        // does, the plugin is simply called on a fiber.
        Some(dirs_granted) if fast_path::eligible(&imports, dirs_granted) => {
            link_fast(engine, component, uses_wasi)
                .inspect_err(|e| tracing::debug!("no fast path: {e:#}"))
                .ok()
        }
        _ => None,
    };
    Ok(Linked {
        pre,
        fast,
        uses_wasi,
        uses_http,
    })
}

/// What components built against the 0.1.0 contract import.
fn add_older_contracts(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    bindings::v0_1::Handler::add_to_linker::<_, HasSelf<_>>(linker, |s| s)?;
    Ok(())
}

/// Links an eligible component with synchronous host functions only:
/// wasmtime-wasi's synchronous WASI, except `wasi:io`'s waits, which are
/// [`NonBlockingIo`]'s. With no async import, its instances may be called
/// without a fiber.
fn link_fast(
    engine: &PluginEngine,
    component: &wasmtime::component::Component,
    uses_wasi: bool,
) -> anyhow::Result<InstancePre<HostState>> {
    use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
    let mut linker: Linker<HostState> = Linker::new(engine.engine());
    bindings::add_contract_to_linker(&mut linker, false)?;
    add_older_contracts(&mut linker)?;
    if uses_wasi {
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        linker.allow_shadowing(true);
        fn io(s: &mut HostState) -> NonBlockingIo<'_> {
            NonBlockingIo(&mut s.table)
        }
        poll::add_to_linker::<_, NonBlocking>(&mut linker, io)?;
        streams::add_to_linker::<_, NonBlocking>(&mut linker, io)?;
    }
    linker
        .instantiate_pre(component)
        .map_err(|e| anyhow::anyhow!("linking for the synchronous fast path: {e}"))
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
    link(engine, &compiled.component, None).with_context(|| path.display().to_string())?;
    Ok(inspect(engine, &compiled.component))
}
