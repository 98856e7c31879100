//! Real nats-server processes: a single JetStream server and a 3-node cluster.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::{free_port, nats_server_bin, workspace_root};

/// One running nats-server process, killed on drop.
pub struct NatsServer {
    child: Child,
    args: Vec<String>,
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

    /// Starts a single JetStream server configured by the file `conf` (accounts, users), on a
    /// free port with its own temporary store; waits until JetStream answers a client that
    /// gives no credentials (the config's `no_auth_user`).
    pub async fn start_with_config(conf: &std::path::Path) -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let (port, monitor_port) = (free_port(), free_port());
        let args = [
            "-c".to_owned(),
            conf.display().to_string(),
            "-js".to_owned(),
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-m".to_owned(),
            monitor_port.to_string(),
            "-sd".to_owned(),
            dir.path().join("store").display().to_string(),
        ];
        let log = dir.path().join("nats.log");
        let mut server = NatsServer::spawn(&args, port, monitor_port, log)?;
        server._dir = Some(dir);
        server.wait_for_jetstream(Duration::from_secs(15)).await?;
        Ok(server)
    }

    /// A client connected as `user` with `password`.
    pub async fn client_as(
        &self,
        user: &str,
        password: &str,
    ) -> anyhow::Result<async_nats::Client> {
        let options =
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into());
        Ok(options.connect(&self.url).await?)
    }

    fn spawn(
        args: &[String],
        port: u16,
        monitor_port: u16,
        log: PathBuf,
    ) -> anyhow::Result<NatsServer> {
        Ok(NatsServer {
            child: spawn_server(args, &log)?,
            args: args.to_vec(),
            url: format!("nats://127.0.0.1:{port}"),
            monitor_port,
            log,
            _dir: None,
        })
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store, as a crash
    /// and restart would; waits until JetStream answers again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        self.child = spawn_server(&self.args, &self.log)?;
        self.wait_for_jetstream(Duration::from_secs(15)).await
    }

    /// A client connected to this server.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::connect(&self.url).await?)
    }

    /// A JetStream context on this server.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the server again after [`NatsServer::kill`], on the same port and store; waits
    /// until JetStream answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.child = spawn_server(&self.args, &self.log)?;
        self.wait_for_jetstream(Duration::from_secs(15)).await
    }

    /// The node's `server_name` as JetStream reports it (`n1`..`n3` in a [`Cluster`]).
    pub fn name(&self) -> Option<String> {
        let conf = self.args.iter().skip_while(|a| *a != "-c").nth(1)?;
        let text = std::fs::read_to_string(conf).ok()?;
        let line = text.lines().find(|l| l.starts_with("server_name:"))?;
        Some(line.trim_start_matches("server_name:").trim().to_owned())
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

fn spawn_server(args: &[String], log: &std::path::Path) -> anyhow::Result<Child> {
    let bin = nats_server_bin()?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(&bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
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
