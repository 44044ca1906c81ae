//! Installing `docker save` tarballs as a rootfs plus a run configuration, safely and
//! atomically.
//!
//! [`install`] spools the upload to a file inside a fresh staging directory
//! (`<work_dir>/.staging-*`), indexes it, checks the manifest (either layout), then streams
//! each layer (gzip / zstd / plain) onto `rootfs/` in order, with OCI whiteouts, budgets on
//! the decompressed content, and every path resolved inside the rootfs by openat2. The
//! result is a [`StagedImage`] that [`StagedImage::commit`] renames into place; dropping it
//! uncommitted removes the staging directory, so a failed install leaves nothing behind.

mod archive;
mod digest;
mod error;
mod fsutil;
mod image_config;
mod layer;
mod limits;
mod mount_points;
mod tar_guard;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{open, renameat2, OFlag, RenameFlags};
use nix::sys::stat::Mode;

pub use error::ImageError;
pub use image_config::ImageConfig;
pub use limits::Limits;

/// Name of the run configuration file next to `rootfs/`.
pub const CONFIG_FILE: &str = "config.json";
/// Name of the extracted root filesystem directory.
pub const ROOTFS_DIR: &str = "rootfs";
/// Prefix of staging directories inside `work_dir` (a daemon may sweep stale ones at start).
pub const STAGING_PREFIX: &str = ".staging-";
const SPOOL_FILE: &str = "upload.tar";

/// An image extracted into a staging directory, not yet in place.
#[derive(Debug)]
pub struct StagedImage {
    dir: PathBuf,
    config: ImageConfig,
    /// `sha256:<hex>` of the image's config blob: its image id, as `docker images` shows it.
    digest: String,
    committed: bool,
}

impl StagedImage {
    /// The run configuration read from the image.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// The image id, `sha256:<hex>` of its config blob.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The staging directory (holding `rootfs/` and `config.json`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Renames the staged directory to `dest` (which must not exist; same filesystem as
    /// `work_dir`). On success nothing is removed; on failure the staging directory is.
    pub fn commit(mut self, dest: &Path) -> Result<(), ImageError> {
        let cwd = nix::fcntl::AT_FDCWD;
        renameat2(cwd, &self.dir, cwd, dest, RenameFlags::RENAME_NOREPLACE).map_err(|e| {
            ImageError::Commit {
                dest: dest.to_path_buf(),
                source: e.into(),
            }
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedImage {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // std's remove_dir_all does not follow symlinks (it works with openat/unlinkat).
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove image staging directory");
            }
        }
    }
}

fn new_staging(work_dir: &Path) -> Result<StagedImage, ImageError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = work_dir.join(format!(
            "{STAGING_PREFIX}{}-{nanos:x}-{n}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                return Ok(StagedImage {
                    dir,
                    config: ImageConfig {
                        cmd: vec![],
                        env: vec![],
                        working_dir: "/".into(),
                        uid: 0,
                        gid: 0,
                    },
                    digest: String::new(),
                    committed: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(ImageError::Staging {
                    dir: work_dir.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    Err(ImageError::Staging {
        dir: work_dir.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free staging name"),
    })
}

use std::os::unix::fs::DirBuilderExt;

/// Streams `upload` (a `docker save` tarball, either layout) into a new staging directory
/// created inside `work_dir` (which must be on the same filesystem as the final
/// destination). Neither the upload nor a layer is ever held in memory.
///
/// Memory budget of one install, whatever the upload: copy buffers ~0.7 MiB; the archive
/// index and one layer's written paths at most 16 MiB of names each (plus their map
/// entries); manifest, index and config at most 4 MiB each; a zstd window at most 16 MiB
/// (gzip: 32 KiB); tar extension records at most 64 KiB each. Worst case about 80 MiB,
/// a real image a few MiB; the daemon runs a bounded number of installs at once.
pub fn install(
    upload: impl Read,
    work_dir: &Path,
    limits: &Limits,
) -> Result<StagedImage, ImageError> {
    install_gated(upload, work_dir, limits, || Ok(()))
}

/// [`install`], calling `gate` once the upload is spooled and holding what it returns
/// until the install ends: a bound on concurrent installs that slow uploads do not hold.
pub fn install_gated<G>(
    upload: impl Read,
    work_dir: &Path,
    limits: &Limits,
    gate: impl FnOnce() -> Result<G, ImageError>,
) -> Result<StagedImage, ImageError> {
    let mut staged = new_staging(work_dir)?;
    let spool_path = staged.dir.join(SPOOL_FILE);
    let spool = archive::spool(upload, &spool_path, limits.max_upload())?;
    let _held = gate()?;
    let ar = archive::Archive::index(spool, limits)?;
    let plan = ar.plan()?;
    let parsed = image_config::parse_config(&plan.config_name, &plan.config)?;
    staged.digest = image_id(&plan.config);

    let rootfs = staged.dir.join(ROOTFS_DIR);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .map_err(|e| ImageError::Staging {
            dir: staged.dir.clone(),
            source: e,
        })?;
    let root: OwnedFd = open(
        &rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::Staging {
        dir: rootfs.clone(),
        source: e.into(),
    })?;

    let usage = limits::Usage::default();
    for name in &plan.layers {
        let mut blob = digest::Hashing::new(ar.open(name).map_err(ImageError::Spool)?);
        layer::apply_layer(&root, name, &mut blob, limits, &usage)?;
        blob.verify("layer", name)?;
    }
    drop(ar);
    let _ = std::fs::remove_file(&spool_path);

    mount_points::prepare_mount_points(&root)?;
    let (uid, gid) = image_config::resolve_user(&root, &parsed.user)?;
    staged.config = ImageConfig {
        cmd: parsed.cmd,
        env: parsed.env,
        working_dir: parsed.working_dir,
        uid,
        gid,
    };
    let cfg_path = staged.dir.join(CONFIG_FILE);
    let json = serde_json::to_vec_pretty(&staged.config).expect("ImageConfig serializes");
    // 0600 in a 0700 directory: the config holds the function's env.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&cfg_path)
        .and_then(|mut f| f.write_all(&json))
        .map_err(|e| ImageError::WriteConfig {
            path: cfg_path,
            source: e,
        })?;
    Ok(staged)
}

/// The image id of the `docker save` archive (either layout) in `file`, read from its
/// manifest and config without extracting a layer: what [`StagedImage::digest`] will be
/// once it is installed (`faas apply` compares a local archive with a deployed function
/// by it).
pub fn archive_digest(file: std::fs::File) -> Result<String, ImageError> {
    let plan = archive::Archive::index(file, &Limits::default())?.plan()?;
    Ok(image_id(&plan.config))
}

/// `sha256:<hex>` of an image's config blob, as `docker images` shows its id.
fn image_id(config: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(config))
}

/// Reads `<image_dir>/config.json` written by [`install`].
pub fn load_config(image_dir: &Path) -> Result<ImageConfig, ImageError> {
    let path = image_dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&path).map_err(|e| ImageError::LoadConfig {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ImageError::LoadConfig {
        path,
        reason: e.to_string(),
    })
}
