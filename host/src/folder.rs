//! Watching the handlers folder while the host runs: any change in it (notify, debounced)
//! makes the host read the folder again once its files have stopped changing, and apply what
//! it finds (see [`crate::deployments`]). A file still being written (a slow copy) is not
//! loaded half way: its size and modification time must hold still for [`SETTLE`] first.
//! `mv` into the folder is atomic and never seen half way at all. Tenants' subfolders are
//! watched too.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use notify::RecursiveMode;
use notify_debouncer_mini::{new_debouncer, DebounceEventResult};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::deployments::Deployments;
use crate::drop_in;

/// Events closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long the folder's files must hold still before they are read.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Starts watching `dir` until `shutdown`, applying each change to `deployments`.
pub fn watch(
    dir: PathBuf,
    config: Arc<Config>,
    deployments: Arc<Deployments>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut debouncer = new_debouncer(DEBOUNCE, move |events: DebounceEventResult| {
        let _ = changed.send(events);
    })
    .context("starting the handlers folder's watcher")?;
    debouncer
        .watcher()
        .watch(&dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching the handlers folder {}", dir.display()))?;
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _debouncer = debouncer;
        loop {
            let events = tokio::select! {
                _ = shutdown.cancelled() => return,
                events = changes.recv() => match events {
                    Some(events) => events,
                    None => return,
                },
            };
            if let Err(errors) = events {
                tracing::warn!(folder = %dir.display(), ?errors, "watching the handlers folder");
            }
            settle(&dir).await;
            while changes.try_recv().is_ok() {}
            match drop_in::scan(&dir, &config) {
                Ok(found) => deployments.apply_folder(found).await,
                Err(e) => {
                    tracing::error!(folder = %dir.display(), error = %format!("{e:#}"), "cannot read the handlers folder; what runs keeps running")
                }
            }
        }
    });
    Ok(())
}

/// Waits until no file in `dir` has changed size or modification time for [`SETTLE`].
async fn settle(dir: &Path) {
    let mut before = snapshot(dir);
    loop {
        tokio::time::sleep(SETTLE).await;
        let now = snapshot(dir);
        if now == before {
            return;
        }
        before = now;
    }
}

/// Every file in `dir` and its subfolders (one level: the tenants') with its size and
/// modification time.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let list = |dir: &Path| -> Vec<(PathBuf, std::fs::Metadata)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        (entries.filter_map(Result::ok))
            .filter_map(|entry| Some((entry.path(), entry.metadata().ok()?)))
            .collect()
    };
    let top = list(dir);
    let below = (top.iter())
        .filter(|(_, meta)| meta.is_dir())
        .flat_map(|(path, _)| list(path));
    let mut files: Vec<_> = (top.iter().cloned().chain(below))
        .map(|(path, meta)| (path, meta.len(), meta.modified().ok()))
        .collect();
    files.sort();
    files
}
