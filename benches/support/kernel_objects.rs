//! What a daemon holds of the kernel, counted from /proc and /sys/fs/cgroup: its fds,
//! the mounts of its mount namespace, the cgroups under its parent, the network
//! namespaces it keeps alive, the processes below it, its RSS and threads. The soak bench
//! compares these before and after a long run.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub fds: u64,
    pub mounts: u64,
    pub cgroups: u64,
    /// Network namespaces the daemon keeps alive: held open as fds, bind-mounted in its
    /// mount namespace, or the namespace of a process below it.
    pub netns_daemon: u64,
    /// Every network namespace on the machine that a process, an open fd or a bind
    /// mount holds (other users of the machine move this one too).
    pub netns_system: u64,
    /// Processes below the daemon (running or waiting containers).
    pub descendants: u64,
    pub rss_kib: u64,
    pub threads: u64,
}

impl Counts {
    /// Each count with what it is, in the order the soak prints them.
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        [
            ("daemon fds", self.fds),
            ("mounts in the daemon's mount namespace", self.mounts),
            ("cgroups under the faasd parent", self.cgroups),
            ("network namespaces held by the daemon", self.netns_daemon),
            ("network namespaces on the machine", self.netns_system),
            ("processes below the daemon", self.descendants),
            ("daemon RSS (KiB)", self.rss_kib),
            ("daemon threads", self.threads),
        ]
    }
}

pub fn count(pid: i32, cgroup_parent: &str) -> Counts {
    let procs = processes();
    let below = descendants(pid, &procs);
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mut held: HashSet<u64> = netns_of_fds(pid);
    held.extend(netns_mounts(&mountinfo));
    held.extend(below.iter().filter_map(|p| netns_of(*p)));
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    Counts {
        fds: entries(&format!("/proc/{pid}/fd")),
        mounts: mountinfo.lines().count() as u64,
        cgroups: cgroups_under(cgroup_parent),
        netns_daemon: held.len() as u64,
        netns_system: netns_system(&procs),
        descendants: below.len() as u64,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    }
}

fn entries(dir: &str) -> u64 {
    fs::read_dir(dir).map_or(0, |d| d.count() as u64)
}

/// pid -> parent pid of every process.
fn processes() -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok());
        if let Some(ppid) = ppid {
            out.insert(pid, ppid);
        }
    }
    out
}

pub fn descendants(pid: i32, procs: &HashMap<i32, i32>) -> Vec<i32> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, _) in procs.iter().filter(|(_, pp)| **pp == p) {
            out.push(*child);
            frontier.push(*child);
        }
    }
    out
}

/// The processes below `pid` now.
pub fn descendants_of(pid: i32) -> Vec<i32> {
    descendants(pid, &processes())
}

/// The inode of a "net:[N]" link.
fn net_inode(link: &Path) -> Option<u64> {
    let target = fs::read_link(link).ok()?;
    target
        .to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn netns_of(pid: i32) -> Option<u64> {
    net_inode(Path::new(&format!("/proc/{pid}/ns/net")))
}

fn netns_of_fds(pid: i32) -> HashSet<u64> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| net_inode(&e.path()))
        .collect()
}

/// Network namespaces bind-mounted in a mount namespace: nsfs mounts whose root is
/// "net:[N]" (mountinfo field 4).
fn netns_mounts(mountinfo: &str) -> Vec<u64> {
    mountinfo
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("nsfs "))
        })
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

fn netns_system(procs: &HashMap<i32, i32>) -> u64 {
    let mut seen = HashSet::new();
    let mut mount_namespaces = HashSet::new();
    for pid in procs.keys() {
        seen.extend(netns_of(*pid));
        seen.extend(netns_of_fds(*pid));
        let mnt = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if mnt.is_some_and(|m| mount_namespaces.insert(m)) {
            let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            seen.extend(netns_mounts(&info));
        }
    }
    seen.len() as u64
}

/// The cgroup directories below `parent` (not itself), in every hierarchy: on v2
/// /sys/fs/cgroup/<parent>, on v1 /sys/fs/cgroup/<controller>/<parent>.
pub fn cgroups_under(parent: &str) -> u64 {
    cgroup_dirs(parent).iter().map(|d| subdirs(d)).sum()
}

/// Where `parent` is in each hierarchy of this machine.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut out = vec![root.join(parent)];
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        out.push(e.path().join(parent));
    }
    out.retain(|d| d.is_dir());
    out
}

/// Removes the daemon's (empty) parent cgroup in every hierarchy: faasd leaves it at
/// stop, and a bench leaves nothing behind.
pub fn remove_cgroup_parent(parent: &str) {
    for dir in cgroup_dirs(parent) {
        let _ = fs::remove_dir(dir);
    }
}

fn subdirs(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| 1 + subdirs(&e.path()))
        .sum()
}
