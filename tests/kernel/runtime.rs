//! The container runtime, checked the way a user would check a container.

use std::fs;
use std::time::{Duration, Instant};

use faasd::runtime::{Exit, MountTemplate, Resources, Runtime, RuntimeError};
use libtest_mimic::Trial;

use crate::support::{self, cgroup_exists, ensure, sh, sh_with, unique, Opts, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test(
            "runtime::pid_1_in_fresh_namespaces",
            pid_1_in_fresh_namespaces,
        ),
        Trial::test(
            "runtime::root_read_only_tmp_writable",
            root_read_only_tmp_writable,
        ),
        Trial::test(
            "runtime::proc_masked_and_read_only",
            proc_masked_and_read_only,
        ),
        Trial::test("runtime::privileges_reduced", privileges_reduced),
        Trial::test(
            "runtime::dangerous_syscalls_denied",
            dangerous_syscalls_denied,
        ),
        Trial::test("runtime::only_stdio_fds", only_stdio_fds),
        Trial::test(
            "runtime::fds_fetched_copied_or_refused_leave_only_stdio",
            fds_fetched_copied_or_refused,
        ),
        Trial::test("runtime::dev_and_hostname", dev_and_hostname),
        Trial::test(
            "runtime::non_root_user_has_no_caps",
            non_root_user_has_no_caps,
        ),
        Trial::test(
            "runtime::pids_limit_stops_fork_bomb",
            pids_limit_stops_fork_bomb,
        ),
        Trial::test("runtime::memory_hog_is_killed", memory_hog_is_killed),
        Trial::test(
            "runtime::missing_command_is_an_error",
            missing_command_is_an_error,
        ),
        Trial::test(
            "runtime::missing_workdir_is_an_error",
            missing_workdir_is_an_error,
        ),
        Trial::test(
            "runtime::resolutions_follow_path_and_new_directories",
            resolutions_follow_path_and_new_directories,
        ),
        Trial::test(
            "runtime::timeout_kills_every_process",
            timeout_kills_every_process,
        ),
        Trial::test(
            "runtime::symlinked_mount_point_refused",
            symlinked_mount_point_refused,
        ),
        Trial::test("runtime::exit_code_reported", exit_code_reported),
        Trial::test(
            "runtime::mount_namespace_released_after_the_end",
            mount_namespace_released,
        ),
        Trial::test(
            "runtime::every_container_gets_its_own_empty_netns",
            own_empty_netns,
        ),
        Trial::test(
            "runtime::every_container_gets_a_fresh_ipc_namespace_and_mounts",
            fresh_ipc_namespaces_and_mounts,
        ),
    ]
}

fn pid_1_in_fresh_namespaces() -> TestResult {
    let run =
        sh("echo pid=$$; for n in pid mnt net ipc uts cgroup; do readlink /proc/self/ns/$n; done")?;
    ensure(
        run.status.success(),
        format!("status {:?}: {}", run.status, run.output),
    )?;
    ensure(
        run.output.contains("pid=1\n"),
        format!("not pid 1: {}", run.output),
    )?;
    for ns in ["pid", "mnt", "net", "ipc", "uts", "cgroup"] {
        let host = fs::read_link(format!("/proc/self/ns/{ns}"))?;
        let host = host.to_string_lossy();
        ensure(
            !run.output.contains(host.as_ref()),
            format!("container shares the host's {ns} namespace {host}"),
        )?;
        ensure(
            run.output.contains(&format!("{ns}:[")),
            format!("no {ns} namespace: {}", run.output),
        )?;
    }
    // The cgroup namespace is rooted at the container's own cgroup.
    let run = sh("cat /proc/self/cgroup")?;
    ensure(
        run.output.lines().all(|l| l.ends_with(":/")),
        format!("cgroup paths visible beyond the container: {}", run.output),
    )
}

fn root_read_only_tmp_writable() -> TestResult {
    let run =
        sh("touch /newfile; echo root=$?; touch /tmp/x && echo tmp=ok; mkdir /bin/x; echo bin=$?")?;
    ensure(
        run.output.contains("root=1"),
        format!("writing / did not fail: {}", run.output),
    )?;
    ensure(
        run.output.contains("Read-only file system"),
        run.output.clone(),
    )?;
    ensure(
        run.output.contains("tmp=ok"),
        format!("/tmp not writable: {}", run.output),
    )?;
    ensure(run.output.contains("bin=1"), run.output.clone())?;
    ensure(
        !support::rootfs().join("newfile").exists(),
        "the image was written to",
    )
}

