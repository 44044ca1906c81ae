//! Kernel tests: namespaces, mounts, cgroups, netlink and fd passing on a real kernel, as
//! root, never mocked. The same binary runs on the machine and inside the vmtest VM.
//!
//! Before any thread exists, the harness moves the whole test process into a network and a
//! mount namespace of its own, so that addresses such as 10.0.0.x and every mount the tests
//! make stay inside it and vanish with it.

mod api_security;
mod apply;
mod archives;
mod cgroup_pool;
mod child_security;
mod daemon;
mod e2e;
mod function_config;
mod function_logs;
mod gateway;
mod image_security;
mod net_isolation;
mod pools;
mod prewarm;
mod registry;
mod request_security;
mod runtime;
mod secrets;
mod support;
mod systemd_unit;
mod two_node;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let args = Arguments::from_args();
    let root = nix::unistd::Uid::effective().is_root();
    if root {
        support::enter_private_namespaces();
    } else if std::env::var_os("FAASD_SKIP_KERNEL_TESTS").is_some_and(|v| v == "1") {
        eprintln!("FAASD_SKIP_KERNEL_TESTS=1: not root, every kernel test is marked ignored");
    } else {
        // A green run without root would have tested nothing of the kernel: refuse it.
        eprintln!(
            "kernel tests need root (namespaces, mounts, cgroups, netlink); \
             run as root, or set FAASD_SKIP_KERNEL_TESTS=1 to skip them knowingly"
        );
        std::process::exit(1);
    }
    let trials: Vec<Trial> = runtime::tests()
        .into_iter()
        .chain(daemon::tests())
        .chain(e2e::tests())
        .chain(gateway::tests())
        .chain(archives::tests())
        .chain(registry::tests())
        .chain(net_isolation::tests())
        .chain(pools::tests())
        .chain(cgroup_pool::tests())
        .chain(child_security::tests())
        .chain(request_security::tests())
        .chain(api_security::tests())
        .chain(image_security::tests())
        .chain(prewarm::tests())
        .chain(function_config::tests())
        .chain(function_logs::tests())
        .chain(secrets::tests())
        .chain(apply::tests())
        .chain(systemd_unit::tests())
        .chain(two_node::tests())
        .map(|t| t.with_ignored_flag(!root))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
