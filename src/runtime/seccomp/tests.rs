//! The tree-shaped program against the reference: the two linear seccompiler filters the
//! runtime installed before (the policy's first encoding), both run the way the kernel
//! runs them, by a small classic-BPF interpreter on synthetic seccomp_data.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::bpf_tree::{self, Action, Policy};
use super::*;

const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;
const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;

/// The filters as the runtime built them with seccompiler, in installation order: the
/// EPERM deny list, then clone3 -> ENOSYS.
fn reference_filters() -> Vec<BpfProgram> {
    let cond = |arg: usize, len, op, value| {
        SeccompCondition::new(arg as u8, len, op, value).expect("valid condition")
    };
    let rule = |conds| SeccompRule::new(conds).expect("valid rule");
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            rule(vec![cond(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )])
        })
        .collect();
    deny.insert(libc::SYS_clone, clone_rules);
    let fastopen = u64::from(MSG_FASTOPEN);
    for &(nr, arg) in SEND_FLAGS_ARG {
        let fastopen_rule = rule(vec![cond(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(fastopen),
            fastopen,
        )]);
        deny.entry(nr).or_default().push(fastopen_rule);
    }
    let (lo, hi) = SIOC_DEVICE_IOCTLS;
    deny.entry(libc::SYS_ioctl).or_default().push(rule(vec![
        cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ge, lo.into()),
        cond(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Le, hi.into()),
    ]));
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let errno_filter = |rules, errno: i32| -> BpfProgram {
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            TargetArch::x86_64,
        )
        .expect("valid filter")
        .try_into()
        .expect("compiles")
    };
    vec![
        errno_filter(deny, libc::EPERM),
        errno_filter(clone3, libc::ENOSYS),
    ]
}

/// seccomp_data as the 32-bit words BPF_LD|BPF_ABS reads (x86_64 is little-endian).
fn seccomp_data(nr: u32, arch: u32, args: [u64; 6]) -> [u32; 16] {
    let mut words = [0u32; 16];
    words[0] = nr;
    words[1] = arch;
    // words 2 and 3: instruction_pointer, which no filter here reads.
    for (i, arg) in args.iter().enumerate() {
        words[4 + 2 * i] = *arg as u32;
        words[5 + 2 * i] = (*arg >> 32) as u32;
    }
    words
}

/// Runs a classic BPF program (the subset seccomp filters use); returns the action and
/// the number of instructions executed.
fn run(prog: &[sock_filter], data: &[u32; 16]) -> (u32, usize) {
    let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
    loop {
        let insn = &prog[pc];
        steps += 1;
        pc += 1;
        let k = insn.k;
        let branch = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
        pc += match u32::from(insn.code) {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                assert!(k.is_multiple_of(4) && k < 64, "load at {k}");
                acc = data[k as usize / 4];
                0
            }
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => {
                acc &= k;
                0
            }
            c if c == libc::BPF_JMP | libc::BPF_JA => k as usize,
            c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => branch(acc == k),
            c if c == libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K => branch(acc > k),
            c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => branch(acc >= k),
            c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => branch(acc & k != 0),
            c if c == libc::BPF_RET | libc::BPF_K => return (k, steps),
            c => panic!("instruction {c:#x} at {} not interpreted", pc - 1),
        };
    }
}

/// The action the kernel takes with these filters installed in this order
/// (seccomp_run_filters): the most recently installed runs first, and a result replaces
/// the one so far only if its action sorts lower as a signed number (KILL_PROCESS lowest,
/// ALLOW highest): among equal actions the newest filter's data wins.
fn kernel_decision(filters: &[BpfProgram], data: &[u32; 16]) -> u32 {
    let action_only = |ret: u32| (ret & libc::SECCOMP_RET_ACTION_FULL) as i32;
    filters
        .iter()
        .rev()
        .fold(libc::SECCOMP_RET_ALLOW, |decision, filter| {
            let (ret, _) = run(filter, data);
            if action_only(ret) < action_only(decision) {
                ret
            } else {
                decision
            }
        })
}

/// Every syscall number a program may see: the native table and beyond, the x32 range
/// (the x32 bit with the same numbers), and the edges of the u32 space.
fn syscall_numbers() -> impl Iterator<Item = u32> {
    (0..=1023)
        .chain((0..=1023).map(|nr| X32_SYSCALL_BIT | nr))
        .chain([
            X32_SYSCALL_BIT - 1,
            0x7fff_ffff,
            0x8000_0000,
            u32::MAX - 1,
            u32::MAX,
        ])
}

