//! Network namespaces made ahead of time, and reused once proven empty.
//!
//! Making a network namespace (copy_net_ns) and tearing it down (cleanup_net, in
//! kworkers) was the largest single cost of a container start: 18 % of all CPU at
//! saturation. A background thread makes namespaces in advance, each with a probe
//! opened inside it (netns_probe.rs); a spawn joins one with setns. When the container's
//! processes are all gone (reaped, cgroup drained) its namespace comes back, and returns
//! to the pool only if the probe finds it exactly as fresh: no socket of any family
//! (in-flight ones included), the same links with the same flags (`lo` down), no
//! address or route. One whose check fails or errors is dropped and counted, never
//! reused. A container cannot change anything else in it: it has no CAP_NET_ADMIN or
//! CAP_NET_RAW and /proc/sys is read-only, so what remains is only the namespace's
//! identity (inode, cookie), which carries no data.
//!
//! Reuse is global, not per function: per-request isolation is required within one
//! function too (different clients' requests), so the check must be complete either way,
//! and a global pool keeps fewer namespaces alive for the same hit rate.
//!
//! When the pool is empty, the spawn falls back to CLONE_NEWNET rather than wait; such a
//! namespace has no probe and dies with its container.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::error::Result;
use super::filler;
use super::netns_probe::{Probe, ProbeError};

/// The filler keeps at least this many ready, beyond those lent out, so a burst does not
/// find the pool empty while it makes the next one.
const MIN_SPARE: usize = 2;

pub struct NetnsPool {
    shared: Arc<Shared>,
}

/// How the pool's namespaces have fared since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetnsStats {
    /// Made by the pool's thread.
    pub made: u64,
    /// Came back empty and went back into the pool (a surplus one is let go uncounted).
    pub reused: u64,
    /// Came back not empty, or not provably so: dropped, never lent again.
    pub dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a namespace was taken, or at shutdown.
    wanted: Condvar,
    /// Signalled when the filler made one, or gave up.
    made_one: Condvar,
    size: usize,
    made: AtomicU64,
    reused: AtomicU64,
    dropped: AtomicU64,
}

struct State {
    ready: Vec<Netns>,
    lent: usize,
    stopping: bool,
    /// The filler could not make one and stopped.
    failed: bool,
}

/// A pooled namespace and its probe.
struct Netns {
    fd: OwnedFd,
    probe: Probe,
}

/// A namespace lent to one container. [`give_back`](Self::give_back) once the
/// container's processes are all gone; dropped without it, it is never reused.
pub struct LentNetns {
    ns: Option<Netns>,
    pool: Arc<Shared>,
}

impl NetnsPool {
    /// Starts the thread that keeps `size` namespaces ready.
    pub fn start(size: usize) -> Result<Self> {
        let home = filler::home_namespace("net", "open our network namespace")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(size),
                lent: 0,
                stopping: false,
                failed: false,
            }),
            wanted: Condvar::new(),
            made_one: Condvar::new(),
            size,
            made: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let filler = shared.clone();
        filler::start(
            "faasd-netns",
            "start the network namespace thread",
            move || filler.fill(home),
        )?;
        // A few ms at start.
        filler::await_first_fill(&shared.state, &shared.made_one, |st| {
            st.ready.len() >= size || st.failed
        });
        Ok(NetnsPool { shared })
    }

    /// An empty network namespace (fresh or proven empty), if one is ready.
    pub fn take(&self) -> Option<LentNetns> {
        let ns = {
            let mut st = self.shared.state.lock().unwrap();
            let ns = st.ready.pop();
            st.lent += ns.is_some() as usize;
            ns
        };
        self.shared.wanted.notify_one();
        ns.map(|ns| LentNetns {
            ns: Some(ns),
            pool: self.shared.clone(),
        })
    }

    pub fn stats(&self) -> NetnsStats {
        let s = &self.shared;
        NetnsStats {
            made: s.made.load(Ordering::Relaxed),
            reused: s.reused.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for NetnsPool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().stopping = true;
        self.shared.wanted.notify_one();
    }
}

