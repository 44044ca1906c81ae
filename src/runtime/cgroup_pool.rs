//! Container cgroups reused once empty, instead of made and removed per container.
//!
//! A cgroup's mkdir and rmdir (one per hierarchy: three on a v1 host) were a tenth of a
//! container's CPU at saturation, and a removed memory cgroup lingers in the kernel,
//! "dying", until the last page charged to it is freed. An ended container's cgroup is
//! drained instead (every member killed, until the kernel lists none in any hierarchy)
//! and waits for the next container, its join files still open. A container can change
//! nothing in its cgroup but its charges: it has no cgroupfs, no CAP_SYS_ADMIN, and its
//! cgroup namespace is rooted there. What stays charged after its members are gone is
//! page cache of the files they read (and slab), reclaimable: the kernel takes it back
//! first when the next container needs the memory. It is not reclaimed by force, which
//! would evict the image's hot files from the page cache for every container. Counters
//! that only grow (`oom_kill`) and the memory charged are read against their values at
//! lending.
//!
//! Limits are per container: a pooled cgroup whose limits differ from the next
//! container's is re-limited (and read back) before it is lent. At most `capacity` wait;
//! one unused for `idle_ttl` is removed, so an idle daemon holds none.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::cgroup::ContainerCgroup;
use super::error::Result;
use super::Resources;

pub struct CgroupPool {
    shared: Arc<Shared>,
}

/// How the pool's cgroups have fared since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Made for a container because none waited.
    pub made: u64,
    /// Lent again after a container ended.
    pub reused: u64,
    /// Could not be drained or re-limited: removed, never lent again.
    pub dropped: u64,
    /// Waiting now.
    pub idle: u64,
}

struct Shared {
    parent: String,
    capacity: usize,
    idle_ttl: Duration,
    state: Mutex<State>,
    /// Signalled at shutdown. A returned cgroup needs no signal: it expires after every
    /// one already waiting, and the trimmer's wait, never longer than `idle_ttl`, ends
    /// before that.
    closing: Condvar,
    made: AtomicU64,
    reused: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Most recently returned last: lent first (its memory is the warmest), the oldest
    /// are trimmed first.
    idle: Vec<Idle>,
    stopping: bool,
}

struct Idle {
    cgroup: Pooled,
    since: Instant,
}

/// A cgroup with what lending it again needs.
struct Pooled {
    cgroup: ContainerCgroup,
    limits: Resources,
    /// The files a child writes to join it (cgroup.procs or v1 tasks), opened once.
    join: Vec<OwnedFd>,
    /// Its directory on v2, to clone the child straight into it.
    clone_target: Option<OwnedFd>,
    /// Its OOM kill count, and the memory still charged to it, when its last container
    /// had gone (0 and 0 when new): read off the request path, at return.
    oom_kills: u64,
    memory_left: u64,
}

/// A cgroup lent to one container. [`give_back`](Self::give_back) once the container's
/// first process is reaped; dropped without it, the cgroup is drained and removed.
pub struct LentCgroup {
    cgroup: Option<Pooled>,
    /// None: not pooled (the runtime keeps no pool): removed when given back.
    pool: Option<Arc<Shared>>,
}

impl CgroupPool {
    /// Keeps up to `capacity` ended containers' cgroups under `parent` for reuse, each
    /// for at most `idle_ttl` unused.
    pub fn start(parent: &str, capacity: usize, idle_ttl: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            parent: parent.to_string(),
            capacity,
            idle_ttl,
            state: Mutex::new(State::default()),
            closing: Condvar::new(),
            made: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let trimmer = shared.clone();
        std::thread::Builder::new()
            .name("faasd-cgroups".into())
            .spawn(move || trimmer.trim_idle())
            .map_err(|source| super::RuntimeError::Sys {
                op: "start the cgroup pool's thread",
                source,
            })?;
        Ok(CgroupPool { shared })
    }

    /// A cgroup with `limits` for container `id`: a waiting one, re-limited if need be,
    /// or a new one named `id`.
    pub fn take(&self, id: &str, limits: &Resources) -> Result<LentCgroup> {
        let shared = &self.shared;
        loop {
            let Some(Idle { mut cgroup, .. }) = shared.state.lock().unwrap().idle.pop() else {
                break;
            };
            if cgroup.limits != *limits {
                if let Err(e) = cgroup.cgroup.apply(limits) {
                    tracing::warn!("re-limiting a pooled cgroup: {e}");
                    shared.drop_cgroup(cgroup);
                    continue;
                }
                cgroup.limits = *limits;
            }
            shared.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(LentCgroup::lend(cgroup, Some(shared.clone())));
        }
        let made = Pooled::create(&shared.parent, id, limits)?;
        shared.made.fetch_add(1, Ordering::Relaxed);
        Ok(LentCgroup::lend(made, Some(shared.clone())))
    }

    pub fn stats(&self) -> CgroupStats {
        let s = &self.shared;
        CgroupStats {
            made: s.made.load(Ordering::Relaxed),
            reused: s.reused.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            idle: s.state.lock().unwrap().idle.len() as u64,
        }
    }

