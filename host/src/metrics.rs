//! Prometheus metrics, per handler: outcomes by kind, call latency, in-flight calls, dead
//! letters, instances created, and the consumer's pending and ack-pending counts; per
//! publisher its ticks or requests; per tenant its memory. Every series carries the
//! component's `tenant` (`default` for the host's own).

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the host exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `jetwasm_messages_total{handler, outcome}`.
    outcomes: IntCounterVec,
    /// `jetwasm_handler_seconds{handler}`: time in the handler call, sandbox setup included.
    latency: HistogramVec,
    /// `jetwasm_in_flight{handler}`.
    in_flight: IntGaugeVec,
    /// `jetwasm_dead_letters_total{handler}`.
    dead_letters: IntCounterVec,
    /// `jetwasm_instances_total{handler}`: instances created.
    instances: IntCounterVec,
    /// `jetwasm_shadow_total{handler, result}`: shadow runs of a candidate version.
    shadow: IntCounterVec,
    /// `jetwasm_warm_instances{handler}`: instances kept warm for later messages.
    warm: IntGaugeVec,
    /// `jetwasm_idle_reloads_total{handler}`: components reloaded to release pool slots.
    reloads: IntCounterVec,
    /// `jetwasm_consumer_pending{handler}`: messages not yet delivered (NaN while unknown).
    pending: GaugeVec,
    /// `jetwasm_consumer_ack_pending{handler}`: delivered, not yet acked (NaN while unknown).
    ack_pending: GaugeVec,
    /// `jetwasm_consumer_redelivered{handler}`: delivered more than once, not yet acked.
    redelivered: GaugeVec,
    /// `jetwasm_consumer_pulls{handler}`: the handler's lanes with a live pull.
    pulls: IntGaugeVec,
    /// `jetwasm_consumer_drift{handler}`: fields of the consumer changed by hand.
    drift: IntGaugeVec,
    /// `jetwasm_publisher_ticks_total{publisher, outcome}`.
    ticks: IntCounterVec,
    /// `jetwasm_publisher_missed_ticks_total{publisher}`.
    missed_ticks: IntCounterVec,
    /// `jetwasm_http_requests_total{publisher, status}`.
    http_requests: IntCounterVec,
    /// `jetwasm_deploy_failures_total{handler}`: drop-ins refused (handlers and publishers).
    deploy_failures: IntCounterVec,
    /// `jetwasm_component_version{name, source, version}`: 1 for the version that runs.
    versions: IntGaugeVec,
    /// `jetwasm_tenant_memory_bytes{tenant}`: linear memory its live instances hold.
    tenant_memory: IntGaugeVec,
    /// `jetwasm_component_memory_bytes{tenant, component}`: the same per component.
    component_memory: IntGaugeVec,
    /// `jetwasm_pool_instances_in_use` and `jetwasm_pool_calls_waiting`: the host's instance
    /// pool (see the `admission` module).
    pool: PoolMetrics,
}

/// The host's instance pool: instances in use, and calls waiting for one.
#[derive(Clone)]
pub struct PoolMetrics {
    /// `jetwasm_pool_instances_in_use`.
    pub in_use: IntGauge,
    /// `jetwasm_pool_calls_waiting`.
    pub waiting: IntGauge,
    /// `jetwasm_pool_idle_slots` and `jetwasm_pool_idle_resident_bytes`, read from the
    /// engine's allocator at each scrape.
    idle: IdlePoolGauges,
}

/// The pool's slots that ran a component and are unused now, and the memory they keep
/// resident (`[runtime] keep_resident` per linear memory, at most), as wasmtime counts them.
#[derive(Clone)]
struct IdlePoolGauges {
    slots: IntGauge,
    resident: IntGauge,
    allocator: Arc<OnceLock<wasmtime::PoolingAllocatorMetrics>>,
}

impl PoolMetrics {
    /// Reads the idle-slot gauges from `engine`'s instance pool from now on.
    pub fn watch(&self, engine: &wasmtime::Engine) {
        if let Some(allocator) = engine.pooling_allocator_metrics() {
            let _ = self.idle.allocator.set(allocator);
        }
    }

    /// Sets the idle-slot gauges from the engine's allocator, when one is watched.
    fn refresh(&self) {
        if let Some(allocator) = self.idle.allocator.get() {
            let slots = allocator.unused_warm_memories()
                + allocator.unused_warm_tables()
                + allocator.unused_warm_stacks();
            let resident = allocator.unused_memory_bytes_resident()
                + allocator.unused_table_bytes_resident()
                + allocator.unused_stack_bytes_resident().unwrap_or(0);
            self.idle.slots.set(i64::from(slots));
            self.idle.resident.set(resident as i64);
        }
    }
}

