//! A handler's stdout and stderr, read line by line into its function's log file
//! (`log_file.rs`) within bounds.
//!
//! The handler's code controls what it writes: a gigabyte without a newline must not
//! become a gigabyte of daemon memory, nor a flood of lines in the log. Lines are
//! cut at [`MAX_LINE`] (the pieces are marked), and a request may log [`REQUEST_BUDGET`]
//! bytes at most, at [`RATE`] bytes/s after a [`BURST`]. Past that the output is still
//! read (so the handler never blocks on a full pipe and answers its client) but dropped,
//! and the dropped bytes are counted in `faasd_log_bytes_dropped_total`. Dropping rather
//! than killing: a verbose handler is the function author's problem, not a reason to fail
//! the client's request; draining costs one read per 64 KiB, and the exec timeout bounds
//! how long it goes on.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncReadExt;

use super::log_file::FunctionLog;
use crate::api::{LogLine, LogStream};

/// Longest line logged as one; longer ones are logged in pieces of this size.
pub const MAX_LINE: usize = 16 * 1024;
/// Bytes one request may log in all.
pub const REQUEST_BUDGET: u64 = 1 << 20;
/// Sustained bytes per second one request may log, after a burst of BURST.
pub const RATE: f64 = 64.0 * 1024.0;
pub const BURST: f64 = 256.0 * 1024.0;
/// Bytes read from the pipe at once.
const READ_CHUNK: usize = 64 * 1024;

/// Splits a byte stream into lines of at most MAX_LINE bytes, with a bounded buffer.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
}

/// One piece of output to log: a whole line, or a cut piece of a longer one.
#[derive(Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    pub text: &'a [u8],
    /// The line goes on in the next piece.
    pub cut: bool,
}

impl Lines {
    /// Feeds `chunk`, calling `emit` for every complete (or cut) line.
    pub fn feed(&mut self, mut chunk: &[u8], mut emit: impl FnMut(Piece<'_>)) {
        while !chunk.is_empty() {
            let room = MAX_LINE - self.partial.len();
            // A newline right after a full line still ends it.
            match chunk[..chunk.len().min(room + 1)]
                .iter()
                .position(|&b| b == b'\n')
            {
                Some(nl) => {
                    self.emit_with(&chunk[..nl], false, &mut emit);
                    chunk = &chunk[nl + 1..];
                }
                None if chunk.len() >= room => {
                    self.emit_with(&chunk[..room], true, &mut emit);
                    chunk = &chunk[room..];
                }
                None => {
                    self.partial.extend_from_slice(chunk);
                    chunk = &[];
                }
            }
        }
    }

    /// The last line, if the output did not end with a newline.
    pub fn finish(&mut self, mut emit: impl FnMut(Piece<'_>)) {
        if !self.partial.is_empty() {
            self.emit_with(&[], false, &mut emit);
        }
    }

    fn emit_with(&mut self, tail: &[u8], cut: bool, emit: &mut impl FnMut(Piece<'_>)) {
        if self.partial.is_empty() {
            emit(Piece { text: tail, cut });
        } else {
            self.partial.extend_from_slice(tail);
            emit(Piece {
                text: &self.partial,
                cut,
            });
            self.partial.clear();
        }
    }
}

/// What a request may still log: a total and a token bucket.
pub struct Budget {
    left: u64,
    tokens: f64,
    refilled: Instant,
}

impl Budget {
    pub fn new(now: Instant) -> Self {
        Budget {
            left: REQUEST_BUDGET,
            tokens: BURST,
            refilled: now,
        }
    }

    /// Whether `len` more bytes may be logged at `now`; if so they are spent.
    pub fn admit(&mut self, len: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE).min(BURST);
        self.refilled = now;
        let len64 = len as u64;
        if len64 > self.left || len as f64 > self.tokens {
            return false;
        }
        self.left -= len64;
        self.tokens -= len as f64;
        true
    }
}

/// Appends the handler's `stream` output read from `rd` (a non-blocking pipe's read end)
/// to `log`, tagged with the request, within the bounds above (each stream has its own
/// budget); counts what it drops in `dropped`.
pub fn forward(
    rd: OwnedFd,
    log: Arc<FunctionLog>,
    request: &str,
    stream: LogStream,
    dropped: Counter,
) {
    // Unchecked: the caller made the pipe, non-blocking (no fstat and fcntl per stream).
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(rd) else {
        return;
    };
    let request = request.to_string();
    tokio::spawn(async move {
        // Read into its spare capacity: no 64 KiB memset per stream of every container,
        // most of which write nothing.
        let mut buf = Vec::with_capacity(READ_CHUNK);
        let (mut lines, mut budget) = (Lines::default(), Budget::new(Instant::now()));
        let mut dropped_here = 0u64;
        let stream_name = stream.as_str();
        let mut keep = |p: Piece<'_>| {
            // A newline counts too: a flood of empty lines is a flood.
            if budget.admit(p.text.len() + 1, Instant::now()) {
                log.append(&LogLine {
                    ts_ms: now_ms(),
                    request: request.clone(),
                    stream,
                    text: String::from_utf8_lossy(p.text).into_owned(),
                    cut: p.cut,
                });
            } else {
                if dropped_here == 0 {
                    tracing::warn!(function = log.function(), %request, stream = stream_name, "handler output over its budget: dropping the rest");
                }
                dropped_here += p.text.len() as u64 + 1;
                dropped.inc_by(p.text.len() as u64 + 1);
            }
        };
        while let Ok(1..) = pipe.read_buf(&mut buf).await {
            lines.feed(&buf, &mut keep);
            buf.clear();
        }
        lines.finish(&mut keep);
        if dropped_here > 0 {
            tracing::warn!(function = log.function(), %request, stream = stream_name, "dropped {dropped_here} bytes of handler output");
        }
    });
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn split(chunks: &[&[u8]]) -> Vec<(usize, bool)> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for c in chunks {
            lines.feed(c, |p| out.push((p.text.len(), p.cut)));
        }
        lines.finish(|p| out.push((p.text.len(), p.cut)));
        out
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(
            split(&[b"ab", b"c\nde\n", b"f"]),
            [(3, false), (2, false), (1, false)]
        );
    }

    #[test]
    fn a_long_line_is_cut_into_marked_pieces() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut with_end = long.clone();
        with_end.push(b'\n');
        assert_eq!(
            split(&[&with_end[..100], &with_end[100..]]),
            [(MAX_LINE, true), (MAX_LINE, true), (10, false)]
        );
    }

    #[test]
    fn budget_caps_the_total_and_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        assert!(b.admit(BURST as usize, t0));
        assert!(!b.admit(1024, t0), "burst spent");
        assert!(
            b.admit(1024, t0 + Duration::from_secs(1)),
            "refilled at RATE"
        );
        let mut later = t0;
        let mut total = BURST as u64 + 1024;
        loop {
            later += Duration::from_secs(4);
            if !b.admit(BURST as usize, later) {
                break;
            }
            total += BURST as u64;
        }
        assert!(total <= REQUEST_BUDGET, "logged {total}");
    }
}
