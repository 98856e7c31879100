//! Compiled components cached on disk, keyed by the component's content hash and the engine's
//! settings, so that a restart or a second host loads a large (Python, JavaScript) component in
//! milliseconds instead of compiling it again.
//!
//! An entry is `<key>.cwasm`: the compiled artifact, then its XXH3-128 checksum. The checksum
//! is checked before wasmtime sees the artifact, so a corrupt entry is detected (not executed)
//! and rebuilt; an entry wasmtime refuses (another wasmtime version or engine setting) is
//! rebuilt too. A valid entry is memory-mapped by wasmtime, not copied: a Python component's
//! entry is ~35 MB, read at every start. (The checksum guards against damage, not against
//! someone who can write the cache folder: they could as well replace the host's binary.) The cache only ever speeds things up: when it cannot be read or
//! written, the component is compiled as if there were none, with a warning.
//!
//! The folder is kept under a size cap: after each write, the least recently used entries
//! (a hit refreshes an entry's modification time) are removed until the rest fit. An entry
//! is written as a `.partial-*` file and renamed into place; one left by a process that died
//! while writing it is removed at the first pruning an hour later.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use crate::engine;

/// Length of the checksum that ends every entry.
const CHECKSUM_LEN: usize = 16;

/// Where a loaded component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Compiled now (and stored, when the cache could be written).
    Compiled,
    /// Read from a valid cache entry.
    Cached,
}

/// A folder of compiled components.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl CompileCache {
    /// A cache in `dir`, created on first write, holding at most `max_bytes` of entries.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        CompileCache {
            dir: dir.into(),
            max_bytes,
        }
    }

    /// `$XDG_CACHE_HOME/jetwasm/compiled`, else `$HOME/.cache/jetwasm/compiled`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
        Some(base.join("jetwasm").join("compiled"))
    }

    /// The folder entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The component whose file has the SHA-256 `wasm_sha256`: from its cache entry when a
    /// valid one exists, else compiled from what `read_wasm` returns and stored. Blocking;
    /// `shown` names the component in warnings.
    pub fn load(
        &self,
        engine: &Engine,
        wasm_sha256: &[u8; 32],
        read_wasm: impl FnOnce() -> anyhow::Result<Vec<u8>>,
        shown: &str,
    ) -> anyhow::Result<(Component, Source)> {
        let entry = self.entry(engine, wasm_sha256);
        match self.read(engine, &entry) {
            Ok(Some(component)) => return Ok((component, Source::Cached)),
            Ok(None) => {}
            Err(why) => tracing::warn!(
                component = shown,
                entry = %entry.display(),
                "compile cache entry rebuilt: {why}"
            ),
        }
        let artifact = engine::precompile(engine, &read_wasm()?)?;
        // Run from the entry written, as a cached start does: its code mapped from the file
        // (shared, paged in as used) rather than a private copy kept resident.
        let stored = match self.write(&entry, &artifact) {
            Ok(()) => self.read(engine, &entry).ok().flatten(),
            Err(why) => {
                tracing::warn!(component = shown, dir = %self.dir.display(), "compile cache not written: {why:#}");
                None
            }
        };
        if let Err(why) = self.evict() {
            tracing::warn!(dir = %self.dir.display(), "compile cache not pruned: {why}");
        }
        let component = match stored {
            Some(component) => component,
            None => engine::load_precompiled(engine, &artifact)?,
        };
        Ok((component, Source::Compiled))
    }

    /// The component whose file has the SHA-256 `wasm_sha256`, from its cache entry; `None`
    /// when there is no valid one. Blocking.
    pub fn cached(&self, engine: &Engine, wasm_sha256: &[u8; 32]) -> Option<Component> {
        self.read(engine, &self.entry(engine, wasm_sha256))
            .ok()
            .flatten()
    }

    /// The entry for the component whose SHA-256 is `wasm_sha256`, compiled by `engine`.
    fn entry(&self, engine: &Engine, wasm_sha256: &[u8; 32]) -> PathBuf {
        let mut settings = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut settings);
        let key = Sha256::new()
            .chain_update(ENTRY_FORMAT)
            .chain_update(wasm_sha256)
            .chain_update(settings.finish().to_le_bytes())
            .chain_update(env!("CARGO_PKG_VERSION"))
            .finalize();
        self.dir.join(format!("{}.cwasm", hex(&key)))
    }

    /// The entry's component; `None` when there is no entry, an error when it is unusable.
    fn read(&self, engine: &Engine, entry: &Path) -> Result<Option<Component>, String> {
        let file = match std::fs::File::open(entry) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        #[allow(unsafe_code)]
        // SAFETY: entries are only ever replaced by a rename or removed, never changed in
        // place, so the mapped file keeps its contents while the map lives (this function).
        let bytes =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("cannot map it: {e}"))?;
        let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err("it is truncated".to_owned());
        };
        let (artifact, checksum) = bytes.split_at(split);
        if checksum != checksum_of(artifact) {
            return Err("it is corrupt (checksum mismatch)".to_owned());
        }
        drop(bytes);
        // Mark it used, for eviction; a failure here only makes it look older.
        let _ = std::fs::File::options()
            .append(true)
            .open(entry)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        #[allow(unsafe_code)]
        // SAFETY: the file is what `engine::precompile` made for this engine configuration
        // (the checksum above rules out damage; wasmtime ignores the bytes after its artifact
        // and checks that the artifact matches this engine's version and settings), and it
        // is never changed in place, only replaced by a rename (by another host storing the
        // same component) or removed, which leave wasmtime's mapping as it was.
        unsafe { Component::deserialize_file(engine, entry) }
            .map(Some)
            .map_err(|e| format!("wasmtime refused it: {e}"))
    }

    /// Stores `artifact` at `entry`, atomically (a reader sees the old entry or the new one).
    fn write(&self, entry: &Path, artifact: &[u8]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut file = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .tempfile_in(&self.dir)?;
        file.write_all(artifact)?;
        file.write_all(&checksum_of(artifact))?;
        file.as_file().sync_all()?;
        file.persist(entry)?;
        Ok(())
    }
}

