//! The faasd daemon: deployments, their addresses and listeners, the request path, and
//! a clean start (crash recovery) and stop.

mod address_pool;
mod admission;
mod api;
mod api_pull;
pub mod config;
mod control;
mod control_peer;
mod function;
mod gateway;
mod http_server;
mod log_file;
mod log_stream;
mod logs;
pub mod loopback;
mod metrics;
mod prewarm;
mod pull;
mod registry;
mod request;
mod secret_store;
mod settings;
mod state_dir;
mod stats;
mod store_mount;
mod store_quota;
mod totals;
mod upload;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use function::{Function, Image, NativeRoot};
use log_file::FunctionLog;
use loopback::{Loopback, LoopbackError};
use metrics::Metrics;
pub use registry::FunctionRecord;
use registry::{Registry, RegistryError};
use secret_store::{SecretStore, SecretStoreError};
pub use settings::SettingsError;
use settings::{FunctionSettings, Live, Maxima};

pub use crate::api::Deployed;
use crate::api::{ConfigChange, ConfigView, Description, FunctionLimits};
use crate::backend::{Backend, BackendError, Pools};
use crate::image::{self, ImageError};
use crate::runtime::{self, RuntimeError, SecretFiles};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid function name {0:?}: use 1-63 letters, digits, '-' or '_', starting with a letter or digit")]
    InvalidName(String),
    #[error("no function named {0:?}")]
    NotFound(String),
    #[error("function {0:?} is being removed (its requests in flight are finishing); deploy it again once that is done")]
    Removing(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("the address pool {0} is exhausted")]
    PoolExhausted(ipnet::Ipv4Net),
    #[error(transparent)]
    Loopback(#[from] LoopbackError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the image store is full: this image does not fit in the --store-max-gb quota of {max_mib} MiB ({used_mib} MiB in use)")]
    StoreFull { max_mib: u64, used_mib: u64 },
    #[error("listening on {addr} failed: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path} failed: {source}")]
    Fs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("raising RLIMIT_NOFILE failed: {0}")]
    FdLimit(#[source] nix::Error),
    #[error(transparent)]
    StoreMount(#[from] store_mount::StoreMountError),
    #[error(transparent)]
    Totals(#[from] totals::TotalsError),
    #[error(transparent)]
    InstallThread(#[from] upload::InstallThreadError),
    #[error("preparing the image's mount template failed: {0}")]
    TemplateTask(#[source] tokio::task::JoinError),
    #[error("serving the control socket of {function} failed: {source}")]
    ControlSocket {
        function: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    RegistryAuth(#[from] pull::AuthFileError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("this image cannot hold secrets: {0}")]
    SecretsMountPoint(#[source] RuntimeError),
    #[error(transparent)]
    SecretStore(#[from] SecretStoreError),
    #[error("reading the token file {path} failed: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn fs_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Fs {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub struct Daemon {
    pub cfg: Config,
    backend: Backend,
    lo: Loopback,
    /// Serialises changes to the set of deployments; the registry is their record.
    registry: Mutex<Registry>,
    functions: RwLock<BTreeMap<String, Arc<Function>>>,
    metrics: Metrics,
    global_slots: Arc<Semaphore>,
    /// What every function's prewarming shares (policy, memory budget, cold starts).
    prewarm: Arc<prewarm::Pool>,
    /// Installs running at once (each within image::install's memory budget).
    installs: Arc<Semaphore>,
    store: Arc<store_quota::StoreQuota>,
    /// The store's nosuid mount if this run made it; removed at a clean stop.
    store_mount: std::sync::Mutex<Option<store_mount::OurMount>>,
    /// Uploads being received (the control API waits a bounded time for one).
    upload_slots: Arc<Semaphore>,
    /// Cancelled at shutdown: listeners stop accepting.
    stop_accepting: CancellationToken,
    /// Cancelled when the shutdown grace ends: in-flight requests are torn down.
    kill_requests: CancellationToken,
    requests: TaskTracker,
    request_seq: AtomicU64,
    /// Differs between runs of the daemon: with `request_seq`, names requests.
    nonce: String,
    per_source: Arc<admission::PerSource>,
    /// Functions being undeployed, until their requests have drained.
    removing: std::sync::Mutex<HashSet<String>>,
    token: Option<String>,
    /// Credentials and plain-HTTP registries for pulls.
    registries: pull::Registries,
    /// The most a function's configuration may ask for.
    maxima: Maxima,
    /// Every function's secret values.
    secrets: SecretStore,
}

/// Image installs at once: each is bound by the disk and a core (2 here), and holds up
/// to its memory budget.
const MAX_INSTALLS: usize = 2;
/// How long a deploy waits for an install slot before it gets 503.
const INSTALL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How much longer than a request may take an undeploy waits for its requests.
const DRAIN_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// Four base-36 digits that differ between runs (clock and pid).
/// How long a drained container cgroup waits for the next container before it is removed:
/// long enough to bridge pauses between requests, short enough that an idle daemon soon
/// holds none.
const CGROUP_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

fn start_nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 20);
    format!("{:0>4}", base36(mixed % 36u64.pow(4)))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// Seconds since the Unix epoch (0 on a clock before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Limits as the API answers them.
fn limits(
    r: runtime::Resources,
    exec_timeout: std::time::Duration,
    max_concurrency: usize,
) -> FunctionLimits {
    FunctionLimits {
        memory_mb: r.memory_bytes >> 20,
        cpus: r.cpu_millis as f64 / 1000.0,
        pids_max: r.pids_max,
        timeout_secs: exec_timeout.as_secs_f64(),
        max_concurrency,
    }
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=63).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Daemon {
    /// Prepares the state directory, clears what a crashed predecessor left, and brings
    /// every registered function back (address, listener).
    pub async fn start(cfg: Config) -> Result<Arc<Self>, DaemonError> {
        // Refused before anything is created: a bad combination leaves no trace.
        let totals = totals::resolve(&cfg)?;
        let maxima = Maxima::resolve(&cfg, &totals);
        maxima.check_defaults(&cfg)?;
        let store_mount = state_dir::prepare(&cfg)?;
        let token = match &cfg.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| DaemonError::Token {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let registries =
            pull::Registries::new(cfg.registry_auth.as_deref(), &cfg.insecure_registry)?;
        let backend = Backend::new(
            cfg.runtime,
            &cfg.cgroup_parent,
            Pools {
                netns: cfg.netns_pool,
                fresh: cfg.fresh_pool,
                cgroups: cfg.cgroup_pool,
                cgroup_idle: CGROUP_IDLE,
            },
            &cfg.runc,
            &cfg.runc_root(),
        )?;
        recover(&cfg, &backend)?;
        runtime::limit_cgroup_parent(&cfg.cgroup_parent, &totals)?;
        tracing::info!(
            memory_total_mb = totals.memory_bytes >> 20,
            pids_total = totals.pids_max,
            "limits of all containers together set on cgroup {}",
            cfg.cgroup_parent
        );
        let nofile = admission::raise_nofile().map_err(DaemonError::FdLimit)?;
        tracing::info!(
            nofile,
            reserve = admission::FD_RESERVE,
            "file descriptor limit (function connections stop short of the reserve)"
        );
        let daemon = Arc::new(Daemon {
            backend,
            lo: Loopback::open().await?,
            registry: Mutex::new(Registry::load(&cfg.registry_path())?),
            functions: RwLock::new(BTreeMap::new()),
            metrics: Metrics::default(),
            global_slots: Arc::new(Semaphore::new(cfg.max_containers)),
            prewarm: Arc::new(prewarm::Pool::new(
                cfg.prewarm,
                cfg.prewarm_idle(),
                cfg.max_per_function,
                // Default: a quarter of what all containers together may use.
                cfg.prewarm_memory_mb
                    .map_or(totals.memory_bytes / 4, |mb| mb << 20),
            )),
            installs: Arc::new(Semaphore::new(MAX_INSTALLS)),
            store_mount: std::sync::Mutex::new(store_mount),
            store: Arc::new(store_quota::StoreQuota::new(
                cfg.store_max_gb,
                &cfg.state_dir,
            )?),
            upload_slots: Arc::new(Semaphore::new(cfg.max_uploads)),
            stop_accepting: CancellationToken::new(),
            kill_requests: CancellationToken::new(),
            requests: TaskTracker::new(),
            request_seq: AtomicU64::new(0),
            nonce: start_nonce(),
            per_source: admission::PerSource::new(cfg.max_conns_per_source),
            removing: Default::default(),
            token,
            registries,
            maxima,
            secrets: SecretStore::open(cfg.secrets_dir())?,
            cfg,
        });
        daemon.restore().await;
        Ok(daemon)
    }

    async fn restore(self: &Arc<Self>) {
        let records = self.registry.lock().await.functions().clone();
        match self.secrets.sweep(&records) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} leftover secret directories"),
            Err(e) => tracing::error!("sweeping the secret store failed: {e}"),
        }
        match log_file::sweep(&self.cfg.logs_dir(), |name| records.contains_key(name)) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} logs of functions no longer deployed"),
            Err(e) => tracing::error!("sweeping the logs failed: {e}"),
        }
        let on_lo = self.lo_ips().await.unwrap_or_default();
        for (name, rec) in records {
            let dir = self.cfg.images_dir().join(&name);
            if !dir.join("rootfs").is_dir() {
                tracing::error!(function = %name, "image {} is missing; not restoring it", dir.display());
                continue;
            }
            let result = async {
                // A function is not served without its secrets.
                let secrets = Arc::new(self.secrets.load(&name, &rec.settings)?);
                if !on_lo.contains(&rec.ip) {
                    self.lo.add(rec.ip).await?;
                }
                let native = self.native_root(&name, &dir, &rec.config).await?;
                let listener = self.bind(rec.ip).await?;
                let image = Image::new(dir, rec.config.clone(), native);
                self.activate(&name, &rec, image, listener, secrets);
                Ok::<_, DaemonError>(())
            }
            .await;
            match result {
                Ok(()) => tracing::info!(function = %name, ip = %rec.ip, "restored"),
                Err(e) => tracing::error!(function = %name, "restoring failed: {e}"),
            }
        }
    }

    async fn lo_ips(&self) -> Result<HashSet<Ipv4Addr>, DaemonError> {
        Ok(self
            .lo
            .addresses()
            .await?
            .into_iter()
            .map(|a| a.ip)
            .collect())
    }

    async fn bind(&self, ip: Ipv4Addr) -> Result<TcpListener, DaemonError> {
        let addr = SocketAddr::from((ip, self.cfg.function_port));
        TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Listen { addr, source })
    }

    /// Makes a function live: in the table, and accepting on its listener.
    fn activate(
        self: &Arc<Self>,
        name: &str,
        rec: &FunctionRecord,
        image: Image,
        listener: TcpListener,
        secrets: Arc<SecretFiles>,
    ) -> Arc<Function> {
        let stop = self.stop_accepting.child_token();
        let f = Arc::new(Function::new(
            name,
            rec.ip,
            Live::of(rec, &self.cfg, secrets),
            image,
            stop,
            prewarm::Prewarmed::new(self.prewarm.clone(), self.metrics.prewarm(name)),
            FunctionLog::new(&self.cfg.logs_dir(), name, self.cfg.log_max_mb << 20),
        ));
        self.functions
            .write()
            .unwrap()
            .insert(name.to_string(), f.clone());
        if self.prewarm.enabled() {
            tokio::spawn(prewarm::keep_ready(self.clone(), f.clone()));
        }
        tokio::spawn(
            f.requests
                .track_future(self.clone().accept_loop(f.clone(), listener)),
        );
        f
    }

    async fn accept_loop(self: Arc<Self>, f: Arc<Function>, listener: TcpListener) {
        loop {
            tokio::select! {
                _ = f.stop.cancelled() => break,
                conn = listener.accept() => match conn {
                    Ok((tcp, peer)) => self.admit(&f, tcp, peer.ip()),
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        tracing::warn!(function = %f.name, "accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    /// Starts serving an accepted connection, or closes it at once when its source has
    /// too many open or it would eat into the fd reserve.
    fn admit(self: &Arc<Self>, f: &Arc<Function>, tcp: tokio::net::TcpStream, peer: IpAddr) {
        match self.admission(&tcp, peer) {
            Ok(slot) => {
                let _ = tcp.set_nodelay(true);
                let serve = request::serve(self.clone(), f.clone(), tcp, slot);
                // Tracked twice: by the daemon (shutdown) and the function (undeploy).
                self.requests.spawn(f.requests.track_future(serve));
            }
            Err(refused) => {
                self.metrics.refused(&f.name, refused);
                tracing::debug!(function = %f.name, %peer, "connection refused: {refused}");
            }
        }
    }

    /// A function connection's place in the per-source bound, or why it is refused: its
    /// source has too many open (`per_source`), or it would eat into the fd reserve.
    fn admission(
        &self,
        tcp: &tokio::net::TcpStream,
        peer: IpAddr,
    ) -> Result<admission::SourceSlot, &'static str> {
        use std::os::fd::AsRawFd;
        if admission::in_reserve_now(tcp.as_raw_fd()) {
            return Err("fd_reserve");
        }
        self.per_source.admit(peer).ok_or("per_source")
    }

    /// A short id for a request's bundle, cgroup, hostname and runc container, unique in
    /// this run and (by the nonce) across runs: `<nonce>-<counter>`, both base 36, so a
    /// 63-character function name never makes a path or hostname too long. Logs name the
    /// function beside it.
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{}", self.nonce, base36(n))
    }

    pub fn function(&self, name: &str) -> Option<Arc<Function>> {
        self.functions.read().unwrap().get(name).cloned()
    }

    pub fn functions(&self) -> Vec<Arc<Function>> {
        self.functions.read().unwrap().values().cloned().collect()
    }

    /// Installs `upload` as function `name`: a new function gets the lowest free address;
    /// an existing one keeps its address and swaps its image atomically. On any error
    /// nothing is left: no image, address, listener or registry entry.
    pub async fn deploy(
        self: &Arc<Self>,
        name: &str,
        upload: impl Read + Send + 'static,
        limits: image::Limits,
    ) -> Result<Deployed, DaemonError> {
        self.deploy_with(name, upload, limits, &ConfigChange::default())
            .await
    }

    /// [`deploy`](Self::deploy) with a configuration change applied with it (over the
    /// defaults for a new function, over its current configuration for a redeploy).
    pub async fn deploy_with(
        self: &Arc<Self>,
        name: &str,
        upload: impl Read + Send + 'static,
        limits: image::Limits,
        change: &ConfigChange,
    ) -> Result<Deployed, DaemonError> {
        if !valid_name(name) {
            return Err(DaemonError::InvalidName(name.to_string()));
        }
        // A configuration refused must cost no upload.
        self.check_change(change)?;
        // The upload streams into a staging directory without holding any lock; the
        // install permit is taken once it is spooled (a stalled upload holds none) and goes
        // with the install thread, which outlives a client that hangs up.
        let installs = self.installs.clone();
        let rt = tokio::runtime::Handle::current();
        let gate = move || {
            // On the install thread, outside the runtime: the timer is made inside block_on.
            rt.block_on(async {
                tokio::time::timeout(INSTALL_WAIT, installs.acquire_owned()).await
            })
            .map_err(|_| ImageError::InstallsBusy {
                limit: MAX_INSTALLS,
                waited: INSTALL_WAIT,
            })
            .map(|p| p.expect("the install semaphore is never closed"))
        };
        let images = self.cfg.images_dir();
        let store = self.store.clone();
        let staged = upload::on_own_thread(move || {
            let budget = store.budget(&images, limits.max_bytes)?;
            let store_bound = budget < limits.max_bytes;
            let limits = image::Limits {
                max_bytes: budget,
                ..limits
            };
            // The install's share of the store, or the spool bounded by it, ran out.
            let out_of_budget = |e: &ImageError| {
                store_bound
                    && match e {
                        ImageError::LimitExceeded { limit, .. } => *limit == budget,
                        ImageError::UploadTooLarge { .. } => true,
                        _ => false,
                    }
            };
            let staged = match image::install_gated(upload, &images, &limits, gate) {
                Err(e) if out_of_budget(&e) => {
                    Err(store.full(store_quota::disk_usage(&images).unwrap_or(0)))
                }
                r => r.map_err(DaemonError::from),
            }?;
            // Installs that ran beside this one may have used the store up meanwhile.
            store.check(&images)?;
            // For describe; a failed walk only loses that line.
            let size = store_quota::disk_usage(staged.path()).ok();
            Ok::<_, DaemonError>((staged, size))
        })
        .await??;
        let (staged, image_size) = staged;
        let config = staged.config().clone();
        let mut registry = self.registry.lock().await;
        if self.removing.lock().unwrap().contains(name) {
            return Err(DaemonError::Removing(name.to_string()));
        }
        let dest = self.cfg.images_dir().join(name);
        let f = match self.function(name) {
            Some(f) => {
                self.redeploy(&mut registry, &f, (staged, image_size), &dest, change)
                    .await?;
                f
            }
            None => {
                self.deploy_new(&mut registry, name, (staged, image_size), &dest, change)
                    .await?
            }
        };
        drop(registry);
        // The answer waits for the first waiting container, so that the first request
        // is served warm (bounded: a handler that never connects must not hold a deploy).
        f.prewarmed.settled(self.cfg.connect_timeout()).await;
        let ip = f.ip;
        tracing::info!(function = %name, %ip, cmd = ?config.cmd, "deployed");
        Ok(Deployed {
            name: name.to_string(),
            ip,
            cmd: config.cmd,
        })
    }

    async fn deploy_new(
        self: &Arc<Self>,
        registry: &mut Registry,
        name: &str,
        (staged, image_size): (image::StagedImage, Option<u64>),
        dest: &Path,
        change: &ConfigChange,
    ) -> Result<Arc<Function>, DaemonError> {
        let mut record = FunctionRecord {
            ip: Ipv4Addr::UNSPECIFIED,
            config: staged.config().clone(),
            resources: self.cfg.resources(),
            settings: Default::default(),
            image_digest: staged.digest().to_string(),
            deployed_at: Some(unix_now()),
            image_size,
        };
        settings::apply(&mut record, change, &self.maxima)?;
        let staged_secrets = self.stage_secrets(
            name,
            &FunctionSettings::default(),
            &mut record,
            change,
            &staged.path().join("rootfs"),
        )?;
        let secrets = Arc::new(self.secrets.load(name, &record.settings)?);
        let mut taken: HashSet<Ipv4Addr> = registry.functions().values().map(|r| r.ip).collect();
        taken.extend(self.lo_ips().await?);
        let ip = address_pool::lowest_free(self.cfg.subnet, &taken)
            .ok_or(DaemonError::PoolExhausted(self.cfg.subnet))?;
        record.ip = ip;
        self.lo.add(ip).await?;
        let undo_address = |e: DaemonError| async move {
            if let Err(e2) = self.lo.remove_ours(ip).await {
                tracing::error!(%ip, "removing the address after a failed deploy: {e2}");
            }
            e
        };
        let listener = match self.bind(ip).await {
            Ok(l) => l,
            Err(e) => return Err(undo_address(e).await),
        };
        // A leftover directory of the same name (a crash mid-undeploy) is not ours to keep.
        if dest.exists() {
            let aside = self.retired_path(name);
            let _ = std::fs::rename(dest, &aside);
            function::remove_tree(&aside);
        }
        if let Err(e) = staged.commit(dest) {
            return Err(undo_address(e.into()).await);
        }
        let native = match self.native_root(name, dest, &record.config).await {
            Ok(native) => native,
            Err(e) => {
                function::remove_tree(dest);
                return Err(undo_address(e).await);
            }
        };
        if let Err(e) = registry.put(name, record.clone()) {
            drop(native);
            function::remove_tree(dest);
            return Err(undo_address(e.into()).await);
        }
        staged_secrets.map(secret_store::Staged::commit);
        let image = Image::new(dest.to_path_buf(), record.config.clone(), native);
        Ok(self.activate(name, &record, image, listener, secrets))
    }

    async fn redeploy(
        &self,
        registry: &mut Registry,
        f: &Function,
        (staged, image_size): (image::StagedImage, Option<u64>),
        dest: &Path,
        change: &ConfigChange,
    ) -> Result<(), DaemonError> {
        let config = staged.config().clone();
        // Built from the staged directory, which the commit below renames: the template's
        // mounts hold the directory itself, not its path.
        let native = self.native_root(&f.name, staged.path(), &config).await?;
        let old_record = registry
            .functions()
            .get(&f.name)
            .cloned()
            .ok_or_else(|| DaemonError::NotFound(f.name.clone()))?;
        let mut record = FunctionRecord {
            config: config.clone(),
            image_digest: staged.digest().to_string(),
            deployed_at: Some(unix_now()),
            image_size,
            ..old_record.clone()
        };
        settings::apply(&mut record, change, &self.maxima)?;
        let staged_secrets = self.stage_secrets(
            &f.name,
            &old_record.settings,
            &mut record,
            change,
            &staged.path().join("rootfs"),
        )?;
        let secrets = self.live_secrets(f, &record, staged_secrets.is_some())?;
        registry.put(&f.name, record.clone())?;
        let aside = self.retired_path(&f.name);
        let swapped = f
            .with_image_mut(|current| -> Result<(), DaemonError> {
                std::fs::rename(dest, &aside).map_err(fs_err("move aside", dest))?;
                if let Err(e) = staged.commit(dest) {
                    let _ = std::fs::rename(&aside, dest);
                    return Err(e.into());
                }
                current.retire(aside.clone());
                *current = Arc::new(Image::new(dest.to_path_buf(), config, native));
                Ok(())
            })
            .await;
        match swapped {
            // Containers waiting with the old image must not serve new requests.
            Ok(()) => {
                staged_secrets.map(secret_store::Staged::commit);
                if !change.is_empty() {
                    f.set_live(Live::of(&record, &self.cfg, secrets));
                }
                f.prewarmed.clear()
            }
            Err(_) => {
                let _ = registry.put(&f.name, old_record);
            }
        }
        swapped
    }

    /// The native runtime's mount template and control socket for the image in `dir`
    /// (None with runc).
    async fn native_root(
        &self,
        name: &str,
        dir: &Path,
        config: &image::ImageConfig,
    ) -> Result<Option<NativeRoot>, DaemonError> {
        if !self.backend.is_native() {
            return Ok(None);
        }
        let rootfs = dir.join("rootfs");
        let owner = runtime::ControlSocketOwner {
            uid: config.uid,
            gid: config.gid,
        };
        let (template, listener) = tokio::task::spawn_blocking(move || {
            runtime::MountTemplate::build(&rootfs, Some(owner))
        })
        .await
        .map_err(DaemonError::TemplateTask)??;
        let listener = listener.expect("a control socket was asked for");
        let control =
            control::ControlSocket::start(listener, name, self.metrics.control_rejected.clone())
                .map_err(|source| DaemonError::ControlSocket {
                    function: name.to_string(),
                    source,
                })?;
        Ok(Some(NativeRoot { template, control }))
    }

    /// Refuses a change that no function could take (bad env, above a maximum), before
    /// anything is done for it.
    pub fn check_change(&self, change: &ConfigChange) -> Result<(), DaemonError> {
        Ok(settings::check(change, self.cfg.resources(), &self.maxima)?)
    }

    /// Changes function `name`'s configuration without touching its image: persisted
    /// first, then the requests that start from now on get it; those in flight finish
    /// with theirs. Prewarmed containers (made with the old one) are discarded.
    pub async fn configure(
        &self,
        name: &str,
        change: &ConfigChange,
    ) -> Result<ConfigView, DaemonError> {
        let mut registry = self.registry.lock().await;
        let f = self
            .function(name)
            .ok_or_else(|| DaemonError::NotFound(name.to_string()))?;
        let mut record = registry
            .functions()
            .get(name)
            .cloned()
            .ok_or_else(|| DaemonError::NotFound(name.to_string()))?;
        let old_settings = record.settings.clone();
        settings::apply(&mut record, change, &self.maxima)?;
        let rootfs = self.cfg.images_dir().join(name).join("rootfs");
        let staged_secrets =
            self.stage_secrets(name, &old_settings, &mut record, change, &rootfs)?;
        let secrets = self.live_secrets(&f, &record, staged_secrets.is_some())?;
        registry.put(name, record.clone())?;
        staged_secrets.map(secret_store::Staged::commit);
        f.set_live(Live::of(&record, &self.cfg, secrets));
        f.prewarmed.clear();
        tracing::info!(function = %name, env = ?record.settings.env.keys().collect::<Vec<_>>(),
            secrets = ?record.settings.secrets,
            resources = ?record.resources, timeout_secs = ?record.settings.timeout_secs,
            max_concurrency = ?record.settings.max_concurrency, "configuration updated");
        Ok(self.config_view(name, &record))
    }

    /// Writes the secrets `change` sets or removes as `record`'s next generation (None if
    /// it touches none; dropped uncommitted, it leaves nothing), once the image at `rootfs`
    /// is known to have a safe /run/secrets to mount them on.
    fn stage_secrets(
        &self,
        name: &str,
        old: &FunctionSettings,
        record: &mut FunctionRecord,
        change: &ConfigChange,
        rootfs: &Path,
    ) -> Result<Option<secret_store::Staged>, DaemonError> {
        if !record.settings.secrets.is_empty() {
            runtime::secrets::prepare_mount_point(rootfs)
                .map_err(DaemonError::SecretsMountPoint)?;
        }
        if !change.touches_secrets() {
            return Ok(None);
        }
        let staged = self
            .secrets
            .stage(name, old, &record.settings, &change.secrets)?;
        record.settings.secrets_generation = staged.generation;
        Ok(Some(staged))
    }

    /// The secrets `record`'s requests get: read from the store when they `changed`,
    /// else the ones `f` serves with now.
    fn live_secrets(
        &self,
        f: &Function,
        record: &FunctionRecord,
        changed: bool,
    ) -> Result<Arc<SecretFiles>, DaemonError> {
        Ok(match changed {
            true => Arc::new(self.secrets.load(&f.name, &record.settings)?),
            false => f.live().secrets.clone(),
        })
    }

    /// Everything about function `name` but its env values (`GET /api/functions/<name>`).
    pub async fn describe(&self, name: &str) -> Result<Description, DaemonError> {
        let f = self
            .function(name)
            .ok_or_else(|| DaemonError::NotFound(name.to_string()))?;
        let record = self
            .records()
            .await
            .remove(name)
            .ok_or_else(|| DaemonError::NotFound(name.to_string()))?;
        let view = self.config_view(name, &record);
        let env = settings::merge_env(&record.config.env, &record.settings.env);
        let counts = f.stats.snapshot();
        Ok(Description {
            name: name.to_string(),
            ip: record.ip,
            port: self.cfg.function_port,
            image_digest: record.image_digest,
            image_size_bytes: record.image_size,
            cmd: record.config.cmd,
            workdir: record.config.working_dir,
            user: format!("{}:{}", record.config.uid, record.config.gid),
            env: crate::api::env_names(&env),
            secrets: view.secrets,
            env_set: view.env,
            env_set_digest: crate::api::env_digest(&record.settings.env),
            limits: view.limits,
            deployed_at: record.deployed_at,
            requests_served: counts.served,
            failures: counts.failures,
            last_failure: counts.last_failure,
            warm: self.metrics.prewarm(name).waiting.get().max(0) as u64,
        })
    }

    /// What a new function runs with: the daemon's defaults (`GET /api/defaults`).
    pub fn default_limits(&self) -> FunctionLimits {
        limits(
            self.cfg.resources(),
            self.cfg.exec_timeout(),
            self.cfg.max_per_function,
        )
    }

    /// A function's configuration as the API answers it (env names, not values).
    pub fn config_view(&self, name: &str, record: &FunctionRecord) -> ConfigView {
        let live = Live::of(record, &self.cfg, Default::default());
        ConfigView {
            name: name.to_string(),
            env: record.settings.env.keys().cloned().collect(),
            secrets: record.settings.secrets.iter().cloned().collect(),
            limits: limits(live.resources, live.exec_timeout, live.max_concurrency),
        }
    }

    fn retired_path(&self, name: &str) -> PathBuf {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        self.cfg.images_dir().join(format!(".retired-{name}-{n}"))
    }

    /// Stops and removes function `name`: its listener closes at once (new connections are
    /// refused), the requests in flight finish (bounded by the exec timeout), then its
    /// address and image go. A deploy of the same name meanwhile is refused.
    pub async fn undeploy(&self, name: &str) -> Result<(), DaemonError> {
        let f = {
            let mut registry = self.registry.lock().await;
            let f = self
                .function(name)
                .ok_or_else(|| DaemonError::NotFound(name.to_string()))?;
            registry.remove(name)?;
            self.functions.write().unwrap().remove(name);
            self.removing.lock().unwrap().insert(name.to_string());
            f
        };
        f.stop.cancel();
        f.prewarmed.clear();
        f.requests.close();
        let longest = std::time::Duration::from_secs_f64(self.maxima.timeout_secs);
        let bound = longest + self.cfg.queue_timeout() + DRAIN_SLACK;
        if tokio::time::timeout(bound, f.requests.wait())
            .await
            .is_err()
        {
            tracing::warn!(function = %name, "requests still running after {bound:?}: removing it anyway");
        }
        if let Err(e) = self.lo.remove_ours(f.ip).await {
            tracing::error!(function = %name, "removing its address failed: {e}");
        }
        let dest = self.cfg.images_dir().join(name);
        let aside = self.retired_path(name);
        f.with_image_mut(|current| match std::fs::rename(&dest, &aside) {
            Ok(()) => current.retire(aside),
            Err(e) => tracing::error!(function = %name, "moving its image aside failed: {e}"),
        })
        .await;
        f.log.remove();
        if let Err(e) = self.secrets.remove_function(name) {
            tracing::error!(function = %name, "removing its secrets failed: {e}");
        }
        self.removing.lock().unwrap().remove(name);
        tracing::info!(function = %name, "undeployed");
        Ok(())
    }

    /// The metrics in Prometheus text format, as /metrics serves them.
    pub fn metrics_text(&self) -> String {
        self.metrics.set_netns(self.backend.netns_stats());
        self.metrics.set_cgroups(self.backend.cgroup_stats());
        self.metrics.render()
    }

    /// The registry's view of every function, for the list endpoint.
    pub async fn records(&self) -> BTreeMap<String, FunctionRecord> {
        self.registry.lock().await.functions().clone()
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, kills the
    /// rest, and removes the addresses we added (an operator's stay).
    pub async fn shutdown(&self) {
        self.stop_accepting.cancel();
        for f in self.functions() {
            f.prewarmed.clear();
        }
        self.requests.close();
        let grace = self.cfg.shutdown_grace();
        if tokio::time::timeout(grace, self.requests.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still running after {grace:?}: killing them");
            self.kill_requests.cancel();
            self.requests.wait().await;
        }
        if !crate::offload::finished(grace).await {
            tracing::warn!("container teardowns still running after {grace:?}");
        }
        for f in self.functions() {
            match self.lo.remove_ours(f.ip).await {
                Ok(_) => {}
                Err(e) => tracing::error!(function = %f.name, "removing its address failed: {e}"),
            }
        }
        self.backend.close_pools();
        if let Err(e) = recover(&self.cfg, &self.backend) {
            tracing::error!("final cleanup failed: {e}");
        }
        if let Err(e) = runtime::remove_cgroup_parent(&self.cfg.cgroup_parent) {
            tracing::warn!("leaving the cgroup parent: {e}");
        }
        drop(self.store_mount.lock().unwrap().take());
        tracing::info!("stopped");
    }
}

/// Removes what a previous run may have left: bundles, container cgroups (killing their
/// processes), half-installed and retired images.
fn recover(cfg: &Config, backend: &Backend) -> Result<(), DaemonError> {
    let deleted = backend.sweep();
    if deleted > 0 {
        tracing::info!("deleted {deleted} leftover runc containers");
    }
    let bundles = cfg.bundles_dir();
    for entry in std::fs::read_dir(&bundles).map_err(fs_err("list", &bundles))? {
        let path = entry.map_err(fs_err("list", &bundles))?.path();
        crate::runc::remove_bundle(&path).map_err(fs_err("remove stale bundle", &path))?;
        tracing::info!(bundle = %path.display(), "removed a stale bundle");
    }
    let killed = runtime::sweep_cgroups(&cfg.cgroup_parent)?;
    if killed > 0 {
        tracing::info!("removed {killed} leftover container cgroups");
    }
    let images = cfg.images_dir();
    for entry in std::fs::read_dir(&images).map_err(fs_err("list", &images))? {
        let entry = entry.map_err(fs_err("list", &images))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".staging-") || name.starts_with(".retired-") {
            function::remove_tree(&entry.path());
        }
    }
    Ok(())
}

pub use api::serve_api;
pub use gateway::serve_gateway;
