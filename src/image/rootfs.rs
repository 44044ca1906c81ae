//! Preparing the mount points the runtime needs in the (later read-only) rootfs.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode, SFlag};

use super::error::ImageError;
use super::fsutil::kind_at;

/// Directories the runtime mounts over, with the mode they get when the image lacks them.
pub const MOUNT_DIRS: &[(&str, u32)] = &[
    ("proc", 0o555),
    ("dev", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];
/// Regular files the runtime bind-mounts over.
pub const MOUNT_FILES: &[&str] = &["control.sock"];

fn type_name(k: SFlag) -> &'static str {
    match k {
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a regular file",
        _ => "a special file",
    }
}

/// Creates /proc, /dev, /sys, /tmp (directories) and /control.sock (empty file, 0644) at the
/// top of the rootfs; fails if one exists as a symlink or with the wrong type.
pub(crate) fn prepare_mount_points(root: &OwnedFd) -> Result<(), ImageError> {
    let perr = |p: &str, e: nix::errno::Errno| ImageError::PrepareMountPoint {
        path: format!("/{p}"),
        source: e.into(),
    };
    for (name, mode) in MOUNT_DIRS {
        match kind_at(root, OsStr::new(name)).map_err(|e| perr(name, e))? {
            Some(SFlag::S_IFDIR) => {}
            Some(k) => {
                return Err(ImageError::MountPoint {
                    path: format!("/{name}"),
                    found: type_name(k),
                })
            }
            None => {
                mkdirat(root, *name, Mode::from_bits_truncate(0o700)).map_err(|e| perr(name, e))?;
                let fd = super::fsutil::open_subdir(root, OsStr::new(name))
                    .map_err(|e| perr(name, e))?;
                fchmod(&fd, Mode::from_bits_truncate(*mode)).map_err(|e| perr(name, e))?;
            }
        }
    }
    for name in MOUNT_FILES {
        match kind_at(root, OsStr::new(name)).map_err(|e| perr(name, e))? {
            Some(SFlag::S_IFREG) => {}
            Some(k) => {
                return Err(ImageError::MountPoint {
                    path: format!("/{name}"),
                    found: type_name(k),
                })
            }
            None => {
                let fd = openat(
                    root,
                    *name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map_err(|e| perr(name, e))?;
                fchmod(&fd, Mode::from_bits_truncate(0o644)).map_err(|e| perr(name, e))?;
            }
        }
    }
    Ok(())
}
