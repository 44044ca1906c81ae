//! The control API's connections, served with hyper directly rather than `axum::serve`,
//! for two things axum does not expose: a header read timeout (a client that connects and
//! sends nothing, or trickles its headers, is closed), and a lingering close, so that an
//! answer given before the body was read (a bad name, a missing header, too large, no
//! token, too many uploads) reaches a client that is still sending that body.

use std::future::poll_fn;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How much of an unread body a lingering close reads and drops, and for how long: enough
/// for a client's upload to reach its read of the answer; bounded, so that a client
/// cannot keep the connection open by sending on forever.
const LINGER_BYTES: usize = 32 << 20;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `stop` is cancelled; then lets each connection finish
/// its request in progress.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let conns = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("control API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        conns.spawn(serve_conn(tcp, app.clone(), header_timeout, stop.clone()));
    }
    conns.close();
    conns.wait().await;
}

async fn serve_conn(
    tcp: TcpStream,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        // Boxed: hyper can give the socket back (`into_parts`) only from an Unpin service.
        Box::pin(app.clone().oneshot(req.map(axum::body::Body::new)))
    });
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tcp), service);
    let mut stopping = false;
    let done = loop {
        tokio::select! {
            done = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break done,
            _ = stop.cancelled(), if !stopping => {
                Pin::new(&mut conn).graceful_shutdown();
                stopping = true;
            }
        }
    };
    match done {
        Ok(()) => linger(conn.into_parts().io.into_inner()).await,
        // A header timeout or a broken connection: nothing more to say to this client.
        Err(e) => tracing::debug!("control API connection ended: {e}"),
    }
}

/// Closing a socket with unread data makes the kernel send a reset, and a reset makes the
/// client's kernel discard our answer if the client has not read it yet. So: send our FIN
/// after the answer, read what the client still sends (bounded), then close.
pub(super) async fn linger(mut tcp: TcpStream) {
    if tcp.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 64 << 10];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}
