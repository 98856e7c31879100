//! Admission to the instance pool: the host's `[runtime] max_instances` instances are shared
//! by every component, and a call takes one before its instance exists (a reused instance
//! keeps its own while it waits for the next message). When none is free, the calls wait,
//! and the freed instances go to the waiting components in turn, one each, so a component
//! with a thousand calls queued delays a quiet one by at most one call per busy component.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::metrics::PoolMetrics;

/// The pool's instances and who waits for them. Cloned handles share it.
#[derive(Clone)]
pub struct Admission {
    state: Arc<Mutex<State>>,
}

struct State {
    free: usize,
    /// Instances in use and calls waiting, when exported.
    gauges: Option<PoolMetrics>,
    /// The components with calls waiting, in the order their turns come; each with its calls
    /// in arrival order.
    waiting: VecDeque<(Arc<str>, VecDeque<oneshot::Sender<Permit>>)>,
}

/// One instance of the pool, held until dropped.
pub struct Permit {
    /// `None` only in a permit that was never handed out.
    state: Option<Arc<Mutex<State>>>,
}

impl Admission {
    /// A pool of `instances`.
    pub fn new(instances: usize) -> Self {
        Admission {
            state: Arc::new(Mutex::new(State {
                free: instances,
                gauges: None,
                waiting: VecDeque::new(),
            })),
        }
    }

    /// A pool of `instances` whose use `gauges` show.
    pub fn with_gauges(instances: usize, gauges: PoolMetrics) -> Self {
        let admission = Admission::new(instances);
        lock(&admission.state).gauges = Some(gauges);
        admission
    }

    /// An instance for a call of `component`: at once when one is free and nobody waits,
    /// else when its turn comes.
    pub async fn admit(&self, component: &Arc<str>) -> Permit {
        let waiting = {
            let mut state = lock(&self.state);
            if state.free > 0 && state.waiting.is_empty() {
                state.free -= 1;
                if let Some(gauges) = &state.gauges {
                    gauges.in_use.inc();
                }
                return Permit {
                    state: Some(self.state.clone()),
                };
            }
            let (tell, told) = oneshot::channel();
            match state.waiting.iter_mut().find(|(c, _)| c == component) {
                Some((_, calls)) => calls.push_back(tell),
                None => (state.waiting).push_back((component.clone(), VecDeque::from([tell]))),
            }
            if let Some(gauges) = &state.gauges {
                gauges.waiting.inc();
            }
            told
        };
        // The sender is only dropped with a permit sent: a permit is always there.
        waiting
            .await
            .expect("a waiting call is always given its permit")
    }

    /// Instances free now.
    pub fn free(&self) -> usize {
        lock(&self.state).free
    }

    /// Calls waiting for an instance now.
    pub fn waiting(&self) -> usize {
        let state = lock(&self.state);
        state.waiting.iter().map(|(_, calls)| calls.len()).sum()
    }
}

impl Drop for Permit {
    /// Hands the instance to the next component in turn, or frees it.
    fn drop(&mut self) {
        let Some(shared) = self.state.take() else {
            return;
        };
        let mut state = lock(&shared);
        while let Some((component, mut calls)) = state.waiting.pop_front() {
            while let Some(call) = calls.pop_front() {
                if let Some(gauges) = &state.gauges {
                    gauges.waiting.dec();
                }
                let permit = Permit {
                    state: Some(shared.clone()),
                };
                match call.send(permit) {
                    Ok(()) => {
                        if !calls.is_empty() {
                            state.waiting.push_back((component, calls));
                        }
                        return;
                    }
                    // The call gave up waiting: the permit was never held; the next call.
                    Err(mut unsent) => unsent.state = None,
                }
            }
        }
        state.free += 1;
        if let Some(gauges) = &state.gauges {
            gauges.in_use.dec();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_free_instance_is_taken_at_once_and_given_back_on_drop() {
        let admission = Admission::new(2);
        let a: Arc<str> = "a".into();
        let one = admission.admit(&a).await;
        let two = admission.admit(&a).await;
        assert_eq!(admission.free(), 0);
        drop(one);
        assert_eq!(admission.free(), 1);
        drop(two);
        assert_eq!(admission.free(), 2);
    }

    #[tokio::test]
    async fn waiting_components_take_turns_whatever_their_queues() {
        let admission = Admission::new(1);
        let (busy, quiet): (Arc<str>, Arc<str>) = ("busy".into(), "quiet".into());
        let held = admission.admit(&busy).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut calls = Vec::new();
        // The busy component queues five calls, then the quiet one queues one.
        for (n, component) in (0..5).map(|n| (n, &busy)).chain([(9, &quiet)]) {
            let (admission, component, order) =
                (admission.clone(), component.clone(), order.clone());
            calls.push(tokio::spawn(async move {
                let permit = admission.admit(&component).await;
                order.lock().unwrap().push(format!("{component}{n}"));
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(admission.waiting(), 6);
        drop(held);
        for call in calls {
            call.await.unwrap();
        }
        // The quiet call goes second, not sixth.
        assert_eq!(
            *order.lock().unwrap(),
            ["busy0", "quiet9", "busy1", "busy2", "busy3", "busy4"]
        );
        assert_eq!(admission.free(), 1);
    }

    #[tokio::test]
    async fn a_call_that_stops_waiting_passes_its_turn_on() {
        let admission = Admission::new(1);
        let a: Arc<str> = "a".into();
        let held = admission.admit(&a).await;
        let gone = {
            let admission = admission.clone();
            let a = a.clone();
            tokio::spawn(async move { admission.admit(&a).await })
        };
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        let next = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit(&"b".into()).await })
        };
        tokio::task::yield_now().await;
        drop(held);
        drop(next.await.unwrap());
        assert_eq!(admission.free(), 1, "no instance lost");
    }
}
