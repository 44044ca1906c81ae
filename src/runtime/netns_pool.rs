//! Empty network namespaces made ahead of time.
//!
//! A new network namespace is the costliest part of a container start (clone with
//! CLONE_NEWNET: ~0.5 ms at p50 and several ms at p99 on these machines), and it sits on
//! the request's critical path. A background thread makes them in advance; a spawn joins
//! one with setns, which costs almost nothing. Each namespace goes to exactly one
//! container and is never reused, so isolation is that of a fresh one: it holds only a
//! down `lo`, and it dies with the container's last process. When the pool is empty, the
//! spawn falls back to CLONE_NEWNET rather than wait.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use super::error::{Result, RuntimeError};

pub struct NetnsPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a namespace was taken, or at shutdown.
    wanted: Condvar,
    size: usize,
}

struct State {
    ready: Vec<OwnedFd>,
    stopping: bool,
}

impl NetnsPool {
    /// Starts the thread that keeps `size` namespaces ready.
    pub fn start(size: usize) -> Result<Self> {
        // The thread returns to the namespace it started in after making each one, so
        // it never lingers inside a namespace a container is using.
        let home: OwnedFd = File::open("/proc/thread-self/ns/net")
            .map_err(|source| RuntimeError::Sys {
                op: "open our network namespace",
                source,
            })?
            .into();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(size),
                stopping: false,
            }),
            wanted: Condvar::new(),
            size,
        });
        let filler = shared.clone();
        std::thread::Builder::new()
            .name("faasd-netns".into())
            .spawn(move || filler.fill(home))
            .map_err(|source| RuntimeError::Sys {
                op: "start the network namespace thread",
                source,
            })?;
        Ok(NetnsPool { shared })
    }

    /// A fresh, never-used network namespace, if one is ready.
    pub fn take(&self) -> Option<OwnedFd> {
        let ns = self.shared.state.lock().unwrap().ready.pop();
        self.shared.wanted.notify_one();
        ns
    }
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().stopping = true;
        self.shared.wanted.notify_one();
    }
}

impl Shared {
    fn fill(&self, home: OwnedFd) {
        loop {
            {
                let mut st = self.state.lock().unwrap();
                while st.ready.len() >= self.size && !st.stopping {
                    st = self.wanted.wait(st).unwrap();
                }
                if st.stopping {
                    return;
                }
            }
            match make_netns(&home) {
                Ok(ns) => self.state.lock().unwrap().ready.push(ns),
                Err(e) => {
                    // Spawns fall back to CLONE_NEWNET; no point retrying in a loop.
                    tracing::error!("pre-making network namespaces failed, stopping: {e}");
                    return;
                }
            }
        }
    }
}

/// Makes a new network namespace on this thread, keeps an fd to it, and goes back home.
fn make_netns(home: &OwnedFd) -> std::io::Result<OwnedFd> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    let ns = File::open("/proc/thread-self/ns/net").map(OwnedFd::from);
    // SAFETY: setns with an fd we own naming a network namespace.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    ns
}
