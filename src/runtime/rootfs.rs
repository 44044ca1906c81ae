//! The container's filesystem: checks on the untrusted image root, command lookup inside
//! it, and the mounts each container makes in its copy of the template (template.rs).
//!
//! Images are untrusted: a mount target that is a symlink would be followed in the host's
//! tree while the template is built (runc CVE-2021-30465 / CVE-2019-16884 class). Every
//! path we mount on is therefore opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
//! and its type checked before the template is built. The image directory is ours and is
//! mounted read-only into every container, so nothing can swap a checked path for a
//! symlink afterwards; a container's own mounts are made inside its root.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::OnceLock;

use super::child::MountOp;
use super::error::{Result, RuntimeError};
use super::fresh_pool::KIT_MOUNTS;

/// Paths the runtime mounts over, with the mode they get when an image lacks them; the
/// image installer makes them (the root is read-only at run time) and the runtime checks
/// them before every mount.
pub const MOUNT_POINTS: &[(&str, Kind, u32)] = &[
    ("proc", Kind::Dir, 0o555),
    ("dev", Kind::Dir, 0o755),
    ("sys", Kind::Dir, 0o555),
    ("tmp", Kind::Dir, 0o1777),
    ("control.sock", Kind::File, 0o644),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Hidden in each container's /proc (runc's maskedPaths; those under /sys are masked in
/// the template): /dev/null over the files, an empty read-only tmpfs over the
/// directories. Absent ones are skipped.
const PROC_MASKED_FILES: &[&str] = &[
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/timer_list",
    "/proc/timer_stats",
];

const PROC_MASKED_DIRS: &[&str] = &["/proc/acpi", "/proc/asound", "/proc/scsi"];

/// Read-only in each container's /proc (runc's readonlyPaths).
const PROC_READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// openat2 of `rel` under `root` with `flags` (O_CLOEXEC added) and `resolve`.
pub(super) fn openat2(
    root: &File,
    rel: &str,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let path = CString::new(rel).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: valid dirfd, NUL-terminated path and an open_how of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Opens `rel` beneath `root` as an O_PATH fd and returns its metadata.
fn open_beneath(root: &File, rel: &str, resolve: u64) -> io::Result<std::fs::Metadata> {
    File::from(openat2(root, rel, libc::O_PATH, resolve)?).metadata()
}

pub(super) fn open_root(rootfs: &Path) -> Result<File> {
    let root = File::open(rootfs).map_err(|_| RuntimeError::RootfsMissing(rootfs.into()))?;
    match root.metadata() {
        Ok(m) if m.is_dir() => Ok(root),
        _ => Err(RuntimeError::RootfsMissing(rootfs.into())),
    }
}

/// Refuses a rootfs whose mount points are missing, symlinks, or of the wrong type.
pub fn check_mount_points(rootfs: &Path) -> Result<()> {
    let root = open_root(rootfs)?;
    for &(name, kind, _) in MOUNT_POINTS {
        let unsafe_point = |problem| RuntimeError::UnsafeMountPoint {
            rootfs: rootfs.into(),
            path: format!("/{name}"),
            problem,
        };
        let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
        let meta = match open_beneath(&root, name, resolve) {
            Ok(m) => m,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(unsafe_point("is a symlink"))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(unsafe_point("is missing (install the image with faasd)"))
            }
            Err(_) => return Err(unsafe_point("cannot be opened")),
        };
        match kind {
            Kind::Dir if !meta.is_dir() => return Err(unsafe_point("is not a directory")),
            Kind::File if !meta.is_file() => return Err(unsafe_point("is not a regular file")),
            _ => {}
        }
    }
    Ok(())
}

/// How the child opens its working directory from the container's root, after
/// pivot_root: the path is the canonical one [`resolve_workdir`] found, so no symlink is
/// left to follow, and a magic link (/proc/self/fd/N, /proc/N/cwd) is refused outright.
pub const WORKDIR_RESOLVE: u64 =
    libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;
pub const WORKDIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;

/// Resolves the image's working directory inside `rootfs` (symlinks resolved as if the
/// rootfs were /, no magic links) and returns its canonical absolute path in the
/// container, which the child opens again from its own root and checks getcwd against.
/// The fd opened here is on the host's mount and is never given to the child: a cwd
/// outside the container's mount tree is the escape this prevents.
pub fn resolve_workdir(rootfs: &Path, workdir: &str) -> Result<CString> {
    let root = open_root(rootfs)?;
    let fail = |source| RuntimeError::Workdir {
        path: workdir.to_string(),
        source,
    };
    let rel = match workdir.trim_start_matches('/') {
        "" => ".",
        rel => rel,
    };
    let dir = openat2(
        &root,
        rel,
        libc::O_PATH | libc::O_DIRECTORY,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    )
    .map_err(fail)?;
    let host_path = |fd: &dyn AsRawFd| {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|source| {
            RuntimeError::Sys {
                op: "readlink the working directory",
                source,
            }
        })
    };
    let (root_path, dir_path) = (host_path(&root)?, host_path(&dir)?);
    let inside = dir_path
        .strip_prefix(&root_path)
        .map_err(|_| fail(io::Error::other("it resolves outside the image")))?;
    cstring("working directory", Path::new("/").join(inside))
}

