//! The body of an HTTP publisher's response, streaming from the guest after it answered. Its
//! end waits for the call that writes it: a call that fails mid-stream (a trap, a timeout)
//! makes the body fail rather than end, so the client sees a broken response (an HTTP/1.1
//! chunked body without its last chunk) instead of a short one that looks whole, and the host
//! logs a warning.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::sandbox::{ComponentEnv, Failure};

/// A guest's response body, ending with its call.
pub struct GuestBody {
    inner: HyperOutgoingBody,
    /// The call writing the body; `None` once its result is known.
    call: Option<JoinHandle<Result<(), Failure>>>,
    env: Arc<ComponentEnv>,
}

impl GuestBody {
    /// `inner`, written by `call` of the component `env` describes.
    pub fn new(
        inner: HyperOutgoingBody,
        call: JoinHandle<Result<(), Failure>>,
        env: Arc<ComponentEnv>,
    ) -> Self {
        GuestBody {
            inner,
            call: Some(call),
            env,
        }
    }

    /// Logs that the body broke off, within the component's log budget.
    fn warn(&self, why: &str) {
        if self.env.host_log.admit(&self.env.name) {
            let publisher = &*self.env.name;
            tracing::warn!(
                publisher,
                why,
                "response body failed mid-stream; the client gets a broken response"
            );
        }
    }
}

impl Body for GuestBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Err(e)) => {
                self.warn(&e.to_string());
                return Poll::Ready(Some(Err(e)));
            }
            Some(frame) => return Poll::Ready(Some(frame)),
            None => {}
        }
        // The guest wrote its last byte: the body is whole only if its call succeeded.
        let Some(call) = self.call.as_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(Pin::new(call).poll(cx));
        self.call = None;
        let why = match result {
            Ok(Ok(())) => return Poll::Ready(None),
            Ok(Err(failure)) => failure.describe(),
            Err(join) => format!("the call panicked: {join}"),
        };
        self.warn(&why);
        let error = wasmtime_wasi_http::Error::InternalError(Some(why));
        Poll::Ready(Some(Err(error)))
    }

    fn is_end_stream(&self) -> bool {
        self.call.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
