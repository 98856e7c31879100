//! `jetwasm dev`: the edit-build-run loop. Builds a project made by `jetwasm new` with its own
//! `./build.sh`, drops the component and its manifest into the handlers folder of a running
//! host (`jetwasm up --handlers-dir DIR`), and does it again whenever the project's sources
//! change, printing the build's error or what the host made of the new version (swapped in,
//! or refused with the reason while the old version keeps running).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use notify::RecursiveMode;
use notify_debouncer_mini::{new_debouncer, DebounceEventResult};
use sha2::{Digest, Sha256};

use crate::status::{self, ComponentStatus};

/// What `jetwasm dev` works on.
#[derive(Debug, Clone)]
pub struct Dev {
    /// The project folder (its `build.sh` builds `NAME.wasm`).
    pub project: PathBuf,
    /// The handler's or publisher's name: the project folder's, unless given.
    pub name: String,
    /// The running host's handlers folder.
    pub handlers_dir: PathBuf,
    /// The running host's listener, for its `/status`.
    pub url: String,
}

/// Folders and files of a project that are build output, not sources.
const NOT_SOURCES: &[&str] = &[
    "target",
    "node_modules",
    "__pycache__",
    "bindings",
    "build",
    "dist",
];

/// How long to wait for the host to take a new version up.
const SWAP_WAIT: Duration = Duration::from_secs(60);

impl Dev {
    /// `project` with the name from its folder, unless `name` is given.
    pub fn new(
        project: &Path,
        name: Option<String>,
        handlers_dir: PathBuf,
        url: String,
    ) -> anyhow::Result<Dev> {
        let project = std::path::absolute(project)?;
        if !project.join("build.sh").is_file() {
            bail!(
                "{} has no build.sh: run `jetwasm dev` on a project made by `jetwasm new`",
                project.display()
            );
        }
        let name = match name {
            Some(name) => name,
            None => (project.file_name())
                .and_then(|n| n.to_str())
                .context("the project folder's name is not UTF-8; pass --name")?
                .to_owned(),
        };
        Ok(Dev {
            project,
            name,
            handlers_dir,
            url,
        })
    }

    /// Builds and deploys now, then again on every change to the sources, until the process
    /// is stopped.
    pub async fn run(&self) -> anyhow::Result<()> {
        let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
        let mut debouncer = new_debouncer(
            Duration::from_millis(300),
            move |events: DebounceEventResult| {
                let _ = changed.send(events.is_ok());
            },
        )
        .context("starting the project's watcher")?;
        (debouncer.watcher())
            .watch(&self.project, RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", self.project.display()))?;
        println!(
            "dev: watching {} (Ctrl-C to stop); deploying {} into {}",
            self.project.display(),
            self.name,
            self.handlers_dir.display()
        );
        let mut built = None;
        loop {
            let sources = sources_fingerprint(&self.project)?;
            if built.as_ref() != Some(&sources) {
                built = Some(sources);
                self.build_and_deploy().await;
            }
            if changes.recv().await.is_none() {
                return Ok(());
            }
            while changes.try_recv().is_ok() {}
        }
    }

    /// One round: build, then copy into the handlers folder and report what the host did.
    async fn build_and_deploy(&self) {
        println!("dev: building {} (./build.sh)", self.name);
        let wasm = self.project.join(format!("{}.wasm", self.name));
        let started = Instant::now();
        let build = tokio::process::Command::new(self.project.join("build.sh"))
            .arg(&wasm)
            .current_dir(&self.project)
            .output()
            .await;
        let build = match build {
            Ok(build) => build,
            Err(e) => {
                println!("dev: cannot run build.sh: {e}");
                return;
            }
        };
        if !build.status.success() {
            let stderr = String::from_utf8_lossy(&build.stderr);
            let stdout = String::from_utf8_lossy(&build.stdout);
            println!("dev: build failed ({}):", build.status);
            for line in tail(&format!("{stdout}{stderr}"), 30) {
                println!("  {line}");
            }
            println!("dev: the running version (if any) keeps running; fix and save to retry");
            return;
        }
        let took = started.elapsed();
        println!(
            "dev: built {} in {:.1}s",
            wasm.display(),
            took.as_secs_f64()
        );
        match self.deploy(&wasm).await {
            Ok(line) => println!("dev: {line}"),
            Err(e) => println!("dev: {e:#}"),
        }
    }

    /// Copies the component (and the project's manifest, if it has one) into the handlers
    /// folder, each written under a hidden name and renamed, so the host never reads half a
    /// file; then waits for the host's status to show the new version or its refusal.
    async fn deploy(&self, wasm: &Path) -> anyhow::Result<String> {
        let version = status::version_of(wasm).context("reading the built component")?;
        let manifest = self.project.join(format!("{}.toml", self.name));
        let target_manifest = self.handlers_dir.join(format!("{}.toml", self.name));
        if !manifest.is_file() && !target_manifest.is_file() {
            bail!(
                "no manifest: write {} (the keys of a [[handler]] or [[publisher]] table; see README.md, \"Drop-in handlers\")",
                manifest.display()
            );
        }
        let before = self.component_status().await.ok().flatten();
        std::fs::create_dir_all(&self.handlers_dir)
            .with_context(|| format!("creating {}", self.handlers_dir.display()))?;
        if manifest.is_file() {
            place(&manifest, &target_manifest)?;
        }
        place(wasm, &self.handlers_dir.join(format!("{}.wasm", self.name)))?;
        let started = Instant::now();
        let old_version = before.as_ref().and_then(|c| c.version.clone());
        let old_error = before.as_ref().and_then(refusal);
        let deadline = started + SWAP_WAIT;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = match self.component_status().await {
                Ok(now) => now,
                Err(e) => {
                    return Ok(format!(
                        "copied {version} into {}; no host answered at {} ({e:#}): is `jetwasm up --handlers-dir {}` running?",
                        self.handlers_dir.display(),
                        self.url,
                        self.handlers_dir.display()
                    ))
                }
            };
            let waited = started.elapsed().as_secs_f64();
            if let Some(now) = now {
                let running = now.state == "running" && now.version.as_deref() == Some(&*version);
                if running {
                    return Ok(match old_version.filter(|old| *old != version) {
                        Some(old) => {
                            format!("{} {old} → {version} running ({waited:.1}s)", self.name)
                        }
                        None => format!("{} {version} running ({waited:.1}s)", self.name),
                    });
                }
                // A refusal new since the copy; the same words as before count once the host
                // has had time to read the files (the same mistake, made again).
                let fresh = |e: &String| Some(e) != old_error.as_ref() || waited > 5.0;
                if let Some(error) = refusal(&now).filter(fresh) {
                    return Ok(format!(
                        "{} {version} refused: {error}\ndev: the running version (if any) keeps running",
                        self.name
                    ));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the host at {} did not take {version} up within {SWAP_WAIT:?}",
                    self.url
                );
            }
        }
    }

