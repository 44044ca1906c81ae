//! Attacks on the runtime's child side (issue 10 #1, #4, #14; issue 11 #3), performed for
//! real: an image whose WorkingDir leads through a daemon fd to the host, a handler that
//! pushes keystrokes into the operator's terminal or sets up io_uring, a container whose
//! setup never reaches its exec.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faasd::runtime::{ContainerSpec, MountTemplate, Resources, Runtime, RuntimeError, Step};
use libtest_mimic::{Failed, Trial};

use crate::e2e::{Setup, Via};
use crate::support::{self, cgroup_exists, ensure, sh_with, unique, Opts, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test(
            "child_security::workdir_symlink_to_a_daemon_fd_is_refused",
            workdir_symlink_to_a_daemon_fd_is_refused,
        ),
        Trial::test(
            "child_security::workdir_through_the_containers_proc_finds_no_daemon_fd",
            workdir_through_the_containers_proc_finds_no_daemon_fd,
        ),
        Trial::test(
            "child_security::long_workdir_is_entered_and_checked",
            long_workdir_is_entered_and_checked,
        ),
        Trial::test(
            "child_security::container_holds_only_stdio_fds",
            container_holds_only_stdio_fds,
        ),
        Trial::test(
            "child_security::handler_cannot_reach_the_operators_terminal",
            handler_cannot_reach_the_operators_terminal,
        ),
        Trial::test("child_security::io_uring_is_denied", io_uring_is_denied),
        Trial::test(
            "child_security::handler_capabilities_under_faasd",
            handler_capabilities_under_faasd,
        ),
        Trial::test(
            "child_security::setup_stuck_in_a_frozen_cgroup_is_killed",
            setup_stuck_in_a_frozen_cgroup_is_killed,
        ),
        Trial::test(
            "child_security::setup_stuck_on_a_hung_fuse_path_is_killed",
            setup_stuck_on_a_hung_fuse_path_is_killed,
        ),
    ]
}

// --- WorkingDir escapes -------------------------------------------------------------------

/// A host directory outside every rootfs, with a secret in it, whose path is longer than
/// the 256 bytes the old getcwd guard read (so that guard let it pass with ERANGE), and a
/// daemon-like fd on it at a high number.
struct HostSecret {
    dir: PathBuf,
    secret: String,
    fd: OwnedFd,
}

impl HostSecret {
    fn new() -> Result<Self, Failed> {
        let mut dir = support::state_dir().join(unique("host-side"));
        for i in 0..5 {
            dir.push(format!("{i}{}", "d".repeat(60)));
        }
        fs::create_dir_all(&dir)?;
        let secret = unique("host-secret");
        fs::write(dir.join("secret"), &secret)?;
        let file = fs::File::open(&dir)?;
        // Far above anything the container keeps, as a daemon's listener or image dir is.
        // SAFETY: fcntl on an fd we own; the result is a new fd we then own.
        let fd = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        ensure(fd >= 0, "F_DUPFD_CLOEXEC")?;
        // SAFETY: a fresh fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        ensure(dir.as_os_str().len() > 300, "host path too short")?;
        Ok(HostSecret { dir, secret, fd })
    }

    /// Fails if the container's output shows the secret, or a cwd outside its root.
    fn check_not_leaked(&self, output: &str) -> TestResult {
        ensure(
            !output.contains(&self.secret),
            format!("the container read the host's secret: {output}"),
        )?;
        ensure(
            !output.contains("unreachable") && !output.contains("host-side"),
            format!("the container's cwd is outside its root: {output}"),
        )
    }
}

impl Drop for HostSecret {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.dir.ancestors().nth(5).unwrap_or(&self.dir));
    }
}

/// What an attacking handler does first with its cwd.
const READ_SECRET: &str = "pwd; cat secret; cat ../../../../../secret; ls -a";

/// A rootfs of its own for a test that alters it.
fn own_rootfs(name: &str) -> PathBuf {
    let dir = support::state_dir().join(unique(name));
    support::make_rootfs(&dir);
    dir
}

