//! Gathering a batch handler's messages: each message's delivery joins the open batch; the
//! first one leads it, waiting until the batch is full or `max_wait` has passed, then makes
//! the one call for all of them and hands every other message its own outcome. Each message
//! keeps its own delivery (in-progress updates, ack, retries, dead letter), so a batch
//! changes only how many calls are made. Generic over the outcome: the `dispatch` module
//! makes the call and says what a failed one means.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::bindings::Message;

/// The open batch of one handler, and its size and wait; `T` is a message's outcome.
pub struct Gatherer<T> {
    max: usize,
    max_wait: Duration,
    open: Mutex<Option<Arc<Batch<T>>>>,
}

/// One batch being gathered: its messages (the leader's first) and the outcome channels of
/// all but the leader's.
struct Batch<T> {
    members: Mutex<Members<T>>,
    /// Told when the batch is full.
    full: Notify,
}

struct Members<T> {
    messages: Vec<Message>,
    answers: Vec<oneshot::Sender<T>>,
}

impl<T> Default for Members<T> {
    fn default() -> Self {
        Members {
            messages: Vec::new(),
            answers: Vec::new(),
        }
    }
}

impl<T> Gatherer<T> {
    /// Batches of up to `max` messages, called at most `max_wait` after their first arrived.
    pub fn new(max: usize, max_wait: Duration) -> Self {
        Gatherer {
            max: max.max(1),
            max_wait,
            open: Mutex::new(None),
        }
    }

    /// A gatherer with the same settings and no batch open.
    pub fn empty_like(&self) -> Self {
        Gatherer::new(self.max, self.max_wait)
    }

    /// `msg`'s outcome, from the call `run` makes for the batch it joins (`run` gets the
    /// batch's messages in arrival order and returns one outcome per message, in order).
    /// `None` when the call was abandoned (the host stopping) or gave no outcome for it.
    pub async fn join<F, Fut>(&self, msg: &Message, run: F) -> Option<T>
    where
        F: FnOnce(Vec<Message>) -> Fut,
        Fut: Future<Output = Vec<T>>,
    {
        let (led, answer) = self.enter(msg);
        let Some(batch) = led else {
            return answer.await.ok();
        };
        if self.max > 1 {
            tokio::select! {
                () = tokio::time::sleep(self.max_wait) => {}
                () = batch.full.notified() => {}
            }
        }
        self.close(&batch);
        let members = std::mem::take(&mut *lock(&batch.members));
        let expected = members.messages.len();
        let mut outcomes = run(members.messages).await.into_iter();
        let own = outcomes.next();
        let mut answers = members.answers.into_iter();
        for outcome in outcomes.by_ref() {
            if let Some(answer) = answers.next() {
                let _ = answer.send(outcome);
            }
        }
        debug_assert!(
            answers.next().is_none(),
            "{expected} messages, fewer outcomes"
        );
        own
    }

    /// Adds `msg` to the open batch, or opens one it leads (then returned).
    fn enter(&self, msg: &Message) -> (Option<Arc<Batch<T>>>, oneshot::Receiver<T>) {
        let (tell, answer) = oneshot::channel();
        let mut open = lock(&self.open);
        if let Some(batch) = open.as_ref() {
            let mut members = lock(&batch.members);
            members.messages.push(msg.clone());
            members.answers.push(tell);
            if members.messages.len() >= self.max {
                batch.full.notify_one();
                drop(members);
                *open = None;
            }
            return (None, answer);
        }
        let batch = Arc::new(Batch {
            members: Mutex::new(Members {
                messages: vec![msg.clone()],
                answers: Vec::new(),
            }),
            full: Notify::new(),
        });
        if self.max > 1 {
            *open = Some(batch.clone());
        }
        (Some(batch), answer)
    }

    /// Closes `batch` to newcomers, if it is still the open one.
    fn close(&self, batch: &Arc<Batch<T>>) {
        let mut open = lock(&self.open);
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, batch)) {
            *open = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Message {
        Message {
            subject: "s".into(),
            payload: Vec::new(),
            headers: Vec::new(),
            stream: "S".into(),
            consumer: "c".into(),
            stream_seq: seq,
            consumer_seq: seq,
            delivered: 1,
            published_ms: 0,
            pending: 0,
        }
    }

    /// A call answering each message with its sequence, recording batch sizes.
    fn call(
        sizes: Arc<Mutex<Vec<usize>>>,
    ) -> impl Fn(Vec<Message>) -> std::future::Ready<Vec<u64>> {
        move |batch: Vec<Message>| {
            lock(&sizes).push(batch.len());
            std::future::ready(batch.iter().map(|m| m.stream_seq).collect())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_called_at_once_and_each_message_gets_its_own_outcome() {
        let gatherer = Arc::new(Gatherer::new(3, Duration::from_secs(60)));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let mut joins: Vec<_> = (1..=7)
            .map(|seq| {
                let (gatherer, call) = (gatherer.clone(), call(sizes.clone()));
                tokio::spawn(async move { gatherer.join(&message(seq), call).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for (seq, join) in (1..=6).zip(joins.iter_mut()) {
            outcomes.push(join.await.unwrap());
            assert_eq!(outcomes.last(), Some(&Some(seq)));
        }
        // The seventh waits out max_wait alone (the clock is paused: it advances at once).
        assert_eq!(joins.into_iter().last().unwrap().await.unwrap(), Some(7));
        assert_eq!(*lock(&sizes), [3, 3, 1]);
    }
}
