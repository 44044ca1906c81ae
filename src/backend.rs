//! The two ways faasd can run a request's container: the native in-process runtime
//! (default) or `runc run` of an OCI bundle. Same daemon, same image, same request path;
//! only this choice differs.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

use crate::runc::{Runc, RuncContainer, RuncError};
use crate::runtime::{self, ContainerSpec, ExitStatus, Runtime, RuntimeError, Timeline};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// faasd's own runtime: clone, pivot_root, cgroups, caps, seccomp in-process.
    Native,
    /// `runc run` of a per-request OCI bundle, as the Python prototype did.
    Runc,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Native(#[from] RuntimeError),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("waiting on the container's pidfd failed: {0}")]
    Poll(#[source] std::io::Error),
    #[error("the container's teardown task failed: {0}")]
    TeardownTask(#[source] tokio::task::JoinError),
    #[error("reading the container's memory usage: {0}")]
    Memory(#[source] std::io::Error),
    #[error("the runc backend needs a bundle directory")]
    NoBundle,
}

/// How many kernel objects the native runtime keeps for reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    /// Empty network namespaces, made ahead or returned empty.
    pub netns: usize,
    /// Kits of fresh objects (an IPC namespace, /tmp, /dev/shm and /dev/pts mounts),
    /// made ahead, one per container.
    pub fresh: usize,
    /// Ended containers' cgroups, drained.
    pub cgroups: usize,
    /// How long a drained cgroup may wait unused before it is removed.
    pub cgroup_idle: Duration,
}

pub enum Backend {
    Native(Runtime),
    Runc(Runc),
}

/// A running container of either backend. Waiting and dropping both do their blocking
/// teardown (kill, reap, cgroup removal, `runc delete`) off the async threads.
pub struct Container {
    /// Present until `wait` or `drop` takes it.
    inner: Option<Inner>,
}

enum Inner {
    Native(runtime::Container),
    Runc(RuncContainer),
}

impl Backend {
    /// `pools` are for the native backend (objects kept for reuse, 0: none);
    /// `runc_binary` and `runc_root` (its state directory) for the runc backend.
    pub fn new(
        kind: BackendKind,
        cgroup_parent: &str,
        pools: Pools,
        runc_binary: &Path,
        runc_root: &Path,
    ) -> Result<Self, BackendError> {
        Ok(match kind {
            BackendKind::Native => Backend::Native(
                Runtime::new(cgroup_parent)?
                    .with_netns_pool(pools.netns)?
                    .with_fresh_pool(pools.fresh)?
                    .with_cgroup_pool(pools.cgroups, pools.cgroup_idle)?,
            ),
            BackendKind::Runc => Backend::Runc(Runc::new(runc_binary, runc_root, cgroup_parent)?),
        })
    }

    /// Starts a container; `bundle` is the request's private directory, where the runc
    /// backend writes its config.json (the native runtime needs none).
    pub fn spawn(
        &self,
        spec: &ContainerSpec<'_>,
        bundle: Option<&Path>,
    ) -> Result<Container, BackendError> {
        Ok(match self {
            Backend::Native(rt) => Inner::Native(rt.spawn(spec)?),
            Backend::Runc(runc) => {
                Inner::Runc(runc.spawn(spec, bundle.ok_or(BackendError::NoBundle)?)?)
            }
        }
        .into())
    }

    /// Whether this is the native runtime (which takes each image's mount template).
    pub fn is_native(&self) -> bool {
        matches!(self, Backend::Native(_))
    }

    /// How the native runtime's pooled network namespaces have fared (runc: none).
    pub fn netns_stats(&self) -> runtime::NetnsStats {
        match self {
            Backend::Native(rt) => rt.netns_stats(),
            Backend::Runc(_) => runtime::NetnsStats::default(),
        }
    }

    /// How the native runtime's pooled cgroups have fared (runc: none).
    pub fn cgroup_stats(&self) -> runtime::CgroupStats {
        match self {
            Backend::Native(rt) => rt.cgroup_stats(),
            Backend::Runc(_) => runtime::CgroupStats::default(),
        }
    }

    /// Removes the native runtime's pooled cgroups and keeps none from now on (at
    /// shutdown, before the cgroup parent is swept).
    pub fn close_pools(&self) {
        if let Backend::Native(rt) = self {
            rt.close_cgroup_pool();
        }
    }

    /// Removes containers a crashed predecessor left with this backend; returns how many.
    /// (Leftover cgroups of either backend are swept by the daemon.)
    pub fn sweep(&self) -> usize {
        match self {
            Backend::Native(_) => 0,
            Backend::Runc(runc) => runc.sweep(),
        }
    }
}

impl From<Inner> for Container {
    fn from(inner: Inner) -> Self {
        Container { inner: Some(inner) }
    }
}

impl Container {
    fn inner(&self) -> &Inner {
        self.inner.as_ref().expect("present until wait or drop")
    }

    /// A pidfd that turns readable when the container has ended.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        match self.inner() {
            Inner::Native(c) => c.pidfd(),
            Inner::Runc(c) => c.pidfd(),
        }
    }

    /// The setup phases' durations (native backend only: runc's happen inside runc).
    pub fn timeline(&self) -> Option<&Timeline> {
        match self.inner() {
            Inner::Native(c) => c.timeline(),
            Inner::Runc(_) => None,
        }
    }

    /// The native runtime's container: its network namespace's cookie, the host pid of
    /// its first process and its pid namespace's inode, by which its control connection
    /// is known.
    pub fn native_identity(&self) -> Option<(u64, i32, Option<u64>)> {
        match self.inner() {
            Inner::Native(c) => Some((c.netns_cookie(), c.pid(), c.pid_namespace())),
            Inner::Runc(_) => None,
        }
    }

    /// The memory charged to the container's cgroup now, in bytes.
    pub fn memory_usage(&self) -> Result<u64, BackendError> {
        Ok(match self.inner() {
            Inner::Native(c) => c.memory_usage()?,
            Inner::Runc(c) => c.memory_usage().map_err(BackendError::Memory)?,
        })
    }

    /// Whether the container has already ended (without waiting or reaping).
    pub fn has_exited(&self) -> bool {
        crate::pidfd::has_exited(self.pidfd())
    }

    /// Waits until the container exits or `timeout` passes (then kills it), and cleans up
    /// on the blocking pool (all of it but the reap of an exited native container).
    pub async fn wait(mut self, timeout: Duration) -> Result<ExitStatus, BackendError> {
        let exited = crate::pidfd::exited(self.pidfd(), timeout)
            .await
            .map_err(BackendError::Poll)?;
        let inner = self.inner.take().expect("present until wait or drop");
        let inner = match inner {
            // Its pidfd turned readable once its whole pid namespace was gone: reaping
            // does not block, and the rest of its teardown is handed off (container.rs).
            // No hop to a blocking thread and back for microseconds of work.
            Inner::Native(c) if exited => return Ok(c.wait_blocking(Duration::ZERO)?),
            other => other,
        };
        tokio::task::spawn_blocking(move || -> Result<ExitStatus, BackendError> {
            Ok(match inner {
                // Polls the pidfd again without waiting: kills it unless it has exited.
                Inner::Native(c) => c.wait_blocking(Duration::ZERO)?,
                Inner::Runc(c) => c.finish(exited)?,
            })
        })
        .await
        .map_err(BackendError::TeardownTask)?
    }
}

impl Drop for Container {
    /// Whatever dropped the handle (an error, a cancelled request, a discarded prewarmed
    /// container), the container is killed and cleaned up, off the async threads.
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            crate::offload::off_async(move || drop(inner));
        }
    }
}
