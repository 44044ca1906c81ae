//! The runc backend: each request's container is `runc run` of a per-request OCI bundle,
//! as the Python prototype did. It is the baseline the native runtime is measured
//! against, and a fallback for users who want runc's exact semantics.
//!
//! `runc run` stays in the foreground as the container's supervisor and exits with the
//! container's status, so its pidfd tells us when the container ended, exactly like the
//! native runtime's pidfd of the container's first process.
//!
//! A container with secrets gets a tmpfs of its own in its bundle (`secrets/`, made and
//! filled by runtime::secrets in the daemon's mount namespace, read-only before runc
//! starts), which the spec binds read-only at /run/secrets: the same view as the native
//! runtime's. [`remove_bundle`] detaches it with the bundle.

mod container;
mod spec;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub use container::RuncContainer;

use crate::runtime::{secrets, ContainerSpec, RuntimeError};

/// The secrets tmpfs's directory in a bundle.
const BUNDLE_SECRETS: &str = "secrets";

#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    #[error("runc binary {binary:?} is not usable: {detail}")]
    Unavailable { binary: PathBuf, detail: String },
    #[error("creating the runc state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building the OCI spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("writing the OCI spec {path}: {source}")]
    WriteSpec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error(transparent)]
    Secrets(#[from] RuntimeError),
    #[error("{op} failed: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> RuncError {
    move |source| RuncError::Sys { op, source }
}

/// Removes a request's bundle directory, its secrets tmpfs (if any) detached first.
pub fn remove_bundle(dir: &Path) -> io::Result<()> {
    secrets::unmount(&dir.join(BUNDLE_SECRETS))?;
    std::fs::remove_dir_all(dir)
}

/// How to invoke runc: the binary and its state directory (`runc --root`).
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    cgroup_parent: String,
}

impl Runc {
    /// Checks that `binary` runs and prepares the state directory `root`.
    pub fn new(binary: &Path, root: &Path, cgroup_parent: &str) -> Result<Self, RuncError> {
        let unavailable = |detail: String| RuncError::Unavailable {
            binary: binary.to_path_buf(),
            detail,
        };
        let out = Command::new(binary)
            .arg("--version")
            .output()
            .map_err(|e| unavailable(e.to_string()))?;
        if !out.status.success() {
            return Err(unavailable(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        std::fs::create_dir_all(root).map_err(|source| RuncError::StateDir {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(Runc {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            cgroup_parent: cgroup_parent.trim_matches('/').to_string(),
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// Writes `bundle/config.json` and starts `runc run` on it. Returns as soon as runc
    /// is running: the container is ready when its handler connects to the control socket.
    pub fn spawn(
        &self,
        spec: &ContainerSpec<'_>,
        bundle: &Path,
    ) -> Result<RuncContainer, RuncError> {
        let secrets = match spec.secrets.is_empty() {
            true => None,
            false => {
                let dir = bundle.join(BUNDLE_SECRETS);
                std::fs::create_dir(&dir).map_err(sys("create the secrets directory"))?;
                secrets::mount_on_host(&dir, spec.secrets, spec.uid, spec.gid)?;
                Some(dir)
            }
        };
        let path = bundle.join("config.json");
        spec::build(spec, &self.cgroup_parent, secrets.as_deref())?
            .save(&path)
            .map_err(|source| RuncError::WriteSpec { path, source })?;
        let output = |fd: Option<std::os::fd::BorrowedFd<'_>>| -> Result<Stdio, RuncError> {
            match fd {
                Some(fd) => Ok(fd
                    .try_clone_to_owned()
                    .map_err(sys("dup output fd"))?
                    .into()),
                None => Ok(Stdio::null()),
            }
        };
        let child = self
            .command()
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(spec.id)
            .stdin(Stdio::null())
            .stdout(output(spec.stdout)?)
            .stderr(output(spec.stderr)?)
            .spawn()
            .map_err(sys("starting runc run"))?;
        RuncContainer::new(self.clone(), spec.id.to_string(), child)
    }

    /// Force-deletes every container runc still knows of in our state directory (what a
    /// crashed daemon left); returns how many.
    pub fn sweep(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| self.delete(&e.file_name().to_string_lossy()))
            .count()
    }

    /// `runc delete --force id`: kills what is left of the container and removes its
    /// state and cgroup. True when runc reported success.
    fn delete(&self, id: &str) -> bool {
        self.quiet(&["delete", "--force", id])
    }

    /// `runc kill id KILL`: the container's init dies, and with it its pid namespace.
    fn kill(&self, id: &str) -> bool {
        self.quiet(&["kill", id, "KILL"])
    }

    fn knows(&self, id: &str) -> bool {
        self.root.join(id).exists()
    }

    fn quiet(&self, args: &[&str]) -> bool {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}
