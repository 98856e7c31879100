//! The host's HTTP listener: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (every handler is bound and the host is not shutting down), `/status` (every
//! component, running or refused, as JSON: see [`crate::status`]), and the routes of
//! HTTP publishers, each request run through its component with a body-size cap and a
//! timeout, never left hanging.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::deployments::Deployments;
use crate::http_publisher::{HttpPublisher, RequestFailure};
use crate::metrics::Metrics;
use crate::sandbox::Failure;
use crate::status::StatusBody;
use crate::{telemetry, trace};

/// What the endpoints report on.
#[derive(Clone)]
pub struct Status {
    /// Every metric.
    pub metrics: Metrics,
    /// Set once every handler is bound; cleared when shutdown starts.
    pub ready: Arc<AtomicBool>,
    /// Every component, running or refused: `/readyz` needs a live pull for each handler,
    /// `/status` shows them, HTTP publishers' routes go to them.
    pub deployments: Arc<Deployments>,
}

/// Binds `addr` and serves until `shutdown` is cancelled. Returns the bound address (useful
/// with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    status: Status,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP listener on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/status", get(component_status));
    // Publishers come and go with the handlers folder: their routes are looked up per request.
    let app = app.fallback(route).with_state(status);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    });
    Ok(bound)
}

/// `GET /status`: every handler and publisher, with its source, version and state, as JSON.
async fn component_status(State(status): State<Status>) -> Response {
    let components = status.deployments.status();
    let tenants = status.deployments.tenants(&components);
    let body = StatusBody {
        tenants,
        components,
    };
    let body = serde_json::to_string_pretty(&body).unwrap_or_default();
    let mut response = (StatusCode::OK, format!("{body}\n")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn metrics(State(status): State<Status>) -> ([(HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        status.metrics.render(),
    )
}

/// 200 while the host runs and every handler has a live pull on its consumer; else 503,
/// saying why.
async fn ready(State(status): State<Status>) -> (StatusCode, String) {
    if !status.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned());
    }
    let pulls = status.deployments.pulls();
    let idle: Vec<&str> = (pulls.iter())
        .filter(|(_, pulls)| pulls.get() == 0)
        .map(|(name, _)| &**name)
        .collect();
    if idle.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        let names = idle.join(", ");
        let why = format!("not ready: no live pull for handler {names}\n");
        (StatusCode::SERVICE_UNAVAILABLE, why)
    }
}

/// A request to an HTTP publisher's route: served by the publisher for its method and path,
/// 405 when the path is served for other methods only, else 404.
async fn route(State(status): State<Status>, request: Request) -> Response {
    let (method, path) = (request.method().as_str(), request.uri().path());
    match status.deployments.route(method, path) {
        Some(publisher) => {
            let otel = telemetry::request_span(
                &publisher.name,
                method,
                path,
                trace::find(
                    request
                        .headers()
                        .iter()
                        .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
                )
                .as_deref(),
            );
            let served = serve_publisher(&publisher, request);
            let response = match &otel {
                Some(span) => served.instrument(span.clone()).await,
                None => served.await,
            };
            let (tenant, code) = (&publisher.tenant, response.status().as_u16());
            (status.metrics).http_request(tenant, &publisher.name, code);
            if let Some(span) = &otel {
                telemetry::finish_request(span, code);
            }
            response
        }
        None if status.deployments.serves_path(path) => {
            StatusCode::METHOD_NOT_ALLOWED.into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// One request through an HTTP publisher. Host-side conditions get their own statuses: 413
/// for a body over the cap, 503 with `Retry-After` when the route is at capacity, 504 past
/// its timeout; 500 only when the component failed or did not answer.
async fn serve_publisher(publisher: &HttpPublisher, request: Request) -> Response {
    let limit = publisher.limits.max_message_size.as_u64() as usize;
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {limit} bytes"),
        );
    };
    let request = hyper::Request::from_parts(parts, http_body_util::Full::new(body));
    let name = &*publisher.name;
    match publisher.call(request).await {
        Ok(response) => response.map(Body::new),
        Err(RequestFailure::Busy | RequestFailure::Failed(Failure::HostCapacity(_))) => {
            tracing::debug!(publisher = name, "at capacity; request refused");
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "busy: all {} instances of this route are in use; retry",
                    publisher.limits.max_in_flight
                ),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Err(RequestFailure::Failed(Failure::Timeout(limit))) => {
            if publisher.admit_log() {
                tracing::warn!(publisher = name, ?limit, "request timed out");
            }
            error(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer within {limit:?}"),
            )
        }
        Err(RequestFailure::Failed(failure)) => {
            if publisher.admit_log() {
                tracing::warn!(publisher = name, failure = %failure.describe(), "request failed");
            }
            error(StatusCode::INTERNAL_SERVER_ERROR, failure.describe())
        }
        Err(RequestFailure::NoResponse(why)) => {
            if publisher.admit_log() {
                tracing::warn!(publisher = name, why, "request got no response");
            }
            error(StatusCode::INTERNAL_SERVER_ERROR, why)
        }
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
