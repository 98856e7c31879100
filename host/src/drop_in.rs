//! The handlers folder (`[runtime] handlers_dir`, `--handlers-dir`): a handler or publisher is
//! `NAME.wasm` beside its manifest `NAME.toml` (the keys of a `[[handler]]` or, with
//! `kind = "publisher"`, a `[[publisher]]` table, minus `name` and `component`: see
//! [`Config::manifest`]). A tenant's drop-ins live in its own subfolder, `TENANT/NAME.wasm`
//! beside `TENANT/NAME.toml`, and run as that tenant; the folder a drop-in is in is the only
//! way to give it a tenant. The folder is read at start and whenever it changes (see the
//! `folder` module); a drop-in that cannot be used is reported, naming the file and the
//! problem, and skipped: it never stops the host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{Config, DropIn, DEFAULT_TENANT};

/// What names a drop-in on a host, across the config, the folder and the registry: `NAME`
/// for the host's own, `TENANT.NAME` for a tenant's (its registry key too).
pub fn key(tenant: &str, name: &str) -> String {
    if tenant == DEFAULT_TENANT {
        name.to_owned()
    } else {
        format!("{tenant}.{name}")
    }
}

/// One drop-in found in the folder or the registry: resolved, or why it cannot be used.
#[derive(Debug)]
pub struct Found {
    /// Its [`key`]: the files' stem, after its tenant's name and a dot for a tenant's.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// The handler or publisher, or the problems, one line each, naming the file.
    pub drop_in: Result<DropIn, String>,
    /// Whether both its files are there: one gone means the drop-in is removed.
    pub complete: bool,
    /// The registry revision it comes from (`None` for a file).
    pub revision: Option<u64>,
    /// The SHA-256 of its files' contents as read, so that an unchanged drop-in is not loaded
    /// again; `None` when one could not be read.
    pub fingerprint: Option<String>,
}

/// The `.wasm` and `.toml` files of one name.
#[derive(Default)]
struct Pair {
    wasm: Option<PathBuf>,
    manifest: Option<PathBuf>,
}

/// Every drop-in in `dir` and in its tenants' subfolders, by name. Creates the folder if it
/// does not exist yet; fails only when it cannot be read. Files other than `.wasm` and
/// `.toml`, and hidden ones (an editor's or a copy's temporary files), are ignored; a
/// subfolder that names no declared tenant is reported.
pub fn scan(dir: &Path, config: &Config) -> anyhow::Result<Vec<Found>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the handlers folder {}", dir.display()))?;
    let mut found = scan_one(dir, DEFAULT_TENANT, config)?;
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the handlers folder {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(folder) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !path.is_dir() || folder.starts_with('.') {
            continue;
        }
        if config.tenants.iter().any(|t| t.name == folder) {
            found.extend(scan_one(&path, folder, config)?);
        } else {
            let declared: Vec<&str> = config.tenants.iter().map(|t| t.name.as_str()).collect();
            found.push(Found {
                name: format!("{folder}/"),
                tenant: DEFAULT_TENANT.to_owned(),
                drop_in: Err(format!(
                    "{}: no tenant {folder} is declared (declared: {}): its drop-ins do not run",
                    path.display(),
                    if declared.is_empty() {
                        "none".to_owned()
                    } else {
                        declared.join(", ")
                    }
                )),
                complete: true,
                fingerprint: Some(String::new()),
                revision: None,
            });
        }
    }
    Ok(found)
}

/// The drop-ins of `tenant` in `dir` (not its subfolders).
fn scan_one(dir: &Path, tenant: &str, config: &Config) -> anyhow::Result<Vec<Found>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading the handlers folder {}", dir.display()))?;
    let mut pairs: BTreeMap<String, Pair> = BTreeMap::new();
    for entry in entries {
        let path = entry?.path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        let stem = stem.to_string_lossy().into_owned();
        if stem.starts_with('.') || !path.is_file() {
            continue;
        }
        let pair = pairs.entry(stem).or_default();
        match ext.to_str() {
            Some("wasm") => pair.wasm = Some(path),
            Some("toml") => pair.manifest = Some(path),
            _ => {}
        }
    }
    let found = pairs.into_iter().filter_map(|(name, pair)| {
        let pair_files: Vec<PathBuf> = pair.wasm.iter().chain(&pair.manifest).cloned().collect();
        let complete = pair_files.len() == 2;
        let drop_in = match (pair.wasm, pair.manifest) {
            (Some(wasm), Some(manifest)) => resolve(&name, tenant, &wasm, &manifest, config),
            (Some(wasm), None) => Err(format!(
                "{}: no manifest {name}.toml beside it (say which stream and consumer it handles)",
                wasm.display()
            )),
            (None, Some(manifest)) => Err(format!(
                "{}: no component {name}.wasm beside it",
                manifest.display()
            )),
            (None, None) => return None,
        };
        let fingerprint = fingerprint(&pair_files);
        Some(Found {
            name: key(tenant, &name),
            tenant: tenant.to_owned(),
            drop_in,
            complete,
            fingerprint,
            revision: None,
        })
    });
    Ok(found.collect())
}

/// The drop-in `name` of `tenant` from its manifest, or every problem, naming the manifest.
fn resolve(
    name: &str,
    tenant: &str,
    wasm: &Path,
    manifest: &Path,
    config: &Config,
) -> Result<DropIn, String> {
    let at = manifest.display();
    let text = std::fs::read_to_string(manifest).map_err(|e| format!("{at}: {e}"))?;
    config
        .manifest(name, tenant, wasm, &text)
        .map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(|p| format!("{at}: {p}")).collect();
            lines.join("; ")
        })
}

/// The SHA-256 of `files`' contents, in order, with their names.
fn fingerprint(files: &[PathBuf]) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.as_os_str().as_encoded_bytes());
        hash.update(std::fs::read(file).ok()?);
    }
    Some(format!("{:x}", hash.finalize()))
}