    /// This component's entry in the host's status, if it has one.
    async fn component_status(&self) -> anyhow::Result<Option<ComponentStatus>> {
        let components = status::fetch(&self.url).await?;
        Ok(components.into_iter().find(|c| c.name == self.name))
    }
}

/// Why the host refused a version of the component, if it did.
fn refusal(component: &ComponentStatus) -> Option<String> {
    (component.error.clone()).or_else(|| component.last_deploy_error.clone())
}

/// Copies `from` to `to` through a hidden file in `to`'s folder, renamed into place.
fn place(from: &Path, to: &Path) -> anyhow::Result<()> {
    let folder = to.parent().context("a file in a folder")?;
    let file_name = to.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let partial = folder.join(format!(".{file_name}.partial"));
    std::fs::copy(from, &partial)
        .with_context(|| format!("copying {} to {}", from.display(), partial.display()))?;
    std::fs::rename(&partial, to).with_context(|| format!("renaming into {}", to.display()))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// A digest of the project's sources: every file's path and contents, except hidden files,
/// build output folders and `.wasm` files. Building only when it changed ignores the events
/// the build itself causes (unless it rewrites a source with new contents, which then costs
/// one more build).
fn sources_fingerprint(project: &Path) -> anyhow::Result<Vec<u8>> {
    let mut files = Vec::new();
    collect_sources(project, &mut files)?;
    files.sort();
    let mut digest = Sha256::new();
    for file in files {
        digest.update(file.to_string_lossy().as_bytes());
        digest.update(std::fs::read(&file).unwrap_or_default());
    }
    Ok(digest.finalize().to_vec())
}

fn collect_sources(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || NOT_SOURCES.contains(&&*name) || name.ends_with(".wasm") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_sources(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sources_change_the_fingerprint() {
        let project = tempfile::tempdir().unwrap();
        let root = project.path();
        std::fs::write(root.join("app.py"), "print(1)").unwrap();
        let first = sources_fingerprint(root).unwrap();
        for (path, contents) in [
            ("x.wasm", "built"),
            (".app.py.swp", "editor"),
            ("target/debug/out", "cargo"),
            ("__pycache__/app.pyc", "python"),
        ] {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        assert_eq!(sources_fingerprint(root).unwrap(), first, "build output");
        std::fs::write(root.join("app.py"), "print(2)").unwrap();
        assert_ne!(sources_fingerprint(root).unwrap(), first, "an edit");
        std::fs::create_dir(root.join("src")).unwrap();
        std::fs::write(root.join("src/lib.rs"), "").unwrap();
        let with_lib = sources_fingerprint(root).unwrap();
        std::fs::rename(root.join("src/lib.rs"), root.join("src/main.rs")).unwrap();
        assert_ne!(sources_fingerprint(root).unwrap(), with_lib, "a rename");
    }

    #[test]
    fn a_build_error_shows_its_last_lines() {
        let text = (1..=40).map(|i| format!("line {i}\n")).collect::<String>();
        let last = tail(&text, 30);
        assert_eq!((last.len(), last[0], last[29]), (30, "line 11", "line 40"));
        assert_eq!(tail("one", 30), ["one"]);
    }
}
