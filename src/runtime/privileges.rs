//! The capabilities a container keeps: a subset of Docker's default set.

use caps::{Capability, CapsHashSet};

use super::child::CapPlan;

/// Docker's defaults minus CAP_MKNOD (we have no device cgroup to stop a new node from
/// reaching a host disk), CAP_NET_RAW (the container has no network of its own) and
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
    Capability::CAP_NET_BIND_SERVICE,
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
            .map(|c| u32::from(c.index()))
            .collect(),
        keep: keep.iter().fold(0, |mask, c| mask | c.bitmask()),
    }
}
