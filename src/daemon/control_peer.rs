//! Who is at the other end of a control connection, as the kernel recorded it.
//!
//! - The network namespace's cookie (SO_NETNS_COOKIE, 5.14+) of the accepted socket: the
//!   kernel makes it in the *connecting* socket's namespace, so it names the container
//!   whose process made that socket, fixed at connect, whoever holds the socket later and
//!   whatever became of its maker. Cookies are never reused.
//! - The process that connected: SO_PEERPIDFD (6.5+) gives a pidfd of exactly it, so a
//!   later check that it is still alive proves that its pid number was not reused in
//!   between; SO_PEERCRED gives the number only.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::runtime::SO_NETNS_COOKIE;

/// SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;

/// Cleared at the first ENOPROTOOPT: the kernel predates SO_PEERPIDFD.
static PEERPIDFD: AtomicBool = AtomicBool::new(true);

pub struct Peer {
    pub netns_cookie: u64,
    pub pid: i32,
    /// Present from Linux 6.5 on.
    pidfd: Option<OwnedFd>,
}

fn getsockopt<T: Default>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt into a T on our stack with its size; T is a plain integer or
    // struct the option fills.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut T).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[derive(Default)]
#[repr(C)]
struct Ucred {
    pid: i32,
    uid: u32,
    gid: u32,
}

impl Peer {
    /// Reads what the kernel recorded of the connection `fd` at connect time.
    pub fn of(fd: &impl AsRawFd) -> io::Result<Peer> {
        let fd = fd.as_raw_fd();
        let netns_cookie = getsockopt::<u64>(fd, SO_NETNS_COOKIE)?;
        let pid = getsockopt::<Ucred>(fd, libc::SO_PEERCRED)?.pid;
        let pidfd = match PEERPIDFD.load(Ordering::Relaxed) {
            false => None,
            true => match getsockopt::<i32>(fd, SO_PEERPIDFD) {
                // SAFETY: the kernel installed a new pidfd in our table for us.
                Ok(pidfd) => Some(unsafe { OwnedFd::from_raw_fd(pidfd) }),
                Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                    PEERPIDFD.store(false, Ordering::Relaxed);
                    None
                }
                // The process that connected has been reaped already (before 6.16):
                // it cannot be anyone's handler.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Peer::gone()),
                Err(e) => return Err(e),
            },
        };
        Ok(Peer {
            netns_cookie,
            pid,
            pidfd,
        })
    }

    /// A peer that matches no container.
    fn gone() -> Peer {
        Peer {
            netns_cookie: 0,
            pid: 0,
            pidfd: None,
        }
    }

    /// Whether the process that connected is `init` (the container's first process, a
    /// child of ours not yet reaped, so its number is its own) or another process of the
    /// pid namespace `pid_ns` (an inode of nsfs) of that container. With a pidfd, it
    /// must also still be alive after the check, so that the number we looked up was
    /// its own. Without one (before 6.5), a process that connected and was reaped before
    /// this check leaves its number to be reused; see control.rs for why that cannot
    /// hand a socket to anyone.
    pub fn belongs_to(&self, init: i32, pid_ns: Option<u64>) -> bool {
        if self.pid <= 0 {
            return false;
        }
        let same = self.pid == init
            || (pid_ns.is_some() && crate::pidfd::pid_namespace_by_path(self.pid) == pid_ns);
        same && self.pidfd.as_ref().is_none_or(alive)
    }
}

fn alive(pidfd: &OwnedFd) -> bool {
    crate::pidfd::send_signal(pidfd, 0).is_ok()
}
