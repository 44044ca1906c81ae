//! Pooled network namespaces (src/runtime/netns_pool.rs): a namespace is reused only
//! once proven empty, and nothing of one container reaches another.
//!
//! Each test has a runtime of its own with a pool of one, so which namespace a container
//! gets is known: a returned namespace is taken before the spare one made meanwhile. The
//! containers run rootfs-tools/netns-tenant.c (static) in the busybox root.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use faasd::runtime::{
    Container, ContainerSpec, ControlSocketOwner, MountTemplate, NetnsStats, Resources, Runtime,
};
use libtest_mimic::{Failed, Trial};

use crate::daemon::{http_get, with_daemon, Run};
use crate::support::{self, ensure, unique, TestResult, CGROUP_PARENT};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test(
            "pools::concurrent_containers_of_one_function_cannot_reach_each_other",
            concurrent_containers_cannot_reach_each_other,
        ),
        Trial::test(
            "pools::a_namespace_with_a_socket_passed_out_is_dropped",
            socket_passed_out_is_dropped,
        ),
        Trial::test(
            "pools::a_namespace_with_an_scm_rights_cycle_in_flight_is_dropped",
            scm_rights_cycle_is_dropped,
        ),
        Trial::test(
            "pools::a_namespace_whose_link_address_or_route_changed_is_dropped",
            changed_namespace_is_dropped,
        ),
        Trial::test(
            "pools::a_reused_namespace_is_empty_for_its_next_container",
            reused_namespace_is_empty,
        ),
        Trial::test(
            "pools::the_daemon_reuses_namespaces_and_counts_them_in_metrics",
            daemon_reuses_namespaces,
        ),
    ]
}

const WAIT: Duration = Duration::from_secs(20);

fn pool_runtime() -> Result<Runtime, Failed> {
    Ok(Runtime::new(CGROUP_PARENT)?.with_netns_pool(1)?)
}

/// The busybox root with /netns-tenant, compiled once.
fn tenant_rootfs() -> Result<&'static Path, Failed> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let dir = support::state_dir().join("tenant-rootfs");
        support::make_rootfs(&dir);
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/rootfs-tools/netns-tenant.c");
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-o"])
            .arg(dir.join("netns-tenant"))
            .arg(src)
            .output()
            .map_err(|e| format!("running gcc (Debian package gcc): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "compiling {src}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir)
    });
    root.as_deref().map_err(|e| Failed::from(e.as_str()))
}

/// A running container and the lines of its output, as they come.
struct Running {
    container: Container,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// With `control`, the container gets a control socket (its image template's),
    /// whose listener is returned beside it.
    fn start(rt: &Runtime, script: &str, control: bool) -> Result<Self, Failed> {
        Ok(Self::start_with(rt, script, control)?.0)
    }

    fn start_with(
        rt: &Runtime,
        script: &str,
        control: bool,
    ) -> Result<(Self, Option<UnixListener>), Failed> {
        let (rd, wr): (OwnedFd, OwnedFd) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
        let id = unique("pool");
        let argv = ["/bin/sh".into(), "-c".into(), script.to_string()];
        let env = ["PATH=/bin".to_string()];
        let owner = control.then_some(ControlSocketOwner { uid: 0, gid: 0 });
        let (template, listener) = MountTemplate::build(tenant_rootfs()?, owner)?;
        let spec = ContainerSpec {
            id: &id,
            rootfs: tenant_rootfs()?,
            template: Some(&template),
            argv: &argv,
            env: &env,
            workdir: "/",
            uid: 0,
            gid: 0,
            hostname: "tenant",
            resources: Resources::default(),
            control_socket: None,
            secrets: &faasd::runtime::secrets::NO_SECRETS,
            stdout: Some(wr.as_fd()),
            stderr: Some(wr.as_fd()),
        };
        let container = rt.spawn(&spec)?;
        drop(wr);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(fs::File::from(rd)).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let running = Running {
            container,
            lines,
            seen: Vec::new(),
        };
        Ok((running, listener))
    }

    /// Waits until a line equal to `want` has been printed.
    fn until(&mut self, want: &str) -> TestResult {
        while !self.seen.iter().any(|l| l == want) {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    return Err(
                        format!("no {want:?} line; the container printed {:?}", self.seen).into(),
                    )
                }
            }
        }
        Ok(())
    }

    /// Waits for the container to exit (killing it first if `kill`), tears it down
    /// (which returns its namespace to the pool), and returns all it printed.
    fn finish(mut self, kill: bool) -> Result<Vec<String>, Failed> {
        if kill {
            self.container.kill();
        }
        let status = self.container.wait_blocking(WAIT)?;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        if !kill && !status.success() {
            return Err(format!("container failed: {status:?}, printed {:?}", self.seen).into());
        }
        Ok(self.seen)
    }
}

/// The value printed after "KEY=" or "KEY: ".
fn field<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix('=').or_else(|| r.strip_prefix(": ")))
    })
}

