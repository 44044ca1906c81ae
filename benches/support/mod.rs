//! Shared by the benchmarks: root checks, a private network namespace, the test images,
//! per-iteration recording and the percentile/ratio summaries printed after criterion.

#![allow(dead_code)] // each bench uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod cpu;
pub mod faasd_process;
pub mod kernel_objects;
pub mod load;

#[path = "../../tests/common/private_ns.rs"]
mod private_ns;
#[allow(unused_imports)] // cold_start runs in the host namespaces
pub use private_ns::enter_private_namespaces;

pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("this benchmark needs root (namespaces, cgroups, mounts)");
        std::process::exit(1);
    }
}

/// The `docker save` test images of rootfs-tools, built into target/test-images on
/// first use (the Python one needs apt-get download).
pub fn test_images() -> PathBuf {
    let repo = env!("CARGO_MANIFEST_DIR");
    let dir = PathBuf::from(repo).join("target/test-images");
    if !dir.join("test-handler.tar").exists() || !dir.join("python-handler.tar").exists() {
        let ok = Command::new("bash")
            .arg(format!("{repo}/rootfs-tools/build-test-images.sh"))
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("building the test images failed; benchmarks needing them are skipped");
        }
    }
    dir
}

/// Compiles rootfs-tools/test-handler.c (static, as build-test-images.sh does) to
/// `dir/test-handler`, for the benches that run it outside an image.
pub fn static_handler(dir: &Path) -> PathBuf {
    let out = dir.join("test-handler");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/rootfs-tools/test-handler.c");
    let ok = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "gcc -static {src} failed");
    out
}

/// The value of metric `name` for `function` in /metrics' Prometheus text.
pub fn metric(text: &str, name: &str, function: &str) -> Option<f64> {
    let prefix = format!("{name}{{function=\"{function}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// Runs `f` on a thread whose capability bounding set is faasd's: the daemon limits its
/// own once at start, so its children inherit it instead of dropping ~30 capabilities
/// each (runtime::limit_bounding_set). Not this process's main thread: runc and crun,
/// which the benches also exec, need the full set.
pub fn as_faasd<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            faasd::runtime::limit_bounding_set().expect("limit the bounding set (run as root)");
            f()
        })
        .join()
        .expect("the bench thread")
    })
}

/// Every iteration's duration, from criterion's `iter_custom`, for percentiles.
#[derive(Default)]
pub struct Recorder(Mutex<Vec<Duration>>);

impl Recorder {
    /// Runs `f` `iters` times, recording each run; returns the total for criterion.
    pub fn run(&self, iters: u64, f: impl FnMut()) -> Duration {
        self.run_spaced(iters, Duration::ZERO, f)
    }

    /// Like `run`, pausing `gap` (untimed) after each run.
    pub fn run_spaced(&self, iters: u64, gap: Duration, mut f: impl FnMut()) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = Instant::now();
            f();
            let d = t.elapsed();
            total += d;
            self.0.lock().unwrap().push(d);
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        total
    }

    pub fn stats(&self) -> Stats {
        Stats::of(&self.0.lock().unwrap())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub n: usize,
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub fn of(samples: &[Duration]) -> Stats {
        let mut v = samples.to_vec();
        v.sort();
        let at = |p: f64| {
            v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        Stats {
            n: v.len(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "-".into();
    }
    format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64())
}

/// Prints a summary table and keeps a copy in target/bench-summary/<name>.md.
pub fn report(name: &str, text: &str) {
    println!("\n{text}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-summary");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.md")), text);
}

/// The machine the numbers came from, for the README.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs ({cpu}), kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim()
    )
}
