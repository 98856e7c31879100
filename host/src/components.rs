//! Loading every component, configured or dropped in: one engine sized for all of them, each
//! component compiled and checked against its world (a handler's consumer found too), and its
//! environment (config, publish policy, limits) prepared. Nothing is bound or started here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::binding::Binding;
use crate::bindings::publisher::PublisherPre;
use crate::bindings::HandlerPre;
use crate::compile_cache::CompileCache;
use crate::config::{Component, Config, DropIn, Handler, Instances, Publisher, Trigger};
use crate::dispatch::Dispatcher;
use crate::http_publisher::HttpPublisher;
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::sandbox::ComponentEnv;
use crate::status::{self, ComponentStatus};
use crate::timer_publisher::TimerPublisher;
use crate::{consumer, engine, imports, loader};

/// Every component, loaded and checked.
#[derive(Default)]
pub struct Components {
    /// Handlers, ready to bind to their consumers.
    pub handlers: Vec<Arc<Binding>>,
    /// Timer publishers, ready to start.
    pub publishers: Vec<Arc<TimerPublisher>>,
    /// HTTP publishers, ready to be routed to.
    pub http_publishers: Vec<Arc<HttpPublisher>>,
    /// Every component, loaded or refused (a drop-in whose component or consumer is
    /// unusable), for `/status`.
    pub status: Vec<ComponentStatus>,
}

/// Loads and checks every handler and publisher in `config`, then the `drop_ins`. Fails on
/// the first configured component that cannot be read, compiled, does not fit its world (or,
/// for a handler, whose consumer is missing), naming it; a drop-in that cannot be loaded is
/// listed as refused in [`Components::status`] instead.
pub async fn load(
    config: &Config,
    drop_ins: &[DropIn],
    spec: Option<&stream_init::Spec>,
    js: &jetstream::Context,
    metrics: &Metrics,
) -> anyhow::Result<Components> {
    let handlers = (config.handlers.iter()).chain(drop_ins.iter().filter_map(|d| match d {
        DropIn::Handler(handler) => Some(handler),
        DropIn::Publisher(_) => None,
    }));
    let publishers = (config.publishers.iter()).chain(drop_ins.iter().filter_map(|d| match d {
        DropIn::Publisher(publisher) => Some(publisher),
        DropIn::Handler(_) => None,
    }));
    let all =
        (handlers.clone().map(|h| &h.component)).chain(publishers.clone().map(|p| &p.component));
    let pool = engine::PoolSize {
        instances: pool_instances(handlers, publishers),
        max_memory: all
            .map(|c| c.limits.memory.as_u64() as usize)
            .max()
            .unwrap_or(64 << 20),
    };
    let engine = engine::new(pool)?;
    let cache_max = config.runtime.compile_cache_max.as_u64();
    let cache_dir = (config.runtime.compile_cache.clone()).or_else(CompileCache::default_dir);
    let loader = Loader {
        linker: imports::linker(&engine)?,
        engine,
        cache: cache_dir.map(|dir| CompileCache::new(dir, cache_max)),
        config,
        spec,
        js,
        metrics,
    };
    let mut loaded = Components::default();
    for handler in &config.handlers {
        let binding = loader.handler(handler).await?;
        loaded.handlers.push(binding);
        loaded
            .status
            .push(running(&handler.component, "handler", "config"));
    }
    for publisher in &config.publishers {
        loader.publisher(publisher, &mut loaded).await?;
        let kind = publisher_kind(publisher);
        loaded
            .status
            .push(running(&publisher.component, kind, "config"));
    }
    for drop_in in drop_ins {
        let (result, kind) = match drop_in {
            DropIn::Handler(handler) => {
                let loaded_handler = loader.handler(handler).await;
                (
                    loaded_handler.map(|binding| loaded.handlers.push(binding)),
                    "handler",
                )
            }
            DropIn::Publisher(publisher) => (
                loader.publisher(publisher, &mut loaded).await,
                publisher_kind(publisher),
            ),
        };
        let mut status = running(drop_in.component(), kind, "folder");
        if let Err(e) = result {
            status.state = "refused".into();
            status.error = Some(format!("{e:#}"));
        }
        loaded.status.push(status);
    }
    Ok(loaded)
}

/// `publisher` or `http-publisher`.
fn publisher_kind(publisher: &Publisher) -> &'static str {
    match publisher.trigger {
        Trigger::Schedule(_) => "publisher",
        Trigger::Http(_) => "http-publisher",
    }
}

/// The status of a component now running, from `source` (`config` or `folder`).
fn running(component: &Component, kind: &str, source: &str) -> ComponentStatus {
    ComponentStatus {
        name: component.name.clone(),
        kind: Some(kind.to_owned()),
        source: source.to_owned(),
        component: Some(component.wasm.display().to_string()),
        version: status::version_of(&component.wasm),
        state: "running".to_owned(),
        error: None,
        in_flight: None,
    }
}

/// What loading one component needs.
struct Loader<'a> {
    engine: wasmtime::Engine,
    linker: wasmtime::component::Linker<crate::sandbox::HostState>,
    cache: Option<CompileCache>,
    config: &'a Config,
    spec: Option<&'a stream_init::Spec>,
    js: &'a jetstream::Context,
    metrics: &'a Metrics,
}

