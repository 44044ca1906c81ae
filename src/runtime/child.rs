//! The container's first process, between clone and exec.
//!
//! The parent is multi-threaded (tokio), and the child shares its memory until exec
//! (CLONE_VM, see process.rs) while the parent's other threads run on: another thread may
//! hold the allocator's lock, and anything the child wrote would land in the daemon. So
//! everything here is async-signal-safe: raw syscalls on a [`ChildPlan`] prepared by the
//! parent, no allocation, no locks, no panics, no writes outside its own stack. A failed
//! step writes (step, detail, errno) to the close-on-exec error pipe and exits; a
//! successful exec closes the pipe empty. The dumpable flag belongs to the shared memory,
//! so the runtime keeps the whole daemon non-dumpable (see Runtime::new) rather than
//! each child setting it.
//!
//! Ordering constraints, in the order `run` takes them:
//! - the pre-made network namespace (if any) while we still have CAP_SYS_ADMIN;
//! - cgroup before anything allocates or forks, and before the cgroup namespace, so the
//!   namespace is rooted at the container's own cgroup;
//! - mounts before pivot_root (their sources live in the host's tree), pivot_root before
//!   chdir to the working directory;
//! - the bounding set is dropped before setuid (it needs CAP_SETPCAP);
//! - fds are marked close-on-exec after stdio is in place;
//! - Landlock after the capabilities are dropped and before seccomp (it needs
//!   no_new_privs, set right before it);
//! - seccomp last: it denies mount/pivot_root/unshare, which the steps above need.

use std::ffi::CString;
use std::fmt;
use std::os::fd::RawFd;

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::BpfProgram;

use super::timeline::{Clock, Mark};

/// The setup steps, as reported back to the parent on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    JoinNetns = 1,
    JoinCgroup,
    UnshareCgroupNamespace,
    MakeMountsPrivate,
    Mount,
    PivotRoot,
    DetachOldRoot,
    SetHostname,
    Chdir,
    WorkdirOutsideRoot,
    Stdio,
    SetGroups,
    SetGid,
    DropBoundingCaps,
    SetUid,
    SetCaps,
    CloseFds,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Exec,
}

impl Step {
    const ALL: [Step; 21] = [
        Step::JoinNetns,
        Step::JoinCgroup,
        Step::UnshareCgroupNamespace,
        Step::MakeMountsPrivate,
        Step::Mount,
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::SetHostname,
        Step::Chdir,
        Step::WorkdirOutsideRoot,
        Step::Stdio,
        Step::SetGroups,
        Step::SetGid,
        Step::DropBoundingCaps,
        Step::SetUid,
        Step::SetCaps,
        Step::CloseFds,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::Seccomp,
        Step::Exec,
    ];

    pub fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u32 == v)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Step::JoinNetns => "join the pre-made network namespace",
            Step::JoinCgroup => "join cgroup",
            Step::UnshareCgroupNamespace => "unshare cgroup namespace",
            Step::MakeMountsPrivate => "make mounts private",
            Step::Mount => "mount",
            Step::PivotRoot => "pivot_root",
            Step::DetachOldRoot => "detach old root",
            Step::SetHostname => "set hostname",
            Step::Chdir => "chdir to working directory",
            Step::WorkdirOutsideRoot => "working directory outside the root",
            Step::Stdio => "set up stdio",
            Step::SetGroups => "setgroups",
            Step::SetGid => "setgid",
            Step::DropBoundingCaps => "drop bounding capabilities",
            Step::SetUid => "setuid",
            Step::SetCaps => "set capabilities",
            Step::CloseFds => "close inherited fds",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Landlock => "restrict TCP bind and connect (Landlock)",
            Step::Seccomp => "install seccomp filter",
            Step::Exec => "exec",
        };
        f.write_str(s)
    }
}

