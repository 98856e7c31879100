//! Loading every configured component: one engine sized for all of them, each component
//! compiled and checked against its world, and its environment (config, publish allow-list,
//! limits) prepared. Nothing is bound or started here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;

use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::binding::Binding;
use crate::bindings::publisher::PublisherPre;
use crate::bindings::HandlerPre;
use crate::compile_cache::CompileCache;
use crate::config::{Component, Config, Instances, Trigger};
use crate::dispatch::Dispatcher;
use crate::http_publisher::HttpPublisher;
use crate::log_budget::LogBudget;
use crate::metrics::Metrics;
use crate::sandbox::ComponentEnv;
use crate::timer_publisher::TimerPublisher;
use crate::{engine, imports, loader};

/// Every configured component, loaded and checked.
pub struct Components {
    /// Handlers, ready to bind to their consumers.
    pub handlers: Vec<Arc<Binding>>,
    /// Timer publishers, ready to start.
    pub publishers: Vec<Arc<TimerPublisher>>,
    /// HTTP publishers, ready to be routed to.
    pub http_publishers: Vec<Arc<HttpPublisher>>,
}

/// Loads and checks every handler and publisher in `config`. Fails on the first component
/// that cannot be read, compiled or does not fit its world, naming it.
pub async fn load(
    config: &Config,
    spec: Option<&stream_init::Spec>,
    js: &jetstream::Context,
    metrics: &Metrics,
) -> anyhow::Result<Components> {
    let components = (config.handlers.iter().map(|h| &h.component))
        .chain(config.publishers.iter().map(|p| &p.component));
    let pool = engine::PoolSize {
        instances: pool_instances(config),
        max_memory: components
            .map(|c| c.limits.memory.as_u64() as usize)
            .max()
            .unwrap_or(64 << 20),
    };
    let engine = engine::new(pool)?;
    let linker = imports::linker(&engine)?;
    let cache_max = config.runtime.compile_cache_max.as_u64();
    let cache_dir = (config.runtime.compile_cache.clone()).or_else(CompileCache::default_dir);
    let cache = cache_dir.map(|dir| CompileCache::new(dir, cache_max));
    let cache = cache.as_ref();

    let mut handlers = Vec::new();
    for handler in &config.handlers {
        let component = &handler.component;
        let pre = loader::load::<HandlerPre<_>>(&engine, &linker, &component.wasm, cache)
            .await
            .with_context(|| format!("handler {}", component.name))?;
        let env = environment(component, js);
        tracing::info!(handler = %component.name, component = %component.wasm.display(), instances = ?handler.instances, "handler loaded");
        let metrics = metrics.handler(&component.name);
        let name = env.name.clone();
        let limits = component.limits;
        let reuse = match handler.instances {
            Instances::Fresh => None,
            Instances::Reuse { per_instance } => Some(per_instance),
        };
        let dispatcher = Dispatcher::new(pre, env, limits, reuse, metrics.instances.clone());
        handlers.push(Arc::new(Binding {
            name,
            dispatcher,
            stream: handler.stream.clone(),
            consumer: handler.consumer.clone(),
            dead_letter: config.runtime.dead_letter.clone(),
            confirm_acks: handler.confirm_acks,
            max_in_flight: limits.max_in_flight,
            prefetch: limits.prefetch,
            max_message_size: limits.max_message_size.as_u64() as usize,
            max_failures: config.runtime.max_failures,
            sweep_delay: limits.timeout + SWEEP_MARGIN,
            declared: spec
                .and_then(|spec| spec.consumer(&handler.stream, &handler.consumer))
                .cloned(),
            metrics,
        }));
    }

    let mut publishers = Vec::new();
    let mut http_publishers = Vec::new();
    for publisher in &config.publishers {
        let component = &publisher.component;
        let env = environment(component, js);
        let (path, limits) = (&component.wasm, component.limits);
        let label = || format!("publisher {}", component.name);
        let loaded =
            tracing::info_span!("publisher", name = %component.name, component = %path.display());
        match &publisher.trigger {
            Trigger::Http(route) => {
                let pre = loader::load::<ProxyPre<_>>(&engine, &linker, path, cache)
                    .await
                    .with_context(label)?;
                loaded.in_scope(|| tracing::info!(method = %route.method, path = %route.path, "http publisher loaded"));
                let publisher = HttpPublisher::new(pre, env, limits, route.clone());
                http_publishers.push(Arc::new(publisher));
            }
            Trigger::Schedule(schedule) => {
                let pre = loader::load::<PublisherPre<_>>(&engine, &linker, path, cache)
                    .await
                    .with_context(label)?;
                loaded.in_scope(|| tracing::info!(?schedule, "timer publisher loaded"));
                publishers.push(Arc::new(TimerPublisher::new(
                    pre,
                    env,
                    limits,
                    schedule.clone(),
                    metrics.publisher(&component.name),
                )));
            }
        }
    }
    Ok(Components {
        handlers,
        publishers,
        http_publishers,
    })
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
fn pool_instances(config: &Config) -> u32 {
    let handlers: usize = (config.handlers.iter())
        .map(|h| h.component.limits.max_in_flight)
        .sum();
    let publishers: usize = (config.publishers.iter())
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