/// The image's WorkingDir is a symlink to /proc/self/fd/N, N a daemon fd on a host
/// directory: before the fix the child chdir'd through it and the handler ran on the host.
fn workdir_symlink_to_a_daemon_fd_is_refused() -> TestResult {
    let host = HostSecret::new()?;
    let rootfs = own_rootfs("escape-link");
    let target = format!("/proc/self/fd/{}", host.fd.as_raw_fd());
    std::os::unix::fs::symlink(&target, rootfs.join("escape"))?;
    let id = unique("escape-link");
    let run = sh_with(
        READ_SECRET,
        Opts {
            rootfs: &rootfs,
            workdir: "/escape",
            id: Some(&id),
            ..Opts::default()
        },
    );
    let result = match run {
        Ok(run) => host.check_not_leaked(&run.output).and(Err(format!(
            "a WorkingDir through {target} was accepted: {}",
            run.output
        )
        .into())),
        // Refused before anything is made: in the image, /proc/self does not exist.
        Err(RuntimeError::Workdir { path, .. }) => ensure(path == "/escape", path),
        Err(e) => Err(format!("unexpected error: {e}").into()),
    };
    fs::remove_dir_all(&rootfs)?;
    result?;
    ensure(!cgroup_exists(&id), "cgroup left behind")
}

/// The image ships /proc/1/fd/N as plain directories, so the path exists in the image; in
/// the container /proc is mounted over it, the child is pid 1 and N would be a daemon fd.
/// The child opens the path after pivot_root and finds no fd N at all (ENOENT; a magic
/// link still open would give ELOOP): every inherited fd is really closed before any
/// path lookup.
fn workdir_through_the_containers_proc_finds_no_daemon_fd() -> TestResult {
    let host = HostSecret::new()?;
    let rootfs = own_rootfs("escape-proc");
    let workdir = format!("/proc/1/fd/{}", host.fd.as_raw_fd());
    fs::create_dir_all(rootfs.join(workdir.trim_start_matches('/')))?;
    let id = unique("escape-proc");
    let run = sh_with(
        READ_SECRET,
        Opts {
            rootfs: &rootfs,
            workdir: &workdir,
            id: Some(&id),
            ..Opts::default()
        },
    );
    let result = match run {
        Ok(run) => host.check_not_leaked(&run.output).and(Err(format!(
            "WorkingDir {workdir} was entered: {}",
            run.output
        )
        .into())),
        Err(RuntimeError::Child { step, source, .. }) => ensure(
            step == Step::OpenWorkdir && source.raw_os_error() == Some(libc::ENOENT),
            format!("failed at '{step}' with {source}, wanted ENOENT opening the workdir"),
        ),
        Err(e) => Err(format!("unexpected error: {e}").into()),
    };
    fs::remove_dir_all(&rootfs)?;
    result?;
    ensure(!cgroup_exists(&id), "cgroup left behind")
}

/// A legitimate WorkingDir longer than the old 256-byte getcwd buffer is entered, and
/// getcwd (now with PATH_MAX, any failure fatal) confirms it.
fn long_workdir_is_entered_and_checked() -> TestResult {
    let rootfs = own_rootfs("long-wd");
    let workdir: String = (0..5).map(|i| format!("/{i}{}", "w".repeat(70))).collect();
    fs::create_dir_all(rootfs.join(workdir.trim_start_matches('/')))?;
    // Through a symlink too: the child gets the canonical path.
    std::os::unix::fs::symlink(workdir.trim_start_matches('/'), rootfs.join("app"))?;
    let run = sh_with(
        "pwd",
        Opts {
            rootfs: &rootfs,
            workdir: "/app",
            ..Opts::default()
        },
    );
    fs::remove_dir_all(&rootfs)?;
    let run = run?;
    ensure(
        run.status.success() && run.output.trim_end() == workdir,
        format!("pwd in {workdir}: {:?} {}", run.status, run.output),
    )
}

/// A daemon fd without close-on-exec never reaches the container either.
fn container_holds_only_stdio_fds() -> TestResult {
    let file = fs::File::open("/")?;
    // SAFETY: fcntl on an fd we own; F_DUPFD leaves the copy without close-on-exec.
    let leaky = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, 100) };
    ensure(leaky >= 0, "F_DUPFD")?;
    // SAFETY: a fresh fd nothing else owns; closed when the test ends.
    let _leaky = unsafe { OwnedFd::from_raw_fd(leaky) };
    // `ls` opens the directory it lists as fd 3.
    let run = sh_with("exec ls /proc/self/fd", Opts::default())?;
    let mut fds: Vec<&str> = run.output.split_whitespace().collect();
    fds.sort();
    ensure(fds == ["0", "1", "2", "3"], format!("open fds: {fds:?}"))
}

