//! Errors of the container runtime: one variant per failing operation.

use std::io;
use std::path::PathBuf;

use super::child::Step;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("rootfs {0} does not exist or is not a directory")]
    RootfsMissing(PathBuf),
    #[error("unsafe rootfs {rootfs}: {path} {problem}; refusing to mount over it")]
    UnsafeMountPoint {
        rootfs: PathBuf,
        path: String,
        problem: &'static str,
    },
    #[error("command {0:?} not found in the image")]
    CommandNotFound(String),
    #[error("empty command: the image has neither Entrypoint nor Cmd")]
    EmptyCommand,
    #[error("invalid {what}: {value:?} contains a NUL byte")]
    NulByte { what: &'static str, value: String },
    #[error("working directory {0:?} must be absolute")]
    RelativeWorkdir(String),
    #[error("working directory {path:?} cannot be entered in the image: {source}")]
    Workdir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("too many fds for the container's first process: {0}")]
    TooManyFds(usize),
    #[error("the native runtime needs the image's mount template")]
    NoTemplate,
    #[error("building the mount template: {op} {path} failed: {source}")]
    Template {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path}: {op} failed: {source}")]
    Cgroup {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path}: {op} failed: {message}")]
    CgroupSetup {
        path: String,
        op: &'static str,
        message: String,
    },
    #[error("building the seccomp filter failed: {0}")]
    Seccomp(String),
    #[error("the container could not fetch its fds from the daemon (pidfd_getfd): {0}")]
    FdFetchRefused(#[source] io::Error),
    #[error("{op} failed: {source}")]
    Sys {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("container setup failed at step '{step}' {detail}: {source}")]
    Child {
        step: Step,
        detail: String,
        #[source]
        source: io::Error,
    },
    #[error("the secrets tmpfs: {step} failed: {source}")]
    Secrets {
        step: super::secrets::MountStep,
        #[source]
        source: io::Error,
    },
    #[error("container setup did not finish within {after:?}: killed while at '{stuck_in}'")]
    SetupTimeout {
        after: std::time::Duration,
        stuck_in: &'static str,
    },
}

impl RuntimeError {
    pub(crate) fn sys(op: &'static str) -> impl FnOnce(nix::Error) -> RuntimeError {
        move |e| RuntimeError::Sys {
            op,
            source: io::Error::from(e),
        }
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;
