//! One cgroup per container under a parent cgroup of ours, on cgroup v1 or v2.
//!
//! cgroups-rs creates the directories and writes the limits; we verify the limits took
//! (it ignores subtree_control write errors on v2) and do what it leaves to callers:
//! killing every member and waiting until the cgroup is empty before removing it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use cgroups_rs::fs::{hierarchies, Cgroup, Controller, Hierarchy, MaxValue};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::error::{Result, RuntimeError};
use super::Resources;

/// The controllers we limit; others (cpuset above all, which needs cpus/mems filled in on
/// v1 before a task may join) are left alone.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const CFS_PERIOD_US: u64 = 100_000;
/// How long removal waits for the kernel to finish killing the members.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The cgroup hierarchies of this machine, found once: `hierarchies::auto()` parses
/// /proc/self/mountinfo on every call (~25 µs, on each container's start).
fn hierarchy() -> Box<dyn Hierarchy> {
    enum Found {
        V1(hierarchies::V1),
        V2(hierarchies::V2),
    }
    static FOUND: OnceLock<Found> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        if hierarchies::is_cgroup2_unified_mode() {
            Found::V2(hierarchies::V2::new())
        } else {
            Found::V1(hierarchies::V1::new())
        }
    });
    match found {
        Found::V1(h) => Box::new(h.clone()),
        Found::V2(h) => Box::new(h.clone()),
    }
}

pub struct ContainerCgroup {
    cgroup: Cgroup,
    /// The files read after each container, opened at the first read: a pooled cgroup
    /// serves many containers, and reading by fd spares a kernfs path walk per file.
    status: OnceLock<StatusFiles>,
}

/// Open status files of one cgroup, re-read from offset 0 each time (kernfs regenerates
/// their text at each read from the start).
struct StatusFiles {
    /// cgroup.procs of each hierarchy's directory (empty if one could not be opened).
    procs: Vec<fs::File>,
    /// memory.events (v2) or memory.oom_control (v1).
    oom: Option<fs::File>,
    /// memory.current (v2) or memory.usage_in_bytes (v1).
    memory: Option<fs::File>,
}

impl StatusFiles {
    fn open(cg: &ContainerCgroup) -> Self {
        let (oom, memory) = if cg.cgroup.v2() {
            ("memory.events", "memory.current")
        } else {
            ("memory.oom_control", "memory.usage_in_bytes")
        };
        let mut dirs: Vec<PathBuf> = cg.member_dirs().collect();
        dirs.dedup();
        let open_in_any = |name: &str| dirs.iter().find_map(|d| fs::File::open(d.join(name)).ok());
        StatusFiles {
            // All or none: a hierarchy left unread could hide a process.
            procs: dirs
                .iter()
                .map(|d| fs::File::open(d.join("cgroup.procs")).ok())
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default(),
            oom: open_in_any(oom),
            memory: open_in_any(memory),
        }
    }
}

/// The whole text of a status file, read from its start. The files read here (OOM
/// counts, memory usage, an empty or short process list) are far smaller than the buffer,
/// and a seq_file read returns such a text whole: a read that does not fill the buffer
/// ends it (one read, not two; a longer process list is non-empty either way).
fn read_from_start(file: &fs::File) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read_at(&mut buf, text.len() as u64)?;
        text.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return String::from_utf8(text).map_err(io::Error::other);
        }
    }
}

impl ContainerCgroup {
    /// Creates `<parent>/<id>` in every hierarchy of our controllers and applies `res`.
    pub fn create(parent: &str, id: &str, res: &Resources) -> Result<Self> {
        let path = format!("{parent}/{id}");
        let controllers = CONTROLLERS.iter().map(|c| c.to_string()).collect();
        let cgroup = Cgroup::new_with_specified_controllers(hierarchy(), &path, Some(controllers))
            .map_err(|e| setup_error(&path, "create", e))?;
        let this = ContainerCgroup {
            cgroup,
            status: OnceLock::new(),
        };
        if let Err(e) = this.apply(res) {
            let _ = this.cgroup.delete();
            return Err(e);
        }
        Ok(this)
    }

