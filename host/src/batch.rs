//! Gathering a batch handler's messages: each message's delivery joins the open batch; the
//! first one leads it, waiting until the batch is full or `max_wait` has passed, then makes
//! the one call for all of them and hands every other message its own outcome. Each message
//! keeps its own delivery (in-progress updates, ack, retries, dead letter), so a batch
//! changes only how many calls are made.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::bindings::Message;
use crate::dispatch::{Failure, Outcome};

/// The open batch of one handler, and its size and wait.
pub struct Gatherer {
    max: usize,
    max_wait: Duration,
    open: Mutex<Option<Arc<Batch>>>,
}

/// One batch being gathered: its messages (the leader's first) and the outcome channels of
/// all but the leader's.
struct Batch {
    members: Mutex<Members>,
    /// Told when the batch is full.
    full: Notify,
}

#[derive(Default)]
struct Members {
    messages: Vec<Message>,
    answers: Vec<oneshot::Sender<Outcome>>,
}

impl Gatherer {
    /// Batches of up to `max` messages, called at most `max_wait` after their first arrived.
    pub fn new(max: usize, max_wait: Duration) -> Self {
        Gatherer {
            max: max.max(1),
            max_wait,
            open: Mutex::new(None),
        }
    }

    /// `msg`'s outcome, from the call `run` makes for the batch it joins (`run` gets the
    /// batch's messages in arrival order and returns one outcome per message, in order).
    pub async fn join<F, Fut>(&self, msg: &Message, run: F) -> Outcome
    where
        F: FnOnce(Vec<Message>) -> Fut,
        Fut: Future<Output = Vec<Outcome>>,
    {
        let (led, answer) = self.enter(msg);
        let Some(batch) = led else {
            return answer.await.unwrap_or_else(|_| {
                Outcome::Failed(Failure::HostCapacity(
                    "the call for its batch was abandoned (the host is stopping); retried".into(),
                ))
            });
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
        own.unwrap_or(Outcome::Failed(Failure::Trap(
            "no outcome for the message".into(),
        )))
    }

    /// Adds `msg` to the open batch, or opens one it leads (then returned).
    fn enter(&self, msg: &Message) -> (Option<Arc<Batch>>, oneshot::Receiver<Outcome>) {
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
    fn close(&self, batch: &Arc<Batch>) {
        let mut open = lock(&self.open);
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, batch)) {
            *open = None;
        }
    }
}

/// The outcomes of a batch call for `n` messages: the handler's dispositions one for one, or
/// the same failure for each when the call failed or answered for another number.
pub fn outcomes(n: usize, result: Result<Vec<Outcome>, Failure>) -> Vec<Outcome> {
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

    /// A call that naks each message with its sequence as the delay, recording batch sizes.
    fn call(
        sizes: Arc<Mutex<Vec<usize>>>,
    ) -> impl Fn(Vec<Message>) -> std::future::Ready<Vec<Outcome>> {
        move |batch: Vec<Message>| {
            lock(&sizes).push(batch.len());
            let outcomes = (batch.iter())
                .map(|m| Outcome::Nak(Some(Duration::from_millis(m.stream_seq))))
                .collect();
            std::future::ready(outcomes)
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
            assert_eq!(
                outcomes.last(),
                Some(&Outcome::Nak(Some(Duration::from_millis(seq))))
            );
        }
        // The seventh waits out max_wait alone (the clock is paused: it advances at once).
        assert_eq!(
            joins.into_iter().last().unwrap().await.unwrap(),
            Outcome::Nak(Some(Duration::from_millis(7)))
        );
        assert_eq!(*lock(&sizes), [3, 3, 1]);
    }

    #[test]
    fn a_wrong_number_of_dispositions_fails_every_message() {
        let two = vec![Outcome::Ack, Outcome::Ack];
        assert_eq!(outcomes(2, Ok(two.clone())), two);
        let wrong = outcomes(3, Ok(two));
        assert_eq!(wrong.len(), 3);
        assert!(wrong.iter().all(|o| matches!(o,
            Outcome::Failed(Failure::Trap(why)) if why == "handle-batch returned 2 dispositions for 3 messages")));
        let failed = outcomes(2, Err(Failure::Timeout(Duration::from_secs(1))));
        assert_eq!(
            failed,
            vec![Outcome::Failed(Failure::Timeout(Duration::from_secs(1))); 2]
        );
    }
}
