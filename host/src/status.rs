//! What a host runs, for `GET /status` and `jetwasm status`: every handler and publisher with
//! where it came from (the config file or the handlers folder), its version (the component's
//! SHA-256), and whether it runs or was refused, with the reason.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One handler or publisher, running or refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Its tenant.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Its name.
    pub name: String,
    /// `handler`, `publisher` or `http-publisher`; unknown for a drop-in whose manifest could
    /// not be read.
    pub kind: Option<String>,
    /// `config`, `folder` or `registry`.
    pub source: String,
    /// The `.wasm` file, when there is one.
    pub component: Option<String>,
    /// The first 12 hex digits of the component's SHA-256, when it could be read.
    pub version: Option<String>,
    /// `running` or `refused`.
    pub state: String,
    /// Why it was refused.
    pub error: Option<String>,
    /// A handler's calls running now.
    pub in_flight: Option<i64>,
    /// Why the last new version (or the first) could not be deployed; a running version
    /// keeps running.
    #[serde(default)]
    pub last_deploy_error: Option<String>,
    /// The registry revision it runs, for a component from the registry.
    #[serde(default)]
    pub revision: Option<u64>,
}

/// The component's version: the first 12 hex digits of the file's SHA-256.
pub fn version_of(wasm: &Path) -> Option<String> {
    let bytes = std::fs::read(wasm).ok()?;
    Some(version_from(&Sha256::digest(&bytes)))
}

/// The version of a component whose file has the SHA-256 `digest` (see [`version_of`]).
pub fn version_from(digest: &[u8]) -> String {
    digest.iter().take(6).fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// One tenant and what its components use of its quotas on this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantStatus {
    /// Its name.
    pub name: String,
    /// Its handlers and publishers here, by name.
    pub components: Vec<String>,
    /// Calls running now across its handlers.
    pub in_flight: i64,
    /// Its `max_in_flight`, if it has one.
    pub max_in_flight: Option<usize>,
    /// Linear memory its live instances hold, in bytes.
    pub memory: u64,
    /// Its `max_memory` in bytes, if it has one.
    pub max_memory: Option<u64>,
    /// Its `cpu_share`.
    pub cpu_share: u32,
    /// Its `max_handlers`, if it has one.
    pub max_handlers: Option<usize>,
}

fn default_tenant() -> String {
    crate::config::DEFAULT_TENANT.to_owned()
}

/// The body of `GET /status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusBody {
    /// Every tenant with what it uses of its quotas.
    #[serde(default)]
    pub tenants: Vec<TenantStatus>,
    /// Every handler and publisher, running or refused.
    pub components: Vec<ComponentStatus>,
}

/// Fetches `GET /status` from the host listening at `url` (e.g. `http://127.0.0.1:9090`).
pub async fn fetch(url: &str) -> anyhow::Result<Vec<ComponentStatus>> {
    let address = format!("{}/status", url.trim_end_matches('/'));
    let uri: hyper::Uri = address
        .parse()
        .with_context(|| format!("{address:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("{address:?} names no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port} (is the host's listener there?)"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(uri.path())
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{address} answered {status}");
    let body: StatusBody = serde_json::from_slice(&body)
        .with_context(|| format!("{address} did not answer a jetwasm status"))?;
    Ok(body.components)
}

/// `jetwasm status`: one line per component, refused ones with their reason under them.
pub fn table(components: &[ComponentStatus]) -> String {
    let mut out = format!(
        "{:<12} {:<24} {:<15} {:<8} {:<13} {:<8} {}\n",
        "TENANT", "NAME", "KIND", "SOURCE", "VERSION", "STATE", "IN FLIGHT"
    );
    for c in components {
        let dash = || "-".to_owned();
        let _ = writeln!(
            out,
            "{:<12} {:<24} {:<15} {:<8} {:<13} {:<8} {}",
            c.tenant,
            c.name,
            c.kind.clone().unwrap_or_else(dash),
            c.source,
            c.version.clone().unwrap_or_else(dash),
            c.state,
            c.in_flight.map_or_else(dash, |n| n.to_string())
        );
        if let Some(error) = &c.error {
            let _ = writeln!(out, "  {error}");
        } else if let Some(error) = &c.last_deploy_error {
            let _ = writeln!(out, "  last deploy refused: {error}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_every_component_and_why_one_was_refused() {
        let running = ComponentStatus {
            tenant: "default".into(),
            name: "orders".into(),
            kind: Some("handler".into()),
            source: "folder".into(),
            component: Some("handlers.d/orders.wasm".into()),
            version: Some("3f9a1c0b2d4e".into()),
            state: "running".into(),
            error: None,
            in_flight: Some(3),
            last_deploy_error: None,
            revision: None,
        };
        let refused = ComponentStatus {
            tenant: "default".into(),
            name: "lonely".into(),
            kind: None,
            source: "folder".into(),
            component: None,
            version: None,
            state: "refused".into(),
            error: Some("handlers.d/lonely.toml: no component lonely.wasm beside it".into()),
            in_flight: None,
            last_deploy_error: None,
            revision: None,
        };
        let table = table(&[running, refused]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TENANT       NAME"), "{table}");
        assert!(
            lines[1].starts_with("default      orders")
                && lines[1].contains("3f9a1c0b2d4e")
                && lines[1].ends_with(" 3"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("default      lonely") && lines[2].contains("refused"),
            "{table}"
        );
        assert_eq!(
            lines[3],
            "  handlers.d/lonely.toml: no component lonely.wasm beside it"
        );
    }

    #[test]
    fn the_version_is_the_files_sha256_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.wasm");
        std::fs::write(&file, b"abc").unwrap();
        // SHA-256("abc") = ba7816bf8f01cfea...
        assert_eq!(version_of(&file).as_deref(), Some("ba7816bf8f01"));
        assert_eq!(version_of(&dir.path().join("missing.wasm")), None);
    }
}
