//! A handler bound to its durable consumer: what the consumer's lanes, its watchdog and its
//! dead-letter sweeper share.

use std::sync::Arc;
use std::time::Duration;

use crate::dispatch::Dispatcher;
use crate::metrics::HandlerMetrics;

/// One handler bound to one durable consumer.
pub struct Binding {
    /// Handler name.
    pub name: Arc<str>,
    /// Runs the calls.
    pub dispatcher: Dispatcher,
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable consumer.
    pub consumer: String,
    /// Dead-letter subject prefix.
    pub dead_letter: String,
    /// Wait for the server to confirm each ack.
    pub confirm_acks: bool,
    /// Most calls at once.
    pub max_in_flight: usize,
    /// Messages asked of the server ahead of need, waiting for a free slot.
    pub prefetch: usize,
    /// Largest payload handed to the handler.
    pub max_message_size: usize,
    /// Deliveries of a message the handler keeps failing on before the host dead-letters
    /// it, when the consumer's `max_deliver` is unlimited.
    pub max_failures: u32,
    /// How long the sweeper waits after a max-deliveries advisory before it writes the
    /// dead letter (see the `sweeper` module): the call timeout and a margin.
    pub sweep_delay: Duration,
    /// The consumer as the streams spec the host applied declares it, if it does: the
    /// watchdog reports changes made by hand since.
    pub declared: Option<stream_init::spec::ConsumerSpec>,
    /// The handler's metrics.
    pub metrics: HandlerMetrics,
}
