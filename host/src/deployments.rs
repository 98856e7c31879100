//! Everything the host runs, and how it changes while it runs. Components from the config
//! file start with the host and run until it stops. Drop-ins from the handlers folder are
//! added, replaced and removed as their files change (the `folder` module watches them):
//!
//! - **add**: compiled and checked off the message path, then bound (or ticking, or routed);
//! - **replace**: the new version is compiled and checked while the old one runs; a handler
//!   whose consumer and lane sizes stay the same swaps in place (its lanes and pulls carry on,
//!   waiting messages go to the new version, calls running finish on the old one: nothing is
//!   redelivered or handled twice); any other change stops the old and starts the new;
//! - **remove**: the handler stops pulling, takes what its open pull requests still bring,
//!   hands back what waits, lets running calls finish;
//! - **a bad file never replaces a good one**: the running version keeps running; the error
//!   is logged naming the file, counted in `jetwasm_deploy_failures_total{handler}` and shown
//!   on `/status`.
//!
//! Every component's calls share the engine's instance pool, taking turns when it is full
//! (see the `admission` module): no drop-in is refused for the pool's size.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::binding::Binding;
use crate::components::{Loaded, Loader, Runner};
use crate::config::DropIn;
use crate::drop_in::{self, Found};
use crate::http_publisher::HttpPublisher;
use crate::launch::{route_key, Launcher, Running};
use crate::metrics::Metrics;
use crate::status::{ComponentStatus, TenantStatus};

/// Everything the host runs.
pub struct Deployments {
    loader: Loader,
    launcher: Launcher,
    metrics: Metrics,
    state: Mutex<BTreeMap<String, Entry>>,
    draining: Mutex<Vec<Draining>>,
}

/// Where a component comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The config file: loaded at start, a failure stops the start.
    Config,
    /// The handlers folder: a failure is reported and the host carries on.
    Folder,
    /// The fleet's registry (JetStream KV and Object Store), as the folder.
    Registry,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Folder => "folder",
            Source::Registry => "registry",
        }
    }
}

/// One component the host knows, running or refused.
struct Entry {
    source: Source,
    /// The files' fingerprint last applied or refused (drop-ins only), so an unchanged file
    /// is not loaded again.
    fingerprint: Option<String>,
    /// What `/status` shows (in-flight filled in when asked).
    status: ComponentStatus,
    running: Option<Running>,
}

/// A removed handler whose lanes or last calls are still running (state `draining`).
struct Draining {
    status: ComponentStatus,
    binding: Arc<Binding>,
}

impl Deployments {
    /// Nothing running yet; components start with [`Deployments::start_configured`] and
    /// [`Deployments::apply_folder`]. Stopping `shutdown` stops them all; their tasks are
    /// on `calls`.
    pub fn new(
        loader: Loader,
        metrics: &Metrics,
        shutdown: &CancellationToken,
        calls: &TaskTracker,
    ) -> Deployments {
        Deployments {
            loader,
            launcher: Launcher::new(shutdown, calls),
            metrics: metrics.clone(),
            state: Mutex::default(),
            draining: Mutex::default(),
        }
    }

    /// Loads and starts the config file's components; fails before any starts, listing every
    /// problem with the streams they need, or on the first that cannot run, naming it. The
    /// checks and the loads run side by side.
    pub async fn start_configured(&self, components: &[DropIn]) -> anyhow::Result<()> {
        let checks = components
            .iter()
            .map(|what| self.loader.topology_problems(what));
        let problems: Vec<String> = (futures::future::join_all(checks).await)
            .into_iter()
            .flatten()
            .collect();
        if !problems.is_empty() {
            anyhow::bail!(
                "the streams do not fit the config:\n  - {}",
                problems.join("\n  - ")
            );
        }
        // Loaded together (each compiles, or reads its cache entry, on a blocking thread),
        // then started in the config's order.
        let loads = components.iter().map(|what| self.loader.load(what));
        let loaded = futures::future::try_join_all(loads).await?;
        for (what, loaded) in components.iter().zip(loaded) {
            let status = status_of(what, Source::Config, Some(loaded.version));
            let running = self.launcher.start(loaded.runner).await?;
            self.versions(&status, None);
            let entry = Entry {
                source: Source::Config,
                fingerprint: None,
                status,
                running: Some(running),
            };
            let component = what.component();
            let key = drop_in::key(&component.tenant, &component.name);
            self.entries().insert(key, entry);
        }
        Ok(())
    }

