//! IPC namespaces made ahead of time: one per container, never reused.
//!
//! A new IPC namespace (copy_ipcs) registers sysctl tables of its own and mounts an
//! internal mqueue instance: ~30 µs of the clone, on the request path. A background
//! thread makes them in advance and a spawn joins one with setns before anything could
//! use it. Each container still gets a fresh namespace that no other process was ever
//! in (the thread leaves each one as soon as it is made), and nothing comes back: unlike
//! a network namespace, an IPC namespace is dropped with its container. When none is
//! ready, the clone makes one (CLONE_NEWIPC) rather than wait.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::sched::CloneFlags;

use super::error::Result;
use super::filler;

pub struct IpcPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a namespace was taken, or at shutdown.
    wanted: Condvar,
    /// Signalled when the filler made one, or gave up.
    made_one: Condvar,
    size: usize,
    lent: AtomicU64,
}

struct State {
    ready: Vec<OwnedFd>,
    stopping: bool,
    /// The filler could not make one and stopped.
    failed: bool,
}

impl IpcPool {
    /// Starts the thread that keeps `size` fresh namespaces ready.
    pub fn start(size: usize) -> Result<Self> {
        let home = filler::home_namespace("ipc", "open our IPC namespace")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(size),
                stopping: false,
                failed: false,
            }),
            wanted: Condvar::new(),
            made_one: Condvar::new(),
            size,
            lent: AtomicU64::new(0),
        });
        let filler = shared.clone();
        filler::start("faasd-ipc", "start the IPC namespace thread", move || {
            filler.fill(home)
        })?;
        // Well under a ms per namespace.
        filler::await_first_fill(&shared.state, &shared.made_one, |st| {
            st.ready.len() >= size || st.failed
        });
        Ok(IpcPool { shared })
    }

    /// A fresh IPC namespace, if one is ready.
    pub fn take(&self) -> Option<OwnedFd> {
        let ns = self.shared.state.lock().unwrap().ready.pop();
        self.shared.wanted.notify_one();
        if ns.is_some() {
            self.shared.lent.fetch_add(1, Ordering::Relaxed);
        }
        ns
    }

    /// How many spawns joined a namespace made ahead of time.
    pub fn lent(&self) -> u64 {
        self.shared.lent.load(Ordering::Relaxed)
    }
}

impl Drop for IpcPool {
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
            match make_ipc_ns(&home) {
                Ok(ns) => {
                    self.state.lock().unwrap().ready.push(ns);
                    self.made_one.notify_all();
                }
                Err(e) => {
                    // Spawns fall back to CLONE_NEWIPC; no point retrying in a loop.
                    tracing::error!("pre-making IPC namespaces failed, stopping: {e}");
                    self.state.lock().unwrap().failed = true;
                    self.made_one.notify_all();
                    return;
                }
            }
        }
    }
}

/// Makes a new IPC namespace on this thread, keeps an fd to it, and goes back home.
fn make_ipc_ns(home: &OwnedFd) -> std::io::Result<OwnedFd> {
    nix::sched::unshare(CloneFlags::CLONE_NEWIPC)?;
    let made = File::open("/proc/thread-self/ns/ipc").map(OwnedFd::from);
    nix::sched::setns(home.as_fd(), CloneFlags::CLONE_NEWIPC)?;
    made
}
