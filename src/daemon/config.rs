//! faasd's settings: every flag can also be set as an environment variable FAASD_*.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::Ipv4Net;

use crate::backend::BackendKind;
use crate::runtime::Resources;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "faasd",
    version,
    about = "Functions as a service: a fresh container per request"
)]
pub struct Config {
    /// Where images, bundles and registry.json live.
    #[arg(long, env = "FAASD_STATE_DIR", default_value = "/var/lib/faasd")]
    pub state_dir: PathBuf,
    /// Address of the control API.
    #[arg(long, env = "FAASD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Pool of function addresses, added to `lo`; the first handed out is host .10.
    #[arg(long, env = "FAASD_SUBNET", default_value = "10.0.0.0/24")]
    pub subnet: Ipv4Net,
    /// Address of the gateway port (off by default): one listener for every function,
    /// routed by `Host: <name>.<domain>` (with --gateway-domain) or the path prefix
    /// `/function/<name>/` (which the handler sees as sent). No control API token applies.
    #[arg(long, env = "FAASD_GATEWAY")]
    pub gateway: Option<SocketAddr>,
    /// Domain under which the gateway routes by Host header: `<name>.<domain>`.
    #[arg(long, env = "FAASD_GATEWAY_DOMAIN", requires = "gateway")]
    pub gateway_domain: Option<String>,
    /// Port each function listens on, on its own address.
    #[arg(long, env = "FAASD_FUNCTION_PORT", default_value_t = 80)]
    pub function_port: u16,
    /// Seconds a handler has to connect to /control.sock.
    #[arg(long, env = "FAASD_CONNECT_TIMEOUT", default_value_t = 5.0)]
    pub connect_timeout: f64,
    /// Function connections open at once from one source address; more are closed at
    /// accept.
    #[arg(long, env = "FAASD_MAX_CONNS_PER_SOURCE", default_value_t = 64)]
    pub max_conns_per_source: usize,
    /// Seconds a whole request may take before its container is killed.
    #[arg(long, env = "FAASD_EXEC_TIMEOUT", default_value_t = 30.0)]
    pub exec_timeout: f64,
    /// Default memory limit per container, in MiB.
    #[arg(long, env = "FAASD_MEMORY_MB", default_value_t = 512)]
    pub memory_mb: u64,
    /// Default CPU quota per container, in CPUs.
    #[arg(long, env = "FAASD_CPUS", default_value_t = 1.0)]
    pub cpus: f64,
    /// Default limit of processes per container.
    #[arg(long, env = "FAASD_PIDS_MAX", default_value_t = 128)]
    pub pids_max: u32,
    /// The most memory one function may ask for (`faas config --memory-mb`), in MiB
    /// (default: --memory-total-mb).
    #[arg(long, env = "FAASD_MAX_MEMORY_MB")]
    pub max_memory_mb: Option<u64>,
    /// The most CPUs one function may ask for (default: this machine's CPUs).
    #[arg(long, env = "FAASD_MAX_CPUS")]
    pub max_cpus: Option<f64>,
    /// The most processes one function's container may ask for (default: --pids-total).
    #[arg(long, env = "FAASD_MAX_PIDS")]
    pub max_pids: Option<u32>,
    /// The longest timeout, in seconds, one function may ask for (default: 10 x
    /// --exec-timeout).
    #[arg(long, env = "FAASD_MAX_TIMEOUT")]
    pub max_timeout: Option<f64>,
    /// Containers running at once, all functions together; more requests wait.
    #[arg(long, env = "FAASD_MAX_CONTAINERS", default_value_t = 64)]
    pub max_containers: usize,
    /// Containers running at once for one function (a function may ask for fewer with
    /// --max-concurrency, never more).
    #[arg(long, env = "FAASD_MAX_PER_FUNCTION", default_value_t = 32)]
    pub max_per_function: usize,
    /// Containers per function started ahead of their request, their handler already
    /// waiting on /control.sock (each still serves exactly one request): `auto` sizes
    /// each function's from its recent arrival rate (at least one until it has been idle
    /// for --prewarm-idle), N keeps N per function, 0 none.
    #[arg(long, env = "FAASD_PREWARM", default_value = "auto")]
    pub prewarm: Prewarm,
    /// Seconds without a request after which `--prewarm auto` keeps no container of a
    /// function (an idle function costs no memory); its next request or a redeploy
    /// brings one back.
    #[arg(long, env = "FAASD_PREWARM_IDLE", default_value_t = 300.0)]
    pub prewarm_idle: f64,
    /// Memory all waiting containers together may hold, in MiB, measured from their
    /// cgroups (default: a quarter of --memory-total-mb).
    #[arg(long, env = "FAASD_PREWARM_MEMORY_MB")]
    pub prewarm_memory_mb: Option<u64>,
    /// Seconds a request may wait for a free slot before it gets 503.
    #[arg(long, env = "FAASD_QUEUE_TIMEOUT", default_value_t = 5.0)]
    pub queue_timeout: f64,
    /// Largest accepted image upload, in MiB (larger: 413).
    #[arg(long, env = "FAASD_MAX_UPLOAD_MB", default_value_t = 2048)]
    pub max_upload_mb: u64,
    /// Disk space all images together may use, in GiB (more: 507); default half the
    /// filesystem holding the state dir.
    #[arg(long, env = "FAASD_STORE_MAX_GB")]
    pub store_max_gb: Option<f64>,
    /// Uploads being received at once; more wait up to --queue-timeout, then get 503.
    #[arg(long, env = "FAASD_MAX_UPLOADS", default_value_t = 4)]
    pub max_uploads: usize,
    /// Disk space one function's handler output may take, in MiB (its log and one
    /// rotated generation, half each); older lines go first.
    #[arg(long, env = "FAASD_LOG_MAX_MB", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub log_max_mb: u64,
    /// Seconds a control API client has to send a request's headers (slowloris, idle
    /// keep-alive connections), and a function connection its first byte (none gets a
    /// container before); then the connection is closed.
    #[arg(long, env = "FAASD_HEADER_TIMEOUT", default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds an upload may go without sending a byte; then it fails with 408 and its
    /// staging directory is removed.
    #[arg(long, env = "FAASD_BODY_TIMEOUT", default_value_t = 30.0)]
    pub body_timeout: f64,
    /// Memory limit of all containers together, in MiB, set on the parent cgroup
    /// (default: 75% of the machine's memory).
    #[arg(long, env = "FAASD_MEMORY_TOTAL_MB")]
    pub memory_total_mb: Option<u64>,
    /// Process limit of all containers together, set on the parent cgroup
    /// (default: --max-containers x --pids-max, at most half the kernel's threads-max).
    #[arg(long, env = "FAASD_PIDS_TOTAL")]
    pub pids_total: Option<u64>,
    /// File holding a bearer token that every control API request must present.
    #[arg(long, env = "FAASD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A docker config.json whose `auths` give the credentials for registry pulls
    /// (`faas new NAME --image REF`).
    #[arg(long, env = "FAASD_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// A registry (`host[:port]`, as in image references) pulled from over plain HTTP;
    /// every other registry only over HTTPS. Repeat for more.
    #[arg(long, env = "FAASD_INSECURE_REGISTRY", value_delimiter = ',')]
    pub insecure_registry: Vec<String>,
    /// The cgroup (in every hierarchy) that holds all containers.
    #[arg(long, env = "FAASD_CGROUP_PARENT", default_value = "faasd")]
    pub cgroup_parent: String,
    /// Which runtime runs the containers: faasd's own, or `runc run` per request.
    #[arg(long, env = "FAASD_RUNTIME", value_enum, default_value = "native")]
    pub runtime: BackendKind,
    /// Empty network namespaces the native runtime keeps made in advance, off the
    /// request path (0: each container makes its own at clone time). At saturation with
    /// 8 clients ~16 are lent at once (serving, or in teardown).
    #[arg(long, env = "FAASD_NETNS_POOL", default_value_t = 16)]
    pub netns_pool: usize,
    /// Kits of fresh kernel objects the native runtime keeps made in advance, off the
    /// request path, one for each container, never reused: an IPC namespace and the
    /// /tmp, /dev/shm and /dev/pts mounts (0: each container makes its own).
    #[arg(long, env = "FAASD_FRESH_POOL", default_value_t = 16)]
    pub fresh_pool: usize,
    /// Ended containers' cgroups the native runtime keeps, drained, for the next
    /// containers instead of removing them (0: one cgroup made and removed per
    /// container). Unused ones are removed after 30 s.
    #[arg(long, env = "FAASD_CGROUP_POOL", default_value_t = 32)]
    pub cgroup_pool: usize,
    /// The runc binary, for `--runtime runc`.
    #[arg(long, env = "FAASD_RUNC", default_value = "runc")]
    pub runc: PathBuf,
    /// Seconds in-flight requests get to finish at shutdown before they are killed.
    #[arg(long, env = "FAASD_SHUTDOWN_GRACE", default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// Print what this kernel lets faasd guarantee (Landlock network rules, seccomp,
    /// capabilities, the sealed binary), each with its mechanism, and exit (1 if any
    /// guarantee is missing).
    #[arg(long)]
    pub check_kernel: bool,
}

