//! JetStream as the fleet's registry of drop-ins. Component bytes live in an Object Store
//! bucket ([`COMPONENTS`]), each object named by its SHA-256; manifests live in a KV bucket
//! ([`HANDLERS`]), one key per handler or publisher, whose value names the component's digest.
//! The key's history is the deployment history: a rollback puts an earlier value again.
//!
//! `jetwasm deploy / handlers / rollback / undeploy` write and read it; a host started with
//! `--registry` watches it and runs what it says, through the same add / replace / remove /
//! refuse rules as the handlers folder. A host loads an object only if its SHA-256 matches
//! the manifest's digest. A tenant's deployments are keyed `TENANT.NAME` (see
//! [`crate::drop_in::key`]) and run as that tenant; a tenant's deploy credentials can be
//! limited to its keys with subject permissions on `$KV.jetwasm-handlers.TENANT.>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_TENANT};
use crate::deployments::{Deployments, Source};
use crate::drop_in::Found;

/// The KV bucket of manifests, one key per name.
pub const HANDLERS: &str = "jetwasm-handlers";
/// The Object Store bucket of component bytes, by SHA-256.
pub const COMPONENTS: &str = "jetwasm-components";
/// Deployments kept per name (the most JetStream keeps per key).
const HISTORY: i64 = 64;

/// One deployment: what a key of [`HANDLERS`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// The component's SHA-256, hex: its object's name in [`COMPONENTS`].
    pub digest: String,
    /// The manifest, as written (the keys of a handler's folder manifest).
    pub manifest: String,
}

/// One name's current deployment, for `jetwasm handlers`.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The handler's or publisher's name (the key).
    pub name: String,
    /// What is deployed.
    pub deployment: Deployment,
    /// The key's revision.
    pub revision: u64,
    /// When it was deployed.
    pub when: String,
}

/// The two buckets, made if missing.
pub async fn buckets(
    js: &jetstream::Context,
) -> anyhow::Result<(kv::Store, object_store::ObjectStore)> {
    let handlers = match js.get_key_value(HANDLERS).await {
        Ok(store) => store,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: HANDLERS.to_owned(),
                description: "jetwasm: deployed handlers and publishers (manifest + digest)"
                    .to_owned(),
                history: HISTORY,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the KV bucket {HANDLERS}"))?,
    };
    let components = match js.get_object_store(COMPONENTS).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: COMPONENTS.to_owned(),
                description: Some("jetwasm: component bytes by SHA-256".to_owned()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the object store {COMPONENTS}"))?,
    };
    Ok((handlers, components))
}

/// The SHA-256 of `bytes`, hex.
pub fn digest(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Uploads `component` (if the store does not hold it yet) and puts `name`'s manifest with
/// its digest; returns the new revision.
pub async fn deploy(
    js: &jetstream::Context,
    name: &str,
    component: &[u8],
    manifest: &str,
) -> anyhow::Result<u64> {
    let (handlers, components) = buckets(js).await?;
    let digest = digest(component);
    if components.info(&digest).await.is_err() {
        let mut reader = component;
        components
            .put(digest.as_str(), &mut reader)
            .await
            .with_context(|| format!("uploading the component to {COMPONENTS}"))?;
    }
    put(
        &handlers,
        name,
        &Deployment {
            digest,
            manifest: manifest.to_owned(),
        },
    )
    .await
}

async fn put(handlers: &kv::Store, name: &str, deployment: &Deployment) -> anyhow::Result<u64> {
    let value = serde_json::to_vec(deployment)?;
    handlers
        .put(name, value.into())
        .await
        .with_context(|| format!("putting {name} in {HANDLERS}"))
}

/// What is deployed now, by name.
pub async fn list(js: &jetstream::Context) -> anyhow::Result<Vec<Deployed>> {
    let (handlers, _) = buckets(js).await?;
    let mut keys: Vec<String> = handlers
        .keys()
        .await?
        .filter_map(|k| async { k.ok() })
        .collect()
        .await;
    keys.sort();
    let mut deployed = Vec::new();
    for name in keys {
        if let Some(entry) = handlers.entry(name.clone()).await? {
            if entry.operation == kv::Operation::Put {
                deployed.push(Deployed {
                    deployment: serde_json::from_slice(&entry.value)
                        .with_context(|| format!("{HANDLERS} {name}: not a jetwasm deployment"))?,
                    name,
                    revision: entry.revision,
                    when: entry.created.to_string(),
                });
            }
        }
    }
    Ok(deployed)
}

/// Puts `name`'s deployment at revision `to` (or the one before the current) again; returns
/// the new revision.
pub async fn rollback(js: &jetstream::Context, name: &str, to: Option<u64>) -> anyhow::Result<u64> {
    let (handlers, _) = buckets(js).await?;
    let mut history = handlers
        .history(name)
        .await
        .with_context(|| format!("reading {name}'s history"))?;
    let mut puts = Vec::new();
    while let Some(entry) = history.next().await {
        let entry = entry?;
        if entry.operation == kv::Operation::Put {
            puts.push(entry);
        }
    }
    let current = puts.last().map(|e| e.revision);
    let target = match to {
        Some(revision) => puts
            .iter()
            .find(|e| e.revision == revision)
            .with_context(|| {
                let kept: Vec<String> = puts.iter().map(|e| e.revision.to_string()).collect();
                format!(
                    "{name} has no revision {revision} (kept: {})",
                    kept.join(", ")
                )
            })?,
        None => match puts.len() {
            0 => bail!("{name} was never deployed"),
            1 => bail!(
                "{name} has only one deployment (revision {}); nothing to roll back to",
                puts[0].revision
            ),
            n => &puts[n - 2],
        },
    };
    if Some(target.revision) == current {
        bail!("{name} already runs revision {}", target.revision);
    }
    let deployment: Deployment = serde_json::from_slice(&target.value)?;
    put(&handlers, name, &deployment).await
}

/// Removes `name` from the registry (its history stays): hosts stop running it.
pub async fn undeploy(js: &jetstream::Context, name: &str) -> anyhow::Result<()> {
    let (handlers, _) = buckets(js).await?;
    if handlers
        .entry(name)
        .await?
        .is_none_or(|e| e.operation != kv::Operation::Put)
    {
        bail!("{name} is not deployed");
    }
    handlers
        .delete(name)
        .await
        .with_context(|| format!("deleting {name} from {HANDLERS}"))
}

/// Applies what the registry holds now to `deployments` (a host started late catches up),
/// then keeps applying every change until `shutdown`. Components are kept in `dir`, by
/// digest.
pub async fn watch(
    js: &jetstream::Context,
    config: Arc<Config>,
    deployments: Arc<Deployments>,
    dir: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (handlers, components) = buckets(js).await?;
    let last = handlers
        .status()
        .await
        .context("reading the registry")?
        .info
        .state
        .last_sequence;
    let names: Vec<String> = handlers
        .keys()
        .await?
        .filter_map(|k| async { k.ok() })
        .collect()
        .await;
    for name in names {
        if let Some(entry) = handlers.entry(name).await? {
            apply(&entry, &components, &config, &deployments, &dir).await;
        }
    }
    let mut changes = handlers
        .watch_all_from_revision(last + 1)
        .await
        .context("watching the registry")?;
    tokio::spawn(async move {
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return,
                entry = changes.next() => entry,
            };
            match entry {
                Some(Ok(entry)) => apply(&entry, &components, &config, &deployments, &dir).await,
                Some(Err(e)) => tracing::warn!(error = %e, "watching the registry"),
                None => {
                    tracing::error!(
                        "the registry watch ended; registry changes are no longer applied"
                    );
                    return;
                }
            }
        }
    });
    Ok(())
}

