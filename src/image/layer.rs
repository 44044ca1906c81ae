//! Applying one layer (a tar stream, gzip / zstd / plain) onto the rootfs, with OCI
//! whiteouts, and without ever writing outside the rootfs: every parent directory is
//! resolved with openat2(RESOLVE_IN_ROOT) on the rootfs dirfd and every entry is created
//! with *at syscalls relative to that parent (O_EXCL / O_NOFOLLOW on the final component).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::error::ImageError;
use super::fsutil::{kind_at, list_dir, open_dir_in_root, open_subdir, remove_all_at};
use super::limits::{CountingReader, Limits, NameBytes, Usage};
use super::tar_guard::{oversized, TarGuard, MAX_EXTENSION};

/// zstd's window is the decoder's largest allocation: 16 MiB covers levels 1-19 (the
/// crate's default would let a layer make us allocate 128 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
const WH_META: &[u8] = b".wh..wh.";

/// Splits a tar path into components. `Ok(None)`: the name is the root itself (`.`, `/`, empty).
/// `Err(())`: it is absolute or has a `..` component.
pub(crate) fn split_path(raw: &[u8]) -> Result<Option<Vec<&[u8]>>, ()> {
    let comps: Vec<&[u8]> = raw
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if comps.is_empty() {
        return Ok(None);
    }
    if raw.first() == Some(&b'/') || comps.iter().any(|c| *c == b"..") {
        return Err(());
    }
    Ok(Some(comps))
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

enum Compression {
    None,
    Gzip,
    Zstd,
}

fn detect(head: &[u8], layer: &str) -> Result<Compression, ImageError> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(ImageError::UnsupportedCompression {
            layer: layer.into(),
            algo: "xz",
        })
    } else if head.starts_with(b"BZh") {
        Err(ImageError::UnsupportedCompression {
            layer: layer.into(),
            algo: "bzip2",
        })
    } else {
        Ok(Compression::None)
    }
}

/// Applies one layer onto the rootfs whose O_PATH dirfd is `root`.
pub(crate) fn apply_layer(
    root: &OwnedFd,
    layer: &str,
    blob: impl Read,
    limits: &Limits,
    usage: &Usage,
) -> Result<(), ImageError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, blob);
    let head = buffered.fill_buf().map_err(|e| ImageError::LayerCorrupt {
        layer: layer.into(),
        source: e,
    })?;
    let decoded: Box<dyn Read + '_> = match detect(head, layer)? {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            let corrupt = |e| ImageError::LayerCorrupt {
                layer: layer.into(),
                source: e,
            };
            let mut d = zstd::stream::read::Decoder::with_buffer(buffered).map_err(corrupt)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(corrupt)?;
            Box::new(d)
        }
    };
    let counting = CountingReader {
        inner: decoded,
        usage,
        limit: limits.max_bytes,
    };
    let mut ar = tar::Archive::new(TarGuard::new(counting));
    let mut ex = Extractor {
        root,
        layer,
        limits,
        usage,
        seen: HashSet::new(),
        seen_bytes: NameBytes::default(),
        cache: None,
        is_root: nix::unistd::geteuid().is_root(),
        warned_chown: false,
        buf: vec![0u8; 128 * 1024],
        started: false,
    };
    let entries = ar.entries().map_err(|e| ex.read_error(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ex.read_error(e))?;
        ex.started = true;
        ex.apply(&mut entry)?;
    }
    Ok(())
}

struct Extractor<'a> {
    root: &'a OwnedFd,
    layer: &'a str,
    limits: &'a Limits,
    usage: &'a Usage,
    /// Paths written by this layer (whiteouts only hide what lower layers wrote).
    seen: HashSet<Vec<u8>>,
    seen_bytes: NameBytes,
    /// The last resolved parent directory; dropped whenever something is removed or a
    /// symlink is created (either could change what a path resolves to).
    cache: Option<(Vec<u8>, OwnedFd)>,
    is_root: bool,
    warned_chown: bool,
    buf: Vec<u8>,
    started: bool,
}

