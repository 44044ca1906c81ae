//! Where a container's start-up time goes: CLOCK_MONOTONIC readings at each setup phase.
//!
//! The child may not allocate, lock or log (see child.rs), so it writes its readings into
//! a page mapped MAP_SHARED before the clone, which the parent reads once the child has
//! exec'd. clock_gettime is async-signal-safe, and one page per spawn costs a couple of
//! microseconds.

use std::io;
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
    Mounted,
    RootPivoted,
    PrivilegesDropped,
    SeccompInstalled,
    ExecSeen,
}

const MARKS: usize = Mark::ExecSeen as usize + 1;

/// Names of the phases between consecutive marks.
pub const PHASES: [&str; MARKS - 1] = [
    "checks (mount points, command)",
    "cgroup creation",
    "mount plan, fds",
    "clone (namespaces)",
    "join the pre-made netns",
    "join cgroup",
    "mounts",
    "pivot_root",
    "hostname, stdio, ids, caps, fds",
    "seccomp",
    "exec",
];

/// A page of timestamps shared between the parent and the cloned child.
pub struct SharedClock {
    page: *mut u64,
}

// SAFETY: the page is plain memory; each slot is written by one process once and read
// by the parent only after the child has exec'd (the error pipe orders the two).
unsafe impl Send for SharedClock {}

impl SharedClock {
    pub fn new() -> io::Result<Self> {
        // SAFETY: an anonymous shared mapping of one page; checked for MAP_FAILED.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedClock { page: page.cast() })
    }

    /// Records `mark` now. Async-signal-safe: usable in the cloned child.
    pub fn mark(&self, mark: Mark) {
        // SAFETY: the slot index is below MARKS, well inside the page we mapped.
        unsafe { std::ptr::write_volatile(self.page.add(mark as usize), now_ns()) };
    }

    pub fn timeline(&self) -> Timeline {
        let mut at = [0u64; MARKS];
        for (i, slot) in at.iter_mut().enumerate() {
            // SAFETY: as in `mark`; the child has exec'd, so nothing writes any more.
            *slot = unsafe { std::ptr::read_volatile(self.page.add(i)) };
        }
        Timeline { at }
    }
}

impl Drop for SharedClock {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`; no reference to it outlives self.
        unsafe { libc::munmap(self.page.cast(), page_size()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf with a constant name.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
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