fn has(lines: &[String], want: &str) -> TestResult {
    ensure(
        lines.iter().any(|l| l == want),
        format!("expected {want:?} in {lines:?}"),
    )
}

/// Prints the namespace's identity first.
const NS: &str = "echo ns=$(readlink /proc/self/ns/net); ";

fn concurrent_containers_cannot_reach_each_other() -> TestResult {
    let rt = pool_runtime()?;
    let name = unique("tenant");
    let mut a = Running::start(
        &rt,
        &format!(
            "{NS}ip link set lo up 2>&1; echo lo-up=$?; exec /netns-tenant listen {name} 8080"
        ),
        false,
    )?;
    a.until("listening")?;
    let b = Running::start(
        &rt,
        &format!("{NS}exec /netns-tenant reach {name} 8080"),
        false,
    )?;
    let b = b.finish(false)?;
    let a = a.finish(true)?;
    // Without CAP_NET_ADMIN, lo stays down.
    ensure(
        field(&a, "lo-up") != Some("0"),
        format!("lo came up: {a:?}"),
    )?;
    has(&a, "listen abstract: ok")?;
    has(&a, "bind udp: ok")?;
    // Landlock (6.7+) denies the TCP listener itself; below, it listens.
    tcp_refused(&a, "listen tcp", "ok")?;
    // The tenant reaches its own abstract socket: the name is really bound there.
    has(&a, "connect abstract: ok")?;
    ensure(
        field(&a, "ns").is_some() && field(&a, "ns") != field(&b, "ns"),
        format!("same namespace: {a:?} {b:?}"),
    )?;
    unreachable(&b)
}

/// What the other container (or the next one) gets trying the tenant's sockets.
fn unreachable(lines: &[String]) -> TestResult {
    has(lines, "connect abstract: Connection refused")?;
    has(lines, "send udp: Network is unreachable")?;
    tcp_refused(lines, "connect tcp", "Network is unreachable")
}

/// `step` on TCP: `without_landlock` where Landlock network rules are not enforced,
/// "Permission denied" where they are.
fn tcp_refused(lines: &[String], step: &str, without_landlock: &str) -> TestResult {
    let got = field(lines, step);
    ensure(
        got == Some(without_landlock) || got == Some("Permission denied"),
        format!("{step}: {got:?} in {lines:?}"),
    )
}

fn socket_passed_out_is_dropped() -> TestResult {
    let rt = pool_runtime()?;
    let before = rt.netns_stats();
    let (tenant, listener) =
        Running::start_with(&rt, &format!("{NS}exec /netns-tenant pass-out"), true)?;
    let listener = listener.ok_or("no control socket")?;
    let (conn, _) = listener.accept()?;
    // A UDP socket of the container's namespace, kept after its last process is gone.
    let held = faasd::fdpass::recv_fd(&conn)?;
    let out = tenant.finish(false)?;
    has(&out, "pass out: ok")?;
    let after = rt.netns_stats();
    let next = Running::start(&rt, NS, false)?.finish(false)?;
    drop(held);
    dropped_not_reused(before, after, &out, &next)
}

fn scm_rights_cycle_is_dropped() -> TestResult {
    let rt = pool_runtime()?;
    let before = rt.netns_stats();
    let out =
        Running::start(&rt, &format!("{NS}exec /netns-tenant cycle"), false)?.finish(false)?;
    has(&out, "cycle: ok")?;
    let after = rt.netns_stats();
    let next =
        Running::start(&rt, &format!("{NS}head -n1 /proc/net/sockstat"), false)?.finish(false)?;
    // Kernels before 6.10 run the unix garbage collector at every unix socket release
    // while sockets are in flight: the cycle is gone once its process exits, the namespace
    // is provably empty and may be reused, as long as its next container finds it so
    // (only the pool's own probe socket). Later kernels collect it later: dropped.
    if after.reused > before.reused {
        return ensure(
            next.iter().any(|l| l == "sockets: used 1"),
            format!("reused with the cycle's sockets still there: {next:?}"),
        );
    }
    dropped_not_reused(before, after, &out, &next)
}

/// No container can change its namespace's links, addresses, routes or rules (no
/// CAP_NET_ADMIN), but should one ever could, the probe still sees it, even undone: each
/// change is made here from outside, through the running container's namespace, and the
/// namespace must not come back to the pool.
fn changed_namespace_is_dropped() -> TestResult {
    for change in [
        "ip link set lo up",
        "ip address add 10.99.0.1/32 dev lo",
        "ip route add blackhole 10.98.0.0/24",
        "ip rule add from 10.97.0.0/24 table 100",
        // Undone before the check: still a change.
        "ip link set lo mtu 1280 && ip link set lo mtu 65536",
    ] {
        let rt = pool_runtime()?;
        let before = rt.netns_stats();
        let mut tenant = Running::start(&rt, &format!("{NS}echo ready; sleep 30"), false)?;
        tenant.until("ready")?;
        let netns = format!("--net=/proc/{}/ns/net", tenant.container.pid());
        let out = Command::new("nsenter")
            .args([netns.as_str(), "sh", "-c", change])
            .output()?;
        ensure(
            out.status.success(),
            format!("{change}: {}", String::from_utf8_lossy(&out.stderr)),
        )?;
        let first = tenant.finish(true)?;
        let after = rt.netns_stats();
        let next = Running::start(&rt, NS, false)?.finish(false)?;
        dropped_not_reused(before, after, &first, &next).map_err(|e| format!("{change}: {e:?}"))?;
    }
    Ok(())
}

