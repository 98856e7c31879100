//! What a call works on (a message, a tick, a request): shown in derived message ids and
//! logged as the span every line about the call is in.

use std::fmt;

/// What a call is working on, for log fields and derived message ids.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A handler call on the message at `seq` in `stream`; shown as `ORDERS:42`.
    Message {
        /// The message's stream.
        stream: String,
        /// Its stream sequence.
        seq: u64,
        /// Its delivery count (logged, not part of the shown form: ids stay the same on
        /// redelivery).
        delivered: u32,
        /// The message's `traceparent`, if it has one (see the `trace` module).
        traceparent: Option<String>,
    },
    /// A publisher's firing due at `due_ms` (Unix milliseconds; unique across restarts,
    /// unlike the tick's sequence number); shown as `tick:1764316800000`.
    Tick {
        /// When the firing was due.
        due_ms: u64,
        /// The tick's exported span, as a `traceparent`, when spans are exported.
        traceparent: Option<String>,
    },
    /// An HTTP request to a publisher, `id` unique to it; shown as `req:<id>`.
    Request {
        /// Arrival time in Unix milliseconds and a counter, e.g. `1764316800000-7`.
        id: String,
        /// The request's `traceparent`, if it has one.
        traceparent: Option<String>,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Message { stream, seq, .. } => write!(f, "{stream}:{seq}"),
            Origin::Tick { due_ms, .. } => write!(f, "tick:{due_ms}"),
            Origin::Request { id, .. } => write!(f, "req:{id}"),
        }
    }
}

impl Origin {
    /// The `traceparent` the call was made under, if any.
    pub fn traceparent(&self) -> Option<&str> {
        match self {
            Origin::Message { traceparent, .. }
            | Origin::Tick { traceparent, .. }
            | Origin::Request { traceparent, .. } => traceparent.as_deref(),
        }
    }

    /// The span the lines about this call are logged in, `component` naming the handler or
    /// publisher: `message`, `tick` or `request`. At ERROR level, so that its fields show on
    /// every line any filter lets through.
    pub fn span(&self, component: &str) -> tracing::Span {
        match self {
            Origin::Message {
                stream,
                seq,
                delivered,
                ..
            } => tracing::error_span!("message", handler = component, stream, seq, delivered),
            Origin::Tick { due_ms, .. } => {
                tracing::error_span!("tick", publisher = component, due_ms)
            }
            Origin::Request { id, .. } => {
                tracing::error_span!("request", publisher = component, id)
            }
        }
    }
}
