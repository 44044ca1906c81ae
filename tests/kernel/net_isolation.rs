//! Issue 10 #3 and #13, attacked through the real faasd binary: a handler that takes the
//! client socket it is handed (it lives in the host's network namespace) elsewhere, and an
//! image that runs faasd's own binary in the container to overwrite it on the host.
//!
//! The hostile handler (rootfs-tools/net-attack.c) reads its target from the request line
//! and prints each step's outcome, which the daemon logs; the tests check from outside
//! too: their own listeners get nothing, the control API is not used, no port opens.

use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use faasd::runtime::{net_support, NetSupport};
use libtest_mimic::{Failed, Trial};

use crate::e2e::{eventually, Setup, Via};
use crate::support::{self, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test(
            "net_isolation::handed_socket_cannot_reconnect_to_the_host",
            reconnect_to_the_host,
        ),
        Trial::test(
            "net_isolation::handed_socket_cannot_bind_a_host_port",
            bind_a_host_port,
        ),
        Trial::test(
            "net_isolation::no_fast_open_udp_or_device_ioctls_to_the_host",
            fastopen_udp_ioctl,
        ),
        Trial::test(
            "net_isolation::container_keeps_no_net_bind_service",
            no_net_bind_service,
        ),
        Trial::test(
            "net_isolation::proc_self_exe_cannot_reach_the_host_binary",
            proc_self_exe,
        ),
        Trial::test(
            "net_isolation::missing_guarantees_are_reported",
            missing_guarantees_are_reported,
        ),
    ]
}

/// How long a handler's report may take to reach the daemon's log.
const REPORT_WAIT: Duration = Duration::from_secs(20);

/// Whether Landlock network rules are enforced here; if not, says what is skipped.
fn landlock_net(skipped: &str) -> bool {
    match net_support() {
        NetSupport::Enforced { .. } => true,
        other => {
            eprintln!(
                "SKIPPED on Linux {}: {skipped} (needs Landlock ABI 4, Linux 6.7; {other:?})",
                faasd::kernel_check::kernel_release()
            );
            false
        }
    }
}

/// A daemon with the attacking handler deployed; its address.
fn attacker(s: &Setup) -> Result<Ipv4Addr, Failed> {
    s.deploy("attacker", "net-attack.tar", Via::File)
}

/// Sends `GET /mode/ip/port` to the attacker, then waits for its report of `step` in the
/// daemon's log and returns that line's outcome ("ok" or the error).
fn attack(
    s: &Setup,
    at: Ipv4Addr,
    mode: &str,
    target: (Ipv4Addr, u16),
    step: &str,
) -> Result<String, Failed> {
    let (ip, port) = target;
    // The client's own view does not matter: the handler disconnects its socket.
    let _ = s.get(at, &format!("/{mode}/{ip}/{port}"));
    outcome(s, step)
}

fn outcome(s: &Setup, step: &str) -> Result<String, Failed> {
    let needle = format!("net-attack: {step}: ");
    let mut found = None;
    eventually(REPORT_WAIT, || {
        // The handler's stderr, in its function's log file: a JSON line per output line.
        let logs = fs::read_dir(s.state().join("logs"))
            .into_iter()
            .flatten()
            .flatten();
        found = logs
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|v| Some(v["text"].as_str()?.to_string()))
                    .collect::<Vec<_>>()
            })
            .find_map(|t| Some(t.split_once(&needle)?.1.trim().to_string()));
        found.is_some()
    });
    found.ok_or_else(|| s.fail(format!("the handler never reported {step:?}")))
}

/// A listener of the test's own; nothing may ever connect to it.
fn untouched(s: &Setup, l: &TcpListener, what: &str) -> TestResult {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
        Ok((_, peer)) => Err(s.fail(format!("{what}: a connection from {peer} arrived"))),
        Err(e) => Err(s.fail(format!("{what}: accept: {e}"))),
    }
}