fn dropped_not_reused(
    before: NetnsStats,
    after: NetnsStats,
    first: &[String],
    next: &[String],
) -> TestResult {
    ensure(
        after.dropped == before.dropped + 1 && after.reused == before.reused,
        format!("namespace with a socket left not dropped: {before:?} -> {after:?}"),
    )?;
    ensure(
        field(first, "ns").is_some() && field(first, "ns") != field(next, "ns"),
        format!("the next container got the same namespace: {first:?} {next:?}"),
    )
}

fn reused_namespace_is_empty() -> TestResult {
    let rt = pool_runtime()?;
    let name = unique("tenant");
    // The listener is killed with the container when its shell exits.
    let first = Running::start(
        &rt,
        &format!(
            "{NS}/netns-tenant listen {name} 8081 > /tmp/out & \
             until grep -q listening /tmp/out; do sleep 0.01; done; cat /tmp/out"
        ),
        false,
    )?
    .finish(false)?;
    // The pool lends the last namespace returned first, but its maker thread may push a
    // fresh one in between: a few containers later at most, the first's comes back.
    let mut next = Vec::new();
    for _ in 0..5 {
        next = Running::start(
            &rt,
            &format!(
                "{NS}head -n1 /proc/net/sockstat; \
                 echo links=$(ip -o link | cut -d: -f2 | tr -d ' '); \
                 echo lo-flags=$(ip -o link | grep -o '<[^>]*>'); echo addrs=$(cat /proc/net/if_inet6 /proc/net/fib_trie); \
                 echo routes=$(ip route; ip -6 route); exec /netns-tenant reach {name} 8081"
            ),
            false,
        )?
        .finish(false)?;
        if field(&first, "ns").is_some() && field(&first, "ns") == field(&next, "ns") {
            break;
        }
    }
    has(&first, "listen abstract: ok")?;
    has(&first, "connect abstract: ok")?;
    ensure(
        field(&first, "ns").is_some() && field(&first, "ns") == field(&next, "ns"),
        format!("the namespace was not reused: {first:?} {next:?}"),
    )?;
    ensure(rt.netns_stats().reused >= 1, "no reuse counted")?;
    has(&next, "links=lo")?;
    // Asked over netlink (the container's /sys shows its image's template namespace):
    // LOOPBACK, not UP.
    has(&next, "lo-flags=<LOOPBACK>")?;
    // The one socket is the pool's own route netlink probe, which a container cannot
    // send to (NETLINK_ROUTE unicast needs CAP_NET_ADMIN). Read before `ip` runs: the
    // kernel frees netlink sockets after an RCU grace period, and counts them until then.
    has(&next, "sockets: used 1")?;
    has(&next, "addrs=")?;
    has(&next, "routes=")?;
    unreachable(&next)
}

/// Through the daemon's own request path (control socket, hand-over, teardown on the
/// blocking pool), namespaces come back clean, and /metrics says so.
fn daemon_reuses_namespaces() -> TestResult {
    with_daemon("native", "10.0.30.0/24", &[], |Run { d, .. }| async move {
        let image = support::image("test-handler.tar")?;
        let ip = d
            .deploy("reuse", fs::File::open(&image)?, Default::default())
            .await?
            .ip
            .to_string();
        for n in 0..5 {
            let ip = ip.clone();
            let answer =
                tokio::task::spawn_blocking(move || http_get(&ip, &format!("/{n}"))).await??;
            ensure(answer.contains(&format!("GET /{n} HTTP/1.1")), &answer)?;
        }
        let metric = |outcome: &str| {
            let series = format!("faasd_netns_total{{outcome=\"{outcome}\"}} ");
            d.metrics_text()
                .lines()
                .find_map(|l| l.strip_prefix(&series)?.parse::<u64>().ok())
        };
        // Teardowns run after their requests have answered: wait for them.
        for _ in 0..100 {
            if metric("reused").is_some_and(|n| n >= 5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = d.metrics_text();
        ensure(
            metric("reused").is_some_and(|n| n >= 5) && metric("dropped") == Some(0),
            format!(
                "namespaces not reused: {}",
                text.lines()
                    .filter(|l| l.contains("netns"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )?;
        d.undeploy("reuse").await?;
        Ok(())
    })
}
