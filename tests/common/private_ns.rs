//! Shared by the kernel tests and the benchmarks (included with `#[path]`).

/// Moves this process into a network and a mount namespace of its own, mounts private;
/// call before any thread starts. Addresses such as 10.0.x.y and every mount made
/// afterwards exist only inside them and vanish with the process.
pub fn enter_private_namespaces() {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)
        .expect("unshare a network and a mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make the mount namespace private");
}
