//! The container runtime: one fresh container per request, made in-process on raw
//! syscalls (clone, mount, pivot_root, cgroups, capabilities, seccomp). No runc.
//!
//! [`Runtime::spawn`] prepares everything in the parent (cgroup, mount plan, argv, the
//! capability sets and seccomp programs), clones the child into new namespaces, and waits
//! on a close-on-exec pipe until the child has exec'd or reported the step that failed.
//! See `child.rs` for the order of the setup steps and why.

mod cgroup;
mod cgroup_pool;
mod child;
mod clone3;
mod container;
mod error;
mod filler;
mod fresh_pool;
mod kept_fds;
mod landlock;
mod netns_pool;
mod netns_probe;
mod privileges;
mod process;
mod rootfs;
mod seccomp;
pub mod secrets;
mod template;
mod timeline;
mod watchdog;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use seccompiler::BpfProgram;
use serde::{Deserialize, Serialize};

pub use cgroup::{
    children as cgroup_children, limit_parent as limit_cgroup_parent,
    memory_usage as cgroup_memory_usage, remove_parent as remove_cgroup_parent,
    sweep as sweep_cgroups, ParentLimits,
};
pub use cgroup_pool::CgroupStats;
pub use child::{Step, SO_NETNS_COOKIE};
pub use container::{Container, Exit, ExitStatus};
pub use error::{Result, RuntimeError};
pub use landlock::{abi as landlock_abi, net_support, NetSupport, NET_ABI as LANDLOCK_NET_ABI};
pub use netns_pool::NetnsStats;
pub use privileges::limit_bounding_set;
pub use process::cloned_into_cgroup;
pub use rootfs::{Kind as MountPointKind, MOUNT_POINTS};
pub use secrets::SecretFiles;
pub use template::{ControlSocketOwner, MountTemplate};
pub use timeline::{Timeline, PHASES as SETUP_PHASES};

use child::{CStrArray, CapPlan, ChildPlan};
use kept_fds::{FdDonor, KeptFds};
use timeline::{Clock, Mark};

/// How long the child may take from clone to exec before it is killed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-container resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_bytes: u64,
    /// CPU quota in thousandths of a CPU (1000 = one full CPU).
    pub cpu_millis: u64,
    pub pids_max: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            memory_bytes: 512 << 20,
            cpu_millis: 1000,
            pids_max: 128,
        }
    }
}

/// What to run, and how.
pub struct ContainerSpec<'a> {
    /// Unique among live containers: names the cgroup.
    pub id: &'a str,
    pub rootfs: &'a Path,
    /// The native runtime's container root: the template built from `rootfs` (required
    /// there; the runc backend mounts `rootfs` itself).
    pub template: Option<&'a MountTemplate>,
    pub argv: &'a [String],
    pub env: &'a [String],
    pub workdir: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub hostname: &'a str,
    pub resources: Resources,
    /// Host path of a Unix socket to bind at /control.sock (runc backend; the native
    /// runtime's is in the template).
    pub control_socket: Option<&'a Path>,
    /// Mounted at /run/secrets, read-only, owned by `uid:gid` (none: nothing mounted).
    pub secrets: &'a SecretFiles,
    /// Where the container's stdout and stderr go (None: /dev/null).
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: Option<BorrowedFd<'a>>,
}

/// Prepared once, shared by every spawn.
pub struct Runtime {
    cgroup_parent: String,
    cgroup_pool: Option<cgroup_pool::CgroupPool>,
    netns_pool: Option<netns_pool::NetnsPool>,
    fresh_pool: Option<fresh_pool::FreshPool>,
    /// Denies TCP bind and connect to every container; None where the kernel lacks
    /// Landlock network rules (see [`net_support`]).
    landlock: Option<OwnedFd>,
    /// Children fetch their fds from it instead of copying our whole table (kept_fds.rs);
    /// None: they copy it.
    fd_donor: Option<FdDonor>,
    /// Every container's stdin (and stdout, stderr where the spec has none), opened once.
    dev_null: std::fs::File,
    setup_timeout: Duration,
}

