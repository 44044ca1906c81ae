//! Which function connections get in: a bound per source address, and a reserve of file
//! descriptors that function connections may not eat into (the control API, the log
//! pipes and control sockets of the containers being started need them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// File descriptors kept free of function connections.
pub const FD_RESERVE: u64 = 256;

/// Raises the soft RLIMIT_NOFILE to the hard one; returns the soft limit now in force.
pub fn raise_nofile() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Whether an accepted connection with descriptor `fd` eats into the reserve of the
/// current soft limit (read each time: an operator may change it with prlimit).
pub fn in_reserve_now(fd: RawFd) -> bool {
    getrlimit(Resource::RLIMIT_NOFILE).is_ok_and(|(soft, _)| in_reserve(fd, soft))
}

/// Whether descriptor `fd` lies in the top FD_RESERVE of `nofile`. The kernel hands out
/// the lowest free descriptor, so `fd` being N means N descriptors are open: an exact,
/// O(1) count, without reading /proc/self/fd.
fn in_reserve(fd: RawFd, nofile: u64) -> bool {
    fd as u64 >= nofile.saturating_sub(FD_RESERVE)
}

/// Open function connections per source address, at most `max` each.
pub struct PerSource {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; its source's count goes down when it is dropped.
pub struct SourceSlot {
    from: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PerSource {
            max,
            open: Mutex::default(),
        })
    }

    /// A slot for one more connection from `ip`, or None when it has `max` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            from: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.from.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_each_source_and_frees_on_drop() {
        let p = PerSource::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = p.admit(a).unwrap();
        let _second = p.admit(a).unwrap();
        assert!(p.admit(a).is_none());
        assert!(p.admit(b).is_some(), "another source is not affected");
        drop(first);
        assert!(p.admit(a).is_some());
    }

    #[test]
    fn the_reserve_is_the_top_of_the_fd_table() {
        assert!(!in_reserve(10, 1024));
        assert!(!in_reserve(767, 1024));
        assert!(in_reserve(768, 1024));
        assert!(
            in_reserve(3, 100),
            "a limit below the reserve admits nothing"
        );
    }
}
