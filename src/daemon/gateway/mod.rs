//! The gateway port (`--gateway ADDR`): one listener for every function, for clients that
//! cannot reach the functions' own loopback addresses (other machines, a load balancer).
//!
//! Each connection's head is peeked at (head.rs), routed (route.rs), and the untouched
//! connection then goes down the same per-connection path as on a function's own address
//! (`request::serve`). Until then it costs no container: a head that is late, too large
//! or malformed is closed and counted, an unknown function gets a 404 from faasd. The
//! control API's token does not apply here: this is function traffic.

mod head;
mod route;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::admission::SourceSlot;
use super::{http_server, request, Daemon, DaemonError};
use head::Head;
use route::Route;

/// Binds the gateway port, if one is configured, and serves it until the daemon stops
/// accepting.
pub async fn serve_gateway(d: Arc<Daemon>) -> Result<(), DaemonError> {
    let Some(addr) = d.cfg.gateway else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen { addr, source })?;
    tracing::info!(%addr, domain = ?d.cfg.gateway_domain, "gateway listening");
    loop {
        tokio::select! {
            _ = d.stop_accepting.cancelled() => return Ok(()),
            conn = listener.accept() => match conn {
                Ok((tcp, peer)) => admit(&d, tcp, peer),
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("gateway accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The same admission as a function's own listener (fd reserve, per-source bound), taken
/// before the head is read: slow heads count against their source.
fn admit(d: &Arc<Daemon>, tcp: TcpStream, peer: SocketAddr) {
    match d.admission(&tcp, peer.ip()) {
        Ok(slot) => {
            d.requests
                .spawn(route_connection(d.clone(), tcp, peer.ip(), slot));
        }
        Err(reason) => d.metrics.gateway_closed(reason),
    }
}

async fn route_connection(d: Arc<Daemon>, tcp: TcpStream, peer: IpAddr, slot: SourceSlot) {
    let domain = d.cfg.gateway_domain.as_deref();
    let head = tokio::select! {
        r = tokio::time::timeout(d.cfg.header_timeout(), head::peek_head(&tcp, domain)) => r,
        _ = d.stop_accepting.cancelled() => return,
    };
    let answer = match head {
        Err(_) => {
            d.metrics.gateway_closed("head_timeout");
            tracing::debug!(%peer, "gateway: no complete head within {:?}", d.cfg.header_timeout());
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, "gateway: reading the head failed: {e}");
            return;
        }
        Ok(Ok(Head::Closed)) => return,
        Ok(Ok(Head::TooLarge)) => {
            d.metrics.gateway_closed("head_too_large");
            response(
                "431 Request Header Fields Too Large",
                &format!("the request head is larger than {} bytes", head::MAX_HEAD),
            )
        }
        Ok(Ok(Head::Malformed(why))) => {
            d.metrics.gateway_closed("malformed");
            response("400 Bad Request", &format!("not an HTTP/1 request: {why}"))
        }
        Ok(Ok(Head::Route(Route::Health))) => response("200 OK", "ok"),
        Ok(Ok(Head::Route(Route::Function(name)))) => match d.function(&name) {
            Some(f) => {
                let _ = tcp.set_nodelay(true);
                f.requests
                    .track_future(request::serve(d.clone(), f.clone(), tcp, slot))
                    .await;
                return;
            }
            None => {
                d.metrics.gateway_closed("unknown_function");
                response("404 Not Found", &format!("no function named {name:?}"))
            }
        },
        Ok(Ok(Head::Route(Route::Nowhere(path)))) => {
            d.metrics.gateway_closed("no_route");
            let hint = match domain {
                Some(domain) => format!("Host: <name>.{domain} or "),
                None => String::new(),
            };
            response(
                "404 Not Found",
                &format!("{path:?} names no function: use {hint}/function/<name>/"),
            )
        }
    };
    let mut tcp = tcp;
    if tcp.write_all(answer.as_bytes()).await.is_ok() {
        http_server::linger(tcp).await;
    }
}

fn response(status: &str, text: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{text}\n",
        text.len() + 1
    )
}
