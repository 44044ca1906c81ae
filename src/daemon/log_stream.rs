//! The body of `GET /api/functions/<name>/logs`: the kept lines as NDJSON and, with
//! `follow`, every new one until the client leaves or the function is removed (or the
//! daemon stops).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::sync::{broadcast, mpsc};

use super::function::Function;
use crate::api::LogQuery;

/// An idle follow stream writes an empty line this often: a write is what tells us the
/// client has gone, so its task does not wait for the function's next line to end.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// Chunks queued for a slow client before the follower waits (and then skips lines).
const QUEUE: usize = 16;

pub async fn serve(f: Arc<Function>, q: LogQuery) -> std::io::Result<Body> {
    let log = f.log.clone();
    let since_ms = q.since.unwrap_or(0).saturating_mul(1000);
    let snap = tokio::task::spawn_blocking(move || log.read(since_ms, q.tail, q.follow))
        .await
        .map_err(std::io::Error::other)??;
    let mut kept = String::new();
    for line in &snap.lines {
        kept.push_str(&serde_json::to_string(line).expect("a LogLine always serializes"));
        kept.push('\n');
    }
    let Some(rx) = snap.follow else {
        return Ok(Body::from(kept));
    };
    let (tx, chunks) = mpsc::channel(QUEUE);
    let _ = tx.send(Bytes::from(kept)).await;
    tokio::spawn(follow(f, rx, tx));
    let body = futures::stream::unfold(chunks, |mut chunks| async move {
        let chunk = chunks.recv().await?;
        Some((Ok::<_, Infallible>(chunk), chunks))
    });
    Ok(Body::from_stream(body))
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