// --- the operator's terminal ----------------------------------------------------------------

/// A pseudo-terminal, master and slave, from a devpts instance of the test's own (the
/// harness runs in a private mount namespace): the vmtest guest mounts no devpts, and this
/// way the test needs none of the machine's.
fn openpty() -> Result<(OwnedFd, OwnedFd), Failed> {
    let dir = support::state_dir().join(support::unique("devpts"));
    fs::create_dir_all(&dir)?;
    nix::mount::mount(
        Some("devpts"),
        &dir,
        Some("devpts"),
        nix::mount::MsFlags::empty(),
        Some("newinstance,ptmxmode=0600,mode=0600"),
    )
    .map_err(|e| format!("mount devpts on {}: {e}", dir.display()))?;
    let master = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(dir.join("ptmx"))
        .map_err(|e| format!("open {}/ptmx: {e}", dir.display()))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int; TIOCGPTPEER returns a new fd for the slave side
    // (Linux 4.13+), opened without a path lookup, close-on-exec like the master.
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(format!("unlock pty: {}", std::io::Error::last_os_error()).into());
        }
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    ensure(
        slave >= 0,
        format!("TIOCGPTPEER: {}", std::io::Error::last_os_error()),
    )?;
    // The open master keeps the instance alive; the mount point is no longer needed.
    nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| format!("umount {}: {e}", dir.display()))?;
    // SAFETY: a fresh fd nothing else owns.
    Ok((master.into(), unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// Bytes waiting to be read on `fd` (FIONREAD).
fn pending(fd: &OwnedFd) -> Result<i32, Failed> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    ensure(
        rc == 0,
        format!("FIONREAD: {}", std::io::Error::last_os_error()),
    )?;
    Ok(n)
}

/// A value of the probe handler's report, "name=value" per line.
fn report_value<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
}

/// The probe image served once by a fresh faasd; `prepare` adjusts faasd's command.
fn probe_through_faasd(
    prepare: impl FnOnce(&mut std::process::Command),
    check: impl FnOnce(&Setup, &str, i32) -> TestResult,
) -> TestResult {
    let s = Setup::new(&[])?;
    let faasd = s.start_with(prepare)?;
    let ip = s.deploy("probe", "test-handler-probe.tar", Via::File)?;
    let reply = s.get(ip, "/probe")?;
    s.check(
        reply.status() == Some(200),
        format!("probe answered {reply}"),
    )?;
    check(&s, reply.body(), faasd.pid())
}

/// faasd runs with a pty as its controlling terminal, as when an operator starts it from a
/// shell; the handler opens /dev/tty and pushes a command line into it with TIOCSTI, and
/// tries TIOCSTI on its stdio. Nothing may reach the terminal: the handler is in a session
/// of its own, without a controlling terminal, and its /dev has no tty.
fn handler_cannot_reach_the_operators_terminal() -> TestResult {
    let (master, slave) = openpty()?;
    let slave_fd = slave.as_raw_fd();
    let prepare = move |cmd: &mut std::process::Command| {
        // SAFETY: between fork and exec only setsid and ioctl, both async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    };
    probe_through_faasd(prepare, |s, body, faasd_pid| {
        // The attack would be possible: faasd really has the pty as its terminal.
        let stat = fs::read_to_string(format!("/proc/{faasd_pid}/stat"))?;
        let tty_nr = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split(' ').nth(5));
        s.check(
            tty_nr.flatten().is_some_and(|t| t != "0"),
            format!("faasd has no controlling terminal: {stat}"),
        )?;
        // Its own session: getsid is its own pid (before the fix: 0, the daemon's session
        // leader lying outside its pid namespace).
        let sid = report_value(body, "sid");
        s.check(
            sid.is_some() && sid == report_value(body, "pid"),
            format!("the handler is not the leader of a session of its own: {body}"),
        )?;
        let dev_tty = report_value(body, "dev_tty").unwrap_or("");
        let (enoent, enxio) = (
            format!("errno {}", libc::ENOENT),
            format!("errno {}", libc::ENXIO),
        );
        s.check(
            dev_tty == enoent || dev_tty == enxio,
            format!("open(/dev/tty) in the handler: {body}"),
        )?;
        for name in [
            "tiocsti_stdin",
            "tiocsti_stdout",
            "tiocsti_stderr",
            "tiocsti_dev_tty",
        ] {
            s.check(
                report_value(body, name) != Some("ok"),
                format!("{name} succeeded: {body}"),
            )?;
        }
        // Injected input would wait on the slave side, and its echo on the master side.
        let (input, echo) = (pending(&slave)?, pending(&master)?);
        s.check(
            input == 0 && echo == 0,
            format!("{input} bytes reached the terminal's input, {echo} its output"),
        )
    })
}

