//! An image upload as the installer reads it: a blocking reader over the request body that
//! fails once the upload is larger than allowed or has sent nothing for a while, and
//! remembers which of the two happened so that the client is told.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

/// Why an upload was cut short, if it was.
#[derive(Default)]
pub struct Verdict {
    too_large: AtomicBool,
    stalled: AtomicBool,
}

impl Verdict {
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }
}

/// The body of `POST /api/new` as a blocking reader (for the installer's thread): at most
/// `max` bytes, and never more than `idle` without a byte.
pub fn reader(body: Body, max: u64, idle: Duration) -> (impl Read + Send + 'static, Arc<Verdict>) {
    let verdict = Arc::new(Verdict::default());
    let stream = idle_limited(
        body.into_data_stream().map_err(io::Error::other),
        idle,
        verdict.clone(),
    );
    let capped = CappedReader {
        inner: SyncIoBridge::new(StreamReader::new(stream)),
        left: max,
        verdict: verdict.clone(),
    };
    (capped, verdict)
}

/// Why the configuration at the start of an upload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PrefixError {
    #[error("the body ended within its first {0} bytes (X-Function-Config-Length)")]
    Short(usize),
    #[error("the body stalled in its first {0} bytes (--body-timeout)")]
    Stalled(usize),
    #[error("reading the body failed: {0}")]
    Read(#[source] axum::Error),
}

/// Splits the first `len` bytes off `body` (the configuration sent before the tarball),
/// waiting at most `idle` for each chunk; the rest of the body follows, untouched.
pub async fn split_prefix(
    body: Body,
    len: usize,
    idle: Duration,
) -> Result<(Vec<u8>, Body), PrefixError> {
    let mut stream = body.into_data_stream();
    let mut prefix = Vec::with_capacity(len);
    let mut rest = Bytes::new();
    while prefix.len() < len {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(PrefixError::Stalled(len)),
            Ok(None) => return Err(PrefixError::Short(len)),
            Ok(Some(chunk)) => chunk.map_err(PrefixError::Read)?,
        };
        let take = chunk.len().min(len - prefix.len());
        prefix.extend_from_slice(&chunk[..take]);
        rest = chunk.slice(take..);
    }
    let first = futures::stream::iter((!rest.is_empty()).then_some(Ok::<_, axum::Error>(rest)));
    Ok((prefix, Body::from_stream(first.chain(stream))))
}

/// Ends `stream` with an error when no chunk came for `idle`: a stalled upload must not
/// hold its thread, its upload slot and its staging directory forever.
fn idle_limited(
    stream: impl Stream<Item = io::Result<Bytes>> + Send + 'static,
    idle: Duration,
    verdict: Arc<Verdict>,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(Some(Box::pin(stream)), move |state| {
        let verdict = verdict.clone();
        async move {
            let mut stream = state?;
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(stream))),
                Ok(None) => None,
                Err(_) => {
                    verdict.stalled.store(true, Ordering::Relaxed);
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no upload data for {idle:?}"),
                    );
                    Some((Err(e), None))
                }
            }
        }
    })
    .boxed()
}

/// Fails the read once more than `left` bytes have come through, and says so.
struct CappedReader<R> {
    inner: R,
    left: u64,
    verdict: Arc<Verdict>,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.left.checked_sub(n as u64) {
            Some(left) => {
                self.left = left;
                Ok(n)
            }
            None => {
                self.verdict.too_large.store(true, Ordering::Relaxed);
                Err(io::Error::other("upload size limit exceeded"))
            }
        }
    }
}

/// Runs the installer `f` on a thread of its own rather than tokio's blocking pool, which
/// container spawns and teardowns need: however many uploads are in progress (the API
/// bounds them), requests never queue behind them.
pub async fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InstallThreadError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("faasd-upload".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(InstallThreadError::Spawn)?;
    rx.await.map_err(|_| InstallThreadError::Panicked)
}

#[derive(Debug, thiserror::Error)]
pub enum InstallThreadError {
    #[error("starting the install thread failed: {0}")]
    Spawn(#[source] io::Error),
    #[error("the install thread panicked")]
    Panicked,
}
