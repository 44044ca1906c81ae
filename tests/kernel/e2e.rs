//! faasd end to end through its real binaries: `faasd` runs as a child process (it inherits
//! the harness's private network and mount namespaces, so its 10.x addresses never reach
//! the machine's own network) and is driven with `faas`, a plain HTTP client, and the
//! prototype's urllib client. The images come from rootfs-tools/build-test-images.sh.
//!
//! Tests run in parallel in one network namespace, so each takes its own number n, and
//! from it its own subnet (10.n.0.0/24), control address (127.0.n.1:8080: all of 127/8 is
//! local once `lo` is up, so no port has to be probed and a restart gets the same one),
//! cgroup parent and state directory. Nothing is shared between two tests.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::support::{self, image, last_lines, unique, TestResult};

pub fn tests() -> Vec<Trial> {
    // Each trial is named e2e::<its function>.
    macro_rules! trials {
        ($($test:ident),* $(,)?) => {
            vec![$(Trial::test(concat!("e2e::", stringify!($test)), $test)),*]
        };
    }
    trials![
        python_handler_via_faas_new,
        prototype_urllib_client,
        several_functions_then_redeploy,
        sigterm_removes_only_our_addresses,
        restart_restores_functions,
        kill9_then_restart_recovers,
        bad_uploads_leave_nothing,
        misbehaving_handlers_are_cleaned_up,
        faas_cli,
    ]
}

/// Headroom on every time bound: the tests must not be flaky on a loaded machine or under
/// the VM's CPU emulation, only catch what hangs.
pub(crate) const SLACK: Duration = Duration::from_secs(5);
/// How long a client waits for an answer before calling it a hang.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

// --- HTTP as a plain client sees it ------------------------------------------------------

/// What a client got: the bytes up to the close, how the connection ended, how long it took.
pub(crate) struct Reply {
    pub(crate) text: String,
    pub(crate) error: Option<io::Error>,
    pub(crate) took: Duration,
}

impl Reply {
    pub(crate) fn status(&self) -> Option<u16> {
        self.text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    }

    pub(crate) fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// Whether the connection was still open, silent, when the client gave up.
    pub(crate) fn timed_out(&self) -> bool {
        matches!(
            self.error.as_ref().map(io::Error::kind),
            Some(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        )
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} after {:?}", self.text, self.took)?;
        match &self.error {
            Some(e) => write!(f, ", then {e}"),
            None => Ok(()),
        }
    }
}

/// Sends `request` and reads until the server closes (or READ_TIMEOUT); a reset connection
/// is an outcome to look at, not an error.
pub(crate) fn exchange(addr: impl ToSocketAddrs, request: &[u8]) -> io::Result<Reply> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    let error = s.read_to_end(&mut buf).err();
    Ok(Reply {
        text: String::from_utf8_lossy(&buf).into_owned(),
        error,
        took: start.elapsed(),
    })
}

// --- the machine's view: lo, cgroups, processes -------------------------------------------

/// The IPv4 addresses on `lo` with their labels, as `ip addr show lo` prints them.
pub(crate) fn lo_addresses() -> Result<Vec<(Ipv4Addr, String)>, Failed> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "lo"])
        .output()?;
    ensure_ok("ip addr show", &out)?;
    // "1: lo    inet 10.101.0.10/32 scope global lo:faas\       valid_lft forever ..."
    let parse = |line: &str| {
        let words: Vec<&str> = line.split('\\').next()?.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "inet")?;
        let ip = words.get(at + 1)?.split('/').next()?.parse().ok()?;
        Some((ip, words.last()?.to_string()))
    };
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse)
        .collect())
}

/// Adds or deletes an operator's address on `lo` (inside the harness's network namespace).
fn ip_addr(op: &str, ip: Ipv4Addr) -> TestResult {
    let out = Command::new("ip")
        .args(["addr", op, &format!("{ip}/32"), "dev", "lo"])
        .output()?;
    ensure_ok("ip addr", &out)
}

