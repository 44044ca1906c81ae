//! A function's mount tree, built once per image and copied into every container.
//!
//! Building a container's root used to take ~30 mount, mknod and symlink calls per
//! request, plus a copy of the host's whole mount table (CLONE_NEWNS), pivot_root and the
//! detach of that copy. Everything that is the same for every container of an image is
//! instead built here, once, in a mount namespace of its own whose root *is* the
//! container's root: the image bound read-only (nosuid, nodev), /dev (a read-only tmpfs
//! with its nodes, links and mount points), /sys read-only with its masks, and the
//! function's control socket at /control.sock. A container's first process joins this
//! namespace (`setns`) and at once `unshare(CLONE_NEWNS)`s a private copy of it: two
//! syscalls that copy a dozen mounts, on every kernel (3.8+), no pivot_root. Only what
//! must be its own is mounted afterwards (see [`super::rootfs::container_mounts`]).
//!
//! Why a namespace and not a detached tree (`open_tree(OPEN_TREE_CLONE)` +
//! `move_mount`): until Linux 6.15 `open_tree` refuses to clone a tree that is not in the
//! caller's mount namespace (a detached one, or one of another namespace), so the tree
//! would have to sit in the daemon's own namespace (the host's mount table, copied into
//! every container by CLONE_NEWNS); the VM tier runs 6.1.
//!
//! Nothing of a template is visible in the daemon's mount namespace; it lives as long as
//! the [`MountTemplate`] (its namespace fd). Shared between containers, it must hold
//! nothing writable: /dev is read-only, and per-container state goes on fresh mounts.
//!
//! /sys is mounted in a network namespace made for the template and never used by any
//! container: sysfs shows the network devices of its mounter's namespace, and the host's
//! are not the container's business.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::error::{Result, RuntimeError};
use super::rootfs;

/// Who may connect to the control socket: the image's user.
#[derive(Debug, Clone, Copy)]
pub struct ControlSocketOwner {
    pub uid: u32,
    pub gid: u32,
}

/// Connections queued on a function's control socket before the daemon accepts them.
const CONTROL_BACKLOG: i32 = 1024;

/// (name, major, minor) of the device nodes every container gets. No /dev/tty: nothing
/// attaches a terminal to a container, and a handler must never reach the operator's.
const DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

