//! Loading a component: size cap, compile off the async runtime, then a check against its
//! world (`handler`, `batch-handler`, `publisher` or `http-publisher`: imports satisfiable, exports there with
//! the right types) before anything is bound. The result is an `InstancePre` shared by every
//! call.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::Engine;

use crate::bindings::batch_handler::BatchHandlerPre;
use crate::bindings::publisher::PublisherPre;
use crate::bindings::HandlerPre;
use crate::compile_cache::{CompileCache, Source};
use crate::engine;
use crate::sandbox::HostState;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Largest component file accepted.
pub const MAX_COMPONENT_BYTES: u64 = 256 << 20;
/// Longest a component may take to compile.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// A world a component can be checked against, with the typed `InstancePre` it yields.
pub trait World: Sized {
    /// The world's name in `wit/`.
    const NAME: &'static str;
    /// Checks the world's exports on an `InstancePre` whose imports already resolved.
    fn from_pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self>;
}

impl World for HandlerPre<HostState> {
    const NAME: &'static str = "handler";
    fn from_pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        HandlerPre::new(pre)
    }
}

impl World for BatchHandlerPre<HostState> {
    const NAME: &'static str = "batch-handler";
    fn from_pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        BatchHandlerPre::new(pre)
    }
}

impl World for PublisherPre<HostState> {
    const NAME: &'static str = "publisher";
    fn from_pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        PublisherPre::new(pre)
    }
}

impl World for ProxyPre<HostState> {
    const NAME: &'static str = "http-publisher";
    fn from_pre(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        ProxyPre::new(pre)
    }
}

/// A component compiled (or loaded from the cache).
pub struct Compiled {
    /// The component.
    pub component: Component,
    /// Its version: [`crate::status::version_of`] of the bytes it was compiled from.
    pub version: String,
    /// The SHA-256 of those bytes: its key in the compile cache.
    pub sha256: [u8; 32],
}

/// A component checked against world `W`.
pub struct Checked<W> {
    /// What instantiates it.
    pub pre: W,
    /// Its version: [`crate::status::version_of`] of the bytes it was compiled from.
    pub version: String,
    /// The SHA-256 of those bytes: its key in the compile cache.
    pub sha256: [u8; 32],
}

/// Reads, compiles (or loads from `cache`) and checks the component at `path` against world `W`.
pub async fn load<W: World>(
    engine: &Engine,
    linker: &Linker<HostState>,
    path: &Path,
    cache: Option<&CompileCache>,
) -> anyhow::Result<Checked<W>> {
    let Compiled {
        component,
        version,
        sha256,
    } = compile(engine, path, cache).await?;
    check_shape(&component).with_context(|| format!("component {}", path.display()))?;
    let pre = check::<W>(linker, &component)
        .with_context(|| format!("{} does not fit the {} world", path.display(), W::NAME))?;
    Ok(Checked {
        pre,
        version,
        sha256,
    })
}

/// The contract versions (`0.1.0`, `0.2.0`) whose interfaces `component` imports; none
/// when it imports none (it then runs as either).
pub fn contract_versions(component: &Component) -> std::collections::BTreeSet<String> {
    let ty = component.component_type();
    (ty.imports(component.engine()))
        .filter_map(|(name, _)| name.strip_prefix("jetwasm:runtime/"))
        .filter_map(|interface| interface.split_once('@'))
        .map(|(_, version)| version.to_owned())
        .collect()
}

/// Checks that one instance of `component` fits a slot of the instance pool (its linear
/// memories and tables), so a component too large fails here, named, not at every call.
pub fn check_shape(component: &Component) -> anyhow::Result<()> {
    use crate::engine::{MEMORIES_PER_COMPONENT, TABLES_PER_COMPONENT};
    let Some(needs) = component.resources_required() else {
        return Ok(());
    };
    if needs.num_memories > MEMORIES_PER_COMPONENT {
        bail!(
            "has {} linear memories; the host runs components with at most {MEMORIES_PER_COMPONENT}",
            needs.num_memories
        );
    }
    if needs.num_tables > TABLES_PER_COMPONENT {
        bail!(
            "has {} tables; the host runs components with at most {TABLES_PER_COMPONENT}",
            needs.num_tables
        );
    }
    Ok(())
}

