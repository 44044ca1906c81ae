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
}

pub enum Backend {
    Native(Runtime),
    Runc(Runc),
}

/// A running container of either backend.
pub enum Container {
    Native(runtime::Container),
    Runc(RuncContainer),
}

impl Backend {
    /// `netns_pool` is for the native backend (namespaces made ahead, 0: none);
    /// `runc_binary` and `runc_root` (its state directory) for the runc backend.
    pub fn new(
        kind: BackendKind,
        cgroup_parent: &str,
        netns_pool: usize,
        runc_binary: &Path,
        runc_root: &Path,
    ) -> Result<Self, BackendError> {
        Ok(match kind {
            BackendKind::Native => {
                Backend::Native(Runtime::new(cgroup_parent)?.with_netns_pool(netns_pool)?)
            }
            BackendKind::Runc => Backend::Runc(Runc::new(runc_binary, runc_root, cgroup_parent)?),
        })
    }

    /// Starts a container; `bundle` is the request's private directory (the runc backend
    /// writes its config.json there).
    pub fn spawn(
        &self,
        spec: &ContainerSpec<'_>,
        bundle: &Path,
    ) -> Result<Container, BackendError> {
        Ok(match self {
            Backend::Native(rt) => Container::Native(rt.spawn(spec)?),
            Backend::Runc(runc) => Container::Runc(runc.spawn(spec, bundle)?),
        })
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

impl Container {
    /// A pidfd that turns readable when the container has ended.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        match self {
            Container::Native(c) => c.pidfd(),
            Container::Runc(c) => c.pidfd(),
        }
    }

    /// The setup phases' durations (native backend only: runc's happen inside runc).
    pub fn timeline(&self) -> Option<&Timeline> {
        match self {
            Container::Native(c) => c.timeline(),
            Container::Runc(_) => None,
        }
    }

    /// Whether the container has already ended (without waiting or reaping).
    pub fn has_exited(&self) -> bool {
        crate::pidfd::has_exited(self.pidfd())
    }

    /// Waits until the container exits or `timeout` passes (then kills it), and cleans up.
    pub async fn wait(self, timeout: Duration) -> Result<ExitStatus, BackendError> {
        Ok(match self {
            Container::Native(c) => c.wait(timeout).await?,
            Container::Runc(c) => c.wait(timeout).await?,
        })
    }
}
