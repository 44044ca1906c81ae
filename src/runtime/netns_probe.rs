//! What a network namespace holds, and whether anything in it changed, read from
//! outside it.
//!
//! A namespace goes back to the pool only if it holds exactly what it held when it was
//! made. The probe is opened inside the namespace when the pool makes it and kept with
//! it; both of its handles stay bound to that namespace, so a check needs no setns:
//! - `/proc/thread-self/net/sockstat`, opened from inside: its "sockets: used" is the
//!   kernel's per-namespace count of every socket of every family (4.16+), counted from
//!   allocation to free: unix sockets (abstract names included) kept alive only by an
//!   in-flight SCM_RIGHTS cycle, orphaned TCP sockets, netlink, packet, and families that
//!   sock_diag has no dumper for. One pread, instead of one sock_diag dump per family and
//!   protocol that would still miss the last kind;
//! - a NETLINK_ROUTE socket made inside and subscribed to the namespace's routing
//!   notifications: links (a flag such as `lo` brought up), addresses, routes, rules,
//!   nexthops, neighbours, qdiscs and per-device settings of every family announce each
//!   change there. A check is one non-blocking receive that must find nothing queued
//!   (and no overflow): a change undone before the check still shows, and no dump of
//!   the namespace's tables is made per container (they were 2 % of all CPU at
//!   saturation). No container can send to the socket or to the groups: both need
//!   CAP_NET_ADMIN over the namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// The routing groups whose every message means the namespace changed.
const WATCHED_GROUPS: &[libc::c_uint] = &[
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_NEIGH,
    libc::RTNLGRP_TC,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV4_MROUTE,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV4_RULE,
    libc::RTNLGRP_IPV6_IFADDR,
    libc::RTNLGRP_IPV6_MROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
    libc::RTNLGRP_IPV6_IFINFO,
    libc::RTNLGRP_IPV6_PREFIX,
    libc::RTNLGRP_IPV6_RULE,
    libc::RTNLGRP_IPV4_NETCONF,
    libc::RTNLGRP_IPV6_NETCONF,
    libc::RTNLGRP_MPLS_ROUTE,
    libc::RTNLGRP_NEXTHOP,
];

/// Why a namespace was found not as fresh, or could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{found} sockets left (a fresh namespace has {fresh})")]
    Sockets { found: u64, fresh: u64 },
    #[error("its routing state changed (a netlink notification of type {0} is queued)")]
    Changed(u16),
    #[error("its routing state changed (more notifications than the probe's socket holds)")]
    Overflowed,
    #[error("reading sockstat failed: {0}")]
    Sockstat(#[source] io::Error),
    #[error("sockstat has no \"sockets: used\" line")]
    SockstatFormat,
    #[error("opening the route netlink socket failed: {0}")]
    Open(#[source] io::Error),
    #[error("reading the route netlink socket failed: {0}")]
    Receive(#[source] io::Error),
}

pub struct Probe {
    sockstat: File,
    route: Socket,
    /// The socket count of the fresh namespace, the probe's own socket included.
    fresh_sockets: u64,
    /// The namespace's cookie (SO_NETNS_COOKIE, never reused), read from the socket.
    cookie: u64,
}

impl Probe {
    /// Opens the probe on the calling thread's network namespace, which must be fresh:
    /// what it holds now (the probe's own socket included) is what a check expects.
    pub fn open_here() -> Result<Self, ProbeError> {
        let sockstat =
            File::open("/proc/thread-self/net/sockstat").map_err(ProbeError::Sockstat)?;
        let mut route = Socket::new(NETLINK_ROUTE).map_err(ProbeError::Open)?;
        route.bind_auto().map_err(ProbeError::Open)?;
        for &group in WATCHED_GROUPS {
            route.add_membership(group).map_err(ProbeError::Open)?;
        }
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: getsockopt into a u64 on our stack, with its size, on our socket.
        let rc = unsafe {
            libc::getsockopt(
                route.as_raw_fd(),
                libc::SOL_SOCKET,
                super::child::SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(ProbeError::Open(io::Error::last_os_error()));
        }
        let mut probe = Probe {
            sockstat,
            route,
            fresh_sockets: 0,
            cookie,
        };
        probe.fresh_sockets = probe.sockets()?;
        // Whatever the namespace's making announced is its fresh state, not a change.
        while probe.queued()?.is_some() {}
        Ok(probe)
    }

    /// The namespace's cookie: a container's sockets made in it carry it.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Ok if the namespace holds exactly what it held fresh and nothing in its routing
    /// state changed since.
    pub fn check(&self) -> Result<(), ProbeError> {
        let found = self.sockets()?;
        if found != self.fresh_sockets {
            return Err(ProbeError::Sockets {
                found,
                fresh: self.fresh_sockets,
            });
        }
        match self.queued()? {
            Some(kind) => Err(ProbeError::Changed(kind)),
            None => Ok(()),
        }
    }

    /// The type of the first queued notification (dequeued), None if none is queued.
    fn queued(&self) -> Result<Option<u16>, ProbeError> {
        let mut buf = [0u8; 64];
        match self.route.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
            // struct nlmsghdr: u32 length, then u16 type.
            Ok(n) if n >= 6 => Ok(Some(u16::from_ne_bytes([buf[4], buf[5]]))),
            Ok(_) => Ok(Some(0)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Err(ProbeError::Overflowed),
            Err(e) => Err(ProbeError::Receive(e)),
        }
    }

    fn sockets(&self) -> Result<u64, ProbeError> {
        // The file's text is regenerated from offset 0 on each read; its first line is
        // "sockets: used N", well within the first 128 bytes.
        let mut buf = [0u8; 128];
        let n = self
            .sockstat
            .read_at(&mut buf, 0)
            .map_err(ProbeError::Sockstat)?;
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|s| {
                s.lines()
                    .next()?
                    .strip_prefix("sockets: used ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .ok_or(ProbeError::SockstatFormat)
    }
}
