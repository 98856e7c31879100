//! HTTP publishers: one request run through a component's `wasi:http/incoming-handler`
//! export in a fresh sandbox (whose `wasi:http` context refuses outgoing requests: guests get
//! no network), with admission against the route's reserved instances and a wall-clock
//! ceiling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::Instrument as _;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::WasiHttpView;

use crate::config::{HttpRoute, Limits};
use crate::origin::Origin;
use crate::response_body::GuestBody;
use crate::sandbox::{self, ComponentEnv, Failure, HostState};
use crate::{telemetry, trace};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// A request body already read in full (the host caps its size before the guest sees it).
pub type RequestBody = http_body_util::Full<Bytes>;

/// The response a component produced; its body may still be streaming from the guest.
pub type GuestResponse = hyper::Response<GuestBody>;

/// A publisher serving an HTTP route.
pub struct HttpPublisher {
    /// Its name.
    pub name: Arc<str>,
    /// Its tenant.
    pub tenant: Arc<str>,
    /// The route it serves.
    pub route: HttpRoute,
    pre: ProxyPre<HostState>,
    env: Arc<ComponentEnv>,
    /// Its limits; `max_message_size` caps the request body, `max_in_flight` the requests
    /// served at once (each holds one of the instances the pool reserves for it).
    pub limits: Limits,
    requests: AtomicU64,
    admission: Arc<Semaphore>,
}

/// Why a request got no response from the component.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestFailure {
    /// The guest failed (trap, limit) before answering.
    Failed(Failure),
    /// The guest returned without answering, or answered with a wasi:http error.
    NoResponse(String),
    /// Every instance reserved for the route, or the tenant's whole in-flight quota, stayed
    /// busy for [`ADMISSION_WAIT`]: the host is at capacity (a 503 with `Retry-After`, never a
    /// guest failure).
    Busy,
}

/// How long a request waits for one of its route's instances before the host answers 503.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(1);

impl HttpPublisher {
    /// A publisher for a loaded component.
    pub fn new(
        pre: ProxyPre<HostState>,
        env: Arc<ComponentEnv>,
        limits: Limits,
        route: HttpRoute,
    ) -> Self {
        HttpPublisher {
            name: env.name.clone(),
            tenant: env.account.tenant.clone(),
            route,
            pre,
            env,
            limits,
            requests: AtomicU64::new(0),
            admission: Arc::new(Semaphore::new(limits.max_in_flight)),
        }
    }

    /// Whether the host may log another line about this route's requests now (see
    /// [`crate::log_budget`]).
    pub fn admit_log(&self) -> bool {
        self.env.host_log.admit(&self.name)
    }

    /// Runs `request` through the component in a fresh sandbox and returns its response,
    /// whose body may still be streaming from the guest.
    pub async fn call(
        &self,
        request: hyper::Request<RequestBody>,
    ) -> Result<GuestResponse, RequestFailure> {
        let arrival_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        // Admission first: a request beyond the route's reserved instances waits briefly, then
        // gets a 503, and never takes an instance that admitted messages need.
        // A tenant's quota is shared by its handlers and HTTP publishers.
        let wait = ADMISSION_WAIT.min(self.limits.timeout);
        let admitted = tokio::time::timeout(wait, async {
            let route = self.admission.clone().acquire_owned().await;
            (route, self.env.account.call().await)
        });
        let Ok((Ok(permit), tenant_permit)) = admitted.await else {
            return Err(RequestFailure::Busy);
        };
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let headers = (request.headers().iter())
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let origin = Origin::Request {
            id: format!("{arrival_ms}-{n}"),
            traceparent: telemetry::current_traceparent().or_else(|| trace::find(headers)),
        };
        // Everything logged while the guest runs, its own lines included, names the request.
        let span = origin.span(&self.name);
        let limits = self.limits;
        let pool = self.env.admission.admit(&self.env.name).await;
        let mut store = sandbox::store(self.pre.engine(), self.env.clone(), origin, &limits);
        store.data_mut().permit = Some(pool);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let no_response = |e: wasmtime::Error| RequestFailure::NoResponse(format!("{e:#}"));
        let mut http = store.data_mut().http();
        let incoming = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(no_response)?;
        let out = http.new_response_outparam(sender).map_err(no_response)?;
        let pre = self.pre.clone();
        // The guest may keep writing the body after answering, so it runs on its own task.
        let guest = tokio::spawn(
            async move {
                // The instance is the route's until the guest is done, body included.
                let _permits = (permit, tenant_permit);
                let turn = store.data().turn.clone();
                let call = async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, out)
                        .await
                };
                let result = sandbox::run(&limits, turn, std::pin::pin!(call)).await;
                result.map_err(|failure| failure.with_guest_words(store.data().guest_words()))
            }
            .instrument(span),
        );
        // The guest's task ends within its ceiling, dropping the response slot if it never
        // answered: no timer of its own is needed here.
        match receiver.await {
            Ok(Ok(response)) => {
                let env = self.env.clone();
                Ok(response.map(|body| GuestBody::new(body, guest, env)))
            }
            Ok(Err(code)) => Err(RequestFailure::NoResponse(format!(
                "the component answered with an error: {code:?}"
            ))),
            Err(_) => match guest.await {
                Ok(Err(failure)) => Err(RequestFailure::Failed(failure)),
                Ok(Ok(())) => Err(RequestFailure::NoResponse(
                    "the component returned without answering".into(),
                )),
                Err(join) => Err(RequestFailure::NoResponse(format!(
                    "the call panicked: {join}"
                ))),
            },
        }
    }
}