/// One filesystem operation of the container's root, prepared as C strings by the parent.
pub enum MountOp {
    Mount {
        source: CString,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// Bind `source` onto `target`, then remount the bind read-only with `flags`.
    BindReadOnly {
        source: CString,
        target: CString,
        flags: libc::c_ulong,
    },
    /// Hide `target`: /dev/null over a file, an empty read-only tmpfs over a directory;
    /// absent paths are skipped (runc's maskedPaths).
    Mask {
        target: CString,
        null: CString,
    },
    MakeNode {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    Symlink {
        target: CString,
        link: CString,
    },
}

/// The capability sets to leave the process with.
pub struct CapPlan {
    pub bounding_drop: Vec<Capability>,
    pub keep: CapsHashSet,
    pub none: CapsHashSet,
}

/// Everything the child needs, prepared before clone so the child never allocates.
pub struct ChildPlan<'a> {
    pub error_pipe: RawFd,
    /// A pre-made empty network namespace to join; None: the clone made a new one.
    pub netns: Option<RawFd>,
    /// Pre-opened files that move the writer into its cgroup, one per hierarchy.
    pub cgroup_join: Vec<RawFd>,
    pub new_root: CString,
    pub mounts: Vec<MountOp>,
    pub hostname: CString,
    pub workdir: CString,
    pub dev_null: CString,
    pub stdout: RawFd,
    pub stderr: RawFd,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub caps: &'static CapPlan,
    pub seccomp: &'static [BpfProgram],
    /// A Landlock ruleset denying TCP bind and connect; None where the kernel has none.
    pub landlock: Option<RawFd>,
    pub exe: CString,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    /// Where the child records when each phase ended.
    pub clock: &'a Clock,
}

/// A failed step: what it was, which mount (index into `mounts`) if any, and errno.
struct Failure(Step, u32, i32);

type StepResult = Result<(), Failure>;

fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot; always valid.
    unsafe { *libc::__errno_location() }
}

fn check(rc: libc::c_long, step: Step) -> StepResult {
    check_detail(rc, step, 0)
}

fn check_detail(rc: libc::c_long, step: Step, detail: u32) -> StepResult {
    if rc < 0 {
        Err(Failure(step, detail, errno()))
    } else {
        Ok(())
    }
}

/// Entry point of the cloned child. Never returns.
pub fn run(plan: &ChildPlan, mask: &libc::sigset_t) -> ! {
    reset_signal_handlers();
    let failure = match setup(plan) {
        Ok(()) => exec(plan, mask),
        Err(f) => f,
    };
    report(plan.error_pipe, failure)
}

/// Our handlers must never run in the child, which shares our memory until its exec:
/// every caught signal goes back to its default action (exec would do the same), while
/// all signals are still blocked.
fn reset_signal_handlers() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction with a zeroed out-parameter, then with SIG_DFL; glibc refuses
        // its reserved signals with EINVAL, which is fine to ignore.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
    }
}

fn report(pipe: RawFd, Failure(step, detail, err): Failure) -> ! {
    let mut msg = [0u8; 12];
    msg[0..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..8].copy_from_slice(&detail.to_ne_bytes());
    msg[8..12].copy_from_slice(&err.to_ne_bytes());
    // SAFETY: writing a stack buffer to our pipe fd, then exiting without running any
    // destructor or atexit handler (they belong to the parent's copy of the state).
    unsafe {
        libc::write(pipe, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn setup(plan: &ChildPlan) -> StepResult {
    plan.clock.mark(Mark::ChildStarted);
    join_netns(plan)?;
    plan.clock.mark(Mark::NetnsJoined);
    join_cgroup(plan)?;
    plan.clock.mark(Mark::CgroupJoined);
    enter_root(plan)?;
    plan.clock.mark(Mark::RootPivoted);
    set_hostname(plan)?;
    enter_workdir(plan)?;
    set_stdio(plan)?;
    drop_privileges(plan)?;
    close_inherited_fds()?;
    plan.clock.mark(Mark::PrivilegesDropped);
    restrict_network(plan)?;
    plan.clock.mark(Mark::NetworkRestricted);
    install_seccomp(plan)?;
    plan.clock.mark(Mark::SeccompInstalled);
    Ok(())
}

fn join_netns(plan: &ChildPlan) -> StepResult {
    let Some(fd) = plan.netns else {
        return Ok(());
    };
    // SAFETY: setns on an fd the parent opened for us, naming a network namespace.
    check(
        unsafe { libc::setns(fd, libc::CLONE_NEWNET) } as _,
        Step::JoinNetns,
    )?;
    // SAFETY: closing an fd the child owns and no longer needs.
    unsafe { libc::close(fd) };
    Ok(())
}

fn join_cgroup(plan: &ChildPlan) -> StepResult {
    for &fd in &plan.cgroup_join {
        // SAFETY: "0" names the writer; fd is an open cgroup.procs (v2) or tasks (v1) of ours.
        check(
            unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } as _,
            Step::JoinCgroup,
        )?;
        // SAFETY: closing an fd the child owns and no longer needs.
        unsafe { libc::close(fd) };
    }
    // SAFETY: unshare with a flag constant.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } as _,
        Step::UnshareCgroupNamespace,
    )
}

fn enter_root(plan: &ChildPlan) -> StepResult {
    // Nothing we mount may propagate back to the host's mount namespace.
    // SAFETY: all pointers are NUL-terminated literals or null.
    check(
        unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        } as _,
        Step::MakeMountsPrivate,
    )?;
    // Device nodes and directories get exactly the modes the plan names.
    // SAFETY: umask only changes this process's file mode mask.
    let umask = unsafe { libc::umask(0) };
    for (i, op) in plan.mounts.iter().enumerate() {
        apply_mount(op).map_err(|e| Failure(Step::Mount, i as u32, e))?;
    }
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    plan.clock.mark(Mark::Mounted);
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
    // removes it without needing a directory for it inside the image.
    // SAFETY: new_root is a prepared C string; the rest are literals.
    unsafe {
        check(libc::chdir(plan.new_root.as_ptr()) as _, Step::PivotRoot)?;
        check(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
            Step::PivotRoot,
        )?;
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _,
            Step::DetachOldRoot,
        )?;
        check(libc::chdir(c"/".as_ptr()) as _, Step::DetachOldRoot)
    }
}

