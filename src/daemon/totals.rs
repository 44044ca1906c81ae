//! The limits of all containers together (`--memory-total-mb`, `--pids-total`), set on the
//! parent cgroup: defaults derived from the machine, and checked against the per-container
//! limits at start, before anything is created.

use std::path::{Path, PathBuf};

use super::Config;
use crate::runtime::ParentLimits;

/// The share of the machine's memory that containers get by default.
const DEFAULT_MEMORY_PERCENT: u64 = 75;

#[derive(Debug, thiserror::Error)]
pub enum TotalsError {
    #[error("reading {path} (for the default --memory-total-mb / --pids-total) failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {field} line")]
    Parse { path: PathBuf, field: &'static str },
    #[error("--memory-mb {per_mb} (each container) is more than the memory of all containers together, {total_mb} MiB ({source_of_total}): raise --memory-total-mb or lower --memory-mb")]
    MemoryDoesNotFit {
        per_mb: u64,
        total_mb: u64,
        source_of_total: &'static str,
    },
    #[error("--pids-max {per} (each container) is more than the processes of all containers together, {total} ({source_of_total}): raise --pids-total or lower --pids-max")]
    PidsDoNotFit {
        per: u32,
        total: u64,
        source_of_total: &'static str,
    },
}

/// The totals of `cfg`, defaults filled in; refused when one container's limit does not fit.
pub fn resolve(cfg: &Config) -> Result<ParentLimits, TotalsError> {
    let (total_mb, mem_source) = match cfg.memory_total_mb {
        Some(mb) => (mb, "--memory-total-mb"),
        None => (
            machine_memory_mb()? * DEFAULT_MEMORY_PERCENT / 100,
            "the default, 75% of this machine's memory",
        ),
    };
    if cfg.memory_mb > total_mb {
        return Err(TotalsError::MemoryDoesNotFit {
            per_mb: cfg.memory_mb,
            total_mb,
            source_of_total: mem_source,
        });
    }
    let (pids, pids_source) = match cfg.pids_total {
        Some(n) => (n, "--pids-total"),
        None => (
            (cfg.max_containers as u64 * cfg.pids_max as u64)
                .min(read_u64(Path::new("/proc/sys/kernel/threads-max"))? / 2),
            "the default, --max-containers x --pids-max, at most half of kernel.threads-max",
        ),
    };
    if u64::from(cfg.pids_max) > pids {
        return Err(TotalsError::PidsDoNotFit {
            per: cfg.pids_max,
            total: pids,
            source_of_total: pids_source,
        });
    }
    if cfg.max_containers as u64 * cfg.memory_mb > total_mb {
        tracing::info!(
            "--max-containers {} x --memory-mb {} is more than --memory-total-mb {total_mb}: \
             when containers use it all together, the kernel OOM-kills one of them",
            cfg.max_containers,
            cfg.memory_mb
        );
    }
    Ok(ParentLimits {
        memory_bytes: total_mb << 20,
        pids_max: pids,
    })
}

/// MemTotal from /proc/meminfo, in MiB.
fn machine_memory_mb() -> Result<u64, TotalsError> {
    let path = Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(path).map_err(|source| TotalsError::Read {
        path: path.into(),
        source,
    })?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb >> 10)
        .ok_or(TotalsError::Parse {
            path: path.into(),
            field: "MemTotal",
        })
}

fn read_u64(path: &Path) -> Result<u64, TotalsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TotalsError::Read {
        path: path.into(),
        source,
    })?;
    text.trim().parse().map_err(|_| TotalsError::Parse {
        path: path.into(),
        field: "number",
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn cfg(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("faasd").chain(args.iter().copied()))
    }

    #[test]
    fn given_totals_are_used_as_they_are() {
        let got = resolve(&cfg(&["--memory-total-mb", "700", "--pids-total", "300"])).unwrap();
        assert_eq!(
            got,
            ParentLimits {
                memory_bytes: 700 << 20,
                pids_max: 300
            }
        );
    }

    #[test]
    fn a_container_larger_than_the_total_is_refused() {
        let e = resolve(&cfg(&["--memory-mb", "512", "--memory-total-mb", "256"])).unwrap_err();
        assert!(matches!(
            e,
            TotalsError::MemoryDoesNotFit {
                per_mb: 512,
                total_mb: 256,
                ..
            }
        ));
        let e = resolve(&cfg(&["--pids-total", "100", "--memory-total-mb", "700"])).unwrap_err();
        assert!(matches!(
            e,
            TotalsError::PidsDoNotFit {
                per: 128,
                total: 100,
                ..
            }
        ));
    }
}
