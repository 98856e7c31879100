//! Guest stdout and stderr, line by line into the host log, tagged with the handler. Output
//! past a per-call budget is dropped so a chatty guest cannot flood the log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::origin::Origin;

/// Bytes of output kept per stream per call.
const BUDGET: usize = 64 * 1024;

/// A `StdoutStream` whose lines become `tracing` events.
#[derive(Clone)]
pub struct GuestOutput {
    handler: Arc<str>,
    stream: &'static str,
    /// Bytes written in the current call, shared by every handle the guest opens on it.
    used: Arc<AtomicUsize>,
    /// What the current call works on: its lines are logged in that call's span.
    origin: Arc<Mutex<Origin>>,
}

impl GuestOutput {
    /// Output of `handler`'s `stream` (`"stdout"` or `"stderr"`).
    pub fn new(handler: Arc<str>, stream: &'static str, origin: Arc<Mutex<Origin>>) -> Self {
        GuestOutput {
            handler,
            stream,
            used: Arc::default(),
            origin,
        }
    }

    /// Starts a new call's budget (a reused instance keeps its stream handles open).
    pub fn begin_call(&self) {
        self.used.store(0, Ordering::Relaxed);
    }

    /// The current call's span.
    fn span(&self) -> tracing::Span {
        let origin = self.origin.lock().unwrap_or_else(|e| e.into_inner());
        origin.span(&self.handler)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            out: self.clone(),
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI 0.3 guests use this; jetwasm links WASI 0.2.
        Box::new(tokio::io::sink())
    }
}

struct LineWriter {
    out: GuestOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let output = self.out.stream;
        self.out
            .span()
            .in_scope(|| tracing::info!(output, "guest: {text}"));
        self.line.clear();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let before = self.out.used.fetch_add(bytes.len(), Ordering::Relaxed);
        let keep = bytes.len().min(BUDGET.saturating_sub(before));
        for &b in &bytes[..keep] {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
            }
        }
        if keep < bytes.len() && before <= BUDGET {
            let output = self.out.stream;
            self.out.span().in_scope(|| {
                tracing::warn!(
                    output,
                    "guest output past {BUDGET} bytes in one call is dropped"
                )
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(BUDGET)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_per_call_even_on_a_stream_kept_open() {
        let origin = Origin::Tick { due_ms: 0 };
        let out = GuestOutput::new("h".into(), "stdout", Arc::new(Mutex::new(origin)));
        let mut writer = LineWriter {
            out: out.clone(),
            line: Vec::new(),
        };
        writer.write(Bytes::from(vec![b'x'; BUDGET + 100])).unwrap();
        assert_eq!(writer.line.len(), BUDGET, "past the budget is dropped");
        writer.write(Bytes::from_static(b"more")).unwrap();
        assert_eq!(writer.line.len(), BUDGET);

        // A reused instance's next call writes on the same handle, with a new budget.
        out.begin_call();
        writer.write(Bytes::from_static(b"next call")).unwrap();
        assert_eq!(writer.line.len(), BUDGET + "next call".len());
    }
}
