//! Compiles a seccomp policy into one classic BPF program shaped as a binary search tree
//! over syscall numbers.
//!
//! seccompiler (and libseccomp by default) emit a linear list: one comparison per syscall
//! with a rule, so an allowed syscall walks the whole list. The kernel runs the filter
//! on every syscall that its per-filter action cache does not answer, and it builds that
//! cache at attach time by emulating the filter once for every syscall number
//! (seccomp_cache_prepare): the attach cost grows with the length of the paths. Here the
//! syscall number space is cut into ranges of equal treatment (runs of denied numbers
//! merge, and so do the allowed gaps between them) and a balanced tree of `jge` picks the
//! range in about log2(ranges) comparisons. Only the syscalls whose rule looks at an
//! argument load one, in a block of their own after the tree. Every return is shared
//! (one `ret` per action, at the end), so a leaf of the tree costs no instruction.
//!
//! The nr part uses only the instructions the kernel's cache emulation understands (load
//! of nr/arch, jeq/jge/jset with a constant, ret), so every syscall allowed whatever its
//! arguments still lands in the cache (which holds allows only).

use std::collections::BTreeMap;
use std::mem::offset_of;

use seccompiler::{sock_filter, BpfProgram};

/// What the filter answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Errno(u16),
    KillProcess,
}

impl Action {
    fn ret_value(self) -> u32 {
        match self {
            Action::Allow => libc::SECCOMP_RET_ALLOW,
            Action::Errno(errno) => libc::SECCOMP_RET_ERRNO | u32::from(errno),
            Action::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        }
    }
}

/// A test on the low 32 bits of one syscall argument (little-endian x86_64: the first
/// word of the 64-bit slot in seccomp_data).
#[derive(Clone, Copy, Debug)]
pub enum ArgTest {
    /// Any bit of the mask is set.
    AnyBit(u32),
    /// Within lo..=hi.
    InRange(u32, u32),
}

#[derive(Clone, Copy, Debug)]
pub struct ArgCheck {
    /// Index of the argument, 0..=5.
    pub arg: usize,
    pub test: ArgTest,
}

/// The treatment of one syscall number.
#[derive(Clone, Debug)]
pub enum Rule {
    /// This action whatever the arguments.
    Always(Action),
    /// `then` if any of the checks holds, the policy's default action otherwise.
    IfAny { checks: Vec<ArgCheck>, then: Action },
}

pub struct Policy {
    /// The AUDIT_ARCH_* value the program accepts; any other arch gets `wrong_arch`.
    pub arch: u32,
    pub wrong_arch: Action,
    /// Syscall numbers from this one on belong to another ABI that the kernel reports
    /// under the same arch value (x86_64's x32: nr | 0x40000000) and get `wrong_arch`
    /// too; -1 excepted, a syscall a tracer skipped (as libseccomp does). None: no such
    /// ABI. Every rule's number must be below it.
    pub other_abi_from: Option<u32>,
    /// For the syscall numbers without a rule.
    pub default: Action,
    pub rules: BTreeMap<u32, Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("a jump of {0} instructions does not fit classic BPF's 8-bit offset")]
    JumpTooFar(usize),
    #[error("the program has {0} instructions, more than the kernel's {max}", max = libc::BPF_MAXINSNS)]
    TooLong(usize),
}

const LD_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JGT: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

const NR_OFFSET: u32 = offset_of!(libc::seccomp_data, nr) as u32;
const ARCH_OFFSET: u32 = offset_of!(libc::seccomp_data, arch) as u32;

/// Offset of the low word of argument `arg` (little-endian).
fn arg_low_offset(arg: usize) -> u32 {
    (offset_of!(libc::seccomp_data, args) + arg * size_of::<u64>()) as u32
}

pub fn compile(policy: &Policy) -> Result<BpfProgram, TreeError> {
    let mut asm = Asm::default();
    let mut rets = Returns::default();

    asm.stmt(LD_ABS, ARCH_OFFSET);
    let nr_load = asm.label();
    let wrong_arch = rets.label(&mut asm, policy.wrong_arch);
    asm.jump(JEQ, policy.arch, nr_load, wrong_arch);
    asm.bind(nr_load);
    asm.stmt(LD_ABS, NR_OFFSET);

    let default = rets.label(&mut asm, policy.default);
    let mut blocks = Vec::new();
    let mut ranges = Ranges::new(default);
    for (&nr, rule) in &policy.rules {
        let target = match rule {
            Rule::Always(action) => rets.label(&mut asm, *action),
            Rule::IfAny { checks, then } => {
                let block = asm.label();
                blocks.push((block, checks, rets.label(&mut asm, *then)));
                block
            }
        };
        ranges.set(nr, target);
        if let Some(next) = nr.checked_add(1) {
            ranges.set(next, default);
        }
    }
    if let Some(from) = policy.other_abi_from {
        assert!(
            policy.rules.keys().all(|&nr| nr < from),
            "a rule for a number of the other ABI"
        );
        ranges.set(from, wrong_arch);
        ranges.set(u32::MAX, default);
    }
    let root = route(&mut asm, &ranges.0);
    if root == default {
        // No rule at all: the tree is a single leaf, reached by no comparison.
        asm.goto(default);
    }

    for (block, checks, then) in blocks {
        asm.bind(block);
        for (i, check) in checks.iter().enumerate() {
            let next = if i + 1 == checks.len() {
                default
            } else {
                asm.label()
            };
            asm.stmt(LD_ABS, arg_low_offset(check.arg));
            match check.test {
                ArgTest::AnyBit(mask) => asm.jump(JSET, mask, then, next),
                ArgTest::InRange(lo, hi) => {
                    let at_least_lo = asm.label();
                    asm.jump(JGE, lo, at_least_lo, next);
                    asm.bind(at_least_lo);
                    asm.jump(JGT, hi, next, then);
                }
            }
            if next != default {
                asm.bind(next);
            }
        }
    }

    for (action, label) in rets.0 {
        asm.bind(label);
        asm.stmt(RET, action.ret_value());
    }
    asm.finish()
}

