//! One control socket per image for all its containers (native runtime), instead of a
//! bundle directory and a socket per request on disk.
//!
//! The socket is bound in the image's mount template (runtime/template.rs) at
//! /control.sock and has no path on the host. Handlers keep the seed's protocol: connect,
//! receive one fd. The daemon tells whose connection it is by what the kernel recorded
//! at connect (control_peer.rs), and a request gets only a connection of its own
//! container:
//! - the connecting socket was made in the container's network namespace (its cookie,
//!   fixed for the socket's life: a connection passed to another process, or made by a
//!   process that has since exited, still names the container that made it; no other
//!   container can make a socket in that namespace);
//! - the process that connected is the container's first process or one of its pid
//!   namespace (SO_PEERCRED, with SO_PEERPIDFD from 6.5 so that the number cannot have
//!   been reused meanwhile). Both must hold. On 6.1, a connection could pass the second
//!   check by a reused pid number only if its namespace cookie is also the container's:
//!   made by an earlier user of the same pooled network namespace, all of whose
//!   processes are gone, so nobody can receive what is sent on it.
//! - each container gets one connection: the first that matches; later ones, and those
//!   matching no container within [`PARK_TIMEOUT`], are closed and counted
//!   (`faasd_control_connections_rejected`).
//!
//! A handler may connect before its request has registered (the spawn returns after its
//! exec): such connections wait, bounded in number and time, for their registration.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

use super::control_peer::Peer;
use super::metrics::ReasonLabels;

/// How long a connection waits for its container's registration.
const PARK_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections waiting for a registration, per socket; past it the oldest is closed.
const PARK_MAX: usize = 256;

/// A function image's control socket and the task that accepts on it; dropping it stops
/// the task and closes every connection not yet handed to a request.
pub struct ControlSocket {
    shared: Arc<Shared>,
    acceptor: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    function: String,
    rejected: Family<ReasonLabels, Counter>,
}

#[derive(Default)]
struct State {
    /// Registered containers by network namespace cookie.
    containers: HashMap<u64, Registered>,
    /// Tells registrations of one (reused) namespace apart.
    generation: u64,
    /// Connections that matched no container yet, oldest first.
    parked: VecDeque<Parked>,
}

struct Registered {
    generation: u64,
    init: i32,
    pid_ns: Option<u64>,
    /// Taken by the first connection that belongs to the container.
    waiting: Option<oneshot::Sender<UnixStream>>,
}

struct Parked {
    since: Instant,
    stream: UnixStream,
    peer: Peer,
}

/// A container's claim on the control socket, for as long as it lives.
pub struct Registration {
    shared: Arc<Shared>,
    cookie: u64,
    generation: u64,
    connected: Option<oneshot::Receiver<UnixStream>>,
}

impl ControlSocket {
    /// Serves `listener` (from the image's mount template) for function `function`.
    pub fn start(
        listener: std::os::unix::net::UnixListener,
        function: &str,
        rejected: Family<ReasonLabels, Counter>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = UnixListener::from_std(listener)?;
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            function: function.to_string(),
            rejected,
        });
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(ControlSocket { shared, acceptor })
    }

    /// Registers the container whose network namespace has `netns_cookie`, whose first
    /// process is `init` (host pid) and whose pid namespace is `pid_ns` (its nsfs inode,
    /// None if it has already ended). A namespace is lent to a container only once its
    /// previous one is gone (netns_pool.rs), so a registration of the same cookie still
    /// here is that dead container's, whose request has not ended yet: replaced.
    pub fn register(&self, netns_cookie: u64, init: i32, pid_ns: Option<u64>) -> Registration {
        let (tx, rx) = oneshot::channel();
        let mut rejects = Vec::new();
        let generation;
        {
            let mut state = self.shared.state.lock().unwrap();
            state.generation += 1;
            generation = state.generation;
            let mut registered = Registered {
                generation,
                init,
                pid_ns,
                waiting: Some(tx),
            };
            // Connections that came before the registration, in their order.
            let parked = std::mem::take(&mut state.parked);
            for p in parked {
                if p.peer.netns_cookie != netns_cookie {
                    state.parked.push_back(p);
                } else if !p.peer.belongs_to(init, pid_ns) {
                    rejects.push((p, "not_its_container"));
                } else if let Some(waiting) = registered.waiting.take() {
                    let _ = waiting.send(p.stream);
                } else {
                    rejects.push((p, "second_connection"));
                }
            }
            state.containers.insert(netns_cookie, registered);
        }
        for (p, reason) in rejects {
            self.shared.reject(p.stream, reason);
        }
        Registration {
            shared: self.shared.clone(),
            cookie: netns_cookie,
            generation,
            connected: Some(rx),
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.acceptor.abort();
        let mut state = self.shared.state.lock().unwrap();
        state.parked.clear();
    }
}

