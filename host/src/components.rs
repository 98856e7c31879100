//! Loading a component, configured or dropped in, into what runs it: compiled and checked
//! against its world off the message path (a handler's consumer found too), its environment
//! (config, publish policy, limits) prepared, its share of the engine's instance pool known.
//! Nothing is bound or started here: that is the `deployments` module's job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use prometheus::IntCounter;

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::admission::Admission;
use crate::batch::Gatherer;
use crate::binding::{Binding, Shape, Version};
use crate::bindings::batch_handler::BatchHandlerPre;
use crate::bindings::publisher::PublisherPre;
use crate::bindings::HandlerPre;
use crate::compile_cache::CompileCache;
use crate::config::{
    self, Component, Config, DropIn, Handler, Instances, Publisher, Runtime, Trigger,
};
use crate::dispatch::{Dispatcher, Entry};
use crate::http_publisher::HttpPublisher;
use crate::log_budget::LogBudget;
use crate::metrics::{HandlerMetrics, Metrics};
use crate::publish::JS_API;
use crate::reload::Reload;
use crate::sandbox::{ComponentEnv, Sink};
use crate::shadow::Shadow;
use crate::tenant::{Tenant, Tenants};
use crate::timer_publisher::TimerPublisher;
use crate::{consumer, engine, imports, loader, topology};

/// A component loaded and checked, ready to start.
pub struct Loaded {
    /// Its version: [`crate::status::version_of`] of the bytes loaded.
    pub version: String,
    /// What runs it.
    pub runner: Runner,
}

/// What runs a loaded component.
pub enum Runner {
    /// A handler, not bound yet.
    Handler(Arc<Binding>),
    /// A timer publisher, not ticking yet.
    Timer(Arc<TimerPublisher>),
    /// An HTTP publisher, not routed to yet.
    Http(Arc<HttpPublisher>),
}

/// Instances one component can use at once, which sizes the pool when `[runtime]
/// max_instances` does not: a handler its `max_in_flight` (its lanes never run more calls,
/// and its warm instances are among them), a timer publisher one (ticks never overlap), an
/// HTTP publisher its `max_in_flight` (requests beyond it wait briefly, then get a 503).
pub fn reservation(what: &DropIn) -> u32 {
    let instances = match what {
        // A shadow's candidate runs one call at a time, on an instance of its own.
        DropIn::Handler(h) => h.component.limits.max_in_flight + usize::from(h.shadow.is_some()),
        DropIn::Publisher(p) => match p.trigger {
            Trigger::Http(_) => p.component.limits.max_in_flight,
            Trigger::Schedule(_) => 1,
        },
    };
    u32::try_from(instances).unwrap_or(u32::MAX)
}

/// Instances beyond those admitted: room for a stray instance a host bug might hold, so that
/// it costs a retry, not a failed call.
const SPARE_INSTANCES: u32 = 16;

/// The pool the engine is built with, shared by every component's calls in turn (see the
/// `admission` module): `[runtime] max_instances` instances, or what the components at start
/// can use at once (plus room for drop-ins added later when there is a handlers folder), at
/// most [`config::DEFAULT_MAX_INSTANCES`]; memories as large as the largest any of them, or
/// the default limit, allows.
pub fn pool_size<'a>(
    runtime: &Runtime,
    at_start: impl Iterator<Item = &'a DropIn> + Clone,
) -> anyhow::Result<engine::PoolSize> {
    let needed: u32 = at_start.clone().map(reservation).sum();
    let capacity = match runtime.max_instances {
        Some(max) => max,
        None if runtime.handlers_dir.is_some() || runtime.registry => {
            (needed + config::HOT_INSTANCES).min(config::DEFAULT_MAX_INSTANCES)
        }
        None => needed.clamp(1, config::DEFAULT_MAX_INSTANCES),
    };
    let max_memory = at_start
        .map(|d| d.component().limits.memory.as_u64())
        .chain([runtime.limits.memory.as_u64()])
        .max()
        .unwrap_or(64 << 20);
    Ok(engine::PoolSize {
        reservable: capacity,
        instances: capacity + SPARE_INSTANCES,
        max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
        keep_resident: usize::try_from(runtime.keep_resident.as_u64()).unwrap_or(usize::MAX),
    })
}

/// What loading a component needs: one engine and linker for every component the host runs,
/// and the compile cache.
pub struct Loader {
    engine: wasmtime::Engine,
    linker: Arc<wasmtime::component::Linker<crate::sandbox::HostState>>,
    cache: Option<CompileCache>,
    pool: engine::PoolSize,
    admission: Admission,
    runtime: Runtime,
    tenants: Arc<Tenants>,
    metrics: Metrics,
}