fn ensure_ok(what: &str, out: &Output) -> TestResult {
    support::ensure(
        out.status.success(),
        format!("{what}: {}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// Polls `cond` until it holds or `within` has passed; returns whether it held.
pub(crate) fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// --- one test's faasd ---------------------------------------------------------------------

/// One test's private slice of everything faasd touches, kept across restarts of the daemon.
pub(crate) struct Setup {
    pub(crate) n: u8,
    dir: PathBuf,
    pub(crate) cgroup_parent: String,
    flags: Vec<String>,
}

/// How `faas new` gets the tarball.
#[derive(Clone, Copy)]
pub(crate) enum Via {
    File,
    Stdin,
}

impl Setup {
    pub(crate) fn new(flags: &[&str]) -> Result<Self, Failed> {
        // 10.0.0.0/24, the default, belongs to the in-process daemon test.
        static NEXT: AtomicU8 = AtomicU8::new(101);
        let dir = support::state_dir().join(unique("e2e"));
        fs::create_dir_all(&dir)?;
        Ok(Setup {
            n: NEXT.fetch_add(1, Ordering::Relaxed),
            dir,
            cgroup_parent: unique("faasd-e2e"),
            flags: flags.iter().map(|f| f.to_string()).collect(),
        })
    }

    /// More flags for every start (for those made from `n`, such as an address).
    pub(crate) fn add_flags(&mut self, flags: &[&str]) {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.dir.join("faasd.log")
    }

    pub(crate) fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.n, 0, host)
    }

    pub(crate) fn control_addr(&self) -> String {
        format!("127.0.{}.1:8080", self.n)
    }

    /// Starts faasd and waits until its control API answers /healthz.
    pub(crate) fn start(&self) -> Result<Faasd<'_>, Failed> {
        self.start_with(|_| {})
    }

    /// `start`, with `prepare` adjusting the command first (e.g. a controlling terminal).
    pub(crate) fn start_with(
        &self,
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Faasd<'_>, Failed> {
        self.start_from(Path::new(env!("CARGO_BIN_EXE_faasd")), prepare)
    }

    /// Starts the faasd binary at `exe` (a copy a test may let an attack overwrite).
    pub(crate) fn start_binary(&self, exe: &Path) -> Result<Faasd<'_>, Failed> {
        self.start_from(exe, |_| {})
    }

    fn start_from(
        &self,
        exe: &Path,
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Faasd<'_>, Failed> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let mut command = Command::new(exe);
        prepare(&mut command);
        let child = command
            .arg("--state-dir")
            .arg(self.state())
            .args(["--listen", &self.control_addr()])
            .args(["--subnet", &format!("10.{}.0.0/24", self.n)])
            .args(["--cgroup-parent", &self.cgroup_parent])
            .args(&self.flags)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut d = Faasd { s: self, child };
        let healthy = eventually(Duration::from_secs(30), || {
            matches!(d.child.try_wait(), Ok(None))
                && self
                    .control("GET /healthz HTTP/1.1", b"")
                    .is_ok_and(|r| r.status() == Some(200))
        });
        match d.child.try_wait()? {
            Some(status) => Err(self.fail(format!("faasd exited at start: {status}"))),
            None if !healthy => Err(self.fail("faasd did not answer /healthz within 30 s")),
            None => Ok(d),
        }
    }

    /// `msg` plus the end of faasd's log, which is usually what explains a failure.
    pub(crate) fn fail(&self, msg: impl std::fmt::Display) -> Failed {
        let log = fs::read_to_string(self.log()).unwrap_or_default();
        format!("{msg}\n--- faasd log (end) ---\n{}", last_lines(&log, 40)).into()
    }

    pub(crate) fn check(&self, cond: bool, msg: impl std::fmt::Display) -> TestResult {
        if cond {
            Ok(())
        } else {
            Err(self.fail(msg))
        }
    }

    /// One request to the control API; `head` is the request line and any headers.
    pub(crate) fn control(&self, head: &str, body: &[u8]) -> io::Result<Reply> {
        let mut req = format!(
            "{head}\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.control_addr()
        )
        .into_bytes();
        req.extend_from_slice(body);
        exchange(self.control_addr(), &req)
    }

    /// `POST /api/new` the way the prototype's client does it.
    pub(crate) fn upload(&self, name: &str, body: &[u8]) -> io::Result<Reply> {
        let head = format!(
            "POST /api/new HTTP/1.1\r\nX-Image-Name: {name}\r\nContent-Length: {}",
            body.len()
        );
        self.control(&head, body)
    }

    /// `GET /api/list`, parsed.
    pub(crate) fn list(&self) -> Result<Value, Failed> {
        let r = self.control("GET /api/list HTTP/1.1", b"")?;
        self.check(r.status() == Some(200), format!("/api/list answered {r}"))?;
        Ok(serde_json::from_str(r.body())?)
    }

    /// Runs `faas --url <ours> ARGS`, stdin from `input` (else empty).
    pub(crate) fn faas(&self, args: &[&str], input: Option<&Path>) -> Result<Output, Failed> {
        let stdin = match input {
            Some(path) => Stdio::from(File::open(path)?),
            None => Stdio::null(),
        };
        Ok(Command::new(env!("CARGO_BIN_EXE_faas"))
            .args(["--url", &format!("http://{}", self.control_addr())])
            .args(args)
            .stdin(stdin)
            .output()?)
    }

    /// `faas ARGS`, which must succeed; its stdout.
    pub(crate) fn faas_ok(&self, args: &[&str]) -> Result<String, Failed> {
        let out = self.faas(args, None)?;
        self.check(
            out.status.success(),
            format!("faas {args:?}: {}", String::from_utf8_lossy(&out.stderr)),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `faas ARGS`, which must fail with status 1; its stderr.
    pub(crate) fn faas_err(&self, args: &[&str], input: Option<&Path>) -> Result<String, Failed> {
        let out = self.faas(args, input)?;
        self.check(
            out.status.code() == Some(1),
            format!("faas {args:?} should have failed: {out:?}"),
        )?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// `faas new NAME` with test image `file`; checks the "Deployed" line, returns the IP.
    pub(crate) fn deploy(&self, name: &str, file: &str, via: Via) -> Result<Ipv4Addr, Failed> {
        self.deploy_path(name, &image(file)?, via)
    }

    /// `faas new NAME` with the archive at `path`; checks the "Deployed" line, returns the IP.
    pub(crate) fn deploy_path(
        &self,
        name: &str,
        path: &Path,
        via: Via,
    ) -> Result<Ipv4Addr, Failed> {
        let file = path.display();
        let out = match via {
            Via::File => self.faas(&["new", name, "-f", path.to_str().unwrap()], None)?,
            Via::Stdin => self.faas(&["new", name], Some(path))?,
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ip = stdout
            .trim_end()
            .strip_prefix(&format!("Deployed {name} at "))
            .and_then(|ip| ip.parse().ok());
        ip.ok_or_else(|| {
            self.fail(format!(
                "faas new {name} < {file}: {} {stdout:?} {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }

    /// GET `path` from a function's address; only failing to connect or send is an error.
    pub(crate) fn get(&self, ip: Ipv4Addr, path: &str) -> Result<Reply, Failed> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n");
        exchange((ip, 80), req.as_bytes())
            .map_err(|e| self.fail(format!("GET http://{ip}{path}: {e}")))
    }

    /// Fails unless `ip` answers as the test handlers do: the greeting and the request line.
    pub(crate) fn expect_hello(&self, ip: Ipv4Addr, path: &str) -> TestResult {
        let r = self.get(ip, path)?;
        self.check(
            r.status() == Some(200)
                && r.body().contains("Hello from FaaS handler!")
                && r.body().contains(&format!("GET {path} HTTP/1.1")),
            format!("GET http://{ip}{path}: {r}"),
        )
    }

    /// Our subnet's addresses on `lo`, with their labels.
    pub(crate) fn addresses(&self) -> Result<Vec<(Ipv4Addr, String)>, Failed> {
        let mut ours = lo_addresses()?;
        ours.retain(|(ip, _)| ip.octets()[..2] == [10, self.n]);
        ours.sort();
        Ok(ours)
    }

    fn labelled(&self, ips: &[Ipv4Addr]) -> Vec<(Ipv4Addr, String)> {
        ips.iter().map(|ip| (*ip, "lo:faas".to_string())).collect()
    }

    pub(crate) fn entries(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.state().join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn bundles(&self) -> Vec<String> {
        self.entries("bundles")
    }

    /// The container cgroups that hold a process: live containers (an ended container's
    /// cgroup may wait, empty, for the next one: see `cgroup_dirs`).
    pub(crate) fn containers(&self) -> Vec<String> {
        support::cgroups_in_use(&self.cgroup_parent)
    }

    /// Every container cgroup directory under our parent, in use or pooled.
    pub(crate) fn cgroup_dirs(&self) -> Vec<String> {
        faasd::runtime::cgroup_children(&self.cgroup_parent)
    }

    /// Pids of every process in a cgroup under our parent.
    pub(crate) fn processes(&self) -> Vec<i32> {
        support::processes_in(&self.cgroup_parent)
    }

    /// `faasd_<name>` in /metrics summed over its labels (0 when faasd does not answer).
    pub(crate) fn metric_total(&self, name: &str) -> f64 {
        let Ok(r) = self.control("GET /metrics HTTP/1.1", b"") else {
            return 0.0;
        };
        let prefix = format!("faasd_{name}{{");
        r.body()
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Containers started ahead of their request (--prewarm), waiting or still
    /// starting, all functions together, as /metrics counts them.
    pub(crate) fn waiting(&self) -> usize {
        (self.metric_total("prewarmed") + self.metric_total("prewarm_starting")) as usize
    }

    /// Whether the only containers (cgroups, processes: one each) are those waiting for a
    /// request, and no bundle exists (the native runtime makes none).
    pub(crate) fn only_waiting_containers(&self) -> bool {
        let w = self.waiting();
        self.bundles().is_empty() && self.containers().len() == w && self.processes().len() == w
    }

    /// Waits (briefly: teardown follows the client's answer) until no request has left a
    /// bundle, a container cgroup or a process behind: what remains is the containers
    /// waiting for the next requests, each counted by /metrics.
    pub(crate) fn check_no_request_left(&self) -> TestResult {
        let clean = eventually(SLACK, || self.only_waiting_containers());
        self.check(
            clean,
            format!(
                "left behind: bundles {:?}, cgroups {:?}, processes {:?}; {} waiting",
                self.bundles(),
                self.containers(),
                self.processes(),
                self.waiting()
            ),
        )
    }

    /// No function at all, and no trace of one: for a daemon that only saw failed deploys.
    pub(crate) fn check_no_function(&self, after: &str) -> TestResult {
        let (images, list, addresses) = (self.entries("images"), self.list()?, self.addresses()?);
        self.check(
            images.is_empty() && list == json!({}) && addresses.is_empty(),
            format!("after {after}: images/ {images:?}, list {list}, addresses {addresses:?}"),
        )?;
        self.check_no_request_left()
    }
}

impl Drop for Setup {
    /// Whatever a failed test left: containers, the cgroup parent, the state directory.
    fn drop(&mut self) {
        support::remove_cgroup_parent(&self.cgroup_parent);
        // A faasd killed with SIGKILL leaves its store's nosuid mount (for its next start).
        let _ = nix::mount::umount2(
            &self.state().join("images"),
            nix::mount::MntFlags::MNT_DETACH,
        );
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running faasd; SIGKILLed on drop so that a failing test never leaks a daemon.
pub(crate) struct Faasd<'a> {
    s: &'a Setup,
    pub(crate) child: Child,
}

impl Faasd<'_> {
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self) -> Result<ExitStatus, Failed> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM)?;
        let mut status = None;
        eventually(Duration::from_secs(20), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.ok_or_else(|| self.s.fail("faasd still running 20 s after SIGTERM"))
    }

    pub(crate) fn kill9(&mut self) -> TestResult {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Faasd<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// --- the tests ------------------------------------------------------------------------------

fn python_handler_via_faas_new() -> TestResult {
    // The interpreter's start takes seconds in the emulated (TCG) VM on a busy host.
    let s = Setup::new(&["--connect-timeout", "30"])?;
    let _d = s.start()?;
    let ip = s.deploy("py", "python-handler.tar", Via::Stdin)?;
    s.check(ip == s.ip(10), format!("first address is {ip}, not .10"))?;
    let on_lo = s.addresses()?;
    s.check(on_lo == s.labelled(&[ip]), format!("lo has {on_lo:?}"))?;
    s.expect_hello(ip, "/from/python?x=1")?;
    s.expect_hello(ip, "/again")?;
    s.check_no_request_left()
}

/// The prototype's client, standard library only: the three endpoints, then the function.
const URLLIB_CLIENT: &str = r#"
import json, sys, urllib.error, urllib.request
base, name, image = sys.argv[1:4]
# Talk to faasd directly even when the environment names a proxy.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def call(req):
    with opener.open(req, timeout=60) as r:
        return json.load(r)
with open(image, "rb") as f:
    new = call(urllib.request.Request(base + "/api/new", data=f.read(),
                                      headers={"X-Image-Name": name}, method="POST"))
ip = call(base + "/api/ip/" + name)
listing = call(base + "/api/list")
try:
    opener.open(base + "/api/ip/nosuch", timeout=60)
    missing = 200
except urllib.error.HTTPError as e:
    missing = e.code
with opener.open("http://%s/from-urllib" % ip["ip"], timeout=30) as r:
    answer = r.read().decode()
print(json.dumps({"new": new, "ip": ip, "list": listing, "missing": missing, "answer": answer}))
"#;

fn prototype_urllib_client() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let out = Command::new("python3")
        .args(["-c", URLLIB_CLIENT])
        .arg(format!("http://{}", s.control_addr()))
        .arg("hello")
        .arg(image("test-handler.tar")?)
        .output()?;
    s.check(
        out.status.success(),
        format!("urllib client: {}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let ip = s.ip(10).to_string();
    let checks = [
        (
            v["new"] == json!({"name": "hello", "ip": ip, "cmd": ["/test-handler"]}),
            "new",
        ),
        (v["ip"] == json!({"name": "hello", "ip": ip}), "ip"),
        (v["list"]["hello"]["ip"] == json!(ip), "list ip"),
        (
            v["list"]["hello"]["cmd"] == json!(["/test-handler"]),
            "list cmd",
        ),
        (v["list"]["hello"]["rootfs"].is_string(), "list rootfs"),
        (v["missing"] == json!(404), "unknown name"),
        (
            v["answer"]
                .as_str()
                .is_some_and(|a| a.contains("Hello from FaaS handler!\nGET /from-urllib HTTP/1.1")),
            "answer",
        ),
    ];
    for (ok, what) in checks {
        s.check(ok, format!("{what} wrong in {v:#}"))?;
    }
    Ok(())
}

fn several_functions_then_redeploy() -> TestResult {
    // Under the VM's CPU emulation, seven Python handlers starting at once can take longer
    // than the default 5 s to connect; this test is about addresses, not timeouts.
    let s = Setup::new(&["--connect-timeout", "20"])?;
    let _d = s.start()?;
    let names = ["a", "b", "c"];
    let files = [
        "test-handler.tar",
        "test-handler-oci.tar",
        "python-handler.tar",
    ];
    let mut ips = Vec::new();
    for (name, file) in names.iter().zip(files) {
        ips.push(s.deploy(name, file, Via::File)?);
    }
    s.check(
        ips == [s.ip(10), s.ip(11), s.ip(12)],
        format!("addresses {ips:?}"),
    )?;
    s.check(s.addresses()? == s.labelled(&ips), "addresses on lo")?;
    // 21 requests at once, 7 per function, each in its own container.
    thread::scope(|scope| {
        let calls: Vec<_> = (0..21)
            .map(|i| {
                let (ip, s) = (ips[i % 3], &s);
                scope.spawn(move || s.expect_hello(ip, &format!("/par/{i}")))
            })
            .collect();
        calls.into_iter().try_for_each(|c| c.join().unwrap())
    })?;
    s.check_no_request_left()?;

    // Redeploying keeps the address and swaps the image: a different command now runs.
    let again = s.deploy("a", "test-handler-serve.tar", Via::File)?;
    s.check(
        again == ips[0],
        format!("redeploy moved a from {} to {again}", ips[0]),
    )?;
    let cmd = &s.list()?["a"]["cmd"];
    s.check(
        *cmd == json!(["/test-handler", "serve"]),
        format!("after redeploy, cmd is {cmd}"),
    )?;
    s.expect_hello(again, "/after-redeploy")?;
    // The replaced image is deleted once no request uses it.
    let gone = eventually(SLACK, || s.entries("images") == names);
    s.check(gone, format!("images/ holds {:?}", s.entries("images")))
}

fn sigterm_removes_only_our_addresses() -> TestResult {
    let s = Setup::new(&["--shutdown-grace", "1"])?;
    // An operator's address where the pool starts: faasd must skip it and never remove it.
    let manual = s.ip(10);
    ip_addr("add", manual)?;
    let mut d = s.start()?;
    let web = s.deploy("web", "test-handler.tar", Via::File)?;
    let stuck = s.deploy("stuck", "test-handler-hang.tar", Via::File)?;
    s.check(
        [web, stuck] == [s.ip(11), s.ip(12)],
        format!("got {web} and {stuck} next to the operator's {manual}"),
    )?;
    s.expect_hello(web, "/")?;
    s.check_no_request_left()?;
    // A request still in flight at SIGTERM: it outlives the grace period and is killed.
    let (status, held) = thread::scope(|scope| {
        let held = scope.spawn(|| s.get(stuck, "/held"));
        s.check(
            eventually(SLACK, || s.processes().into_iter().any(holds_connection)),
            "the request to the hanging handler started no container holding it",
        )?;
        let status = d.stop()?;
        Ok::<_, Failed>((status, held.join().unwrap()?))
    })?;
    s.check(status.success(), format!("faasd exited with {status}"))?;
    s.check(
        held.status().is_none() && !held.timed_out(),
        format!("the in-flight request got {held}"),
    )?;
    let left = s.addresses()?;
    s.check(
        left == [(manual, "lo".to_string())],
        format!("after SIGTERM lo has {left:?}"),
    )?;
    s.check(s.bundles().is_empty(), format!("bundles {:?}", s.bundles()))?;
    s.check(
        s.cgroup_dirs().is_empty(),
        format!("cgroups {:?}", s.cgroup_dirs()),
    )?;
    s.check(
        s.processes().is_empty(),
        format!("processes {:?}", s.processes()),
    )?;
    // So does the cgroup parent it made (in every hierarchy: v2, or each v1 controller's).
    let roots = fs::read_dir("/sys/fs/cgroup")?.flatten().map(|e| e.path());
    let parents: Vec<_> = std::iter::once(PathBuf::from("/sys/fs/cgroup"))
        .chain(roots)
        .map(|root| root.join(&s.cgroup_parent))
        .filter(|p| p.exists())
        .collect();
    s.check(
        parents.is_empty(),
        format!("cgroup parent left after SIGTERM: {parents:?}"),
    )?;
    // The store's nosuid mount goes with a clean stop: the state dir removes like any other.
    let images = s.state().join("images");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    s.check(
        !mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == images.to_str()),
        format!("{} is still a mount point after SIGTERM", images.display()),
    )?;
    ip_addr("del", manual)
}

fn restart_restores_functions() -> TestResult {
    let s = Setup::new(&[])?;
    let mut d = s.start()?;
    let a = s.deploy("a", "test-handler.tar", Via::File)?;
    let b = s.deploy("b", "test-handler-oci.tar", Via::File)?;
    let status = d.stop()?;
    drop(d);
    s.check(status.success(), format!("faasd exited with {status}"))?;
    s.check(s.addresses()?.is_empty(), "addresses left after SIGTERM")?;

    let _d = s.start()?;
    for (name, ip) in [("a", a), ("b", b)] {
        let now = s.faas_ok(&["ip", name])?;
        s.check(
            now.trim() == ip.to_string(),
            format!("{name} came back at {now}, was {ip}"),
        )?;
        s.expect_hello(ip, &format!("/{name}/restarted"))?;
    }
    s.check(
        s.addresses()? == s.labelled(&[a, b]),
        "addresses after restart",
    )
}

/// Whether `pid` is the test handler holding its control socket and a connection.
fn holds_connection(pid: i32) -> bool {
    let is_handler =
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "test-handler");
    let sockets = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count();
    is_handler && sockets >= 2
}

fn kill9_then_restart_recovers() -> TestResult {
    let s = Setup::new(&[])?;
    let mut d = s.start()?;
    let web = s.deploy("web", "test-handler.tar", Via::File)?;
    let stuck = s.deploy("stuck", "test-handler-hang.tar", Via::File)?;
    thread::scope(|scope| {
        // The handler holds this connection and never answers: a live container.
        let held = scope.spawn(|| s.get(stuck, "/held"));
        // Holding it means the handler (exec'd: before that, the container's process is a
        // copy of faasd with all its sockets) has two sockets: /control.sock and the
        // client's connection. Earlier, a handler that lost faasd would fail its connect
        // and exit on its own.
        s.check(
            eventually(SLACK, || {
                s.processes().iter().any(|&pid| holds_connection(pid))
            }),
            "the request to the hanging handler started no container holding it",
        )?;
        d.kill9()?;
        // The hanging request's container, and those that waited for the next requests.
        let (bundles, cgroups, procs) = (s.bundles(), s.cgroup_dirs(), s.processes());
        // The native runtime makes no bundle directory (its control socket is the image's).
        s.check(
            bundles.is_empty() && !cgroups.is_empty() && !procs.is_empty(),
            format!("after kill -9, expected stale state: {bundles:?} {cgroups:?} {procs:?}"),
        )?;
        s.check(
            s.addresses()?.len() == 2,
            "kill -9 cannot have removed the addresses",
        )?;

        let _d = s.start()?;
        // Recovery runs before the control API answers: nothing stale is left by now (the
        // restored functions' new waiting containers have new names and processes).
        let (after_b, after_c, after_p) = (s.bundles(), s.cgroup_dirs(), s.processes());
        s.check(
            !bundles.iter().any(|b| after_b.contains(b))
                && !cgroups.iter().any(|c| after_c.contains(c))
                && !procs.iter().any(|p| after_p.contains(p)),
            format!("after restart: {after_b:?} {after_c:?} {after_p:?}, before {bundles:?} {cgroups:?} {procs:?}"),
        )?;
        // The handler was killed, so the client's connection closed.
        let held = held.join().unwrap()?;
        s.check(
            held.status().is_none() && !held.timed_out(),
            format!("the held request got {held}"),
        )?;
        s.expect_hello(web, "/after-kill-9")?;
        s.check(
            s.addresses()? == s.labelled(&[web, stuck]),
            "addresses after restart",
        )
    })
}

fn bad_uploads_leave_nothing() -> TestResult {
    let s = Setup::new(&["--max-upload-mb", "2"])?;
    let _d = s.start()?;
    let big = fs::read(image("test-handler.tar")?)?; // 2.6 MiB: over the limit
    let garbage = b"this is not a tarball\n".repeat(200);
    let cases: [(&str, &[u8]); 3] = [
        ("garbage", &garbage),
        ("empty", b""),
        ("truncated", &big[..512 << 10]),
    ];
    for (what, body) in cases {
        let r = s.upload(what, body)?;
        s.check(
            r.status().is_some_and(|c| (400..500).contains(&c)),
            format!("{what} upload answered {r}"),
        )?;
        s.check_no_function(what)?;
    }
    // Bad names are refused before the body is read (so none is sent).
    for name in ["../x", "a/b", "", &"x".repeat(64), "-x", "a.b"] {
        let r = s.upload(name, b"")?;
        s.check(
            r.status() == Some(400) && r.body().contains("invalid function name"),
            format!("name {name:?} answered {r}"),
        )?;
    }
    let r = s.control("POST /api/new HTTP/1.1\r\nContent-Length: 0", b"")?;
    s.check(r.status() == Some(400), format!("no X-Image-Name: {r}"))?;
    s.check_no_function("bad names")?;

    // Too large, declared up front: refused on the header alone.
    let head = format!(
        "POST /api/new HTTP/1.1\r\nX-Image-Name: big\r\nContent-Length: {}",
        big.len()
    );
    let r = s.control(&head, b"")?;
    s.check(r.status() == Some(413), format!("declared too large: {r}"))?;
    // Too large, streamed without a length (faas from stdin): cut off at the limit.
    let err = s.faas_err(&["new", "big"], Some(&image("test-handler.tar")?))?;
    s.check(
        err.contains("larger than") || err.contains("refused the upload"),
        format!("faas new big: {err}"),
    )?;
    s.check_no_function("too large uploads")?;

    // None of that used up an address.
    let ok = s.deploy("good", "test-handler-oci.tar", Via::File)?;
    s.check(ok == s.ip(10), format!("a good deploy got {ok}"))?;
    s.expect_hello(ok, "/good")
}

fn misbehaving_handlers_are_cleaned_up() -> TestResult {
    let (connect, exec) = (Duration::from_secs(1), Duration::from_secs(2));
    let s = Setup::new(&["--connect-timeout", "1", "--exec-timeout", "2"])?;
    let _d = s.start()?;
    let crash = s.deploy("crash", "test-handler-crash.tar", Via::File)?;
    let noconnect = s.deploy("noconnect", "test-handler-noconnect.tar", Via::File)?;
    let hang = s.deploy("hang", "test-handler-hang.tar", Via::File)?;

    // Connects, then aborts: a prompt 502 or a closed connection.
    let r = s.get(crash, "/")?;
    s.check(
        matches!(r.status(), None | Some(502)) && !r.timed_out() && r.took < connect + SLACK,
        format!("crash: {r}"),
    )?;
    // Never connects: 504 once the connect timeout has passed.
    let r = s.get(noconnect, "/")?;
    s.check(
        r.status() == Some(504) && r.took < connect + SLACK,
        format!("noconnect: {r}"),
    )?;
    // Takes the connection and sleeps: killed at the exec timeout, which closes it.
    let r = s.get(hang, "/")?;
    s.check(
        r.status().is_none() && !r.timed_out() && r.took >= exec / 2 && r.took < exec + SLACK,
        format!("hang: {r}"),
    )?;
    s.check_no_request_left()?;

    // The same function, redeployed with a handler that serves, answers at the same address.
    let fixed = s.deploy("hang", "test-handler-serve.tar", Via::File)?;
    s.check(fixed == hang, format!("redeploy moved hang to {fixed}"))?;
    s.expect_hello(fixed, "/fixed")
}

fn faas_cli() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let hello = s.deploy("hello", "test-handler.tar", Via::File)?;
    let second = s.deploy("second", "test-handler-serve.tar", Via::Stdin)?;
    s.check(
        s.faas_ok(&["ip", "hello"])? == format!("{hello}\n"),
        "faas ip hello",
    )?;

    // A Name/IP/Warm/Command table, columns aligned, sorted by name; a deploy returns
    // once its first container waits (--prewarm auto).
    let table = s.faas_ok(&["list"])?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let (h, ip) = (hello.to_string(), second.to_string());
    let want = [
        vec!["Name", "IP", "Warm", "Command"],
        vec!["hello", &h, "1", "/test-handler"],
        vec!["second", &ip, "1", "/test-handler", "serve"],
    ];
    s.check(rows == want, format!("faas list:\n{table}"))?;
    let column = |l: &str, w: &str| l.find(w);
    let lines: Vec<&str> = table.lines().collect();
    s.check(
        column(lines[0], "IP") == column(lines[1], &h)
            && column(lines[0], "Command") == column(lines[1], "/test-handler"),
        format!("columns not aligned:\n{table}"),
    )?;
    let json: Value = serde_json::from_str(&s.faas_ok(&["list", "--json"])?)?;
    s.check(
        json["hello"]["ip"] == json!(h),
        format!("faas list --json: {json}"),
    )?;

    // Errors: the daemon's message, exit status 1.
    let err = s.faas_err(&["ip", "nosuch"], None)?;
    s.check(
        err == "faas: no function named \"nosuch\"\n",
        format!("faas ip nosuch: {err:?}"),
    )?;
    let tar = image("test-handler.tar")?;
    let err = s.faas_err(&["new", "../x", "-f", tar.to_str().unwrap()], None)?;
    s.check(
        err.contains("invalid function name"),
        format!("faas new ../x: {err:?}"),
    )?;
    let out = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(["--url", "http://127.0.0.1:1", "list"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    s.check(
        out.status.code() == Some(1) && err.contains("cannot reach faasd"),
        format!("no daemon: {out:?}"),
    )?;

    // rm takes the function and its address away.
    s.check(
        s.faas_ok(&["rm", "hello"])? == "Removed hello\n",
        "faas rm hello",
    )?;
    s.check(
        s.addresses()? == s.labelled(&[second]),
        "hello's address after rm",
    )?;
    s.faas_err(&["ip", "hello"], None)?;
    let err = s.faas_err(&["rm", "hello"], None)?;
    s.check(
        err.contains("no function named"),
        format!("second rm: {err:?}"),
    )?;
    s.expect_hello(second, "/still-here")
}
