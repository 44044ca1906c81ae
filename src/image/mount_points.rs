//! Preparing the mount points the runtime needs in the (later read-only) rootfs.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode, SFlag};

use super::error::ImageError;
use super::fsutil::kind_at;
use crate::runtime::{MountPointKind, MOUNT_POINTS};

fn type_name(k: SFlag) -> &'static str {
    match k {
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a regular file",
        _ => "a special file",
    }
}

/// Creates the runtime's mount points ([`MOUNT_POINTS`]: /proc, /dev, /sys, /tmp as
/// directories, /control.sock as an empty file) at the top of the rootfs; fails if one
/// exists as a symlink or with the wrong type.
pub(crate) fn prepare_mount_points(root: &OwnedFd) -> Result<(), ImageError> {
    let perr = |p: &str, e: nix::errno::Errno| ImageError::PrepareMountPoint {
        path: format!("/{p}"),
        source: e.into(),
    };
    for &(name, kind, mode) in MOUNT_POINTS {
        let wanted = match kind {
            MountPointKind::Dir => SFlag::S_IFDIR,
            MountPointKind::File => SFlag::S_IFREG,
        };
        let mode = Mode::from_bits_truncate(mode);
        match kind_at(root, OsStr::new(name)).map_err(|e| perr(name, e))? {
            Some(k) if k == wanted => {}
            Some(k) => {
                return Err(ImageError::MountPoint {
                    path: format!("/{name}"),
                    found: type_name(k),
                })
            }
            None if kind == MountPointKind::Dir => {
                mkdirat(root, name, Mode::from_bits_truncate(0o700)).map_err(|e| perr(name, e))?;
                let fd = super::fsutil::open_subdir(root, OsStr::new(name))
                    .map_err(|e| perr(name, e))?;
                fchmod(&fd, mode).map_err(|e| perr(name, e))?;
            }
            None => {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = openat(root, name, flags, mode).map_err(|e| perr(name, e))?;
                fchmod(&fd, mode).map_err(|e| perr(name, e))?;
            }
        }
    }
    Ok(())
}
