//! A container's secrets: a small tmpfs at /run/secrets with one file per secret, mode
//! 0400 and owned by the container's user, made read-only before the handler runs.
//!
//! The native runtime mounts it in each container's own copy of the mount template (the
//! child, between its other mounts and dropping its privileges); the runc backend mounts
//! one in the request's bundle and binds it read-only at /run/secrets. Either way the
//! tmpfs is the container's alone and holds copies: never a bind of the daemon's secret
//! store. [`SecretsMount::mount`] is raw syscalls on prepared data, async-signal-safe, so
//! the child can run it between clone and exec.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::error::{Result, RuntimeError};
use super::rootfs;
use crate::api::SecretValue;

/// Where the handler finds its secrets.
pub const SECRETS_DIR: &str = "/run/secrets";

/// For a container without secrets.
pub static NO_SECRETS: SecretFiles = SecretFiles { files: Vec::new() };

/// A function's secrets as the runtime writes them: prepared once per configuration,
/// shared by its containers. `Debug` shows the names only.
#[derive(Default)]
pub struct SecretFiles {
    files: Vec<(CString, SecretValue)>,
}

impl SecretFiles {
    /// `files` must have valid names (api::secret_name_problem): no NUL, no `/`.
    pub fn new(files: impl IntoIterator<Item = (String, SecretValue)>) -> Result<Self> {
        let files = files
            .into_iter()
            .map(|(name, value)| Ok((rootfs::cstring("secret name", &name)?, value)))
            .collect::<Result<_>>()?;
        Ok(SecretFiles { files })
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether these are exactly `want`: the same names with the same values.
    pub fn same_as(&self, want: &BTreeMap<String, SecretValue>) -> bool {
        self.files.len() == want.len()
            && self.files.iter().all(|(name, value)| {
                name.to_str()
                    .ok()
                    .and_then(|n| want.get(n))
                    .is_some_and(|w| w.as_bytes() == value.as_bytes())
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|(n, _)| n.to_str().unwrap_or("?"))
    }

    /// The mount of these files at `target`, owned by `uid:gid`.
    pub fn mount_at(&self, target: &Path, uid: u32, gid: u32) -> Result<SecretsMount<'_>> {
        // Each file takes whole pages; one more for the directory.
        let page = 4096;
        let size: usize = self
            .files
            .iter()
            .map(|(_, v)| v.len().div_ceil(page) * page)
            .sum::<usize>()
            + page;
        let options = format!(
            "mode=0500,uid={uid},gid={gid},size={size},nr_inodes={}",
            self.files.len() + 2
        );
        Ok(SecretsMount {
            target: rootfs::cstring("secrets mount point", target)?,
            options: rootfs::cstring("tmpfs options", options)?,
            files: self,
            uid,
            gid,
        })
    }
}

impl fmt::Debug for SecretFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// The step of [`SecretsMount::mount`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MountStep {
    MountTmpfs = 1,
    OpenDir,
    CreateFile,
    Write,
    Chown,
    MakeReadOnly,
}

impl MountStep {
    pub fn from_u32(v: u32) -> Option<MountStep> {
        [
            MountStep::MountTmpfs,
            MountStep::OpenDir,
            MountStep::CreateFile,
            MountStep::Write,
            MountStep::Chown,
            MountStep::MakeReadOnly,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

impl fmt::Display for MountStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MountStep::MountTmpfs => "mount the secrets tmpfs",
            MountStep::OpenDir => "open the secrets tmpfs",
            MountStep::CreateFile => "create a secret's file",
            MountStep::Write => "write a secret's file",
            MountStep::Chown => "give a secret's file to the container's user",
            MountStep::MakeReadOnly => "make the secrets tmpfs read-only",
        })
    }
}

