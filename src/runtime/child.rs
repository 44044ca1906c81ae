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
//! - first the kept fds move to 0.. and every other inherited fd is closed (kept_fds.rs),
//!   before any path lookup could follow one through /proc/self/fd;
//! - a new session: the daemon's controlling terminal is not the container's;
//! - the pre-made network and IPC namespaces (if any) while we still have CAP_SYS_ADMIN,
//!   the IPC one before /dev/mqueue is mounted for it;
//! - cgroup before anything allocates or forks, and before the cgroup namespace, so the
//!   namespace is rooted at the container's own cgroup;
//! - the netns cookie is read once the container's network namespace is its own: the
//!   daemon knows the container's connections to the control socket by it;
//! - the template's mount namespace is joined and copied (setns, unshare) before the
//!   container's own mounts, which are made inside its root, and before the working
//!   directory is opened from that root;
//! - the bounding set is dropped before setuid (it needs CAP_SETPCAP);
//! - Landlock after the capabilities are dropped and before seccomp (it needs
//!   no_new_privs, set right before it);
//! - seccomp last: it denies mount/pivot_root/unshare, which the steps above need.

use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use seccompiler::BpfProgram;

use super::kept_fds::{self, KeptFds};
use super::rootfs::{WORKDIR_FLAGS, WORKDIR_RESOLVE};
use super::secrets::SecretsMount;
use super::timeline::{Clock, Mark};

/// The setup steps, as reported back to the parent on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    KeepFds = 1,
    CloseFds,
    NewSession,
    JoinNetns,
    JoinIpc,
    ReadNetnsCookie,
    JoinCgroup,
    UnshareCgroupNamespace,
    EnterTemplate,
    UnshareMountNamespace,
    Mount,
    MountSecrets,
    SetHostname,
    OpenWorkdir,
    Chdir,
    WorkdirOutsideRoot,
    SetGroups,
    SetGid,
    DropBoundingCaps,
    SetUid,
    SetCaps,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Exec,
}

impl Step {
    const ALL: [Step; 25] = [
        Step::KeepFds,
        Step::CloseFds,
        Step::NewSession,
        Step::JoinNetns,
        Step::JoinIpc,
        Step::ReadNetnsCookie,
        Step::JoinCgroup,
        Step::UnshareCgroupNamespace,
        Step::EnterTemplate,
        Step::UnshareMountNamespace,
        Step::Mount,
        Step::MountSecrets,
        Step::SetHostname,
        Step::OpenWorkdir,
        Step::Chdir,
        Step::WorkdirOutsideRoot,
        Step::SetGroups,
        Step::SetGid,
        Step::DropBoundingCaps,
        Step::SetUid,
        Step::SetCaps,
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
            Step::KeepFds => "move the kept fds into place",
            Step::CloseFds => "close inherited fds",
            Step::NewSession => "start a new session",
            Step::JoinNetns => "join the pre-made network namespace",
            Step::JoinIpc => "join the pre-made IPC namespace",
            Step::ReadNetnsCookie => "read the network namespace's cookie",
            Step::JoinCgroup => "join cgroup",
            Step::UnshareCgroupNamespace => "unshare cgroup namespace",
            Step::EnterTemplate => "join the image's mount template",
            Step::UnshareMountNamespace => "copy the mount template",
            Step::Mount => "mount",
            Step::MountSecrets => "mount /run/secrets",
            Step::SetHostname => "set hostname",
            Step::OpenWorkdir => "open the working directory",
            Step::Chdir => "chdir to working directory",
            Step::WorkdirOutsideRoot => "working directory outside the root",
            Step::SetGroups => "setgroups",
            Step::SetGid => "setgid",
            Step::DropBoundingCaps => "drop bounding capabilities",
            Step::SetUid => "setuid",
            Step::SetCaps => "set capabilities",
            Step::NoNewPrivs => "set no_new_privs",
            Step::Landlock => "restrict TCP bind and connect (Landlock)",
            Step::Seccomp => "install seccomp filter",
            Step::Exec => "exec",
        };
        f.write_str(s)
    }
}