/// Applies one registry entry: a deployment (added or replacing), or a removal.
async fn apply(
    entry: &kv::Entry,
    components: &object_store::ObjectStore,
    config: &Config,
    deployments: &Deployments,
    dir: &Path,
) {
    match entry.operation {
        kv::Operation::Put => {
            let found = fetch(components, config, dir, entry).await;
            deployments.apply(found, Source::Registry).await;
        }
        kv::Operation::Delete | kv::Operation::Purge => {
            deployments.remove_from(&entry.key, Source::Registry);
        }
    }
}

/// The drop-in a registry entry names: its manifest resolved, its component fetched and its
/// digest checked, or why it cannot run.
async fn fetch(
    components: &object_store::ObjectStore,
    config: &Config,
    dir: &Path,
    entry: &kv::Entry,
) -> Found {
    let name = entry.key.clone();
    let (tenant, bare) = tenant_and_name(&name);
    let fingerprint = Some(format!("{}:{}", entry.revision, digest(&entry.value)));
    let drop_in = async {
        if tenant == DEFAULT_TENANT && bare != name {
            return Err(format!(
                "{name}: the host's own handlers are keyed by their name alone, without \"{DEFAULT_TENANT}.\""
            ));
        }
        let deployment: Deployment = serde_json::from_slice(&entry.value).map_err(|e| {
            format!(
                "{HANDLERS} {name} revision {}: not a jetwasm deployment: {e}",
                entry.revision
            )
        })?;
        let wasm = dir.join(format!("{}.wasm", deployment.digest));
        if !wasm.exists() {
            let bytes = read_object(components, &deployment.digest)
                .await
                .map_err(|e| format!("{name}: component {}: {e:#}", deployment.digest))?;
            let actual = digest(&bytes);
            if actual != deployment.digest {
                return Err(format!(
                    "{name}: the component's SHA-256 is {actual}, not the manifest's {}: refused",
                    deployment.digest
                ));
            }
            let partial = dir.join(format!(".{}.partial", deployment.digest));
            std::fs::write(&partial, &bytes)
                .and_then(|()| std::fs::rename(&partial, &wasm))
                .map_err(|e| format!("{name}: keeping the component in {}: {e}", dir.display()))?;
        }
        config
            .manifest(bare, tenant, &wasm, &deployment.manifest)
            .map_err(|problems| {
                let at = format!("{HANDLERS} {name} revision {}", entry.revision);
                let lines: Vec<String> = problems.iter().map(|p| format!("{at}: {p}")).collect();
                lines.join("; ")
            })
    }
    .await;
    Found {
        tenant: tenant.to_owned(),
        name,
        drop_in,
        complete: true,
        fingerprint,
        revision: Some(entry.revision),
    }
}

/// The tenant and the name a registry key holds: `TENANT.NAME`, or `NAME` for the host's own.
pub fn tenant_and_name(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or((DEFAULT_TENANT, key))
}

async fn read_object(
    components: &object_store::ObjectStore,
    digest: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut object = components.get(digest).await.context("fetching it")?;
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.context("reading it")?;
    Ok(bytes)
}