/// The syscall number space as (first number, where to go) ranges, in order, adjacent
/// ones always with different targets.
struct Ranges(Vec<(u32, Label)>);

impl Ranges {
    fn new(default: Label) -> Self {
        Ranges(vec![(0, default)])
    }

    /// From `start` on (until the next set), go to `target`. Starts must not decrease.
    fn set(&mut self, start: u32, target: Label) {
        if self.0.last().is_some_and(|&(s, _)| s == start) {
            self.0.pop();
        }
        if self.0.last().map(|&(_, t)| t) != Some(target) {
            self.0.push((start, target));
        }
    }
}

/// Emits the comparisons that send the number in the accumulator to its range's target;
/// returns the label to jump to for that (a leaf is its target itself: no instruction).
fn route(asm: &mut Asm, ranges: &[(u32, Label)]) -> Label {
    if let [(_, target)] = ranges {
        return *target;
    }
    let node = asm.label();
    asm.bind(node);
    let (below, above) = ranges.split_at(ranges.len() / 2);
    let at = asm.placeholder();
    // The lower half first: when it is a subtree, it starts at the next instruction.
    let lower = route(asm, below);
    let upper = route(asm, above);
    asm.code[at] = Insn::Jump(JGE, above[0].0, upper, lower);
    node
}

/// One shared `ret` per action, emitted at the end of the program.
#[derive(Default)]
struct Returns(BTreeMap<Action, Label>);

impl Returns {
    fn label(&mut self, asm: &mut Asm, action: Action) -> Label {
        *self.0.entry(action).or_insert_with(|| asm.label())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

enum Insn {
    Stmt(u16, u32),
    /// code, k, target if true, target if false.
    Jump(u16, u32, Label, Label),
    /// Unconditional jump (its offset is k).
    Goto(Label),
}

/// A minimal assembler: jumps name labels, resolved to forward offsets at the end.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    /// Where each label is bound, once it is.
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.code.len());
    }

    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push(Insn::Stmt(code, k));
    }

    fn jump(&mut self, code: u16, k: u32, jt: Label, jf: Label) {
        self.code.push(Insn::Jump(code, k, jt, jf));
    }

    fn goto(&mut self, target: Label) {
        self.code.push(Insn::Goto(target));
    }

    /// Room for an instruction written later (`code[index] = ...`).
    fn placeholder(&mut self) -> usize {
        self.stmt(RET, 0);
        self.code.len() - 1
    }

    fn finish(self) -> Result<BpfProgram, TreeError> {
        if self.code.len() > libc::BPF_MAXINSNS as usize {
            return Err(TreeError::TooLong(self.code.len()));
        }
        let distance = |from: usize, to: Label| -> usize {
            let to = self.labels[to.0].expect("every jump target is bound");
            // Classic BPF only jumps forward; every label is bound after its users.
            assert!(to > from, "backward jump from {from} to {to}");
            to - from - 1
        };
        let offset = |from: usize, to: Label| -> Result<u8, TreeError> {
            let d = distance(from, to);
            u8::try_from(d).map_err(|_| TreeError::JumpTooFar(d))
        };
        self.code
            .iter()
            .enumerate()
            .map(|(pc, insn)| {
                Ok(match *insn {
                    Insn::Stmt(code, k) => sock_filter {
                        code,
                        jt: 0,
                        jf: 0,
                        k,
                    },
                    Insn::Jump(code, k, jt, jf) => sock_filter {
                        code,
                        jt: offset(pc, jt)?,
                        jf: offset(pc, jf)?,
                        k,
                    },
                    Insn::Goto(target) => sock_filter {
                        code: JA,
                        jt: 0,
                        jf: 0,
                        k: distance(pc, target) as u32,
                    },
                })
            })
            .collect()
    }
}
