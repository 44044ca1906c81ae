//! File-descriptor based helpers: every path inside the rootfs is resolved with openat2
//! (RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) on a dirfd of the rootfs, and every entry is
//! created or removed with *at syscalls relative to its parent dirfd.

use std::ffi::{CStr, OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Opens the directory `path` (relative, `/`-separated; empty = the root itself) inside the
/// tree whose root is `root`, as if `root` were `/`: `..` and absolute symlinks cannot leave it.
pub(crate) fn open_dir_in_root(root: impl AsFd, path: &[u8]) -> nix::Result<OwnedFd> {
    let p: &OsStr = if path.is_empty() {
        OsStr::new(".")
    } else {
        OsStr::from_bytes(path)
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(in_root());
    loop {
        match openat2(root.as_fd(), p, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// Reads at most `max` bytes of the regular file `path` inside the tree rooted at `root`.
/// Returns `Ok(None)` when it does not exist.
pub(crate) fn read_in_root(root: impl AsFd, path: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(in_root());
    let fd = loop {
        match openat2(root.as_fd(), path, how) {
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => continue,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
            Ok(fd) => break fd,
        }
    };
    let st = nix::sys::stat::fstat(&fd)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/{path} is not a regular file"),
        ));
    }
    let mut buf = Vec::new();
    std::fs::File::from(fd).take(max).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// The file type of `name` in `dir`, without following a final symlink; `None` if absent.
pub(crate) fn kind_at(dir: impl AsFd, name: &OsStr) -> nix::Result<Option<SFlag>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the directory `name` in `dir` for reading, refusing to follow a symlink.
pub(crate) fn open_subdir(dir: impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// The names in directory `dir` (without `.` and `..`).
pub(crate) fn list_dir(dir: impl AsFd) -> nix::Result<Vec<OsString>> {
    // A fresh open file description, so that the directory stream offset is our own.
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open directory fd that we own; on success fdopendir takes ownership.
    let dirp = unsafe { libc::fdopendir(raw) };
    if dirp.is_null() {
        let e = Errno::last();
        // SAFETY: fdopendir failed, so `raw` is still ours; wrapping it closes it on drop.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        Errno::clear();
        // SAFETY: `dirp` is a valid DIR* returned by fdopendir and not yet closed.
        let ent = unsafe { libc::readdir64(dirp) };
        if ent.is_null() {
            let e = Errno::last_raw();
            break if e == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(e))
            };
        }
        // SAFETY: `ent` points to a dirent64 valid until the next readdir64 on `dirp`;
        // d_name is NUL-terminated. We copy the name out before the next call.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    };
    // SAFETY: `dirp` is valid and closed exactly once here (this also closes `raw`).
    unsafe { libc::closedir(dirp) };
    result.map(|_| names)
}

/// Removes `name` from `dir`, recursively if it is a directory, never following symlinks.
/// Absent is fine.
pub(crate) fn remove_all_at(dir: impl AsFd, name: &OsStr) -> nix::Result<()> {
    let dir = dir.as_fd();
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => {
            let sub = open_subdir(dir, name)?;
            for child in list_dir(&sub)? {
                remove_all_at(&sub, &child)?;
            }
            drop(sub);
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
        }
        Some(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir),
    }
}
