//! `jetwasm check`: which worlds a component fits, before it is deployed anywhere; and with
//! `--config`, whether the server's streams fit a config (see the `topology` module), with
//! nothing started but a connection.

use std::path::Path;

use anyhow::bail;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::bindings::batch_handler::BatchHandlerPre;
use crate::bindings::publisher::PublisherPre;
use crate::bindings::HandlerPre;
use crate::compile_cache::CompileCache;
use crate::loader::{self, World};
use crate::sandbox::HostState;

/// `jetwasm check --config C`: every configured component (and drop-in of the handlers
/// folder) checked against the server's streams; the line to print, or every problem.
pub async fn config(path: &Path, nats: &stream_init::connect::NatsArgs) -> anyhow::Result<String> {
    let config = crate::config::Config::load(path, crate::config::Overrides::default())?;
    let mut components = config.components();
    if let Some(dir) = &config.runtime.handlers_dir {
        let found = crate::drop_in::scan(dir, &config)?;
        components.extend(found.into_iter().filter_map(|f| f.drop_in.ok()));
    }
    let url = nats.url_or(config.nats.url.as_deref());
    let metrics = crate::metrics::Metrics::new();
    let tenants = crate::tenant::Tenants::start(&config, nats, &url, &metrics, false).await?;
    let dead_letter = &config.runtime.dead_letter;
    let mut problems = Vec::new();
    for what in &components {
        match tenants.get(&what.component().tenant) {
            Ok(tenant) => {
                let found = crate::topology::tenant_problems(tenant, what, dead_letter).await;
                problems.extend(found);
            }
            Err(e) => problems.push(format!("{}: {e}", what.component().name)),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}: the streams do not fit the config:\n  - {}",
            path.display(),
            problems.join("\n  - ")
        );
    }
    Ok(format!(
        "{}: the streams fit its {} components",
        path.display(),
        components.len()
    ))
}

/// `jetwasm check COMPONENT`: what to print, naming the worlds the component fits, then a
/// note on each import the host links but refuses at run time.
pub async fn component(component: &Path) -> anyhow::Result<String> {
    let (fits, compiled) = compile_and_fit(component).await?;
    let versions = loader::contract_versions(&compiled);
    let contract = match versions.len() {
        0 => "jetwasm:runtime 0.1.0 or 0.2.0: it imports none of the contract's interfaces"
            .to_owned(),
        _ => (versions.iter())
            .map(|v| format!("jetwasm:runtime@{v}"))
            .collect::<Vec<_>>()
            .join(" and "),
    };
    let mut out = format!(
        "{}: fits the {} world ({contract})",
        component.display(),
        fits.join(" and ")
    );
    for note in refused_imports(&compiled) {
        out.push_str("\nnote: ");
        out.push_str(note);
    }
    Ok(out)
}

/// Notes on the imports of `component` that link but are refused when called.
fn refused_imports(component: &Component) -> Vec<&'static str> {
    let ty = component.component_type();
    let imports: Vec<&str> = ty
        .imports(component.engine())
        .map(|(name, _)| name)
        .collect();
    let mut notes = Vec::new();
    if (imports.iter()).any(|name| name.starts_with("wasi:http/outgoing-handler")) {
        notes.push("it imports wasi:http/outgoing-handler, but the host refuses every outgoing HTTP request: each gets the error code HTTP-request-denied, and the host logs it (components get no network)");
    }
    notes
}

/// The worlds `component` fits, for `jetwasm check`: compiled (through the default compile
/// cache) and checked against each world. Fails, listing why for each world, when it fits
/// none.
pub async fn fitting_worlds(component: &Path) -> anyhow::Result<Vec<&'static str>> {
    Ok(compile_and_fit(component).await?.0)
}

/// [`fitting_worlds`], with the compiled component.
async fn compile_and_fit(component: &Path) -> anyhow::Result<(Vec<&'static str>, Component)> {
    fn verdict<W: World>(
        linker: &Linker<HostState>,
        component: &Component,
    ) -> (&'static str, Result<(), String>) {
        let fits = loader::check::<W>(linker, component).map(drop);
        (W::NAME, fits.map_err(|e| format!("{e:#}")))
    }

    let engine = crate::engine::new(crate::engine::PoolSize {
        reservable: 1,
        instances: 1,
        max_memory: 64 << 20,
        keep_resident: crate::config::DEFAULT_KEEP_RESIDENT.as_u64() as usize,
    })?;
    let linker = crate::imports::linker(&engine)?;
    let cache = CompileCache::default_dir()
        .map(|dir| CompileCache::new(dir, crate::config::DEFAULT_COMPILE_CACHE_MAX.as_u64()));
    let compiled = loader::compile(&engine, component, cache.as_ref())
        .await?
        .component;
    let verdicts = [
        verdict::<HandlerPre<HostState>>(&linker, &compiled),
        verdict::<BatchHandlerPre<HostState>>(&linker, &compiled),
        verdict::<PublisherPre<HostState>>(&linker, &compiled),
        verdict::<ProxyPre<HostState>>(&linker, &compiled),
    ];
    let fits: Vec<&str> = (verdicts.iter())
        .filter(|(_, v)| v.is_ok())
        .map(|(world, _)| *world)
        .collect();
    if fits.is_empty() {
        let why: Vec<String> = (verdicts.iter())
            .map(|(world, v)| format!("  {world}: {}", v.as_ref().err().map_or("", |e| e.as_str())))
            .collect();
        bail!(
            "{} fits no jetwasm world (jetwasm:runtime@0.1.0 or @0.2.0):\n{}",
            component.display(),
            why.join("\n")
        );
    }
    Ok((fits, compiled))
}
