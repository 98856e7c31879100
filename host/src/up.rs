//! `jetwasm up`: the embedded default. Without a server URL it starts a local nats-server with
//! JetStream as a child process (data under a local folder), runs the host against it, and
//! stops the server when the host stops. With a URL it is `jetwasm run`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// A nats-server child process, killed when dropped.
pub struct LocalServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

/// Where to find nats-server: `explicit`, else `NATS_SERVER_BIN`, else `.tools/venv/bin/`
/// (what `make tools` installs), else `PATH`.
pub fn find_nats_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates = explicit
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from))
        .chain([PathBuf::from(".tools/venv/bin/nats-server")])
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("nats-server"))
                .collect::<Vec<_>>(),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "nats-server not found (checked --nats-server, NATS_SERVER_BIN, .tools/venv/bin and PATH): \
         install it with `make tools`, or give a server with --server"
    )
}

impl LocalServer {
    /// Starts nats-server with JetStream on 127.0.0.1:`port`, storing under `data`, and waits
    /// until it accepts connections. Its log goes to `data/nats-server.log`.
    pub async fn start(bin: &Path, data: &Path, port: u16) -> anyhow::Result<LocalServer> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let log_path = data.join("nats-server.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(data.join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                bail!("nats-server exited ({status}):\n{log}");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                let url = format!("nats://127.0.0.1:{port}");
                tracing::info!(%url, data = %data.display(), "started a local nats-server with JetStream");
                return Ok(LocalServer { child, url });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "nats-server did not accept connections on port {port} within 10s (log: {})",
            log_path.display()
        )
    }

    /// Stops the server and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        tracing::info!("stopped the local nats-server");
        Ok(())
    }
}
