//! CPU time over a run: the whole machine's (every CPU, kworkers, softirq and interrupts
//! included, from /proc/stat), the daemon's with its reaped children (its containers), and
//! this bench process's (the clients, and tools it ran such as ab).

use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

#[derive(Clone, Copy)]
pub struct CpuSample {
    /// user + nice + system + irq + softirq of all CPUs, in clock ticks.
    machine_busy: u64,
    /// Every column of the `cpu` line (idle and iowait too), in clock ticks.
    machine_all: u64,
    /// utime + stime + cutime + cstime of the daemon, in clock ticks.
    daemon: u64,
    bench: Duration,
}

/// What a run cost, all CPUs together.
#[derive(Default)]
pub struct CpuUse {
    pub machine: Duration,
    /// Busy share of all CPUs over the run, 0..1.
    pub machine_busy: f64,
    /// Every CPU's time over the run, busy or not.
    pub machine_all: Duration,
    pub daemon: Duration,
    pub bench: Duration,
}

impl CpuUse {
    /// Adds another span's cost (the spans were one after the other).
    pub fn add(&mut self, other: &CpuUse) {
        self.machine += other.machine;
        self.machine_all += other.machine_all;
        self.machine_busy =
            self.machine.as_secs_f64() / self.machine_all.as_secs_f64().max(f64::MIN_POSITIVE);
        self.daemon += other.daemon;
        self.bench += other.bench;
    }
}

impl CpuSample {
    pub fn now(daemon_pid: i32) -> CpuSample {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .expect("the cpu line of /proc/stat")
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already in user and nice.
        let col = |i: usize| cpu.get(i).copied().unwrap_or(0);
        CpuSample {
            machine_busy: col(0) + col(1) + col(2) + col(5) + col(6),
            machine_all: (0..8).map(col).sum(),
            daemon: process_ticks(daemon_pid),
            bench: rusage(UsageWho::RUSAGE_SELF) + rusage(UsageWho::RUSAGE_CHILDREN),
        }
    }

    pub fn since(&self, before: &CpuSample) -> CpuUse {
        let busy = self.machine_busy - before.machine_busy;
        let all = self.machine_all - before.machine_all;
        CpuUse {
            machine: ticks(busy),
            machine_busy: busy as f64 / all.max(1) as f64,
            machine_all: ticks(all),
            daemon: ticks(self.daemon - before.daemon),
            bench: self.bench - before.bench,
        }
    }
}

/// utime + stime + cutime + cstime from /proc/PID/stat (fields 14-17).
fn process_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(n * 1_000_000_000 / hz)
}

fn rusage(who: UsageWho) -> Duration {
    getrusage(who).map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    })
}
