//! OpenTelemetry export. When `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the host sends a span for every message a
//! handler processes, every timer tick and every HTTP request to that collector over OTLP
//! (http/protobuf, without TLS: a collector or agent beside the host), with the OpenTelemetry messaging conventions. Each span continues the
//! `traceparent` its message or request carries, and the publishes a call makes carry the
//! span as their parent, so a collector sees an order's whole path as one trace.
//!
//! Off otherwise, and then free: no span is made for a message that logs nothing. The
//! standard variables apply (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`,
//! `OTEL_TRACES_EXPORTER=none`).

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::bindings::Message;

/// The target of the spans exported: the log shows none of them, the exporter only them.
pub const TARGET: &str = "jetwasm::otel";

/// Whether spans are exported (set once, at start).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the host exports spans.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Export to the collector the environment names; flushes what is left when dropped.
pub struct Exporter {
    provider: SdkTracerProvider,
    /// Where spans go.
    pub endpoint: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("jetwasm: OpenTelemetry spans not all exported at exit: {e}");
        }
    }
}

/// The collector endpoint the environment names, if export is on.
fn endpoint() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let off = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    if off {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// The exporting layer and its [`Exporter`], when the environment asks for export; an error
/// names a setting the host cannot honour.
pub fn layer<S>() -> anyhow::Result<Option<(impl Layer<S>, Exporter)>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let Some(endpoint) = endpoint() else {
        return Ok(None);
    };
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    if !matches!(protocol.as_str(), "" | "http/protobuf") {
        bail!("OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: jetwasm exports OTLP over http/protobuf only; unset it, and point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318 by default)");
    }
    if endpoint.starts_with("https://") {
        bail!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: jetwasm exports OTLP without TLS; run a collector (or agent) beside the host and point at its plain HTTP port, e.g. http://localhost:4318");
    }
    if !endpoint.starts_with("http://") {
        bail!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: expected an http:// URL, e.g. http://localhost:4318");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .with_context(|| format!("the OTLP exporter for {endpoint}"))?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("jetwasm");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("jetwasm"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == TARGET
        }));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((layer, Exporter { provider, endpoint })))
}

/// The span of `msg`'s processing by `handler` of `tenant`, named `process <handler>` (kind
/// consumer), when export is on (and nothing, not even a look at the headers, when it is
/// off). [`finish`] records its outcome.
pub fn message_span(handler: &str, tenant: &str, msg: &Message) -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    let headers = || msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let message_id = (headers())
        .find(|(name, _)| name.eq_ignore_ascii_case("Nats-Msg-Id"))
        .map(|(_, id)| id);
    let span = tracing::info_span!(
        target: TARGET,
        "process",
        otel.name = %format_args!("process {handler}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = msg.subject,
        messaging.consumer.group.name = msg.consumer,
        messaging.message.body.size = msg.payload.len() as i64,
        messaging.message.id = message_id,
        jetwasm.handler = handler,
        jetwasm.tenant = tenant,
        jetwasm.stream = msg.stream,
        jetwasm.stream.sequence = msg.stream_seq as i64,
        jetwasm.delivered = i64::from(msg.delivered),
        jetwasm.outcome = tracing::field::Empty,
    );
    continue_trace(&span, crate::trace::find(headers()).as_deref());
    Some(span)
}

/// The span of one timer tick of `publisher` (kind internal, a trace's root), when export
/// is on.
pub fn tick_span(publisher: &str, due_ms: u64) -> Option<tracing::Span> {
    enabled().then(|| {
        tracing::info_span!(
            target: TARGET,
            "tick",
            otel.name = %format_args!("tick {publisher}"),
            otel.kind = "internal",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            jetwasm.publisher = publisher,
            jetwasm.due_ms = due_ms as i64,
            jetwasm.outcome = tracing::field::Empty,
        )
    })
}

/// The span of one HTTP request to `publisher` (kind server), continuing the request's
/// `traceparent`, when export is on.
pub fn request_span(
    publisher: &str,
    method: &str,
    path: &str,
    traceparent: Option<&str>,
) -> Option<tracing::Span> {
    if !enabled() {
        return None;
    }
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = %format_args!("{method} {publisher}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        http.request.method = method,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        jetwasm.publisher = publisher,
    );
    continue_trace(&span, traceparent);
    Some(span)
}

/// Makes `span` a child of the remote span `traceparent` names, if it is valid.
fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    use opentelemetry::propagation::TextMapPropagator as _;
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = std::collections::HashMap::from([(
        crate::trace::TRACEPARENT.to_owned(),
        traceparent.to_owned(),
    )]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// `span`'s own `traceparent`: the parent its publishes name, so that their consumers'
/// spans hang under it. `None` when the span is not exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Records how the call ended on its span: `outcome` (a metrics outcome, or an HTTP status
/// for a request) and, for a failure, the error status with `error` as its description.
pub fn finish(span: &tracing::Span, outcome: &str, error: Option<&str>) {
    span.record("jetwasm.outcome", outcome);
    match error {
        Some(error) => {
            span.record("otel.status_code", "error");
            span.record("otel.status_description", error);
        }
        None => {
            span.record("otel.status_code", "ok");
        }
    }
}

/// Records a request's response status on its span (OTLP integers are signed: values go
/// as `i64`); a 5xx is an error.
pub fn finish_request(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "error");
    }
}

/// The `traceparent` of the exported span the caller runs in, if any: what a call's
/// publishes name as their parent when export is on.
pub fn current_traceparent() -> Option<String> {
    enabled().then(|| traceparent(&tracing::Span::current()))?
}