/// Finds `cmd` in the image the way execvp would inside the container (PATH from `env`),
/// resolving every lookup inside the root. Returns the path to exec in the container.
pub fn resolve_command(rootfs: &Path, cmd: &str, env: &[String]) -> Result<String> {
    let root = open_root(rootfs)?;
    let is_executable = |p: &str| {
        let rel = p.trim_start_matches('/');
        match open_beneath(&root, rel, libc::RESOLVE_IN_ROOT) {
            Ok(m) => m.is_file() && m.permissions().mode() & 0o111 != 0 && m.size() > 0,
            Err(_) => false,
        }
    };
    if cmd.is_empty() {
        return Err(RuntimeError::EmptyCommand);
    }
    if cmd.contains('/') {
        return if is_executable(cmd) {
            Ok(cmd.to_string())
        } else {
            Err(RuntimeError::CommandNotFound(cmd.to_string()))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
        .find(|p| is_executable(p))
        .ok_or_else(|| RuntimeError::CommandNotFound(cmd.to_string()))
}

pub fn cstring(what: &'static str, s: impl AsRef<OsStr>) -> Result<CString> {
    let bytes = s.as_ref().as_bytes();
    CString::new(bytes).map_err(|_| RuntimeError::NulByte {
        what,
        value: String::from_utf8_lossy(bytes).into_owned(),
    })
}

/// The mounts each container makes for itself, and which of them a spawn can skip.
pub struct ContainerMounts {
    ops: Vec<MountOp>,
    /// Masks of /proc entries a module may add after boot ([`PROC_MODULE_ENTRIES`]),
    /// by index into `ops`, with the entry's name.
    module_masks: Vec<(usize, CString)>,
    /// The root of a fresh procfs of our own (kept from the probe), where those entries
    /// are looked up per spawn; None: the probe failed, every mask is tried.
    fresh_proc: Option<OwnedFd>,
    /// The ops a kit's detached mounts replace, in the order of [`KIT_MOUNTS`].
    kit_ops: [usize; 3],
}

impl ContainerMounts {
    pub fn ops(&self) -> &[MountOp] {
        self.ops.as_slice()
    }

    /// The ops a kit's mounts replace, by index, in the order of [`KIT_MOUNTS`].
    pub fn kit_ops(&self) -> [usize; 3] {
        self.kit_ops
    }

    /// The same ops as a skip mask (a bit per index).
    pub fn kit_skip(&self) -> u64 {
        self.kit_ops.iter().fold(0, |bits, i| bits | 1 << i)
    }

    /// The ops (a bit per index) that would fail on a /proc made now: masks of module
    /// entries no module has added. One lookup each in our fresh procfs, instead of two
    /// failing mount calls, each a lookup in the container's own fresh /proc.
    pub fn absent_now(&self) -> u64 {
        let Some(proc) = &self.fresh_proc else {
            return 0;
        };
        self.module_masks
            .iter()
            .filter(|(_, name)| {
                // SAFETY: faccessat on our fd and a NUL-terminated name, integer flags.
                unsafe {
                    libc::faccessat(
                        proc.as_raw_fd(),
                        name.as_ptr(),
                        libc::F_OK,
                        libc::AT_SYMLINK_NOFOLLOW,
                    ) != 0
                }
            })
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }
}

/// The mounts each container makes for itself, in its own copy of the template (see
/// template.rs), at paths of its own root: what cannot be shared between containers.
/// /proc belongs to its pid namespace, mqueue to its ipc namespace; /tmp, /dev/shm and
/// devpts are writable, and a shared one would be a channel between requests.
pub fn container_mounts() -> &'static ContainerMounts {
    static MOUNTS: OnceLock<ContainerMounts> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        let c = |s: &str| CString::new(s).expect("literal without NUL");
        let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let fs = |fstype: &str, target: &str, flags, data: Option<&str>| MountOp::Mount {
            source: c(fstype),
            target: c(target),
            fstype: Some(c(fstype)),
            flags,
            data: data.map(c),
        };
        let mut ops = vec![fs("proc", "/proc", nosuid_nodev_noexec, None)];
        let (present, fresh_proc) = match proc_entries_present() {
            Some((present, root)) => (Some(present), Some(root)),
            None => (None, None),
        };
        let planned = |path: &&&str| {
            PROC_MODULE_ENTRIES.contains(path) || present.as_ref().is_none_or(|p| p.contains(*path))
        };
        let mut module_masks = Vec::new();
        for path in PROC_MASKED_FILES.iter().filter(planned) {
            ops.push(MountOp::Mask {
                target: c(path),
                null: c("/dev/null"),
            });
        }
        for path in PROC_MASKED_DIRS.iter().filter(planned) {
            if let Some(name) = path.strip_prefix("/proc/") {
                if PROC_MODULE_ENTRIES.contains(path) {
                    module_masks.push((ops.len(), c(name)));
                }
            }
            ops.push(MountOp::MaskDir {
                target: c(path),
                empty: c(super::template::EMPTY_READ_ONLY_DIR),
            });
        }
        for path in PROC_READ_ONLY.iter().filter(planned) {
            ops.push(MountOp::BindReadOnly {
                source: c(path),
                target: c(path),
                flags: nosuid_nodev_noexec,
            });
        }
        // /tmp, /dev/shm and /dev/pts, as a kit made ahead has them (fresh_pool.rs).
        let mut kit_ops = [0; 3];
        for (slot, m) in kit_ops.iter_mut().zip(&KIT_MOUNTS) {
            *slot = ops.len();
            ops.push(m.as_mount_op());
        }
        ops.push(fs("mqueue", "/dev/mqueue", nosuid_nodev_noexec, None));
        assert!(ops.len() <= 64, "a spawn's skipped ops are a 64-bit mask");
        ContainerMounts {
            ops,
            module_masks,
            fresh_proc,
            kit_ops,
        }
    })
}

