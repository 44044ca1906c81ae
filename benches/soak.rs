//! Soak: many cold requests through the real faasd binary, then a check that nothing
//! grew. Counts the daemon's fds, the mounts in its mount namespace, the cgroups under
//! its parent, the network namespaces it keeps alive (fds, nsfs bind mounts, processes
//! below it) and on the whole machine, the processes below it, its RSS and threads:
//!
//! - baseline: the daemon started, nothing deployed;
//! - loaded: after a warm-up, and again after the run (both 2 s after the last request);
//! - after rm: the function removed (`DELETE /api/functions/static`), once the counts
//!   have settled (tokio lets idle blocking threads go after 10 s).
//!
//! It exits non-zero if a request failed, or if a count after rm exceeds its baseline,
//! or RSS grew during the run, by more than the tolerance printed next to it. The
//! machine-wide namespace count is printed only (other users of the machine move it).
//!
//!     cargo bench --bench soak [-- --requests 100000 --clients 8 --max-seconds 1800
//!                                  --faasd-arg=--prewarm --faasd-arg=0]

#[path = "support/mod.rs"]
mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::Parser;
use support::faasd_process::Faasd;
use support::kernel_objects::{count, Counts};
use support::load::closed_loop;

#[derive(Parser)]
struct Args {
    /// Requests in the measured run (after a warm-up of 1,000).
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Bound on the run, in seconds; what is left then is not sent (the summary says so).
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// A flag for faasd (repeat it); without any, the daemon's defaults.
    #[arg(long = "faasd-arg", allow_hyphen_values = true)]
    faasd_args: Vec<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

const WARM_UP: u64 = 1000;
/// Requests between two progress lines.
const CHUNK: u64 = 10_000;
/// How long the counts may take to settle after rm.
const SETTLE: Duration = Duration::from_secs(30);
/// Idle time before a count after rm: tokio's blocking threads go after 10 s idle.
const IDLE: Duration = Duration::from_secs(12);

/// Growth allowed over the baseline after rm, per count (same order as Counts::fields);
/// None: printed, not checked.
const TOLERANCE: [Option<u64>; 8] = [
    // fds: a lazily opened file of the runtime (e.g. tokio's) may stay, and the netns
    // pool's headroom below (3 fds per namespace: its fd, sockstat, route netlink).
    Some(2 + 3 * NETNS_HEADROOM),
    Some(0), // mounts
    // cgroups (and their open files): the pool removes those unused for 30 s, within
    // IDLE + SETTLE after rm.
    Some(0),
    // Network namespaces held by the daemon: its pool is in the baseline, and keeps up to
    // `--netns-pool` + 2 of those its containers give back (netns_pool.rs).
    Some(NETNS_HEADROOM),
    None,    // network namespaces on the machine: others create them too
    Some(0), // processes below the daemon
    None,    // RSS: checked over the run instead (RSS_GROWTH_KIB)
    Some(2), // threads
];
/// Namespaces the pool may hold above its size once containers have given theirs back.
const NETNS_HEADROOM: u64 = 2;
/// RSS growth allowed from after the warm-up to after the run.
const RSS_GROWTH_KIB: u64 = 8 * 1024;

/// The counts at the four points of the soak.
struct Snapshots {
    baseline: Counts,
    loaded_before: Counts,
    loaded_after: Counts,
    after_rm: Counts,
}

/// What the measured run did.
struct Run {
    done: u64,
    failed: u64,
    first_error: Option<String>,
    wall: Duration,
}

fn main() {
    let args = Args::parse();
    support::require_root();
    support::enter_private_namespaces();
    let image = support::test_images().join("test-handler.tar");
    let flags: Vec<&str> = args.faasd_args.iter().map(String::as_str).collect();
    let faasd = Faasd::start(1, &flags);
    let counts = || count(faasd.pid(), &faasd.cgroup_parent);
    std::thread::sleep(Duration::from_secs(1));
    let baseline = counts();

    let ip = faasd.deploy("static", &image);
    let warm = closed_loop(ip, args.clients, WARM_UP, limit(&args));
    assert_eq!(warm.failed, 0, "warm-up failed: {:?}", warm.first_error);
    std::thread::sleep(Duration::from_secs(2));
    let loaded_before = counts();

    let run = run(&args, ip, &counts);
    std::thread::sleep(Duration::from_secs(2));
    let loaded_after = counts();

    faasd.remove("static");
    std::thread::sleep(IDLE);
    let after_rm = settled(&counts, &baseline);
    let snapshots = Snapshots {
        baseline,
        loaded_before,
        loaded_after,
        after_rm,
    };

    let (table, mut problems) = compare(&snapshots);
    if run.failed > 0 {
        problems.push(format!(
            "{} requests failed (first: {:?})",
            run.failed, run.first_error
        ));
    }
    if run.done < args.requests {
        problems.push(format!(
            "only {} of {} requests within {} s",
            run.done, args.requests, args.max_seconds
        ));
    }
    let mut out = format!(
        "Soak: {} cold requests of the static handler, {} clients, in {:.0} s ({:.0}/s), \
         faasd {}; {}:\n\n{table}",
        run.done,
        args.clients,
        run.wall.as_secs_f64(),
        run.done as f64 / run.wall.as_secs_f64(),
        if flags.is_empty() {
            "default flags".to_string()
        } else {
            flags.join(" ")
        },
        support::machine(),
    );
    if problems.is_empty() {
        out += "\nNo leak: every checked count is back within its tolerance.\n";
    } else {
        out += &format!("\nFAILED:\n- {}\n", problems.join("\n- "));
        out += &format!("\n--- faasd log (end) ---\n{}\n", faasd.log_tail());
    }
    support::report("soak", &out);
    faasd.stop();
    if !problems.is_empty() {
        std::process::exit(1);
    }
}

fn limit(args: &Args) -> Duration {
    Duration::from_secs(args.max_seconds)
}

/// The measured requests, in chunks with a progress line after each.
fn run(args: &Args, ip: Ipv4Addr, counts: &impl Fn() -> Counts) -> Run {
    let start = Instant::now();
    let mut run = Run {
        done: 0,
        failed: 0,
        first_error: None,
        wall: Duration::ZERO,
    };
    while run.done + run.failed < args.requests && start.elapsed() < limit(args) {
        let chunk = CHUNK.min(args.requests - run.done - run.failed);
        let left = limit(args).saturating_sub(start.elapsed());
        let load = closed_loop(ip, args.clients, chunk, left);
        run.done += load.done;
        run.failed += load.failed;
        run.first_error = run.first_error.take().or(load.first_error);
        let now = counts();
        println!(
            "{} requests, {} failed, {:.0} s, {:.0}/s; fds {}, cgroups {}, RSS {} KiB, threads {}",
            run.done,
            run.failed,
            start.elapsed().as_secs_f64(),
            run.done as f64 / start.elapsed().as_secs_f64(),
            now.fds,
            now.cgroups,
            now.rss_kib,
            now.threads
        );
    }
    run.wall = start.elapsed();
    run
}

/// The before/after table, and every count that grew beyond its tolerance.
fn compare(s: &Snapshots) -> (String, Vec<String>) {
    let mut problems = Vec::new();
    let grown = s
        .loaded_after
        .rss_kib
        .saturating_sub(s.loaded_before.rss_kib);
    if grown > RSS_GROWTH_KIB {
        problems.push(format!(
            "daemon RSS grew by {grown} KiB during the run (tolerance {RSS_GROWTH_KIB} KiB)"
        ));
    }
    let mut out = "| count | baseline | loaded, after warm-up | loaded, after the run | after rm \
                   | tolerance | |\n|---|---|---|---|---|---|---|\n"
        .to_string();
    let rows = s
        .baseline
        .fields()
        .into_iter()
        .zip(s.loaded_before.fields())
        .zip(s.loaded_after.fields())
        .zip(s.after_rm.fields())
        .zip(TOLERANCE);
    for (((((name, b), (_, lb)), (_, la)), (_, a)), tol) in rows {
        let (tol_text, verdict) = match tol {
            Some(t) if a > b + t => {
                problems.push(format!("{name}: {b} before, {a} after rm (tolerance +{t})"));
                (format!("+{t}"), "GREW")
            }
            Some(t) => (format!("+{t}"), "ok"),
            None if name.starts_with("daemon RSS") => {
                let verdict = if grown > RSS_GROWTH_KIB { "GREW" } else { "ok" };
                (format!("+{RSS_GROWTH_KIB} over the run"), verdict)
            }
            None => ("not checked".to_string(), ""),
        };
        out += &format!("| {name} | {b} | {lb} | {la} | {a} | {tol_text} | {verdict} |\n");
    }
    (out, problems)
}

/// The counts once every checked one is back within its tolerance, or as they are when
/// SETTLE has passed.
fn settled(counts: &impl Fn() -> Counts, baseline: &Counts) -> Counts {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = counts();
        let within = now
            .fields()
            .iter()
            .zip(baseline.fields())
            .zip(TOLERANCE)
            .all(|(((_, n), (_, b)), t)| t.is_none_or(|t| *n <= b + t));
        if within || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