/// Argument values around every constant a rule compares with, in the low word, in the
/// high word and in both, plus every single bit.
fn argument_values() -> Vec<u64> {
    let (lo, hi) = SIOC_DEVICE_IOCTLS;
    let mut low: Vec<u32> = vec![0, u32::MAX, MSG_FASTOPEN, MSG_FASTOPEN | 1, !MSG_FASTOPEN];
    low.extend(NAMESPACE_FLAGS.iter().map(|&f| f as u32));
    low.push(NAMESPACE_FLAGS.iter().fold(0, |m, &f| m | f as u32));
    low.extend([lo - 1, lo, lo + 1, (lo + hi) / 2, hi - 1, hi, hi + 1]);
    let mut values: Vec<u64> = (0..64).map(|bit| 1u64 << bit).collect();
    for v in low {
        let v = u64::from(v);
        values.extend([v, v << 32, v | 1 << 32, v | 0xffff_ffff_0000_0000]);
    }
    values.push(u64::MAX);
    values
}

/// One argument set to `value` at each position in turn, then all of them.
fn argument_sets(values: &[u64]) -> Vec<[u64; 6]> {
    let mut sets = vec![[0; 6]];
    for &value in values {
        for arg in 0..6 {
            let mut args = [0; 6];
            args[arg] = value;
            sets.push(args);
        }
        sets.push([value; 6]);
    }
    sets
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

#[test]
fn tree_program_decides_like_the_linear_filters_for_every_syscall_and_argument_but_x32() {
    let old = reference_filters();
    let new = [filter().expect("compiles")];
    let sets = argument_sets(&argument_values());
    let mut compared = 0usize;
    for nr in syscall_numbers() {
        for args in &sets {
            let data = seccomp_data(nr, AUDIT_ARCH_X86_64, *args);
            let got = kernel_decision(&new, &data);
            // The one change from the old filters, which let x32 syscalls through.
            let want = if (X32_SYSCALL_BIT..u32::MAX).contains(&nr) {
                libc::SECCOMP_RET_KILL_PROCESS
            } else {
                kernel_decision(&old, &data)
            };
            assert_eq!(
                got, want,
                "nr {nr:#x} args {args:#x?}: {got:#x} != {want:#x}"
            );
            compared += 1;
        }
        for arch in [AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64, 0, u32::MAX] {
            let data = seccomp_data(nr, arch, [0; 6]);
            let got = kernel_decision(&new, &data);
            assert_eq!(got, kernel_decision(&old, &data), "nr {nr} arch {arch:#x}");
            assert_eq!(got, libc::SECCOMP_RET_KILL_PROCESS);
        }
    }
    assert!(compared > 1_000_000, "{compared} cases");
}

/// The reference itself must mean what the policy says, or agreeing with it proves little.
#[test]
fn both_programs_answer_the_policy_s_landmarks() {
    let old = reference_filters();
    let new = [filter().expect("compiles")];
    let decide = |nr: libc::c_long, args: [u64; 6]| {
        let data = seccomp_data(nr as u32, AUDIT_ARCH_X86_64, args);
        let decision = kernel_decision(&new, &data);
        assert_eq!(decision, kernel_decision(&old, &data), "nr {nr}");
        decision
    };
    let allow = libc::SECCOMP_RET_ALLOW;
    let eperm = errno(libc::EPERM);
    let fastopen = u64::from(MSG_FASTOPEN);
    assert_eq!(decide(libc::SYS_getpid, [0; 6]), allow);
    assert_eq!(decide(libc::SYS_mount, [0; 6]), eperm);
    assert_eq!(decide(libc::SYS_io_uring_setup, [0; 6]), eperm);
    assert_eq!(decide(libc::SYS_clone3, [0; 6]), errno(libc::ENOSYS));
    let thread = (libc::CLONE_VM | libc::CLONE_THREAD) as u64;
    assert_eq!(decide(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), allow);
    let newuser = libc::CLONE_NEWUSER as u64;
    assert_eq!(decide(libc::SYS_clone, [newuser, 0, 0, 0, 0, 0]), eperm);
    assert_eq!(decide(libc::SYS_sendto, [3, 0, 0, fastopen, 0, 0]), eperm);
    assert_eq!(decide(libc::SYS_sendto, [3, 0, 0, 0, 0, 0]), allow);
    assert_eq!(decide(libc::SYS_sendmsg, [3, 0, fastopen, 0, 0, 0]), eperm);
    // SIOCGIFCONF denied, FIONREAD allowed.
    assert_eq!(decide(libc::SYS_ioctl, [3, 0x8912, 0, 0, 0, 0]), eperm);
    let fionread = libc::FIONREAD;
    assert_eq!(decide(libc::SYS_ioctl, [3, fionread, 0, 0, 0, 0]), allow);
}

#[test]
fn tree_program_is_shorter_and_its_paths_are_logarithmic() {
    let old: usize = reference_filters().iter().map(Vec::len).sum();
    let new = filter().expect("compiles");
    let longest_path = (0..=1023)
        .map(|nr| run(&new, &seccomp_data(nr, AUDIT_ARCH_X86_64, [0; 6])).1)
        .max()
        .expect("numbers");
    let longest_old_path = (0..=1023)
        .map(|nr| {
            let data = seccomp_data(nr, AUDIT_ARCH_X86_64, [0; 6]);
            reference_filters()
                .iter()
                .map(|f| run(f, &data).1)
                .sum::<usize>()
        })
        .max()
        .expect("numbers");
    eprintln!(
        "seccomp: {old} instructions in 2 filters (longest path {longest_old_path}) -> \
         {} in 1 (longest path {longest_path})",
        new.len()
    );
    assert!(new.len() < old / 2, "{} vs {old}", new.len());
    // Arch check, nr load, ~log2(ranges) comparisons, an argument block, the return.
    assert!(longest_path <= 16, "longest path {longest_path}");
}

#[test]
fn policy_without_rules_answers_its_default() {
    let policy = Policy {
        arch: AUDIT_ARCH_X86_64,
        wrong_arch: Action::KillProcess,
        other_abi_from: None,
        default: Action::Errno(libc::EPERM as u16),
        rules: BTreeMap::new(),
    };
    let prog = bpf_tree::compile(&policy).expect("compiles");
    for nr in [0, 1, 500, u32::MAX] {
        let data = seccomp_data(nr, AUDIT_ARCH_X86_64, [0; 6]);
        assert_eq!(run(&prog, &data).0, errno(libc::EPERM));
    }
    let foreign = seccomp_data(0, AUDIT_ARCH_I386, [0; 6]);
    assert_eq!(run(&prog, &foreign).0, libc::SECCOMP_RET_KILL_PROCESS);
}

/// How a forked child that installed some filters and made one syscall ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The syscall returned: 0, or the errno it failed with.
    Returned(i32),
    Killed(nix::sys::signal::Signal),
}

