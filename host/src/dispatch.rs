//! One message through a handler: a fresh store and instance from the shared `InstancePre`,
//! the memory cap and the deadline applied, the call made, and the result classified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::{Disposition, HandlerPre, Message};
use crate::config::Limits;
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
    /// The call ran past its deadline and was interrupted.
    Timeout(Duration),
    /// The guest tried to grow memory past its cap.
    Memory(String),
}

impl Failure {
    /// A one-line description, used as a dead-letter reason.
    pub fn describe(&self) -> String {
        match self {
            Failure::Trap(what) => format!("trap: {what}"),
            Failure::Timeout(limit) => format!("timeout: interrupted after {limit:?}"),
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

    /// The handler's environment.
    pub fn env(&self) -> &Arc<HandlerEnv> {
        &self.env
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
        // Every epoch tick the guest yields to other tasks; past the deadline it is interrupted.
        let timeout = self.limits.timeout;
        let deadline = Instant::now() + timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
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
            Ok(Err(error)) => Outcome::Failed(classify(&error, timeout)),
        }
    }
}

/// Names what made a call fail.
pub fn classify(error: &wasmtime::Error, timeout: Duration) -> Failure {
    if let Some(memory) = error.downcast_ref::<MemoryLimitExceeded>() {
        return Failure::Memory(memory.to_string());
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout(timeout),
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
        assert_eq!(
            classify(&wasmtime::Error::new(Trap::Interrupt), limit),
            Failure::Timeout(limit)
        );
        let memory = wasmtime::Error::new(MemoryLimitExceeded {
            desired: 10,
            limit: 5,
        });
        assert!(
            matches!(classify(&memory, limit), Failure::Memory(m) if m.contains("memory limit exceeded"))
        );
        let unreachable = wasmtime::Error::new(Trap::UnreachableCodeReached);
        assert!(
            matches!(classify(&unreachable, limit), Failure::Trap(t) if t.contains("unreachable"))
        );
    }
}
