//! One message through a handler: a sandbox ([`sandbox::store`]) with an instance from the
//! shared `InstancePre`, the call made, and its result as an [`Outcome`].
//!
//! A batch handler's messages join a batch ([`crate::batch`]) and share one
//! `handle-batch` call.
//!
//! With [`Instances::Fresh`](crate::config::Instances::Fresh) every message gets a new
//! instance. With [`Instances::Reuse`](crate::config::Instances::Reuse) an
//! instance that answered goes back to a small pool of warm ones (never more than the calls
//! in flight) and serves later messages, one at a time; it is discarded after any failure
//! and after its quota of messages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use wasmtime::Store;

use crate::batch::Gatherer;
use crate::bindings::batch_handler::{BatchHandler, BatchHandlerPre};
use crate::bindings::{Disposition, Handler, HandlerPre, Message};
use crate::config::Limits;
use crate::origin::Origin;
pub use crate::sandbox::Failure;
use crate::sandbox::{self, Captured, ComponentEnv, HostState};
use crate::{telemetry, trace};

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler returned `ack`.
    Ack,
    /// The handler returned `nak`, with its delay if it gave one.
    Nak(Option<Duration>),
    /// The handler returned `term` with this reason.
    Term(String),
    /// The guest failed; its instance is gone.
    Failed(Failure),
}

impl From<Disposition> for Outcome {
    fn from(disposition: Disposition) -> Self {
        match disposition {
            Disposition::Ack => Outcome::Ack,
            Disposition::Nak(delay) => Outcome::Nak(delay.map(Duration::from_millis)),
            Disposition::Term(reason) => Outcome::Term(reason),
        }
    }
}

/// The component a handler's calls go to, by the world it fits.
pub enum Entry {
    /// The `handler` world: one message per call.
    Handler(HandlerPre<HostState>),
    /// The `batch-handler` world: the messages `gatherer` gathers, per call.
    Batch {
        /// The component.
        pre: BatchHandlerPre<HostState>,
        /// Gathers the messages of each call.
        gatherer: Gatherer<Outcome>,
    },
}

impl Entry {
    /// The engine its component was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            Entry::Handler(pre) => pre.engine(),
            Entry::Batch { pre, .. } => pre.engine(),
        }
    }

    /// The same world for `component` (checked against `linker`), a batch handler with an
    /// empty gatherer of the same settings.
    pub fn like(
        &self,
        component: &wasmtime::component::Component,
        linker: &wasmtime::component::Linker<HostState>,
    ) -> anyhow::Result<Entry> {
        Ok(match self {
            Entry::Handler(_) => Entry::Handler(crate::loader::check(linker, component)?),
            Entry::Batch { gatherer, .. } => Entry::Batch {
                pre: crate::loader::check(linker, component)?,
                gatherer: gatherer.empty_like(),
            },
        })
    }
}

/// An instance of either world.
enum Instance {
    Handler(Handler),
    Batch(BatchHandler),
}

/// An instance kept for later messages, with its store.
struct Warm {
    store: Store<HostState>,
    instance: Instance,
    served: u32,
    /// When it last finished a call.
    idle_since: Instant,
}

/// Runs one handler's calls.
pub struct Dispatcher {
    entry: Entry,
    env: Arc<ComponentEnv>,
    limits: Limits,
    /// `Some(n)`: reuse instances for up to `n` messages each.
    reuse: Option<u32>,
    warm: Mutex<Vec<Warm>>,
    instances_created: IntCounter,
    /// Whether it made an instance yet: only then can the pool hold slots warm for it.
    used: AtomicBool,
    /// When its last call ended ([`millis_since_epoch`]).
    last_done: AtomicU64,
    /// Claimed by whoever reloads its component (see the `reload` module), once.
    reloading: AtomicBool,
}

impl Dispatcher {
    /// The environment the component's calls run in.
    pub fn env(&self) -> &ComponentEnv {
        &self.env
    }

    /// A dispatcher for a loaded component with its environment and limits; `reuse` is the
    /// messages one instance may serve (`None`: a fresh instance per message).
    /// `instances_created` counts the instances it makes.
    pub fn new(
        entry: impl Into<Entry>,
        env: Arc<ComponentEnv>,
        limits: Limits,
        reuse: Option<u32>,
        instances_created: IntCounter,
    ) -> Self {
        Dispatcher {
            entry: entry.into(),
            env,
            limits,
            reuse,
            warm: Mutex::new(Vec::new()),
            instances_created,
            used: AtomicBool::new(false),
            last_done: AtomicU64::new(millis_since_epoch()),
            reloading: AtomicBool::new(false),
        }
    }

