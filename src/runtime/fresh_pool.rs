//! Kernel objects made ahead of the request for one container each, never reused: its
//! IPC namespace and its /tmp, /dev/shm and /dev/pts mounts.
//!
//! A new IPC namespace (copy_ipcs) registers sysctl tables of its own and mounts an
//! internal mqueue instance (~30 µs of the clone); each of the two tmpfs and the devpts
//! instance is a superblock made at mount time (~10 µs each). A background thread makes
//! them in advance, as a [`Kit`]: the namespace, which the thread leaves as soon as it
//! is made, and the three filesystems as detached mounts (fsopen + fsmount) with the
//! same options and flags as the container would give them. A spawn joins the namespace
//! with setns and attaches the mounts with move_mount, so each container still gets
//! objects no other process ever used; nothing comes back: unlike a network namespace,
//! they go with their container. When no kit is ready, the container makes its own.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::sched::CloneFlags;

use super::child::MountOp;
use super::error::Result;
use super::filler;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;

/// The mounts of a kit, in the order of [`Kit::mounts`]: where each goes, as the
/// container's own mount list names it (rootfs::container_mounts), with its filesystem,
/// options and flags.
pub const KIT_MOUNTS: [KitMount; 3] = [
    KitMount {
        target: c"/tmp",
        fstype: c"tmpfs",
        options: &[(c"size", c"65536k"), (c"mode", c"1777")],
        attrs: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    },
    KitMount {
        target: c"/dev/shm",
        fstype: c"tmpfs",
        options: &[(c"size", c"65536k"), (c"mode", c"1777")],
        attrs: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
    },
    KitMount {
        target: c"/dev/pts",
        fstype: c"devpts",
        options: &[(c"ptmxmode", c"0666"), (c"mode", c"0620")],
        attrs: MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    },
];

pub struct KitMount {
    pub target: &'static CStr,
    fstype: &'static CStr,
    options: &'static [(&'static CStr, &'static CStr)],
    attrs: libc::c_uint,
}

impl KitMount {
    /// The same mount made by the container itself, with mount(2), when no kit is ready.
    pub fn as_mount_op(&self) -> MountOp {
        let data = self
            .options
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(",");
        let flag = |attr, ms| if self.attrs & attr != 0 { ms } else { 0 };
        MountOp::Mount {
            source: self.fstype.into(),
            target: self.target.into(),
            fstype: Some(self.fstype.into()),
            flags: flag(MOUNT_ATTR_NOSUID, libc::MS_NOSUID)
                | flag(MOUNT_ATTR_NODEV, libc::MS_NODEV)
                | flag(MOUNT_ATTR_NOEXEC, libc::MS_NOEXEC),
            data: Some(CString::new(data).expect("options without NUL")),
        }
    }
}

/// One container's fresh objects.
pub struct Kit {
    pub ipc: OwnedFd,
    /// Detached mounts, in the order of [`KIT_MOUNTS`].
    pub mounts: [OwnedFd; 3],
}

impl Kit {
    pub fn mount_fds(&self) -> [BorrowedFd<'_>; 3] {
        [
            self.mounts[0].as_fd(),
            self.mounts[1].as_fd(),
            self.mounts[2].as_fd(),
        ]
    }
}

pub struct FreshPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a kit was taken, or at shutdown.
    wanted: Condvar,
    /// Signalled when the filler made one, or gave up.
    made_one: Condvar,
    size: usize,
    lent: AtomicU64,
}

struct State {
    ready: Vec<Kit>,
    stopping: bool,
    /// The filler could not make one and stopped.
    failed: bool,
}