/// One mount of the container's own, prepared as C strings once (rootfs::container_mounts).
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
    /// Hide the file `target` under /dev/null (an empty read-only tmpfs should it be a
    /// directory); absent paths are skipped (runc's maskedPaths).
    Mask { target: CString, null: CString },
    /// Hide the directory `target` under `empty`, an empty read-only directory of the
    /// template bound over it (no superblock made and torn down per container), or
    /// under an empty read-only tmpfs where the template has none; skipped if absent.
    MaskDir { target: CString, empty: CString },
}

/// The capability sets to leave the process with, as the kernel's numbers and masks.
pub struct CapPlan {
    /// Capabilities to drop from the bounding set, as a mask.
    pub bounding_drop: u64,
    /// Effective and permitted set of a root process; a non-root one keeps none.
    pub keep: u64,
}

/// A NUL-terminated array of pointers into C strings (argv, envp), which borrows the
/// strings so that they cannot be dropped or moved while the array exists.
pub struct CStrArray<'a> {
    ptrs: Vec<*const libc::c_char>,
    _strings: PhantomData<&'a [CString]>,
}

impl<'a> CStrArray<'a> {
    pub fn new(strings: &'a [CString]) -> Self {
        let ptrs = strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        CStrArray {
            ptrs,
            _strings: PhantomData,
        }
    }

    fn as_ptr(&self) -> *const *const libc::c_char {
        self.ptrs.as_ptr()
    }
}

/// Everything the child needs, prepared before clone so the child never allocates.
/// Every pointer and fd in it borrows from an owner in the parent (`'a`).
pub struct ChildPlan<'a> {
    pub fds: KeptFds<'a>,
    pub mounts: &'static [MountOp],
    /// The ops of `mounts` to skip, a bit per index: masks of /proc entries that do not
    /// exist (rootfs::ContainerMounts::absent_now).
    pub skip_mounts: u64,
    /// The ops of `mounts` that a kit's detached mounts (fds.kit_mounts()) replace.
    pub kit_ops: [usize; 3],
    /// The function's secrets, mounted after `mounts` (None: it has none).
    pub secrets: Option<&'a SecretsMount<'a>>,
    pub hostname: CString,
    /// The canonical working directory inside the container (see rootfs::resolve_workdir).
    pub workdir: &'a CStr,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub caps: &'static CapPlan,
    /// Of `caps.bounding_drop`, those the spawning thread's bounding set still holds
    /// (none in faasd, which drops them once: privileges::limit_bounding_set).
    pub bounding_drop: u64,
    pub seccomp: &'static BpfProgram,
    pub exe: &'a CStr,
    pub argv: CStrArray<'a>,
    pub envp: CStrArray<'a>,
    /// Where the child records when each phase ended.
    pub clock: &'a Clock,
    /// Where the child stores its network namespace's cookie (SO_NETNS_COOKIE).
    pub netns_cookie: &'a AtomicU64,
}

/// A failed step: what it was, which mount (index into `mounts`) if any, and errno.
struct Failure(Step, u32, i32);

type StepResult = Result<(), Failure>;

pub(super) fn errno() -> i32 {
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

/// Entry point of the cloned child, whose signal handlers the clone has reset or not
/// (`handlers_reset`). Never returns.
pub fn run(plan: &ChildPlan, mask: &libc::sigset_t, in_cgroup: bool, handlers_reset: bool) -> ! {
    if !handlers_reset {
        reset_signal_handlers();
    }
    plan.clock.mark(Mark::ChildStarted);
    if let Err(e) = plan.fds.install() {
        report(e.pipe, Failure(e.step, 0, e.errno))
    }
    let failure = match setup(plan, in_cgroup) {
        Ok(()) => exec(plan, mask),
        Err(f) => f,
    };
    report(kept_fds::ERROR_PIPE as RawFd, failure)
}

/// One past the highest signal number (the kernel's _NSIG on x86_64 and most others).
const NSIG: libc::c_int = 65;

/// The kernel's struct sigaction, for the raw rt_sigaction syscall.
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Signals whose handlers the child resets: all of 1.._NSIG, glibc's reserved ones
/// included, but SIGKILL and SIGSTOP, which have none.
fn resettable_signals() -> impl Iterator<Item = libc::c_int> {
    (1..NSIG).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP)
}

