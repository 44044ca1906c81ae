//! faasd: a fresh container per request, made in-process on raw Linux syscalls.
//!
//! - [`api`]: the control API's request and answer types, shared by faasd and `faas`.
//! - [`runtime`]: the container runtime (namespaces, mounts, cgroups, caps, seccomp).
//! - [`image`]: installing `docker save` tarballs as read-only root filesystems.
//! - [`runc`]: the alternative backend, `runc run` of an OCI bundle per request.
//! - [`backend`]: the choice between the two, behind one interface.
//! - [`daemon`]: deployments, loopback addresses, the per-request path, the control API.
//! - [`pidfd`]: process fds, to signal and await containers from tokio.
//! - [`fdpass`]: SCM_RIGHTS, the handler protocol's way of handing over a connection.
//! - [`sealed_exe`]: the daemon runs from a sealed in-memory copy of its binary.
//! - [`kernel_check`]: which guarantees this kernel can enforce, and by what.
//! - [`offload`]: blocking teardown handed off tokio's worker threads.

pub mod api;
pub mod backend;
pub mod daemon;
pub mod fdpass;
pub mod image;
pub mod kernel_check;
pub mod offload;
pub mod pidfd;
pub mod runc;
pub mod runtime;
pub mod sealed_exe;