impl Registration {
    /// The container's control connection, once its handler has connected. Pending
    /// forever after the first call, or if the control socket has gone.
    pub async fn connected(&mut self) -> UnixStream {
        match self.connected.take() {
            Some(rx) => match rx.await {
                Ok(stream) => stream,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    /// Removes this registration, not a later one of the same (reused) namespace.
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap();
        if state
            .containers
            .get(&self.cookie)
            .is_some_and(|r| r.generation == self.generation)
        {
            state.containers.remove(&self.cookie);
        }
    }
}

impl Shared {
    fn reject(&self, stream: UnixStream, reason: &str) {
        drop(stream);
        self.rejected
            .get_or_create(&ReasonLabels {
                function: self.function.clone(),
                reason: reason.to_string(),
            })
            .inc();
        tracing::debug!(function = %self.function, "control connection closed: {reason}");
    }

    /// Hands `stream` to its container, or parks it until one registers.
    fn dispatch(&self, stream: UnixStream, peer: Peer) {
        let mut state = self.state.lock().unwrap();
        let reason = match state.containers.get_mut(&peer.netns_cookie) {
            Some(c) if peer.belongs_to(c.init, c.pid_ns) => match c.waiting.take() {
                Some(waiting) => {
                    let _ = waiting.send(stream);
                    return;
                }
                None => "second_connection",
            },
            // Not the registered container's: the registration is that of the namespace's
            // previous (dead) container whose request has not ended yet, and this is its
            // next container, which registers soon; parked like any early connection
            // (register() checks it against the new container, or it expires).
            _ => {
                let full = state.parked.len() >= PARK_MAX;
                let oldest = full.then(|| state.parked.pop_front()).flatten();
                state.parked.push_back(Parked {
                    since: Instant::now(),
                    stream,
                    peer,
                });
                drop(state);
                if let Some(oldest) = oldest {
                    self.reject(oldest.stream, "too_many_waiting");
                }
                return;
            }
        };
        drop(state);
        self.reject(stream, reason);
    }

    /// Closes the parked connections older than PARK_TIMEOUT; returns when the next
    /// one will be.
    fn expire(&self) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = {
            let mut state = self.state.lock().unwrap();
            while state
                .parked
                .front()
                .is_some_and(|p| p.since.elapsed() >= PARK_TIMEOUT)
            {
                expired.extend(state.parked.pop_front());
            }
            state.parked.front().map(|p| p.since + PARK_TIMEOUT)
        };
        for p in expired {
            self.reject(p.stream, "no_container");
        }
        next
    }
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let next_expiry = shared.expire();
        let expiry = async {
            match next_expiry {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => match Peer::of(&stream) {
                    Ok(peer) => shared.dispatch(stream, peer),
                    Err(e) => {
                        tracing::warn!(function = %shared.function, "reading a control connection's peer: {e}");
                        shared.reject(stream, "unreadable_peer");
                    }
                },
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(function = %shared.function, "accepting on the control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = expiry => {}
        }
    }
}
