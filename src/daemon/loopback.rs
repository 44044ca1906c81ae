//! Function addresses on `lo`, over rtnetlink (no shelling out to `ip`).
//!
//! Every address we add carries the label `lo:faas`, which is how `ip addr show lo` tells
//! ours from an operator's, and how removal makes sure to touch only ours.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};

pub const LABEL: &str = "lo:faas";

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("opening a netlink socket failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("finding the loopback interface failed: {0}")]
    FindLo(#[source] rtnetlink::Error),
    #[error("there is no loopback interface `lo`")]
    NoLo,
    #[error("bringing `lo` up failed: {0}")]
    LinkUp(#[source] rtnetlink::Error),
    #[error("listing the addresses of `lo` failed: {0}")]
    List(#[source] rtnetlink::Error),
    #[error("adding {ip} to `lo` failed: {source}")]
    Add {
        ip: Ipv4Addr,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("removing {ip} from `lo` failed: {source}")]
    Remove {
        ip: Ipv4Addr,
        #[source]
        source: rtnetlink::Error,
    },
}

type Result<T> = std::result::Result<T, LoopbackError>;

/// An IPv4 address on `lo`, with its label if it has one.
#[derive(Debug, Clone)]
pub struct LoAddress {
    pub ip: Ipv4Addr,
    pub label: Option<String>,
    message: AddressMessage,
}

impl LoAddress {
    pub fn is_ours(&self) -> bool {
        self.label.as_deref() == Some(LABEL)
    }
}

pub struct Loopback {
    handle: Handle,
    index: u32,
}

impl Loopback {
    /// Connects to rtnetlink in the caller's network namespace and brings `lo` up if it
    /// is down (it starts down in a fresh namespace or VM).
    pub async fn open() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LoopbackError::Connect)?;
        tokio::spawn(conn);
        let link: LinkMessage = handle
            .link()
            .get()
            .match_name("lo".to_string())
            .execute()
            .try_next()
            .await
            .map_err(LoopbackError::FindLo)?
            .ok_or(LoopbackError::NoLo)?;
        let index = link.header.index;
        if !link.header.flags.contains(LinkFlags::Up) {
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(LoopbackError::LinkUp)?;
        }
        Ok(Loopback { handle, index })
    }

    /// The IPv4 addresses on `lo` (the kernel's dump is filtered here, client-side).
    pub async fn addresses(&self) -> Result<Vec<LoAddress>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(LoopbackError::List)? {
            if msg.header.index != self.index {
                continue;
            }
            let mut ip = None;
            let mut label = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(v4)) => ip = Some(*v4),
                    AddressAttribute::Address(IpAddr::V4(v4)) if ip.is_none() => ip = Some(*v4),
                    AddressAttribute::Label(l) => label = Some(l.clone()),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push(LoAddress {
                    ip,
                    label,
                    message: msg,
                });
            }
        }
        Ok(out)
    }

    /// Adds `ip/32` to `lo` with our label.
    pub async fn add(&self, ip: Ipv4Addr) -> Result<()> {
        let mut req = self.handle.address().add(self.index, IpAddr::V4(ip), 32);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Label(LABEL.to_string()));
        req.execute()
            .await
            .map_err(|source| LoopbackError::Add { ip, source })
    }

    /// Removes `ip` from `lo` if it is there with our label; an operator's address with the
    /// same IP is left alone. Returns whether it removed something.
    pub async fn remove_ours(&self, ip: Ipv4Addr) -> Result<bool> {
        let Some(addr) = self
            .addresses()
            .await?
            .into_iter()
            .find(|a| a.ip == ip && a.is_ours())
        else {
            return Ok(false);
        };
        // Deleting with the message the kernel gave us matches exactly that address.
        self.handle
            .address()
            .del(addr.message)
            .execute()
            .await
            .map_err(|source| LoopbackError::Remove { ip, source })?;
        Ok(true)
    }
}