/// One publisher's metrics, resolved once.
#[derive(Clone)]
pub struct PublisherMetrics {
    ticks: Vec<(&'static str, IntCounter)>,
    /// Firings skipped because the previous tick was still running.
    pub missed_ticks: IntCounter,
}

impl PublisherMetrics {
    /// Counts one tick with outcome `kind` (one of [`tick_outcome::ALL`]).
    pub fn count(&self, kind: &str) {
        if let Some((_, counter)) = self.ticks.iter().find(|(k, _)| *k == kind) {
            counter.inc();
        }
    }
}

/// Tick outcome label values.
pub mod tick_outcome {
    /// The guest's failures have the same labels as a handler's (`Failure::kind`).
    pub use super::outcome::{HOST, MEMORY, QUOTA, TIMEOUT, TRAP};

    /// Every tick outcome.
    pub const ALL: [&str; 7] = [OK, ERROR, TRAP, TIMEOUT, MEMORY, HOST, QUOTA];
    /// The tick returned `ok`.
    pub const OK: &str = "ok";
    /// The tick returned an error.
    pub const ERROR: &str = "error";
}

/// One handler's metrics, resolved once so the per-message path does no label lookups.
#[derive(Clone)]
pub struct HandlerMetrics {
    outcomes: Vec<(&'static str, IntCounter)>,
    /// Time per call.
    pub latency: Histogram,
    /// Calls running now.
    pub in_flight: IntGauge,
    /// Messages dead-lettered.
    pub dead_letters: IntCounter,
    /// Instances created: one per message when fresh, far fewer when reused.
    pub instances: IntCounter,
    /// Instances kept warm now.
    pub warm: IntGauge,
    /// Reloads of its component after it went idle (see the `reload` module).
    pub reloads: IntCounter,
    /// Shadow runs by result: agree, differ, skipped.
    pub shadow: [(&'static str, IntCounter); 3],
    /// Messages the consumer has not delivered yet; NaN while unknown (no answer from the
    /// server), never a reassuring 0.
    pub pending: Gauge,
    /// Messages delivered and not yet acknowledged; NaN while unknown.
    pub ack_pending: Gauge,
    /// Messages delivered more than once and not yet acknowledged; NaN while unknown.
    pub redelivered: Gauge,
    /// Lanes with a live pull on the consumer: 0 means the handler consumes nothing now.
    pub pulls: IntGauge,
    /// Managed fields of the consumer that differ from the streams spec the host applied.
    pub drift: IntGauge,
}

impl HandlerMetrics {
    /// Counts one shadow run with `result`: agree, differ or skipped.
    pub fn count_shadow(&self, result: &str) {
        if let Some((_, counter)) = self.shadow.iter().find(|(r, _)| *r == result) {
            counter.inc();
        }
    }

    /// Counts one message with outcome `kind` (one of [`outcome::ALL`]).
    pub fn count(&self, kind: &str) {
        if let Some((_, counter)) = self.outcomes.iter().find(|(k, _)| *k == kind) {
            counter.inc();
        }
    }
}

/// Outcome label values.
pub mod outcome {
    /// Every outcome, in the order they are reported.
    pub const ALL: [&str; 10] = [
        ACK, NAK, TERM, TRAP, TIMEOUT, MEMORY, OVERSIZE, UNREADABLE, HOST, QUOTA,
    ];
    /// The handler acked.
    pub const ACK: &str = "ack";
    /// The handler nak'd.
    pub const NAK: &str = "nak";
    /// The handler termed.
    pub const TERM: &str = "term";
    /// The guest trapped or panicked.
    pub const TRAP: &str = "trap";
    /// The guest ran past its deadline.
    pub const TIMEOUT: &str = "timeout";
    /// The guest hit its memory cap.
    pub const MEMORY: &str = "memory";
    /// The message was over the size cap and never reached the handler.
    pub const OVERSIZE: &str = "oversize";
    /// The message's subject or headers could not be read intact (bytes that are not UTF-8);
    /// it was dead-lettered without reaching the handler.
    pub const UNREADABLE: &str = "unreadable";
    /// The host could not run the call (no room in the instance pool); the call is retried in
    /// place, the message kept in progress: not the guest's doing, no delivery used up.
    pub const HOST: &str = "host";
    /// The call would have taken its tenant past its memory quota; retried in place like
    /// [`HOST`]: the tenant's condition, not the message's.
    pub const QUOTA: &str = "quota";
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let outcomes = counters(
            "jetwasm_messages_total",
            "Messages handled, by outcome",
            &["tenant", "handler", "outcome"],
        );
        let latency = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "jetwasm_handler_seconds",
                    "Time per handler call, sandbox setup included",
                )
                .buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
                &["tenant", "handler"],
            ),
        );
        let in_flight = gauges(
            "jetwasm_in_flight",
            "Calls running now",
            &["tenant", "handler"],
        );
        let dead_letters = counters(
            "jetwasm_dead_letters_total",
            "Messages dead-lettered and terminated",
            &["tenant", "handler"],
        );
        let warm = gauges(
            "jetwasm_warm_instances",
            "Instances a handler with reused instances keeps warm for later messages (dropped after [runtime] warm_idle unused)",
            &["tenant", "handler"],
        );
        let reloads = counters(
            "jetwasm_idle_reloads_total",
            "Times a handler's component was loaded again after [runtime] warm_idle without calls, releasing the instance-pool slots it kept warm",
            &["tenant", "handler"],
        );
        let shadow = counters(
            "jetwasm_shadow_total",
            "Messages also run through a handler's shadow candidate, by result: agree, differ, or skipped (one already running)",
            &["tenant", "handler", "result"],
        );
        let instances = counters(
            "jetwasm_instances_total",
            "Handler instances created (one per message unless instances are reused)",
            &["tenant", "handler"],
        );
        let float_gauges = |name: &str, help: &str| {
            registered(
                &registry,
                GaugeVec::new(Opts::new(name, help), &["tenant", "handler"]),
            )
        };
        let pending = float_gauges(
            "jetwasm_consumer_pending",
            "Messages the consumer has not delivered yet (NaN while unknown)",
        );
        let ack_pending = float_gauges(
            "jetwasm_consumer_ack_pending",
            "Messages delivered and not yet acknowledged (NaN while unknown)",
        );
        let redelivered = float_gauges(
            "jetwasm_consumer_redelivered",
            "Messages delivered more than once and not yet acknowledged (NaN while unknown)",
        );
        let pulls = gauges(
            "jetwasm_consumer_pulls",
            "Lanes with a live pull on the consumer (0: consuming nothing)",
            &["tenant", "handler"],
        );
        let drift = gauges(
            "jetwasm_consumer_drift",
            "Fields of the consumer changed by hand since the streams spec was applied",
            &["tenant", "handler"],
        );
        let ticks = counters(
            "jetwasm_publisher_ticks_total",
            "Publisher ticks run, by outcome",
            &["tenant", "publisher", "outcome"],
        );
        let missed_ticks = counters(
            "jetwasm_publisher_missed_ticks_total",
            "Timer firings skipped because the previous tick was still running",
            &["tenant", "publisher"],
        );
        let http_requests = counters(
            "jetwasm_http_requests_total",
            "HTTP publisher requests, by response status",
            &["tenant", "publisher", "status"],
        );
        let deploy_failures = counters(
            "jetwasm_deploy_failures_total",
            "Drop-in handlers and publishers refused (a bad component or manifest, a missing consumer)",
            &["tenant", "handler"],
        );
        let versions = gauges(
            "jetwasm_component_version",
            "1 for the version (SHA-256 prefix) of each handler and publisher that runs",
            &["tenant", "name", "source", "version"],
        );
        let tenant_memory = gauges(
            "jetwasm_tenant_memory_bytes",
            "Linear memory a tenant's live instances hold (its max_memory caps it)",
            &["tenant"],
        );
        let component_memory = gauges(
            "jetwasm_component_memory_bytes",
            "Linear memory a handler's or publisher's live instances hold (calls running, instances kept warm); resident memory is at most this plus what the pool keeps (jetwasm_pool_idle_resident_bytes)",
            &["tenant", "component"],
        );
        let pool = PoolMetrics {
            in_use: registered(
                &registry,
                IntGauge::new(
                    "jetwasm_pool_instances_in_use",
                    "Instances of the host's pool in use (running a call, or kept warm)",
                ),
            ),
            waiting: registered(
                &registry,
                IntGauge::new(
                    "jetwasm_pool_calls_waiting",
                    "Calls waiting for an instance of the host's pool ([runtime] max_instances)",
                ),
            ),
            idle: IdlePoolGauges {
                slots: registered(
                    &registry,
                    IntGauge::new(
                        "jetwasm_pool_idle_slots",
                        "Slots of the instance pool (memories, tables, stacks) that ran a component and are unused now",
                    ),
                ),
                resident: registered(
                    &registry,
                    IntGauge::new(
                        "jetwasm_pool_idle_resident_bytes",
                        "Memory the instance pool's unused slots keep resident ([runtime] keep_resident per linear memory at most); released when their component goes idle for [runtime] warm_idle",
                    ),
                ),
                allocator: Arc::default(),
            },
        };
        Metrics {
            registry,
            pool,
            tenant_memory,
            component_memory,
            versions,
            outcomes,
            latency,
            in_flight,
            dead_letters,
            instances,
            shadow,
            warm,
            reloads,
            pending,
            ack_pending,
            redelivered,
            pulls,
            drift,
            ticks,
            missed_ticks,
            http_requests,
            deploy_failures,
        }
    }