impl Loader {
    /// An engine with an instance pool of `pool`, and what loading needs: each component
    /// loads and runs as its tenant.
    pub fn new(
        config: &Config,
        pool: engine::PoolSize,
        tenants: &Arc<Tenants>,
        metrics: &Metrics,
    ) -> anyhow::Result<Loader> {
        let engine = engine::new(pool)?;
        let runtime = &config.runtime;
        let admission = Admission::with_gauges(pool.reservable as usize, metrics.pool());
        metrics.pool().watch(&engine);
        let cache_dir = (runtime.compile_cache.clone()).or_else(CompileCache::default_dir);
        Ok(Loader {
            linker: Arc::new(imports::linker(&engine)?),
            engine,
            cache: cache_dir.map(|dir| CompileCache::new(dir, runtime.compile_cache_max.as_u64())),
            pool,
            admission,
            runtime: runtime.clone(),
            tenants: tenants.clone(),
            metrics: metrics.clone(),
        })
    }

    /// A loader whose pool fits `config`'s own components and nothing more (for tools and
    /// benchmarks that load a config's components by hand).
    pub fn for_config(
        config: &Config,
        js: &jetstream::Context,
        metrics: &Metrics,
    ) -> anyhow::Result<Loader> {
        let pool = pool_size(&config.runtime, config.components().iter())?;
        let tenants = Arc::new(Tenants::single(js, metrics));
        Loader::new(config, pool, &tenants, metrics)
    }

    /// Every problem with `what`'s place in its tenant's streams (see the `topology`
    /// module).
    pub async fn topology_problems(&self, what: &DropIn) -> Vec<String> {
        match self.tenant_of(what) {
            Ok(tenant) => topology::tenant_problems(tenant, what, &self.runtime.dead_letter).await,
            Err(e) => vec![format!("{}: {e}", what.component().name)],
        }
    }

    /// The tenant `what` runs as.
    fn tenant_of(&self, what: &DropIn) -> anyhow::Result<&Arc<Tenant>> {
        self.tenants.get(&what.component().tenant)
    }

    /// The tenants components load as.
    pub fn tenants(&self) -> &Tenants {
        &self.tenants
    }

    /// Instances the pool holds for reservations.
    pub fn capacity(&self) -> u32 {
        self.pool.reservable
    }

    /// Loads and checks `what`, configured or dropped in.
    pub async fn load(&self, what: &DropIn) -> anyhow::Result<Loaded> {
        let component = what.component();
        let memory = component.limits.memory.as_u64();
        if memory > self.pool.max_memory as u64 {
            bail!(
                "{}: limits.memory is {}, over the {} this host's instance pool holds (the \
                 largest limit at start); lower it, or raise [runtime.limits] memory and restart",
                component.name,
                component.limits.memory,
                bytesize::ByteSize(self.pool.max_memory as u64),
            );
        }
        let tenant = self.tenant_of(what)?;
        let loading = async {
            match what {
                DropIn::Handler(handler) => self.handler(handler, tenant).await,
                DropIn::Publisher(publisher) => self.publisher(publisher, tenant).await,
            }
        };
        match tenant.connection.denials.during(JS_API, loading).await {
            Ok(loaded) => loaded,
            Err(subject) => bail!(topology::refused(what, tenant, &subject)),
        }
    }

