//! One message through a handler: a fresh store and instance from the shared `InstancePre`,
//! the memory cap and the deadline applied, the call made, and the result classified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::{Disposition, HandlerPre, Message};
use crate::config::Limits;
use crate::engine::EPOCH_TICK;
use crate::imports::{HandlerEnv, HostState, Origin};
use crate::limiter::MemoryLimitExceeded;

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

/// A guest failure. None of them affects the host or other calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// A trap or panic in the guest, with wasmtime's description.
    Trap(String),
    /// The guest used more CPU time than allowed and was interrupted.
    CpuTime(Duration),
    /// The call ran past its wall-clock ceiling and was interrupted.
    Timeout(Duration),
    /// The guest tried to grow memory past its cap.
    Memory(String),
}

impl Failure {
    /// A one-line description, used as a dead-letter reason.
    pub fn describe(&self) -> String {
        match self {
            Failure::Trap(what) => format!("trap: {what}"),
            Failure::CpuTime(limit) => format!("timeout: used more than {limit:?} of CPU time"),
            Failure::Timeout(limit) => format!("timeout: still running after {limit:?}"),
            Failure::Memory(what) => what.clone(),
        }
    }
}

/// Runs one handler's calls.
pub struct Dispatcher {
    pre: HandlerPre<HostState>,
    env: Arc<HandlerEnv>,
    limits: Limits,
}

impl Dispatcher {
    /// A dispatcher for a loaded component with its environment and limits.
    pub fn new(pre: HandlerPre<HostState>, env: Arc<HandlerEnv>, limits: Limits) -> Self {
        Dispatcher { pre, env, limits }
    }

    /// Calls `handle` on `msg` in a fresh sandbox.
    pub async fn call(&self, msg: &Message) -> Outcome {
        let origin = Origin {
            stream: msg.stream.clone(),
            seq: msg.stream_seq,
        };
        let state = HostState::new(
            self.env.clone(),
            origin,
            self.limits.memory.as_u64() as usize,
        );
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        // The callback runs at each epoch tick the guest spends executing (never while it is
        // blocked in a host call): it counts CPU time, yields to other tasks, and interrupts
        // the guest past either limit.
        let Limits {
            cpu_time, timeout, ..
        } = self.limits;
        let deadline = Instant::now() + timeout;
        let mut cpu_used = Duration::ZERO;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut store| {
            cpu_used += EPOCH_TICK;
            let over = if Instant::now() >= deadline {
                Some(Failure::Timeout(timeout))
            } else if cpu_used > cpu_time {
                Some(Failure::CpuTime(cpu_time))
            } else {
                None
            };
            match over {
                Some(failure) => {
                    store.data_mut().interrupted = Some(failure);
                    Ok(UpdateDeadline::Interrupt)
                }
                None => Ok(UpdateDeadline::Yield(1)),
            }
        });
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance.call_handle(&mut store, msg).await
        };
        // The epoch deadline stops guest code; this also bounds time spent blocked in host calls.
        match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
            Err(_) => Outcome::Failed(Failure::Timeout(timeout)),
            Ok(Ok(disposition)) => match disposition {
                Disposition::Ack => Outcome::Ack,
                Disposition::Nak(delay) => Outcome::Nak(delay.map(Duration::from_millis)),
                Disposition::Term(reason) => Outcome::Term(reason),
            },
            Ok(Err(error)) => {
                let interrupted = store.data_mut().interrupted.take();
                Outcome::Failed(classify(&error, interrupted))
            }
        }
    }
}

/// Names what made a call fail; `interrupted` is why the host interrupted it, if it did.
pub fn classify(error: &wasmtime::Error, interrupted: Option<Failure>) -> Failure {
    if let Some(memory) = error.downcast_ref::<MemoryLimitExceeded>() {
        return Failure::Memory(memory.to_string());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => interrupted.unwrap_or(Failure::Trap("interrupted".to_owned())),
        Some(trap) => Failure::Trap(trap.to_string()),
        None => Failure::Trap(
            format!("{error:#}")
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_interrupts_memory_and_other_traps() {
        let limit = Duration::from_secs(1);
        let interrupt = wasmtime::Error::new(Trap::Interrupt);
        let cpu = classify(&interrupt, Some(Failure::CpuTime(limit)));
        assert_eq!(cpu, Failure::CpuTime(limit));
        let wall = classify(&interrupt, Some(Failure::Timeout(limit)));
        assert_eq!(wall, Failure::Timeout(limit));
        let memory = wasmtime::Error::new(MemoryLimitExceeded {
            desired: 10,
            limit: 5,
        });
        let failure = classify(&memory, None);
        assert!(matches!(failure, Failure::Memory(m) if m.contains("memory limit exceeded")));
        let unreachable = wasmtime::Error::new(Trap::UnreachableCodeReached);
        let failure = classify(&unreachable, None);
        assert!(matches!(failure, Failure::Trap(t) if t.contains("unreachable")));
    }
}
