//! An idle handler's memory given back to the system.
//!
//! Under load a handler's calls spread over many slots of the instance pool, and wasmtime
//! keeps every slot a component used warm for that component's next instance: its memory
//! image mapped and up to `[runtime] keep_resident` of its linear memory resident. That makes
//! fresh sandboxes fast (without it they cost twice as much), but wasmtime releases a warm
//! slot only when the component that used it is dropped. So once a handler has made
//! instances, keeps none warm and no call of it ended for `[runtime] warm_idle`, its component
//! is loaded again from the compile cache (memory-mapped: milliseconds) and swapped in; the
//! old copy goes with the last call holding it, and its slots' memory with it. The next
//! message instantiates in a cold slot: a few page faults, once.

use std::sync::Arc;

use wasmtime::component::Linker;

use crate::compile_cache::CompileCache;
use crate::dispatch::Entry;
use crate::sandbox::HostState;

/// How to load a handler's component again: from its compile cache entry.
#[derive(Clone)]
pub struct Reload {
    linker: Arc<Linker<HostState>>,
    cache: CompileCache,
    sha256: [u8; 32],
}

impl Reload {
    /// Loads the component whose file has the SHA-256 `sha256` from `cache`, checked against
    /// `linker`.
    pub fn new(linker: &Arc<Linker<HostState>>, cache: &CompileCache, sha256: [u8; 32]) -> Reload {
        Reload {
            linker: Arc::clone(linker),
            cache: cache.clone(),
            sha256,
        }
    }

    /// `entry`'s component loaded again, for the same world; `None` when its cache entry is
    /// gone (it is then kept as it is). Blocking.
    pub fn entry_like(&self, entry: &Entry) -> anyhow::Result<Option<Entry>> {
        match self.cache.cached(entry.engine(), &self.sha256) {
            Some(component) => Ok(Some(entry.like(&component, &self.linker)?)),
            None => Ok(None),
        }
    }
}
