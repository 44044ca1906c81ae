//! The state directory is root's alone: the directories 0700 and the files 0600 (they hold
//! every function's env), created so and tightened at start when an older daemon left them
//! wider. Only the extracted `rootfs/` trees keep the image's own modes, which the
//! container needs; nobody else can reach them through the 0700 directories above.

use std::fs::{self, DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use super::{fs_err, store_mount, Config, DaemonError};
use crate::image::CONFIG_FILE;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Creates (or tightens) the state directory, `images/`, `bundles/`, `logs/` and `secrets/`, the
/// registry, every function's log and every installed image's directory and config, and mounts the store `nosuid,nodev`
/// (returning that mount when this call made it).
pub fn prepare(cfg: &Config) -> Result<Option<store_mount::OurMount>, DaemonError> {
    for dir in [
        cfg.state_dir.clone(),
        cfg.images_dir(),
        cfg.bundles_dir(),
        cfg.logs_dir(),
        cfg.secrets_dir(),
    ] {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(fs_err("create", &dir))?;
        restrict(&dir, DIR_MODE)?;
    }
    let registry = cfg.registry_path();
    if registry.exists() {
        restrict(&registry, FILE_MODE)?;
    }
    let logs = cfg.logs_dir();
    for entry in fs::read_dir(&logs).map_err(fs_err("list", &logs))? {
        let path = entry.map_err(fs_err("list", &logs))?.path();
        if path.is_file() {
            restrict(&path, FILE_MODE)?;
        }
    }
    let images = cfg.images_dir();
    for entry in fs::read_dir(&images).map_err(fs_err("list", &images))? {
        let entry = entry.map_err(fs_err("list", &images))?;
        let dir = entry.path();
        // Only real directories: a symlink here is not ours to follow.
        if !entry.file_type().map_err(fs_err("inspect", &dir))?.is_dir() {
            continue;
        }
        restrict(&dir, DIR_MODE)?;
        let config = dir.join(CONFIG_FILE);
        if config.is_file() {
            restrict(&config, FILE_MODE)?;
        }
    }
    Ok(store_mount::ensure_nosuid(&images)?)
}

fn restrict(path: &Path, mode: u32) -> Result<(), DaemonError> {
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(fs_err("restrict the mode of", path))
}
