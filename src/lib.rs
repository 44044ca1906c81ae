//! faasd: a fresh container per request, made in-process on raw Linux syscalls.
//!
//! - [`runtime`]: the container runtime (namespaces, mounts, cgroups, caps, seccomp).
//! - [`image`]: installing `docker save` tarballs as read-only root filesystems.
//! - [`daemon`]: deployments, loopback addresses, the per-request path, the control API.
//! - [`fdpass`]: SCM_RIGHTS, the handler protocol's way of handing over a connection.

pub mod daemon;
pub mod fdpass;
pub mod image;
pub mod runtime;
