//! The image store's quota (`--store-max-gb`, issue 10 #9): a deploy may use what the
//! store has left, measured on disk (`images/`: images, retired ones still serving, and
//! staging) minus what installs in flight have reserved; an image that outgrows it is
//! refused with 507 and leaves nothing. Without the flag the quota is half the size of
//! the filesystem holding the state dir: uploads alone can then never fill the disk, and
//! no fixed number fits both a small VM and a large host.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::DaemonError;

pub struct StoreQuota {
    max: u64,
    /// Bytes promised to installs in flight.
    reserved: Mutex<u64>,
}

/// An install's share of the store, returned when the install ends.
pub struct Reservation {
    quota: Arc<StoreQuota>,
    pub bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        *self.quota.reserved.lock().unwrap() -= self.bytes;
    }
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
        Ok(StoreQuota {
            max,
            reserved: Mutex::new(0),
        })
    }

    /// Reserves what is left of the store for one install, at most `per_image` bytes.
    pub fn reserve(
        self: &Arc<Self>,
        images: &Path,
        per_image: u64,
    ) -> Result<Reservation, DaemonError> {
        let used = disk_usage(images).map_err(|source| DaemonError::Fs {
            op: "measure",
            path: images.to_path_buf(),
            source,
        })?;
        let mut reserved = self.reserved.lock().unwrap();
        let left = self.max.saturating_sub(used + *reserved);
        if left == 0 {
            return Err(self.full(used));
        }
        let bytes = left.min(per_image);
        *reserved += bytes;
        Ok(Reservation {
            quota: self.clone(),
            bytes,
        })
    }

    /// The error for a deploy that does not fit.
    pub fn full(&self, used: u64) -> DaemonError {
        DaemonError::StoreFull {
            max_mib: self.max >> 20,
            used_mib: used >> 20,
        }
    }
}

/// Bytes allocated on disk below `dir` (hard links counted once), symlinks not followed.
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let m = match entry.metadata() {
                Ok(m) => m,
                // Removed meanwhile (a retired image going away): nothing to count.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}