/// One container's secrets tmpfs, ready to be made (all strings prepared).
pub struct SecretsMount<'a> {
    target: CString,
    options: CString,
    files: &'a SecretFiles,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl SecretsMount<'_> {
    /// Mounts the tmpfs on the target directory, writes the files (0400, the user's) and
    /// remounts it read-only, superblock and mount both. Async-signal-safe: raw syscalls
    /// on data prepared by [`SecretFiles::mount_at`], no allocation. On failure the
    /// tmpfs may be left mounted (the child dies with its namespace; the host's caller
    /// detaches it).
    pub fn mount(&self) -> std::result::Result<(), (MountStep, i32)> {
        let fail = |step| Err((step, super::child::errno()));
        let mount_flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        // SAFETY: NUL-terminated strings owned by self, and literals.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                self.target.as_ptr(),
                c"tmpfs".as_ptr(),
                mount_flags,
                self.options.as_ptr().cast(),
            )
        };
        if rc < 0 {
            return fail(MountStep::MountTmpfs);
        }
        let open_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a NUL-terminated path owned by self.
        let dir = unsafe { libc::open(self.target.as_ptr(), open_flags) };
        if dir < 0 {
            return fail(MountStep::OpenDir);
        }
        let written = self.write_files(dir);
        // SAFETY: closing the directory fd opened above.
        unsafe { libc::close(dir) };
        written?;
        // SAFETY: a NUL-terminated target owned by self; null source, type and data are
        // what a remount takes.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                self.target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_RDONLY | mount_flags,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return fail(MountStep::MakeReadOnly);
        }
        Ok(())
    }

    fn write_files(&self, dir: libc::c_int) -> std::result::Result<(), (MountStep, i32)> {
        let create =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        for (name, value) in &self.files.files {
            // SAFETY: a directory fd of ours and a NUL-terminated name owned by the files.
            let fd = unsafe { libc::openat(dir, name.as_ptr(), create, 0o400) };
            if fd < 0 {
                return Err((MountStep::CreateFile, super::child::errno()));
            }
            let result = write_all(fd, value.as_bytes())
                .map_err(|e| (MountStep::Write, e))
                .and_then(|()| {
                    // SAFETY: fchown and fchmod of the file fd opened above (the mode
                    // again: the host's caller runs with the daemon's umask).
                    let rc = unsafe {
                        if libc::fchown(fd, self.uid, self.gid) < 0 {
                            -1
                        } else {
                            libc::fchmod(fd, 0o400)
                        }
                    };
                    if rc < 0 {
                        Err((MountStep::Chown, super::child::errno()))
                    } else {
                        Ok(())
                    }
                });
            // SAFETY: closing the file fd opened above.
            unsafe { libc::close(fd) };
            result?;
        }
        Ok(())
    }
}

fn write_all(fd: libc::c_int, mut bytes: &[u8]) -> std::result::Result<(), i32> {
    while !bytes.is_empty() {
        // SAFETY: writing from a live slice, its length, to an fd of ours.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = super::child::errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Makes the secrets tmpfs of a runc container at `dir` (a directory of its bundle) in
/// the daemon's own mount namespace; [`unmount`] removes it.
pub fn mount_on_host(dir: &Path, files: &SecretFiles, uid: u32, gid: u32) -> Result<()> {
    let plan = files.mount_at(dir, uid, gid)?;
    plan.mount().map_err(|(step, errno)| {
        let _ = unmount(dir);
        RuntimeError::Secrets {
            step,
            source: io::Error::from_raw_os_error(errno),
        }
    })
}

/// Detaches a secrets tmpfs made by [`mount_on_host`]; nothing mounted there is no error.
pub fn unmount(dir: &Path) -> io::Result<()> {
    match nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Makes sure the image at `rootfs` has a directory /run/secrets to mount on (creating
/// /run and /run/secrets, 0755, if missing); refuses one where either is a symlink or not
/// a directory, since the mount would follow it (the image is untrusted).
pub fn prepare_mount_point(rootfs: &Path) -> Result<()> {
    let unsafe_point = |problem| RuntimeError::UnsafeMountPoint {
        rootfs: rootfs.into(),
        path: SECRETS_DIR.to_string(),
        problem,
    };
    let mut dir: File = rootfs::open_root(rootfs)?;
    for name in ["run", "secrets"] {
        let open = |dir: &File| {
            rootfs::openat2(
                dir,
                name,
                libc::O_PATH | libc::O_DIRECTORY,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
            )
        };
        let fd: OwnedFd = match open(&dir) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                nix::sys::stat::mkdirat(
                    &dir,
                    name,
                    nix::sys::stat::Mode::from_bits_truncate(0o755),
                )
                .map_err(|e| unsafe_point(mkdir_problem("cannot be created", e)))?;
                open(&dir).map_err(|_| unsafe_point("cannot be opened"))?
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(unsafe_point("is, or is under, a symlink"))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(unsafe_point("is, or is under, something not a directory"))
            }
            Err(_) => return Err(unsafe_point("cannot be opened")),
        };
        dir = File::from(fd);
    }
    Ok(())
}

/// mkdirat's failure, for the error's fixed-text `problem` (EEXIST races aside, the one
/// that happens is a read-only store).
fn mkdir_problem(fallback: &'static str, e: nix::Error) -> &'static str {
    match e {
        nix::Error::EROFS => "cannot be created: the image store is read-only",
        _ => fallback,
    }
}