static CAPS: OnceLock<CapPlan> = OnceLock::new();
static SECCOMP: OnceLock<BpfProgram> = OnceLock::new();

impl Runtime {
    /// `cgroup_parent` is the cgroup (relative to each hierarchy's root) that holds every
    /// container, e.g. "faasd".
    pub fn new(cgroup_parent: &str) -> Result<Self> {
        if SECCOMP.get().is_none() {
            let _ = SECCOMP.set(seccomp::filter()?);
        }
        CAPS.get_or_init(privileges::cap_plan);
        // Probes a fresh /proc once (rootfs.rs), here rather than in the first spawn.
        rootfs::container_mounts();
        keep_non_dumpable()?;
        let landlock = landlock::deny_tcp_ruleset().map_err(|source| RuntimeError::Sys {
            op: "landlock_create_ruleset",
            source,
        })?;
        Ok(Runtime {
            cgroup_parent: cgroup_parent.trim_matches('/').to_string(),
            cgroup_pool: None,
            netns_pool: None,
            fresh_pool: None,
            landlock,
            fd_donor: FdDonor::open(),
            dev_null: std::fs::File::open("/dev/null").map_err(|source| RuntimeError::Sys {
                op: "open /dev/null",
                source,
            })?,
            setup_timeout: SETUP_TIMEOUT,
        })
    }

    /// Children copy the daemon's fd table and close what they do not keep, instead of
    /// fetching only their fds (the default where the kernel allows; kept_fds.rs).
    pub fn copying_fd_table(mut self) -> Self {
        self.fd_donor = None;
        self
    }

    /// Whether children fetch their fds rather than copy the daemon's table.
    pub fn fetches_fds(&self) -> bool {
        self.fd_donor.as_ref().is_some_and(FdDonor::usable)
    }

    /// How long a container may take from clone to exec before it is killed (default 10 s).
    pub fn with_setup_timeout(mut self, timeout: Duration) -> Self {
        self.setup_timeout = timeout;
        self
    }

    /// Keeps `size` empty network namespaces ready, made in advance or returned empty by
    /// ended containers (see netns_pool.rs); 0 makes each container's namespace at clone
    /// time.
    pub fn with_netns_pool(mut self, size: usize) -> Result<Self> {
        self.netns_pool = match size {
            0 => None,
            n => Some(netns_pool::NetnsPool::start(n)?),
        };
        Ok(self)
    }

    /// Keeps `size` kits ready, made in advance for one container each: an IPC
    /// namespace and the /tmp, /dev/shm and /dev/pts mounts (see fresh_pool.rs); 0: each
    /// container makes its own.
    pub fn with_fresh_pool(mut self, size: usize) -> Result<Self> {
        self.fresh_pool = match size {
            0 => None,
            n => Some(fresh_pool::FreshPool::start(n)?),
        };
        Ok(self)
    }

    /// How many containers used a kit made in advance.
    pub fn fresh_kits_lent(&self) -> u64 {
        self.fresh_pool
            .as_ref()
            .map_or(0, fresh_pool::FreshPool::lent)
    }

    /// Keeps up to `size` ended containers' cgroups, drained, for the next containers,
    /// each for at most `idle_ttl` unused (see cgroup_pool.rs); 0 makes and removes one
    /// per container.
    pub fn with_cgroup_pool(mut self, size: usize, idle_ttl: Duration) -> Result<Self> {
        self.cgroup_pool = match size {
            0 => None,
            n => Some(cgroup_pool::CgroupPool::start(
                &self.cgroup_parent,
                n,
                idle_ttl,
            )?),
        };
        Ok(self)
    }

    /// How the pooled cgroups have fared (all zero without a pool).
    pub fn cgroup_stats(&self) -> CgroupStats {
        self.cgroup_pool
            .as_ref()
            .map(|p| p.stats())
            .unwrap_or_default()
    }

    /// Removes the pooled cgroups and keeps none from now on (at shutdown).
    pub fn close_cgroup_pool(&self) {
        if let Some(p) = &self.cgroup_pool {
            p.close();
        }
    }