impl FreshPool {
    /// Starts the thread that keeps `size` kits ready.
    pub fn start(size: usize) -> Result<Self> {
        let home = filler::home_namespace("ipc", "open our IPC namespace")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ready: Vec::with_capacity(size),
                stopping: false,
                failed: false,
            }),
            wanted: Condvar::new(),
            made_one: Condvar::new(),
            size,
            lent: AtomicU64::new(0),
        });
        let filler = shared.clone();
        filler::start("faasd-fresh", "start the fresh-objects thread", move || {
            filler.fill(home)
        })?;
        // Well under a ms per kit.
        filler::await_first_fill(&shared.state, &shared.made_one, |st| {
            st.ready.len() >= size || st.failed
        });
        Ok(FreshPool { shared })
    }

    /// A kit of fresh objects, if one is ready.
    pub fn take(&self) -> Option<Kit> {
        let (kit, low) = {
            let mut st = self.shared.state.lock().unwrap();
            let kit = st.ready.pop();
            (kit, st.ready.len() <= self.shared.low_water())
        };
        // Woken at the low-water mark, the filler makes kits until the pool is full
        // again: one wake-up per half a pool, not one per container.
        if low {
            self.shared.wanted.notify_one();
        }
        if kit.is_some() {
            self.shared.lent.fetch_add(1, Ordering::Relaxed);
        }
        kit
    }

    /// How many spawns used a kit made ahead.
    pub fn lent(&self) -> u64 {
        self.shared.lent.load(Ordering::Relaxed)
    }
}

impl Drop for FreshPool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().stopping = true;
        self.shared.wanted.notify_one();
    }
}

impl Shared {
    fn low_water(&self) -> usize {
        self.size / 2
    }

    fn fill(&self, home: OwnedFd) {
        loop {
            {
                // Once full, sleep until takes bring the pool down to the low-water mark;
                // short of full, make the next one.
                let mut st = self.state.lock().unwrap();
                if st.ready.len() >= self.size {
                    while st.ready.len() > self.low_water() && !st.stopping {
                        st = self.wanted.wait(st).unwrap();
                    }
                }
                if st.stopping {
                    return;
                }
            }
            match make_kit(&home) {
                Ok(kit) => {
                    self.state.lock().unwrap().ready.push(kit);
                    self.made_one.notify_all();
                }
                Err(e) => {
                    // Containers make their own; no point retrying in a loop.
                    tracing::error!(
                        "pre-making containers' IPC namespaces and mounts failed, stopping: {e}"
                    );
                    self.state.lock().unwrap().failed = true;
                    self.made_one.notify_all();
                    return;
                }
            }
        }
    }
}

fn make_kit(home: &OwnedFd) -> std::io::Result<Kit> {
    let [tmp, shm, pts] = &KIT_MOUNTS;
    Ok(Kit {
        ipc: make_ipc_ns(home)?,
        mounts: [
            detached_mount(tmp)?,
            detached_mount(shm)?,
            detached_mount(pts)?,
        ],
    })
}

/// Makes a new IPC namespace on this thread, keeps an fd to it, and goes back home.
fn make_ipc_ns(home: &OwnedFd) -> std::io::Result<OwnedFd> {
    nix::sched::unshare(CloneFlags::CLONE_NEWIPC)?;
    let made = std::fs::File::open("/proc/thread-self/ns/ipc").map(OwnedFd::from);
    nix::sched::setns(home.as_fd(), CloneFlags::CLONE_NEWIPC)?;
    made
}

/// A new instance of the kit mount's filesystem, mounted nowhere yet.
fn detached_mount(m: &KitMount) -> std::io::Result<OwnedFd> {
    let owned = |rc: libc::c_long| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            // SAFETY: the syscall returned a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
        }
    };
    // SAFETY: fsopen with a NUL-terminated name and a flag constant.
    let fs = owned(unsafe { libc::syscall(libc::SYS_fsopen, m.fstype.as_ptr(), FSOPEN_CLOEXEC) })?;
    let config = |cmd: libc::c_uint, key: Option<&CStr>, value: Option<&CStr>| {
        let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: fsconfig on our fs context fd, NUL-terminated strings or null.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                ptr(key),
                ptr(value),
                0,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // The source shows in mountinfo, as it does for mount(2) with the type as source.
    config(FSCONFIG_SET_STRING, Some(c"source"), Some(m.fstype))?;
    for (key, value) in m.options {
        config(FSCONFIG_SET_STRING, Some(key), Some(value))?;
    }
    config(FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: fsmount of our created fs context, with flag constants.
    owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, m.attrs) })
}
