//! Telling a dead connection from a quiet one. A half-open connection (the path went silent,
//! nothing closed it) still looks connected to the client until its pings go unanswered,
//! minutes later; meanwhile every rebind goes over the dead connection. So when a lane's pull
//! ends (missed heartbeats, a stall), the lane asks the server for a round trip first: no
//! answer within [`PROBE_TIMEOUT`] forces a reconnect.

use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Mutex;

/// How long the server has to answer the probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One probe at a time: lanes whose pulls end together (they share the connection) wait for
/// the first one's verdict, then find a fresh connection that answers at once.
static PROBING: Mutex<()> = Mutex::const_new(());

/// Probes the connection behind `js`; forces a reconnect when it does not answer.
pub async fn check(js: &jetstream::Context) {
    let _probing = PROBING.lock().await;
    // Any answer, an error included, shows the path works; only silence condemns it.
    if tokio::time::timeout(PROBE_TIMEOUT, js.query_account())
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!(
        timeout = ?PROBE_TIMEOUT,
        "the connection did not answer after a pull ended: forcing a reconnect"
    );
    if let Err(e) = js.client().force_reconnect().await {
        tracing::warn!(error = %e, "forcing a reconnect failed");
    }
}