    /// What it runs.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// A dispatcher like this one running `entry` (the same component loaded again).
    pub fn with_entry(&self, entry: Entry) -> Dispatcher {
        let counter = self.instances_created.clone();
        Dispatcher::new(entry, self.env.clone(), self.limits, self.reuse, counter)
    }

    /// Claims the reload of its component when it made instances, keeps none warm, and no
    /// call of it ended for `idle`; true once at most.
    pub fn claim_idle_reload(&self, idle: Duration) -> bool {
        let quiet = millis_since_epoch().saturating_sub(self.last_done.load(Ordering::Relaxed));
        self.used.load(Ordering::Relaxed)
            && self.warm() == 0
            && u128::from(quiet) >= idle.as_millis()
            && !self.reloading.swap(true, Ordering::AcqRel)
    }

    /// Calls `handle` on `msg`, on a warm instance when one is free and reuse is on, else on
    /// a new one; for a batch handler, `handle-batch` on the batch `msg` joins.
    pub async fn call(&self, msg: &Message) -> Outcome {
        match &self.entry {
            Entry::Handler(_) => self.call_with(msg, false).await.0,
            Entry::Batch { gatherer, .. } => {
                // Boxed: the batch's future holds the whole call.
                let outcome = Box::pin(gatherer.join(msg, |batch| self.call_batch(batch))).await;
                outcome.unwrap_or_else(|| {
                    Outcome::Failed(Failure::HostCapacity(
                        "the call for its batch was abandoned (the host is stopping); retried"
                            .into(),
                    ))
                })
            }
        }
    }

    /// [`Dispatcher::call`], also returning a copy of each publish the call made (for a
    /// shadow to compare its candidate's with).
    pub async fn call_recording(&self, msg: &Message) -> (Outcome, Vec<Captured>) {
        self.call_with(msg, true).await
    }

    async fn call_with(&self, msg: &Message, record: bool) -> (Outcome, Vec<Captured>) {
        let (mut store, instance, served) = self.checkout(origin_of(msg)).await;
        store.data_mut().recorded = record.then(Vec::new);
        let turn = store.data().turn.clone();
        // Boxed once here: the call's future is large (~2.5 KB), and moving it by value into
        // the ceiling and up through the message's future would copy it at each step.
        let call = Box::pin(async {
            let instance = match instance {
                Some(instance) => instance,
                None => self.instantiate(&mut store).await?,
            };
            let Instance::Handler(handler) = &instance else {
                unreachable!("a handler's instances are handler instances");
            };
            let disposition = handler.call_handle(&mut store, msg).await?;
            Ok((instance, disposition))
        });
        let result = sandbox::run(&self.limits, turn, call).await;
        self.last_done
            .store(millis_since_epoch(), Ordering::Relaxed);
        let recorded = store.data_mut().recorded.take().unwrap_or_default();
        let outcome = match result {
            Ok((instance, disposition)) => {
                self.checkin(store, instance, served);
                disposition.into()
            }
            Err(failure) => Outcome::Failed(failure.with_guest_words(store.data().guest_words())),
        };
        (outcome, recorded)
    }

    /// One `handle-batch` call for `batch`: an outcome per message, in order.
    async fn call_batch(&self, batch: Vec<Message>) -> Vec<Outcome> {
        let n = batch.len();
        let (mut store, instance, served) = self.checkout(origin_of(&batch[0])).await;
        let turn = store.data().turn.clone();
        let call = Box::pin(async {
            let instance = match instance {
                Some(instance) => instance,
                None => self.instantiate(&mut store).await?,
            };
            let Instance::Batch(handler) = &instance else {
                unreachable!("a batch handler's instances are batch-handler instances");
            };
            let dispositions = handler.call_handle_batch(&mut store, &batch).await?;
            Ok((instance, dispositions))
        });
        let result = sandbox::run(&self.limits, turn, call).await;
        self.last_done
            .store(millis_since_epoch(), Ordering::Relaxed);
        let result = match result {
            Ok((instance, dispositions)) => {
                self.checkin(store, instance, served);
                Ok(dispositions.into_iter().map(Outcome::from).collect())
            }
            Err(failure) => Err(failure.with_guest_words(store.data().guest_words())),
        };
        batch_outcomes(n, result)
    }

