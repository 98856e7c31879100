//! Telling a dead connection from a quiet one. A half-open connection (the path went silent,
//! nothing closed it) still looks connected to the client until its pings go unanswered,
//! minutes later; meanwhile every rebind goes over the dead connection. So when a lane's pull
//! ends (missed heartbeats, a stall), the lane asks the server for a round trip first: no
//! answer within [`PROBE_TIMEOUT`] forces a reconnect. The probe is a request nobody answers,
//! which the server itself refuses at once ("no responders"): it needs the connection and
//! nothing else, so a JetStream leader election (when JetStream's own API may stay silent for
//! seconds) does not pass for a dead connection.

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
    // Any answer, "no responders" included, shows the path works; only silence condemns it.
    let client = js.client();
    let subject = format!("{}.liveness", client.new_inbox());
    if tokio::time::timeout(PROBE_TIMEOUT, client.request(subject, Default::default()))
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