/// Checks a compiled component against world `W`: every import must be one the host
/// provides, and the world's exports must be there with the contract's types.
pub fn check<W: World>(linker: &Linker<HostState>, component: &Component) -> anyhow::Result<W> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)?;
    W::from_pre(pre).map_err(anyhow::Error::from)
}

/// Reads `path` (at most [`MAX_COMPONENT_BYTES`]) and compiles it on a blocking thread, or
/// loads it from `cache` when that holds a valid entry for it. The file is read once: its
/// digest keys the cache and names the version.
pub async fn compile(
    engine: &Engine,
    path: &Path,
    cache: Option<&CompileCache>,
) -> anyhow::Result<Compiled> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading component {shown}"))?
        .len();
    if size > MAX_COMPONENT_BYTES {
        bail!("component {shown} is {size} bytes, over the {MAX_COMPONENT_BYTES}-byte cap");
    }
    let (engine, cache, path) = (engine.clone(), cache.cloned(), path.to_owned());
    let started = Instant::now();
    let name = shown.clone();
    let compiling = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let (sha256, head) =
            digest_file(&path).with_context(|| format!("reading component {name}"))?;
        check_is_component(&head).with_context(|| format!("component {name}"))?;
        let read = || read_unchanged(&path, &sha256);
        let (component, source) = match cache {
            Some(cache) => cache.load(&engine, &sha256, read, &name),
            None => {
                read().and_then(|wasm| Ok((engine::compile(&engine, &wasm)?, Source::Compiled)))
            }
        }
        .with_context(|| format!("compiling component {name}"))?;
        Ok((component, source, sha256))
    });
    let (component, source, sha256) = match tokio::time::timeout(COMPILE_TIMEOUT, compiling).await {
        Ok(joined) => joined??,
        Err(_) => bail!("compiling component {shown} took longer than {COMPILE_TIMEOUT:?}"),
    };
    tracing::debug!(component = %shown, ?source, elapsed = ?started.elapsed(), "component ready");
    Ok(Compiled {
        component,
        version: crate::status::version_from(&sha256),
        sha256,
    })
}

/// The SHA-256 of the file at `path`, read in chunks (a component found in the compile cache
/// is never read whole), and its first bytes.
fn digest_file(path: &Path) -> std::io::Result<([u8; 32], Vec<u8>)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let (mut sha256, mut chunk) = (Sha256::new(), vec![0; 256 << 10]);
    let mut head = Vec::new();
    loop {
        match file.read(&mut chunk)? {
            0 => return Ok((sha256.finalize().into(), head)),
            n => {
                if head.len() < 8 {
                    head.extend_from_slice(&chunk[..n.min(8)]);
                }
                sha256.update(&chunk[..n]);
            }
        }
    }
}

/// The bytes of the file at `path`, which must still have the SHA-256 `expected`.
fn read_unchanged(path: &Path, expected: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
    let shown = path.display();
    let wasm = std::fs::read(path).with_context(|| format!("reading component {shown}"))?;
    if Sha256::digest(&wasm).as_slice() != expected {
        bail!("component {shown} changed while it was being loaded; it is loaded again when its new version is complete");
    }
    Ok(wasm)
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
    fn a_file_is_hashed_in_chunks_as_a_whole_and_read_only_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wasm");
        // Larger than one chunk, so the digest spans several reads.
        let bytes: Vec<u8> = (0..(600 << 10)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let (sha256, head) = digest_file(&path).unwrap();
        assert_eq!(sha256.as_slice(), Sha256::digest(&bytes).as_slice());
        assert_eq!(&head[..8], &bytes[..8]);
        assert_eq!(read_unchanged(&path, &sha256).unwrap(), bytes);
        std::fs::write(&path, b"another version").unwrap();
        let changed = read_unchanged(&path, &sha256).unwrap_err().to_string();
        assert!(
            changed.contains("changed while it was being loaded"),
            "{changed}"
        );
    }

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
