//! A running container: wait with a timeout (blocking or from tokio), kill, tear down.
//!
//! Killing the first process kills the whole container: it is pid 1 of its pid namespace,
//! and the kernel SIGKILLs every other member when it dies and reaps them itself, so
//! orphaned grandchildren never linger as zombies. The cgroup kill then catches anything
//! still exiting, and the cgroup is reused or removed only once it is empty. Only then, with
//! nothing of the container left to run in it, does a pooled network namespace go back
//! to its pool (which checks that it is empty first).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::cgroup_pool::LentCgroup;
use super::error::{Result, RuntimeError};
use super::netns_pool::LentNetns;
use super::timeline::Timeline;
use crate::pidfd::Namespace;

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal (OOM kills show as SIGKILL with `oom_killed`).
    Signal(i32),
    /// Did not end within the timeout; it was killed.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub exit: Exit,
    pub oom_killed: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }
}

pub struct Container {
    pid: i32,
    pidfd: OwnedFd,
    cgroup: Option<LentCgroup>,
    netns: Option<LentNetns>,
    reaped: bool,
    timeline: Option<Timeline>,
    netns_cookie: u64,
    /// The container's mount namespace, held so that the last reference is ours: its
    /// mounts are then torn down in `tear_down`, off the container's exit (see
    /// [`Container::hold_mount_namespace`]).
    mount_ns: Option<OwnedFd>,
}

/// Cleared once the kernel has refused a namespace of a pidfd (before 6.11).
static NAMESPACES_BY_PIDFD: AtomicBool = AtomicBool::new(true);

/// The container's namespace `ns` through its pidfd, None where the kernel cannot.
fn namespace_of(pidfd: BorrowedFd<'_>, ns: Namespace) -> Option<OwnedFd> {
    if !NAMESPACES_BY_PIDFD.load(Ordering::Relaxed) {
        return None;
    }
    match crate::pidfd::namespace(pidfd, ns) {
        Ok(fd) => Some(fd),
        Err(e) => {
            if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) {
                NAMESPACES_BY_PIDFD.store(false, Ordering::Relaxed);
            }
            None
        }
    }
}

impl Container {
    pub(super) fn new(
        pid: i32,
        pidfd: OwnedFd,
        cgroup: LentCgroup,
        netns_cookie: u64,
        netns: Option<LentNetns>,
    ) -> Self {
        Container {
            pid,
            pidfd,
            cgroup: Some(cgroup),
            netns,
            reaped: false,
            timeline: None,
            netns_cookie,
            mount_ns: None,
        }
    }

    /// Takes a reference on the container's mount namespace. Without it, the first
    /// process's exit drops the last one, and the kernel unmounts and destroys the
    /// container's ~15 mounts (proc, tmpfs, devpts superblocks) in that exit, before the
    /// exit is reported: ~50 µs between the handler's end and its pidfd turning readable.
    /// Held, they go in the offloaded teardown instead, before the cgroup is drained
    /// (so /tmp's pages are uncharged from it first). Nothing where the kernel lacks the
    /// ioctl: the exit then pays for it, as before.
    pub(super) fn hold_mount_namespace(&mut self) {
        self.mount_ns = namespace_of(self.pidfd.as_fd(), Namespace::Mount);
    }

    /// The inode of the container's pid namespace (None once it has ended): through the
    /// pidfd where the kernel can, else /proc/<pid>/ns/pid (a path walk through /proc,
    /// ~1 % of all CPU at saturation).
    pub fn pid_namespace(&self) -> Option<u64> {
        match namespace_of(self.pidfd.as_fd(), Namespace::Pid) {
            Some(fd) => std::fs::File::from(fd).metadata().ok().map(|m| m.ino()),
            None => crate::pidfd::pid_namespace_by_path(self.pid),
        }
    }

    /// The cookie (SO_NETNS_COOKIE) of the container's network namespace: every socket
    /// made in the container carries it.
    pub fn netns_cookie(&self) -> u64 {
        self.netns_cookie
    }

    pub(super) fn set_timeline(&mut self, t: Timeline) {
        self.timeline = Some(t);
    }