/// Makes `call` in a forked child after installing `filters` (in order), on the real
/// kernel: the interpreter above is only a model of what the kernel does.
fn outcome_in_child(filters: &[BpfProgram], call: impl Fn() -> libc::c_long) -> Outcome {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: the child only makes raw syscalls (prctl and seccomp in apply_filter, the
    // call) and _exits: nothing that needs another thread of the test harness.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            for f in filters {
                if seccompiler::apply_filter(f).is_err() {
                    // SAFETY: ends the forked child without running the harness's code.
                    unsafe { libc::_exit(255) };
                }
            }
            let code = match call() {
                -1 => std::io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(254),
                _ => 0,
            };
            // SAFETY: as above.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, 255) => panic!("installing the filter failed"),
            WaitStatus::Exited(_, code) => Outcome::Returned(code),
            WaitStatus::Signaled(_, signal, _) => Outcome::Killed(signal),
            other => panic!("child {other:?}"),
        },
    }
}

/// A syscall with raw arguments.
///
/// # Safety
/// The arguments must be ones the kernel rejects or handles without touching the
/// caller's memory (null pointers, invalid fds, refused flags).
unsafe fn raw_syscall(nr: libc::c_long, args: [libc::c_long; 6]) -> libc::c_long {
    // SAFETY: the caller's promise.
    unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) }
}

