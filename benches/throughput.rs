//! Throughput with 8 concurrent clients, cold, through the real faasd binary, and the
//! CPU each container costs: (user + sys of the whole machine from /proc/stat over the
//! run, every CPU, kworkers and softirq included) / requests. The same run measures
//! native `--prewarm 0`, native with the daemon's default flags (issue 13: within 5 % of
//! `--prewarm 0`), and `--runtime runc` for scale (fewer requests: runc is slow). All
//! daemons are up at once and take turns in rounds (only one is loaded at a time), so
//! that a drift in the machine's other load hits each alike. `ab -c 8` against the same daemon cross-checks
//! the client when apache2-utils is installed.
//!
//! Needs root; runs in a network namespace of its own. A fixed count of requests, bounded
//! in time, rather than criterion: the CPU accounting needs one known span of requests.
//!
//!     cargo bench --bench throughput [-- --requests 5000 --runc-requests 300 --clients 8 --rounds 5]
//!
//! The summary lands in target/bench-summary/throughput.md too. The whole machine's CPU
//! includes whatever else runs: measure on an otherwise idle machine.

#[path = "support/mod.rs"]
mod support;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use support::cpu::{CpuSample, CpuUse};
use support::faasd_process::Faasd;
use support::load::{closed_loop, Load};
use support::{ms, Stats};

#[derive(Parser)]
struct Args {
    /// Requests per native daemon.
    #[arg(long, default_value_t = 5000)]
    requests: u64,
    /// Requests for the runc backend (0: skip it).
    #[arg(long, default_value_t = 300)]
    runc_requests: u64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Turns each daemon takes (its requests split between them).
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Bound on each round and on each ab run, in seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Requests before the measured span, so pools and the daemon's threads are up.
const WARM_UP: u64 = 200;

struct Run {
    name: &'static str,
    load: Load,
    cpu: CpuUse,
    ab: Option<f64>,
}

fn main() {
    let args = Args::parse();
    support::require_root();
    support::enter_private_namespaces();
    let image = support::test_images().join("test-handler.tar");
    let configs: [(&str, &[&str], u64); 3] = [
        ("native, --prewarm 0", &["--prewarm", "0"], args.requests),
        ("native, default flags", &[], args.requests),
        (
            "runc, --prewarm 0",
            &["--runtime", "runc", "--prewarm", "0"],
            args.runc_requests,
        ),
    ];
    // Every daemon is started and warmed up first; then the rounds take turns between
    // them, so that a drift in what else runs on the machine hits each alike.
    let daemons: Vec<(&str, u64, Faasd, Ipv4Addr)> = configs
        .into_iter()
        .enumerate()
        .filter(|(_, (_, _, requests))| *requests > 0)
        .map(|(n, (name, flags, requests))| {
            let faasd = Faasd::start(n as u8 + 1, flags);
            let ip = faasd.deploy("static", &image);
            let warm = closed_loop(ip, args.clients, WARM_UP.min(requests), limit(&args));
            assert_eq!(
                warm.failed, 0,
                "{name}: warm-up failed: {:?}",
                warm.first_error
            );
            (name, requests, faasd, ip)
        })
        .collect();
    let mut runs: Vec<Run> = daemons
        .iter()
        .map(|(name, ..)| Run {
            name,
            load: Load::default(),
            cpu: CpuUse::default(),
            ab: None,
        })
        .collect();
    for round in 0..args.rounds {
        for ((_, requests, faasd, ip), run) in daemons.iter().zip(&mut runs) {
            // This round's share of the requests (the first rounds take the remainder).
            let share = requests / args.rounds + u64::from(round < requests % args.rounds);
            let before = CpuSample::now(faasd.pid());
            run.load
                .add(closed_loop(*ip, args.clients, share, limit(&args)));
            run.cpu.add(&CpuSample::now(faasd.pid()).since(&before));
        }
    }
    for ((_, requests, _, ip), run) in daemons.iter().zip(&mut runs) {
        run.ab = ab(*ip, args.clients, *requests, limit(&args));
        let load = &run.load;
        println!(
            "{}: {} requests in {:.1} s, {:.0}/s, {} failed{}",
            run.name,
            load.done,
            load.wall.as_secs_f64(),
            load.per_second(),
            load.failed,
            load.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );
    }
    for (.., faasd, _) in daemons {
        faasd.stop();
    }
    support::report("throughput", &summary(&args, &runs));
}

fn limit(args: &Args) -> Duration {
    Duration::from_secs(args.max_seconds)
}

/// `ab -c CLIENTS -n N` against the function: its requests per second, or None without ab.
fn ab(ip: Ipv4Addr, clients: usize, requests: u64, limit: Duration) -> Option<f64> {
    let out = Command::new("ab")
        .args(["-q", "-r", "-s", "30", "-c", &clients.to_string()])
        // -t first: it implies -n 50000, which the -n after it replaces.
        .args(["-t", &limit.as_secs().to_string()])
        .args(["-n", &requests.to_string()])
        .arg(format!("http://{ip}/ab"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let failed: u64 = field(&text, "Failed requests:")?.parse().ok()?;
    if failed > 0 {
        eprintln!("ab: {failed} failed requests against {ip}");
    }
    field(&text, "Requests per second:")?.parse().ok()
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()
}

fn summary(args: &Args, runs: &[Run]) -> String {
    let mut out = format!(
        "Throughput, static handler, cold, {} concurrent clients back to back, through the \
         faasd binary; CPU per container = user+sys of the whole machine (/proc/stat, all \
         CPUs, kworkers and softirq included) over the run / requests; {}:\n\n\
         | daemon | requests | failed | containers/s | p50 | p99 | CPU per container | of it faasd + containers | of it the clients | machine busy | ab -c {} containers/s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        args.clients,
        support::machine(),
        args.clients,
    );
    for r in runs {
        let s = Stats::of(&r.load.latencies);
        let per = |d: Duration| ms(d / r.load.done.max(1) as u32);
        out += &format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} % | {} |\n",
            r.name,
            r.load.done,
            r.load.failed,
            r.load.per_second(),
            ms(s.p50),
            ms(s.p99),
            per(r.cpu.machine),
            per(r.cpu.daemon),
            per(r.cpu.bench),
            100.0 * r.cpu.machine_busy,
            r.ab.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    let rate = |name: &str| {
        runs.iter()
            .find(|r| r.name == name)
            .map(|r| r.load.per_second())
    };
    if let (Some(zero), Some(default)) =
        (rate("native, --prewarm 0"), rate("native, default flags"))
    {
        out += &format!(
            "\ndefault flags vs --prewarm 0: {:+.1} % containers/s (issue 13: within 5 %)\n",
            100.0 * (default / zero - 1.0)
        );
    }
    if let (Some(native), Some(runc)) = (rate("native, --prewarm 0"), rate("runc, --prewarm 0")) {
        out += &format!("native/runc containers/s: {:.1}x\n", native / runc);
    }
    out += "(\"of it faasd + containers\": the daemon's CPU and that of the containers it \
            reaped; the rest of the machine's is the kernel's work elsewhere (kworkers, \
            softirq), the clients and anything else running.)\n";
    out
}