/// Our handlers must never run in the child, which shares our memory until its exec:
/// every caught signal goes back to its default action (exec would do the same), while
/// all signals are still blocked. Only where the clone could not do it
/// (CLONE_CLEAR_SIGHAND, which resets the same handlers and leaves ignored signals
/// ignored). The raw syscall, because glibc's sigaction refuses its
/// own reserved signals (SIGCANCEL, SIGSETXID), whose handlers would otherwise stay.
fn reset_signal_handlers() {
    for sig in resettable_signals() {
        // SAFETY: rt_sigaction with a zeroed out-parameter of the kernel's layout, then
        // with SIG_DFL; sigsetsize is the kernel's 8 bytes.
        unsafe {
            let mut old: KernelSigaction = std::mem::zeroed();
            let size = std::mem::size_of::<u64>();
            let no_act = std::ptr::null::<KernelSigaction>();
            if libc::syscall(libc::SYS_rt_sigaction, sig, no_act, &mut old, size) == 0
                && old.handler != libc::SIG_DFL
                && old.handler != libc::SIG_IGN
            {
                let dfl: KernelSigaction = std::mem::zeroed();
                let no_old = std::ptr::null_mut::<KernelSigaction>();
                libc::syscall(libc::SYS_rt_sigaction, sig, &dfl, no_old, size);
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

fn setup(plan: &ChildPlan, in_cgroup: bool) -> StepResult {
    // Not a process-group leader (a fresh child), so setsid cannot fail with EPERM; the
    // daemon's controlling terminal stays behind (no TIOCSTI into the operator's shell).
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() } as _, Step::NewSession)?;
    join_namespace(plan.fds.netns(), libc::CLONE_NEWNET, Step::JoinNetns)?;
    join_namespace(plan.fds.ipc(), libc::CLONE_NEWIPC, Step::JoinIpc)?;
    read_netns_cookie(plan)?;
    plan.clock.mark(Mark::NetnsJoined);
    join_cgroup(plan, in_cgroup)?;
    plan.clock.mark(Mark::CgroupJoined);
    enter_root(plan)?;
    plan.clock.mark(Mark::Mounted);
    set_hostname(plan)?;
    enter_workdir(plan)?;
    drop_privileges(plan)?;
    plan.clock.mark(Mark::PrivilegesDropped);
    restrict_network(plan)?;
    plan.clock.mark(Mark::NetworkRestricted);
    install_seccomp(plan)?;
    plan.clock.mark(Mark::SeccompInstalled);
    Ok(())
}

/// Joins the pre-made namespace of type `nstype` whose fd the parent kept for us, if
/// any, and closes the fd.
fn join_namespace(fd: Option<RawFd>, nstype: libc::c_int, step: Step) -> StepResult {
    let Some(fd) = fd else {
        return Ok(());
    };
    // SAFETY: setns on an fd the parent opened for us, naming a namespace of `nstype`.
    check(unsafe { libc::setns(fd, nstype) } as _, step)?;
    // SAFETY: closing an fd the child owns and no longer needs.
    unsafe { libc::close(fd) };
    Ok(())
}

/// SO_NETNS_COOKIE (5.14+): the kernel's never-reused id of a network namespace.
pub const SO_NETNS_COOKIE: libc::c_int = 71;

/// Records the cookie of the network namespace we are in, through a throwaway socket,
/// unless the parent knows it (a pooled namespace's, read when it was made; cookies are
/// never 0). A socket made in this namespace carries the cookie for life, whoever holds
/// it later: the daemon matches control connections on it (daemon/control.rs).
fn read_netns_cookie(plan: &ChildPlan) -> StepResult {
    if plan.netns_cookie.load(Ordering::Relaxed) != 0 {
        return Ok(());
    }
    // SAFETY: socket with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(fd as _, Step::ReadNetnsCookie)?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 on our stack, with its size; then close of our fd.
    let rc = unsafe {
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        libc::close(fd);
        rc
    };
    check(rc as _, Step::ReadNetnsCookie)?;
    plan.netns_cookie.store(cookie, Ordering::Relaxed);
    Ok(())
}

/// Joins the cgroup unless the clone put us there already, then roots a cgroup
/// namespace at it.
fn join_cgroup(plan: &ChildPlan, in_cgroup: bool) -> StepResult {
    for fd in plan.fds.cgroup_join() {
        if !in_cgroup {
            // SAFETY: "0" names the writer; fd is an open cgroup.procs (v2) or tasks (v1)
            // of ours.
            check(
                unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } as _,
                Step::JoinCgroup,
            )?;
        }
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
    let template = plan.fds.template();
    // Joining a mount namespace also makes its root our root and cwd; the copy that
    // unshare makes is ours alone, root and cwd moved into it (copy_mnt_ns).
    // SAFETY: setns on the template's namespace fd the parent kept open for us, then
    // close of that fd (no longer needed) and unshare with a flag constant.
    unsafe {
        check(
            libc::setns(template, libc::CLONE_NEWNS) as _,
            Step::EnterTemplate,
        )?;
        libc::close(template);
        check(
            libc::unshare(libc::CLONE_NEWNS) as _,
            Step::UnshareMountNamespace,
        )?;
    }
    plan.clock.mark(Mark::RootEntered);
    // Directories and files get exactly the modes the mounts name.
    // SAFETY: umask only changes this process's file mode mask.
    let umask = unsafe { libc::umask(0) };
    for (i, op) in plan.mounts.iter().enumerate() {
        if plan.skip_mounts & 1 << i != 0 {
            continue;
        }
        apply_mount(op).map_err(|e| Failure(Step::Mount, i as u32, e))?;
    }
    if let Some(fds) = plan.fds.kit_mounts() {
        for (fd, &i) in fds.zip(&plan.kit_ops) {
            attach(fd, &plan.mounts[i]).map_err(|e| Failure(Step::Mount, i as u32, e))?;
        }
    }
    if let Some(secrets) = plan.secrets {
        secrets
            .mount()
            .map_err(|(step, e)| Failure(Step::MountSecrets, step as u32, e))?;
    }
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    Ok(())
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
                match bind(source, target, libc::MS_REC) {
                    Err(libc::ENOENT) => return Ok(()),
                    r => r?,
                }
                rc(libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                    std::ptr::null(),
                ))
            }
            MountOp::MaskDir { target, empty } => match bind(empty, target, 0) {
                // No such target (skipped there too) or no such source.
                Err(libc::ENOENT) => mask_dir(target),
                r => r,
            },
            MountOp::Mask { target, null } => match bind(null, target, 0) {
                Err(libc::ENOENT) => Ok(()),
                Err(libc::ENOTDIR) => mask_dir(target),
                r => r,
            },
        }
    }
}

