//! A handler bound to its durable consumer: what the consumer's lanes, its watchdog and its
//! dead-letter sweeper share, and the handler's current version, which a new one replaces in
//! place (the lanes and their pulls carry on, calls already running finish on the old one).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::dispatch::Dispatcher;
use crate::metrics::HandlerMetrics;
use crate::ordering::OrderingKey;
use crate::shadow::Shadow;
use crate::tenant::Tenant;

/// One handler bound to one durable consumer.
pub struct Binding {
    /// Handler name.
    pub name: Arc<str>,
    /// Its tenant: the connection its lanes pull, acknowledge and dead-letter over, and the
    /// quota account its calls use.
    pub tenant: Arc<Tenant>,
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// Dead-letter subject prefix.
    pub dead_letter: String,
    /// Wait for the server to confirm each ack.
    pub confirm_acks: bool,
    /// Where the ordering key of its messages comes from, when they are ordered per key.
    pub ordering: Option<OrderingKey>,
    /// Most calls at once.
    pub max_in_flight: usize,
    /// Messages asked of the server ahead of need, waiting for a free slot.
    pub prefetch: usize,
    /// Deliveries of a message the handler keeps failing on before the host dead-letters
    /// it, when the consumer's `max_deliver` is unlimited.
    pub max_failures: u32,
    /// The consumer as the streams spec the host applied declares it, if it does: the
    /// watchdog reports changes made by hand since.
    pub declared: Option<stream_init::spec::ConsumerSpec>,
    /// The handler's metrics.
    pub metrics: HandlerMetrics,
    /// The version that handles the next message.
    current: ArcSwap<Version>,
}

/// What a new version of a handler's component brings: its compiled component with its
/// environment and limits. Swapped in place by [`Binding::replace`].
pub struct Version {
    /// Runs the calls.
    pub dispatcher: Dispatcher,
    /// Largest payload handed to the handler.
    pub max_message_size: usize,
    /// How long the sweeper waits after a max-deliveries advisory before it writes the
    /// dead letter (see the `sweeper` module): the call timeout and a margin.
    pub sweep_delay: Duration,
    /// The component's version: the first 12 hex digits of its SHA-256.
    pub digest: String,
    /// The candidate version a sample of messages also runs through, if any.
    pub shadow: Option<Arc<Shadow>>,
    /// How long its warm instances may go unused before they are dropped, and its pool
    /// slots before they are released (see the `reload` module).
    pub warm_idle: Duration,
    /// How to load its component again to release its pool slots; `None` without a compile
    /// cache.
    pub reload: Option<crate::reload::Reload>,
}

/// What shapes a handler's lanes and pulls: a new version with the same shape replaces the
/// old one in place; another shape needs the handler bound again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// Wait for the server to confirm each ack.
    pub confirm_acks: bool,
    /// Where the ordering key of its messages comes from, when they are ordered per key.
    pub ordering: Option<OrderingKey>,
    /// Most calls at once.
    pub max_in_flight: usize,
    /// Messages asked of the server ahead of need.
    pub prefetch: usize,
}

impl Binding {
    /// A binding of `shape` running `version` first.
    pub fn new(
        tenant: Arc<Tenant>,
        shape: Shape,
        version: Version,
        dead_letter: String,
        max_failures: u32,
        declared: Option<stream_init::spec::ConsumerSpec>,
        metrics: HandlerMetrics,
    ) -> Binding {
        Binding {
            name: version.dispatcher.env().name.clone(),
            tenant,
            stream: shape.stream,
            consumer: shape.consumer,
            dead_letter,
            confirm_acks: shape.confirm_acks,
            ordering: shape.ordering,
            max_in_flight: shape.max_in_flight,
            prefetch: shape.prefetch,
            max_failures,
            declared,
            metrics,
            current: ArcSwap::from_pointee(version),
        }
    }

    /// The version that handles the next message.
    pub fn version(&self) -> Arc<Version> {
        self.current.load_full()
    }

    /// The shape of this binding's lanes and pulls.
    pub fn shape(&self) -> Shape {
        Shape {
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            confirm_acks: self.confirm_acks,
            ordering: self.ordering.clone(),
            max_in_flight: self.max_in_flight,
            prefetch: self.prefetch,
        }
    }

    /// Makes `version` handle every message from now on; returns the one it replaces, whose
    /// running calls finish on it.
    pub fn replace(&self, version: Arc<Version>) -> Arc<Version> {
        self.current.swap(version)
    }

    /// Makes `version` handle every message from now on if `current` still does; true if it
    /// did.
    fn replace_if_current(&self, current: &Arc<Version>, version: Arc<Version>) -> bool {
        let previous = self.current.compare_and_swap(current, version);
        Arc::ptr_eq(&previous, current)
    }

    /// Reloads the component when the current version qualifies (see the `reload` module),
    /// releasing the pool slots it kept warm; a version replaced meanwhile (a deploy) is left
    /// to its successor. True when it reloaded (and dropped the old copy, unless a call still
    /// held it).
    pub async fn give_back_idle_memory(&self) -> bool {
        let old = self.version();
        let Some(reload) = old.reload.clone() else {
            return false;
        };
        if !old.dispatcher.claim_idle_reload(old.warm_idle) {
            return false;
        }
        let current = old.clone();
        let loading = move || reload.entry_like(current.dispatcher.entry());
        let entry = match tokio::task::spawn_blocking(loading).await {
            Ok(Ok(Some(entry))) => entry,
            Ok(Ok(None)) => return false,
            Ok(Err(e)) => {
                tracing::warn!(handler = %self.name, "idle handler's component not reloaded: {e:#}");
                return false;
            }
            Err(e) => {
                tracing::warn!(handler = %self.name, "idle handler's component not reloaded: {e}");
                return false;
            }
        };
        let new = Arc::new(old.with_dispatcher(old.dispatcher.with_entry(entry)));
        if !self.replace_if_current(&old, new) {
            return false;
        }
        // Dropped before the reload is counted, so that whoever sees the count sees the old
        // copy's slots released (unless a call still holds it).
        drop(old);
        self.metrics.reloads.inc();
        tracing::debug!(handler = %self.name, "idle for warm_idle: component reloaded, its warm pool slots released");
        true
    }
}

impl Version {
    /// This version running `dispatcher`.
    fn with_dispatcher(&self, dispatcher: Dispatcher) -> Version {
        Version {
            dispatcher,
            max_message_size: self.max_message_size,
            sweep_delay: self.sweep_delay,
            digest: self.digest.clone(),
            shadow: self.shadow.clone(),
            warm_idle: self.warm_idle,
            reload: self.reload.clone(),
        }
    }
}
