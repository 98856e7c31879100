//! One message through a handler: a fresh sandbox ([`sandbox::store`]) with an instance from
//! the shared `InstancePre`, the call made, and its result as an [`Outcome`].

use std::sync::Arc;
use std::time::Duration;

use crate::bindings::{Disposition, HandlerPre, Message};
use crate::config::Limits;
use crate::imports::{ComponentEnv, HostState, Origin};
use crate::sandbox;
pub use crate::sandbox::Failure;

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

/// Runs one handler's calls.
pub struct Dispatcher {
    pre: HandlerPre<HostState>,
    env: Arc<ComponentEnv>,
    limits: Limits,
}

impl Dispatcher {
    /// A dispatcher for a loaded component with its environment and limits.
    pub fn new(pre: HandlerPre<HostState>, env: Arc<ComponentEnv>, limits: Limits) -> Self {
        Dispatcher { pre, env, limits }
    }

    /// Calls `handle` on `msg` in a fresh sandbox.
    pub async fn call(&self, msg: &Message) -> Outcome {
        let origin = Origin::Message {
            stream: msg.stream.clone(),
            seq: msg.stream_seq,
        };
        let mut store = sandbox::store(self.pre.engine(), self.env.clone(), origin, &self.limits);
        let call = async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            instance.call_handle(&mut store, msg).await
        };
        match sandbox::within_ceiling(&self.limits, call).await {
            Ok(Disposition::Ack) => Outcome::Ack,
            Ok(Disposition::Nak(delay)) => Outcome::Nak(delay.map(Duration::from_millis)),
            Ok(Disposition::Term(reason)) => Outcome::Term(reason),
            Err(error) => {
                let interrupted = store.data_mut().interrupted.take();
                Outcome::Failed(sandbox::classify(error.as_ref(), interrupted, &self.limits))
            }
        }
    }
}