    /// How long each setup phase took, from `spawn` to the exec.
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_ref()
    }

    /// The memory charged to the container's cgroup now, in bytes.
    pub fn memory_usage(&self) -> Result<u64> {
        self.cgroup
            .as_ref()
            .expect("present until torn down")
            .memory_usage()
    }

    /// The host pid of the container's first process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pidfd of the first process: readable once it has exited.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// SIGKILLs the container (and so everything in its pid namespace).
    pub fn kill(&self) {
        // ESRCH: it has exited already; nothing else can fail on our own pidfd.
        let _ = crate::pidfd::send_signal(&self.pidfd, libc::SIGKILL);
    }

    /// Blocks until the container exits or `timeout` passes (then kills it) and reaps it;
    /// its cgroup is removed and its namespace returned off this path (see `tear_down`).
    pub fn wait_blocking(mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let ready = loop {
            match poll(&mut fds, ms) {
                Ok(n) => break n > 0,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(RuntimeError::sys("poll pidfd")(e)),
            }
        };
        self.finish(ready)
    }

    /// Waits from tokio until the container exits or `timeout` passes (then kills it) and
    /// reaps it; the rest of the teardown as for `wait_blocking`.
    pub async fn wait(mut self, timeout: Duration) -> Result<ExitStatus> {
        let exited = crate::pidfd::exited(self.pidfd.as_fd(), timeout)
            .await
            .map_err(|source| RuntimeError::Sys {
                op: "poll pidfd",
                source,
            })?;
        // Reaping an exited child and removing its cgroup take microseconds.
        self.finish(exited)
    }

    fn finish(&mut self, exited: bool) -> Result<ExitStatus> {
        if !exited {
            self.kill();
        }
        let status = self.reap()?;
        let oom_killed = self.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        self.tear_down(true);
        Ok(ExitStatus {
            exit: if exited { status } else { Exit::TimedOut },
            oom_killed,
        })
    }

    /// waitid(P_PIDFD): blocks until the first process has exited and reaps it.
    fn reap(&mut self) -> Result<Exit> {
        loop {
            // SAFETY: zeroed siginfo is a valid out-parameter for waitid.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our pidfd with a valid siginfo pointer.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RuntimeError::Sys {
                    op: "waitid",
                    source: e,
                });
            }
            self.reaped = true;
            // SAFETY: waitid filled in a SIGCHLD siginfo; si_status is valid for it.
            let status = unsafe { info.si_status() };
            return Ok(match info.si_code {
                libc::CLD_EXITED => Exit::Code(status),
                _ => Exit::Signal(status),
            });
        }
    }

    /// Drains the cgroup, then returns it and the network namespace to their pools if
    /// `reuse` (only once reaped: nothing of the container can run in them any more),
    /// else removes the cgroup. Off the async threads, and off the caller's path: the
    /// exit status is known by now, and the next request must not wait for this one's
    /// cleanup.
    fn tear_down(&mut self, reuse: bool) {
        let (pid, cgroup) = (self.pid, self.cgroup.take());
        let netns = self.netns.take().filter(|_| reuse);
        let mount_ns = self.mount_ns.take();
        crate::offload::off_async(move || {
            // The last reference: the close unmounts everything (in the task work that
            // runs before it returns), tmpfs pages uncharged before the drain below.
            drop(mount_ns);
            if let Some(cg) = cgroup {
                let drained = if reuse { cg.give_back() } else { cg.remove() };
                if let Err(e) = drained {
                    // Processes may remain in it: the namespace is dropped, never reused.
                    tracing::error!(pid, "draining a container's cgroup: {e}");
                    return;
                }
            }
            if let Some(ns) = netns {
                if let Err(e) = ns.give_back() {
                    tracing::warn!(pid, "network namespace not reused: {e}");
                }
            }
        });
    }
}

impl Drop for Container {
    /// Whatever path dropped the handle, nothing is left behind: no process, no zombie,
    /// no cgroup.
    fn drop(&mut self) {
        if !self.reaped {
            self.kill();
            if let Err(e) = self.reap() {
                tracing::error!(pid = self.pid, "reaping a dropped container: {e}");
            }
        }
        // Not reaped: not provably gone, so its namespace is never reused.
        self.tear_down(self.reaped);
    }
}