/// The kernel itself, with the old filters and with the new program, for a syscall of
/// each kind of rule, allowed and denied.
#[test]
fn kernel_enforces_the_same_decisions_with_both_programs() {
    use Outcome::Returned;
    let old = reference_filters();
    let new = [filter().expect("compiles")];
    let (eperm, fastopen) = (
        Some(Returned(libc::EPERM)),
        libc::MSG_FASTOPEN as libc::c_long,
    );
    let ns_clone = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long;
    // Null pointers, fd -1, flags the kernel refuses: no call touches memory.
    let cases: &[(&str, libc::c_long, [libc::c_long; 6], Option<Outcome>)] = &[
        ("getppid", libc::SYS_getppid, [0; 6], Some(Returned(0))),
        ("mount", libc::SYS_mount, [0; 6], eperm),
        ("io_uring_setup", libc::SYS_io_uring_setup, [0; 6], eperm),
        (
            "personality",
            libc::SYS_personality,
            [0xffff_ffff, 0, 0, 0, 0, 0],
            eperm,
        ),
        (
            "clone CLONE_NEWUSER",
            libc::SYS_clone,
            [ns_clone, 0, 0, 0, 0, 0],
            eperm,
        ),
        // CLONE_THREAD without CLONE_SIGHAND: the kernel's own EINVAL, past the filter.
        (
            "clone CLONE_THREAD",
            libc::SYS_clone,
            [libc::CLONE_THREAD as libc::c_long, 0, 0, 0, 0, 0],
            Some(Returned(libc::EINVAL)),
        ),
        (
            "clone3",
            libc::SYS_clone3,
            [0; 6],
            Some(Returned(libc::ENOSYS)),
        ),
        (
            "sendto MSG_FASTOPEN",
            libc::SYS_sendto,
            [-1, 0, 0, fastopen, 0, 0],
            eperm,
        ),
        (
            "sendto",
            libc::SYS_sendto,
            [-1, 0, 0, 0, 0, 0],
            Some(Returned(libc::EBADF)),
        ),
        (
            "sendmsg MSG_FASTOPEN",
            libc::SYS_sendmsg,
            [-1, 0, fastopen, 0, 0, 0],
            eperm,
        ),
        (
            "sendmmsg MSG_FASTOPEN",
            libc::SYS_sendmmsg,
            [-1, 0, 1, fastopen, 0, 0],
            eperm,
        ),
        (
            "ioctl SIOCGIFCONF",
            libc::SYS_ioctl,
            [-1, libc::SIOCGIFCONF as libc::c_long, 0, 0, 0, 0],
            eperm,
        ),
        (
            "ioctl FIONREAD",
            libc::SYS_ioctl,
            [-1, libc::FIONREAD as libc::c_long, 0, 0, 0, 0],
            Some(Returned(libc::EBADF)),
        ),
        ("syscall 1000", 1000, [0; 6], Some(Returned(libc::ENOSYS))),
        ("syscall -1", -1, [0; 6], Some(Returned(libc::ENOSYS))),
    ];
    for (name, nr, args, expected) in cases {
        // SAFETY: see the table.
        let call = || unsafe { raw_syscall(*nr, *args) };
        let with_old = outcome_in_child(&old, call);
        let with_new = outcome_in_child(&new, call);
        assert_eq!(with_new, with_old, "{name}");
        if let Some(expected) = expected {
            assert_eq!(&with_new, expected, "{name}");
        }
    }
    // Depends on the kernel's ia32 emulation; SIGSYS where it has it (arch I386).
    let with_old = outcome_in_child(&old, int80_getpid);
    let with_new = outcome_in_child(&new, int80_getpid);
    assert_eq!(with_new, with_old, "i386 getpid (int 0x80)");
}

/// x32 syscalls reach the kernel as x86_64 ones with the x32 bit in the number: the old
/// filters let them all through (the syscall itself ran where the kernel has x32; ENOSYS
/// elsewhere), the new program kills the process before the kernel looks at the number.
#[test]
fn kernel_kills_every_x32_syscall() {
    let old = reference_filters();
    let new = [filter().expect("compiles")];
    let x32 = |nr: libc::c_long| libc::c_long::from(X32_SYSCALL_BIT) | nr;
    let newuser = libc::CLONE_NEWUSER as libc::c_long;
    let cases = [
        ("x32 getpid", x32(libc::SYS_getpid), [0; 6]),
        ("x32 mount", x32(libc::SYS_mount), [0; 6]),
        (
            "x32 unshare",
            x32(libc::SYS_unshare),
            [newuser, 0, 0, 0, 0, 0],
        ),
        (
            "x32 personality",
            x32(libc::SYS_personality),
            [0xffff_ffff, 0, 0, 0, 0, 0],
        ),
    ];
    let sigsys = Outcome::Killed(nix::sys::signal::Signal::SIGSYS);
    for (name, nr, args) in cases {
        // SAFETY: null pointers and a flag set unshare accepts or refuses without memory.
        let call = || unsafe { raw_syscall(nr, args) };
        assert_eq!(outcome_in_child(&new, call), sigsys, "{name}");
        assert_ne!(outcome_in_child(&old, call), sigsys, "{name} (old filters)");
    }
}
/// getpid through the i386 entry point: seccomp sees AUDIT_ARCH_I386 (where the kernel
/// has ia32 emulation).
fn int80_getpid() -> libc::c_long {
    let ret: i32;
    // SAFETY: int 0x80 with eax = 20 (i386 getpid) takes no pointer; the kernel clobbers
    // nothing but eax (r8-r11 are declared clobbered to be safe).
    unsafe {
        std::arch::asm!(
            "int 0x80",
            inlateout("eax") 20 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        )
    };
    libc::c_long::from(ret)
}