fn proc_masked_and_read_only() -> TestResult {
    // Every masked file the host kernel has reads empty in the container.
    for path in [
        "/proc/kcore",
        "/proc/timer_list",
        "/proc/keys",
        "/proc/sched_debug",
    ] {
        if fs::metadata(path).is_ok_and(|m| m.is_file()) {
            let run = sh(&format!("echo bytes=$(cat {path} | wc -c)"))?;
            ensure(
                run.output.contains("bytes=0\n"),
                format!("{path} not masked: {}", run.output),
            )?;
        }
    }
    // Whatever of runc's masked and read-only /proc paths the container's own /proc
    // has is covered by a mount (the runtime plans only those a fresh /proc has).
    let paths = "interrupts kcore keys latency_stats sched_debug timer_list timer_stats \
        acpi asound scsi bus fs irq sys sysrq-trigger";
    let run = sh(&format!(
        "for p in {paths}; do [ -e /proc/$p ] && echo present /proc/$p; done; \
         cut -d' ' -f5 /proc/self/mountinfo | sed 's/^/mount /'"
    ))?;
    let mounts: Vec<&str> = run
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("mount "))
        .collect();
    let present: Vec<&str> = run
        .output
        .lines()
        .filter_map(|l| l.strip_prefix("present "))
        .collect();
    ensure(present.contains(&"/proc/sys"), run.output.clone())?;
    // A masked directory is empty and stays so.
    if present.contains(&"/proc/acpi") {
        let run =
            sh("echo entries=$(ls -A /proc/acpi | wc -l); mkdir /proc/acpi/x; echo mkdir=$?")?;
        ensure(
            run.output.contains("entries=0\n") && run.output.contains("mkdir=1"),
            format!("/proc/acpi: {}", run.output),
        )?;
    }
    for path in present {
        ensure(
            mounts.contains(&path),
            format!("{path} is neither masked nor read-only: {}", run.output),
        )?;
    }
    let run = sh(
        "echo 1 > /proc/sys/vm/drop_caches; echo sys=$?; echo x > /sys/kernel/uevent_helper; echo sysfs=$?",
    )?;
    ensure(
        run.output.contains("sys=1"),
        format!("/proc/sys writable: {}", run.output),
    )?;
    ensure(
        run.output.contains("sysfs=1"),
        format!("/sys writable: {}", run.output),
    )?;
    ensure(
        run.output.contains("Read-only file system"),
        run.output.clone(),
    )
}

fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim_start_matches(':').trim())
}

fn privileges_reduced() -> TestResult {
    let run = sh("cat /proc/self/status")?;
    let eff = status_field(&run.output, "CapEff").ok_or("no CapEff")?;
    let eff = u64::from_str_radix(eff, 16)?;
    // Docker's default set minus MKNOD, NET_RAW and AUDIT_WRITE.
    let docker_default: u64 = 0x00000000a80425fb;
    ensure(
        eff & !docker_default == 0,
        format!("CapEff {eff:#x} exceeds Docker's default set"),
    )?;
    ensure(eff & (1 << 21) == 0, "CAP_SYS_ADMIN kept")?;
    ensure(eff & (1 << 27) == 0, "CAP_MKNOD kept")?;
    for set in ["CapBnd", "CapPrm"] {
        let v = u64::from_str_radix(status_field(&run.output, set).ok_or(set)?, 16)?;
        ensure(v == eff, format!("{set} {v:#x} != CapEff {eff:#x}"))?;
    }
    for set in ["CapInh", "CapAmb"] {
        let v = u64::from_str_radix(status_field(&run.output, set).ok_or(set)?, 16)?;
        ensure(v == 0, format!("{set} is {v:#x}"))?;
    }
    ensure(
        status_field(&run.output, "NoNewPrivs") == Some("1"),
        "NoNewPrivs is not 1",
    )?;
    ensure(
        status_field(&run.output, "Seccomp") == Some("2"),
        "Seccomp is not 2 (filter)",
    )
}

fn dangerous_syscalls_denied() -> TestResult {
    let run = sh(
        "mount -t tmpfs none /tmp; echo mount=$?; umount /proc; echo umount=$?; \
         unshare -n true; echo unshare=$?; chroot / true; echo chroot=$?",
    )?;
    for op in ["mount=", "umount=", "unshare=", "chroot="] {
        ensure(
            !run.output.contains(&format!("{op}0")),
            format!("{op} succeeded: {}", run.output),
        )?;
    }
    ensure(
        run.output.contains("Operation not permitted") || run.output.contains("permission denied"),
        format!("no EPERM: {}", run.output),
    )
}

