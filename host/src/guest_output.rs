//! Guest stdout and stderr, line by line into the host log, tagged with the handler. Output
//! past a per-call budget is dropped so a chatty guest cannot flood the log. The start and
//! the end of what a call wrote to stderr are kept (bounded), so that a crash's reason can
//! carry the guest's own words: a Rust panic message, a Python traceback's last line, a JS
//! error, a Go panic, a C abort message.

use std::collections::VecDeque;
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
    /// The current call's first and last lines.
    kept: Arc<Mutex<Kept>>,
}

/// Lines kept from one call's output: the first [`KEPT_HEAD`] and the last [`KEPT_TAIL`]
/// non-empty lines, each cut at [`KEPT_LINE`] bytes.
#[derive(Debug, Default)]
struct Kept {
    head: Vec<String>,
    tail: VecDeque<String>,
    skipped: usize,
}

const KEPT_HEAD: usize = 3;
const KEPT_TAIL: usize = 5;
const KEPT_LINE: usize = 200;

impl Kept {
    fn push(&mut self, line: &str) {
        let line = line.trim_end();
        if line.trim().is_empty() {
            return;
        }
        let mut line = line.to_owned();
        if line.len() > KEPT_LINE {
            let cut = (0..=KEPT_LINE)
                .rev()
                .find(|&i| line.is_char_boundary(i))
                .unwrap_or(0);
            line.truncate(cut);
            line.push('…');
        }
        if self.head.len() < KEPT_HEAD {
            self.head.push(line);
            return;
        }
        self.tail.push_back(line);
        if self.tail.len() > KEPT_TAIL {
            self.tail.pop_front();
            self.skipped += 1;
        }
    }

    /// The kept lines on one line, ` | ` between them, `…` where lines were skipped.
    fn summary(&self) -> Option<String> {
        if self.head.is_empty() {
            return None;
        }
        let mut lines: Vec<&str> = self.head.iter().map(String::as_str).collect();
        if self.skipped > 0 {
            lines.push("…");
        }
        lines.extend(self.tail.iter().map(String::as_str));
        Some(lines.join(" | "))
    }
}

impl GuestOutput {
    /// Output of `handler`'s `stream` (`"stdout"` or `"stderr"`).
    pub fn new(handler: Arc<str>, stream: &'static str, origin: Arc<Mutex<Origin>>) -> Self {
        GuestOutput {
            handler,
            stream,
            used: Arc::default(),
            origin,
            kept: Arc::default(),
        }
    }

    /// Starts a new call's budget and kept lines (a reused instance keeps its stream handles
    /// open).
    pub fn begin_call(&self) {
        self.used.store(0, Ordering::Relaxed);
        *self.kept() = Kept::default();
    }

    /// The first and last lines the current call wrote, on one line, if any.
    pub fn kept_lines(&self) -> Option<String> {
        self.kept().summary()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
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
        self.out.kept().push(&text);
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
    fn a_call_keeps_its_first_and_last_lines_bounded() {
        let mut kept = Kept::default();
        assert_eq!(kept.summary(), None);
        kept.push("panic: crash requested by order o-1");
        kept.push("");
        kept.push("goroutine 1 [running]:");
        assert_eq!(
            kept.summary().unwrap(),
            "panic: crash requested by order o-1 | goroutine 1 [running]:"
        );
        for i in 0..10 {
            kept.push(&format!("frame {i}"));
        }
        assert_eq!(
            kept.summary().unwrap(),
            "panic: crash requested by order o-1 | goroutine 1 [running]: | frame 0 | … | frame 5 | frame 6 | frame 7 | frame 8 | frame 9"
        );
        let mut long = Kept::default();
        long.push(&"é".repeat(300));
        assert!(long.summary().unwrap().chars().count() <= KEPT_LINE / 2 + 1);
    }

    #[test]
    fn the_budget_is_per_call_even_on_a_stream_kept_open() {
        let origin = Origin::Tick {
            due_ms: 0,
            traceparent: None,
        };
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