    /// Writes `res` and reads the limits back (also to re-limit a pooled cgroup).
    pub fn apply(&self, res: &Resources) -> Result<()> {
        let path = self.cgroup.path();
        let mem: &MemController = self.controller(path, "memory")?;
        // Without a swap limit a memory hog pages out instead of being killed (v1 only;
        // absent when the kernel runs without swap accounting). v1 keeps the memory limit
        // at most the memory+swap one: raising a pooled cgroup's limits takes memsw first,
        // lowering them takes it last, so it is written on both sides.
        let v1 = !self.cgroup.v2();
        if v1 {
            let _ = mem.set_memswap_limit(res.memory_bytes as i64);
        }
        mem.set_limit(res.memory_bytes as i64)
            .map_err(|e| setup_error(path, "set memory limit", e))?;
        if v1 {
            let _ = mem.set_memswap_limit(res.memory_bytes as i64);
        }
        let cpu: &CpuController = self.controller(path, "cpu")?;
        let quota = (res.cpu_millis * CFS_PERIOD_US / 1000) as i64;
        cpu.set_cfs_quota_and_period(Some(quota), Some(CFS_PERIOD_US))
            .map_err(|e| setup_error(path, "set cpu quota", e))?;
        let pids: &PidController = self.controller(path, "pids")?;
        pids.set_pid_max(MaxValue::Value(res.pids_max as i64))
            .map_err(|e| setup_error(path, "set pids limit", e))?;
        self.verify_limits(res)
    }

    fn controller<'a, T>(&'a self, path: &str, name: &'static str) -> Result<&'a T>
    where
        &'a T: From<&'a cgroups_rs::fs::Subsystem>,
        T: Controller + cgroups_rs::fs::ControllIdentifier,
    {
        self.cgroup
            .controller_of::<T>()
            .ok_or_else(|| RuntimeError::CgroupSetup {
                path: path.to_string(),
                op: "find controller",
                message: format!("the {name} controller is not available"),
            })
    }

    /// Reads the limits back from the kernel: a controller that is not enabled in the
    /// parent's subtree_control silently has no files, and we refuse to run unlimited.
    fn verify_limits(&self, res: &Resources) -> Result<()> {
        self.verify(&[
            (self.memory_limit_file(), res.memory_bytes),
            ("pids.max", res.pids_max as u64),
        ])
    }