/// Applies one prepared mount operation, returning errno on failure.
fn apply_mount(op: &MountOp) -> Result<(), i32> {
    let rc = |r: libc::c_int| if r < 0 { Err(errno()) } else { Ok(()) };
    let opt = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY (whole block): every pointer is a NUL-terminated string owned by the plan, or
    // null where the syscall accepts null.
    unsafe {
        match op {
            MountOp::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => rc(libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                opt(fstype),
                *flags,
                opt(data).cast(),
            )),
            MountOp::BindReadOnly {
                source,
                target,
                flags,
            } => {
                let r = libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                );
                if r < 0 && errno() == libc::ENOENT {
                    return Ok(());
                }
                rc(r)?;
                rc(libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                    std::ptr::null(),
                ))
            }
            MountOp::Mask { target, null } => {
                let r = libc::mount(
                    null.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                );
                match (r, errno()) {
                    (0, _) => Ok(()),
                    (_, libc::ENOENT) => Ok(()),
                    (_, libc::ENOTDIR) => rc(libc::mount(
                        c"tmpfs".as_ptr(),
                        target.as_ptr(),
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"size=0".as_ptr().cast(),
                    )),
                    _ => rc(r),
                }
            }
            MountOp::MakeNode { path, mode, dev } => rc(libc::mknod(path.as_ptr(), *mode, *dev)),
            MountOp::Mkdir { path, mode } => rc(libc::mkdir(path.as_ptr(), *mode)),
            MountOp::Symlink { target, link } => rc(libc::symlink(target.as_ptr(), link.as_ptr())),
        }
    }
}

fn set_hostname(plan: &ChildPlan) -> StepResult {
    let name = plan.hostname.as_bytes();
    // SAFETY: pointer and length of a live buffer.
    check(
        unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } as _,
        Step::SetHostname,
    )
}

fn enter_workdir(plan: &ChildPlan) -> StepResult {
    // SAFETY: prepared C string.
    check(
        unsafe { libc::chdir(plan.workdir.as_ptr()) } as _,
        Step::Chdir,
    )?;
    // The kernel prefixes an unreachable cwd with "(unreachable)" (CVE-2024-21626: a
    // leaked host directory fd as cwd); after pivot_root every reachable path starts "/".
    let mut buf = [0u8; 256];
    // SAFETY: the raw syscall writes at most buf.len() bytes into buf.
    let n = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    if n > 0 && buf[0] != b'/' {
        return Err(Failure(Step::WorkdirOutsideRoot, 0, libc::EPERM));
    }
    // ERANGE (a very long path) is not an escape; other errors are.
    if n < 0 && errno() != libc::ERANGE {
        return Err(Failure(Step::WorkdirOutsideRoot, 0, errno()));
    }
    Ok(())
}

