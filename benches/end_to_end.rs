//! End-to-end request latency through faasd (HTTP request in, response out), native vs
//! runc backend, with the static C handler and the Python handler, plus throughput with 8
//! concurrent clients. Same daemon code, same images, same request path: only
//! `--runtime` differs. Needs root; runs in a network namespace of its own.
//! `cargo bench --bench end_to_end`; a summary with p50/p99 and ratios follows
//! criterion's output (and lands in target/bench-summary/end_to_end.md).

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use criterion::{Criterion, SamplingMode, Throughput};
use faasd::daemon::{Config, Daemon};
use support::{ms, ratio, Recorder, Stats};

const BACKENDS: [&str; 2] = ["native", "runc"];
const HANDLERS: [(&str, &str); 2] = [
    ("static", "test-handler.tar"),
    ("python", "python-handler.tar"),
];
const CLIENTS: usize = 8;

struct Deployment {
    backend: &'static str,
    handler: &'static str,
    ip: Ipv4Addr,
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

fn start_daemons(
    rt: &tokio::runtime::Runtime,
    state: &Path,
    images: &Path,
) -> (Vec<Arc<Daemon>>, Vec<Deployment>) {
    let mut daemons = Vec::new();
    let mut deployments = Vec::new();
    for (i, backend) in BACKENDS.into_iter().enumerate() {
        let dir = state.join(backend);
        let subnet = format!("10.0.{i}.0/24");
        let parent = format!("faasd-bench-e2e-{backend}-{}", std::process::id());
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
            "--cgroup-parent",
            &parent,
        ]);
        let d = rt.block_on(Daemon::start(cfg)).expect("start faasd");
        for (handler, tarball) in HANDLERS {
            let Ok(upload) = std::fs::File::open(images.join(tarball)) else {
                eprintln!("skipping the {handler} handler: {tarball} is missing");
                continue;
            };
            let deployed = rt
                .block_on(d.deploy(handler, upload, Default::default()))
                .expect("deploy");
            deployments.push(Deployment {
                backend,
                handler,
                ip: deployed.ip,
            });
        }
        daemons.push(d);
    }
    (daemons, deployments)
}

fn main() {
    support::require_root();
    support::enter_private_namespaces();
    let images = support::test_images();
    let state = tempfile::tempdir().expect("state dir");
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let (daemons, deployments) = start_daemons(&rt, state.path(), &images);
    let mut c = Criterion::default().configure_from_args();

    let latency: Vec<(&Deployment, Recorder)> = deployments
        .iter()
        .map(|d| (d, Recorder::default()))
        .collect();
    let mut g = c.benchmark_group("request_latency");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (d, rec) in &latency {
        g.bench_function(format!("{}/{}", d.handler, d.backend), |b| {
            b.iter_custom(|iters| rec.run(iters, || request(d.ip)))
        });
    }
    g.finish();

    let statics: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| d.handler == "static")
        .collect();
    let mut throughput = Vec::new();
    let mut g = c.benchmark_group("throughput_8_clients");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(CLIENTS as u64));
    for d in &statics {
        let mut done = 0u64;
        let mut wall = Duration::ZERO;
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

    support::report("end_to_end", &summary(&latency, &throughput));
    for d in daemons {
        rt.block_on(d.shutdown());
    }
}

fn summary(latency: &[(&Deployment, Recorder)], throughput: &[(&str, f64)]) -> String {
    let mut out = format!(
        "End-to-end request latency through faasd, sequential (HTTP GET in, answer out), {}:\n\n\
         | handler | backend | requests | p50 | p99 | p99/p50 | runc/native p50 |\n\
         |---|---|---|---|---|---|---|\n",
        support::machine()
    );
    let stats = |handler: &str, backend: &str| -> Option<Stats> {
        latency
            .iter()
            .find(|(d, _)| d.handler == handler && d.backend == backend)
            .map(|(_, r)| r.stats())
    };
    for (d, rec) in latency {
        let s = rec.stats();
        let vs = match (stats(d.handler, "runc"), stats(d.handler, "native")) {
            (Some(r), Some(n)) if d.backend == "native" => ratio(r.p50, n.p50),
            _ => String::new(),
        };
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {vs} |\n",
            d.handler,
            d.backend,
            s.n,
            ms(s.p50),
            ms(s.p99),
            ratio(s.p99, s.p50),
        );
    }
    out += &format!("\nThroughput, static handler, {CLIENTS} concurrent clients:\n\n| backend | requests/s |\n|---|---|\n");
    for (backend, rps) in throughput {
        out += &format!("| {backend} | {rps:.0} |\n");
    }
    if let [(_, a), (_, b)] = throughput {
        out += &format!("\nnative/runc throughput: {:.1}x\n", a / b);
    }
    out
}