    /// A store for a call on behalf of `origin`: a warm one with its instance when reuse is
    /// on and one is free, else a new one (its instance made in the call) once the host's
    /// pool admits it (the wait is the message's, kept in progress, not the call's).
    async fn checkout(&self, origin: Origin) -> (Store<HostState>, Option<Instance>, u32) {
        let warm = self.reuse.and_then(|_| self.lock_warm().pop());
        if let Some(Warm {
            mut store,
            instance,
            served,
            ..
        }) = warm
        {
            sandbox::begin_call(&mut store, origin, &self.limits);
            return (store, Some(instance), served);
        }
        let permit = self.env.admission.admit(&self.env.name).await;
        let mut store = sandbox::store(self.entry.engine(), self.env.clone(), origin, &self.limits);
        store.data_mut().permit = Some(permit);
        (store, None, 0)
    }

    /// Keeps an instance that answered for later calls, while its quota lasts.
    fn checkin(&self, store: Store<HostState>, instance: Instance, served: u32) {
        let served = served + 1;
        if self.reuse.is_some_and(|quota| served < quota) {
            self.lock_warm().push(Warm {
                store,
                instance,
                served,
                idle_since: Instant::now(),
            });
        }
    }

    /// A new instance of the component in `store`.
    async fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Instance> {
        self.instances_created.inc();
        self.used.store(true, Ordering::Relaxed);
        Ok(match &self.entry {
            Entry::Handler(pre) => Instance::Handler(pre.instantiate_async(store).await?),
            Entry::Batch { pre, .. } => Instance::Batch(pre.instantiate_async(store).await?),
        })
    }

    /// Drops the warm instances unused for `idle` or longer, giving their memory back (to
    /// the instance pool and, past its keep-resident sizes, the system); returns how many.
    pub fn trim_idle(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let expired: Vec<Warm> = {
            let mut warm = self.lock_warm();
            let (expired, kept) = (warm.drain(..)).partition(|w| now - w.idle_since >= idle);
            *warm = kept;
            expired
        };
        // Dropped outside the lock: freeing a store returns its pool slot.
        expired.len()
    }

    /// Warm instances kept now.
    pub fn warm(&self) -> usize {
        self.lock_warm().len()
    }

    fn lock_warm(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        // A panic while holding the lock cannot leave the Vec inconsistent: use it anyway.
        self.warm
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Milliseconds since the first time this was asked: a clock an atomic can hold.
fn millis_since_epoch() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The outcomes of a batch call for `n` messages: the handler's dispositions one for one, or
/// the same failure for each when the call failed or answered for another number.
fn batch_outcomes(n: usize, result: Result<Vec<Outcome>, Failure>) -> Vec<Outcome> {
    match result {
        Ok(outcomes) if outcomes.len() == n => outcomes,
        Ok(outcomes) => {
            let failure = Failure::Trap(format!(
                "handle-batch returned {} dispositions for {n} messages",
                outcomes.len()
            ));
            vec![Outcome::Failed(failure); n]
        }
        Err(failure) => vec![Outcome::Failed(failure); n],
    }
}

impl From<HandlerPre<HostState>> for Entry {
    fn from(pre: HandlerPre<HostState>) -> Self {
        Entry::Handler(pre)
    }
}

/// What a call for `msg` works on: its stream position, and its trace (the exported span's
/// when there is one, else the message's `traceparent`).
fn origin_of(msg: &Message) -> Origin {
    let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    Origin::Message {
        stream: msg.stream.clone(),
        seq: msg.stream_seq,
        delivered: msg.delivered,
        traceparent: telemetry::current_traceparent().or_else(|| trace::find(headers)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_number_of_dispositions_fails_every_message() {
        let two = vec![Outcome::Ack, Outcome::Ack];
        assert_eq!(batch_outcomes(2, Ok(two.clone())), two);
        let wrong = batch_outcomes(3, Ok(two));
        assert_eq!(wrong.len(), 3);
        assert!(wrong.iter().all(|o| matches!(o,
            Outcome::Failed(Failure::Trap(why)) if why == "handle-batch returned 2 dispositions for 3 messages")));
        let failed = batch_outcomes(2, Err(Failure::Timeout(Duration::from_secs(1))));
        assert_eq!(
            failed,
            vec![Outcome::Failed(Failure::Timeout(Duration::from_secs(1))); 2]
        );
    }
}