    /// Records that `name` of `tenant` (from `source`) now runs `new` instead of `old`;
    /// either may be absent (started, stopped).
    pub fn version_change(
        &self,
        tenant: &str,
        name: &str,
        source: &str,
        old: Option<&str>,
        new: Option<&str>,
    ) {
        if let Some(old) = old {
            let _ = self
                .versions
                .remove_label_values(&[tenant, name, source, old]);
        }
        if let Some(new) = new {
            let labels = [tenant, name, source, new];
            self.versions.with_label_values(&labels).set(1);
        }
    }

    /// Counts one refused drop-in, handler or publisher `name` of `tenant`.
    pub fn deploy_failure(&self, tenant: &str, name: &str) {
        self.deploy_failures
            .with_label_values(&[tenant, name])
            .inc();
    }

    /// Counts one request to HTTP publisher `publisher` of `tenant` answered with `status`.
    pub fn http_request(&self, tenant: &str, publisher: &str, status: u16) {
        self.http_requests
            .with_label_values(&[tenant, publisher, &status.to_string()])
            .inc();
    }

    /// The instance pool's gauges.
    pub fn pool(&self) -> PoolMetrics {
        self.pool.clone()
    }

    /// The gauge of the memory `tenant`'s live instances hold.
    pub fn tenant_memory(&self, tenant: &str) -> IntGauge {
        self.tenant_memory.with_label_values(&[tenant])
    }

