//! clone3, for two flags clone(2) lacks:
//! - CLONE_CLEAR_SIGHAND (5.5+): the child starts with every caught signal back at its
//!   default action, which it would otherwise restore itself with two rt_sigaction calls
//!   per signal (child.rs);
//! - CLONE_INTO_CGROUP (5.7+): the container's first process starts inside its cgroup.
//!
//! On cgroup v2 the child otherwise joins by writing to cgroup.procs, which takes the
//! global cgroup_threadgroup_rwsem for writing: a percpu rwsem whose writer waits for an
//! RCU grace period, milliseconds at a time (it made that step's p99 ~10 ms). A clone into
//! the cgroup only takes it for reading, as every fork does. (v1 moves the single-threaded
//! child with a `tasks` write, which skips the rwsem: nothing to gain there.)
//!
//! libc has no clone3 wrapper that runs a function on a new stack, so the syscall is made
//! here: the child returns from it on the stack we gave, calls the entry function with its
//! argument (both kept in callee-saved registers, which the child inherits) and exits with
//! its result. x86_64 only; elsewhere, and where the kernel or a seccomp filter refuses
//! clone3 (ENOSYS, EPERM) or a flag (EINVAL), the caller falls back (process.rs).

use std::os::fd::{AsRawFd, BorrowedFd};

/// struct clone_args of <linux/sched.h> (CLONE_ARGS_SIZE_VER2: up to `cgroup`).
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

const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What the child runs: `entry(arg)`, whose result becomes its exit status.
pub type Entry = extern "C" fn(*mut libc::c_void) -> libc::c_int;

/// clone3 of a child running `entry(arg)` on the stack `[stack, stack + stack_size)`, with
/// its signal handlers reset, in the cgroup `cgroup` (a directory fd) if any, with `flags`
/// (without the exit signal, which is SIGCHLD); with CLONE_PIDFD the pidfd is stored at
/// `pidfd`. Returns the child's pid, or the errno.
///
/// # Safety
/// As for clone(2) with CLONE_VM: the stack must stay valid and unused by anything else
/// until the child execs or exits (CLONE_VFORK ensures that for the caller's thread), and
/// `entry` may only run async-signal-safe code, as it shares our memory.
#[cfg(target_arch = "x86_64")]
pub unsafe fn clone3(
    entry: Entry,
    arg: *mut libc::c_void,
    stack: *mut libc::c_void,
    stack_size: usize,
    flags: libc::c_int,
    pidfd: *mut libc::c_int,
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<i32, i32> {
    let into_cgroup = if cgroup.is_some() {
        CLONE_INTO_CGROUP
    } else {
        0
    };
    let args = CloneArgs {
        flags: flags as u32 as u64 | CLONE_CLEAR_SIGHAND | into_cgroup,
        pidfd: pidfd as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack as u64,
        stack_size: stack_size as u64,
        cgroup: cgroup.map_or(0, |fd| fd.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY: the caller upholds clone's contract. In the parent the asm is one syscall.
    // In the child (rax = 0), which starts on the new stack with the parent's registers,
    // it calls entry(arg) from r12/r13 (callee-saved, so the parent's values are intact
    // after the syscall) with the stack 16-byte aligned before the call, and exits with
    // the result; it never falls through to Rust code of the parent's frame.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        Err(-ret as i32)
    } else {
        Ok(ret as i32)
    }
}

/// Not built for this architecture: callers fall back to clone.
///
/// # Safety
/// None needed; it makes no syscall.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn clone3(
    _entry: Entry,
    _arg: *mut libc::c_void,
    _stack: *mut libc::c_void,
    _stack_size: usize,
    _flags: libc::c_int,
    _pidfd: *mut libc::c_int,
    _cgroup: Option<BorrowedFd<'_>>,
) -> Result<i32, i32> {
    Err(libc::ENOSYS)
}
