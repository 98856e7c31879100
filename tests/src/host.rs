//! The `jetwasm` host as a real child process, and the handler components it runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::{free_port, package_bin, workspace_root};

/// A built handler component, e.g. `handler_wasm("orders")` or `handler_wasm("fixture_trap")`.
/// They come from `JETWASM_HANDLERS_DIR` (set by `make test`), else `handlers/target`.
pub fn handler_wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("JETWASM_HANDLERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("handlers/target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: build the components with `make handlers`",
        path.display()
    );
    path
}

/// The text of `deploy/<file>` (a host config), made runnable by the harness: components from
/// where [`handler_wasm`] finds them, `streams` as an absolute path, and the listener as
/// `{http}` for [`Host::start`] to fill in. Everything else is as shipped.
pub fn deploy_config(file: &str) -> String {
    let deploy = workspace_root().join("deploy");
    let text = std::fs::read_to_string(deploy.join(file)).expect("reading the deploy config");
    let components = handler_wasm("orders")
        .parent()
        .expect("components live in a folder")
        .display()
        .to_string();
    let streams = deploy.join("streams.toml").display().to_string();
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = if line.starts_with("http = \"") {
            "http = \"{http}\"".to_owned()
        } else if line.starts_with("streams = ") {
            format!("streams = {streams:?}")
        } else {
            line.replace("../handlers/target/wasm32-wasip2/release", &components)
        };
        lines.push(line);
    }
    lines.join("\n")
}

/// A running `jetwasm run`, killed on drop.
pub struct Host {
    child: Child,
    /// The HTTP listener (metrics, health).
    pub http: SocketAddr,
    log: PathBuf,
    dir: TempDir,
    /// Flags added to `jetwasm run`.
    flags: Vec<String>,
    /// Environment variables set for it.
    env: Vec<(String, String)>,
}

impl Host {
    /// Starts `jetwasm run` against `url` with `config`, in which `{http}` stands for the
    /// listener address the harness picks; returns once `/readyz` answers 200.
    pub async fn start(url: &str, config: &str) -> anyhow::Result<Host> {
        Host::start_with(url, config, &[]).await
    }

    /// Like [`Host::start`], with `flags` added to `jetwasm run` (e.g. `--log-format json`).
    pub async fn start_with(url: &str, config: &str, flags: &[&str]) -> anyhow::Result<Host> {
        Host::start_with_env(url, config, flags, &[]).await
    }

    /// Like [`Host::start_with`], with environment variables `env` set for the host.
    pub async fn start_with_env(
        url: &str,
        config: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Host> {
        let mut host = Host::spawn_with(url, config, flags, env)?;
        host.wait_ready(Duration::from_secs(60)).await?;
        Ok(host)
    }

    /// Starts `jetwasm run` without waiting for it to become ready.
    pub fn spawn(url: &str, config: &str) -> anyhow::Result<Host> {
        Host::spawn_with(url, config, &[], &[])
    }

    fn spawn_with(
        url: &str,
        config: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Host> {
        let dir = tempfile::tempdir()?;
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        if !config.contains("{http}") {
            bail!("the host config needs `http = \"{{http}}\"` under [runtime]");
        }
        std::fs::write(
            dir.path().join("jetwasm.toml"),
            config.replace("{http}", &http.to_string()),
        )?;
        let log = dir.path().join("host.log");
        let flags: Vec<String> = flags.iter().map(|flag| flag.to_string()).collect();
        let env: Vec<(String, String)> = (env.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn_host(&dir, url, &log, &flags, &env)?;
        Ok(Host {
            child,
            http,
            log,
            dir,
            flags,
            env,
        })
    }

    /// Starts the host again with the same config (after [`Host::kill`] or an exit).
    pub async fn restart(&mut self, url: &str) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_host(&self.dir, url, &self.log, &self.flags, &self.env)?;
        self.wait_ready(Duration::from_secs(60)).await
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "jetwasm exited before it was ready ({status}):\n{}",
                    self.log()
                );
            }
            if matches!(http_get(self.http, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("jetwasm not ready after {within:?}:\n{}", self.log())
    }

    /// Waits for the host to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("jetwasm still running after {within:?}:\n{}", self.log())
    }

    /// Stops the host as an orchestrator would (SIGTERM) and waits up to `within` for it to
    /// exit; fails, with the log's tail, unless it exits successfully.
    pub async fn stop_gracefully(&mut self, within: Duration) -> anyhow::Result<()> {
        self.terminate()?;
        let status = self.wait_exit(within).await?;
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::ensure!(status.success(), "exit {status}\n{}", tail.join("\n"));
        Ok(())
    }

    /// Sends SIGTERM, as an orchestrator stopping the host would.
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM")
    }

    /// Sends the signal `name` (`TERM`, `STOP`, `CONT`...) to the host.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Kills the host with SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Everything the host has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text from `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.http, "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// The value of a sample in `/metrics`, e.g.
    /// `metric("jetwasm_messages_total{handler=\"orders\",outcome=\"ack\"}")`: the sum of the
    /// series of that name whose labels include the ones given (so a sample need not name
    /// every label, e.g. `tenant`); 0 when none.
    pub fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        Ok(sample_sum(&self.metrics()?, sample))
    }

    /// Waits until the sample in `/metrics` reaches `at_least`; fails with the log's tail
    /// after `within`.
    pub async fn wait_metric(
        &self,
        sample: &str,
        at_least: f64,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let value = self.metric(sample)?;
            if value >= at_least {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "{sample} is {value}, not {at_least}, after {within:?}\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The host process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host's resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        self.proc_bytes("status", "VmRSS")
    }

    /// A size in bytes from the host's `/proc/PID/FILE`: from `status`, `VmRSS` or its parts
    /// `RssAnon` (heap and anonymous mappings, the instance pool's among them), `RssFile` and
    /// `RssShmem` (memfd-backed memory images, counted once per mapping); from
    /// `smaps_rollup`, `Pss` (each shared page divided among its mappings).
    pub fn proc_bytes(&self, file: &str, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{field} in /proc/PID/{file}"))?;
        Ok(kib * 1024)
    }
}

fn spawn_host(
    dir: &TempDir,
    url: &str,
    log: &std::path::Path,
    flags: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(package_bin("jetwasm")?)
        .args(["run", "--config"])
        .arg(dir.path().join("jetwasm.toml"))
        .args(["--server", url])
        .args(flags)
        .env_remove("NATS_URL")
        .env_remove("JETWASM_LOG_FORMAT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env(
            "RUST_LOG",
            std::env::var("JETWASM_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .context("starting jetwasm")
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    http_request(addr, "GET", path, &[], b"")
}

/// A plain HTTP/1.0 request with `headers` and `body`; returns the status code and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    http_exchange(addr, method, path, headers, body).map(|(status, _, body)| (status, body))
}

/// Like [`http_request`], also returning the response's header block (lowercased).
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("HTTP status line")?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

/// The sum of the series in Prometheus `text` named as in `sample` whose labels include every
/// label `sample` gives.
pub fn sample_sum(text: &str, sample: &str) -> f64 {
    let split = |s: &str| -> (String, Vec<String>) {
        match s.split_once('{') {
            Some((name, labels)) => (
                name.to_owned(),
                (labels.trim_end_matches('}').split(','))
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => (s.to_owned(), Vec::new()),
        }
    };
    let (name, wanted) = split(sample);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, labels) = split(series);
            let matches = series_name == name && wanted.iter().all(|w| labels.contains(w));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