    /// A handler, loaded and checked against its world, its consumer found.
    async fn handler(&self, handler: &Handler, tenant: &Arc<Tenant>) -> anyhow::Result<Loaded> {
        let component = &handler.component;
        let label = || format!("handler {}", component.name);
        let (engine, linker, cache) = (&self.engine, &self.linker, self.cache.as_ref());
        let wasm = &component.wasm;
        let (entry, digest, sha256) = match handler.batch {
            None => {
                let checked = loader::load::<HandlerPre<_>>(engine, linker, wasm, cache)
                    .await
                    .with_context(label)?;
                (Entry::Handler(checked.pre), checked.version, checked.sha256)
            }
            Some(batch) => {
                let checked = loader::load::<BatchHandlerPre<_>>(engine, linker, wasm, cache)
                    .await
                    .with_context(label)?;
                let gatherer = Gatherer::new(batch.max, batch.max_wait);
                let entry = Entry::Batch {
                    pre: checked.pre,
                    gatherer,
                };
                (entry, checked.version, checked.sha256)
            }
        };
        let env = self.environment(component, tenant, jetstream_sink(tenant));
        let metrics = self.metrics.handler(&tenant.name, &component.name);
        let limits = component.limits;
        let reuse = match handler.instances {
            Instances::Fresh => None,
            Instances::Reuse { per_instance } => Some(per_instance),
        };
        let shadow = match &handler.shadow {
            Some(spec) => Some(Arc::new(
                self.shadow(spec, component, tenant, &metrics)
                    .await
                    .with_context(label)?,
            )),
            None => None,
        };
        let version = Version {
            dispatcher: Dispatcher::new(entry, env, limits, reuse, metrics.instances.clone()),
            max_message_size: limits.max_message_size.as_u64() as usize,
            sweep_delay: limits.timeout + SWEEP_MARGIN,
            digest: digest.clone(),
            shadow,
            warm_idle: self.runtime.warm_idle,
            reload: cache.map(|cache| Reload::new(linker, cache, sha256)),
        };
        let shape = Shape {
            stream: handler.stream.clone(),
            consumer: handler.consumer.clone(),
            confirm_acks: handler.confirm_acks,
            ordering: handler.ordering.clone(),
            max_in_flight: limits.max_in_flight,
            prefetch: limits.prefetch,
        };
        if let Some(own) = &handler.own_consumer {
            apply_own_consumer(tenant.js(), &handler.stream, own)
                .await
                .with_context(label)?;
        }
        let declared = (handler.own_consumer.as_deref().cloned()).or_else(|| {
            (tenant.spec.as_deref())
                .and_then(|spec| spec.consumer(&handler.stream, &handler.consumer))
                .cloned()
        });
        let runtime = &self.runtime;
        let binding = Arc::new(Binding::new(
            tenant.clone(),
            shape,
            version,
            runtime.dead_letter.clone(),
            runtime.max_failures,
            declared,
            metrics,
        ));
        consumer::check_bindable(tenant.js(), &binding).await?;
        tracing::info!(handler = %component.name, tenant = %tenant.name, component = %component.wasm.display(), instances = ?handler.instances, "handler loaded");
        Ok(Loaded {
            version: digest,
            runner: Runner::Handler(binding),
        })
    }

    /// A publisher, loaded and checked against its world.
    async fn publisher(&self, publisher: &Publisher, tenant: &Tenant) -> anyhow::Result<Loaded> {
        let component = &publisher.component;
        let env = self.environment(component, tenant, jetstream_sink(tenant));
        let (path, limits) = (&component.wasm, component.limits);
        let label = || format!("publisher {}", component.name);
        let (engine, linker, cache) = (&self.engine, &self.linker, self.cache.as_ref());
        let span =
            tracing::info_span!("publisher", name = %component.name, component = %path.display());
        Ok(match &publisher.trigger {
            Trigger::Http(route) => {
                let checked = loader::load::<ProxyPre<_>>(engine, linker, path, cache)
                    .await
                    .with_context(label)?;
                span.in_scope(|| tracing::info!(method = %route.method, path = %route.path, "http publisher loaded"));
                let publisher = HttpPublisher::new(checked.pre, env, limits, route.clone());
                Loaded {
                    version: checked.version,
                    runner: Runner::Http(Arc::new(publisher)),
                }
            }
            Trigger::Schedule(schedule) => {
                let checked = loader::load::<PublisherPre<_>>(engine, linker, path, cache)
                    .await
                    .with_context(label)?;
                span.in_scope(|| tracing::info!(?schedule, "timer publisher loaded"));
                let publisher = TimerPublisher::new(
                    checked.pre,
                    env,
                    limits,
                    schedule.clone(),
                    self.metrics.publisher(&tenant.name, &component.name),
                );
                Loaded {
                    version: checked.version,
                    runner: Runner::Timer(Arc::new(publisher)),
                }
            }
        })
    }
}

/// How long after a call's timeout the sweeper may take for granted that no host is still
/// working on a message JetStream gave up on.
const SWEEP_MARGIN: Duration = Duration::from_secs(5);

/// Creates or updates a handler's own consumer on `stream` through stream-init's plan and
/// apply (the stream itself is left alone; nothing is ever deleted).
async fn apply_own_consumer(
    js: &jetstream::Context,
    stream: &str,
    declared: &stream_init::spec::ConsumerSpec,
) -> anyhow::Result<()> {
    let what = || format!("its consumer {stream}/{}", declared.durable);
    let plan = stream_init::plan_consumers(js, stream, std::slice::from_ref(declared))
        .await
        .with_context(what)?;
    for line in stream_init::apply(js, &plan).await.with_context(what)? {
        tracing::info!("stream-init: {line}");
    }
    Ok(())
}