    /// The gauge of the memory the live instances of component `name` of `tenant` hold.
    pub fn component_memory(&self, tenant: &str, name: &str) -> IntGauge {
        self.component_memory.with_label_values(&[tenant, name])
    }

    /// The metrics of publisher `name` of `tenant`, every counter starting at zero.
    pub fn publisher(&self, tenant: &str, name: &str) -> PublisherMetrics {
        PublisherMetrics {
            ticks: tick_outcome::ALL
                .iter()
                .map(|kind| (*kind, self.ticks.with_label_values(&[tenant, name, kind])))
                .collect(),
            missed_ticks: self.missed_ticks.with_label_values(&[tenant, name]),
        }
    }

    /// The metrics of handler `name` of `tenant`; its outcome counters start at zero, so they
    /// show up in `/metrics` before the first message.
    pub fn handler(&self, tenant: &str, name: &str) -> HandlerMetrics {
        let labels = [tenant, name];
        HandlerMetrics {
            outcomes: outcome::ALL
                .iter()
                .map(|kind| {
                    let counter = self.outcomes.with_label_values(&[tenant, name, kind]);
                    (*kind, counter)
                })
                .collect(),
            latency: self.latency.with_label_values(&labels),
            in_flight: self.in_flight.with_label_values(&labels),
            dead_letters: self.dead_letters.with_label_values(&labels),
            instances: self.instances.with_label_values(&labels),
            warm: self.warm.with_label_values(&labels),
            reloads: self.reloads.with_label_values(&labels),
            shadow: ["agree", "differ", "skipped"].map(|result| {
                (
                    result,
                    self.shadow.with_label_values(&[tenant, name, result]),
                )
            }),
            pending: unknown(self.pending.with_label_values(&labels)),
            ack_pending: unknown(self.ack_pending.with_label_values(&labels)),
            redelivered: unknown(self.redelivered.with_label_values(&labels)),
            pulls: self.pulls.with_label_values(&labels),
            drift: self.drift.with_label_values(&labels),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.pool.refresh();
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Registers a freshly built metric. Both steps only fail on a malformed or duplicate
/// definition, which is a bug in this file.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("a well-formed metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `gauge`, reading NaN (unknown) until a value is known.
fn unknown(gauge: Gauge) -> Gauge {
    gauge.set(f64::NAN);
    gauge
}
