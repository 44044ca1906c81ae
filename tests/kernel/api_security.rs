//! Attacks on the control API, uploads and aggregate limits (issue 10 #8 and #9, issue 11
//! #4 and #7), each performed through the real `faasd` binary with the e2e harness.

use std::fs;
use std::io::{Read, Write};

use faasd::daemon::{serve_api, Daemon};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use libtest_mimic::{Failed, Trial};

use crate::e2e::{eventually, Reply, Setup, Via, SLACK};
use crate::support::{self, ensure, TestResult};

pub fn tests() -> Vec<Trial> {
    macro_rules! trials {
        ($($test:ident),* $(,)?) => {
            vec![$(Trial::test(concat!("api_security::", stringify!($test)), $test)),*]
        };
    }
    trials![
        stalled_uploads_are_closed_and_requests_still_served,
        uploads_never_take_the_spawn_pool,
        early_errors_reach_a_client_still_sending,
        parent_cgroup_limits_all_containers,
        crash_looping_prewarm_backs_off,
    ]
}

/// Issue 10 #8: many uploads that send a few bytes and stall, and connections that trickle
/// half a header, must neither hold the daemon's threads nor stay open: a function keeps
/// answering, /healthz too, the stalled ones are closed by the idle timeouts, and no
/// staging directory is left.
fn stalled_uploads_are_closed_and_requests_still_served() -> TestResult {
    const UPLOADS: usize = 150;
    const HALF_HEADERS: usize = 20;
    let s = Setup::new(&[
        "--header-timeout",
        "2",
        "--body-timeout",
        "3",
        "--max-uploads",
        "4",
    ])?;
    let _d = s.start()?;
    let ip = s.deploy("fn", "test-handler.tar", Via::File)?;

    let mut stalled = Vec::new();
    for i in 0..UPLOADS {
        let mut c = TcpStream::connect(s.control_addr())?;
        write!(
            c,
            "POST /api/new HTTP/1.1\r\nHost: x\r\nX-Image-Name: stall{i}\r\n\
             Content-Length: 10000000\r\n\r\nab"
        )?;
        stalled.push(c);
    }
    for _ in 0..HALF_HEADERS {
        let mut c = TcpStream::connect(s.control_addr())?;
        c.write_all(b"POST /api/new HTTP/1.1\r\nX-Ima")?;
        stalled.push(c);
    }
    let since = Instant::now();

    // Meanwhile the function serves and the daemon answers.
    for i in 0..20 {
        let asked = Instant::now();
        s.expect_hello(ip, &format!("/during/{i}"))?;
        let took = asked.elapsed();
        s.check(
            took < SLACK,
            format!("request {i} took {took:?} with {UPLOADS} stalled uploads"),
        )?;
        let h = s.control("GET /healthz HTTP/1.1", b"")?;
        s.check(h.status() == Some(200), format!("/healthz answered {h}"))?;
    }

    // Every stalled connection is closed by the daemon: a slot holder after the body
    // timeout (408), a waiter after the queue timeout (503), a half header after the
    // header timeout; each within those plus the lingering close, with room to spare.
    let bound = Duration::from_secs(3 + 5 + 5) + SLACK;
    let mut answers = std::collections::BTreeMap::<String, usize>::new();
    for (i, mut c) in stalled.into_iter().enumerate() {
        c.set_read_timeout(Some(
            bound
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(1)),
        ))?;
        let mut buf = Vec::new();
        let end = c.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        s.check(
            !matches!(&end, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            format!(
                "stalled connection {i} still open {:?} after it stalled (got {text:?})",
                since.elapsed()
            ),
        )?;
        let status = text.get(9..12).unwrap_or("closed").to_string();
        *answers.entry(status).or_default() += 1;
    }
    eprintln!("stalled connections ended with: {answers:?}");
    s.check(
        answers
            .keys()
            .all(|k| ["408", "503", "closed"].contains(&k.as_str()))
            && answers.get("408").is_some_and(|&n| n >= 1),
        format!("stalled connections got {answers:?}"),
    )?;

    let images = s.entries("images");
    s.check(
        images == ["fn"],
        format!("images/ after the stalled uploads: {images:?}"),
    )?;
    s.expect_hello(ip, "/after")?;
    s.check_no_request_left()
}

