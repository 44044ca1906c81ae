//! The seccomp filter every container runs under, built once per process.
//!
//! A deny list in Docker's spirit: syscalls a function has no business making fail with
//! EPERM; everything else is allowed so arbitrary images keep working. clone3 gets ENOSYS,
//! as in Docker: its flags sit behind a pointer the filter cannot inspect, and libc falls
//! back to clone, whose namespace flags the filter checks. Any arch but x86_64 kills the
//! process, and so does any x32 syscall: the kernel reports those as x86_64, with the x32
//! bit in the number, so without that check every rule here could be bypassed on a kernel
//! that runs x32 (CONFIG_X86_X32_ABI, e.g. Debian's with syscall.x32=y). The policy below
//! is compiled into one tree-shaped BPF program (bpf_tree.rs).
//!
//! Compared with Docker's default profile (moby/profiles seccomp/default.json, 2025: an
//! allow list, EPERM by default, some entries allowed only when the container holds a
//! capability). Our containers never hold CAP_SYS_ADMIN, SYS_MODULE, SYS_BOOT, SYS_TIME,
//! SYS_PTRACE, SYS_RAWIO, SYS_PACCT, SYSLOG, BPF, PERFMON or DAC_READ_SEARCH, so Docker's
//! capability-gated entries are denied in both. Differences:
//! - syscalls newer than the profile: Docker denies unknown ones, we allow them (images
//!   keep working on new kernels; each new risky family must be added here, as io_uring
//!   was);
//! - io_uring_setup/enter/register: denied in both (Docker since 2023): its work runs in
//!   kernel threads that seccomp never sees, and it has been a steady source of local
//!   privilege escalations;
//! - chroot: Docker allows it with CAP_SYS_CHROOT (which we keep); we deny it: no function
//!   needs it, and it is a classic step of escapes;
//! - sethostname/setdomainname: Docker allows them with CAP_SYS_ADMIN only; we allow them
//!   (the UTS namespace is the container's own, and CAP_SYS_ADMIN is dropped anyway);
//! - name_to_handle_at: Docker allows it; we deny it (file handles only matter with
//!   open_by_handle_at, which both deny; it leaks inode numbers of the host's filesystems);
//! - personality: Docker allows the 5 harmless personas (0, 8, 0x20000, 0x20008, query);
//!   we deny it entirely (ADDR_NO_RANDOMIZE is the reason to filter it; no handler needs
//!   any persona);
//! - socket: Docker allows only address families < 12 and a list above (no AF_VSOCK and
//!   a few exotic ones); we allow every family: the container's network namespace is
//!   empty, and the handed-over TCP socket is the only way out (netns and Landlock are
//!   what confines it, not seccomp);
//! - kcmp, pidfd_getfd, process_madvise, process_vm_readv/writev, ptrace: Docker allows
//!   them with CAP_SYS_PTRACE (process_vm_* and ptrace also without, on kernels >= 4.8);
//!   we deny ptrace and process_vm_* (no debugger runs in a function) and allow kcmp,
//!   pidfd_getfd and process_madvise, which need PTRACE_MODE checks the container's own
//!   pid namespace bounds;
//! - get_mempolicy, mbind, set_mempolicy(_home_node): Docker needs CAP_SYS_NICE;
//!   move_pages and obsolete ones (uselib, ustat, sysfs, ...): Docker denies; we allow
//!   them all: they act on the caller's own memory or are inert on current kernels;
//! - fanotify_init, lsm_*_self_attr, quotactl_fd: Docker needs CAP_SYS_ADMIN; we allow
//!   them: unprivileged fanotify (5.13+) only sees what the caller can read, the lsm calls
//!   act on the caller itself, quota changes still need CAP_SYS_ADMIN in the kernel;
//! - adjtimex, clock_adjtime: Docker allows them (read-only without CAP_SYS_TIME); we deny
//!   them: nothing in a function needs the kernel clock's tuning;
//! - syslog, acct, swapon/swapoff, reboot, kexec_*, *_module, bpf, perf_event_open,
//!   userfaultfd, keyctl/add_key/request_key, open_by_handle_at, mount and the new mount
//!   API, umount2, pivot_root, unshare, setns, iopl/ioperm, settimeofday, clock_settime,
//!   quotactl, lookup_dcookie, vhangup: denied in both (vhangup: no terminal anyway);
//! - clone with a namespace flag: denied in both; clone3: ENOSYS in both;
//! - x32 syscalls: Docker filters them with the same rules (x32 is in its arch list); we
//!   kill the process, as for every ABI but x86_64 (no function image is x32).