impl Extractor<'_> {
    fn read_error(&self, e: io::Error) -> ImageError {
        if let Some(o) = oversized(&e) {
            ImageError::ExtensionTooLarge {
                member: format!("layer {}", self.layer),
                kind: o.kind,
                size: o.size,
                limit: MAX_EXTENSION,
            }
        } else if self.usage.bytes_exceeded(self.limits) {
            Usage::bytes_error(self.limits)
        } else if !self.started {
            ImageError::LayerNotTar {
                layer: self.layer.into(),
                reason: e.to_string(),
            }
        } else {
            ImageError::LayerCorrupt {
                layer: self.layer.into(),
                source: e,
            }
        }
    }

    fn bad(&self, entry: &str, reason: impl Into<String>) -> ImageError {
        ImageError::BadEntry {
            layer: self.layer.into(),
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    fn fail(&self, entry: &str, op: &'static str, e: impl Into<io::Error>) -> ImageError {
        ImageError::Extract {
            layer: self.layer.into(),
            entry: entry.into(),
            op,
            source: e.into(),
        }
    }

    fn escape(&self, entry: &str) -> ImageError {
        ImageError::Escape {
            layer: self.layer.into(),
            entry: entry.into(),
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        self.usage.add_entry(self.limits)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let comps = match split_path(&raw) {
            Err(()) => return Err(self.escape(&shown)),
            Ok(None) if kind == T::Directory => return Ok(()),
            Ok(None) if kind == T::Symlink => {
                return Err(self.bad(&shown, "a symlink must have a name other than `.` or `/`"))
            }
            Ok(None) => return Err(self.bad(&shown, "it names the image root")),
            Ok(Some(c)) => c,
        };
        self.usage.check_depth(comps.len(), self.limits)?;
        let (parent, name) = comps.split_at(comps.len() - 1);
        let name = name[0];
        let parent_path = parent.join(&b'/');

        if name.starts_with(WH_PREFIX) {
            return self.whiteout(&shown, &parent_path, name);
        }

        let full = comps.join(&b'/');
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = h.uid().unwrap_or(0) as u32;
        let gid = h.gid().unwrap_or(0) as u32;
        let mtime = h.mtime().unwrap_or(0);
        match kind {
            T::Directory => {
                let pfd = self.parent(&shown, &parent_path)?;
                match kind_at(&pfd, os(name)).map_err(|e| self.fail(&shown, "inspect", e))? {
                    Some(SFlag::S_IFDIR) => {}
                    existing => {
                        if existing.is_some() {
                            self.remove(&shown, &pfd, name)?;
                        }
                        mkdirat(&pfd, os(name), Mode::from_bits_truncate(0o700))
                            .map_err(|e| self.fail(&shown, "create directory", e))?;
                    }
                }
                let dfd = open_subdir(&pfd, os(name))
                    .map_err(|e| self.fail(&shown, "open directory", e))?;
                self.set_owner(&shown, &dfd, uid, gid)?;
                fchmod(&dfd, Mode::from_bits_truncate(mode))
                    .map_err(|e| self.fail(&shown, "chmod", e))?;
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                let pfd = self.parent(&shown, &parent_path)?;
                self.remove(&shown, &pfd, name)?;
                let fd = openat(
                    &pfd,
                    os(name),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.fail(&shown, "create file", e))?;
                let mut file = File::from(fd);
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(self.read_error(e)),
                    };
                    file.write_all(&self.buf[..n])
                        .map_err(|e| self.fail(&shown, "write", e))?;
                }
                self.set_owner(&shown, &file, uid, gid)?;
                fchmod(&file, Mode::from_bits_truncate(mode))
                    .map_err(|e| self.fail(&shown, "chmod", e))?;
                // File capabilities (e.g. ping's cap_net_raw) travel as a PAX xattr; set after
                // chown, which would clear them.
                if let Some(cap) = file_capability(entry) {
                    set_capability(&file, &cap)
                        .map_err(|e| self.fail(&shown, "set security.capability of", e))?;
                }
                let t = TimeSpec::new(mtime as i64, 0);
                futimens(&file, &t, &t).map_err(|e| self.fail(&shown, "set times of", e))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(self.bad(&shown, "a symlink with an empty target"));
                }
                let pfd = self.parent(&shown, &parent_path)?;
                self.remove(&shown, &pfd, name)?;
                self.cache = None;
                symlinkat(os(&target), &pfd, os(name))
                    .map_err(|e| self.fail(&shown, "create symlink", e))?;
                if let Err(e) = fchownat(
                    &pfd,
                    os(name),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    self.chown_failed(&shown, e)?;
                }
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let label = format!("{shown} (hardlink to {})", String::from_utf8_lossy(&target));
                let tcomps = match split_path(&target) {
                    Ok(Some(c)) => c,
                    Ok(None) => return Err(self.bad(&label, "a hardlink to the image root")),
                    Err(()) => return Err(self.escape(&label)),
                };
                if tcomps == comps {
                    return Ok(());
                }
                let (tparent, tname) = tcomps.split_at(tcomps.len() - 1);
                let tpfd = open_dir_in_root(self.root, &tparent.join(&b'/'))
                    .map_err(|e| self.fail(&label, "find the target of", e))?;
                let pfd = self.parent(&shown, &parent_path)?;
                self.remove(&shown, &pfd, name)?;
                linkat(&tpfd, os(tname[0]), &pfd, os(name), AtFlags::empty())
                    .map_err(|e| self.fail(&label, "create hardlink", e))?;
            }
            T::Char | T::Block | T::Fifo => {
                tracing::warn!(layer = self.layer, entry = %shown, "skipping device node or fifo in image layer");
                return Ok(());
            }
            other => {
                tracing::warn!(layer = self.layer, entry = %shown, kind = ?other, "skipping tar entry of unsupported type");
                return Ok(());
            }
        }
        self.seen_bytes.add(&full)?;
        self.seen.insert(full);
        Ok(())
    }

    fn set_owner(
        &mut self,
        shown: &str,
        fd: impl AsFd,
        uid: u32,
        gid: u32,
    ) -> Result<(), ImageError> {
        match fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))) {
            Ok(()) => Ok(()),
            Err(e) => self.chown_failed(shown, e),
        }
    }

    fn chown_failed(&mut self, shown: &str, e: Errno) -> Result<(), ImageError> {
        if self.is_root || e != Errno::EPERM {
            return Err(self.fail(shown, "chown", e));
        }
        if !self.warned_chown {
            self.warned_chown = true;
            tracing::warn!("not running as root: image file ownership is not preserved");
        }
        Ok(())
    }

    /// Removes whatever exists at `name` in `pfd` (recursively for a directory).
    fn remove(&mut self, shown: &str, pfd: &OwnedFd, name: &[u8]) -> Result<(), ImageError> {
        match kind_at(pfd, os(name)).map_err(|e| self.fail(shown, "inspect", e))? {
            None => Ok(()),
            Some(SFlag::S_IFDIR) => {
                self.cache = None;
                remove_all_at(pfd, os(name)).map_err(|e| self.fail(shown, "replace", e))
            }
            Some(_) => unlinkat(pfd, os(name), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| self.fail(shown, "replace", e)),
        }
    }

    /// The parent directory of an entry, created (0755, root-owned) when missing.
    fn parent(&mut self, shown: &str, path: &[u8]) -> Result<OwnedFd, ImageError> {
        if let Some((p, fd)) = &self.cache {
            if p.as_slice() == path {
                return fd
                    .try_clone()
                    .map_err(|e| self.fail(shown, "open parent of", e));
            }
        }
        let fd = match open_dir_in_root(self.root, path) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.create_parents(shown, path)?,
            Err(Errno::ENOTDIR) => {
                return Err(self.bad(shown, "a parent path component is not a directory"))
            }
            Err(e) => return Err(self.fail(shown, "open parent of", e)),
        };
        let ret = fd
            .try_clone()
            .map_err(|e| self.fail(shown, "open parent of", e))?;
        self.cache = Some((path.to_vec(), fd));
        Ok(ret)
    }

    fn create_parents(&mut self, shown: &str, path: &[u8]) -> Result<OwnedFd, ImageError> {
        let comps: Vec<&[u8]> = path.split(|b| *b == b'/').collect();
        let mut fd =
            open_dir_in_root(self.root, b"").map_err(|e| self.fail(shown, "open parent of", e))?;
        for i in 0..comps.len() {
            let prefix = comps[..=i].join(&b'/');
            fd = match open_dir_in_root(self.root, &prefix) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(&fd, os(comps[i]), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.fail(shown, "create parent directory of", e)),
                    }
                    open_dir_in_root(self.root, &prefix).map_err(|e| {
                        self.fail(
                            shown,
                            "create parent directory (a dangling symlink is in the way?) of",
                            e,
                        )
                    })?
                }
                Err(e) => return Err(self.fail(shown, "open parent of", e)),
            };
        }
        Ok(fd)
    }

    fn whiteout(&mut self, shown: &str, parent_path: &[u8], name: &[u8]) -> Result<(), ImageError> {
        self.cache = None;
        if name == WH_OPAQUE {
            let dir = match open_dir_in_root(self.root, parent_path) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(self.fail(shown, "apply opaque whiteout", e)),
            };
            let dir = openat(
                &dir,
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.fail(shown, "apply opaque whiteout", e))?;
            return self
                .purge_lower(&dir, parent_path)
                .map_err(|e| self.fail(shown, "apply opaque whiteout", e));
        }
        if name.starts_with(WH_META) {
            tracing::debug!(entry = %shown, "ignoring aufs metadata whiteout");
            return Ok(());
        }
        let victim = &name[WH_PREFIX.len()..];
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(self.bad(shown, "a malformed whiteout (no file name after `.wh.`)"));
        }
        let mut full = parent_path.to_vec();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(victim);
        if self.seen.contains(&full) {
            return Ok(());
        }
        let dir = match open_dir_in_root(self.root, parent_path) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(self.fail(shown, "apply whiteout", e)),
        };
        remove_all_at(&dir, os(victim)).map_err(|e| self.fail(shown, "apply whiteout", e))
    }

    /// Removes from `dir` everything that lower layers put there (keeps what this layer wrote).
    fn purge_lower(&self, dir: &OwnedFd, path: &[u8]) -> nix::Result<()> {
        for child in list_dir(dir)? {
            let mut full = path.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(child.as_bytes());
            if !self.seen.contains(&full) {
                remove_all_at(dir, &child)?;
            } else if kind_at(dir, &child)? == Some(SFlag::S_IFDIR) {
                let sub = open_subdir(dir, &child)?;
                self.purge_lower(&sub, &full)?;
            }
        }
        Ok(())
    }
}

const CAP_XATTR: &str = "security.capability";

/// The `security.capability` xattr recorded in the entry's PAX header, if any.
fn file_capability<R: Read>(entry: &mut tar::Entry<'_, R>) -> Option<Vec<u8>> {
    let exts = entry.pax_extensions().ok()??;
    for ext in exts.flatten() {
        if ext.key().ok() == Some("SCHILY.xattr.security.capability") {
            return Some(ext.value_bytes().to_vec());
        }
    }
    None
}

fn set_capability(file: &File, value: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(CAP_XATTR).expect("no NUL in a constant");
    // SAFETY: `file` is an open fd for the duration of the call; `name` is NUL-terminated and
    // `value` points to `value.len()` readable bytes; the kernel copies both.
    let r = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // Filesystems without xattrs, or no privilege: the image still runs without the cap.
        if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) {
            tracing::warn!(error = %e, "cannot keep a file capability from the image");
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}
