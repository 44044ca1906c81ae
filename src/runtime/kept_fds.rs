//! The only fds the container's first process keeps, at fixed numbers.
//!
//! A child cloned without CLONE_FILES starts with a copy of every fd of the daemon
//! (listeners, other requests' sockets, image directories, pooled cgroups' files: a few
//! hundred at load). Marking them close-on-exec is not enough: until the exec, any path
//! lookup through /proc/self/fd/N (a WorkingDir, a mount target) would follow them out of
//! the container. So the child's first step moves the fds the plan needs to 0.. and
//! really closes everything above, before it looks up any path.
//!
//! Closing a few hundred inherited fds cost ~40 µs per container (2.5 % of all CPU at
//! saturation). So where the kernel lets it, the child is instead cloned sharing our fd
//! table (CLONE_FILES) and its first syscall trades it for a table of its own holding
//! only the fds up to an [`FdDonor`], our pidfd of ourselves at a low number just above
//! the kept fds' (close_range with CLOSE_RANGE_UNSHARE copies just those), from which it fetches each
//! kept fd with pidfd_getfd, each straight into its final number (module doc of
//! [`KeptFds`]). That needs ptrace access to the daemon (the child still has
//! CAP_SYS_PTRACE then); where Yama or an LSM refuses it, the child records the errno in
//! the memory it shares with us and exits, and the runtime goes back to the copy for
//! good (see Runtime::spawn).

use std::marker::PhantomData;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::child::Step;
use super::error::{Result, RuntimeError};

/// stdin, stdout, stderr, the error pipe, the mount template, a Landlock ruleset, a netns,
/// an IPC namespace, three mounts and one cgroup file per hierarchy leave room to spare.
const MAX: usize = 16;

/// Where the error pipe ends up.
pub const ERROR_PIPE: usize = 3;
/// Where the mount template's namespace ends up.
const TEMPLATE: usize = ERROR_PIPE + 1;

/// The fds to keep, in their final order: 0, 1, 2, the error pipe, the mount template's
/// namespace, then the Landlock ruleset, the pre-made netns, IPC namespace and mounts
/// if any, then the cgroup join files. Borrowed from their owners in the parent, which must outlive the clone.
///
/// The i-th ends up as fd i. Fetched, the child first closes every fd but the donor's
/// pidfd, which sits above them all, so each pidfd_getfd returns the lowest free number,
/// its own: no fd is moved twice (one syscall per kept fd, not three).
pub struct KeptFds<'a> {
    sources: [RawFd; MAX],
    len: usize,
    has_landlock: bool,
    has_netns: bool,
    /// A kit made ahead (fresh_pool.rs): its IPC namespace and three mounts.
    has_kit: bool,
    /// Set when the child shares our fd table and fetches its fds (see the module doc).
    fetch: Option<Fetch<'a>>,
    _owners: PhantomData<BorrowedFd<'a>>,
}

/// How a child cloned with CLONE_FILES gets its fds.
struct Fetch<'a> {
    /// The donor's pidfd number: every fd up to it is copied into the child's table.
    pidfd: RawFd,
    /// Where the child leaves the errno of a refused pidfd_getfd (it shares our memory).
    refused: &'a AtomicI32,
}

/// Our own pidfd at a low fd number, from which children fetch their fds; disabled for
/// good once a child was refused.
pub struct FdDonor {
    pidfd: OwnedFd,
    usable: AtomicBool,
}

/// The highest fd number a donor may have: every fd below it is copied into each child.
const DONOR_MAX_FD: RawFd = 64;

impl FdDonor {
    /// None where pidfd_open is missing (before 5.3) or no low fd number is free.
    pub fn open() -> Option<FdDonor> {
        // SAFETY: pidfd_open of our own pid, flags 0; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as RawFd;
        if fd < 0 {
            return None;
        }
        // SAFETY: a new fd that nothing else owns.
        let opened = unsafe { OwnedFd::from_raw_fd(fd) };
        // The lowest free number above every kept fd's: the child closes all the others
        // and each fetch then lands on its own number (see KeptFds).
        // SAFETY: fcntl on the fd we own, integer arguments.
        let low = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_DUPFD_CLOEXEC, MAX as RawFd) };
        if low < 0 {
            return None;
        }
        // SAFETY: the duplicate we just made and own; `opened` closes as it drops.
        let pidfd = unsafe { OwnedFd::from_raw_fd(low) };
        if low > DONOR_MAX_FD {
            return None;
        }
        Some(FdDonor {
            pidfd,
            usable: AtomicBool::new(true),
        })
    }

    /// Whether children still fetch their fds from us.
    pub fn usable(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// A child was refused pidfd_getfd (errno): children copy our table from now on.
    pub fn refused(&self, errno: i32) {
        if self.usable.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "pidfd_getfd on the daemon was refused ({}): containers copy and close the daemon's fd table instead (~40 µs more each)",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }
}

