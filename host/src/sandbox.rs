//! A fresh sandbox for one call, handler or publisher: the store's data (the component's
//! environment, the call's origin, WASI with nothing granted, `wasi:http` with no outgoing
//! requests), a new store with the memory cap, the CPU-time limit and the wall-clock ceiling
//! applied, and the classification of how a call failed. Nothing a guest does here can affect
//! the host or another call.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::admission::{Admission, Permit};
use crate::config::{Limits, PublishPolicy};
use crate::engine::EPOCH_TICK;
use crate::fair_share::{let_go, TurnCell};
use crate::guest_output::GuestOutput;
use crate::limiter::{MemoryLimitExceeded, MemoryLimiter};
use crate::log_budget::LogBudget;
use crate::metrics::outcome;
use crate::origin::Origin;
use crate::publish::Connection;
use crate::quota::{Account, QuotaExceeded};

/// How a call failed; its instance is gone. Every variant but [`Failure::HostCapacity`] is
/// the guest's doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A trap or panic in the guest, with wasmtime's description.
    Trap(String),
    /// The guest used more CPU time than allowed and was interrupted.
    CpuTime(Duration),
    /// The call ran past its wall-clock ceiling and was interrupted.
    Timeout(Duration),
    /// The guest tried to grow memory past its cap.
    Memory(String),
    /// The host had no room for the instance (its pool was full): a host condition, never
    /// counted or retried as a guest failure.
    HostCapacity(String),
    /// The call would have taken its tenant past a quota (memory summed over its instances):
    /// the tenant's condition, retried like [`Failure::HostCapacity`].
    Quota(String),
}

impl Failure {
    /// The failure with the guest's own words for its crash (a panic message, an exception:
    /// see [`HostState::guest_words`]), if it is a trap.
    pub fn with_guest_words(self, words: Option<String>) -> Failure {
        match (self, words) {
            (Failure::Trap(what), Some(words)) => Failure::Trap(format!("{what}; {words}")),
            (failure, _) => failure,
        }
    }

