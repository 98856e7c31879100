//! Guest stdout and stderr, line by line into the host log, tagged with the handler. Output
//! past a per-call budget is dropped so a chatty guest cannot flood the log.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of output kept per stream per call.
const BUDGET: usize = 64 * 1024;

/// A `StdoutStream` whose lines become `tracing` events.
#[derive(Clone)]
pub struct GuestOutput {
    handler: Arc<str>,
    stream: &'static str,
}

impl GuestOutput {
    /// Output of `handler`'s `stream` (`"stdout"` or `"stderr"`).
    pub fn new(handler: Arc<str>, stream: &'static str) -> Self {
        GuestOutput { handler, stream }
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
            used: 0,
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
    used: usize,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(handler = %self.out.handler, stream = self.out.stream, "guest: {text}");
        self.line.clear();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let keep = bytes.len().min(BUDGET.saturating_sub(self.used));
        self.used += bytes.len();
        for &b in &bytes[..keep] {
            if b == b'\n' {
                self.emit();
            } else {
                self.line.push(b);
            }
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
        if self.used > BUDGET {
            tracing::warn!(handler = %self.out.handler, stream = self.out.stream, bytes = self.used - BUDGET, "guest output dropped past the budget");
        }
    }
}
