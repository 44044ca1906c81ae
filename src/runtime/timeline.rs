//! Where a container's start-up time goes: CLOCK_MONOTONIC readings at each setup phase.
//!
//! The child may not allocate, lock or log (see child.rs); it shares our memory until its
//! exec (CLONE_VM), so it stores its readings straight into the clock the parent made,
//! which reads them once the child has exec'd. clock_gettime and atomic stores are
//! async-signal-safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The instants recorded, in order. The parent marks Start, Prepared and ExecSeen; the
/// child marks the rest.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Mark {
    Start,
    Checked,
    CgroupCreated,
    Prepared,
    ChildStarted,
    NetnsJoined,
    CgroupJoined,
    RootEntered,
    Mounted,
    PrivilegesDropped,
    NetworkRestricted,
    SeccompInstalled,
    ExecSeen,
}

const MARKS: usize = Mark::ExecSeen as usize + 1;

/// Names of the phases between consecutive marks.
pub const PHASES: [&str; MARKS - 1] = [
    "checks (command, working directory)",
    "cgroup creation",
    "mount plan, fds",
    "clone (namespaces)",
    "kept fds, setsid, join the pre-made netns and IPC namespace, netns cookie",
    "join cgroup",
    "mount namespace from the template (setns, unshare)",
    "own mounts (proc, masks, read-only paths, tmp, shm, mqueue, pts)",
    "hostname, workdir, ids, caps",
    "no_new_privs, Landlock",
    "seccomp",
    "exec",
];

/// The timestamps of one spawn, written by the parent and by the child.
#[derive(Default)]
pub struct Clock {
    at: [AtomicU64; MARKS],
}

impl Clock {
    /// Records `mark` now. Async-signal-safe: usable in the cloned child.
    pub fn mark(&self, mark: Mark) {
        self.at[mark as usize].store(now_ns(), Ordering::Relaxed);
    }

    /// Read once the child has exec'd; the error pipe's close orders its stores before.
    /// The phase that began at the last recorded mark: where a stuck child is.
    pub fn current_phase(&self) -> &'static str {
        let last = self.at.iter().rposition(|t| t.load(Ordering::Relaxed) != 0);
        PHASES[last.unwrap_or(0).min(PHASES.len() - 1)]
    }

    pub fn timeline(&self) -> Timeline {
        Timeline {
            at: std::array::from_fn(|i| self.at[i].load(Ordering::Relaxed)),
        }
    }
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The recorded instants of one container's start.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    at: [u64; MARKS],
}

impl Timeline {
    /// Each phase (named as in [`PHASES`]) with its duration.
    pub fn phases(&self) -> impl Iterator<Item = (&'static str, Duration)> + '_ {
        PHASES.iter().enumerate().map(|(i, name)| {
            let d = self.at[i + 1].saturating_sub(self.at[i]);
            (*name, Duration::from_nanos(d))
        })
    }

    /// From the start of `spawn` until the parent saw the exec.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.at[MARKS - 1].saturating_sub(self.at[0]))
    }
}