    /// How the pooled network namespaces have fared (all zero without a pool).
    pub fn netns_stats(&self) -> NetnsStats {
        self.netns_pool
            .as_ref()
            .map(|p| p.stats())
            .unwrap_or_default()
    }

    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Creates and starts a container. Returns once its command has been exec'd, or with
    /// the error of the step that failed; on error nothing is left behind.
    pub fn spawn(&self, spec: &ContainerSpec<'_>) -> Result<Container> {
        match self.spawn_once(spec) {
            // The child could not fetch its fds and exited; the donor is now disabled,
            // and the same spawn succeeds by copying the table.
            Err(RuntimeError::FdFetchRefused(_)) => self.spawn_once(spec),
            other => other,
        }
    }

    fn spawn_once(&self, spec: &ContainerSpec<'_>) -> Result<Container> {
        let clock = Clock::default();
        clock.mark(Mark::Start);
        let argv0 = spec.argv.first().ok_or(RuntimeError::EmptyCommand)?;
        let template = spec.template.ok_or(RuntimeError::NoTemplate)?;
        if !spec.workdir.starts_with('/') {
            return Err(RuntimeError::RelativeWorkdir(spec.workdir.to_string()));
        }
        let resolved = template.resolve(spec.rootfs, spec.workdir, argv0, spec.env)?;
        let secrets = match spec.secrets.is_empty() {
            true => None,
            false => Some(spec.secrets.mount_at(
                Path::new(secrets::SECRETS_DIR),
                spec.uid,
                spec.gid,
            )?),
        };
        let argv = to_cstrings("argument", spec.argv)?;
        let env = to_cstrings("environment variable", spec.env)?;
        clock.mark(Mark::Checked);
        let cgroup = match &self.cgroup_pool {
            Some(pool) => pool.take(spec.id, &spec.resources)?,
            None => {
                cgroup_pool::LentCgroup::unpooled(&self.cgroup_parent, spec.id, &spec.resources)?
            }
        };
        clock.mark(Mark::CgroupCreated);
        let (pipe_r, pipe_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RuntimeError::sys("pipe2"))?;
        // A pooled namespace's cookie is known; the child reads that of a new one.
        let netns_cookie = AtomicU64::new(0);
        let fetch_refused = AtomicI32::new(0);
        let netns = self.netns_pool.as_ref().and_then(|p| p.take());
        let kit = self.fresh_pool.as_ref().and_then(|p| p.take());
        if let Some(ns) = &netns {
            netns_cookie.store(ns.cookie(), Ordering::Relaxed);
        }
        let join_fds: Vec<BorrowedFd> = cgroup.join_files().iter().map(|f| f.as_fd()).collect();
        let dev_null = self.dev_null.as_fd();
        let stdio = [
            dev_null,
            spec.stdout.unwrap_or(dev_null),
            spec.stderr.unwrap_or(dev_null),
        ];
        let fds = KeptFds::new(
            stdio,
            pipe_w.as_fd(),
            template.namespace(),
            self.landlock.as_ref().map(|fd| fd.as_fd()),
            netns.as_ref().map(|ns| ns.fd()),
            kit.as_ref().map(|k| (k.ipc.as_fd(), k.mount_fds())),
            &join_fds,
        )?;
        let caps = CAPS.get().expect("initialised in Runtime::new");
        let mounts = rootfs::container_mounts();
        let plan = ChildPlan {
            fds: match self.fd_donor.as_ref().filter(|d| d.usable()) {
                Some(donor) => fds.fetched_from(donor, &fetch_refused),
                None => fds,
            },
            mounts: mounts.ops(),
            // A kit's mounts replace the container's own.
            skip_mounts: mounts.absent_now() | if kit.is_some() { mounts.kit_skip() } else { 0 },
            kit_ops: mounts.kit_ops(),
            secrets: secrets.as_ref(),
            hostname: rootfs::cstring("hostname", spec.hostname)?,
            workdir: &resolved.workdir_in_container,
            uid: spec.uid,
            gid: spec.gid,
            caps,
            bounding_drop: privileges::still_bounded(caps.bounding_drop),
            seccomp: SECCOMP.get().expect("initialised in Runtime::new"),
            exe: &resolved.exe,
            argv: CStrArray::new(&argv),
            envp: CStrArray::new(&env),
            clock: &clock,
            netns_cookie: &netns_cookie,
        };
        clock.mark(Mark::Prepared);

        let spawned = process::clone_child(&plan, self.setup_timeout, cgroup.clone_target())
            .map_err(|source| RuntimeError::Sys {
                op: "clone",
                source,
            });
        // The child has exec'd or exited (CLONE_VFORK): the plan and the fds it borrowed
        // are ours again, and ours must close so the pipe reports EOF at exec.
        drop(pipe_w);
        drop(join_fds);
        // On error no process ever joined the namespace; dropping it only costs a fresh
        // one. The cgroup is drained and removed as it drops.
        let spawned = spawned?;
        let killed_in_setup = spawned.killed_in_setup;
        let netns_cookie = netns_cookie.load(Ordering::Relaxed);
        let mut container = Container::new(spawned.pid, spawned.pidfd, cgroup, netns_cookie, netns);
        // On any error below, dropping `container` kills, reaps and removes its cgroup.
        let refused = fetch_refused.load(Ordering::Relaxed);
        if refused != 0 {
            if let Some(donor) = &self.fd_donor {
                donor.refused(refused);
            }
            return Err(RuntimeError::FdFetchRefused(io::Error::from_raw_os_error(
                refused,
            )));
        }
        if killed_in_setup {
            return Err(RuntimeError::SetupTimeout {
                after: self.setup_timeout,
                stuck_in: clock.current_phase(),
            });
        }
        match process::await_setup(&pipe_r, self.setup_timeout) {
            Ok(Some(process::SetupResult::Exec)) => {
                clock.mark(Mark::ExecSeen);
                container.hold_mount_namespace();
                container.set_timeline(clock.timeline());
                Ok(container)
            }
            Ok(Some(process::SetupResult::Failed {
                step,
                detail,
                errno,
            })) => Err(child_error(
                &resolved.exe.to_string_lossy(),
                step,
                detail,
                errno,
            )),
            Ok(None) => Err(RuntimeError::SetupTimeout {
                after: self.setup_timeout,
                stuck_in: clock.current_phase(),
            }),
            Err(source) => Err(RuntimeError::Sys {
                op: "read the error pipe",
                source,
            }),
        }
    }
}