    fn memory_limit_file(&self) -> &'static str {
        if self.cgroup.v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        }
    }

    fn verify(&self, limits: &[(&str, u64)]) -> Result<()> {
        for &(file, want) in limits {
            let got = self.read_file(file)?;
            if got.trim().parse::<u64>().ok() != Some(want) {
                return Err(RuntimeError::CgroupSetup {
                    path: self.cgroup.path().to_string(),
                    op: "verify limits",
                    message: format!("{file} is {:?}, wanted {want}", got.trim()),
                });
            }
        }
        Ok(())
    }

    fn read_file(&self, name: &str) -> Result<String> {
        let path = self.member_dirs().find_map(|d| {
            let p = d.join(name);
            p.exists().then_some(p)
        });
        let path = path.ok_or_else(|| RuntimeError::CgroupSetup {
            path: self.cgroup.path().to_string(),
            op: "read",
            message: format!("{name} does not exist"),
        })?;
        fs::read_to_string(&path).map_err(|source| RuntimeError::Cgroup {
            path: path.display().to_string(),
            op: "read",
            source,
        })
    }

    /// The cgroup's directory in each hierarchy (one on v2, one per controller on v1).
    fn member_dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.cgroup
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().to_path_buf())
    }

    /// Opens, in every hierarchy, the file the child writes "0" into to move itself: the
    /// child joins before it execs, with no round trip to us.
    ///
    /// On v1 that is `tasks`, which moves the writing thread only; the child is
    /// single-threaded, so that is the whole process. Moving `current` alone lets the
    /// kernel skip the global cgroup_threadgroup_rwsem that a `cgroup.procs` write takes
    /// for writing, whose RCU grace period made this step's p99 ~10 ms. v2 forbids moving
    /// single threads between domain cgroups, so there it stays `cgroup.procs`.
    pub fn join_files(&self) -> Result<Vec<OwnedFd>> {
        let file = if self.cgroup.v2() {
            "cgroup.procs"
        } else {
            "tasks"
        };
        let mut dirs: Vec<PathBuf> = self.member_dirs().collect();
        dirs.dedup();
        dirs.iter()
            .map(|d| {
                let p = d.join(file);
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&p)
                    .map(OwnedFd::from)
                    .map_err(|source| RuntimeError::Cgroup {
                        path: p.display().to_string(),
                        op: "open for joining",
                        source,
                    })
            })
            .collect()
    }

    fn status(&self) -> &StatusFiles {
        self.status.get_or_init(|| StatusFiles::open(self))
    }

    /// On cgroup v2, the cgroup's directory, for a clone straight into it (clone3.rs);
    /// None on v1, where each controller has its own directory.
    pub fn clone_target(&self) -> Result<Option<OwnedFd>> {
        if !self.cgroup.v2() {
            return Ok(None);
        }
        let Some(dir) = self.member_dirs().next() else {
            return Ok(None);
        };
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&dir)
            .map(|f| Some(OwnedFd::from(f)))
            .map_err(|source| RuntimeError::Cgroup {
                path: dir.display().to_string(),
                op: "open for cloning into",
                source,
            })
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup so far (the
    /// `oom_kill` count never goes down: a reused cgroup compares it with its count at
    /// lending). 0 when the file cannot be read.
    pub fn oom_kills(&self) -> u64 {
        self.status()
            .oom
            .as_ref()
            .and_then(|f| read_from_start(f).ok())
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The memory charged to the cgroup now, in bytes.
    pub fn memory_usage(&self) -> Result<u64> {
        let path = self.cgroup.path();
        let file = self
            .status()
            .memory
            .as_ref()
            .ok_or_else(|| RuntimeError::CgroupSetup {
                path: path.to_string(),
                op: "read",
                message: "it has no memory usage file".into(),
            })?;
        let text = read_from_start(file).map_err(|source| RuntimeError::Cgroup {
            path: path.to_string(),
            op: "read memory usage",
            source,
        })?;
        text.trim().parse().map_err(|_| RuntimeError::CgroupSetup {
            path: path.to_string(),
            op: "read",
            message: format!("memory usage is {:?}, not a number", text.trim()),
        })
    }

    /// SIGKILLs every process in the cgroup (all hierarchies on v1) and waits until the
    /// kernel has emptied it; the cgroup stays, empty, for reuse.
    pub fn drain(&self) -> Result<()> {
        // The usual case, read by fd: the container's processes all went with its pid
        // namespace's first process, which has been reaped.
        let procs = &self.status().procs;
        let listed_empty = |f: &fs::File| read_from_start(f).is_ok_and(|t| t.trim().is_empty());
        if !procs.is_empty() && procs.iter().all(listed_empty) {
            return Ok(());
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        self.member_dirs()
            .try_for_each(|dir| drain_dir(&dir, deadline))
    }

    /// SIGKILLs every process in the cgroup (all hierarchies on v1), then waits until the
    /// kernel has emptied it and removes it.
    pub fn destroy(self) -> Result<()> {
        destroy_dirs(&self.member_dirs().collect::<Vec<_>>())
    }
}

fn setup_error(path: &str, op: &'static str, e: cgroups_rs::fs::error::Error) -> RuntimeError {
    RuntimeError::CgroupSetup {
        path: path.to_string(),
        op,
        message: e.to_string(),
    }
}

fn procs_of(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills the members of `dirs` and removes them, children first.
fn destroy_dirs(dirs: &[PathBuf]) -> Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for dir in dirs {
        if !dir.exists() {
            continue;
        }
        drain_dir(dir, deadline)?;
        remove_dir_retrying(dir, deadline)?;
    }
    Ok(())
}

/// SIGKILLs the members of one cgroup directory until it is empty, or fails at `deadline`.
fn drain_dir(dir: &Path, deadline: Instant) -> Result<()> {
    let mut killed = false;
    loop {
        let procs = procs_of(dir);
        if procs.is_empty() {
            return Ok(());
        }
        if !killed {
            // v2 (5.14+) kills atomically, forks in flight included; elsewhere repeat
            // until empty.
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            killed = true;
        }
        for pid in procs {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if Instant::now() > deadline {
            return Err(RuntimeError::CgroupSetup {
                path: dir.display().to_string(),
                op: "drain",
                message: "processes remain after SIGKILL".into(),
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// rmdir fails with EBUSY while an exited member is still being torn down by the kernel.
fn remove_dir_retrying(dir: &Path, deadline: Instant) -> Result<()> {
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(source) => {
                return Err(RuntimeError::Cgroup {
                    path: dir.display().to_string(),
                    op: "remove",
                    source,
                })
            }
        }
    }
}

/// Limits of all containers together, set on their parent cgroup: the kernel charges every
/// container's memory and processes to it as well (hierarchically, on v1 and v2), so many
/// containers each within its own limit still cannot take the whole machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentLimits {
    pub memory_bytes: u64,
    pub pids_max: u64,
}

/// Creates the parent cgroup (if needed) with `limits`, and reads them back.
pub fn limit_parent(parent: &str, limits: &ParentLimits) -> Result<()> {
    let controllers = CONTROLLERS.iter().map(|c| c.to_string()).collect();
    let cgroup = Cgroup::new_with_specified_controllers(hierarchy(), parent, Some(controllers))
        .map_err(|e| setup_error(parent, "create", e))?;
    let wrap = ContainerCgroup {
        cgroup,
        status: OnceLock::new(),
    };
    let mem: &MemController = wrap.controller(parent, "memory")?;
    mem.set_limit(limits.memory_bytes as i64)
        .map_err(|e| setup_error(parent, "set total memory limit", e))?;
    let pids: &PidController = wrap.controller(parent, "pids")?;
    pids.set_pid_max(MaxValue::Value(limits.pids_max as i64))
        .map_err(|e| setup_error(parent, "set total pids limit", e))?;
    wrap.verify(&[
        (wrap.memory_limit_file(), limits.memory_bytes),
        ("pids.max", limits.pids_max),
    ])
}

/// Directories of the parent cgroup in every hierarchy of our controllers.
fn parent_dirs(parent: &str) -> Vec<PathBuf> {
    let probe = Cgroup::load_with_specified_controllers(
        hierarchy(),
        parent,
        CONTROLLERS.iter().map(|c| c.to_string()).collect(),
    );
    let mut dirs: Vec<PathBuf> = probe
        .subsystems()
        .iter()
        .map(|s| s.to_controller().path().to_path_buf())
        .collect();
    dirs.dedup();
    dirs
}

/// Kills and removes every container cgroup left under `parent` (after a crash), returning
/// how many containers had one (in any hierarchy). The parent itself stays.
pub fn sweep(parent: &str) -> Result<usize> {
    let mut removed = std::collections::BTreeSet::new();
    for dir in parent_dirs(parent) {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let children: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        removed.extend(
            children
                .iter()
                .filter_map(|c| c.file_name().map(|n| n.to_owned())),
        );
        destroy_dirs(&children)?;
    }
    Ok(removed.len())
}

/// Removes `parent` itself from every hierarchy, once the containers under it are gone
/// (a clean stop): the next start makes it again with its limits.
pub fn remove_parent(parent: &str) -> io::Result<()> {
    for dir in parent_dirs(parent) {
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("removing {}: {e}", dir.display()),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The memory charged to container `id` under `parent` now, in bytes: `memory.current`
/// (v2) or `memory.usage_in_bytes` (v1), read from the memory hierarchy.
pub fn memory_usage(parent: &str, id: &str) -> io::Result<u64> {
    for dir in parent_dirs(parent) {
        for file in ["memory.current", "memory.usage_in_bytes"] {
            match fs::read_to_string(dir.join(id).join(file)) {
                Ok(s) => return s.trim().parse().map_err(io::Error::other),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no memory controller file for cgroup {parent}/{id}"),
    ))
}

/// Names of the container cgroups currently under `parent` (any hierarchy).
pub fn children(parent: &str) -> Vec<String> {
    let mut names: Vec<String> = parent_dirs(parent)
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.dedup();
    names
}