impl Loader<'_> {
    /// A handler, loaded and checked against its world, its consumer found.
    async fn handler(&self, handler: &Handler) -> anyhow::Result<Arc<Binding>> {
        let component = &handler.component;
        let label = || format!("handler {}", component.name);
        let pre = loader::load::<HandlerPre<_>>(
            &self.engine,
            &self.linker,
            &component.wasm,
            self.cache.as_ref(),
        )
        .await
        .with_context(label)?;
        let env = environment(component, self.js);
        let metrics = self.metrics.handler(&component.name);
        let name = env.name.clone();
        let limits = component.limits;
        let reuse = match handler.instances {
            Instances::Fresh => None,
            Instances::Reuse { per_instance } => Some(per_instance),
        };
        let dispatcher = Dispatcher::new(pre, env, limits, reuse, metrics.instances.clone());
        let runtime = &self.config.runtime;
        let binding = Arc::new(Binding {
            name,
            dispatcher,
            stream: handler.stream.clone(),
            consumer: handler.consumer.clone(),
            dead_letter: runtime.dead_letter.clone(),
            confirm_acks: handler.confirm_acks,
            max_in_flight: limits.max_in_flight,
            prefetch: limits.prefetch,
            max_message_size: limits.max_message_size.as_u64() as usize,
            max_failures: runtime.max_failures,
            sweep_delay: limits.timeout + SWEEP_MARGIN,
            declared: (self.spec)
                .and_then(|spec| spec.consumer(&handler.stream, &handler.consumer))
                .cloned(),
            metrics,
        });
        consumer::check_bindable(self.js, &binding).await?;
        tracing::info!(handler = %component.name, component = %component.wasm.display(), instances = ?handler.instances, "handler loaded");
        Ok(binding)
    }

    /// A publisher, loaded and checked against its world, added to `loaded`.
    async fn publisher(
        &self,
        publisher: &Publisher,
        loaded: &mut Components,
    ) -> anyhow::Result<()> {
        let component = &publisher.component;
        let env = environment(component, self.js);
        let (path, limits) = (&component.wasm, component.limits);
        let label = || format!("publisher {}", component.name);
        let (engine, linker, cache) = (&self.engine, &self.linker, self.cache.as_ref());
        let span =
            tracing::info_span!("publisher", name = %component.name, component = %path.display());
        match &publisher.trigger {
            Trigger::Http(route) => {
                let pre = loader::load::<ProxyPre<_>>(engine, linker, path, cache)
                    .await
                    .with_context(label)?;
                span.in_scope(|| tracing::info!(method = %route.method, path = %route.path, "http publisher loaded"));
                let publisher = HttpPublisher::new(pre, env, limits, route.clone());
                loaded.http_publishers.push(Arc::new(publisher));
            }
            Trigger::Schedule(schedule) => {
                let pre = loader::load::<PublisherPre<_>>(engine, linker, path, cache)
                    .await
                    .with_context(label)?;
                span.in_scope(|| tracing::info!(?schedule, "timer publisher loaded"));
                loaded.publishers.push(Arc::new(TimerPublisher::new(
                    pre,
                    env,
                    limits,
                    schedule.clone(),
                    self.metrics.publisher(&component.name),
                )));
            }
        }
        Ok(())
    }
}

/// How long after a call's timeout the sweeper may take for granted that no host is still
/// working on a message JetStream gave up on.
const SWEEP_MARGIN: Duration = Duration::from_secs(5);

/// Instances kept free beyond the reservations below: a reused instance being replaced while
/// its successor starts, and room for a stray instance a host bug might hold.
const SPARE_INSTANCES: u32 = 16;

/// The pool's component instances, reserved so that none of its users can starve another:
/// each handler its `max_in_flight` (its lanes never run more calls, and its warm instances
/// are among them), each timer publisher one (ticks never overlap), each HTTP publisher its
/// `max_in_flight` (requests beyond it wait briefly, then get a 503), plus a spare.
fn pool_instances<'a>(
    handlers: impl Iterator<Item = &'a Handler>,
    publishers: impl Iterator<Item = &'a Publisher>,
) -> u32 {
    let handlers: usize = handlers.map(|h| h.component.limits.max_in_flight).sum();
    let publishers: usize = publishers
        .map(|p| match p.trigger {
            Trigger::Http(_) => p.component.limits.max_in_flight,
            Trigger::Schedule(_) => 1,
        })
        .sum();
    u32::try_from(handlers + publishers).unwrap_or(u32::MAX) + SPARE_INSTANCES
}

/// What a component's imports see: its name, config, publish policy and quota.
fn environment(component: &Component, js: &jetstream::Context) -> Arc<ComponentEnv> {
    Arc::new(ComponentEnv {
        name: component.name.as_str().into(),
        config: component.config.clone(),
        publish: component.publish.clone(),
        max_publishes: component.limits.max_publishes,
        js: js.clone(),
        log_budget: LogBudget::default(),
        host_log: LogBudget::default(),
    })
}