fn only_stdio_fds() -> TestResult {
    stdio_only_on(support::runtime())
}

/// `ls` opens the directory it lists as fd 3; anything else is leaked from the host.
fn stdio_only_on(rt: &Runtime) -> TestResult {
    let run = support::sh_on(rt, "exec ls /proc/self/fd", Opts::default())?;
    let mut fds: Vec<&str> = run.output.split_whitespace().collect();
    fds.sort();
    ensure(fds == ["0", "1", "2", "3"], format!("open fds: {fds:?}"))
}

/// The three ways a child gets its fds (kept_fds.rs) each leave it stdio alone: fetched
/// from the daemon (the default), copied with the daemon's table, and copied after a
/// fetch was refused (here by a seccomp filter on the spawning thread, which its child
/// inherits), which also turns fetching off for the runtime.
fn fds_fetched_copied_or_refused() -> TestResult {
    let rt = support::runtime();
    stdio_only_on(rt)?;
    ensure(rt.fetches_fds(), "children do not fetch their fds here")?;
    let copying = Runtime::new(support::CGROUP_PARENT)?.copying_fd_table();
    stdio_only_on(&copying)?;
    ensure(!copying.fetches_fds(), "fetching was turned off")?;
    let refused = Runtime::new(support::CGROUP_PARENT)?;
    ensure(refused.fetches_fds(), "a new runtime fetches")?;
    std::thread::scope(|s| {
        s.spawn(|| -> TestResult {
            let rules = [(libc::SYS_pidfd_getfd, vec![])].into_iter().collect();
            let filter = seccompiler::SeccompFilter::new(
                rules,
                seccompiler::SeccompAction::Allow,
                seccompiler::SeccompAction::Errno(libc::EPERM as u32),
                std::env::consts::ARCH.try_into()?,
            )?;
            let program: seccompiler::BpfProgram = filter.try_into()?;
            seccompiler::apply_filter(&program)?;
            stdio_only_on(&refused)
        })
        .join()
        .map_err(|_| "the spawning thread panicked")?
    })?;
    ensure(
        !refused.fetches_fds(),
        "a refused fetch did not turn fetching off",
    )
}

fn dev_and_hostname() -> TestResult {
    let run = sh("hostname; ls /dev; head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo null=ok; ls /dev/pts /dev/shm /dev/mqueue >/dev/null && echo subdirs=ok")?;
    ensure(
        run.output.starts_with("faasd-test\n"),
        format!("hostname: {}", run.output),
    )?;
    for dev in [
        "null", "zero", "full", "random", "urandom", "pts", "shm", "mqueue",
    ] {
        ensure(
            run.output.contains(dev),
            format!("/dev/{dev} missing: {}", run.output),
        )?;
    }
    ensure(
        run.output.contains("null=ok") && run.output.contains("subdirs=ok"),
        run.output.clone(),
    )
}

fn non_root_user_has_no_caps() -> TestResult {
    let run = sh_with(
        "id -u; grep -E 'CapEff|CapPrm' /proc/self/status; touch /tmp/y && echo tmp=ok",
        Opts {
            uid: 1000,
            ..Opts::default()
        },
    )?;
    ensure(
        run.output.starts_with("1000\n"),
        format!("uid: {}", run.output),
    )?;
    ensure(
        run.output.contains("CapEff:\t0000000000000000"),
        run.output.clone(),
    )?;
    ensure(
        run.output.contains("CapPrm:\t0000000000000000"),
        run.output.clone(),
    )?;
    ensure(run.output.contains("tmp=ok"), run.output.clone())
}

fn pids_limit_stops_fork_bomb() -> TestResult {
    let id = unique("forkbomb");
    let res = Resources {
        pids_max: 16,
        ..Resources::default()
    };
    // Start 40 sleepers; with 16 pids the shell's forks start failing.
    // The subshell forks sleepers until fork fails; the shell then counts the live
    // processes with a glob, which needs no fork.
    let run = sh_with(
        "(i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done); set -- /proc/[0-9]*; echo started=$#",
        Opts { resources: res, id: Some(&id), ..Opts::default() },
    )?;
    ensure(
        run.output.contains("can't fork")
            || run.output.contains("Resource temporarily unavailable"),
        format!("forks never failed: {}", run.output),
    )?;
    let started: u32 = run
        .output
        .lines()
        .find_map(|l| l.strip_prefix("started="))
        .ok_or(format!("no count: {}", run.output))?
        .parse()?;
    ensure(
        started <= 16,
        format!("{started} processes alive with pids.max 16"),
    )?;
    ensure(!cgroup_exists(&id), "cgroup left behind")
}