    /// The failure's metric label, the same for a handler's message and a publisher's tick.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => outcome::TRAP,
            Failure::CpuTime(_) | Failure::Timeout(_) => outcome::TIMEOUT,
            Failure::Memory(_) => outcome::MEMORY,
            Failure::HostCapacity(_) => outcome::HOST,
            Failure::Quota(_) => outcome::QUOTA,
        }
    }

    /// A one-line description, used as a dead-letter reason.
    pub fn describe(&self) -> String {
        match self {
            Failure::Trap(what) => format!("trap: {what}"),
            Failure::CpuTime(limit) => format!("timeout: used more than {limit:?} of CPU time"),
            Failure::Timeout(limit) => format!("timeout: still running after {limit:?}"),
            Failure::Memory(what) => what.clone(),
            Failure::HostCapacity(what) => format!("host at capacity: {what}"),
            Failure::Quota(what) => format!("quota: {what}"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The error the epoch callback ends a call with, naming the limit it passed.
impl std::error::Error for Failure {}

/// What a component's imports may see and do; shared by all its calls.
pub struct ComponentEnv {
    /// The component's name (handler or publisher), for logs and derived message ids.
    pub name: Arc<str>,
    /// The `config` table, sorted by key.
    pub config: Vec<(String, String)>,
    /// Where the component may publish.
    pub publish: PublishPolicy,
    /// Most publishes per call.
    pub max_publishes: u32,
    /// Whether a publish without a message id gets a derived one.
    pub derive_message_ids: bool,
    /// Stamp the call's `traceparent` on a publish that has none (see
    /// [`crate::config::Component::stamp_traceparent`]).
    pub stamp_traceparent: bool,
    /// Where publishes go (and key-value operations, when that is a server).
    pub sink: Sink,
    /// The key-value buckets it may use.
    pub kv: crate::buckets::Buckets,
    /// The rate limit on the component's log lines.
    pub log_budget: LogBudget,
    /// The rate limit on the host's lines about the component's calls.
    pub host_log: LogBudget,
    /// Its tenant's quota account.
    pub account: Arc<Account>,
    /// The gauge of the linear memory its live instances hold
    /// (`jetwasm_component_memory_bytes`).
    pub memory: prometheus::IntGauge,
    /// The host's instance pool, which its calls take turns at.
    pub admission: Admission,
}

/// Where a component's publishes go.
#[derive(Clone)]
pub enum Sink {
    /// JetStream: each publish waits for its PubAck.
    JetStream(Box<Connection>),
    /// Recorded, never sent (`jetwasm try`): each publish is kept and answered as stored.
    Capture(Arc<Mutex<Vec<Captured>>>),
}

/// A publish recorded by [`Sink::Capture`].
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
    /// Its subject.
    pub subject: String,
    /// Its headers, the message id among them.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Store data: one per instance, so one per message unless the handler reuses instances.
pub struct HostState {
    /// Built on the guest's first WASI call: most handler calls make none.
    wasi: Option<Wasi>,
    http: WasiHttpCtx,
    http_hooks: NoOutgoingRequests,
    table: ResourceTable,
    /// Enforces the handler's memory limit.
    pub limiter: MemoryLimiter,
    /// The time the current call may still use.
    pub budget: Budget,
    /// The component's environment.
    pub(crate) env: Arc<ComponentEnv>,
    /// What the current call works on.
    pub(crate) origin: Origin,
    /// Publishes made by the current call.
    pub(crate) published: u32,
    /// A copy of each publish the current call makes, when it is recorded (a live call a
    /// shadow compares itself with).
    pub(crate) recorded: Option<Vec<Captured>>,
    /// The current call's turn at the CPU, while it has one (see the `fair_share` module).
    pub(crate) turn: TurnCell,
    /// The pool instance this store's instance holds (see the `admission` module).
    pub(crate) permit: Option<Permit>,
    /// The last line the current call logged at error level (its first
    /// [`LAST_ERROR_CHARS`] characters): a component without stderr (the lean Rust template)
    /// logs its panic there before it traps.
    pub(crate) last_error: Option<String>,
}

/// How much of an error line a trap's reason quotes.
pub const LAST_ERROR_CHARS: usize = 500;

impl HostState {
    /// Store data for calls of `env`'s component, the first on behalf of `origin`.
    pub fn new(env: Arc<ComponentEnv>, origin: Origin, limits: &Limits) -> Self {
        HostState {
            wasi: None,
            http: WasiHttpCtx::new(),
            http_hooks: NoOutgoingRequests {
                env: Some(env.clone()),
            },
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(
                limits.memory.as_u64() as usize,
                env.account.clone(),
                env.memory.clone(),
            ),
            budget: Budget::new(limits),
            env,
            origin,
            published: 0,
            recorded: None,
            turn: TurnCell::default(),
            permit: None,
            last_error: None,
        }
    }

    /// What the guest said as the current call ended, for a trap's reason: the first and last
    /// lines it wrote to stderr, else the last error it logged; nothing if neither.
    pub fn guest_words(&self) -> Option<String> {
        let stderr = (self.wasi.as_ref()).and_then(|wasi| wasi.output[1].kept_lines());
        match (stderr, &self.last_error) {
            (Some(lines), _) => Some(format!("stderr: {lines}")),
            (None, Some(line)) => Some(format!("last error logged: {line}")),
            (None, None) => None,
        }
    }

    /// Starts another call on the same store (a reused instance): a new origin, publish
    /// count and time budget.
    pub fn begin_call(&mut self, origin: Origin, limits: &Limits) {
        if let Some(wasi) = &self.wasi {
            wasi.output.iter().for_each(GuestOutput::begin_call);
            *wasi.origin.lock().unwrap_or_else(|e| e.into_inner()) = origin.clone();
        }
        self.origin = origin;
        self.published = 0;
        self.last_error = None;
        self.budget = Budget::new(limits);
    }
}

/// A WASI context with no capabilities, its stdout and stderr going to the log.
struct Wasi {
    ctx: WasiCtx,
    /// Guest stdout and stderr, whose output budget starts again with each call.
    output: [GuestOutput; 2],
    /// What the current call works on, for the outputs' log lines.
    origin: Arc<Mutex<Origin>>,
}

impl Wasi {
    fn new(name: &Arc<str>, origin: &Origin) -> Self {
        let origin = Arc::new(Mutex::new(origin.clone()));
        let output = [
            GuestOutput::new(name.clone(), "stdout", origin.clone()),
            GuestOutput::new(name.clone(), "stderr", origin.clone()),
        ];
        let ctx = WasiCtx::builder()
            .stdout(output[0].clone())
            .stderr(output[1].clone())
            .build();
        Wasi {
            ctx,
            output,
            origin,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.http_hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let (name, origin) = (&self.env.name, &self.origin);
        let wasi = self.wasi.get_or_insert_with(|| Wasi::new(name, origin));
        WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut self.table,
        }
    }
}

/// Hooks that refuse every outgoing request: components may answer HTTP, not make it. A
/// component's refusals are logged (within its log budget); the default logs none.
#[derive(Default)]
pub struct NoOutgoingRequests {
    env: Option<Arc<ComponentEnv>>,
}

impl WasiHttpHooks for NoOutgoingRequests {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        let logged = (self.env.as_ref()).is_some_and(|env| env.host_log.admit(&env.name));
        if logged {
            let (method, uri) = (request.method(), request.uri());
            tracing::warn!(%method, %uri, "outgoing HTTP request refused (HTTP-request-denied): components may not make outgoing requests");
        }
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// The time one call may use: a wall-clock deadline and CPU time, counted in epoch ticks.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    deadline: Instant,
    timeout: Duration,
    cpu_used: Duration,
    cpu_time: Duration,
}

impl Budget {
    /// A full budget for a call starting now.
    pub fn new(limits: &Limits) -> Self {
        Budget {
            deadline: Instant::now() + limits.timeout,
            timeout: limits.timeout,
            cpu_used: Duration::ZERO,
            cpu_time: limits.cpu_time,
        }
    }

    /// Counts one epoch tick of guest execution; says which limit is passed, if one is.
    fn tick(&mut self) -> Option<Failure> {
        self.cpu_used += EPOCH_TICK;
        if Instant::now() >= self.deadline {
            Some(Failure::Timeout(self.timeout))
        } else if self.cpu_used > self.cpu_time {
            Some(Failure::CpuTime(self.cpu_time))
        } else {
            None
        }
    }
}

/// A new store for calls of `env`'s component, the first on behalf of `origin`, with `limits`
/// applied.
///
/// The epoch callback runs at each tick the guest spends executing (never while it is
/// blocked in a host call): it counts CPU time against the call's [`Budget`], ends the call
/// past either limit with the [`Failure`] naming it, and otherwise lets go of the call's turn
/// at the CPU and waits for its tenant's next one (see the `fair_share` module).
pub fn store(
    engine: &Engine,
    env: Arc<ComponentEnv>,
    origin: Origin,
    limits: &Limits,
) -> Store<HostState> {
    let mut store = Store::new(engine, HostState::new(env, origin, limits));
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut store| {
        let state = store.data_mut();
        if let Some(failure) = state.budget.tick() {
            return Err(wasmtime::Error::new(failure));
        }
        let_go(&state.turn);
        let (share, cell) = (state.env.account.share.clone(), state.turn.clone());
        let next = async move {
            let turn = share.turn().await;
            *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(turn);
        };
        Ok(UpdateDeadline::YieldCustom(1, Box::pin(next)))
    });
    store
}

/// Readies a store that has served calls for another one, on behalf of `origin`.
pub fn begin_call(store: &mut Store<HostState>, origin: Origin, limits: &Limits) {
    store.data_mut().begin_call(origin, limits);
    store.set_epoch_deadline(1);
}

/// How long past its `timeout` a call may stay blocked in a host call (a publish waiting on
/// the server) before the wall-clock ceiling cuts it off. Guest code is stopped by the epoch
/// callback at the timeout itself, naming the limit; the margin lets that more precise report
/// win whenever the guest is running, and only a call stuck in the host meets the ceiling.
pub const CEILING_GRACE: Duration = Duration::from_secs(1);

/// Runs one call (instantiation and the export, on a store from [`store`]) within the
/// wall-clock ceiling, and names how it failed if it did: the one way every handler call,
/// tick and HTTP request is made.
///
/// Most calls never wait on anything and finish in their first poll; only a call that waits
/// gets a timer, started then (the first poll is itself bounded by the epoch deadline). The
/// call is taken pinned (boxed or `pin!`ned) so that it is never copied. Whenever the call
/// waits, and when it ends, it lets go of its turn at the CPU (`turn`, its store's).
pub async fn run<T>(
    limits: &Limits,
    turn: TurnCell,
    call: impl Future<Output = wasmtime::Result<T>> + Unpin,
) -> Result<T, Failure> {
    let mut call = LettingGo { call, turn };
    let result = match futures::poll!(&mut call) {
        Poll::Ready(result) => result.map_err(Some),
        Poll::Pending => match tokio::time::timeout(limits.timeout + CEILING_GRACE, call).await {
            Err(_) => Err(None),
            Ok(result) => result.map_err(Some),
        },
    };
    result.map_err(|error| classify(error.as_ref(), limits))
}

/// A call that lets go of its turn at the CPU whenever it waits or ends.
struct LettingGo<F> {
    call: F,
    turn: TurnCell,
}

impl<F: Future + Unpin> Future for LettingGo<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<F::Output> {
        let polled = std::pin::Pin::new(&mut self.call).poll(cx);
        let_go(&self.turn);
        polled
    }
}

/// Names what made a call fail: `error` is the call's error, `None` when the wall-clock
/// ceiling cut it off while it was blocked in the host.
pub fn classify(error: Option<&wasmtime::Error>, limits: &Limits) -> Failure {
    let Some(error) = error else {
        return Failure::Timeout(limits.timeout);
    };
    if let Some(limit) = error.downcast_ref::<Failure>() {
        return limit.clone();
    }
    if let Some(memory) = error.downcast_ref::<MemoryLimitExceeded>() {
        return Failure::Memory(memory.to_string());
    }
    if let Some(quota) = error.downcast_ref::<QuotaExceeded>() {
        return Failure::Quota(quota.to_string());
    }
    if let Some(pool) = error.downcast_ref::<PoolConcurrencyLimitError>() {
        return Failure::HostCapacity(pool.to_string());
    }
    match error.downcast_ref::<Trap>() {
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Trap(
            format!("{error:#}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_limits_memory_the_ceiling_and_other_traps() {
        let limits = Limits::default();
        let second = Duration::from_secs(1);
        let cpu = wasmtime::Error::new(Failure::CpuTime(second));
        assert_eq!(classify(Some(&cpu), &limits), Failure::CpuTime(second));
        let wall = wasmtime::Error::new(Failure::Timeout(second)).context("in the guest");
        assert_eq!(classify(Some(&wall), &limits), Failure::Timeout(second));
        assert_eq!(classify(None, &limits), Failure::Timeout(limits.timeout));
        let memory = wasmtime::Error::new(MemoryLimitExceeded {
            desired: 10,
            limit: 5,
        });
        let failure = classify(Some(&memory), &limits);
        assert!(matches!(failure, Failure::Memory(m) if m.contains("memory limit exceeded")));
        let unreachable = wasmtime::Error::new(Trap::UnreachableCodeReached);
        let failure = classify(Some(&unreachable), &limits);
        assert!(matches!(failure, Failure::Trap(t) if t.contains("unreachable")));
    }
}
