//! Fair shares of the CPU between tenants. Most calls finish within an epoch tick (~10 ms of
//! guest code) and never meet this module. A call still running at a tick is a long one: at
//! each tick it gives up its turn and waits for another ([`Share::turn`]). Turns go by
//! weighted fair queueing: the waiting tenant that has had the fewest turns for its weight
//! (`cpu_share`) goes first. At most `slots` long calls hold a turn at once (one per core), so
//! the others wait off the async runtime's run queue, and a short call of any tenant starts
//! within about a tick however many long ones are queued.
//!
//! A turn is let go at the call's next tick, when the call waits on the host (a publish, a
//! sleep) and when it ends (see `sandbox::run`), so a call holds one only while it computes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The host-wide turn keeper.
pub struct Gate {
    slots: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Turns held now.
    held: usize,
    /// Each tenant's turns so far divided by its weight, and its calls waiting for one.
    tenants: HashMap<u32, Queue>,
    /// The virtual time of the last turn handed out: a tenant that starts waiting catches up
    /// to it, so time spent idle is not saved up as credit.
    clock: f64,
}

struct Queue {
    weight: f64,
    used: f64,
    waiting: VecDeque<oneshot::Sender<()>>,
}

impl Gate {
    /// A gate letting `slots` long calls compute at once (at least one).
    pub fn new(slots: usize) -> Arc<Gate> {
        Arc::new(Gate {
            slots: slots.max(1),
            state: Mutex::default(),
        })
    }

    /// A gate with a slot per core.
    pub fn per_core() -> Arc<Gate> {
        Gate::new(std::thread::available_parallelism().map_or(2, usize::from))
    }

    /// A tenant's handle on the gate, `id` unique per tenant, `weight` its `cpu_share`.
    pub fn share(self: &Arc<Gate>, id: u32, weight: u32) -> Share {
        self.lock().tenants.entry(id).or_insert_with(|| Queue {
            weight: f64::from(weight.max(1)),
            used: 0.0,
            waiting: VecDeque::new(),
        });
        Share {
            gate: self.clone(),
            id,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a turn go and hands it to the next waiting call, if any.
    fn release(&self) {
        let mut state = self.lock();
        state.held -= 1;
        state.grant_next(self.slots);
    }
}

impl State {
    /// Hands free turns to waiting calls, the tenant with the least use for its weight first.
    fn grant_next(&mut self, slots: usize) {
        while self.held < slots {
            let next = (self.tenants.iter())
                .filter(|(_, q)| !q.waiting.is_empty())
                .min_by(|(_, a), (_, b)| a.used.total_cmp(&b.used))
                .map(|(id, _)| *id);
            let Some(id) = next else { return };
            let queue = self.tenants.get_mut(&id).expect("found above");
            let waiter = queue.waiting.pop_front().expect("not empty");
            // A waiter gone (its call ended or was cancelled) costs nothing.
            if waiter.send(()).is_ok() {
                self.clock = self.clock.max(queue.used);
                queue.used += 1.0 / queue.weight;
                self.held += 1;
            }
        }
    }
}

/// A tenant's handle on the [`Gate`].
#[derive(Clone)]
pub struct Share {
    gate: Arc<Gate>,
    id: u32,
}

impl Share {
    /// Waits for a turn to compute, behind the tenants that have had less than their share.
    /// Always yields to the runtime first, so other tasks run even when a turn is free.
    pub async fn turn(&self) -> Turn {
        tokio::task::yield_now().await;
        let mut waiting = Waiting {
            receiver: Some(self.enqueue()),
            gate: &self.gate,
        };
        let granted = waiting.receiver.as_mut().expect("set above").await;
        waiting.receiver = None;
        debug_assert!(granted.is_ok(), "the gate keeps the sender until it grants");
        Turn {
            gate: self.gate.clone(),
        }
    }
}

impl Share {
    /// Joins the tenant's queue (a tenant that was not waiting catches up with the clock);
    /// the receiver hears when the turn is granted.
    fn enqueue(&self) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        let mut state = self.gate.lock();
        let clock = state.clock;
        let queue = state
            .tenants
            .get_mut(&self.id)
            .expect("registered by share()");
        if queue.waiting.is_empty() {
            queue.used = queue.used.max(clock);
        }
        queue.waiting.push_back(sender);
        state.grant_next(self.gate.slots);
        receiver
    }
}

/// A call waiting for a turn; if it is dropped after the turn was granted, the turn goes on.
struct Waiting<'a> {
    receiver: Option<oneshot::Receiver<()>>,
    gate: &'a Gate,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                self.gate.release();
            }
        }
    }
}

/// A turn to compute; let go when dropped.
pub struct Turn {
    gate: Arc<Gate>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// Where a call keeps its turn between the epoch callback that gets it and the moment it
/// lets it go.
pub type TurnCell = Arc<Mutex<Option<Turn>>>;

/// Lets go of the turn kept in `cell`, if any.
pub fn let_go(cell: &TurnCell) {
    let turn = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(turn);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first `grants` turns handed out, one slot, while tenants weighted `weights` both
    /// have plenty of calls waiting: how many each got.
    fn split(weights: (u32, u32), grants: usize) -> (usize, usize) {
        let gate = Gate::new(1);
        let (a, b) = (gate.share(1, weights.0), gate.share(2, weights.1));
        let mut a_waiting: Vec<_> = (0..grants).map(|_| a.enqueue()).collect();
        let mut b_waiting: Vec<_> = (0..grants).map(|_| b.enqueue()).collect();
        let mut counts = (0, 0);
        for _ in 0..grants {
            let granted = |waiting: &mut Vec<oneshot::Receiver<()>>| {
                let i = waiting.iter_mut().position(|r| r.try_recv().is_ok());
                i.map(|i| waiting.remove(i)).is_some()
            };
            if granted(&mut a_waiting) {
                counts.0 += 1;
            } else if granted(&mut b_waiting) {
                counts.1 += 1;
            }
            gate.release();
        }
        counts
    }

    #[test]
    fn turns_follow_the_weights() {
        let (a, b) = split((1, 1), 1000);
        assert!(a.abs_diff(b) <= 1, "equal weights: {a} vs {b}");
        let (a, b) = split((3, 1), 1000);
        assert!(a.abs_diff(750) <= 1, "3:1 weights: {a} vs {b}");
    }

    #[tokio::test]
    async fn a_tenant_arriving_late_is_not_owed_the_time_it_was_idle() {
        let gate = Gate::new(1);
        let (a, b) = (gate.share(1, 1), gate.share(2, 1));
        for _ in 0..100 {
            drop(a.turn().await);
        }
        // B idled while A had 100 turns: it starts level with A rather than 100 turns
        // behind (which would let it shut A out for 100 turns).
        drop(b.turn().await);
        let state = gate.lock();
        let used = |id| state.tenants[&id].used;
        assert!(
            (used(1) - used(2)).abs() <= 1.0,
            "{} vs {}",
            used(1),
            used(2)
        );
    }

    #[tokio::test]
    async fn a_cancelled_wait_does_not_lose_the_turn() {
        let gate = Gate::new(1);
        let share = gate.share(1, 1);
        let held = share.turn().await;
        let waiter = tokio::spawn({
            let share = share.clone();
            async move { share.turn().await }
        });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        // The aborted waiter's turn (if it was granted) came back: a new one is free.
        let again = tokio::time::timeout(std::time::Duration::from_secs(1), share.turn()).await;
        assert!(again.is_ok(), "the turn was lost");
    }
}
