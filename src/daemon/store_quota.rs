//! The image store's quota (`--store-max-gb`, issue 10 #9), measured on disk under
//! `images/` (images, retired ones still serving, and staging of installs in flight). An
//! install may write what the store has left when it starts; since several installs run
//! at once, the store is measured again just before an image is committed, and one that
//! does not fit then is refused too. Refusals are 507 and leave nothing. (Reserving the
//! whole budget up front instead would let one stalled upload refuse every other deploy.)
//! Without the flag the quota is half the size of the filesystem holding the state dir:
//! uploads alone can then never fill the disk, and no fixed number fits both a small VM
//! and a large host.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::DaemonError;

pub struct StoreQuota {
    max: u64,
}

impl StoreQuota {
    /// `max_gb` from the flag, or half the size of the filesystem holding `state_dir`.
    pub fn new(max_gb: Option<f64>, state_dir: &Path) -> Result<Self, DaemonError> {
        let max = match max_gb {
            Some(gb) => (gb * (1u64 << 30) as f64) as u64,
            None => {
                let st = nix::sys::statvfs::statvfs(state_dir).map_err(|e| DaemonError::Fs {
                    op: "measure the filesystem of",
                    path: state_dir.to_path_buf(),
                    source: e.into(),
                })?;
                st.blocks() * st.fragment_size() / 2
            }
        };
        tracing::info!("image store quota: {} MiB", max >> 20);
        Ok(StoreQuota { max })
    }

    /// What one install may write: what the store has left, at most `per_image` bytes.
    pub fn budget(&self, images: &Path, per_image: u64) -> Result<u64, DaemonError> {
        let used = usage(images)?;
        match self.max.saturating_sub(used) {
            0 => Err(self.full(used)),
            left => Ok(left.min(per_image)),
        }
    }

    /// Whether the store, staged images included, still fits just before a commit.
    pub fn check(&self, images: &Path) -> Result<(), DaemonError> {
        let used = usage(images)?;
        if used > self.max {
            return Err(self.full(used));
        }
        Ok(())
    }

    /// The error for a deploy that does not fit.
    pub fn full(&self, used: u64) -> DaemonError {
        DaemonError::StoreFull {
            max_mib: self.max >> 20,
            used_mib: used >> 20,
        }
    }
}

fn usage(images: &Path) -> Result<u64, DaemonError> {
    disk_usage(images).map_err(|source| DaemonError::Fs {
        op: "measure",
        path: images.to_path_buf(),
        source,
    })
}

/// Bytes allocated on disk below `dir` (hard links counted once), symlinks not followed.
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    // Directories and files removed while the walk runs (a retired image or a failed
    // install's staging going away) are simply not counted.
    let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if gone(&e) && d != dir => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let m = match entry.and_then(|entry| Ok((entry.metadata()?, entry.path()))) {
                Ok(m) => m,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let (m, path) = m;
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(total)
}