impl LentNetns {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ns
            .as_ref()
            .expect("present until given back")
            .fd
            .as_fd()
    }

    /// The namespace's cookie (SO_NETNS_COOKIE), read once when it was made.
    pub fn cookie(&self) -> u64 {
        self.ns
            .as_ref()
            .expect("present until given back")
            .probe
            .cookie()
    }

    /// Checks the namespace (a pread and a non-blocking receive) and returns it to the
    /// pool if it is exactly as fresh; otherwise drops it. Call only once nothing of the
    /// container can run in it any more.
    pub fn give_back(mut self) -> std::result::Result<(), ProbeError> {
        let ns = self.ns.take().expect("present until given back");
        let checked = ns.probe.check();
        let mut st = self.pool.state.lock().unwrap();
        st.lent -= 1;
        match checked {
            Ok(()) => {
                // A surplus namespace (after a burst) is let go; it was empty all the same.
                if st.ready.len() < self.pool.size + self.pool.spare() && !st.stopping {
                    st.ready.push(ns);
                    self.pool.reused.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                self.pool.dropped.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

impl Drop for LentNetns {
    /// Not given back: its container may not be provably gone. Never reused.
    fn drop(&mut self) {
        if self.ns.take().is_some() {
            self.pool.state.lock().unwrap().lent -= 1;
            self.pool.dropped.fetch_add(1, Ordering::Relaxed);
            self.pool.wanted.notify_one();
        }
    }
}

impl Shared {
    /// Namespaces that come back refill the pool; new ones are made only while fewer than
    /// `size` exist in all, or fewer than the spare count are ready.
    fn wants_more(&self, st: &State) -> bool {
        st.ready.len() < self.spare() || st.ready.len() + st.lent < self.size
    }

    /// Kept ready beyond those lent; returned namespaces are kept up to `size` plus this,
    /// so the spare ones made during a burst do not push returning ones out.
    fn spare(&self) -> usize {
        self.size.min(MIN_SPARE)
    }

    fn fill(&self, home: OwnedFd) {
        loop {
            {
                let mut st = self.state.lock().unwrap();
                while !self.wants_more(&st) && !st.stopping {
                    st = self.wanted.wait(st).unwrap();
                }
                if st.stopping {
                    return;
                }
            }
            match make_netns(&home) {
                Ok(ns) => {
                    self.made.fetch_add(1, Ordering::Relaxed);
                    self.state.lock().unwrap().ready.push(ns);
                    self.made_one.notify_all();
                }
                Err(e) => {
                    // Spawns fall back to CLONE_NEWNET; no point retrying in a loop.
                    tracing::error!("pre-making network namespaces failed, stopping: {e}");
                    self.state.lock().unwrap().failed = true;
                    self.made_one.notify_all();
                    return;
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum MakeError {
    #[error("unshare(CLONE_NEWNET) failed: {0}")]
    Unshare(#[source] nix::Error),
    #[error("opening the new namespace failed: {0}")]
    Open(#[source] std::io::Error),
    #[error("opening its probe failed: {0}")]
    Probe(#[source] ProbeError),
    #[error("returning to our own namespace failed: {0}")]
    Home(#[source] std::io::Error),
}

/// Makes a new network namespace on this thread, opens its probe inside, keeps an fd to
/// it, and goes back home.
fn make_netns(home: &OwnedFd) -> std::result::Result<Netns, MakeError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(MakeError::Unshare)?;
    let made = File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(MakeError::Open)
        .and_then(|fd| {
            let probe = Probe::open_here().map_err(MakeError::Probe)?;
            Ok(Netns { fd, probe })
        });
    // SAFETY: setns with an fd we own naming a network namespace.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(MakeError::Home(std::io::Error::last_os_error()));
    }
    made
}