fn listener(ip: Ipv4Addr, port: u16) -> Result<TcpListener, Failed> {
    let l = TcpListener::bind((ip, port))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn reconnect_to_the_host() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let victim = s.deploy("victim", "test-handler.tar", Via::File)?;
    let at = attacker(&s)?;
    let log = fs::read_to_string(s.log())?;
    let warned = log.contains("WARN") && log.contains("EXPOSED") && log.contains("disconnect");
    if !landlock_net("reconnecting the handed-over socket to the host") {
        // Where the kernel cannot stop it, the daemon said so at start.
        return s.check(
            warned,
            "no start-up warning about the exposed client socket",
        );
    }
    s.check(!warned, "a start-up warning though Landlock is enforced")?;
    // A host service of the test's own, on another loopback address.
    let own = Ipv4Addr::new(127, 0, s.n, 2);
    let l = listener(own, 9000)?;
    let got = attack(
        &s,
        at,
        "reconnect",
        (own, 9000),
        &format!("connect {own}:9000"),
    )?;
    s.check(
        got == "Permission denied",
        format!("reconnect to {own}:9000: {got}"),
    )?;
    untouched(&s, &l, "the test's own listener")?;
    // The control API, where it would undeploy the victim.
    let api: std::net::SocketAddrV4 = s.control_addr().parse()?;
    let step = format!("connect {api}");
    let got = attack(&s, at, "reconnect", (*api.ip(), api.port()), &step)?;
    s.check(
        got == "Permission denied",
        format!("reconnect to the API {api}: {got}"),
    )?;
    let list = s.list()?;
    s.check(
        list.get("victim").is_some(),
        format!("victim undeployed: {list}"),
    )?;
    s.expect_hello(victim, "/still-here")
}

fn bind_a_host_port() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let at = attacker(&s)?;
    let host = Ipv4Addr::new(127, 0, s.n, 3);
    // Below 1024: refused on every kernel, CAP_NET_BIND_SERVICE is gone.
    let got = attack(&s, at, "bind", (host, 23), &format!("bind {host}:23"))?;
    s.check(got == "Permission denied", format!("bind {host}:23: {got}"))?;
    s.check(
        TcpStream::connect((host, 23)).is_err(),
        format!("something listens on {host}:23"),
    )?;
    if !landlock_net("binding the handed-over socket to a host port above 1024") {
        return Ok(());
    }
    let got = attack(&s, at, "bind", (host, 9023), &format!("bind {host}:9023"))?;
    s.check(
        got == "Permission denied",
        format!("bind {host}:9023: {got}"),
    )?;
    // The handler keeps a bound socket listening for 5 s after its report.
    s.check(
        TcpStream::connect((host, 9023)).is_err(),
        format!("the handler listens on {host}:9023"),
    )
}

fn fastopen_udp_ioctl() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let at = attacker(&s)?;
    let own = Ipv4Addr::new(127, 0, s.n, 4);
    let l = listener(own, 9000)?;
    // An implicit connect that Landlock does not see: seccomp refuses the flag.
    let step = format!("sendto MSG_FASTOPEN {own}:9000");
    let got = attack(&s, at, "fastopen", (own, 9000), &step)?;
    s.check(got == "Operation not permitted", format!("{step}: {got}"))?;
    let step = format!("sendmsg MSG_FASTOPEN {own}:9000");
    let got = outcome(&s, &step)?;
    s.check(got == "Operation not permitted", format!("{step}: {got}"))?;
    untouched(&s, &l, "the test's own listener")?;
    // A new socket lands in the container's empty network namespace.
    let udp = UdpSocket::bind((own, 9001))?;
    udp.set_nonblocking(true)?;
    let step = format!("udp sendto {own}:9001");
    let got = attack(&s, at, "udp", (own, 9001), &step)?;
    s.check(got == "Network is unreachable", format!("{step}: {got}"))?;
    let mut buf = [0u8; 16];
    s.check(
        udp.recv_from(&mut buf)
            .is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
        "a datagram from the handler arrived",
    )?;
    // The host's interface list, through the handed-over socket.
    let step = "SIOCGIFCONF on the client socket";
    let got = attack(&s, at, "ifconf", (own, 0), step)?;
    s.check(got == "Operation not permitted", format!("{step}: {got}"))
}