// --- seccomp -------------------------------------------------------------------------------

/// io_uring runs its work in kernel threads that seccomp never sees: the handler's
/// io_uring_setup must fail with EPERM.
fn io_uring_is_denied() -> TestResult {
    probe_through_faasd(
        |_| {},
        |s, body, _| {
            let got = report_value(body, "io_uring_setup");
            s.check(
                got == Some(&format!("errno {}", libc::EPERM)),
                format!("io_uring_setup in the handler: {got:?} ({body})"),
            )
        },
    )
}

// --- capabilities --------------------------------------------------------------------------

/// A capability set of /proc/<pid>/status text ("CapBnd:\t000001ff..." or the probe's
/// "CapBnd=000001ff...").
fn cap_set(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(name))?;
    u64::from_str_radix(line.trim_start_matches([':', '=']).trim(), 16).ok()
}

/// faasd limits its bounding set once, at start, to what containers keep, and its
/// handlers inherit it from the clone (no drop per container): the handler under the
/// real daemon ends with bounding = permitted = effective = the containers' set, nothing
/// inheritable or ambient, while faasd itself keeps its full effective set.
fn handler_capabilities_under_faasd() -> TestResult {
    probe_through_faasd(
        |_| {},
        |s, body, faasd_pid| {
            let handler = |set| {
                cap_set(body, set).ok_or_else(|| s.fail(format!("no {set} in the probe: {body}")))
            };
            let (bnd, eff, prm) = (handler("CapBnd")?, handler("CapEff")?, handler("CapPrm")?);
            // CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID, SETPCAP,
            // SYS_CHROOT, SETFCAP: Docker's default set minus MKNOD, NET_RAW,
            // NET_BIND_SERVICE and AUDIT_WRITE (privileges.rs).
            let containers: u64 = 0x8004_01fb;
            s.check(
                bnd == containers && eff == containers && prm == containers,
                format!("handler: CapBnd {bnd:#x}, CapEff {eff:#x}, CapPrm {prm:#x}"),
            )?;
            let (inh, amb) = (handler("CapInh")?, handler("CapAmb")?);
            s.check(
                inh == 0 && amb == 0,
                format!("CapInh {inh:#x}, CapAmb {amb:#x}"),
            )?;
            let status = fs::read_to_string(format!("/proc/{faasd_pid}/status"))?;
            let daemon =
                |set| cap_set(&status, set).ok_or_else(|| s.fail(format!("no {set} for faasd")));
            let (daemon_bnd, daemon_eff) = (daemon("CapBnd")?, daemon("CapEff")?);
            s.check(
                daemon_bnd == containers,
                format!("faasd's bounding set {daemon_bnd:#x} is not the containers'"),
            )?;
            s.check(
                daemon_eff & 1 << 21 != 0,
                format!("faasd lost CAP_SYS_ADMIN: CapEff {daemon_eff:#x}"),
            )
        },
    )
}

// --- setup deadline ------------------------------------------------------------------------

/// The v2 cgroup directory of `parent`, when this machine drives containers on cgroup v2.
fn cgroup_v2_dir(parent: &str) -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    root.join("cgroup.controllers")
        .exists()
        .then(|| root.join(parent))
}

