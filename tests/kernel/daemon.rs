//! faasd end to end, in-process, inside the harness's private network namespace: deploy
//! the static test handler, call it over HTTP, undeploy.

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use faasd::daemon::{loopback::Loopback, Config, Daemon};
use libtest_mimic::Trial;

use crate::support::{self, ensure, unique, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test("daemon::deploy_serve_undeploy::native", || {
            deploy_serve_undeploy("native")
        }),
        Trial::test("daemon::deploy_serve_undeploy::runc", || {
            deploy_serve_undeploy("runc")
        }),
        Trial::test("daemon::prewarm_serves_from_a_waiting_container", prewarm),
        Trial::test(
            "daemon::exhausted_pool_is_a_clear_error_and_leaves_nothing",
            pool_exhausted,
        ),
        Trial::test(
            "daemon::runc_backend_kills_a_hung_handler_and_leaves_nothing",
            runc_hung_handler,
        ),
    ]
}

pub(crate) fn http_get(ip: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect((ip, 80))?;
    // Generous: under the VM's CPU emulation 20 concurrent runc containers take a while.
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {ip}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A daemon config with its own state dir, cgroup parent and address pool.
pub(crate) fn config(state: &Path, backend: &str, subnet: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "faasd",
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--runtime",
        backend,
        "--subnet",
        subnet,
        // These tests are about serving and cleaning up, not timeouts; the VM is slow.
        "--connect-timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    let parent = unique("faasd-e2e");
    args.extend(["--cgroup-parent", &parent]);
    Config::parse_from(args)
}

/// What a test body gets from [`with_daemon`].
pub(crate) struct Run {
    pub(crate) d: Arc<Daemon>,
    pub(crate) state: PathBuf,
    pub(crate) parent: String,
}

/// Runs `body` against an in-process daemon with its own state dir, cgroup parent and
/// address pool (see [`config`]); then shuts the daemon down, whatever the outcome, and
/// removes its cgroup parent.
pub(crate) fn with_daemon<F, Fut>(
    backend: &str,
    subnet: &str,
    extra: &[&str],
    body: F,
) -> TestResult
where
    F: FnOnce(Run) -> Fut,
    Fut: Future<Output = TestResult>,
{
    let state = support::state_dir().join(unique("daemon"));
    let cfg = config(&state, backend, subnet, extra);
    let parent = cfg.cgroup_parent.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let d = Daemon::start(cfg).await?;
        let result = body(Run {
            d: d.clone(),
            state,
            parent: parent.clone(),
        })
        .await;
        d.shutdown().await;
        result
    });
    support::remove_cgroup_parent(&parent);
    result
}