mod bpf_tree;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use seccompiler::BpfProgram;

use self::bpf_tree::{Action, ArgCheck, ArgTest, Policy, Rule};
use super::error::{Result, RuntimeError};

/// AUDIT_ARCH_X86_64 (linux/audit.h): EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// x32 syscalls come with AUDIT_ARCH_X86_64 too, their number ORed with this bit
/// (asm/unistd.h __X32_SYSCALL_BIT).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_quotactl,
    libc::SYS_lookup_dcookie,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_vhangup,
    libc::SYS_syslog,
    libc::SYS_personality,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// clone(2) flags that create namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWTIME,
];

/// The flag that makes sendto/sendmsg an implicit connect (TCP Fast Open): it reaches the
/// protocol's connect without the LSM connect hook Landlock checks, so seccomp refuses it.
const MSG_FASTOPEN: u32 = libc::MSG_FASTOPEN as u32;

/// (syscall, index of its flags argument) for every way to send with MSG_FASTOPEN.
const SEND_FLAGS_ARG: &[(libc::c_long, usize)] = &[
    (libc::SYS_sendto, 3),
    (libc::SYS_sendmsg, 2),
    (libc::SYS_sendmmsg, 3),
];

/// The socket ioctls that read or change network devices (SIOCGIFCONF, SIOCGIFADDR, ...,
/// SIOCDEVPRIVATE): on the handed-over socket they act on the host's network namespace.
const SIOC_DEVICE_IOCTLS: (u32, u32) = (0x8910, 0x89ff);

const EPERM: Action = Action::Errno(libc::EPERM as u16);

/// Builds the program, to be installed as the container's last setup step.
pub fn filter() -> Result<BpfProgram> {
    bpf_tree::compile(&policy()).map_err(|e| RuntimeError::Seccomp(e.to_string()))
}

fn nr(syscall: libc::c_long) -> u32 {
    u32::try_from(syscall).expect("x86_64 syscall numbers are small and positive")
}

fn policy() -> Policy {
    let mut rules: BTreeMap<u32, Rule> = DENIED
        .iter()
        .map(|&syscall| (nr(syscall), Rule::Always(EPERM)))
        .collect();
    // Every namespace flag lives in the low word of clone's 64-bit flags argument.
    let namespace_mask = NAMESPACE_FLAGS.iter().fold(0, |mask, &f| mask | f as u32);
    deny_if(
        &mut rules,
        libc::SYS_clone,
        0,
        ArgTest::AnyBit(namespace_mask),
    );
    // Rules that keep the handed-over socket (host network namespace) from reaching
    // anything new; bind and connect themselves are Landlock's (see landlock.rs).
    for &(syscall, arg) in SEND_FLAGS_ARG {
        deny_if(&mut rules, syscall, arg, ArgTest::AnyBit(MSG_FASTOPEN));
    }
    let (lo, hi) = SIOC_DEVICE_IOCTLS;
    deny_if(&mut rules, libc::SYS_ioctl, 1, ArgTest::InRange(lo, hi));
    rules.insert(
        nr(libc::SYS_clone3),
        Rule::Always(Action::Errno(libc::ENOSYS as u16)),
    );
    Policy {
        arch: AUDIT_ARCH_X86_64,
        wrong_arch: Action::KillProcess,
        other_abi_from: Some(X32_SYSCALL_BIT),
        default: Action::Allow,
        rules,
    }
}

/// EPERM for `syscall` when `test` holds on argument `arg` (or any earlier check does).
fn deny_if(rules: &mut BTreeMap<u32, Rule>, syscall: libc::c_long, arg: usize, test: ArgTest) {
    let check = ArgCheck { arg, test };
    match rules.entry(nr(syscall)).or_insert_with(|| Rule::IfAny {
        checks: Vec::new(),
        then: EPERM,
    }) {
        Rule::IfAny { checks, .. } => checks.push(check),
        // Denied whatever its arguments already.
        Rule::Always(_) => {}
    }
}
