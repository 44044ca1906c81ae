//! clone3 of the container's first process and the parent's side of the error pipe.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::child::{self, ChildPlan, Step};

/// The kernel's `struct clone_args` (not in libc for glibc targets).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Namespaces made at clone time; the cgroup namespace comes later, after the child has
/// joined its cgroup, so that it is rooted there. The network namespace is made here only
/// when the plan brings no pre-made one.
const NAMESPACES: u64 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) as u64;

pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

/// What the error pipe said.
pub enum SetupResult {
    Exec,
    Failed { step: Step, detail: u32, errno: i32 },
}

/// Clones the container's first process, which runs [`child::run`] on `plan`.
///
/// Like fork, the child gets a copy of our address space (no CLONE_VM), so `plan` is
/// valid in it; it must hold the write end of the error pipe.
pub fn clone_child(plan: &ChildPlan) -> io::Result<Spawned> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: NAMESPACES
            | libc::CLONE_PIDFD as u64
            | if plan.netns.is_some() {
                0
            } else {
                libc::CLONE_NEWNET as u64
            },
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: args is a valid clone_args of the size we pass. Without CLONE_VM and with a
    // null stack the child continues on a copy of this stack, like fork; it runs only
    // async-signal-safe code (child::run) and never returns from this frame.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => child::run(plan),
        pid => Ok(Spawned {
            pid: pid as i32,
            // SAFETY: CLONE_PIDFD stored a new pidfd that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// Waits for the child to exec (the pipe closes empty) or to report a failed step.
pub fn await_setup(pipe: &OwnedFd, timeout: Duration) -> io::Result<Option<SetupResult>> {
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(pipe),
        PollFlags::POLLIN,
    )];
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    loop {
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut msg = [0u8; 12];
    let mut got = 0;
    while got < msg.len() {
        // SAFETY: reading into the unfilled tail of a stack buffer.
        let n = unsafe {
            libc::read(
                pipe.as_raw_fd(),
                msg[got..].as_mut_ptr().cast(),
                msg.len() - got,
            )
        };
        match n {
            0 => break,
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => got += n as usize,
        }
    }
    Ok(Some(match got {
        0 => SetupResult::Exec,
        12 => match child::decode(&msg) {
            (Some(step), detail, errno) => SetupResult::Failed {
                step,
                detail,
                errno,
            },
            (None, ..) => return Err(io::Error::other("garbled message on the error pipe")),
        },
        _ => return Err(io::Error::other("short message on the error pipe")),
    }))
}