    /// Removes every waiting cgroup and keeps none from now on (at shutdown, before the
    /// parent is swept).
    pub fn close(&self) {
        let idle = {
            let mut st = self.shared.state.lock().unwrap();
            st.stopping = true;
            std::mem::take(&mut st.idle)
        };
        self.shared.closing.notify_all();
        for i in idle {
            self.shared.remove(i.cgroup);
        }
    }
}

impl Drop for CgroupPool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Pooled {
    fn create(parent: &str, id: &str, limits: &Resources) -> Result<Self> {
        let cgroup = ContainerCgroup::create(parent, id, limits)?;
        let files = cgroup
            .join_files()
            .and_then(|join| Ok((join, cgroup.clone_target()?)));
        let (join, clone_target) = match files {
            Ok(files) => files,
            Err(e) => {
                let _ = cgroup.destroy();
                return Err(e);
            }
        };
        Ok(Pooled {
            cgroup,
            limits: *limits,
            join,
            clone_target,
            oom_kills: 0,
            memory_left: 0,
        })
    }
}

impl LentCgroup {
    /// A new cgroup for container `id` that is removed when the container ends (no pool).
    pub fn unpooled(parent: &str, id: &str, limits: &Resources) -> Result<Self> {
        Ok(Self::lend(Pooled::create(parent, id, limits)?, None))
    }

    fn lend(cgroup: Pooled, pool: Option<Arc<Shared>>) -> Self {
        LentCgroup {
            cgroup: Some(cgroup),
            pool,
        }
    }

    fn pooled(&self) -> &Pooled {
        self.cgroup.as_ref().expect("present until given back")
    }

    /// The files the child writes "0" into to join the cgroup.
    pub fn join_files(&self) -> &[OwnedFd] {
        &self.pooled().join
    }

    /// The cgroup's directory to clone the child into (v2; None on v1).
    pub fn clone_target(&self) -> Option<BorrowedFd<'_>> {
        self.pooled().clone_target.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether the kernel's OOM killer fired in this cgroup since it was lent.
    pub fn oom_killed(&self) -> bool {
        let pooled = self.pooled();
        pooled.cgroup.oom_kills() > pooled.oom_kills
    }

    /// The memory charged to the cgroup since it was lent, in bytes: the container's. (If
    /// the kernel reclaimed some of what past members left meanwhile, a little less.)
    pub fn memory_usage(&self) -> Result<u64> {
        let pooled = self.pooled();
        let now = pooled.cgroup.memory_usage()?;
        Ok(now.saturating_sub(pooled.memory_left))
    }

    /// Drains the cgroup (blocking) and returns it to the pool, or removes it when there
    /// is no pool, the pool is full or closed. On error its processes may remain: it is
    /// never lent again, and left to the sweep at the daemon's stop or next start.
    pub fn give_back(mut self) -> Result<()> {
        let mut cgroup = self.cgroup.take().expect("present until given back");
        let Some(pool) = self.pool.take() else {
            return cgroup.cgroup.destroy();
        };
        if let Err(e) = cgroup.cgroup.drain() {
            pool.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        cgroup.oom_kills = cgroup.cgroup.oom_kills();
        cgroup.memory_left = cgroup.cgroup.memory_usage().unwrap_or(0);
        let mut st = pool.state.lock().unwrap();
        if st.stopping || st.idle.len() >= pool.capacity {
            drop(st);
            return cgroup.cgroup.destroy();
        }
        st.idle.push(Idle {
            cgroup,
            since: Instant::now(),
        });
        Ok(())
    }

    /// Drains and removes the cgroup (blocking), never to be lent again.
    pub fn remove(mut self) -> Result<()> {
        let cgroup = self.cgroup.take().expect("present until given back");
        cgroup.cgroup.destroy()
    }
}

impl Drop for LentCgroup {
    /// Not given back (a spawn that failed): drained and removed, blocking.
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(e) = cgroup.cgroup.destroy() {
                tracing::error!("removing a container's cgroup: {e}");
            }
        }
    }
}

impl Shared {
    /// Removes cgroups that waited longer than `idle_ttl`, until the pool closes.
    fn trim_idle(&self) {
        let mut st = self.state.lock().unwrap();
        while !st.stopping {
            let now = Instant::now();
            let expired = st
                .idle
                .iter()
                .position(|i| now.duration_since(i.since) < self.idle_ttl)
                .unwrap_or(st.idle.len());
            // The oldest are first: those before `expired` have waited long enough.
            let old: Vec<Idle> = st.idle.drain(..expired).collect();
            if !old.is_empty() {
                drop(st);
                for i in old {
                    self.remove(i.cgroup);
                }
                st = self.state.lock().unwrap();
                continue;
            }
            let wait = st
                .idle
                .first()
                .map(|i| self.idle_ttl.saturating_sub(now.duration_since(i.since)))
                .unwrap_or(self.idle_ttl);
            st = self.closing.wait_timeout(st, wait).unwrap().0;
        }
    }

    fn remove(&self, cgroup: Pooled) {
        if let Err(e) = cgroup.cgroup.destroy() {
            tracing::error!("removing a pooled cgroup: {e}");
        }
    }

    fn drop_cgroup(&self, cgroup: Pooled) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.remove(cgroup);
    }
}
