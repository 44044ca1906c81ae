//! The capabilities a container keeps: a subset of Docker's default set.

use std::cell::Cell;
use std::io;

use caps::{Capability, CapsHashSet};

use super::child::CapPlan;

/// Docker's defaults minus CAP_MKNOD (we have no device cgroup to stop a new node from
/// reaching a host disk), CAP_NET_RAW (the container has no network of its own),
/// CAP_NET_BIND_SERVICE (the handed-over socket is in the host's network namespace: with
/// it a handler could bind a privileged host port where Landlock cannot stop it) and
/// CAP_AUDIT_WRITE.
const KEEP: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
];

/// The plan in the kernel's terms (numbers and masks), so that the child applies it with
/// raw prctl/capset calls: the caps crate allocates its errors and loses the errno.
pub fn cap_plan() -> CapPlan {
    let keep: CapsHashSet = KEEP.iter().copied().collect();
    // Only capabilities this kernel knows can be dropped from the bounding set.
    let known = caps::runtime::thread_all_supported();
    CapPlan {
        bounding_drop: known
            .difference(&keep)
            .fold(0, |mask, c| mask | c.bitmask()),
        keep: keep.iter().fold(0, |mask, c| mask | c.bitmask()),
    }
}

/// Drops from the calling thread's bounding set every capability no container keeps.
///
/// faasd's main calls it (native backend) while it is the only thread: every thread made
/// later inherits the smaller set, and so does every container cloned from one, which
/// then commits no credential change per dropped capability (~30 of them, each a
/// prepare_creds/commit_creds pair: 2 % of all CPU at saturation). The bounding set only
/// caps what an exec can gain: faasd's own capabilities are unchanged, and the native
/// backend execs nothing but containers.
pub fn limit_bounding_set() -> io::Result<()> {
    let plan = cap_plan();
    for cap in bits(plan.bounding_drop) {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    BOUNDING.with(|b| b.set(None));
    Ok(())
}

thread_local! {
    /// (asked, present): which of the capabilities `asked` this thread's bounding set held
    /// when first asked.
    static BOUNDING: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// Of `caps`, those the calling thread's bounding set may still hold: what its children
/// must drop themselves. Read once per thread: a bounding set only shrinks, and only by
/// its own thread's calls, so a capability found gone stays gone (one found present and
/// dropped since is dropped again by the child, which is harmless).
pub fn still_bounded(caps: u64) -> u64 {
    BOUNDING.with(|cached| match cached.get() {
        Some((asked, present)) if asked == caps => present,
        _ => {
            let present = bits(caps)
                // SAFETY: prctl with integer arguments; 1 means in the set, an error
                // (an unknown capability) counts as present so the child tries.
                .filter(|&cap| unsafe {
                    libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) != 0
                })
                .fold(0, |mask, cap| mask | 1 << cap);
            cached.set(Some((caps, present)));
            present
        }
    })
}

/// The capability numbers set in `mask`, lowest first.
pub fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |cap| mask & 1 << cap != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_lists_each_set_capability() {
        assert_eq!(bits(0).count(), 0);
        assert_eq!(
            bits(1 << 21 | 1 | 1 << 40).collect::<Vec<_>>(),
            vec![0, 21, 40]
        );
    }

    #[test]
    fn the_plan_drops_what_it_does_not_keep() {
        let plan = cap_plan();
        assert_eq!(plan.bounding_drop & plan.keep, 0);
        assert_ne!(plan.bounding_drop & 1 << 21, 0, "CAP_SYS_ADMIN is dropped");
        assert_eq!(plan.keep.count_ones() as usize, KEEP.len());
    }
}
