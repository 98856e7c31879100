//! When a timer publisher fires: `every` an interval from start, or on a `cron` schedule
//! (UTC), with the firings a slow tick made it miss counted rather than piled up. Pure: the
//! caller says what time it is.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::time::UNIX_EPOCH;

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
