//! End-to-end request latency through faasd (HTTP request in, response out), native vs
//! runc backend, with the static C handler and the Python handler, against the floor
//! measured in the same run: the same client and request answered by the same static
//! handler started with a plain fork+exec per connection, no isolation. Same daemon
//! code, same images, same request path: only `--runtime` differs. Two modes:
//! - cold: every request waits for its container to be made (`--prewarm 0`, the
//!   default), requests back to back;
//! - prewarmed: `--prewarm 1`, requests spaced so the next container can be ready
//!   (what a function with spaced traffic sees); the summary says how many found one.
//!
//! Needs root; runs in a network namespace of its own. `cargo bench --bench end_to_end`;
//! a summary with p50/p99 and ratios follows criterion's output (and lands in
//! target/bench-summary/end_to_end.md), in the README's table layout. Throughput with 8
//! clients is `cargo bench --bench throughput`.

#[path = "support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use criterion::{BenchmarkGroup, Criterion, SamplingMode};
use faasd::daemon::{Config, Daemon};
use support::{ms, ratio, Recorder, Stats};

const BACKENDS: [&str; 2] = ["native", "runc"];
const HANDLERS: [(&str, &str); 2] = [
    ("static", "test-handler.tar"),
    ("python", "python-handler.tar"),
];
/// Time between prewarmed requests: longer than the slowest refill (runc + Python).
const GAP: Duration = Duration::from_millis(60);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cold,
    Prewarmed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Prewarmed => "prewarmed",
        }
    }
}

struct Deployment {
    daemon: Arc<Daemon>,
    backend: &'static str,
    mode: Mode,
    handler: &'static str,
    ip: Ipv4Addr,
}

impl Deployment {
    fn id(&self) -> String {
        format!("{}/{}/{}", self.handler, self.backend, self.mode.name())
    }

    /// How many requests a waiting container served, from the daemon's /metrics.
    fn prewarmed_requests(&self) -> u64 {
        let text = self.daemon.metrics_text();
        support::metric(&text, "faasd_prewarmed_requests_total", self.handler).unwrap_or(0.0) as u64
    }
}

fn request(ip: Ipv4Addr) {
    support::load::request(ip).unwrap_or_else(|e| panic!("request to {ip}: {e}"));
}

/// The floor, served on 127.0.0.1:80 of the bench's network namespace by a thread of this
/// process: per connection, a plain fork+exec of the static test handler (no namespaces,
/// cgroup, mounts, capabilities or seccomp; only a chroot into `dir`, so that it finds
/// /control.sock), the connection handed over as faasd does, the handler reaped.
fn serve_floor(dir: &Path) {
    support::static_handler(dir);
    let control = UnixListener::bind(dir.join("control.sock")).expect("floor control socket");
    let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 80)).expect("floor listener");
    let root = dir.to_path_buf();
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let conn = conn.expect("floor accept");
            let root = root.clone();
            let mut cmd = Command::new("/test-handler");
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            // SAFETY: chroot and chdir are async-signal-safe syscalls on data made before
            // the fork.
            unsafe {
                cmd.pre_exec(move || {
                    nix::unistd::chroot(&root)?;
                    nix::unistd::chdir("/")?;
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("floor fork+exec");
            let (handler, _) = control.accept().expect("floor handler connects");
            faasd::fdpass::send_fd(handler.as_raw_fd(), conn.as_raw_fd()).expect("hand over");
            drop(conn);
            child.wait().expect("floor reap");
        }
    });
}

/// A daemon per (backend, mode), each with both handlers deployed.
fn deploy_all(rt: &tokio::runtime::Runtime, state: &Path, images: &Path) -> Vec<Deployment> {
    let mut deployments = Vec::new();
    let combos = BACKENDS
        .into_iter()
        .flat_map(|b| [(b, Mode::Cold), (b, Mode::Prewarmed)]);
    for (i, (backend, mode)) in combos.enumerate() {
        let dir = state.join(format!("{backend}-{}", mode.name()));
        let subnet = format!("10.0.{i}.0/24");
        let parent = cgroup_parent(i);
        let prewarm = if mode == Mode::Prewarmed { "1" } else { "0" };
        let cfg = Config::parse_from([
            "faasd",
            "--state-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--subnet",
            &subnet,
            "--runtime",
            backend,
            "--prewarm",
            prewarm,
            "--cgroup-parent",
            &parent,
        ]);
        let daemon = rt.block_on(Daemon::start(cfg)).expect("start faasd");
        for (handler, tarball) in HANDLERS {
            let Ok(upload) = std::fs::File::open(images.join(tarball)) else {
                eprintln!("skipping the {handler} handler: {tarball} is missing");
                continue;
            };
            let deployed = rt
                .block_on(daemon.deploy(handler, upload, Default::default()))
                .expect("deploy");
            deployments.push(Deployment {
                daemon: daemon.clone(),
                backend,
                mode,
                handler,
                ip: deployed.ip,
            });
        }
    }
    deployments
}

