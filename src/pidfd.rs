//! Process file descriptors: open, signal, and await a process's exit from tokio. Shared
//! by both container backends and the request path.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// pidfd_open(2) of `pid`, which must be our own unreaped child (so it cannot be recycled).
pub fn open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` to the process; a pidfd cannot name a recycled pid.
pub fn send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A namespace of a process, as PIDFD_GET_*_NAMESPACE names it.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Namespace {
    Mount = 0xFF03,
    Pid = 0xFF05,
}

/// An fd of the process's namespace `ns` (Linux 6.11+, ioctl on the pidfd): no path walk
/// through /proc/<pid>/ns. ENOTTY on older kernels.
pub fn namespace(pidfd: BorrowedFd<'_>, ns: Namespace) -> io::Result<OwnedFd> {
    // SAFETY: an ioctl without argument on a pidfd; it returns a new fd or -1.
    let fd = unsafe { libc::ioctl(pidfd.as_raw_fd(), ns as u64 as _, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The nsfs inode of `pid`'s pid namespace by its /proc path (every kernel; a path walk
/// through /proc), None once the process is gone.
pub fn pid_namespace_by_path(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// Whether the process has exited (its pidfd is readable), without waiting.
pub fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

/// Waits until the process has exited (true) or `timeout` passed (false), without
/// reaping it: a pidfd turns readable when its process exits.
/// Only one waiter may register a given fd at a time (epoll keys on it): a second,
/// concurrent waiter needs a dup of its own.
pub async fn exited(pidfd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    // SAFETY: the borrow keeps the pidfd open, naming the same process, for as long as the
    // AsyncFd (dropped before this function returns) uses it.
    let afd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)?;
    match tokio::time::timeout(timeout, afd.readable()).await {
        Ok(Ok(_guard)) => Ok(true),
        Ok(Err(e)) => Err(e),
        Err(_elapsed) => Ok(false),
    }
}