fn deploy_serve_undeploy(backend: &str) -> TestResult {
    let image = support::image("test-handler.tar")?;
    let subnet = if backend == "runc" {
        "10.0.1.0/24"
    } else {
        "10.0.0.0/24"
    };
    with_daemon(backend, subnet, &[], |Run { d, state, .. }| async move {
        let upload = std::fs::File::open(&image)?;
        let deployed = d.deploy("hello", upload, Default::default()).await?;
        let ip = deployed.ip.to_string();
        let lo = Loopback::open().await?;
        let ours = lo.addresses().await?;
        ensure(
            ours.iter().any(|a| a.ip == deployed.ip && a.is_ours()),
            format!("{ip} not on lo with label lo:faas"),
        )?;
        // Sequential and concurrent requests, each in a fresh container.
        for i in 0..3 {
            let path = format!("/seq/{i}");
            let ip = ip.clone();
            let body = tokio::task::spawn_blocking(move || http_get(&ip, &path)).await??;
            ensure(body.contains("Hello from FaaS handler!"), &body)?;
            ensure(body.contains(&format!("GET /seq/{i} HTTP/1.1")), &body)?;
        }
        // A client slower than the container's start: the handler must wait for the
        // request on its (blocking) socket rather than fail to read it.
        let slow_ip = ip.clone();
        let body = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect((slow_ip.as_str(), 80))?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            std::thread::sleep(Duration::from_millis(300));
            write!(s, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out).map(|_| out)
        })
        .await??;
        ensure(
            body.contains("GET /slow HTTP/1.1"),
            format!("slow client got {body:?}"),
        )?;
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let ip = ip.clone();
                tokio::task::spawn_blocking(move || http_get(&ip, "/par"))
            })
            .collect();
        for c in calls {
            let body = c.await??;
            ensure(body.contains("Hello from FaaS handler!"), &body)?;
        }
        // The rootfs was extracted once; no bundle outlives its request (runc's left are
        // the containers waiting for the next requests; the native runtime makes none).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bundles: Vec<_> = std::fs::read_dir(state.join("bundles"))?.collect();
        let expected = if backend == "runc" { waiting(&d) } else { 0 };
        ensure(
            bundles.len() == expected,
            format!("{} bundles left, {} waiting", bundles.len(), waiting(&d)),
        )?;
        ensure(
            state.join("images/hello/rootfs/test-handler").exists(),
            "rootfs missing",
        )?;
        // Bad names are refused and leave nothing.
        for bad in ["../x", "a/b", "", &"x".repeat(64)] {
            let upload = std::fs::File::open(&image)?;
            ensure(
                d.deploy(bad, upload, Default::default()).await.is_err(),
                format!("{bad:?} accepted"),
            )?;
        }
        d.undeploy("hello").await?;
        let left = lo.addresses().await?;
        ensure(
            !left.iter().any(|a| a.ip == deployed.ip),
            "address left after undeploy",
        )?;
        Ok(())
    })
}

/// A handler that takes the connection and never answers is killed at the exec timeout:
/// the client sees its connection closed, and runc leaves no state, cgroup or bundle.
fn runc_hung_handler() -> TestResult {
    let image = support::image("test-handler-hang.tar")?;
    with_daemon(
        "runc",
        "10.0.2.0/24",
        &["--exec-timeout", "1"],
        |Run { d, state, parent }| async move {
            let upload = std::fs::File::open(&image)?;
            let ip = d
                .deploy("hang", upload, Default::default())
                .await?
                .ip
                .to_string();
            let started = std::time::Instant::now();
            let answer = match tokio::task::spawn_blocking(move || http_get(&ip, "/")).await? {
                Ok(answer) => answer,
                // Killed with our request unread in its socket buffer: the kernel sends RST.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
                Err(e) => return Err(e.into()),
            };
            let took = started.elapsed();
            ensure(
                answer.is_empty(),
                format!("a hung handler answered: {answer:?}"),
            )?;
            ensure(
                took < Duration::from_secs(6),
                format!("connection closed only after {took:?} (exec timeout 1 s)"),
            )?;
            // The request's teardown (runc kill, reap, delete) finishes after the close;
            // the undeploy takes the container waiting for the next request.
            d.undeploy("hang").await?;
            nothing_left(&state, &parent).await?;
            Ok(())
        },
    )
}

