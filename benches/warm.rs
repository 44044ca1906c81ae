//! Warm vs cold (issue 13), through the real faasd binary: the Python and the static
//! handler, one client, requests spaced 100 ms apart (a function with spaced traffic),
//! under the daemon's default flags, `--prewarm 0` (every request cold) and `--prewarm 1`
//! (every request a warm hit: the refill takes far less than 100 ms); then the memory a
//! warm container holds, from its cgroup (memory.current on v2, memory.usage_in_bytes on
//! v1), with the handler processes' RSS beside it.
//!
//! Needs root; runs in a network namespace of its own. One daemon at a time, both
//! handlers deployed to each. Spaced requests at a fixed count rather than criterion,
//! which plans by wall time.
//!
//!     cargo bench --bench warm [-- --requests 100 --gap-ms 100]

#[path = "support/mod.rs"]
mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use support::faasd_process::Faasd;
use support::kernel_objects::{cgroup_dirs, descendants_of};
use support::load::request;
use support::{ms, Stats};

#[derive(Parser)]
struct Args {
    /// Requests per handler and daemon.
    #[arg(long, default_value_t = 100)]
    requests: u64,
    /// Time between the end of one request and the start of the next.
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const HANDLERS: [(&str, &str, &str); 2] = [
    // (function, image, what its process's command line holds)
    ("static", "test-handler.tar", "test-handler"),
    ("python", "python-handler.tar", "python"),
];
const DAEMONS: [(&str, &[&str]); 3] = [
    ("default flags", &[]),
    ("--prewarm 0", &["--prewarm", "0"]),
    ("--prewarm 1", &["--prewarm", "1"]),
];
/// How long a warm container may take to appear after deploy or a request.
const WARM_WAIT: Duration = Duration::from_secs(30);

struct Row {
    handler: &'static str,
    daemon: &'static str,
    stats: Stats,
    warm_hits: Option<f64>,
}

fn main() {
    let args = Args::parse();
    support::require_root();
    support::enter_private_namespaces();
    let images = support::test_images();
    let gap = Duration::from_millis(args.gap_ms);
    let mut rows = Vec::new();
    let mut memory = Vec::new();
    let mut reported = Vec::new();
    for (n, (daemon, flags)) in DAEMONS.into_iter().enumerate() {
        let faasd = Faasd::start(n as u8 + 1, flags);
        let ips: Vec<Ipv4Addr> = HANDLERS
            .iter()
            .map(|(name, image, _)| faasd.deploy(name, &images.join(image)))
            .collect();
        for ((name, _, _), ip) in HANDLERS.iter().zip(&ips) {
            // The first request after deploy is part of the measurement (issue 13: it is
            // served warm), so only the gap comes first.
            std::thread::sleep(gap);
            let mut samples = Vec::new();
            for _ in 0..args.requests {
                let t = Instant::now();
                request(*ip).unwrap_or_else(|e| panic!("{name} under {daemon}: {e}"));
                samples.push(t.elapsed());
                std::thread::sleep(gap);
            }
            rows.push(Row {
                handler: name,
                daemon,
                stats: Stats::of(&samples),
                warm_hits: faasd.metric("faasd_prewarmed_requests_total", name),
            });
        }
        if daemon == "--prewarm 1" {
            memory = warm_memory(&faasd);
            // What the daemon itself reports (issue 13), where it does.
            reported = HANDLERS
                .iter()
                .map(|(name, _, _)| faasd.metric("faasd_prewarmed_memory_bytes", name))
                .collect();
        }
        faasd.stop();
    }
    support::report("warm", &summary(&args, &rows, &memory, &reported));
}

/// (handler, cgroup memory in bytes, RSS of its processes in KiB) of each warm
/// container: a process below the daemon whose command line names the handler, and the
/// memory cgroup it is in.
fn warm_memory(faasd: &Faasd) -> Vec<(&'static str, u64, u64)> {
    let deadline = Instant::now() + WARM_WAIT;
    loop {
        let found = warm_containers(faasd);
        let all = HANDLERS
            .iter()
            .all(|(name, _, _)| found.iter().any(|(h, _, _)| h == name));
        if all || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn warm_containers(faasd: &Faasd) -> Vec<(&'static str, u64, u64)> {
    let mut out = Vec::new();
    let memory_root = cgroup_dirs(&faasd.cgroup_parent)
        .into_iter()
        .find(|d| d.join("memory.current").exists() || d.join("memory.usage_in_bytes").exists());
    let Some(memory_root) = memory_root else {
        return out;
    };
    for entry in std::fs::read_dir(&memory_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let cgroup = entry.path();
        let pids: Vec<i32> = read(&cgroup.join("cgroup.procs"))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let below = descendants_of(faasd.pid());
        if pids.is_empty() || !pids.iter().all(|p| below.contains(p)) {
            continue;
        }
        let cmdline = pids
            .iter()
            .map(|p| read(Path::new(&format!("/proc/{p}/cmdline"))).replace('\0', " "))
            .collect::<String>();
        let Some((name, _, _)) = HANDLERS.iter().find(|(_, _, cmd)| cmdline.contains(cmd)) else {
            continue;
        };
        let bytes = ["memory.current", "memory.usage_in_bytes"]
            .iter()
            .find_map(|f| read(&cgroup.join(f)).trim().parse().ok())
            .unwrap_or(0);
        let rss = pids.iter().map(|p| rss_kib(*p)).sum();
        out.push((*name, bytes, rss));
    }
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn rss_kib(pid: i32) -> u64 {
    read(&PathBuf::from(format!("/proc/{pid}/status")))
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn summary(
    args: &Args,
    rows: &[Row],
    memory: &[(&str, u64, u64)],
    reported: &[Option<f64>],
) -> String {
    let mut out = format!(
        "Warm vs cold through the faasd binary, one client, requests {} ms apart, {} per \
         row; {}:\n\n\
         | handler | daemon | requests | served warm | p50 | p99 | p50 vs --prewarm 0 |\n\
         |---|---|---|---|---|---|---|\n",
        args.gap_ms,
        args.requests,
        support::machine()
    );
    let p50 = |handler: &str, daemon: &str| {
        rows.iter()
            .find(|r| r.handler == handler && r.daemon == daemon)
            .map(|r| r.stats.p50)
    };
    for r in rows {
        let vs = p50(r.handler, "--prewarm 0").map_or("-".into(), |cold| {
            format!("{:.2}x", r.stats.p50.as_secs_f64() / cold.as_secs_f64())
        });
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {vs} |\n",
            r.handler,
            r.daemon,
            r.stats.n,
            r.warm_hits.map_or("-".into(), |v| format!("{v:.0}")),
            ms(r.stats.p50),
            ms(r.stats.p99),
        );
    }
    let goal = |handler: &str, daemon: &str, what: &str, bound_ms: f64| {
        let Some(r) = rows
            .iter()
            .find(|r| r.handler == handler && r.daemon == daemon)
        else {
            return String::new();
        };
        let value = if what == "p99" {
            r.stats.p99
        } else {
            r.stats.p50
        };
        format!(
            "- {handler}, {daemon}: {what} {} (goal at most {bound_ms} ms): {}\n",
            ms(value),
            if value.as_secs_f64() * 1e3 <= bound_ms {
                "met"
            } else {
                "missed"
            }
        )
    };
    out += "\nIssue 13's latency goals:\n";
    out += &goal("python", "default flags", "p50", 1.0);
    out += &goal("python", "default flags", "p99", 3.0);
    out += &goal("static", "default flags", "p50", 0.3);
    out += &goal("static", "--prewarm 1", "p50", 0.3);
    out += "\nMemory a warm container holds (--prewarm 1, waiting on /control.sock):\n\n\
            | handler | cgroup memory | handler RSS | faasd_prewarmed_memory_bytes |\n\
            |---|---|---|---|\n";
    let mib = |bytes: f64| format!("{:.2} MiB", bytes / (1 << 20) as f64);
    for (i, (handler, _, _)) in HANDLERS.into_iter().enumerate() {
        let metric = reported.get(i).copied().flatten().map_or("-".into(), mib);
        let mine: Vec<_> = memory.iter().filter(|(h, _, _)| *h == handler).collect();
        if mine.is_empty() {
            out += &format!("| {handler} | no warm container found | | {metric} |\n");
            continue;
        }
        let n = mine.len() as u64;
        let bytes: u64 = mine.iter().map(|(_, b, _)| b).sum::<u64>() / n;
        let rss: u64 = mine.iter().map(|(_, _, r)| r).sum::<u64>() / n;
        out += &format!(
            "| {handler} | {} | {} | {metric} |\n",
            mib(bytes as f64),
            mib(rss as f64 * 1024.0)
        );
    }
    out
}
