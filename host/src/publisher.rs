//! Timer-driven publishers: a component in the `publisher` world, called on a schedule
//! (`every` or `cron`) in a fresh sandbox per tick. A tick never overlaps the previous one:
//! firings that pass while a tick runs are counted as missed and skipped, not piled up.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::bindings::publisher::PublisherPre;
use crate::bindings::Tick;
use crate::config::Limits;
use crate::metrics::{tick_outcome, PublisherMetrics};
use crate::sandbox::{self, Failure};
use crate::sandbox::{ComponentEnv, HostState, Origin};

/// When a publisher fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// At a fixed interval from start.
    Every(Duration),
    /// On a cron schedule, in UTC.
    Cron(Box<cron::Schedule>),
}

/// One planned firing.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    /// The firing's number, counting from 1; missed firings are counted too.
    pub seq: u64,
    /// When it is due.
    pub at: SystemTime,
    /// Firings skipped since the previous tick because it was still running.
    pub missed: u64,
}

/// Most missed cron firings counted at once (a very long stall is reported as this many).
const MAX_COUNTED_MISSES: usize = 100_000;

impl Schedule {
    /// The next firing after `last` (its number and due time; `None` before the first),
    /// given that it is now `now` and the schedule started at `start`.
    pub fn next(
        &self,
        start: SystemTime,
        last: Option<(u64, SystemTime)>,
        now: SystemTime,
    ) -> Firing {
        let last_seq = last.map_or(0, |(seq, _)| seq);
        match self {
            Schedule::Every(every) => {
                let every_ns = every.as_nanos().max(1);
                let elapsed = now.duration_since(start).unwrap_or_default().as_nanos();
                // The first firing due at or after now, but never one already run.
                let due_now = elapsed.div_ceil(every_ns) as u64;
                let seq = due_now.max(last_seq + 1);
                Firing {
                    seq,
                    at: start + Duration::from_nanos((seq as u128 * every_ns) as u64),
                    missed: seq - last_seq - 1,
                }
            }
            Schedule::Cron(schedule) => {
                let now_utc = DateTime::<Utc>::from(now);
                let missed = match last {
                    Some((_, at)) => schedule
                        .after(&DateTime::<Utc>::from(at))
                        .take_while(|t| *t < now_utc)
                        .take(MAX_COUNTED_MISSES)
                        .count() as u64,
                    None => 0,
                };
                let at = schedule
                    .after(&now_utc)
                    .next()
                    .map_or(now + Duration::from_secs(365 * 86_400), SystemTime::from);
                Firing {
                    seq: last_seq + missed + 1,
                    at,
                    missed,
                }
            }
        }
    }
}

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
        let origin = Origin::Tick { due_ms };
        let mut store = sandbox::store(self.pre.engine(), self.env.clone(), origin, &self.limits);
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance
                .call_on_tick(&mut store, Tick { now_ms, seq })
                .await
        };
        // Everything logged during the tick, the guest's lines included, names it.
        let span = tracing::error_span!("tick", publisher = %self.name, seq, due_ms);
        let call = std::pin::pin!(call.instrument(span));
        match sandbox::run(&self.limits, call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(TickError::Returned(reason)),
            Err(failure) => Err(TickError::Failed(failure)),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn at(start: SystemTime, ms: u64) -> SystemTime {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn every_fires_on_the_grid_and_skips_what_a_slow_tick_missed() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let every = Schedule::Every(Duration::from_millis(100));
        let first = every.next(start, None, start);
        assert_eq!(
            first,
            Firing {
                seq: 1,
                at: at(start, 100),
                missed: 0
            }
        );
        // A quick tick: the next firing is simply the following one.
        let second = every.next(start, Some((1, first.at)), at(start, 130));
        assert_eq!(
            second,
            Firing {
                seq: 2,
                at: at(start, 200),
                missed: 0
            }
        );
        // A tick that ran until 450ms: firings 3 and 4 passed, 5 is next.
        let after_slow = every.next(start, Some((2, second.at)), at(start, 450));
        assert_eq!(
            after_slow,
            Firing {
                seq: 5,
                at: at(start, 500),
                missed: 2
            }
        );
    }

    #[test]
    fn cron_counts_missed_firings() {
        let schedule = Schedule::Cron(Box::new(cron::Schedule::from_str("* * * * * *").unwrap()));
        let start = UNIX_EPOCH + Duration::from_secs(1_000);
        let first = schedule.next(start, None, start);
        assert_eq!(first.seq, 1);
        assert_eq!(first.at, UNIX_EPOCH + Duration::from_secs(1_001));
        // The tick due at 1001s ran until 1003.5s: 1002s and 1003s were missed.
        let next = schedule.next(start, Some((1, first.at)), at(start, 3_500));
        assert_eq!(
            next,
            Firing {
                seq: 4,
                at: UNIX_EPOCH + Duration::from_secs(1_004),
                missed: 2
            }
        );
    }
}
