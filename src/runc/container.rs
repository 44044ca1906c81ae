//! One `runc run` in flight: kill it, reap it, clean up after it (the caller awaits its
//! pidfd with the timeout).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::Duration;

use super::{sys, Runc, RuncError};
use crate::pidfd;
use crate::runtime::{Exit, ExitStatus};

/// How long `runc kill` is retried while runc is still creating the container (before
/// that, runc does not know the id yet).
const KILL_RETRIES: u32 = 100;
const KILL_RETRY_PAUSE: Duration = Duration::from_millis(20);

struct Running {
    runc: Runc,
    id: String,
    child: Child,
}

pub struct RuncContainer {
    pidfd: OwnedFd,
    /// None once reaped.
    running: Option<Running>,
}

impl RuncContainer {
    pub(super) fn new(runc: Runc, id: String, child: Child) -> Result<Self, RuncError> {
        let mut running = Running { runc, id, child };
        match pidfd::open(running.child.id()) {
            Ok(pidfd) => Ok(RuncContainer {
                pidfd,
                running: Some(running),
            }),
            Err(e) => {
                let _ = running.teardown(true);
                Err(sys("pidfd_open of runc")(e))
            }
        }
    }

    /// The pidfd of the `runc run` process: readable once the container has ended.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The memory charged to the container's cgroup (which runc made) now, in bytes.
    pub fn memory_usage(&self) -> std::io::Result<u64> {
        let running = self.running.as_ref().expect("present until finish or drop");
        crate::runtime::cgroup_memory_usage(&running.runc.cgroup_parent, &running.id)
    }

    /// Blocking: kills the container unless it has `exited`, reaps runc and removes
    /// whatever runc left. Killing may retry for a while: call it off the async threads.
    pub fn finish(mut self, exited: bool) -> Result<ExitStatus, RuncError> {
        let mut running = self.running.take().expect("present until finish or drop");
        let status = running.teardown(!exited).map_err(sys("waiting for runc"))?;
        Ok(ExitStatus {
            exit: if exited {
                exit_of(status)
            } else {
                Exit::TimedOut
            },
            oom_killed: false,
        })
    }
}

impl Running {
    /// Kills the container if asked, reaps `runc run` and force-deletes the container if
    /// runc did not get to (it was killed, or failed half-way).
    fn teardown(&mut self, kill: bool) -> std::io::Result<std::process::ExitStatus> {
        if kill {
            self.kill();
        }
        let status = self.child.wait();
        if self.runc.knows(&self.id) && !self.runc.delete(&self.id) {
            tracing::error!(container = %self.id, "runc delete --force failed");
        }
        status
    }

    fn kill(&mut self) {
        for _ in 0..KILL_RETRIES {
            if matches!(self.child.try_wait(), Ok(Some(_))) || self.runc.kill(&self.id) {
                return;
            }
            std::thread::sleep(KILL_RETRY_PAUSE);
        }
        // runc never got as far as a container we could kill: stop runc itself.
        tracing::error!(container = %self.id, "runc kill kept failing; killing runc");
        let _ = self.child.kill();
    }
}

/// `runc run` exits with the container's status, 128+N when it was killed by signal N
/// (a handler that exits 128+N by itself reads the same).
fn exit_of(status: std::process::ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(c), _) if c > 128 && c < 128 + 65 => Exit::Signal(c - 128),
        (Some(c), _) => Exit::Code(c),
        (None, Some(sig)) => Exit::Signal(sig),
        (None, None) => Exit::Code(-1),
    }
}

impl Drop for RuncContainer {
    /// Whatever dropped the handle, the container is killed and cleaned up; in a thread
    /// of its own, since runc commands block.
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            std::thread::spawn(move || {
                let _ = running.teardown(true);
            });
        }
    }
}