/// Issue 10 #8, the pool: with tokio's blocking pool cut to 8 threads (it has 512 by
/// default, which 520 stalled uploads took), 20 uploads in progress (all admitted:
/// --max-uploads 32) must not keep a function's container from starting: installs run on
/// threads of their own. Once the uploaders hang up, their staging dirs are gone.
fn uploads_never_take_the_spawn_pool() -> TestResult {
    const UPLOADS: usize = 20;
    const BLOCKING_THREADS: usize = 8;
    let state = support::state_dir().join(support::unique("api"));
    let listen = "127.0.200.1:8080";
    let mut cfg =
        crate::daemon::config(&state, "native", "10.200.0.0/24", &["--max-uploads", "32"]);
    cfg.listen = listen.parse()?;
    let parent = cfg.cgroup_parent.clone();
    let images = cfg.images_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let d = Daemon::start(cfg).await?;
        let result = async {
            let image = fs::File::open(support::image("test-handler.tar")?)?;
            let ip = d.deploy("fn", image, Default::default()).await?.ip;
            tokio::spawn(serve_api(d.clone()));
            let mut stalled = Vec::new();
            for i in 0..UPLOADS {
                let mut c = connect_retrying(listen).await?;
                let head = format!(
                    "POST /api/new HTTP/1.1\r\nHost: x\r\nX-Image-Name: stall{i}\r\n\
                     Content-Length: 10000000\r\n\r\nab"
                );
                c.write_all(head.as_bytes()).await?;
                stalled.push(c);
            }
            // As many uploads in their installer (a staging dir each) as the blocking pool
            // has threads, before the request.
            let installing = async {
                while staging_dirs(&images) < BLOCKING_THREADS {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(SLACK, installing).await.map_err(|_| {
                format!("only {} uploads started installing", staging_dirs(&images))
            })?;
            let answer = tokio::time::timeout(SLACK * 2, get(ip)).await;
            let answer = answer.map_err(|_| {
                format!("GET http://{ip}/ hung while {UPLOADS} uploads were in progress")
            })??;
            ensure(
                answer.contains("Hello from FaaS handler!"),
                format!("GET http://{ip}/ answered {answer:?}"),
            )?;
            drop(stalled);
            let cleaned = async {
                while staging_dirs(&images) > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(SLACK, cleaned).await.map_err(|_| {
                format!(
                    "{} staging dirs left after the uploaders hung up",
                    staging_dirs(&images)
                )
            })?;
            Ok(())
        }
        .await;
        d.shutdown().await;
        result
    });
    support::remove_cgroup_parent(&parent);
    result
}

async fn connect_retrying(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) if tries < 100 => tries += 1,
            done => return done,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get(ip: std::net::Ipv4Addr) -> std::io::Result<String> {
    let mut c = tokio::net::TcpStream::connect((ip, 80)).await?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: fn\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    c.read_to_string(&mut out).await?;
    Ok(out)
}

fn staging_dirs(images: &std::path::Path) -> usize {
    fs::read_dir(images)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging-"))
        .count()
}

/// An http.client upload (headers, then the whole body, then read the answer) that the
/// daemon refuses before reading the body, as Python's standard library does it.
const EARLY_ERROR_CLIENT: &str = r#"
import http.client, json, sys
host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = b"x" * 1_000_000
cases = [("bad name", {"X-Image-Name": "bad name!"}, 400, "invalid function name"),
         ("no header", {}, 400, "missing header X-Image-Name"),
         ("too large", {"X-Image-Name": "big"}, 413, "larger than")]
failures = []
for name, headers, want, words in cases:
    for i in range(rounds if name == "bad name" else 10):
        c = http.client.HTTPConnection(host, port, timeout=30)
        try:
            c.request("POST", "/api/new", body=body * (3 if name == "too large" else 1), headers=headers)
            r = c.getresponse()
            text = r.read().decode()
            if r.status != want or words not in json.loads(text)["error"]:
                failures.append("%s #%d: %d %s" % (name, i, r.status, text))
        except Exception as e:
            failures.append("%s #%d: %r" % (name, i, e))
        finally:
            c.close()
print(json.dumps(failures))
"#;

/// Issue 11 #4: an early 4xx reaches a client that is still sending its body, 50 times in
/// a row (a reset, `Broken pipe` in http.client, is what it got before).
fn early_errors_reach_a_client_still_sending() -> TestResult {
    let s = Setup::new(&["--max-upload-mb", "2"])?;
    let _d = s.start()?;
    let addr = s.control_addr();
    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new("python3")
        .args(["-c", EARLY_ERROR_CLIENT, host, port, "50"])
        .output()?;
    s.check(
        out.status.success(),
        format!(
            "http.client script: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    let failures: Vec<String> = serde_json::from_slice(&out.stdout)?;
    s.check(
        failures.is_empty(),
        format!(
            "{} of 70 early errors did not reach the client: {failures:#?}",
            failures.len()
        ),
    )?;
    let images = s.entries("images");
    s.check(
        images.is_empty(),
        format!("images/ after refused uploads: {images:?}"),
    )
}

/// The parent cgroup's limit files: (memory limit, pids.max), read from the kernel.
fn parent_limits(parent: &str) -> Result<(String, String), Failed> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let (mem, pids) = if root.join("cgroup.controllers").exists() {
        (
            root.join(parent).join("memory.max"),
            root.join(parent).join("pids.max"),
        )
    } else {
        (
            root.join("memory")
                .join(parent)
                .join("memory.limit_in_bytes"),
            root.join("pids").join(parent).join("pids.max"),
        )
    };
    let read = |p: &PathBuf| {
        fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .map_err(|e| Failed::from(format!("{}: {e}", p.display())))
    };
    Ok((read(&mem)?, read(&pids)?))
}

/// Issue 10 #9: all containers together are bounded by the parent cgroup's memory and pids
/// limits (given, or derived from the machine), and a per-container limit that cannot fit
/// in them is refused at start, leaving nothing.
fn parent_cgroup_limits_all_containers() -> TestResult {
    let s = Setup::new(&["--memory-total-mb", "700", "--pids-total", "300"])?;
    {
        let _d = s.start()?;
        let got = parent_limits(&s.cgroup_parent)?;
        s.check(
            got == ((700u64 << 20).to_string(), "300".to_string()),
            format!("parent cgroup limits: {got:?}"),
        )?;
        // Containers still run under the limited parent.
        let ip = s.deploy("fn", "test-handler.tar", Via::File)?;
        s.expect_hello(ip, "/limited")?;
    }

    // The defaults: 75% of the machine's memory; some pids bound.
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let total_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no MemTotal in /proc/meminfo")?;
    let d = Setup::new(&[])?;
    {
        let _d = d.start()?;
        let (mem, pids) = parent_limits(&d.cgroup_parent)?;
        let want = ((total_kb >> 10) * 75 / 100) << 20;
        d.check(
            mem == want.to_string() && pids.parse::<u64>().is_ok(),
            format!("default parent limits: memory {mem} (wanted {want}), pids {pids}"),
        )?;
    }

    for (flags, words) in [
        (
            ["--memory-mb", "512", "--memory-total-mb", "256"],
            "--memory-mb 512 (each container) is more than the memory of all containers together, 256 MiB",
        ),
        (
            ["--pids-max", "128", "--pids-total", "100"],
            "--pids-max 128 (each container) is more than the processes of all containers together, 100",
        ),
    ] {
        let bad = Setup::new(&flags)?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_faasd"))
            .arg("--state-dir")
            .arg(bad.state())
            .args(["--listen", &bad.control_addr()])
            .args(["--cgroup-parent", &bad.cgroup_parent])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut status = None;
        eventually(Duration::from_secs(10), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("faasd {flags:?} started instead of refusing").into());
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err)?;
        let left = faasd::runtime::cgroup_children(&bad.cgroup_parent);
        let parent_made = parent_limits(&bad.cgroup_parent).is_ok();
        bad.check(
            !status.success() && err.contains(words),
            format!("faasd {flags:?}: {status}, stderr {err:?}"),
        )?;
        bad.check(
            !bad.state().exists() && !parent_made && left.is_empty(),
            format!("faasd {flags:?} left a state dir or a cgroup"),
        )?;
    }
    Ok(())
}

/// The value of metric `name` with label function="fn", if /metrics has it.
fn metric(s: &Setup, name: &str) -> Result<Option<f64>, Failed> {
    let r: Reply = s.control("GET /metrics HTTP/1.1", b"")?;
    s.check(r.status() == Some(200), format!("/metrics answered {r}"))?;
    let prefix = format!("{name}{{function=\"fn\"}} ");
    Ok(r.body()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok()))
}