/// Makes this process non-dumpable: no core dumps, /proc/<pid> files root-only, no
/// ptrace by anything but CAP_SYS_PTRACE. A container's first process shares our memory
/// until its exec, and the flag belongs to the memory: its setuid alone would clear it
/// (commit_creds), so it is set once, for good, instead of flipping with every
/// non-root container. It also keeps each child's pre-exec window closed to ptrace and
/// /proc, as runc does for its init.
fn keep_non_dumpable() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        return Err(RuntimeError::Sys {
            op: "prctl(PR_SET_DUMPABLE)",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn child_error(exe: &str, step: Step, detail: u32, errno: i32) -> RuntimeError {
    let source = io::Error::from_raw_os_error(errno);
    let detail = match step {
        Step::Mount => rootfs::container_mounts()
            .ops()
            .get(detail as usize)
            .map(rootfs::describe)
            .unwrap_or_default(),
        Step::MountSecrets => secrets::MountStep::from_u32(detail)
            .map(|s| format!("({s})"))
            .unwrap_or_default(),
        Step::Exec if errno == libc::ENOENT => {
            return RuntimeError::CommandNotFound(format!(
                "{exe} (or its interpreter or libraries)"
            ))
        }
        Step::Exec => exe.to_string(),
        _ => String::new(),
    };
    RuntimeError::Child {
        step,
        detail,
        source,
    }
}

fn to_cstrings(what: &'static str, items: &[String]) -> Result<Vec<CString>> {
    items.iter().map(|s| rootfs::cstring(what, s)).collect()
}