fn cgroup_parent(i: usize) -> String {
    format!("faasd-bench-e2e-{i}-{}", std::process::id())
}

fn latency(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    d: &Deployment,
) -> Recorder {
    let rec = Recorder::default();
    match d.mode {
        Mode::Cold => g
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(5)),
        // Criterion plans by wall time, and the gaps make each request ~GAP of it: ~200
        // requests.
        Mode::Prewarmed => g
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(GAP * 200),
    };
    g.bench_function(d.id(), |b| {
        let gap = match d.mode {
            Mode::Cold => Duration::ZERO,
            Mode::Prewarmed => GAP,
        };
        b.iter_custom(|iters| rec.run_spaced(iters, gap, || request(d.ip)))
    });
    rec
}

fn main() {
    support::require_root();
    support::enter_private_namespaces();
    let images = support::test_images();
    let state = tempfile::tempdir().expect("state dir");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let deployments = deploy_all(&rt, state.path(), &images);
    serve_floor(state.path());
    let mut c = Criterion::default().configure_from_args();

    let mut g = c.benchmark_group("request_latency");
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    let floor = Recorder::default();
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .bench_function("static/floor", |b| {
            b.iter_custom(|iters| floor.run(iters, || request(Ipv4Addr::LOCALHOST)))
        });
    let latencies: Vec<(&Deployment, Recorder)> = deployments
        .iter()
        .map(|d| (d, latency(&mut g, d)))
        .collect();
    g.finish();

    c.final_summary();

    support::report("end_to_end", &summary(floor.stats(), &latencies));
    let mut daemons: Vec<&Arc<Daemon>> = deployments.iter().map(|d| &d.daemon).collect();
    daemons.dedup_by(|a, b| Arc::ptr_eq(a, b));
    for d in daemons {
        rt.block_on(d.shutdown());
    }
    for i in 0..BACKENDS.len() * 2 {
        support::kernel_objects::remove_cgroup_parent(&cgroup_parent(i));
    }
}

fn summary(floor: Stats, latencies: &[(&Deployment, Recorder)]) -> String {
    let mut out = format!(
        "End-to-end request latency through faasd (HTTP GET in, answer out), {}; cold: back \
         to back, --prewarm 0; prewarmed: --prewarm 1, requests {} ms apart; floor: the \
         same request answered by the static handler after a plain fork+exec, no \
         isolation:\n\n\
         | handler | backend | mode | requests | p50 | p99 | p99/p50 | runc/native p50 |\n\
         |---|---|---|---|---|---|---|---|\n",
        support::machine(),
        GAP.as_millis()
    );
    out += &format!(
        "| static | fork+exec floor | cold | {} | {} | {} | {} | |\n",
        floor.n,
        ms(floor.p50),
        ms(floor.p99),
        ratio(floor.p99, floor.p50),
    );
    let stats = |handler: &str, backend: &str, mode: Mode| {
        latencies
            .iter()
            .find(|(d, _)| d.handler == handler && d.backend == backend && d.mode == mode)
            .map(|(_, r)| r.stats())
    };
    for (d, rec) in latencies {
        let s = rec.stats();
        let vs = match (
            stats(d.handler, "runc", d.mode),
            stats(d.handler, "native", d.mode),
        ) {
            (Some(r), Some(n)) if d.backend == "native" => ratio(r.p50, n.p50),
            _ => String::new(),
        };
        let mode = match d.mode {
            Mode::Cold => "cold".to_string(),
            // Every request made counts, warm-up included.
            Mode::Prewarmed => format!("prewarmed ({} served warm)", d.prewarmed_requests()),
        };
        out += &format!(
            "| {} | {} | {mode} | {} | {} | {} | {} | {vs} |\n",
            d.handler,
            d.backend,
            s.n,
            ms(s.p50),
            ms(s.p99),
            ratio(s.p99, s.p50),
        );
    }
    if let Some(s) = stats("static", "native", Mode::Cold) {
        out += &format!(
            "\nstatic, native, cold: p50 {} (issue 12: at most 1.0 ms), p99 {} of p50 (at \
             most 2.5x), p50 {} the floor's\n",
            ms(s.p50),
            ratio(s.p99, s.p50),
            ratio(s.p50, floor.p50),
        );
    }
    out
}
