//! The fleet commands: `jetwasm deploy`, `handlers`, `rollback` and `undeploy`, which write
//! and read the [`registry`] that hosts run with `--registry` follow.

use std::path::Path;

use anyhow::{bail, Context as _};
use stream_init::connect::NatsArgs;

use crate::config::{Config, DropIn, Trigger, DEFAULT_TENANT};
use crate::publish::Connection;
use crate::{check, drop_in, registry, tenant};

/// Checks `component` and its manifest here (the manifest's keys, and that the component
/// fits the world its kind needs), then deploys them under `name` (the component file's
/// stem unless given), as `tenant`'s when given (key `TENANT.NAME`).
pub async fn deploy(
    component: &Path,
    manifest: Option<&Path>,
    name: Option<&str>,
    tenant: Option<&str>,
    nats: &NatsArgs,
) -> anyhow::Result<()> {
    let stem = component.file_stem().and_then(|s| s.to_str());
    let name = name
        .or(stem)
        .context("the component's file name is not a usable name; pass --name")?;
    if name.contains('.') {
        bail!(
            "the name {name:?} has a '.': a tenant's handlers are keyed TENANT.NAME; pass \
             --tenant and a name without dots"
        );
    }
    let key = drop_in::key(tenant.unwrap_or(DEFAULT_TENANT), name);
    let manifest_path = match manifest {
        Some(path) => path.to_owned(),
        None => component.with_extension("toml"),
    };
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "reading the manifest {} (or pass --manifest)",
            manifest_path.display()
        )
    })?;
    let defaults = Config::parse("[runtime]\nregistry = true\n", Path::new("."))
        .map_err(|problems| anyhow::anyhow!(problems.join("; ")))?;
    let resolved = defaults
        .manifest(name, DEFAULT_TENANT, component, &manifest)
        .map_err(|problems| {
            anyhow::anyhow!("{}: {}", manifest_path.display(), problems.join("; "))
        })?;
    let world = match &resolved {
        DropIn::Handler(_) => "handler",
        DropIn::Publisher(p) => match p.trigger {
            Trigger::Schedule(_) => "publisher",
            Trigger::Http(_) => "http-publisher",
        },
    };
    let fits = check::fitting_worlds(component).await?;
    if !fits.contains(&world) {
        bail!(
            "{}: the manifest makes it a {world}, but it fits the {} world",
            component.display(),
            fits.join(" and ")
        );
    }
    let bytes =
        std::fs::read(component).with_context(|| format!("reading {}", component.display()))?;
    let connection = connect(nats).await?;
    let deploying = registry::deploy(&connection.js, &key, &bytes, &manifest);
    let revision = refusing(&connection, deploying).await?;
    let digest = registry::digest(&bytes);
    println!("deployed {key}: {} (revision {revision})", &digest[..12]);
    Ok(())
}

/// Prints what the registry deploys, a line per name.
pub async fn handlers(nats: &NatsArgs) -> anyhow::Result<()> {
    let js = connect(nats).await?.js;
    println!(
        "{:<24} {:<13} {:>8}  DEPLOYED",
        "NAME", "VERSION", "REVISION"
    );
    for deployed in registry::list(&js).await? {
        println!(
            "{:<24} {:<13} {:>8}  {}",
            deployed.name,
            &deployed.deployment.digest[..12.min(deployed.deployment.digest.len())],
            deployed.revision,
            deployed.when
        );
    }
    Ok(())
}

/// Deploys an earlier revision of `name` again.
pub async fn rollback(name: &str, to: Option<u64>, nats: &NatsArgs) -> anyhow::Result<()> {
    let connection = connect(nats).await?;
    let revision = refusing(&connection, registry::rollback(&connection.js, name, to)).await?;
    println!("rolled back {name} (revision {revision})");
    Ok(())
}

/// Removes `name` from the registry.
pub async fn undeploy(name: &str, nats: &NatsArgs) -> anyhow::Result<()> {
    let connection = connect(nats).await?;
    refusing(&connection, registry::undeploy(&connection.js, name)).await?;
    println!("undeployed {name}");
    Ok(())
}

async fn connect(nats: &NatsArgs) -> anyhow::Result<Connection> {
    tenant::connect(nats, &nats.url_or(None), "jetwasm").await
}

/// `work` on the registry, failing at once, naming the subject, when the server refuses the
/// credentials something (a tenant's deploy user writing another tenant's keys).
async fn refusing<T>(
    connection: &Connection,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match connection.denials.during("", work).await {
        Ok(done) => done,
        Err(subject) => bail!(
            "the NATS server refused {subject}: these credentials do not allow it (a tenant's \
             deploy user may write only its own keys, TENANT.NAME: pass --tenant)"
        ),
    }
}