/// Part of every key: a new entry layout gets new keys instead of refusing old entries.
const ENTRY_FORMAT: &[u8] = b"xxh3-128-trailer";

/// Entries being written start with this; renamed into place when complete.
const PARTIAL_PREFIX: &str = ".partial-";
/// A partial entry this old was left by a process that died while writing it.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

impl CompileCache {
    /// Removes the least recently used entries until the rest fit in `max_bytes`, and partial
    /// entries abandoned by a process that died while writing them.
    fn evict(&self) -> std::io::Result<()> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                entries.push((meta.modified()?, meta.len(), path));
            } else if entry
                .file_name()
                .to_string_lossy()
                .starts_with(PARTIAL_PREFIX)
                && meta.modified()?.elapsed().unwrap_or_default() > ABANDONED_AFTER
            {
                std::fs::remove_file(&path)?;
            }
        }
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

/// The checksum that ends an entry holding `artifact`.
fn checksum_of(artifact: &[u8]) -> [u8; CHECKSUM_LEN] {
    xxhash_rust::xxh3::xxh3_128(artifact).to_le_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny component: one exported function returning 42.
    const WAT: &str = r#"(component
        (core module $m (func (export "f") (result i32) i32.const 42))
        (core instance $i (instantiate $m))
        (func (export "f") (result u32) (canon lift (core func $i "f"))))"#;

    impl CompileCache {
        /// `load`, hashing `wasm` itself.
        fn load_wasm(
            &self,
            engine: &Engine,
            wasm: &[u8],
            shown: &str,
        ) -> anyhow::Result<(Component, Source)> {
            self.load(
                engine,
                &Sha256::digest(wasm).into(),
                || Ok(wasm.to_vec()),
                shown,
            )
        }
    }

    /// A cache in `dir` of the default size.
    fn cache_in(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache::new(dir, crate::config::DEFAULT_COMPILE_CACHE_MAX.as_u64())
    }

    fn engine() -> Engine {
        Engine::default()
    }

    fn call_f(engine: &Engine, component: &Component) -> u32 {
        let mut store = wasmtime::Store::new(engine, ());
        let linker = wasmtime::component::Linker::new(engine);
        let instance = linker.instantiate(&mut store, component).unwrap();
        let f = instance
            .get_typed_func::<(), (u32,)>(&mut store, "f")
            .unwrap();
        f.call(&mut store, ()).unwrap().0
    }

    fn only_entry(dir: &Path) -> PathBuf {
        let entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.into_iter().next().unwrap()
    }

    #[test]
    fn compiles_once_then_loads_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path().join("compiled"));
        let (engine, wasm) = (engine(), wat::parse_str(WAT).unwrap());
        let (first, source) = cache.load_wasm(&engine, &wasm, "f").unwrap();
        assert_eq!(source, Source::Compiled);
        assert_eq!(call_f(&engine, &first), 42);
        let (second, source) = cache.load_wasm(&engine, &wasm, "f").unwrap();
        assert_eq!(source, Source::Cached);
        assert_eq!(call_f(&engine, &second), 42);
        only_entry(cache.dir());
    }

    #[test]
    fn a_cached_component_is_loaded_again_without_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let (engine, wasm) = (engine(), wat::parse_str(WAT).unwrap());
        let sha256: [u8; 32] = Sha256::digest(&wasm).into();
        assert!(
            cache.cached(&engine, &sha256).is_none(),
            "nothing stored yet"
        );
        cache.load_wasm(&engine, &wasm, "f").unwrap();
        let again = cache.cached(&engine, &sha256).expect("its entry");
        assert_eq!(call_f(&engine, &again), 42);
        assert!(
            cache.cached(&engine, &[0; 32]).is_none(),
            "another component's key"
        );
    }

    #[test]
    fn a_corrupt_or_truncated_entry_is_detected_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let (engine, wasm) = (engine(), wat::parse_str(WAT).unwrap());
        cache.load_wasm(&engine, &wasm, "f").unwrap();
        let entry = only_entry(dir.path());
        let mut bytes = std::fs::read(&entry).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        let (component, source) = cache.load_wasm(&engine, &wasm, "f").unwrap();
        assert_eq!(source, Source::Compiled, "a corrupt entry must not be used");
        assert_eq!(call_f(&engine, &component), 42);
        assert_eq!(
            cache.load_wasm(&engine, &wasm, "f").unwrap().1,
            Source::Cached
        );

        // Damaged in place only once nothing runs from it: a component runs from its entry's
        // mapping (the cache itself only ever renames or removes entries).
        drop(component);
        std::fs::write(&entry, b"short").unwrap();
        assert_eq!(
            cache.load_wasm(&engine, &wasm, "f").unwrap().1,
            Source::Compiled
        );
    }

    #[test]
    fn an_entry_from_another_engine_setting_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let wasm = wat::parse_str(WAT).unwrap();
        let (engine, other) = (engine(), {
            let mut config = wasmtime::Config::new();
            config.epoch_interruption(true);
            Engine::new(&config).unwrap()
        });
        cache.load_wasm(&engine, &wasm, "f").unwrap();
        // Another engine's settings give another key: both live side by side.
        assert_eq!(
            cache.load_wasm(&other, &wasm, "f").unwrap().1,
            Source::Compiled
        );
        assert_eq!(
            cache.load_wasm(&other, &wasm, "f").unwrap().1,
            Source::Cached
        );
        assert_eq!(
            cache.load_wasm(&engine, &wasm, "f").unwrap().1,
            Source::Cached
        );

        // A stale entry under the right key (say, written by another wasmtime) is refused by
        // wasmtime, then rebuilt.
        let entry = cache.entry(&engine, &Sha256::digest(&wasm).into());
        let foreign = cache.entry(&other, &Sha256::digest(&wasm).into());
        std::fs::copy(&foreign, &entry).unwrap();
        let (component, source) = cache.load_wasm(&engine, &wasm, "f").unwrap();
        assert_eq!(source, Source::Compiled);
        assert_eq!(call_f(&engine, &component), 42);
    }

    #[test]
    fn the_least_recently_used_entries_go_when_the_cache_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let wasm = |n: i32| {
            wat::parse_str(WAT.replace("i32.const 42", &format!("i32.const {n}"))).unwrap()
        };
        let unbounded = cache_in(dir.path());
        unbounded.load_wasm(&engine, &wasm(1), "1").unwrap();
        let one_entry = std::fs::metadata(only_entry(dir.path())).unwrap().len();
        // Room for two entries: a third evicts the one used longest ago.
        let cache = CompileCache::new(dir.path(), one_entry * 2 + one_entry / 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.load_wasm(&engine, &wasm(2), "2").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            cache.load_wasm(&engine, &wasm(1), "1").unwrap().1,
            Source::Cached
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        cache.load_wasm(&engine, &wasm(3), "3").unwrap();
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, 2);
        assert_eq!(
            cache.load_wasm(&engine, &wasm(1), "1").unwrap().1,
            Source::Cached,
            "used recently"
        );
        assert_eq!(
            cache.load_wasm(&engine, &wasm(2), "2").unwrap().1,
            Source::Compiled,
            "evicted"
        );
    }

    #[test]
    fn partial_entries_left_by_a_crash_are_removed_once_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let partial = |name: &str, age: std::time::Duration| {
            let path = dir.path().join(format!("{PARTIAL_PREFIX}{name}"));
            let file = std::fs::File::create(&path).unwrap();
            file.set_modified(std::time::SystemTime::now() - age)
                .unwrap();
            path
        };
        let abandoned = partial("crashed", ABANDONED_AFTER * 2);
        let in_progress = partial("writing", std::time::Duration::from_secs(1));
        let wasm = wat::parse_str(WAT).unwrap();
        cache_in(dir.path())
            .load_wasm(&engine(), &wasm, "f")
            .unwrap();
        assert!(!abandoned.exists(), "an abandoned partial entry is removed");
        assert!(
            in_progress.exists(),
            "one another process may be writing stays"
        );
    }

    #[test]
    fn an_unwritable_cache_still_compiles() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let cache = cache_in(file.path().join("not-a-dir"));
        let (engine, wasm) = (engine(), wat::parse_str(WAT).unwrap());
        let (component, source) = cache.load_wasm(&engine, &wasm, "f").unwrap();
        assert_eq!(source, Source::Compiled);
        assert_eq!(call_f(&engine, &component), 42);
    }
}
