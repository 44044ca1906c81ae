//! End-to-end request latency through faasd (HTTP request in, response out), native vs
//! runc backend, with the static C handler and the Python handler, plus throughput with 8
//! concurrent clients. Same daemon code, same images, same request path: only
//! `--runtime` differs. Two modes:
//! - cold: every request waits for its container to be made (`--prewarm 0`, the
//!   default), requests back to back;
//! - prewarmed: `--prewarm 1`, requests spaced so the next container can be ready
//!   (what a function with spaced traffic sees); the summary says how many found one.
//!
//! Needs root; runs in a network namespace of its own. `cargo bench --bench end_to_end`;
//! a summary with p50/p99 and ratios follows criterion's output (and lands in
//! target/bench-summary/end_to_end.md).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use faasd::daemon::{Config, Daemon};
use support::{ms, ratio, Recorder};

const BACKENDS: [&str; 2] = ["native", "runc"];
const HANDLERS: [(&str, &str); 2] = [
    ("static", "test-handler.tar"),
    ("python", "python-handler.tar"),
];
const CLIENTS: usize = 8;
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
        let line = format!(
            "faasd_prewarmed_requests_total{{function=\"{}\"}} ",
            self.handler
        );
        self.daemon
            .metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.parse().ok())
            .unwrap_or(0)
    }
}

fn request(ip: Ipv4Addr) {
    let mut s = TcpStream::connect((ip, 80)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /bench HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .expect("send request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read answer");
    assert!(
        answer.windows(24).any(|w| w == b"Hello from FaaS handler!"),
        "unexpected answer: {}",
        String::from_utf8_lossy(&answer)
    );
}

/// One round of the throughput test: every client makes `per_client` requests at once.
fn concurrent(ip: Ipv4Addr, per_client: u64) {
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| (0..per_client).for_each(|_| request(ip)));
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
        let parent = format!("faasd-bench-e2e-{i}-{}", std::process::id());
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
    let mut c = Criterion::default().configure_from_args();

    let mut g = c.benchmark_group("request_latency");
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    let latencies: Vec<(&Deployment, Recorder)> = deployments
        .iter()
        .map(|d| (d, latency(&mut g, d)))
        .collect();
    g.finish();

    let mut throughput = Vec::new();
    let mut g = c.benchmark_group("throughput_8_clients");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(CLIENTS as u64));
    for d in deployments
        .iter()
        .filter(|d| d.handler == "static" && d.mode == Mode::Cold)
    {
        let (mut done, mut wall) = (0u64, Duration::ZERO);
        g.bench_function(format!("static/{}", d.backend), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                concurrent(d.ip, iters);
                let took = t.elapsed();
                done += iters * CLIENTS as u64;
                wall += took;
                took
            })
        });
        throughput.push((d.backend, done as f64 / wall.as_secs_f64()));
    }
    g.finish();
    c.final_summary();

    support::report("end_to_end", &summary(&latencies, &throughput));
    let mut daemons: Vec<&Arc<Daemon>> = deployments.iter().map(|d| &d.daemon).collect();
    daemons.dedup_by(|a, b| Arc::ptr_eq(a, b));
    for d in daemons {
        rt.block_on(d.shutdown());
    }
}

fn summary(latencies: &[(&Deployment, Recorder)], throughput: &[(&str, f64)]) -> String {
    let mut out = format!(
        "End-to-end request latency through faasd (HTTP GET in, answer out), {}; cold: back \
         to back, --prewarm 0; prewarmed: --prewarm 1, requests {} ms apart:\n\n\
         | handler | backend | mode | requests | p50 | p99 | p99/p50 | runc/native p50 |\n\
         |---|---|---|---|---|---|---|---|\n",
        support::machine(),
        GAP.as_millis()
    );
    let p50 = |handler: &str, backend: &str, mode: Mode| {
        latencies
            .iter()
            .find(|(d, _)| d.handler == handler && d.backend == backend && d.mode == mode)
            .map(|(_, r)| r.stats().p50)
    };
    for (d, rec) in latencies {
        let s = rec.stats();
        let vs = match (
            p50(d.handler, "runc", d.mode),
            p50(d.handler, "native", d.mode),
        ) {
            (Some(r), Some(n)) if d.backend == "native" => ratio(r, n),
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
    out += &format!(
        "\nThroughput, static handler, cold, {CLIENTS} concurrent clients:\n\n\
         | backend | requests/s |\n|---|---|\n"
    );
    for (backend, rps) in throughput {
        out += &format!("| {backend} | {rps:.0} |\n");
    }
    if let [(_, a), (_, b)] = throughput {
        out += &format!("\nnative/runc throughput: {:.1}x\n", a / b);
    }
    out
}