fn set_stdio(plan: &ChildPlan) -> StepResult {
    // SAFETY: open/dup2/close on fds we own; dev_null is a prepared C string.
    unsafe {
        let null = libc::open(plan.dev_null.as_ptr(), libc::O_RDWR);
        check(null as _, Step::Stdio)?;
        check(libc::dup2(null, 0) as _, Step::Stdio)?;
        if null != 0 {
            libc::close(null);
        }
        check(libc::dup2(plan.stdout, 1) as _, Step::Stdio)?;
        check(libc::dup2(plan.stderr, 2) as _, Step::Stdio)
    }
}

fn drop_privileges(plan: &ChildPlan) -> StepResult {
    let caps_err = |step| move |_| Failure(step, 0, libc::EPERM);
    // caps' success paths are plain prctl/capget/capset calls on prepared sets; only its
    // error paths allocate, and those end in _exit after reporting.
    for &cap in &plan.caps.bounding_drop {
        caps::drop(None, CapSet::Bounding, cap).map_err(caps_err(Step::DropBoundingCaps))?;
    }
    let groups = [plan.gid];
    // Raw syscalls, not glibc's wrappers: in a threaded process those broadcast the change
    // to every thread (__nptl_setxid) and here would wait forever on the parent's threads,
    // which do not exist in the child.
    // SAFETY: integer arguments and a one-element array.
    unsafe {
        check(
            libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()),
            Step::SetGroups,
        )?;
        check(
            libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid),
            Step::SetGid,
        )?;
        check(
            libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid),
            Step::SetUid,
        )?;
    }
    // A non-root uid has lost its permitted set in setresuid already; root keeps the
    // default set. Inheritable and ambient stay empty (CVE-2022-29162).
    let keep = if plan.uid == 0 {
        &plan.caps.keep
    } else {
        &plan.caps.none
    };
    caps::set(None, CapSet::Inheritable, &plan.caps.none).map_err(caps_err(Step::SetCaps))?;
    caps::set(None, CapSet::Effective, keep).map_err(caps_err(Step::SetCaps))?;
    caps::set(None, CapSet::Permitted, keep).map_err(caps_err(Step::SetCaps))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_err(Step::SetCaps))
}

fn close_inherited_fds() -> StepResult {
    // Every fd of the daemon above stdio (listeners, other requests' sockets, the error
    // pipe) closes at exec; the error pipe stays usable until then.
    // SAFETY: close_range with constant arguments.
    check(
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        },
        Step::CloseFds,
    )
}

/// The handed-over client socket lives in the host's network namespace: Landlock keeps
/// it (and every other TCP socket) from binding or connecting anywhere (see landlock.rs).
fn restrict_network(plan: &ChildPlan) -> StepResult {
    // landlock_restrict_self needs no_new_privs once CAP_SYS_ADMIN is gone.
    // SAFETY: prctl with integer arguments.
    check(
        unsafe { libc::syscall(libc::SYS_prctl, libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
        Step::NoNewPrivs,
    )?;
    let Some(ruleset) = plan.landlock else {
        return Ok(());
    };
    // SAFETY: a ruleset fd the parent created (and keeps open), flags 0.
    check(
        unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) },
        Step::Landlock,
    )
}

fn install_seccomp(plan: &ChildPlan) -> StepResult {
    for prog in plan.seccomp {
        seccompiler::apply_filter(prog).map_err(|_| Failure(Step::Seccomp, 0, errno()))?;
    }
    Ok(())
}

fn exec(plan: &ChildPlan, mask: &libc::sigset_t) -> Failure {
    // SAFETY: the mask the spawning thread had (handlers are reset, see run); exe, argv
    // and envp are NUL-terminated arrays of C strings owned by the plan.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
        libc::execve(plan.exe.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr())
    };
    Failure(Step::Exec, 0, errno())
}

/// Decodes the error pipe's message.
pub fn decode(msg: &[u8; 12]) -> (Option<Step>, u32, i32) {
    let word = |i: usize| u32::from_ne_bytes(msg[i..i + 4].try_into().unwrap());
    (Step::from_u32(word(0)), word(4), word(8) as i32)
}
