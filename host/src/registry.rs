//! Loading a component: size cap, compile off the async runtime, then a check against the
//! `handler` world (imports satisfiable, `handle` exported with the right type) before any
//! consumer is bound. The result is an `InstancePre` shared by every call.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use crate::bindings::publisher::PublisherPre;
use crate::bindings::HandlerPre;
use crate::imports::HostState;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Largest component file accepted.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;
/// Longest a component may take to compile.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads, compiles and checks the component at `path` against the `publisher` world.
pub async fn load_publisher(
    engine: &Engine,
    linker: &Linker<HostState>,
    path: &Path,
) -> anyhow::Result<PublisherPre<HostState>> {
    let component = compile(engine, path).await?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from);
    pre.and_then(|pre| PublisherPre::new(pre).map_err(anyhow::Error::from))
        .with_context(|| format!("{} does not fit the publisher world", path.display()))
}

/// Reads, compiles and checks the component at `path` against the `http-publisher` world
/// (a `wasi:http/incoming-handler` export).
pub async fn load_http_publisher(
    engine: &Engine,
    linker: &Linker<HostState>,
    path: &Path,
) -> anyhow::Result<ProxyPre<HostState>> {
    let component = compile(engine, path).await?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from);
    pre.and_then(|pre| ProxyPre::new(pre).map_err(anyhow::Error::from))
        .with_context(|| format!("{} does not fit the http-publisher world", path.display()))
}

/// Reads, compiles and checks the component at `path` against the `handler` world.
pub async fn load_handler(
    engine: &Engine,
    linker: &Linker<HostState>,
    path: &Path,
) -> anyhow::Result<HandlerPre<HostState>> {
    let component = compile(engine, path).await?;
    check_handler(linker, &component)
        .with_context(|| format!("{} does not fit the handler world", path.display()))
}

/// Checks a compiled component against the `handler` world: every import must be one the host
/// provides, and `handle` must be exported with the contract's signature.
pub fn check_handler(
    linker: &Linker<HostState>,
    component: &Component,
) -> anyhow::Result<HandlerPre<HostState>> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)?;
    HandlerPre::new(pre).map_err(anyhow::Error::from)
}

/// Reads `path` (at most [`MAX_COMPONENT_BYTES`]) and compiles it on a blocking thread.
pub async fn compile(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading component {shown}"))?
        .len();
    if size > MAX_COMPONENT_BYTES {
        bail!("component {shown} is {size} bytes, over the {MAX_COMPONENT_BYTES}-byte cap");
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading component {shown}"))?;
    check_is_component(&bytes).with_context(|| format!("component {shown}"))?;
    let engine = engine.clone();
    let compiling = tokio::task::spawn_blocking(move || Component::from_binary(&engine, &bytes));
    match tokio::time::timeout(COMPILE_TIMEOUT, compiling).await {
        Ok(joined) => joined?
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling component {shown}")),
        Err(_) => bail!("compiling component {shown} took longer than {COMPILE_TIMEOUT:?}"),
    }
}

/// Tells a component from a core module or something else, with advice for each.
fn check_is_component(bytes: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    match bytes.get(..8) {
        Some([m0, m1, m2, m3, 0x0d, 0x00, 0x01, 0x00]) if [*m0, *m1, *m2, *m3] == MAGIC => Ok(()),
        Some([m0, m1, m2, m3, 0x01, 0x00, 0x00, 0x00]) if [*m0, *m1, *m2, *m3] == MAGIC => bail!(
            "is a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with \
             `wasm-tools component new` (and the WASI preview1 adapter)"
        ),
        _ => bail!("is not a WebAssembly component (bad magic number or version)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_components_from_modules_and_junk() {
        assert!(check_is_component(b"\0asm\x0d\x00\x01\x00rest").is_ok());
        let module = check_is_component(b"\0asm\x01\x00\x00\x00")
            .unwrap_err()
            .to_string();
        assert!(module.contains("core WebAssembly module"), "{module}");
        let junk = check_is_component(b"hello world").unwrap_err().to_string();
        assert!(junk.contains("not a WebAssembly component"), "{junk}");
        assert!(check_is_component(b"").is_err());
    }
}
