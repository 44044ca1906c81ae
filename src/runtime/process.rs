//! Cloning the container's first process, and the parent's side of the error pipe.
//!
//! The child is cloned like posix_spawn does it: CLONE_VM | CLONE_VFORK, on a stack of
//! its own. Sharing our memory until its exec spares the kernel copying the daemon's page
//! tables at clone and tearing the copy down again at exec (both grow with the daemon's
//! size), and CLONE_VFORK suspends only the calling thread, which would wait for the
//! exec anyway. The child must then write nothing of ours: it runs only async-signal-
//! safe code on the prepared plan, and every signal stays blocked until its handlers
//! are reset (by clone3, or by child::run where clone3 is refused).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::child::{self, ChildPlan, Step};
use super::clone3;
use super::watchdog::Deadline;

/// Namespaces made at clone time; the cgroup namespace comes later, after the child has
/// joined its cgroup, so that it is rooted there, and the mount namespace is a copy of
/// the image's template, not of ours (template.rs). The network and IPC namespaces are
/// made here only when the plan brings no pre-made one.
const NAMESPACES: libc::c_int = libc::CLONE_NEWPID | libc::CLONE_NEWUTS;

/// The child's stack: its setup steps need a few KiB; pages are only committed when touched.
const STACK_SIZE: usize = 256 << 10;
const GUARD_SIZE: usize = 4096;

pub struct Spawned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The setup deadline passed and the watchdog killed the child before its exec.
    pub killed_in_setup: bool,
}

/// What the error pipe said.
pub enum SetupResult {
    Exec,
    Failed { step: Step, detail: u32, errno: i32 },
}

/// The child's stack, with a PROT_NONE guard page below it so an overflow faults instead
/// of writing into our memory.
struct ChildStack {
    base: *mut libc::c_void,
}

// SAFETY: the mapping is plain memory owned by this value; it moves between threads only
// while no child runs on it.
unsafe impl Send for ChildStack {}

/// Stacks of children that have exec'd, for the next spawns: mapping and unmapping one
/// per spawn would cost a TLB shootdown on every CPU running a daemon thread.
static SPARE_STACKS: Mutex<Vec<ChildStack>> = Mutex::new(Vec::new());
const SPARE_STACKS_MAX: usize = 16;

impl ChildStack {
    fn take() -> io::Result<Self> {
        match SPARE_STACKS.lock().unwrap().pop() {
            Some(stack) => Ok(stack),
            None => Self::new(),
        }
    }

    /// Only once the child is done with it (CLONE_VFORK: clone has returned).
    fn give_back(self) {
        let mut spare = SPARE_STACKS.lock().unwrap();
        if spare.len() < SPARE_STACKS_MAX {
            spare.push(self);
        }
    }