/// A failed move: the step, the fd to report it on and the errno.
pub struct MoveFailed {
    pub step: Step,
    pub pipe: RawFd,
    pub errno: i32,
}

impl<'a> KeptFds<'a> {
    pub fn new(
        stdio: [BorrowedFd<'a>; 3],
        error_pipe: BorrowedFd<'a>,
        template: BorrowedFd<'a>,
        landlock: Option<BorrowedFd<'a>>,
        netns: Option<BorrowedFd<'a>>,
        kit: Option<(BorrowedFd<'a>, [BorrowedFd<'a>; 3])>,
        cgroup_join: &[BorrowedFd<'a>],
    ) -> Result<Self> {
        let all: Vec<RawFd> = stdio
            .iter()
            .chain([&error_pipe, &template])
            .chain(landlock.iter())
            .chain(netns.iter())
            .chain(
                kit.iter()
                    .flat_map(|(ipc, mounts)| std::iter::once(ipc).chain(mounts)),
            )
            .chain(cgroup_join)
            .map(|fd| fd.as_raw_fd())
            .collect();
        if all.len() > MAX {
            return Err(RuntimeError::TooManyFds(all.len()));
        }
        let mut sources = [-1; MAX];
        sources[..all.len()].copy_from_slice(&all);
        Ok(KeptFds {
            sources,
            len: all.len(),
            has_landlock: landlock.is_some(),
            has_netns: netns.is_some(),
            has_kit: kit.is_some(),
            fetch: None,
            _owners: PhantomData,
        })
    }

    /// The child is to be cloned sharing our fd table and to fetch its fds from `donor`,
    /// leaving the errno in `refused` if it cannot.
    pub fn fetched_from(mut self, donor: &'a FdDonor, refused: &'a AtomicI32) -> Self {
        self.fetch = Some(Fetch {
            pidfd: donor.pidfd.as_fd().as_raw_fd(),
            refused,
        });
        self
    }

    /// Whether the child must be cloned with CLONE_FILES.
    pub fn shares_table(&self) -> bool {
        self.fetch.is_some()
    }

    /// The mount template's namespace fd once installed.
    pub fn template(&self) -> RawFd {
        TEMPLATE as RawFd
    }

    /// The Landlock ruleset fd once installed.
    pub fn landlock(&self) -> Option<RawFd> {
        self.has_landlock.then_some(TEMPLATE as RawFd + 1)
    }

    /// The netns fd once installed.
    pub fn netns(&self) -> Option<RawFd> {
        self.has_netns
            .then_some(TEMPLATE as RawFd + 1 + self.has_landlock as RawFd)
    }

    /// The IPC namespace fd once installed.
    pub fn ipc(&self) -> Option<RawFd> {
        self.has_kit
            .then_some(TEMPLATE as RawFd + 1 + self.has_landlock as RawFd + self.has_netns as RawFd)
    }

    /// The made-ahead /tmp, /dev/shm and /dev/pts mounts once installed (fresh_pool.rs).
    pub fn kit_mounts(&self) -> Option<Range<RawFd>> {
        let first = TEMPLATE as RawFd + 2 + self.has_landlock as RawFd + self.has_netns as RawFd;
        self.has_kit.then_some(first..first + 3)
    }

    /// The cgroup join files once installed.
    pub fn cgroup_join(&self) -> Range<RawFd> {
        TEMPLATE as RawFd
            + 1
            + self.has_landlock as RawFd
            + self.has_netns as RawFd
            + 4 * self.has_kit as RawFd..self.len as RawFd
    }

    /// In the child: installs the kept fds at their numbers and closes every other fd.
    /// Raw syscalls only (async-signal-safe).
    pub fn install(&self) -> std::result::Result<(), MoveFailed> {
        match &self.fetch {
            None => self.copy_into_place(),
            Some(fetch) => fetch.install_own_table(self),
        }
    }

    /// Moves the kept fds of the copied table to 0..len and closes every other fd. First
    /// every source is copied above all sources and targets, so that no dup3 onto a
    /// target can clobber a source still to move.
    fn copy_into_place(&self) -> std::result::Result<(), MoveFailed> {
        let sources = &self.sources[..self.len];
        let above = sources
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.len as RawFd)
            + 1;
        let mut copies = [-1; MAX];
        let err = |step, pipe| MoveFailed {
            step,
            pipe,
            errno: super::child::errno(),
        };
        for (copy, &src) in copies.iter_mut().zip(sources) {
            // SAFETY: fcntl on an fd the child holds, integer arguments.
            *copy = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, above) };
            if *copy < 0 {
                return Err(err(Step::KeepFds, sources[ERROR_PIPE]));
            }
        }
        for (target, &copy) in copies[..self.len].iter().enumerate() {
            // stdio survives the exec; the rest is close-on-exec.
            let flags = if target < ERROR_PIPE {
                0
            } else {
                libc::O_CLOEXEC
            };
            // SAFETY: dup3 between fds of the child's own table.
            if unsafe { libc::dup3(copy, target as RawFd, flags) } < 0 {
                return Err(err(Step::KeepFds, copies[ERROR_PIPE]));
            }
        }
        // SAFETY: close_range with integer arguments; closes the copies and every
        // inherited fd above the kept ones.
        if unsafe { libc::syscall(libc::SYS_close_range, self.len as u32, u32::MAX, 0) } < 0 {
            return Err(err(Step::CloseFds, ERROR_PIPE as RawFd));
        }
        Ok(())
    }
}