/// The container's cgroup parent is frozen, so the child freezes as soon as it joins its
/// cgroup, long before its exec; with CLONE_VFORK the spawning thread would wait in clone
/// forever. The watchdog kills it at the deadline: spawn fails with a timeout naming the
/// step, and leaves no cgroup and no process.
fn setup_stuck_in_a_frozen_cgroup_is_killed() -> TestResult {
    let parent = unique("faasd-test-frozen");
    let Some(dir) = cgroup_v2_dir(&parent) else {
        eprintln!(
            "child_security::setup_stuck_in_a_frozen_cgroup_is_killed: skipped, containers \
             run on cgroup v1 here (memory, cpu, pids), none of which can freeze them; the \
             cgroup v2 freezer (the VM tier) is needed"
        );
        return Ok(());
    };
    fs::create_dir(&dir)?;
    let result = freeze_and_spawn(&parent, &dir);
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    support::remove_cgroup_parent(&parent);
    result
}

fn freeze_and_spawn(parent: &str, dir: &Path) -> TestResult {
    fs::write(dir.join("cgroup.freeze"), "1")?;
    let rt = Runtime::new(parent)?.with_setup_timeout(DEADLINE);
    let id = unique("frozen");
    expect_setup_killed(&rt, parent, &id, support::rootfs(), "/")?;
    let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
    ensure(procs.trim().is_empty(), format!("processes left: {procs}"))
}

const DEADLINE: Duration = Duration::from_secs(2);

/// Spawns a container that must get stuck before its exec: spawn fails with a setup
/// timeout within the deadline (plus slack for the kill and teardown), leaving no cgroup.
fn expect_setup_killed(
    rt: &Runtime,
    parent: &str,
    id: &str,
    rootfs: &Path,
    workdir: &str,
) -> TestResult {
    let argv = ["/bin/sh".to_string(), "-c".to_string(), "true".to_string()];
    let (template, _) = MountTemplate::build(rootfs, None)?;
    let spec = ContainerSpec {
        id,
        rootfs,
        template: Some(&template),
        argv: &argv,
        env: &[],
        workdir,
        uid: 0,
        gid: 0,
        hostname: "stuck",
        resources: Resources::default(),
        control_socket: None,
        secrets: &faasd::runtime::secrets::NO_SECRETS,
        stdout: None,
        stderr: None,
    };
    let start = Instant::now();
    let result = rt.spawn(&spec);
    let took = start.elapsed();
    match result {
        Err(RuntimeError::SetupTimeout { stuck_in, .. }) => {
            eprintln!("stuck container killed after {took:?}, in '{stuck_in}'")
        }
        Err(e) => return Err(format!("expected a setup timeout, got: {e}").into()),
        Ok(_) => return Err("a stuck container reached its exec".into()),
    }
    ensure(
        took < DEADLINE + Duration::from_secs(3),
        format!("spawn returned after {took:?}, deadline {DEADLINE:?}"),
    )?;
    let left = faasd::runtime::cgroup_children(parent);
    ensure(!left.iter().any(|c| c == id), "cgroup left behind")
}