impl Config {
    pub fn resources(&self) -> Resources {
        Resources {
            memory_bytes: self.memory_mb << 20,
            cpu_millis: (self.cpus * 1000.0).round() as u64,
            pids_max: self.pids_max,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout)
    }

    pub fn exec_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.exec_timeout)
    }

    pub fn queue_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.queue_timeout)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.header_timeout)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.body_timeout)
    }

    pub fn prewarm_idle(&self) -> Duration {
        Duration::from_secs_f64(self.prewarm_idle)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace)
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// Each function's handler output (`<name>.log`, `<name>.log.1`).
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    /// Each function's secret values (secret_store.rs).
    pub fn secrets_dir(&self) -> PathBuf {
        self.state_dir.join("secrets")
    }

    pub fn bundles_dir(&self) -> PathBuf {
        self.state_dir.join("bundles")
    }

    /// runc's state directory (`runc --root`), for `--runtime runc`.
    pub fn runc_root(&self) -> PathBuf {
        self.state_dir.join("runc")
    }

    pub fn registry_path(&self) -> PathBuf {
        self.state_dir.join("registry.json")
    }
}

/// How many containers per function wait for their request (`--prewarm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prewarm {
    /// As many as the function's recent arrival rate needs (see prewarm.rs).
    Auto,
    /// This many per function; 0 is off.
    Fixed(usize),
}

impl std::str::FromStr for Prewarm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Prewarm::Auto),
            n => n
                .parse()
                .map(Prewarm::Fixed)
                .map_err(|_| format!("{n:?} is neither `auto` nor a number of containers")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prewarm_is_auto_by_default_and_takes_a_count() {
        let parse = |args: &[&str]| Config::try_parse_from([&["faasd"], args].concat());
        assert_eq!(parse(&[]).unwrap().prewarm, Prewarm::Auto);
        assert_eq!(
            parse(&["--prewarm", "0"]).unwrap().prewarm,
            Prewarm::Fixed(0)
        );
        assert_eq!(
            parse(&["--prewarm", "3"]).unwrap().prewarm,
            Prewarm::Fixed(3)
        );
        let err = parse(&["--prewarm", "lots"]).unwrap_err().to_string();
        assert!(err.contains("neither `auto` nor a number"), "{err}");
    }
}