impl Fetch<'_> {
    /// In the child, sharing our table: makes a table of its own holding only the
    /// donor's pidfd, fetches each kept fd into it at its final number (see
    /// [`KeptFds`]), and closes the donor.
    fn install_own_table(&self, kept: &KeptFds) -> std::result::Result<(), MoveFailed> {
        // Until the error pipe is fetched there is none to report on: the errno goes
        // to `refused`, which the parent reads, and it copies its table from then on.
        let refused = |step| {
            let errno = super::child::errno();
            self.refused.store(errno, Ordering::Relaxed);
            MoveFailed {
                step,
                pipe: -1,
                errno,
            }
        };
        // SAFETY: close_range with integer arguments: the first unshares the table,
        // copying only the fds up to the donor's, the second closes all below it.
        unsafe {
            if libc::syscall(
                libc::SYS_close_range,
                self.pidfd as u32 + 1,
                u32::MAX,
                libc::CLOSE_RANGE_UNSHARE,
            ) < 0
            {
                // The table is still shared: the error pipe is there.
                return Err(MoveFailed {
                    step: Step::CloseFds,
                    pipe: kept.sources[ERROR_PIPE],
                    errno: super::child::errno(),
                });
            }
            if libc::syscall(libc::SYS_close_range, 0u32, self.pidfd as u32 - 1, 0u32) < 0 {
                return Err(refused(Step::CloseFds));
            }
        }
        for (i, &src) in kept.sources[..kept.len].iter().enumerate() {
            // SAFETY: pidfd_getfd with the donor's pidfd (in our table) and a number in
            // its table; the result is checked. It is close-on-exec.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd, src, 0) };
            if fd < 0 {
                return Err(refused(Step::KeepFds));
            }
            if fd != i as libc::c_long {
                // Not where the layout says: nothing after could find it.
                let pipe = if i > ERROR_PIPE {
                    ERROR_PIPE as RawFd
                } else {
                    -1
                };
                return Err(MoveFailed {
                    step: Step::KeepFds,
                    pipe,
                    errno: libc::EBADF,
                });
            }
        }
        let pipe = ERROR_PIPE as RawFd;
        for fd in 0..ERROR_PIPE as RawFd {
            // stdio survives the exec.
            // SAFETY: fcntl on an fd of our own table, integer arguments.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                return Err(MoveFailed {
                    step: Step::KeepFds,
                    pipe,
                    errno: super::child::errno(),
                });
            }
        }
        // SAFETY: closing the donor's pidfd in our own table; nothing uses it after.
        unsafe { libc::close(self.pidfd) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn layout_puts_template_netns_then_cgroups_after_the_error_pipe() {
        let f: Vec<std::fs::File> = (0..8)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let b: Vec<BorrowedFd> = f.iter().map(|f| f.as_fd()).collect();
        let stdio = [b[0], b[1], b[2]];
        let kept = KeptFds::new(stdio, b[3], b[4], None, Some(b[5]), None, &b[6..8]).unwrap();
        assert_eq!(kept.template(), 4);
        assert_eq!(kept.landlock(), None);
        assert_eq!(kept.netns(), Some(5));
        assert_eq!(kept.cgroup_join(), 6..8);
        let kept = KeptFds::new(stdio, b[3], b[4], None, None, None, &b[5..8]).unwrap();
        assert_eq!(kept.netns(), None);
        assert_eq!(kept.cgroup_join(), 5..8);
        let kept = KeptFds::new(stdio, b[3], b[4], Some(b[5]), Some(b[6]), None, &b[7..8]);
        let kept = kept.unwrap();
        assert_eq!(kept.landlock(), Some(5));
        assert_eq!(kept.netns(), Some(6));
        assert_eq!(kept.ipc(), None);
        assert_eq!(kept.cgroup_join(), 7..8);
        let kit = Some((b[6], [b[7], b[7], b[7]]));
        let kept = KeptFds::new(stdio, b[3], b[4], Some(b[5]), None, kit, &b[0..1]);
        let kept = kept.unwrap();
        assert_eq!(kept.netns(), None);
        assert_eq!(kept.ipc(), Some(6));
        assert_eq!(kept.kit_mounts(), Some(7..10));
        assert_eq!(kept.cgroup_join(), 10..11);
        let many = vec![b[0]; MAX];
        assert!(KeptFds::new(stdio, b[3], b[4], None, None, None, &many).is_err());
    }
}
