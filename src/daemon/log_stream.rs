//! The body of `GET /api/functions/<name>/logs`: the kept lines as NDJSON, streamed as
//! they are read (only a `tail` is held whole), and, with `follow`, every new one until
//! the client leaves or the function is removed (or the daemon stops).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::{broadcast, mpsc};

use super::function::Function;
use super::log_file::Kept;
use crate::api::{LogLine, LogQuery};

/// An idle follow stream writes an empty line this often: a write is what tells us the
/// client has gone, so its task does not wait for the function's next line to end.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Chunks queued for a slow client before the reader or follower waits (a follower then
/// skips lines).
const QUEUE: usize = 16;
/// Bytes of kept lines sent as one chunk.
const CHUNK: usize = 64 << 10;

pub async fn serve(f: Arc<Function>, q: LogQuery) -> std::io::Result<Body> {
    let log = f.log.clone();
    let since_ms = q.since.unwrap_or(0).saturating_mul(1000);
    let snap = tokio::task::spawn_blocking(move || log.read(since_ms, q.follow))
        .await
        .map_err(std::io::Error::other)??;
    let kept = match q.tail {
        // Held whole (at most N lines), so a failed read is still a 500.
        Some(n) => {
            let lines = tokio::task::spawn_blocking(move || snap.kept.tail(n))
                .await
                .map_err(std::io::Error::other)??;
            let text: String = lines.iter().map(ndjson).collect();
            if snap.follow.is_none() {
                return Ok(Body::from(text));
            }
            Source::Text(text)
        }
        None => Source::Files(snap.kept),
    };
    let (tx, chunks) = mpsc::channel(QUEUE);
    let function = f.name.clone();
    let follow = snap.follow;
    tokio::spawn(async move {
        match send_kept(kept, &tx).await {
            Ok(true) => {}
            // The client left.
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(function = %function, "reading its log failed mid-answer: {e}");
                return;
            }
        }
        if let Some(rx) = follow {
            self::follow(f, rx, tx).await;
        }
    });
    let body = futures::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.recv().await?;
        Some((Ok::<_, Infallible>(chunk), chunks))
    });
    Ok(Body::from_stream(body))
}

/// The kept part of an answer.
enum Source {
    /// A tail, already read.
    Text(String),
    /// Everything kept, read as it is sent.
    Files(Kept),
}

/// Sends the kept lines in chunks of about [`CHUNK`] bytes, each read on the blocking
/// pool; a slow client is waited for here, holding no blocking thread (bounded queue).
/// False when the client has gone.
async fn send_kept(kept: Source, tx: &mpsc::Sender<Bytes>) -> std::io::Result<bool> {
    let mut lines: Lines = match kept {
        Source::Text(text) => return Ok(text.is_empty() || tx.send(text.into()).await.is_ok()),
        Source::Files(kept) => Box::new(kept.lines()),
    };
    loop {
        let (chunk, rest) = tokio::task::spawn_blocking(move || next_chunk(lines))
            .await
            .map_err(std::io::Error::other)?;
        let chunk = chunk?;
        if chunk.is_empty() {
            return Ok(true);
        }
        if tx.send(chunk.into()).await.is_err() {
            return Ok(false);
        }
        lines = rest;
    }
}

type Lines = Box<dyn Iterator<Item = std::io::Result<LogLine>> + Send>;

/// The next [`CHUNK`] bytes or so of lines (empty at the end), and the lines after them.
fn next_chunk(mut lines: Lines) -> (std::io::Result<String>, Lines) {
    let mut chunk = String::new();
    while chunk.len() < CHUNK {
        match lines.next() {
            Some(Ok(line)) => chunk.push_str(&ndjson(&line)),
            Some(Err(e)) => return (Err(e), lines),
            None => break,
        }
    }
    (Ok(chunk), lines)
}

fn ndjson(line: &LogLine) -> String {
    let mut text = serde_json::to_string(line).expect("a LogLine always serializes");
    text.push('\n');
    text
}

async fn follow(f: Arc<Function>, mut rx: broadcast::Receiver<Arc<str>>, tx: mpsc::Sender<Bytes>) {
    loop {
        let chunk = tokio::select! {
            _ = f.stop.cancelled() => return,
            _ = tx.closed() => return,
            line = rx.recv() => match line {
                Ok(line) => Bytes::from(format!("{line}\n")),
                // Lines this follower was too slow for are skipped.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b"\n"),
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}