fn memory_hog_is_killed() -> TestResult {
    let id = unique("memhog");
    let res = Resources {
        memory_bytes: 32 << 20,
        ..Resources::default()
    };
    // Hold 200 MB in the shell: more than the limit.
    let run = sh_with(
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
        Opts {
            resources: res,
            id: Some(&id),
            ..Opts::default()
        },
    )?;
    ensure(
        !run.output.contains("survived"),
        format!("memory hog survived: {}", run.output),
    )?;
    ensure(
        run.status.oom_killed,
        format!("no OOM kill recorded: {:?} {}", run.status, run.output),
    )?;
    ensure(!cgroup_exists(&id), "cgroup left behind")
}

fn missing_command_is_an_error() -> TestResult {
    let id = unique("nocmd");
    let argv = ["/no/such/binary".to_string()];
    let err = support::run(
        &argv,
        Opts {
            id: Some(&id),
            ..Opts::default()
        },
    )
    .err();
    ensure(
        matches!(err, Some(RuntimeError::CommandNotFound(_))),
        format!("got {err:?}"),
    )?;
    let msg = err.unwrap().to_string();
    ensure(
        msg.contains("/no/such/binary") && msg.contains("not found"),
        msg,
    )?;
    ensure(!cgroup_exists(&id), "cgroup left behind")?;
    // A bare name is looked up in the image's PATH, not the host's.
    let argv = ["cargo".to_string()];
    let err = support::run(&argv, Opts::default()).err();
    ensure(
        matches!(err, Some(RuntimeError::CommandNotFound(_))),
        format!("got {err:?}"),
    )
}

fn missing_workdir_is_an_error() -> TestResult {
    let id = unique("nowd");
    let err = sh_with(
        "true",
        Opts {
            workdir: "/nowhere",
            id: Some(&id),
            ..Opts::default()
        },
    )
    .err();
    // Refused before anything is created: the image has no such directory.
    let Some(RuntimeError::Workdir { source, .. }) = &err else {
        return Err(format!("got {err:?}").into());
    };
    ensure(
        source.raw_os_error() == Some(libc::ENOENT),
        format!("{source}"),
    )?;
    ensure(!cgroup_exists(&id), "cgroup left behind")
}

/// A template keeps what it resolved (working directory, command) per configuration: a
/// changed PATH or a directory that appeared since a failed lookup must be seen.
fn resolutions_follow_path_and_new_directories() -> TestResult {
    let dir = support::state_dir().join(unique("resolve"));
    support::make_rootfs(&dir);
    let (template, _) = MountTemplate::build(&dir, None)?;
    let path = |p: &str| vec![format!("PATH={p}")];
    let exe = |env: &[String]| {
        template
            .resolve(&dir, "/", "sh", env)
            .map(|r| r.exe.to_string_lossy().into_owned())
    };
    ensure(exe(&path("/bin"))? == "/bin/sh", "sh in /bin")?;
    ensure(exe(&path("/bin"))? == "/bin/sh", "sh in /bin, again")?;
    let err = exe(&path("/nowhere")).err();
    ensure(
        matches!(err, Some(RuntimeError::CommandNotFound(_))),
        format!("PATH=/nowhere found sh: {err:?}"),
    )?;
    ensure(exe(&[])? == "/bin/sh", "the default PATH has /bin")?;
    let workdir = |w: &str| {
        template
            .resolve(&dir, w, "sh", &path("/bin"))
            .map(|r| r.workdir_in_container.clone())
    };
    ensure(workdir("/srv").is_err(), "/srv does not exist yet")?;
    fs::create_dir(dir.join("srv"))?;
    let found = workdir("/srv")?;
    ensure(found.to_bytes() == b"/srv", format!("{found:?}"))?;
    drop(template);
    fs::remove_dir_all(&dir)?;
    Ok(())
}

