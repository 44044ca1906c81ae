//! The real `faasd` binary as a child process of the bench, driven over HTTP: what the
//! throughput, warm and soak benches measure, so that the daemon's own fds, mounts,
//! threads, RSS and CPU time are a process of their own, apart from the bench's clients.
//!
//! It inherits the bench's private network and mount namespaces (call
//! `enter_private_namespaces` first), so its 10.n.0.x addresses exist only there. Each
//! daemon of a run takes its own number n: subnet 10.n.0.0/24, control API 127.0.n.1:8080,
//! cgroup parent `faasd-bench-<pid>-n`, and a state directory of its own.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Faasd {
    child: Child,
    control: SocketAddr,
    pub cgroup_parent: String,
    dir: tempfile::TempDir,
}

impl Faasd {
    /// Starts `faasd` with its n-th slice and `flags`, and waits until /healthz answers.
    pub fn start(n: u8, flags: &[&str]) -> Faasd {
        let dir = tempfile::tempdir().expect("faasd state dir");
        let control = SocketAddr::from(([127, 0, n, 1], 8080));
        let cgroup_parent = format!("faasd-bench-{}-{n}", std::process::id());
        let log = File::create(dir.path().join("faasd.log")).expect("faasd log");
        let child = Command::new(env!("CARGO_BIN_EXE_faasd"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--listen", &control.to_string()])
            .args(["--subnet", &format!("10.{n}.0.0/24")])
            .args(["--cgroup-parent", &cgroup_parent])
            .args(flags)
            // One line per request at info: 100,000 of them would only measure the log.
            .env("FAASD_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("faasd log"))
            .stderr(log)
            .spawn()
            .expect("start target/release/faasd");
        let mut d = Faasd {
            child,
            control,
            cgroup_parent,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while d.http("GET /healthz", b"").map(|(s, _)| s) != Some(200) {
            if !matches!(d.child.try_wait(), Ok(None)) || Instant::now() > deadline {
                panic!("faasd {flags:?} did not start:\n{}", d.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Deploys the `docker save` tarball as `name`; its address.
    pub fn deploy(&self, name: &str, tarball: &Path) -> Ipv4Addr {
        let body = std::fs::read(tarball).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (rootfs-tools/build-test-images.sh)",
                tarball.display()
            )
        });
        let head = format!(
            "POST /api/new\r\nX-Image-Name: {name}\r\nContent-Length: {}",
            body.len()
        );
        match self.http(&head, &body) {
            Some((200, answer)) => {
                let v: serde_json::Value = serde_json::from_str(&answer).expect("deploy answer");
                v["ip"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("ip in deploy answer")
            }
            other => panic!("deploying {name} failed: {other:?}\n{}", self.log_tail()),
        }
    }

    /// `DELETE /api/functions/<name>` (what `faas rm` does).
    pub fn remove(&self, name: &str) {
        let answer = self.http(&format!("DELETE /api/functions/{name}"), b"");
        assert!(
            answer.as_ref().is_some_and(|(s, _)| *s == 200),
            "removing {name}: {answer:?}\n{}",
            self.log_tail()
        );
    }

    /// The Prometheus text of /metrics.
    pub fn metrics(&self) -> String {
        self.http("GET /metrics", b"")
            .map(|(_, t)| t)
            .unwrap_or_default()
    }

    /// The value of metric `name` for `function`, from /metrics.
    pub fn metric(&self, name: &str, function: &str) -> Option<f64> {
        super::metric(&self.metrics(), name, function)
    }

    /// One request to the control API: `head` is the request line (without the version)
    /// and any headers; the status and the body.
    fn http(&self, head: &str, body: &[u8]) -> Option<(u16, String)> {
        let (first, rest) = head.split_once("\r\n").map_or((head, ""), |(a, b)| (a, b));
        let mut req = format!("{first} HTTP/1.1\r\nHost: faasd\r\nConnection: close\r\n");
        if !rest.is_empty() {
            req += rest;
            req += "\r\n";
        }
        req += "\r\n";
        let mut s = TcpStream::connect_timeout(&self.control, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
        s.write_all(req.as_bytes()).ok()?;
        s.write_all(body).ok()?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        let status = answer.split_whitespace().nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((status, body.to_string()))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("faasd.log")
    }

    /// The last 30 lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM and wait (bounded; then SIGKILL). Panics if faasd did not exit cleanly.
    pub fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    super::kernel_objects::remove_cgroup_parent(&self.cgroup_parent);
                    assert!(
                        status.success(),
                        "faasd exited with {status}:\n{}",
                        self.log_tail()
                    );
                    return;
                }
                _ if Instant::now() > deadline => {
                    panic!("faasd still running {STOP_TIMEOUT:?} after SIGTERM")
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Faasd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        super::kernel_objects::remove_cgroup_parent(&self.cgroup_parent);
    }
}