/// Containers started ahead of their request (--prewarm), waiting or still starting, as
/// /metrics counts them.
fn waiting(d: &Daemon) -> usize {
    d.metrics_text()
        .lines()
        .filter(|l| l.starts_with("faasd_prewarmed{") || l.starts_with("faasd_prewarm_starting{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum()
}

/// Waits (up to 5 s: teardown follows the answer) until no bundle, runc container or
/// cgroup is left.
pub(crate) async fn nothing_left(state: &Path, parent: &str) -> TestResult {
    let mut left = Vec::new();
    for _ in 0..100 {
        left = leftovers(state, parent)?;
        if left.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("left behind: {left:?}").into())
}

/// Bundles, runc containers and cgroups holding a process, for a daemon's state and
/// parent (an ended container's cgroup may wait, drained, in the runtime's pool).
fn leftovers(state: &Path, cgroup_parent: &str) -> std::io::Result<Vec<String>> {
    let mut left = Vec::new();
    for dir in ["bundles", "runc"] {
        // runc/ exists only with the runc backend.
        let Ok(entries) = std::fs::read_dir(state.join(dir)) else {
            continue;
        };
        for e in entries {
            left.push(format!("{dir}/{}", e?.file_name().to_string_lossy()));
        }
    }
    left.extend(
        support::cgroups_in_use(cgroup_parent)
            .into_iter()
            .map(|c| format!("cgroup {cgroup_parent}/{c}")),
    );
    Ok(left)
}

/// With --prewarm 1 a container waits before any request and serves the first one;
/// another takes its place; a redeploy replaces the waiting container with one of the
/// new image; undeploy leaves nothing. Followed through /metrics, as an operator would.
fn prewarm() -> TestResult {
    with_daemon(
        "native",
        "10.0.3.0/24",
        &["--prewarm", "1"],
        |Run { d, state, parent }| async move {
            let metric = |name: &str| {
                let line = format!("faasd_{name}{{function=\"warm\"}} ");
                d.metrics_text()
                    .lines()
                    .find_map(|l| l.strip_prefix(&line).map(|v| v.to_string()))
                    .unwrap_or_default()
            };
            let waiting_one = || async {
                for _ in 0..200 {
                    if metric("prewarmed") == "1" {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err::<(), libtest_mimic::Failed>("no container waiting after 10 s".into())
            };
            // The waiting container, known by its process (the native runtime makes no
            // bundle directory, and a cgroup may serve one container after another).
            let bundle = || -> std::io::Result<Vec<i32>> { Ok(support::processes_in(&parent)) };
            let image = support::image("test-handler.tar")?;
            let ip = d
                .deploy("warm", std::fs::File::open(&image)?, Default::default())
                .await?
                .ip
                .to_string();
            waiting_one().await?;
            let first = bundle()?;
            let answer = tokio::task::spawn_blocking(move || http_get(&ip, "/warm")).await??;
            ensure(answer.contains("GET /warm HTTP/1.1"), &answer)?;
            ensure(
                metric("prewarmed_requests_total") == "1",
                format!("not served by the waiting container: {}", d.metrics_text()),
            )?;
            waiting_one().await?;
            let second = bundle()?;
            ensure(first != second, format!("no new container: {second:?}"))?;
            // A redeploy discards the container waiting with the old image.
            let serve = support::image("test-handler-serve.tar")?;
            d.deploy("warm", std::fs::File::open(&serve)?, Default::default())
                .await?;
            waiting_one().await?;
            ensure(bundle()? != second, "the old image's container still waits")?;
            d.undeploy("warm").await?;
            nothing_left(&state, &parent).await?;
            Ok(())
        },
    )
}

/// 10.0.4.0/28 hands out .10 to .14; the sixth deploy fails with a clear error and leaves
/// no image, address or registry entry, and the five keep serving.
fn pool_exhausted() -> TestResult {
    with_daemon(
        "native",
        "10.0.4.0/28",
        &[],
        |Run { d, state, .. }| async move {
            let image = support::image("test-handler.tar")?;
            for i in 0..5 {
                let upload = std::fs::File::open(&image)?;
                d.deploy(&format!("f{i}"), upload, Default::default())
                    .await?;
            }
            let upload = std::fs::File::open(&image)?;
            let err = match d.deploy("f5", upload, Default::default()).await {
                Ok(dep) => return Err(format!("sixth deploy got {}", dep.ip).into()),
                Err(e) => e.to_string(),
            };
            ensure(
                err.contains("10.0.4.0/28") && err.contains("exhausted"),
                format!("unclear error: {err}"),
            )?;
            ensure(
                !state.join("images/f5").exists(),
                "image of the failed deploy left",
            )?;
            ensure(d.records().await.len() == 5, "registry changed")?;
            let ours: Vec<_> = Loopback::open()
                .await?
                .addresses()
                .await?
                .into_iter()
                .filter(|a| a.is_ours() && a.ip.octets()[..3] == [10, 0, 4])
                .collect();
            ensure(ours.len() == 5, format!("addresses: {ours:?}"))?;
            let answer = tokio::task::spawn_blocking(|| http_get("10.0.4.14", "/last")).await??;
            ensure(answer.contains("GET /last HTTP/1.1"), &answer)?;
            Ok(())
        },
    )
}
