//! Timer-driven publishers: a component in the `publisher` world, called on its
//! [`Schedule`] in a fresh sandbox per tick. A tick never overlaps the previous one:
//! firings that pass while a tick runs are counted as missed and skipped, not piled up.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bindings::publisher::PublisherPre;
use crate::bindings::Tick;
use crate::config::Limits;
use crate::metrics::{tick_outcome, PublisherMetrics};
use crate::origin::Origin;
use crate::sandbox::{self, Failure};
use crate::sandbox::{ComponentEnv, HostState};
use crate::schedule::{Firing, Schedule};
use crate::telemetry;

/// A publisher ready to run.
pub struct TimerPublisher {
    /// Its name.
    pub name: Arc<str>,
    pre: PublisherPre<HostState>,
    env: Arc<ComponentEnv>,
    limits: Limits,
    schedule: Schedule,
    metrics: PublisherMetrics,
}

impl TimerPublisher {
    /// A publisher for a loaded component.
    pub fn new(
        pre: PublisherPre<HostState>,
        env: Arc<ComponentEnv>,
        limits: Limits,
        schedule: Schedule,
        metrics: PublisherMetrics,
    ) -> Self {
        TimerPublisher {
            name: env.name.clone(),
            pre,
            env,
            limits,
            schedule,
            metrics,
        }
    }

    /// Calls `on-tick` for `firing` in a fresh sandbox; the error says why it failed.
    pub async fn tick(&self, firing: &Firing) -> Result<(), TickError> {
        let unix_ms =
            |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let (now_ms, seq) = (unix_ms(SystemTime::now()), firing.seq);
        let due_ms = unix_ms(firing.at);
        let otel = telemetry::tick_span(&self.name, due_ms);
        let origin = Origin::Tick {
            due_ms,
            traceparent: otel.as_ref().and_then(telemetry::traceparent),
        };
        // Everything logged during the tick, the guest's lines included, names it.
        let span = origin.span(&self.name);
        let permit = self.env.admission.admit(&self.env.name).await;
        let mut store = sandbox::store(self.pre.engine(), self.env.clone(), origin, &self.limits);
        store.data_mut().permit = Some(permit);
        let turn = store.data().turn.clone();
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance
                .call_on_tick(&mut store, Tick { now_ms, seq })
                .await
        };
        let result = sandbox::run(&self.limits, turn, std::pin::pin!(call.instrument(span))).await;
        let result = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(TickError::Returned(reason)),
            Err(failure) => Err(TickError::Failed(
                failure.with_guest_words(store.data().guest_words()),
            )),
        };
        if let Some(span) = &otel {
            match &result {
                Ok(()) => telemetry::finish(span, tick_outcome::OK, None),
                Err(e) => telemetry::finish(span, e.kind(), Some(&e.describe())),
            }
        }
        result
    }
}

/// Why a tick did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub enum TickError {
    /// `on-tick` returned an error.
    Returned(String),
    /// The guest failed.
    Failed(Failure),
}

impl TickError {
    fn kind(&self) -> &'static str {
        match self {
            TickError::Returned(_) => tick_outcome::ERROR,
            TickError::Failed(failure) => failure.kind(),
        }
    }

    fn describe(&self) -> String {
        match self {
            TickError::Returned(reason) => reason.clone(),
            TickError::Failed(failure) => failure.describe(),
        }
    }
}

/// Fires `publisher` on its schedule until `shutdown`. A running tick is finished first.
pub async fn run(publisher: Arc<TimerPublisher>, shutdown: CancellationToken) {
    let start = SystemTime::now();
    let mut last = None;
    let name = &*publisher.name;
    loop {
        let firing = publisher.schedule.next(start, last, SystemTime::now());
        if firing.missed > 0 {
            publisher.metrics.missed_ticks.inc_by(firing.missed);
            tracing::warn!(
                publisher = name,
                missed = firing.missed,
                "ticks skipped: the previous tick was still running"
            );
        }
        let wait = firing
            .at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match publisher.tick(&firing).await {
            Ok(()) => publisher.metrics.count(tick_outcome::OK),
            Err(e) => {
                publisher.metrics.count(e.kind());
                tracing::warn!(publisher = name, seq = firing.seq, error = %e.describe(), "tick failed");
            }
        }
        last = Some((firing.seq, firing.at));
    }
}