/// Entries of /proc that a module can add after boot: masked whenever they exist when a
/// container starts.
const PROC_MODULE_ENTRIES: &[&str] = &["/proc/asound", "/proc/scsi"];

/// Which of the masked and read-only /proc paths a fresh procfs of this kernel has, so
/// that containers skip a failing lookup in their own fresh /proc for each absent one
/// (/proc/kcore, /proc/timer_stats, ... depend on the kernel's build), and that procfs's
/// root, kept open for the entries a module may add later (asound, scsi), which are
/// looked up again per spawn. Probed on a proc mounted for the purpose in a private mount
/// namespace, not on the daemon's /proc, which may itself be masked or a `subset=pid`
/// instance; the open root keeps the mount once the namespace is gone. None (every path
/// planned, every time) when the probe fails.
fn proc_entries_present() -> Option<(Vec<&'static str>, OwnedFd)> {
    let probe = || -> io::Result<(Vec<&'static str>, OwnedFd)> {
        // unshare affects only the calling thread: a thread of its own, which ends here.
        nix::sched::unshare(
            nix::sched::CloneFlags::CLONE_FS | nix::sched::CloneFlags::CLONE_NEWNS,
        )?;
        let none = None::<&str>;
        let private = nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE;
        nix::mount::mount(none, "/", none, private, none)?;
        let flags = nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC;
        nix::mount::mount(Some("proc"), "/proc", Some("proc"), flags, none)?;
        let present = PROC_MASKED_FILES
            .iter()
            .chain(PROC_MASKED_DIRS)
            .chain(PROC_READ_ONLY)
            .copied()
            .filter(|p| Path::new(p).symlink_metadata().is_ok())
            .collect();
        let root = File::open("/proc")?;
        Ok((present, root.into()))
    };
    let probed = std::thread::scope(|s| s.spawn(probe).join());
    match probed {
        Ok(Ok(present)) => Some(present),
        Ok(Err(e)) => {
            tracing::warn!("probing a fresh /proc failed ({e}): every mask is tried per container");
            None
        }
        Err(_) => None,
    }
}

/// A person-readable name of a mount operation, for error messages.
pub fn describe(op: &MountOp) -> String {
    let s = |c: &CString| c.to_string_lossy().into_owned();
    match op {
        MountOp::Mount {
            source,
            target,
            fstype,
            ..
        } => match fstype {
            Some(t) => format!("mount {} on {}", s(t), s(target)),
            None => format!("bind {} on {}", s(source), s(target)),
        },
        MountOp::BindReadOnly { target, .. } => format!("make {} read-only", s(target)),
        MountOp::Mask { target, .. } | MountOp::MaskDir { target, .. } => {
            format!("mask {}", s(target))
        }
    }
}