fn timeout_kills_every_process() -> TestResult {
    let id = unique("hang");
    let start = Instant::now();
    let run = sh_with(
        "sleep 300 & (sleep 300 &) ; sleep 300",
        Opts {
            timeout: Duration::from_millis(300),
            id: Some(&id),
            ..Opts::default()
        },
    )?;
    ensure(
        run.status.exit == Exit::TimedOut,
        format!("{:?}", run.status),
    )?;
    ensure(
        start.elapsed() < Duration::from_secs(10),
        "teardown took too long",
    )?;
    ensure(
        !cgroup_exists(&id),
        "cgroup (and so some process) left behind",
    )?;
    // No sleeper survives anywhere on the host. A killed task leaves its cgroup before
    // it has finished exiting, so one may still show for a moment: bounded wait.
    let sleepers = || {
        fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| fs::read_to_string(e.path().join("cmdline")).ok())
            .filter(|c| c == "sleep\x00300\x00")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while sleepers() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survivors = sleepers();
    ensure(survivors == 0, format!("{survivors} sleepers survived"))
}

fn symlinked_mount_point_refused() -> TestResult {
    for (name, target) in [
        ("proc", "/etc"),
        ("control.sock", "/etc/passwd"),
        ("tmp", "../../../tmp"),
    ] {
        let dir = support::state_dir().join(unique("evil"));
        support::make_rootfs(&dir);
        let p = dir.join(name);
        if p.is_dir() {
            fs::remove_dir(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
        std::os::unix::fs::symlink(target, &p)?;
        let err = sh_with(
            "true",
            Opts {
                rootfs: &dir,
                ..Opts::default()
            },
        )
        .err();
        ensure(
            matches!(err, Some(RuntimeError::UnsafeMountPoint { .. })),
            format!("/{name} -> {target}: got {err:?}"),
        )?;
        ensure(
            err.unwrap().to_string().contains("symlink"),
            "message does not say why",
        )?;
        fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// The runtime holds a container's mount namespace while it runs (so that its mounts
/// are torn down off its exit, where the kernel has PIDFD_GET_MNT_NAMESPACE, 6.11+), and
/// lets it go once the container has ended: no namespace, and none of its mounts, stays.
fn mount_namespace_released() -> TestResult {
    let argv = [
        "/bin/sh",
        "-c",
        "dd if=/dev/zero of=/tmp/f bs=1M count=8 2>/dev/null; sleep 1",
    ]
    .map(String::from);
    let (container, output) = support::spawn_on(support::runtime(), &argv, Opts::default())?;
    let ns = fs::read_link(format!("/proc/{}/ns/mnt", container.pid()))?;
    let held_by_us = || -> std::io::Result<bool> {
        for fd in fs::read_dir("/proc/self/fd")? {
            if fs::read_link(fd?.path()).is_ok_and(|target| target == ns) {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let held = held_by_us()?;
    ensure(
        held || kernel_release() < (6, 11),
        "the runtime does not hold the container's mount namespace",
    )?;
    let status = container.wait_blocking(Duration::from_secs(20))?;
    output.join().map_err(|_| "output reader panicked")?;
    ensure(status.success(), format!("{status:?}"))?;
    if held {
        let until = Instant::now() + Duration::from_secs(5);
        while held_by_us()? {
            ensure(
                Instant::now() < until,
                format!("{ns:?} still held 5 s after the container ended"),
            )?;
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        println!("mount namespace not held: the kernel lacks PIDFD_GET_MNT_NAMESPACE (6.11+)");
    }
    Ok(())
}

/// (major, minor) of the running kernel.
fn kernel_release() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn exit_code_reported() -> TestResult {
    let run = sh("exit 7")?;
    ensure(
        run.status.exit == Exit::Code(7),
        format!("{:?}", run.status),
    )?;
    // A signal from inside reaches a child of pid 1 (pid 1 itself ignores it).
    let run = sh("sh -c 'kill -SEGV $$'; echo child=$?")?;
    ensure(run.output.contains("child=139"), run.output)
}

/// With a pool of 4 kits made ahead (an IPC namespace and the /tmp, /dev/shm and
/// /dev/pts mounts) and without: each of 3 overlapping containers has an IPC namespace
/// and those filesystems of its own, finds them empty although each leaves a message
/// queue and files in them, and the mounts have the same type, flags and options either
/// way. (Not more containers: the queues count against RLIMIT_MSGQUEUE of uid 0, host
/// included, a tenth of it each, until their namespaces are freed.)
fn fresh_ipc_namespaces_and_mounts() -> TestResult {
    let pooled = Runtime::new(support::CGROUP_PARENT)?.with_fresh_pool(4)?;
    let with_kits = fresh_objects(&pooled)?;
    let used = pooled.fresh_kits_lent();
    ensure(
        used == 3,
        format!("{used} of 3 containers used a kit made ahead"),
    )?;
    let unpooled = Runtime::new(support::CGROUP_PARENT)?;
    let own = fresh_objects(&unpooled)?;
    ensure(
        unpooled.fresh_kits_lent() == 0,
        "no pool, yet a kit was lent",
    )?;
    ensure(
        with_kits == own,
        format!("mounts from a kit {with_kits:?}, made by the container {own:?}"),
    )
}

/// Runs 3 overlapping containers on `rt` and checks each one's IPC namespace, /tmp,
/// /dev/shm, /dev/mqueue and /dev/pts; returns how /tmp, /dev/shm and /dev/pts are
/// mounted (mountinfo without ids: options, type, source, superblock options).
fn fresh_objects(rt: &Runtime) -> Result<Vec<String>, libtest_mimic::Failed> {
    let host = fs::read_link("/proc/self/ns/ipc")?;
    let mut seen = std::collections::HashSet::new();
    let mut mounts = Vec::new();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    support::sh_on(
                        rt,
                        "readlink /proc/self/ns/ipc; echo before $(ls -A /dev/mqueue /tmp \
                         /dev/shm); touch /dev/mqueue/left /tmp/left /dev/shm/left; \
                         echo after $(ls -A /dev/mqueue /tmp /dev/shm); \
                         grep -E ' /(tmp|dev/shm|dev/pts) ' /proc/self/mountinfo \
                         | cut -d' ' -f5,6,8-; sleep 1",
                        Opts::default(),
                    )
                })
            })
            .collect();
        for r in runs {
            let run = r.join().unwrap()?;
            ensure(run.status.success(), &run.output)?;
            let lines: Vec<&str> = run.output.lines().collect();
            let ns = lines.first().copied().unwrap_or_default();
            ensure(
                ns.starts_with("ipc:["),
                format!("no ipc ns: {}", run.output),
            )?;
            ensure(
                ns != host.to_string_lossy(),
                "container in the host's ipc ns",
            )?;
            ensure(
                seen.insert(ns.to_string()),
                format!("{ns} shared by two containers"),
            )?;
            let empty = "before /dev/mqueue: /dev/shm: /tmp:";
            let left = "after /dev/mqueue: left /dev/shm: left /tmp: left";
            ensure(
                lines.get(1..3) == Some(&[empty, left][..]),
                format!(
                    "found before and after leaving one of each: {:?}",
                    &lines[1..]
                ),
            )?;
            mounts = lines[3..].iter().map(|l| l.to_string()).collect();
            ensure(mounts.len() == 3, format!("mounts: {mounts:?}"))?;
        }
        Ok::<(), libtest_mimic::Failed>(())
    })?;
    mounts.sort();
    Ok(mounts)
}

/// With the pool of pre-made network namespaces (4 in the test runtime) and without (12
/// at once drain it, so the rest make theirs at clone), no two live containers share one
/// (each stays 2 s, so all 12 overlap: a namespace is only lent again once its container
/// is gone, see pools.rs), and each holds nothing but `lo`.
fn own_empty_netns() -> TestResult {
    let runs: Vec<_> = (0..12)
        .map(|_| {
            std::thread::spawn(|| {
                sh("readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1; sleep 2")
            })
        })
        .collect();
    let host = fs::read_link("/proc/self/ns/net")?;
    let mut seen = std::collections::HashSet::new();
    for r in runs {
        let run = r.join().unwrap()?;
        ensure(run.status.success(), &run.output)?;
        let mut lines = run.output.lines();
        let ns = lines.next().unwrap_or_default().to_string();
        ensure(ns.starts_with("net:["), format!("no netns: {}", run.output))?;
        ensure(
            ns != host.to_string_lossy(),
            "container in the host's netns",
        )?;
        ensure(
            seen.insert(ns.clone()),
            format!("{ns} shared by two containers"),
        )?;
        let ifaces: Vec<&str> = lines.map(str::trim).collect();
        ensure(ifaces == ["lo"], format!("interfaces in {ns}: {ifaces:?}"))?;
    }
    Ok(())
}