    /// Makes the folder's drop-ins run as `found` (the folder's state now) says: adds the
    /// new, replaces the changed, removes the gone, refuses the bad.
    pub async fn apply_folder(&self, found: Vec<Found>) {
        let present: Vec<String> = found.iter().map(|f| f.name.clone()).collect();
        for found in found {
            self.apply(found, Source::Folder).await;
        }
        let gone: Vec<String> = (self.entries().iter())
            .filter(|(name, e)| e.source == Source::Folder && !present.contains(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.remove_from(&name, Source::Folder);
        }
    }

    /// Adds or replaces one drop-in from `source`, or records why it cannot run. Nothing is
    /// done when it is unchanged since last time.
    pub async fn apply(&self, found: Found, source: Source) {
        let Found {
            name,
            tenant,
            drop_in,
            complete,
            fingerprint,
            revision,
        } = found;
        let owner = self
            .entries()
            .get(&name)
            .map(|e| (e.source, e.fingerprint.clone()));
        match owner {
            Some((owner, _)) if owner != source => {
                // A name another source runs (the config, the folder or the registry) is
                // left to it.
                let error = format!("{name} is taken by the {}", owner.as_str());
                self.metrics.deploy_failure(&tenant, bare(&name, &tenant));
                tracing::error!(
                    drop_in = name,
                    source = source.as_str(),
                    error,
                    "drop-in refused"
                );
                return;
            }
            Some((_, seen)) if seen == fingerprint => return,
            _ => {}
        }
        if !complete {
            // One of its files is gone: the drop-in is removed (and the other file refused).
            self.remove_from(&name, source);
        }
        let started = Instant::now();
        if let Ok(what) = &drop_in {
            // A new name shows as loading while it compiles.
            let mut entries = self.entries();
            let entry = entries.entry(name.clone()).or_insert_with(|| Entry {
                source,
                fingerprint: None,
                status: status_of(what, source, None),
                running: None,
            });
            if entry.running.is_none() {
                entry.status = ComponentStatus {
                    state: "loading".into(),
                    ..status_of(what, source, None)
                };
            }
        }
        let outcome = match drop_in {
            Ok(drop_in) if !self.runs(&name) => self.check_max_handlers(&drop_in).map(|()| drop_in),
            other => other.map_err(|e| anyhow::anyhow!(e)),
        };
        let outcome = match outcome {
            Ok(drop_in) => match self.loader.topology_problems(&drop_in).await {
                problems if problems.is_empty() => {
                    self.deploy(&name, &drop_in, source, revision, started)
                        .await
                }
                problems => Err(anyhow::anyhow!(problems.join("; "))),
            },
            Err(error) => Err(error),
        };
        if let Err(e) = outcome {
            self.refuse(&name, &tenant, source, &format!("{e:#}"));
        }
        if let Some(entry) = self.entries().get_mut(&name) {
            entry.fingerprint = fingerprint;
        }
    }

    /// Loads `drop_in` and makes it run under `name`: added, or replacing what runs.
    async fn deploy(
        &self,
        name: &str,
        drop_in: &DropIn,
        source: Source,
        revision: Option<u64>,
        started: Instant,
    ) -> anyhow::Result<()> {
        let Loaded { version, runner } = self.loader.load(drop_in).await?;
        let mut status = status_of(drop_in, source, Some(version));
        status.revision = revision;
        let (old, old_version) = {
            let mut entries = self.entries();
            let running = entries.get(name).and_then(|e| e.running.as_ref());
            let old_version = running.and_then(|_| entries[name].status.version.clone());
            // A handler of the same shape takes the new version in place; a new consumer
            // declaration rebinds, so the lanes read the consumer's settings again.
            if let (Some(Running::Handler { binding, .. }), Runner::Handler(new)) =
                (running, &runner)
            {
                if binding.shape() == new.shape() && binding.declared == new.declared {
                    binding.replace(new.version());
                    log_swap(name, old_version.as_deref(), &status, started);
                    self.versions(&status, old_version.as_deref());
                    let entry = entries.get_mut(name).expect("found above");
                    entry.status = status;
                    return Ok(());
                }
            }
            if let Runner::Http(publisher) = &runner {
                let key = route_key(publisher);
                let own = matches!(running, Some(Running::Http { route, .. }) if *route == key);
                if !own && self.launcher.serves(&key) {
                    anyhow::bail!("another publisher already serves {} {}", key.0, key.1);
                }
            }
            let old = entries.get_mut(name).and_then(|e| e.running.take());
            (old, old_version)
        };
        if let Some(old) = old {
            self.launcher.stop(name, old);
        }
        let running = self.launcher.start(runner).await?;
        self.versions(&status, old_version.as_deref());
        match &old_version {
            Some(old) => log_swap(name, Some(old), &status, started),
            None => {
                let version = status.version.as_deref().unwrap_or("?");
                tracing::info!(name, version, elapsed = ?started.elapsed(), "drop-in added");
            }
        }
        let mut entries = self.entries();
        let entry = entries.entry(name.to_owned()).or_insert_with(|| Entry {
            source,
            fingerprint: None,
            status: status.clone(),
            running: None,
        });
        entry.status = status;
        entry.running = Some(running);
        Ok(())
    }

    /// Moves the version metric of `status`'s component from `old` to its version.
    fn versions(&self, status: &ComponentStatus, old: Option<&str>) {
        let new = status.version.as_deref();
        let (tenant, name, source) = (&status.tenant, &status.name, &status.source);
        (self.metrics).version_change(tenant, name, source, old, new);
    }

    /// Records that `name` (a [`drop_in::key`]) of `tenant` cannot run (as it is now): a
    /// running version keeps running.
    fn refuse(&self, name: &str, tenant: &str, source: Source, error: &str) {
        self.metrics.deploy_failure(tenant, bare(name, tenant));
        let mut entries = self.entries();
        let entry = entries.entry(name.to_owned()).or_insert_with(|| Entry {
            source,
            fingerprint: None,
            status: ComponentStatus {
                tenant: tenant.to_owned(),
                name: bare(name, tenant).to_owned(),
                kind: None,
                source: source.as_str().to_owned(),
                component: None,
                version: None,
                state: "refused".to_owned(),
                error: None,
                in_flight: None,
                last_deploy_error: None,
                revision: None,
            },
            running: None,
        });
        entry.status.last_deploy_error = Some(error.to_owned());
        if entry.running.is_some() {
            tracing::error!(
                drop_in = name,
                error,
                "new version refused; the running version keeps running"
            );
        } else {
            entry.status.state = "refused".into();
            entry.status.error = Some(error.to_owned());
            tracing::error!(
                drop_in = name,
                error,
                "drop-in refused; the host runs without it"
            );
        }
    }

    /// Stops and forgets `name`, if `source` runs it.
    pub fn remove_from(&self, name: &str, source: Source) {
        let mut entries = self.entries();
        if entries.get(name).is_none_or(|e| e.source != source) {
            return;
        }
        let Some(entry) = entries.remove(name) else {
            return;
        };
        drop(entries);
        let Some(running) = entry.running else {
            return;
        };
        let (version, source) = (entry.status.version.as_deref(), source.as_str());
        let tenant = &entry.status.tenant;
        (self.metrics).version_change(tenant, name, source, version, None);
        // A handler shows as draining until its last calls finish.
        if let Running::Handler { binding, .. } = &running {
            let status = ComponentStatus {
                state: "draining".into(),
                ..entry.status.clone()
            };
            let binding = binding.clone();
            self.draining().push(Draining { status, binding });
        }
        self.launcher.stop(name, running);
        tracing::info!(name, "drop-in removed");
    }

    /// Whether `name` runs now.
    fn runs(&self, name: &str) -> bool {
        self.entries()
            .get(name)
            .is_some_and(|e| e.running.is_some())
    }

    /// Refuses a new component of a tenant already running its `max_handlers`.
    fn check_max_handlers(&self, what: &DropIn) -> anyhow::Result<()> {
        let tenant = &what.component().tenant;
        let quotas = (self.loader.tenants().get(tenant).ok()).and_then(|t| t.quotas);
        let Some(max) = quotas.and_then(|q| q.max_handlers) else {
            return Ok(());
        };
        let running = (self.entries().values())
            .filter(|e| e.running.is_some() && e.status.tenant == *tenant)
            .count();
        if running >= max {
            anyhow::bail!(
                "tenant {tenant} runs {running} handlers and publishers here, its max_handlers"
            );
        }
        Ok(())
    }

    /// The HTTP publisher serving `method` `path`, if any.
    pub fn route(&self, method: &str, path: &str) -> Option<Arc<HttpPublisher>> {
        self.launcher.route(method, path)
    }

    /// Whether some HTTP publisher serves `path` (with another method).
    pub fn serves_path(&self, path: &str) -> bool {
        self.launcher.serves_path(path)
    }

    /// Each running handler's name and live pulls (for `/readyz`).
    pub fn pulls(&self) -> Vec<(Arc<str>, prometheus::IntGauge)> {
        self.handlers()
            .map(|b| (b.name.clone(), b.metrics.pulls.clone()))
            .collect()
    }

    /// Every component, running or refused, with handlers' calls in flight now.
    pub fn status(&self) -> Vec<ComponentStatus> {
        let entries = self.entries();
        let running = (entries.values()).map(|entry| {
            let mut status = entry.status.clone();
            if let Some(Running::Handler { binding, .. }) = &entry.running {
                status.in_flight = Some(binding.metrics.in_flight.get());
            }
            status
        });
        let mut draining = self.draining();
        // A removed handler is gone once its lanes, watchers and messages (each holds the
        // binding until JetStream has been told) have all ended.
        draining.retain(|d| Arc::strong_count(&d.binding) > 1);
        let draining = draining.iter().map(|d| ComponentStatus {
            in_flight: Some(d.binding.metrics.in_flight.get()),
            ..d.status.clone()
        });
        running.chain(draining).collect()
    }

    /// Every tenant with what `components` (from [`Deployments::status`]) use of its quotas.
    pub fn tenants(&self, components: &[ComponentStatus]) -> Vec<TenantStatus> {
        let tenants = self.loader.tenants().iter();
        tenants
            .map(|tenant| {
                let own = || components.iter().filter(|c| *c.tenant == *tenant.name);
                let quotas = tenant.quotas;
                TenantStatus {
                    name: tenant.name.to_string(),
                    components: own().map(|c| c.name.clone()).collect(),
                    in_flight: own().filter_map(|c| c.in_flight).sum(),
                    max_in_flight: quotas.and_then(|q| q.max_in_flight),
                    memory: tenant.account.memory.used(),
                    max_memory: tenant.account.memory.max(),
                    cpu_share: quotas.map_or(1, |q| q.cpu_share),
                    max_handlers: quotas.and_then(|q| q.max_handlers),
                }
            })
            .collect()
    }

    fn handlers(&self) -> impl Iterator<Item = Arc<Binding>> {
        let bindings: Vec<Arc<Binding>> = (self.entries().values())
            .filter_map(|e| match &e.running {
                Some(Running::Handler { binding, .. }) => Some(binding.clone()),
                _ => None,
            })
            .collect();
        bindings.into_iter()
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn draining(&self) -> MutexGuard<'_, Vec<Draining>> {
        self.draining.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The name in `key` (see [`drop_in::key`]), without its tenant.
fn bare<'a>(key: &'a str, tenant: &str) -> &'a str {
    (key.strip_prefix(tenant))
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(key)
}

/// Logs a replacement: `orders: 3f9a1c → 8b20de` and how long it took from noticing the new
/// files (compiling and checking them included).
fn log_swap(name: &str, old: Option<&str>, new: &ComponentStatus, started: Instant) {
    let new = new.version.as_deref().unwrap_or("?");
    let old = old.unwrap_or("?");
    tracing::info!(elapsed = ?started.elapsed(), "{name}: {old} → {new}");
}

/// The status of `what`, running `version` (none yet while it loads), from `source`.
fn status_of(what: &DropIn, source: Source, version: Option<String>) -> ComponentStatus {
    let component = what.component();
    let kind = match what {
        DropIn::Handler(_) => "handler",
        DropIn::Publisher(p) => match p.trigger {
            crate::config::Trigger::Schedule(_) => "publisher",
            crate::config::Trigger::Http(_) => "http-publisher",
        },
    };
    ComponentStatus {
        tenant: component.tenant.clone(),
        name: component.name.clone(),
        kind: Some(kind.to_owned()),
        source: source.as_str().to_owned(),
        component: Some(component.wasm.display().to_string()),
        version,
        state: "running".to_owned(),
        error: None,
        in_flight: None,
        last_deploy_error: None,
        revision: None,
    }
}