fn no_net_bind_service() -> TestResult {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    let run = support::sh("grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status")?;
    for line in run.output.lines() {
        let mask = line.split_whitespace().nth(1).unwrap_or_default();
        let mask = u64::from_str_radix(mask, 16)?;
        support::ensure(
            mask & (1 << CAP_NET_BIND_SERVICE) == 0,
            format!("container has CAP_NET_BIND_SERVICE: {line}"),
        )?;
    }
    support::ensure(run.output.lines().count() == 3, run.output)
}

fn proc_self_exe() -> TestResult {
    let s = Setup::new(&[])?;
    // The attack overwrites the binary it reaches: give it a copy of faasd to run from.
    let exe = support::state_dir().join(crate::support::unique("faasd-copy"));
    fs::copy(env!("CARGO_BIN_EXE_faasd"), &exe)?;
    let original = fs::read(&exe)?;
    let on_disk = fs::metadata(&exe)?;
    let mut d = s.start_binary(&exe)?;
    let at = s.deploy("exe", "exe-attack.tar", Via::File)?;
    let r = s.get(at, "/")?;
    // "exe dev=D ino=I sealed=0|1 open-for-write=..."
    let field = |k: &str| {
        r.body()
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    // Once faasd no longer runs, the held fd could be reopened for writing: the attack
    // tries for 10 s, then exits; the host binary must be unchanged.
    d.kill9()?;
    let gone = eventually(Duration::from_secs(30), || s.processes().is_empty());
    let after = fs::read(&exe)?;
    let _ = fs::remove_file(&exe);
    s.check(gone, "the attack's process did not exit")?;
    s.check(
        after == original,
        "the faasd binary on disk was modified by a container",
    )?;
    let (dev, ino) = (field("dev"), field("ino"));
    s.check(
        dev.is_some() && ino.is_some(),
        format!("the attack answered {:?}", r.body()),
    )?;
    let held = (dev.unwrap().parse::<u64>()?, ino.unwrap().parse::<u64>()?);
    s.check(
        held != (on_disk.dev(), on_disk.ino()),
        format!(
            "the container holds the host's faasd binary: {}",
            r.body().trim()
        ),
    )?;
    s.check(field("sealed").as_deref() == Some("1"), r.body().trim())
}

/// `faasd --check-kernel` lists each guarantee with whether this kernel gives it, and
/// fails where one is missing (the runc backend applies no Landlock rules on any kernel).
fn missing_guarantees_are_reported() -> TestResult {
    let check = |runtime: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_faasd"))
            .args(["--check-kernel", "--runtime", runtime])
            .output()
    };
    let native = check("native")?;
    let text = String::from_utf8_lossy(&native.stdout);
    let landlock_line = text
        .lines()
        .find(|l| l.contains("connect or bind a TCP socket"));
    let enforced = matches!(net_support(), NetSupport::Enforced { .. });
    support::ensure(
        landlock_line.is_some_and(|l| l.contains("[yes]") == enforced)
            && native.status.success() == enforced
            && text.matches("[yes]").count() >= 3,
        format!("--check-kernel (Landlock net enforced: {enforced}): {native:?}\n{text}"),
    )?;
    let runc = check("runc")?;
    let text = String::from_utf8_lossy(&runc.stdout);
    support::ensure(
        !runc.status.success() && text.contains("[NO: runc applies no Landlock rules]"),
        format!("--check-kernel --runtime runc: {runc:?}"),
    )
}