impl Loader {
    /// A handler's shadow: its candidate loaded and checked against the handler world, run
    /// with the live version's name, config, publish policy and limits, its publishes
    /// captured.
    async fn shadow(
        &self,
        spec: &config::Shadow,
        live: &Component,
        tenant: &Tenant,
        metrics: &HandlerMetrics,
    ) -> anyhow::Result<Shadow> {
        let what = || format!("shadow candidate {}", spec.wasm.display());
        let pre = loader::load::<HandlerPre<_>>(
            &self.engine,
            &self.linker,
            &spec.wasm,
            self.cache.as_ref(),
        )
        .await
        .with_context(what)?
        .pre;
        let captured = Arc::new(Mutex::new(Vec::new()));
        let env = self.environment(live, tenant, Sink::Capture(captured.clone()));
        // Its instances are not the handler's: counted nowhere.
        let instances = IntCounter::new("shadow_instances", "unregistered").expect("a valid name");
        let dispatcher = Dispatcher::new(pre, env, live.limits, None, instances);
        Ok(Shadow::new(
            dispatcher,
            captured,
            spec.sample,
            metrics.shadow.clone(),
        ))
    }
}

impl Loader {
    /// What a component's imports see: its name, config, publish policy and quota, its
    /// tenant's account, and where its publishes go (`sink`); its memory is counted in its
    /// gauge (a shadow's in its live version's).
    fn environment(&self, component: &Component, tenant: &Tenant, sink: Sink) -> Arc<ComponentEnv> {
        let memory = (self.metrics).component_memory(&tenant.name, &component.name);
        environment(component, tenant, sink, &self.admission, memory)
    }
}

/// What a component's imports see (see [`Loader::environment`]), its memory counted in
/// `memory`.
pub(crate) fn environment(
    component: &Component,
    tenant: &Tenant,
    sink: Sink,
    admission: &Admission,
    memory: prometheus::IntGauge,
) -> Arc<ComponentEnv> {
    Arc::new(ComponentEnv {
        name: component.name.as_str().into(),
        config: component.config.clone(),
        publish: component.publish.clone(),
        max_publishes: component.limits.max_publishes,
        derive_message_ids: component.derive_message_ids,
        stamp_traceparent: component.stamp_traceparent,
        sink,
        kv: crate::buckets::Buckets::new(component.kv.clone()),
        log_budget: LogBudget::default(),
        host_log: LogBudget::default(),
        account: tenant.account.clone(),
        memory,
        admission: admission.clone(),
    })
}

/// Publishes over the tenant's own connection, each waiting for its PubAck.
fn jetstream_sink(tenant: &Tenant) -> Sink {
    Sink::JetStream(Box::new(tenant.connection.clone()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TWO: &str = r#"
[[handler]]
name = "a"
component = "a.wasm"
stream = "S"
consumer = "c"
limits = { max_in_flight = 8, memory = "32MiB" }

[[publisher]]
name = "t"
component = "t.wasm"
every = "1s"
"#;

    fn pool(text: &str) -> anyhow::Result<engine::PoolSize> {
        let config = Config::parse(text, Path::new(".")).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        pool_size(&config.runtime, config.components().iter())
    }

    #[test]
    fn the_pool_holds_what_the_components_use_and_room_for_drop_ins() {
        let exact = pool(TWO).unwrap();
        assert_eq!(
            (exact.reservable, exact.instances),
            (9, 9 + SPARE_INSTANCES)
        );
        assert_eq!(exact.max_memory, 64 << 20, "the default limit, the larger");
        let folder = pool(&format!("[runtime]\nhandlers_dir = \"d\"\n{TWO}")).unwrap();
        assert_eq!(folder.reservable, 9 + config::HOT_INSTANCES);
        let set = pool(&format!("[runtime]\nmax_instances = 100\n{TWO}")).unwrap();
        assert_eq!(set.reservable, 100);
    }

    #[test]
    fn the_pool_is_what_max_instances_says_or_at_most_the_default() {
        let small = pool(&format!("[runtime]\nmax_instances = 5\n{TWO}")).unwrap();
        assert_eq!(small.reservable, 5, "the calls take turns at 5");
        let many: String = (0..100)
            .map(|i| format!("[[handler]]\nname = \"h{i}\"\ncomponent = \"h.wasm\"\nstream = \"S\"\nconsumer = \"c{i}\"\n"))
            .collect();
        let capped = pool(&many).unwrap();
        assert_eq!(
            capped.reservable,
            config::DEFAULT_MAX_INSTANCES,
            "not 100 × 64"
        );
    }
}
