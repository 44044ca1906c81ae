//! Landlock network rules: the container may neither bind nor connect a TCP socket.
//!
//! The client socket a handler is handed lives in the host's network namespace, so the
//! empty namespace the container runs in does not stop a handler from disconnecting it
//! (`connect(AF_UNSPEC)`) and connecting it to 127.0.0.1:8080, or binding it to a host
//! port. Landlock's network hooks check the calling task's domain whatever namespace the
//! socket belongs to, so a ruleset that handles `BIND_TCP | CONNECT_TCP` and allows
//! nothing refuses both (EACCES). Disconnecting stays allowed (it only drops access).
//! Needs Landlock ABI 4 (Linux 6.7); older kernels are reported by [`net_support`].
//! Landlock does not see `listen()`: a disconnected socket still autobinds to an ephemeral
//! port of its own (the function's) address and listens there until the container ends.
//!
//! No fallback for older kernels yet. A cgroup-bpf `connect4`/`bind4` hook would have to
//! sit on the daemon's cgroup, not the container's: it runs for the socket's cgroup,
//! which is its creator's (measured on 6.18: a deny-all hook on the container's cgroup
//! let the handed socket reconnect; on the daemon's cgroup, deciding by
//! `bpf_get_current_cgroup_id()`, it refused that reconnect and MSG_FASTOPEN alike).
//!
//! The ruleset is made once, in the parent; the child only calls `landlock_restrict_self`
//! on its fd, a raw syscall that allocates nothing in user space. Raw syscalls rather
//! than the `landlock` crate: its `RulesetCreated` is consumed by one `restrict_self`
//! (one ruleset per process, and its code paths are not meant for the window between
//! clone and exec), while we need one fd shared by every child; the ABI is one struct.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// The first ABI with network rules (Linux 6.7).
pub const NET_ABI: u32 = 4;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const ACCESS_NET_BIND_TCP: u64 = 1 << 0;
const ACCESS_NET_CONNECT_TCP: u64 = 1 << 1;

/// `struct landlock_ruleset_attr` up to `handled_access_net` (ABI 4); the kernel accepts
/// a prefix of the structure it knows.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
}

/// Whether this kernel can enforce the network rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetSupport {
    /// Landlock is enabled with at least [`NET_ABI`].
    Enforced { abi: u32 },
    /// Landlock is enabled, but its ABI predates network rules.
    AbiTooOld { abi: u32 },
    /// Landlock is not built in or not enabled (`lsm=` boot parameter): the errno.
    Unavailable { errno: i32 },
}

/// The Landlock ABI version this kernel reports.
pub fn abi() -> io::Result<u32> {
    // SAFETY: the version query takes no attribute (null, size 0) and returns an integer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u32)
    }
}

pub fn net_support() -> NetSupport {
    match abi() {
        Ok(abi) if abi >= NET_ABI => NetSupport::Enforced { abi },
        Ok(abi) => NetSupport::AbiTooOld { abi },
        Err(e) => NetSupport::Unavailable {
            errno: e.raw_os_error().unwrap_or(0),
        },
    }
}

/// A ruleset denying every TCP bind and connect, or None where the kernel cannot
/// enforce one (see [`net_support`]).
pub fn deny_tcp_ruleset() -> io::Result<Option<OwnedFd>> {
    if !matches!(net_support(), NetSupport::Enforced { .. }) {
        return Ok(None);
    }
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP,
    };
    // SAFETY: attr is a live, correctly laid out prefix of landlock_ruleset_attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd (close-on-exec), owned by nobody else.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}