/// A FUSE filesystem whose server answers the first lookup of `dir` (the runtime's check
/// in the parent) and then stops reading, so the next (the child's, from the container's
/// root) hangs: a hung FUSE or NFS path in an image, as the child meets it before exec.
struct HungFuse {
    mountpoint: PathBuf,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_INIT: u32 = 26;

impl HungFuse {
    /// Mounts the filesystem served through `dev` (an open /dev/fuse) on `mountpoint`.
    fn mount(dev: fs::File, mountpoint: &Path) -> Result<Self, Failed> {
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        nix::mount::mount(
            Some("faasd-test-hung"),
            mountpoint,
            Some("fuse"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(opts.as_str()),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || serve_hung(dev, &stop))
        };
        Ok(HungFuse {
            mountpoint: mountpoint.to_path_buf(),
            stop,
            server: Some(server),
        })
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// The directory's attributes, as FUSE's struct fuse_attr (88 bytes).
fn fuse_dir_attr(ino: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(88);
    a.extend_from_slice(&ino.to_ne_bytes());
    a.extend_from_slice(&[0; 8 * 5]); // size, blocks, atime, mtime, ctime
    a.extend_from_slice(&[0; 4 * 3]); // their nanoseconds
    a.extend_from_slice(&(libc::S_IFDIR | 0o755).to_ne_bytes());
    a.extend_from_slice(&2u32.to_ne_bytes()); // nlink
    a.extend_from_slice(&[0; 4 * 3]); // uid, gid, rdev
    a.extend_from_slice(&4096u32.to_ne_bytes()); // blksize
    a.extend_from_slice(&[0; 4]); // flags
    a
}

fn serve_hung(mut dev: fs::File, stop: &AtomicBool) {
    let mut answered_lookup = false;
    let mut buf = vec![0u8; 1 << 17];
    while !stop.load(Ordering::Relaxed) {
        // Once the parent's lookup is answered, stop reading: a request the server has
        // read but not answered cannot be interrupted even by SIGKILL, one still queued
        // can (as with a hung NFS server).
        if answered_lookup {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut pfd = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&dev),
            nix::poll::PollFlags::POLLIN,
        )];
        if !matches!(
            nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16)),
            Ok(1)
        ) {
            continue;
        }
        let Ok(n) = dev.read(&mut buf) else { return };
        if n < 40 {
            return;
        }
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
        let (opcode, unique, nodeid) = (
            word(4),
            u64::from_ne_bytes(buf[8..16].try_into().unwrap()),
            u64::from_ne_bytes(buf[16..24].try_into().unwrap()),
        );
        let body = match opcode {
            FUSE_INIT => {
                // major 7, minor 31, max_readahead, flags, max_background and congestion
                // threshold, max_write 4096, time_gran 1, then zeros up to 64 bytes.
                let mut b = Vec::new();
                for v in [7u32, 31, 0, 0, 0, 4096, 1] {
                    b.extend_from_slice(&v.to_ne_bytes());
                }
                b.resize(64, 0);
                b
            }
            FUSE_LOOKUP => {
                answered_lookup = true;
                // fuse_entry_out: nodeid 2, generation 1, entry and attr valid 0 s (so the
                // next lookup asks again), their nanoseconds, the attributes.
                let mut b = Vec::new();
                for v in [2u64, 1, 0, 0] {
                    b.extend_from_slice(&v.to_ne_bytes());
                }
                b.extend_from_slice(&[0; 8]);
                b.extend_from_slice(&fuse_dir_attr(2));
                b
            }
            FUSE_GETATTR => {
                // fuse_attr_out: attr_valid 0, its nanoseconds, padding, the attributes.
                let mut b = vec![0; 16];
                b.extend_from_slice(&fuse_dir_attr(nodeid));
                b
            }
            _ => continue, // never answered: whoever asked hangs
        };
        let mut reply = Vec::with_capacity(16 + body.len());
        reply.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        reply.extend_from_slice(&0i32.to_ne_bytes());
        reply.extend_from_slice(&unique.to_ne_bytes());
        reply.extend_from_slice(&body);
        if dev.write_all(&reply).is_err() {
            return;
        }
    }
}

/// The image's WorkingDir lies on a FUSE mount whose server stops answering: the child
/// hangs in its lookup after pivot_root, before its exec. Works on cgroup v1 and v2.
fn setup_stuck_on_a_hung_fuse_path_is_killed() -> TestResult {
    let dev = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(dev) => dev,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {
            eprintln!(
                "child_security::setup_stuck_on_a_hung_fuse_path_is_killed: skipped, this \
                 kernel has no FUSE (/dev/fuse: {e})"
            );
            return Ok(());
        }
        Err(e) => return Err(format!("open /dev/fuse: {e}").into()),
    };
    let rootfs = own_rootfs("hung-fuse");
    fs::create_dir(rootfs.join("hung"))?;
    let result = (|| {
        let _fuse = HungFuse::mount(dev, &rootfs.join("hung"))?;
        let rt = Runtime::new(support::CGROUP_PARENT)?.with_setup_timeout(DEADLINE);
        let id = unique("hung-fuse");
        expect_setup_killed(&rt, support::CGROUP_PARENT, &id, &rootfs, "/hung/dir")
    })();
    let _ = fs::remove_dir_all(&rootfs);
    result
}
