//! Cgroup-bpf fallback for kernels without Landlock network rules (below 6.7), on pure
//! cgroup v2: no handler may connect or bind a TCP socket (IPv4 or IPv6), the client
//! socket it is handed (which lives in the host's network namespace) included; like
//! Landlock's rules, other socket types are left alone.
//!
//! A sock_addr hook runs the programs of the socket's cgroup, which for the handed socket
//! is the daemon's (it accepted it), not the container's: a hook on the container's cgroup
//! never sees the reconnect (measured on 6.18). So the program is attached to the daemon's
//! own v2 cgroup and decides by the calling task: denied (EPERM) when it is inside the
//! containers' parent cgroup, allowed otherwise (the daemon, anyone else). It also sees
//! the implicit connect of TCP Fast Open.
//!
//! Attached once at start with BPF_LINK_CREATE (5.7+): multi-attach, never replacing
//! anyone's programs, and the link goes with the daemon's fd (nothing left after a crash).
//! Nothing per container. On a v1/v2 hybrid the containers have no v2 cgroup of their
//! own under the parent, so the program could not tell them apart: not used there.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_FUNC_GET_CURRENT_ANCESTOR_CGROUP_ID: i32 = 123;

/// The hooks (enum bpf_attach_type). No UDP sendmsg hooks: a handler's own sockets live in
/// its empty network namespace, and the handed socket is TCP.
const HOOKS: [(u32, &str); 4] = [
    (8, "inet4_bind"),
    (9, "inet6_bind"),
    (10, "inet4_connect"),
    (11, "inet6_connect"),
];

#[derive(Debug, thiserror::Error)]
pub enum NetHookError {
    #[error("the containers are not in cgroup v2 of their own (v1/v2 hybrid): no cgroup-bpf hook can tell them apart")]
    NotUnifiedV2,
    #[error("reading /proc/self/cgroup failed: {0}")]
    OwnCgroup(#[source] io::Error),
    #[error("/proc/self/cgroup has no cgroup v2 (\"0::\") entry: {0:?}")]
    NoV2Entry(String),
    #[error("opening the daemon's cgroup {path} failed: {source}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the containers' parent cgroup {path} failed: {source}")]
    ParentCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("BPF_PROG_LOAD of the {hook} program failed: {source} (verifier: {log:?})")]
    ProgLoad {
        hook: &'static str,
        #[source]
        source: io::Error,
        log: String,
    },
    #[error(
        "BPF_LINK_CREATE of the {hook} hook on cgroup {path} failed (needs Linux 5.7): {source}"
    )]
    LinkCreate {
        hook: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The attached hooks: they stay as long as this value (its link fds) lives.
pub struct NetHook {
    _links: Vec<OwnedFd>,
    /// The daemon's cgroup the hooks sit on.
    pub cgroup: PathBuf,
}

/// Attaches the hooks to this process's v2 cgroup, denying tasks under `parent` (relative
/// to the v2 root, e.g. "faasd").
pub fn attach(parent: &str) -> Result<NetHook, NetHookError> {
    if !cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode() {
        return Err(NetHookError::NotUnifiedV2);
    }
    let parent = parent.trim_matches('/');
    let dir = Path::new(CGROUP2_ROOT).join(parent);
    // A v2 cgroup's id is its directory's inode number; its level is its depth (root 0).
    let id = std::fs::metadata(&dir)
        .map_err(|source| NetHookError::ParentCgroup {
            path: dir.clone(),
            source,
        })?
        .ino();
    let level = parent.split('/').filter(|c| !c.is_empty()).count() as i32;
    attach_program(id, level)
}

/// Whether the hooks can be attached here: loads and links a program that denies no one
/// (no cgroup has id 0), then drops it.
pub fn probe() -> Result<(), NetHookError> {
    if !cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode() {
        return Err(NetHookError::NotUnifiedV2);
    }
    attach_program(0, 1).map(drop)
}

fn attach_program(parent_id: u64, level: i32) -> Result<NetHook, NetHookError> {
    let cgroup = own_cgroup()?;
    let dir = File::open(&cgroup).map_err(|source| NetHookError::OpenCgroup {
        path: cgroup.clone(),
        source,
    })?;
    let insns = program(parent_id, level);
    let mut links = Vec::with_capacity(HOOKS.len());
    for (attach_type, hook) in HOOKS {
        let prog = load(&insns, attach_type, hook)?;
        links.push(
            link(&prog, &dir, attach_type).map_err(|source| NetHookError::LinkCreate {
                hook,
                path: cgroup.clone(),
                source,
            })?,
        );
        // The link holds the program.
    }
    Ok(NetHook {
        _links: links,
        cgroup,
    })
}

/// This process's v2 cgroup directory, from its "0::<path>" line.
fn own_cgroup() -> Result<PathBuf, NetHookError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(NetHookError::OwnCgroup)?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| NetHookError::NoV2Entry(text.clone()))?;
    Ok(Path::new(CGROUP2_ROOT).join(path.trim_start_matches('/')))
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

/// `struct bpf_sock_addr`'s `type` field.
const CTX_TYPE_OFFSET: i16 = 32;

/// ```c
/// if (ctx->type != SOCK_STREAM) return 1; // TCP only, as Landlock's rules
/// return bpf_get_current_ancestor_cgroup_id(level) == parent_id ? 0 : 1;
/// ```
fn program(parent_id: u64, level: i32) -> [Insn; 11] {
    const LDX_W: u8 = 0x61; // BPF_LDX | BPF_W | BPF_MEM
    const JNE_IMM: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
    const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_DW | BPF_IMM (two slots)
    const JNE_REG: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    [
        insn(LDX_W, 2, 1, CTX_TYPE_OFFSET, 0),
        insn(JNE_IMM, 2, 0, 7, libc::SOCK_STREAM),
        insn(MOV64_IMM, 1, 0, 0, level),
        insn(CALL, 0, 0, 0, BPF_FUNC_GET_CURRENT_ANCESTOR_CGROUP_ID),
        insn(LD_IMM64, 1, 0, 0, parent_id as u32 as i32),
        insn(0, 0, 0, 0, (parent_id >> 32) as u32 as i32),
        insn(JNE_REG, 0, 1, 2, 0),
        insn(MOV64_IMM, 0, 0, 0, 0), // deny: the caller gets EPERM
        insn(EXIT, 0, 0, 0, 0),
        insn(MOV64_IMM, 0, 0, 0, 1), // allow
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// The BPF_PROG_LOAD part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The BPF_LINK_CREATE part of `union bpf_attr`.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a live, zero-padded prefix of union bpf_attr for this command, of
    // the size passed; the kernel returns a new fd (close-on-exec) or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load(insns: &[Insn], attach_type: u32, hook: &'static str) -> Result<OwnedFd, NetHookError> {
    // The helper is not GPL-only; "GPL" costs nothing and keeps every helper available.
    const LICENSE: &[u8] = b"GPL\0";
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"faasd_nonet");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|source| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        NetHookError::ProgLoad {
            hook,
            source,
            log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
        }
    })
}

fn link(prog: &OwnedFd, cgroup: &File, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_splits_the_id_across_ld_imm64() {
        let p = program(0x1_0000_0002, 3);
        assert_eq!(p[2].imm, 3);
        assert_eq!((p[4].imm, p[5].imm), (2, 1));
        assert_eq!(p[6].regs, 0x10);
        // The non-TCP jump lands on "allow".
        assert_eq!((p[1 + 1 + p[1].off as usize].code, p[9].imm), (0xb7, 1));
    }
}
