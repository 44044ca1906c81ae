//! Reading a request head without consuming it: `recv(MSG_PEEK)` leaves every byte in the
//! socket, so the handler that is handed the connection reads the request itself, exactly
//! as on its function's own address.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, MsgFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::route::{self, Parsed, Route};

/// Largest request head the gateway reads (request line and headers): a larger one gets
/// 431 and costs no container.
pub const MAX_HEAD: usize = 16 << 10;
/// Pause after a peek that found the head incomplete, so that a client trickling its head
/// byte by byte makes at most a few hundred peeks a second, not one per byte.
const TRICKLE_PAUSE: Duration = Duration::from_millis(5);

#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    Route(Route),
    /// The client closed (or half-closed) before its head was complete.
    Closed,
    TooLarge,
    Malformed(String),
}

/// Peeks at the connection until its head is complete, the client closes, or the head
/// outgrows MAX_HEAD. Unbounded in time: the caller puts a timeout on it.
pub async fn peek_head(tcp: &TcpStream, domain: Option<&str>) -> io::Result<Head> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut seen = 0;
    loop {
        // Inside async_io, a WouldBlock clears the readiness this peek saw and only that,
        // so bytes arriving meanwhile are never missed.
        let peeked = tcp
            .async_io(Interest::READABLE, || {
                let n = recv(tcp.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK)?;
                if n == 0 {
                    return Ok(Err(Head::Closed));
                }
                match route::parse(&buf[..n], domain) {
                    Parsed::Done(r) => Ok(Err(Head::Route(r))),
                    Parsed::Malformed(why) => Ok(Err(Head::Malformed(why))),
                    Parsed::Partial if n >= MAX_HEAD => Ok(Err(Head::TooLarge)),
                    Parsed::Partial if peer_closed(tcp.as_fd()) => Ok(Err(Head::Closed)),
                    // Nothing new since the last peek: wait for the next segment.
                    Parsed::Partial if n == seen => Err(io::ErrorKind::WouldBlock.into()),
                    Parsed::Partial => Ok(Ok(n)),
                }
            })
            .await?;
        match peeked {
            Err(head) => return Ok(head),
            Ok(n) => {
                seen = n;
                tokio::time::sleep(TRICKLE_PAUSE).await;
            }
        }
    }
}

/// Whether the client has sent its FIN (a peek cannot tell while unread bytes remain).
fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    // nix names no POLLRDHUP (Linux-only); the bit is the kernel's.
    let rdhup = PollFlags::from_bits_retain(libc::POLLRDHUP);
    let mut fds = [PollFd::new(fd, rdhup)];
    nix::poll::poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.intersects(rdhup | PollFlags::POLLHUP))
}