/// Moves the detached mount `fd` (fresh_pool.rs) onto the target of `op`, which it
/// replaces, and closes the fd.
fn attach(fd: RawFd, op: &MountOp) -> Result<(), i32> {
    let MountOp::Mount { target, .. } = op else {
        return Err(libc::EINVAL);
    };
    // SAFETY: move_mount of our fd ("" with the empty-path flag names the fd itself)
    // onto a NUL-terminated target owned by the plan; then close of our fd.
    let r = unsafe {
        let r = libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        );
        libc::close(fd);
        r
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Binds `source` on `target` (with `flags` besides MS_BIND), returning errno on failure.
fn bind(source: &CString, target: &CString, flags: libc::c_ulong) -> Result<(), i32> {
    // SAFETY: NUL-terminated strings owned by the plan, null where mount accepts it.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | flags,
            std::ptr::null(),
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// An empty read-only tmpfs over `target`; nothing if it does not exist.
fn mask_dir(target: &CString) -> Result<(), i32> {
    // SAFETY: a NUL-terminated target owned by the plan and literals.
    let r = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"size=0".as_ptr().cast(),
        )
    };
    match (r, errno()) {
        (0, _) | (_, libc::ENOENT) => Ok(()),
        _ => Err(errno()),
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
    // From the container's root (our cwd after pivot_root), so the directory is on the
    // container's own mounts whatever the path says.
    // SAFETY: open_how is plain data, all-zero its default; the path is a prepared C string.
    let fd = unsafe {
        let mut how: libc::open_how = std::mem::zeroed();
        how.flags = WORKDIR_FLAGS as u64;
        how.resolve = WORKDIR_RESOLVE;
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            plan.workdir.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    check(fd, Step::OpenWorkdir)?;
    // SAFETY: fchdir then close of the fd just opened.
    let rc = unsafe { libc::fchdir(fd as RawFd) };
    let chdir = check(rc as _, Step::Chdir);
    // SAFETY: as above.
    unsafe { libc::close(fd as RawFd) };
    chdir?;
    // Belt and braces: the kernel prefixes a cwd outside our root with "(unreachable)"
    // (CVE-2024-21626), and any failure, ERANGE included, is refused.
    let mut buf = [0u8; libc::PATH_MAX as usize];
    // SAFETY: the raw syscall writes at most buf.len() bytes into buf.
    let n = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    if n < 0 {
        return Err(Failure(Step::WorkdirOutsideRoot, 0, errno()));
    }
    // The raw getcwd returns the length with the NUL.
    if buf.get(..n as usize) != Some(plan.workdir.to_bytes_with_nul()) {
        return Err(Failure(Step::WorkdirOutsideRoot, 0, libc::EXDEV));
    }
    Ok(())
}

fn drop_privileges(plan: &ChildPlan) -> StepResult {
    for cap in super::privileges::bits(plan.bounding_drop) {
        // SAFETY: prctl with integer arguments.
        check(
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } as _,
            Step::DropBoundingCaps,
        )?;
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
    // default set. Inheritable and ambient end empty (CVE-2022-29162): capset clears
    // every ambient capability that is not both permitted and inheritable (cap_capset),
    // so with an empty inheritable set no PR_CAP_AMBIENT_CLEAR_ALL is needed.
    let keep = if plan.uid == 0 { plan.caps.keep } else { 0 };
    set_caps(keep)
}

/// The kernel's capability header and data (version 3: two 32-bit words per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// capset(2) of the calling thread: effective = permitted = `keep`, inheritable empty.
fn set_caps(keep: u64) -> StepResult {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let word = |i: u32| CapData {
        effective: (keep >> (32 * i)) as u32,
        permitted: (keep >> (32 * i)) as u32,
        inheritable: 0,
    };
    let data = [word(0), word(1)];
    // SAFETY: capset with a version-3 header and its two data words, on the stack.
    check(
        unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) },
        Step::SetCaps,
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
    let Some(ruleset) = plan.fds.landlock() else {
        return Ok(());
    };
    // SAFETY: the ruleset fd the parent created, kept open for us (kept_fds.rs), flags 0.
    check(
        unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) },
        Step::Landlock,
    )
}