/// Issue 11 #7: a prewarmed handler that crashes as soon as it has connected is retried
/// with an exponential backoff (0.5 s, doubling), shown in /metrics; not respawned every
/// second. A good redeploy ends the backoff and serves.
fn crash_looping_prewarm_backs_off() -> TestResult {
    let s = Setup::new(&["--prewarm", "1"])?;
    let _d = s.start()?;
    let ip = s.deploy("fn", "test-handler-crash.tar", Via::File)?;
    let window = Duration::from_secs(7);
    thread::sleep(window);
    let failures = metric(&s, "faasd_prewarm_failures_total")?;
    let backoff = metric(&s, "faasd_prewarm_backoff_seconds")?;
    // Attempts at 0, 0.5, 1.5, 3.5 s (the next at 7.5): 4, and one of slack; once a
    // second, as before, would be 7 or more.
    s.check(
        failures.is_some_and(|n| (2.0..=5.0).contains(&n)) && backoff.is_some_and(|b| b > 0.0),
        format!(
            "after {window:?} of a crashing handler: failures {failures:?}, backoff {backoff:?}"
        ),
    )?;

    let again = s.deploy("fn", "test-handler.tar", Via::File)?;
    s.check(again == ip, format!("redeploy moved {ip} to {again}"))?;
    s.expect_hello(ip, "/after-crashes")?;
    let recovered = eventually(SLACK, || {
        metric(&s, "faasd_prewarmed").is_ok_and(|v| v == Some(1.0))
            && metric(&s, "faasd_prewarm_backoff_seconds").is_ok_and(|v| v == Some(0.0))
    });
    s.check(
        recovered,
        "after the good redeploy, no prewarmed container waits, or the backoff goes on",
    )?;
    s.expect_hello(ip, "/prewarmed")
}