/// Mount points for the per-container /dev mounts.
const DEV_DIRS: &[(&str, u32)] = &[("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o755)];

/// Masked under /sys (shared by all containers, read-only): empty read-only tmpfs.
const SYS_MASKED: &[&str] = &["sys/devices/virtual/powercap", "sys/firmware"];

/// One of those masks, in the container's tree: an empty read-only directory (its
/// superblock read-only too) that containers bind over the directories they mask. sysfs
/// always has /sys/firmware (a core kobject); where it does not, nothing is there and
/// the container mounts an empty tmpfs instead.
pub const EMPTY_READ_ONLY_DIR: &str = "/sys/firmware";

/// An image's container root, ready to be copied.
pub struct MountTemplate {
    /// The template's mount namespace (its root is the container's root).
    ns: OwnedFd,
    /// Working directories and commands already resolved in this image (see
    /// [`MountTemplate::resolve`]).
    resolved: Mutex<Vec<Arc<Resolved>>>,
}

/// Where a container of this image starts: its canonical working directory and the
/// command's path inside the container, for the image's WorkingDir, command and PATH
/// (None: the default PATH).
pub struct Resolved {
    workdir: String,
    command: String,
    path: Option<String>,
    pub workdir_in_container: CString,
    pub exe: CString,
}

impl Resolved {
    fn is_for(&self, workdir: &str, command: &str, path: Option<&str>) -> bool {
        self.workdir == workdir && self.command == command && self.path.as_deref() == path
    }
}

/// Resolutions kept per template: a function's image sees one or two configurations.
const RESOLVED_KEPT: usize = 8;

impl MountTemplate {
    /// Builds the template of `rootfs`; with `control`, also the control socket bound at
    /// /control.sock (owned by that user, mode 0600) and returns its listener. The socket
    /// has no path in the host's tree: it is bound on a tmpfs that only the template sees.
    pub fn build(
        rootfs: &Path,
        control: Option<ControlSocketOwner>,
    ) -> Result<(MountTemplate, Option<UnixListener>)> {
        rootfs::check_mount_points(rootfs)?;
        // unshare affects only the calling thread: a thread of its own, which ends here.
        let built = std::thread::scope(|s| {
            s.spawn(|| build_on_this_thread(rootfs, control))
                .join()
                .unwrap_or_else(|_| {
                    Err(fail("template thread", rootfs)(io::Error::other(
                        "panicked",
                    )))
                })
        })?;
        let (ns, listener) = built;
        let resolved = Mutex::new(Vec::new());
        Ok((MountTemplate { ns, resolved }, listener))
    }

    /// Resolves `workdir` and `command` in the image at `image` (the tree this template
    /// was built from, wherever it has since been moved; see [`rootfs::resolve_workdir`] and
    /// [`rootfs::resolve_command`]), once per distinct (workdir, command, PATH): the
    /// image's tree never changes while its template lives, and the lookups (openat2 per
    /// PATH entry, readlinks of /proc/self/fd) cost ~40 µs on every spawn otherwise.
    /// The child still opens the working directory from its own root and checks it, and
    /// exec still fails on a missing command. Failures are not kept.
    pub fn resolve(
        &self,
        image: &Path,
        workdir: &str,
        command: &str,
        env: &[String],
    ) -> Result<Arc<Resolved>> {
        let path = env.iter().find_map(|e| e.strip_prefix("PATH="));
        let mut kept = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = kept.iter().find(|r| r.is_for(workdir, command, path)) {
            return Ok(Arc::clone(r));
        }
        let r = Arc::new(Resolved {
            workdir: workdir.to_string(),
            command: command.to_string(),
            path: path.map(str::to_string),
            workdir_in_container: rootfs::resolve_workdir(image, workdir)?,
            exe: rootfs::cstring("command", rootfs::resolve_command(image, command, env)?)?,
        });
        if kept.len() == RESOLVED_KEPT {
            kept.remove(0);
        }
        kept.push(Arc::clone(&r));
        Ok(r)
    }

    /// The template's mount namespace, for the container's first process to join.
    pub(super) fn namespace(&self) -> BorrowedFd<'_> {
        self.ns.as_fd()
    }
}

fn fail<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Template {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn nix_fail<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> RuntimeError + 'a {
    move |e| fail(op, path)(io::Error::from(e))
}

fn build_on_this_thread(
    rootfs: &Path,
    control: Option<ControlSocketOwner>,
) -> Result<(OwnedFd, Option<UnixListener>)> {
    nix::sched::unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
        .map_err(nix_fail("unshare mount and network namespaces", rootfs))?;
    // Nothing mounted below may propagate to the daemon's namespace (or from it).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(nix_fail("make mounts private", Path::new("/")))?;
    let ns = File::open("/proc/thread-self/ns/mnt").map_err(fail(
        "open the mount namespace",
        Path::new("/proc/thread-self/ns/mnt"),
    ))?;
    let at = |rel: &str| rootfs.join(rel);
    let bind = |src: &Path, dst: &Path, flags: MsFlags| {
        mount(
            Some(src),
            dst,
            None::<&str>,
            MsFlags::MS_BIND | flags,
            None::<&str>,
        )
        .map_err(nix_fail("bind mount", dst))
    };
    let remount_ro = |dst: &Path, flags: MsFlags| {
        let all = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags;
        mount(None::<&str>, dst, None::<&str>, all, None::<&str>)
            .map_err(nix_fail("remount read-only", dst))
    };
    let fs = |fstype: &str, dst: &Path, flags: MsFlags, data: Option<&str>| {
        mount(Some(fstype), dst, Some(fstype), flags, data).map_err(nix_fail("mount", dst))
    };
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    bind(rootfs, rootfs, MsFlags::MS_REC)?;
    build_dev(&at("dev"))?;
    fs(
        "sysfs",
        &at("sys"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    )?;
    for path in SYS_MASKED {
        mask_dir(&at(path))?;
    }
    let listener = match control {
        Some(owner) => Some(bind_control_socket(rootfs, owner)?),
        None => None,
    };
    remount_ro(&at("dev"), MsFlags::MS_NOSUID)?;
    // Last, so the steps above could still write: the image is read-only, setuid bits
    // and device nodes in it mean nothing.
    remount_ro(rootfs, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
    // The image becomes the namespace's root; the copy of the daemon's tree goes.
    std::env::set_current_dir(rootfs).map_err(fail("chdir", rootfs))?;
    nix::unistd::pivot_root(".", ".").map_err(nix_fail("pivot_root", rootfs))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(nix_fail("detach the old root", rootfs))?;
    std::env::set_current_dir("/").map_err(fail("chdir", Path::new("/")))?;
    Ok((ns.into(), listener))
}

/// /dev: a tmpfs with the device nodes, links and mount points, read-only once done
/// (the caller remounts it): it is shared by every container of the image.
fn build_dev(dev: &Path) -> Result<()> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=64k"),
    )
    .map_err(nix_fail("mount", dev))?;
    for &(name, major, minor) in DEVICES {
        let path = dev.join(name);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(major, minor),
        )
        .map_err(nix_fail("mknod", &path))?;
        // mknod honours the umask; the nodes must be usable by every user.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(fail("chmod", &path))?;
    }
    for &(target, link) in DEV_LINKS {
        let path = dev.join(link);
        std::os::unix::fs::symlink(target, &path).map_err(fail("symlink", &path))?;
    }
    for &(dir, mode) in DEV_DIRS {
        let path = dev.join(dir);
        std::fs::create_dir(&path).map_err(fail("mkdir", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(fail("chmod", &path))?;
    }
    Ok(())
}

/// An empty read-only tmpfs over `dir`, if it exists (runc's maskedPaths).
fn mask_dir(dir: &Path) -> Result<()> {
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some("size=0")) {
        Err(nix::Error::ENOENT) => Ok(()),
        r => r.map_err(nix_fail("mask", dir)),
    }
}

/// Binds the function's control socket on a scratch tmpfs (over the image's /tmp, which
/// every container covers with its own), bind-mounts the socket file onto /control.sock
/// and detaches the scratch tmpfs: the socket then has no path but the template's.
fn bind_control_socket(rootfs: &Path, owner: ControlSocketOwner) -> Result<UnixListener> {
    let scratch = rootfs.join("tmp");
    mount(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=700,size=4k"),
    )
    .map_err(nix_fail("mount a scratch tmpfs", &scratch))?;
    // Bound by a relative name: the image's path may exceed sun_path's 108 bytes. The
    // directory change is this thread's alone (CLONE_FS unshared).
    std::env::set_current_dir(&scratch).map_err(fail("chdir", &scratch))?;
    let sock = Path::new("control.sock");
    let listener = listen(sock)?;
    std::os::unix::fs::chown(sock, Some(owner.uid), Some(owner.gid))
        .map_err(fail("chown", sock))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .map_err(fail("chmod", sock))?;
    let target = rootfs.join("control.sock");
    mount(
        Some(sock),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(nix_fail("bind the control socket", &target))?;
    std::env::set_current_dir("/").map_err(fail("chdir", Path::new("/")))?;
    umount2(&scratch, MntFlags::MNT_DETACH).map_err(nix_fail("detach", &scratch))?;
    Ok(listener)
}

/// A listening Unix socket bound at `path`, with a backlog for bursts of containers.
fn listen(path: &Path) -> Result<UnixListener> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(nix_fail("socket", path))?;
    let addr = UnixAddr::new(path).map_err(nix_fail("socket address", path))?;
    bind(fd.as_raw_fd(), &addr).map_err(nix_fail("bind", path))?;
    // SAFETY: listen on the socket we own, integer backlog.
    if unsafe { libc::listen(fd.as_raw_fd(), CONTROL_BACKLOG) } < 0 {
        return Err(fail("listen", path)(io::Error::last_os_error()));
    }
    Ok(UnixListener::from(fd))
}