fn install_seccomp(plan: &ChildPlan) -> StepResult {
    seccompiler::apply_filter(plan.seccomp).map_err(|_| Failure(Step::Seccomp, 0, errno()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_array_points_into_its_strings_and_ends_with_null() {
        let strings = [CString::new("a").unwrap(), CString::new("bc").unwrap()];
        let array = CStrArray::new(&strings);
        // SAFETY: the array borrows `strings`, which are alive; it holds 3 pointers.
        let ptrs = unsafe { std::slice::from_raw_parts(array.as_ptr(), 3) };
        assert_eq!(ptrs[0], strings[0].as_ptr());
        assert_eq!(ptrs[1], strings[1].as_ptr());
        assert!(ptrs[2].is_null());
    }

    #[test]
    fn signal_reset_covers_every_signal_up_to_sigrtmax() {
        let signals: Vec<libc::c_int> = resettable_signals().collect();
        assert_eq!(signals.first(), Some(&1));
        assert_eq!(signals.last(), Some(&libc::SIGRTMAX()));
        assert!(signals.contains(&libc::SIGRTMIN()) && signals.contains(&32));
        assert!(!signals.contains(&libc::SIGKILL) && !signals.contains(&libc::SIGSTOP));
    }

    extern "C" fn ignore(_: libc::c_int) {}

    #[test]
    fn signal_reset_restores_default_of_a_caught_sigrtmax() {
        let sig = libc::SIGRTMAX();
        // SAFETY: installs a no-op handler on SIGRTMAX, which nothing in the tests uses.
        unsafe { libc::signal(sig, ignore as *const () as libc::sighandler_t) };
        reset_signal_handlers();
        // SAFETY: reads the disposition back (SIG_DFL leaves it as is).
        let now = unsafe { libc::signal(sig, libc::SIG_DFL) };
        assert_eq!(now, libc::SIG_DFL);
    }

    #[test]
    fn step_codes_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::from_u32(step as u32), Some(step));
        }
    }
}
