//! The native runtime's cgroup pool: an ended container's cgroup is drained and lent to
//! the next container, re-limited to that container's limits, with its OOM count read
//! against its count at lending; surplus and idle ones are removed, and none outlives
//! the runtime.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use faasd::runtime::{cgroup_children, CgroupStats, Resources, Runtime};
use libtest_mimic::Trial;

use crate::support::{self, ensure, sh_on, unique, Opts, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test(
            "cgroup_pool::a_reused_cgroup_gets_the_next_containers_limits",
            a_reused_cgroup_gets_the_next_containers_limits,
        ),
        Trial::test(
            "cgroup_pool::surplus_and_idle_cgroups_are_removed",
            surplus_and_idle_cgroups_are_removed,
        ),
    ]
}

/// A runtime of its own with a cgroup pool, under a parent of its own, removed at the end.
struct Pooled {
    rt: Option<Runtime>,
    parent: String,
}

impl Pooled {
    fn new(size: usize, idle_ttl: Duration) -> Result<Self, libtest_mimic::Failed> {
        let parent = unique("faasd-test-cgpool");
        let rt = Runtime::new(&parent)?.with_cgroup_pool(size, idle_ttl)?;
        Ok(Pooled {
            rt: Some(rt),
            parent,
        })
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().unwrap()
    }

    fn dirs(&self) -> Vec<String> {
        cgroup_children(&self.parent)
    }

    /// Waits (briefly: teardown runs right after the wait here, no tokio) until `idle`
    /// cgroups wait in the pool.
    fn idle(&self, idle: u64) -> Result<CgroupStats, libtest_mimic::Failed> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = self.rt().cgroup_stats();
            if stats.idle == idle {
                return Ok(stats);
            }
            if Instant::now() > deadline {
                return Err(
                    format!("{stats:?}, wanted {idle} idle; dirs {:?}", self.dirs()).into(),
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A limit file of cgroup `name` in whichever hierarchy has it (v2, or v1's memory or
    /// pids controller), read from the host's cgroupfs.
    fn limit(&self, name: &str, files: &[&str]) -> Option<u64> {
        let roots = ["", "memory", "pids"].map(|h| PathBuf::from("/sys/fs/cgroup").join(h));
        roots.iter().find_map(|root| {
            files.iter().find_map(|f| {
                let text = std::fs::read_to_string(root.join(&self.parent).join(name).join(f));
                text.ok()?.trim().parse().ok()
            })
        })
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        drop(self.rt.take());
        support::remove_cgroup_parent(&self.parent);
    }
}

fn limits(memory_mb: u64, pids_max: u32) -> Resources {
    Resources {
        memory_bytes: memory_mb << 20,
        pids_max,
        ..Resources::default()
    }
}

fn a_reused_cgroup_gets_the_next_containers_limits() -> TestResult {
    let p = Pooled::new(4, Duration::from_secs(60))?;
    let first = unique("first");
    let cloned_before = faasd::runtime::cloned_into_cgroup();
    // A background process outlives the shell by a second unless the pid namespace's end
    // takes it: the cgroup must come back empty all the same.
    let run = sh_on(
        p.rt(),
        "sleep 1 & echo started",
        Opts {
            id: Some(&first),
            resources: limits(64, 32),
            ..Opts::default()
        },
    )?;
    ensure(
        run.status.success() && run.output.contains("started"),
        format!("first container: {:?} {}", run.status, run.output),
    )?;
    // On v2 (5.7+) the child is cloned straight into its cgroup, not moved there.
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    ensure(
        !v2 || faasd::runtime::cloned_into_cgroup() > cloned_before,
        "cgroup v2, but the container was not cloned into its cgroup (clone3 \
         CLONE_INTO_CGROUP refused or not tried)",
    )?;
    let stats = p.idle(1)?;
    ensure(
        stats.made == 1 && stats.reused == 0 && p.dirs() == [first.clone()],
        format!("after the first: {stats:?}, dirs {:?}", p.dirs()),
    )?;

    // The next container has a lower memory limit and exceeds it: killed by the OOM
    // killer in the first one's cgroup, which was re-limited for it.
    let hog = sh_on(
        p.rt(),
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
        Opts {
            id: Some(&unique("hog")),
            resources: limits(32, 20),
            ..Opts::default()
        },
    )?;
    let stats = p.idle(1)?;
    ensure(
        stats.reused == 1 && stats.made == 1 && p.dirs() == [first.clone()],
        format!(
            "the hog did not reuse the cgroup: {stats:?}, dirs {:?}",
            p.dirs()
        ),
    )?;
    ensure(
        hog.status.oom_killed && !hog.output.contains("survived"),
        format!(
            "the hog in a reused cgroup: {:?} {}",
            hog.status, hog.output
        ),
    )?;
    ensure(
        p.limit(&first, &["memory.max", "memory.limit_in_bytes"]) == Some(32 << 20)
            && p.limit(&first, &["pids.max"]) == Some(20),
        format!(
            "limits after the hog: memory {:?}, pids {:?}",
            p.limit(&first, &["memory.max", "memory.limit_in_bytes"]),
            p.limit(&first, &["pids.max"])
        ),
    )?;

    // The OOM kill stays in the cgroup's count: the next container is not blamed for it.
    let after = sh_on(
        p.rt(),
        "echo fine",
        Opts {
            id: Some(&unique("after")),
            resources: limits(64, 32),
            ..Opts::default()
        },
    )?;
    let stats = p.idle(1)?;
    ensure(
        after.status.success() && !after.status.oom_killed && after.output.contains("fine"),
        format!("after the hog: {:?} {}", after.status, after.output),
    )?;
    ensure(
        stats.reused == 2 && stats.dropped == 0,
        format!("after three containers: {stats:?}"),
    )?;
    ensure(
        p.limit(&first, &["memory.max", "memory.limit_in_bytes"]) == Some(64 << 20),
        "the limit was not raised again for the third container",
    )
}

fn surplus_and_idle_cgroups_are_removed() -> TestResult {
    const IDLE_TTL: Duration = Duration::from_secs(1);
    let mut p = Pooled::new(2, IDLE_TTL)?;
    // Three at once: each needs a cgroup of its own.
    thread::scope(|scope| -> TestResult {
        let runs: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| sh_on(p.rt(), "sleep 0.5", Opts::default())))
            .collect();
        for r in runs {
            let run = r.join().unwrap()?;
            ensure(
                run.status.success(),
                format!("{:?} {}", run.status, run.output),
            )?;
        }
        Ok(())
    })?;
    // At most two wait; the third was removed.
    let stats = p.idle(2)?;
    ensure(
        stats.made == 3 && p.dirs().len() == 2,
        format!(
            "three ended with room for two: {stats:?}, dirs {:?}",
            p.dirs()
        ),
    )?;
    // Unused for the idle time: removed.
    let since = Instant::now();
    p.idle(0)?;
    ensure(
        p.dirs().is_empty() && since.elapsed() <= IDLE_TTL + Duration::from_secs(2),
        format!(
            "{:?} after: dirs {:?} (idle ttl {IDLE_TTL:?})",
            since.elapsed(),
            p.dirs()
        ),
    )?;
    // And none outlives the runtime.
    sh_on(p.rt(), "true", Opts::default())?;
    p.idle(1)?;
    drop(p.rt.take());
    ensure(
        p.dirs().is_empty(),
        format!("after the runtime: {:?}", p.dirs()),
    )
}
