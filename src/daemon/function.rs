//! A deployed function: its address, its current image, its current configuration.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::ControlSocket;
use super::log_file::FunctionLog;
use super::prewarm::Prewarmed;
use super::settings::Live;
use super::stats::Stats;
use crate::image::ImageConfig;
use crate::runtime::MountTemplate;

/// An installed image directory (`rootfs/` and `config.json`).
///
/// Requests hold an `Arc` to the image they run on. When a redeploy or an undeploy
/// replaces it, the directory is renamed aside at once and deleted only when the last
/// request using it has finished, so requests in flight finish on the old image.
pub struct Image {
    dir: PathBuf,
    pub config: ImageConfig,
    /// The native runtime's mount template and control socket (None with runc).
    pub native: Option<NativeRoot>,
    retired_to: Mutex<Option<PathBuf>>,
}

/// What the native runtime prepares once per image: the containers' mount tree and
/// the control socket in it (released with the image).
pub struct NativeRoot {
    pub template: MountTemplate,
    pub control: ControlSocket,
}

impl Image {
    pub fn new(dir: PathBuf, config: ImageConfig, native: Option<NativeRoot>) -> Self {
        Image {
            dir,
            config,
            native,
            retired_to: Mutex::new(None),
        }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Records that the directory now lives at `moved_to`, to be removed on drop.
    pub fn retire(&self, moved_to: PathBuf) {
        *self.retired_to.lock().unwrap() = Some(moved_to);
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // The template's mounts go before the directory they were made of.
        drop(self.native.take());
        if let Some(dir) = self.retired_to.lock().unwrap().take() {
            // A rootfs can be large: never make the dropping task wait for it.
            std::thread::spawn(move || remove_tree(&dir));
        }
    }
}

pub fn remove_tree(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), "removing a retired image failed: {e}");
        }
    }
}

pub struct Function {
    pub name: String,
    pub ip: Ipv4Addr,
    image: Arc<RwLock<Arc<Image>>>,
    /// Replaced whole by a configuration update; each request keeps the one it began with.
    live: std::sync::RwLock<Arc<Live>>,
    /// Cancelled to stop this function's listener (and its prewarming).
    pub stop: CancellationToken,
    /// Containers started ahead of their request (`--prewarm`).
    pub prewarmed: Prewarmed,
    /// Its accept loop and its requests in flight, which an undeploy waits for.
    pub requests: TaskTracker,
    /// Its requests since the daemon started, for `describe`.
    pub stats: Stats,
    /// Its handlers' stdout and stderr.
    pub log: Arc<FunctionLog>,
}

impl Function {
    pub fn new(
        name: &str,
        ip: Ipv4Addr,
        live: Live,
        image: Image,
        stop: CancellationToken,
        prewarmed: Prewarmed,
        log: FunctionLog,
    ) -> Self {
        Function {
            name: name.to_string(),
            ip,
            image: Arc::new(RwLock::new(Arc::new(image))),
            live: std::sync::RwLock::new(Arc::new(live)),
            stop,
            prewarmed,
            requests: TaskTracker::new(),
            stats: Stats::default(),
            log: Arc::new(log),
        }
    }

    /// The current image, locked against a swap until the guard is dropped: a spawn holds
    /// it so the rootfs path cannot change between its checks and its mounts.
    pub async fn image(&self) -> OwnedRwLockReadGuard<Arc<Image>> {
        self.image.clone().read_owned().await
    }

    /// The current image, unlocked: for comparing with the image a container runs.
    pub async fn current_image(&self) -> Arc<Image> {
        self.image.read().await.clone()
    }

    /// Runs `swap` with exclusive access to the current image (for a redeploy).
    pub async fn with_image_mut<T>(&self, swap: impl FnOnce(&mut Arc<Image>) -> T) -> T {
        let mut guard = self.image.write().await;
        swap(&mut guard)
    }

    /// The configuration new requests start with.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap().clone()
    }

    /// Makes `live` the configuration of the requests that start from now on.
    pub fn set_live(&self, live: Live) {
        *self.live.write().unwrap() = Arc::new(live);
    }
}
