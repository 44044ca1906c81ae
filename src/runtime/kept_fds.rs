//! The only fds the container's first process keeps, at fixed numbers.
//!
//! The child starts with a copy of every fd of the daemon (listeners, other requests'
//! sockets, image directories). Marking them close-on-exec is not enough: until the exec,
//! any path lookup through /proc/self/fd/N (a WorkingDir, a mount target) would follow
//! them out of the container. So the child's first step moves the fds the plan needs to
//! 0.. and really closes everything above, before it looks up any path.

use std::marker::PhantomData;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::child::Step;
use super::error::{Result, RuntimeError};

/// stdin, stdout, stderr, the error pipe, the mount template, a Landlock ruleset, a netns
/// and one cgroup file per hierarchy leave room to spare.
const MAX: usize = 16;

/// Where the error pipe ends up.
pub const ERROR_PIPE: RawFd = 3;
/// Where the mount template's namespace ends up.
const TEMPLATE: RawFd = ERROR_PIPE + 1;

/// The fds to keep, in their final order: 0, 1, 2, the error pipe (3), the mount
/// template's namespace (4), then the Landlock ruleset and the pre-made netns if any,
/// then the cgroup join files. Borrowed from their owners in the parent, which must
/// outlive the clone.
pub struct KeptFds<'a> {
    sources: [RawFd; MAX],
    len: usize,
    has_landlock: bool,
    has_netns: bool,
    _owners: PhantomData<BorrowedFd<'a>>,
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
        cgroup_join: &[BorrowedFd<'a>],
    ) -> Result<Self> {
        let all: Vec<RawFd> = stdio
            .iter()
            .chain([&error_pipe, &template])
            .chain(landlock.iter())
            .chain(netns.iter())
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
            _owners: PhantomData,
        })
    }

    /// The mount template's namespace fd once moved.
    pub fn template(&self) -> RawFd {
        TEMPLATE
    }

    /// The Landlock ruleset fd once moved.
    pub fn landlock(&self) -> Option<RawFd> {
        self.has_landlock.then_some(TEMPLATE + 1)
    }

    /// The netns fd once moved.
    pub fn netns(&self) -> Option<RawFd> {
        self.has_netns
            .then_some(TEMPLATE + 1 + self.has_landlock as RawFd)
    }

    /// The cgroup join files once moved.
    pub fn cgroup_join(&self) -> Range<RawFd> {
        TEMPLATE + 1 + self.has_landlock as RawFd + self.has_netns as RawFd..self.len as RawFd
    }

    /// In the child: moves the kept fds to 0..len and closes every other fd. Raw
    /// syscalls only (async-signal-safe). First every source is copied above all sources
    /// and targets, so that no dup3 onto a target can clobber a source still to move.
    pub fn install(&self) -> std::result::Result<(), MoveFailed> {
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
                return Err(err(Step::KeepFds, sources[ERROR_PIPE as usize]));
            }
        }
        for (target, &copy) in copies[..self.len].iter().enumerate() {
            let target = target as RawFd;
            // stdio survives the exec; the rest is close-on-exec.
            let flags = if target < ERROR_PIPE {
                0
            } else {
                libc::O_CLOEXEC
            };
            // SAFETY: dup3 between fds of the child's own table.
            if unsafe { libc::dup3(copy, target, flags) } < 0 {
                return Err(err(Step::KeepFds, copies[ERROR_PIPE as usize]));
            }
        }
        // SAFETY: close_range with integer arguments; closes the copies and every
        // inherited fd above the kept ones.
        if unsafe { libc::syscall(libc::SYS_close_range, self.len as u32, u32::MAX, 0) } < 0 {
            return Err(err(Step::CloseFds, ERROR_PIPE));
        }
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
        let kept = KeptFds::new(stdio, b[3], b[4], None, Some(b[5]), &b[6..8]).unwrap();
        assert_eq!(kept.template(), 4);
        assert_eq!(kept.landlock(), None);
        assert_eq!(kept.netns(), Some(5));
        assert_eq!(kept.cgroup_join(), 6..8);
        let kept = KeptFds::new(stdio, b[3], b[4], None, None, &b[5..8]).unwrap();
        assert_eq!(kept.netns(), None);
        assert_eq!(kept.cgroup_join(), 5..8);
        let kept = KeptFds::new(stdio, b[3], b[4], Some(b[5]), Some(b[6]), &b[7..8]);
        let kept = kept.unwrap();
        assert_eq!(kept.landlock(), Some(5));
        assert_eq!(kept.netns(), Some(6));
        assert_eq!(kept.cgroup_join(), 7..8);
        let many = vec![b[0]; MAX];
        assert!(KeptFds::new(stdio, b[3], b[4], None, None, &many).is_err());
    }
}