    fn new() -> io::Result<Self> {
        // SAFETY: a fresh anonymous private mapping; checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                GUARD_SIZE + STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base };
        // SAFETY: the first page of the mapping we own.
        if unsafe { libc::mprotect(base, GUARD_SIZE, libc::PROT_NONE) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Stacks grow down: the child starts at the end (page-aligned, so 16-byte aligned).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, which is what clone expects.
        unsafe { self.base.cast::<u8>().add(GUARD_SIZE + STACK_SIZE).cast() }
    }

    /// The lowest usable address, above the guard page (clone3 takes it and the size).
    fn bottom(&self) -> *mut libc::c_void {
        // SAFETY: the guard page is the first page of our mapping.
        unsafe { self.base.cast::<u8>().add(GUARD_SIZE).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; the child has exec'd or exited (CLONE_VFORK).
        unsafe { libc::munmap(self.base, GUARD_SIZE + STACK_SIZE) };
    }
}

/// What the child gets: the plan, the signal mask to restore before its exec, whether it
/// was cloned into its cgroup (else it joins it itself) and whether its signal handlers
/// were reset by the clone (else it resets them itself).
struct ChildArg<'a> {
    plan: &'a ChildPlan<'a>,
    mask: libc::sigset_t,
    in_cgroup: bool,
    handlers_reset: bool,
}

/// Cleared once clone3 (or its CLONE_CLEAR_SIGHAND) has been refused: an old kernel, a
/// seccomp filter around the daemon. Later spawns go straight to clone.
static CLONE3: AtomicBool = AtomicBool::new(true);
/// Cleared once clone3 into a cgroup has been refused: later spawns have the child join.
static CLONE_INTO_CGROUP: AtomicBool = AtomicBool::new(true);
/// Children cloned straight into their cgroup so far.
static CLONED_INTO_CGROUP: AtomicU64 = AtomicU64::new(0);

/// How many children this process has cloned straight into their cgroup (v2), rather
/// than having them join it.
pub fn cloned_into_cgroup() -> u64 {
    CLONED_INTO_CGROUP.load(Ordering::Relaxed)
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the ChildArg in clone_child's frame, which stays valid and
    // unchanged while the parent thread is suspended by CLONE_VFORK.
    let arg = unsafe { &*(arg as *const ChildArg) };
    child::run(arg.plan, &arg.mask, arg.in_cgroup, arg.handlers_reset)
}

/// Clones the container's first process, which runs [`child::run`] on `plan`; returns
/// once it has exec'd or exited (CLONE_VFORK), or was killed `deadline` after the clone
/// began. `plan` must hold the write end of the error pipe. With `cgroup` (a cgroup v2
/// directory) the child starts in it where the kernel allows (clone3.rs); else it joins
/// through the plan's join files.
pub fn clone_child(
    plan: &ChildPlan,
    deadline: Duration,
    cgroup: Option<BorrowedFd<'_>>,
) -> io::Result<Spawned> {
    let stack = ChildStack::take()?;
    // SAFETY: zeroed sigset_t is a valid out-parameter.
    let mut arg = ChildArg {
        plan,
        mask: unsafe { std::mem::zeroed() },
        in_cgroup: false,
        handlers_reset: false,
    };
    let deadline = Deadline::arm(deadline);
    let flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_PIDFD
        | NAMESPACES
        | if plan.fds.netns().is_some() {
            0
        } else {
            libc::CLONE_NEWNET
        }
        | if plan.fds.ipc().is_some() {
            0
        } else {
            libc::CLONE_NEWIPC
        }
        // The child's first syscall gives it a table of its own (kept_fds.rs).
        | if plan.fds.shares_table() {
            libc::CLONE_FILES
        } else {
            0
        };
    // SAFETY: sigfillset/pthread_sigmask on stack sigsets. Every signal is blocked across
    // the clone so none can run one of our handlers in the child, which shares our memory;
    // our own mask comes back right after.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut arg.mask);
        let mut cloned = None;
        while cloned.is_none() && CLONE3.load(Ordering::Relaxed) {
            let into = cgroup.filter(|_| CLONE_INTO_CGROUP.load(Ordering::Relaxed));
            arg.in_cgroup = into.is_some();
            arg.handlers_reset = true;
            // SAFETY: as for clone below; the child reads `arg` only while we wait.
            match clone3::clone3(
                child_entry,
                &mut arg as *mut ChildArg as *mut libc::c_void,
                stack.bottom(),
                STACK_SIZE,
                flags,
                deadline.pidfd_slot(),
                into,
            ) {
                Ok(pid) => {
                    if into.is_some() {
                        CLONED_INTO_CGROUP.fetch_add(1, Ordering::Relaxed);
                    }
                    cloned = Some(Ok(pid));
                }
                // Refused with a cgroup: try again without, the child joins it.
                Err(libc::EINVAL) if into.is_some() => {
                    CLONE_INTO_CGROUP.store(false, Ordering::Relaxed);
                }
                Err(libc::ENOSYS | libc::EPERM | libc::EINVAL | libc::E2BIG) => {
                    CLONE3.store(false, Ordering::Relaxed);
                }
                Err(errno) => cloned = Some(Err(io::Error::from_raw_os_error(errno))),
            }
        }
        // SAFETY: the stack is ours and outlives the child's use of it (we are suspended
        // until its exec); CLONE_PIDFD stores the pidfd through the parent_tid argument,
        // into the deadline's slot, which lives until disarm.
        let cloned = cloned.unwrap_or_else(|| {
            arg.in_cgroup = false;
            arg.handlers_reset = false;
            let pid = libc::clone(
                child_entry,
                stack.top(),
                flags | libc::SIGCHLD,
                &mut arg as *mut ChildArg as *mut libc::c_void,
                deadline.pidfd_slot(),
            );
            if pid < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(pid)
            }
        });
        libc::pthread_sigmask(libc::SIG_SETMASK, &arg.mask, std::ptr::null_mut());
        match cloned {
            Ok(pid) => pid,
            Err(err) => {
                deadline.disarm();
                return Err(err);
            }
        }
    };
    let (pidfd, killed_in_setup) = deadline.disarm();
    stack.give_back();
    Ok(Spawned {
        pid,
        // SAFETY: CLONE_PIDFD stored a new pidfd that nothing else owns.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        killed_in_setup,
    })
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
