//! What a network namespace holds, read from outside it.
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
//! - a NETLINK_ROUTE socket made inside: links (index and flags, so `lo` brought up
//!   shows), addresses and routes of every family, compared with the fresh namespace's.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Why a namespace was found not empty, or could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{found} sockets left (a fresh namespace has {fresh})")]
    Sockets { found: u64, fresh: u64 },
    #[error("links changed: {found:?}, fresh {fresh:?}")]
    Links {
        found: Vec<(u32, u32)>,
        fresh: Vec<(u32, u32)>,
    },
    #[error("{found} addresses (a fresh namespace has {fresh})")]
    Addresses { found: usize, fresh: usize },
    #[error("{found} routes (a fresh namespace has {fresh})")]
    Routes { found: usize, fresh: usize },
    #[error("reading sockstat failed: {0}")]
    Sockstat(#[source] io::Error),
    #[error("sockstat has no \"sockets: used\" line")]
    SockstatFormat,
    #[error("opening the route netlink socket failed: {0}")]
    Open(#[source] io::Error),
    #[error("netlink dump failed: {0}")]
    Dump(#[source] io::Error),
}

/// What the namespace holds, as far as a container could change it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    sockets: u64,
    /// (ifindex, flags) of every link.
    links: Vec<(u32, u32)>,
    addresses: usize,
    routes: usize,
}

pub struct Probe {
    sockstat: File,
    route: Socket,
    fresh: Contents,
}

impl Probe {
    /// Opens the probe on the calling thread's network namespace, which must be fresh:
    /// what it holds now (the probe's own socket included) is what a check expects.
    pub fn open_here() -> Result<Self, ProbeError> {
        let sockstat =
            File::open("/proc/thread-self/net/sockstat").map_err(ProbeError::Sockstat)?;
        let mut route = Socket::new(NETLINK_ROUTE).map_err(ProbeError::Open)?;
        route.bind_auto().map_err(ProbeError::Open)?;
        route
            .connect(&SocketAddr::new(0, 0))
            .map_err(ProbeError::Open)?;
        let mut probe = Probe {
            sockstat,
            route,
            fresh: Contents {
                sockets: 0,
                links: Vec::new(),
                addresses: 0,
                routes: 0,
            },
        };
        probe.fresh = probe.contents()?;
        Ok(probe)
    }

    /// Ok if the namespace holds exactly what it held fresh.
    pub fn check(&self) -> Result<(), ProbeError> {
        let now = self.contents()?;
        let fresh = &self.fresh;
        if now.sockets != fresh.sockets {
            return Err(ProbeError::Sockets {
                found: now.sockets,
                fresh: fresh.sockets,
            });
        }
        if now.links != fresh.links {
            return Err(ProbeError::Links {
                found: now.links,
                fresh: fresh.links.clone(),
            });
        }
        if now.addresses != fresh.addresses {
            return Err(ProbeError::Addresses {
                found: now.addresses,
                fresh: fresh.addresses,
            });
        }
        if now.routes != fresh.routes {
            return Err(ProbeError::Routes {
                found: now.routes,
                fresh: fresh.routes,
            });
        }
        Ok(())
    }

    fn contents(&self) -> Result<Contents, ProbeError> {
        // Sockets first: the cheap check that fails when anything was left.
        let sockets = self.sockets()?;
        let mut links = Vec::new();
        // Without each link's statistics, which the check does not read.
        let mut get_links = LinkMessage::default();
        get_links
            .attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        for m in self.dump(RouteNetlinkMessage::GetLink(get_links))? {
            if let RouteNetlinkMessage::NewLink(l) = m {
                links.push((l.header.index, l.header.flags.bits()));
            }
        }
        links.sort_unstable();
        let addresses = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
            .len();
        let routes = self
            .dump(RouteNetlinkMessage::GetRoute(RouteMessage::default()))?
            .len();
        Ok(Contents {
            sockets,
            links,
            addresses,
            routes,
        })
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

    /// Sends one dump request and collects the answers up to NLMSG_DONE.
    fn dump(&self, request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, ProbeError> {
        let mut packet =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
        packet.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.route.send(&out, 0).map_err(ProbeError::Dump)?;
        let mut found = Vec::new();
        // Received into the spare capacity: no 32 KiB memset per dump.
        let mut buf = Vec::with_capacity(32 << 10);
        loop {
            buf.clear();
            let size = self.route.recv(&mut buf, 0).map_err(ProbeError::Dump)?;
            let mut offset = 0;
            while offset < size {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&buf[offset..size])
                        .map_err(|e| ProbeError::Dump(io::Error::other(e.to_string())))?;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(e) => {
                        return Err(ProbeError::Dump(io::Error::other(format!("{e:?}"))))
                    }
                    NetlinkPayload::InnerMessage(m) => found.push(m),
                    _ => {}
                }
                if msg.header.length == 0 {
                    break;
                }
                offset += msg.header.length as usize;
            }
        }
    }
}
