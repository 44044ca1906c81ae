//! Budgets on what an image expands to once decompressed.

use std::cell::Cell;
use std::io::{self, Read};

use super::error::ImageError;

/// Budgets applied to the *decompressed* content of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total decompressed bytes of all layers (tar headers included). The spooled upload
    /// itself may be at most this plus 64 MiB.
    pub max_bytes: u64,
    /// Total number of tar entries across all layers (whiteouts included).
    pub max_entries: u64,
    /// Maximum number of path components of one entry.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_entries: 500_000,
            max_depth: 64,
        }
    }
}

impl Limits {
    /// Upper bound on the size of the uploaded archive itself.
    pub(crate) fn max_upload(&self) -> u64 {
        self.max_bytes.saturating_add(64 << 20)
    }
}

/// Running totals for one install; shared by the layer readers.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    pub bytes: Cell<u64>,
    pub entries: Cell<u64>,
}

impl Usage {
    pub fn bytes_exceeded(&self, limits: &Limits) -> bool {
        self.bytes.get() > limits.max_bytes
    }

    pub fn add_entry(&self, limits: &Limits) -> Result<(), ImageError> {
        let n = self.entries.get() + 1;
        self.entries.set(n);
        if n > limits.max_entries {
            return Err(ImageError::LimitExceeded {
                what: "entries",
                limit: limits.max_entries,
            });
        }
        Ok(())
    }

    pub fn check_depth(&self, depth: usize, limits: &Limits) -> Result<(), ImageError> {
        if depth > limits.max_depth {
            return Err(ImageError::LimitExceeded {
                what: "path components (directory depth)",
                limit: limits.max_depth as u64,
            });
        }
        Ok(())
    }

    pub fn bytes_error(limits: &Limits) -> ImageError {
        ImageError::LimitExceeded {
            what: "decompressed bytes",
            limit: limits.max_bytes,
        }
    }
}

/// Bytes of entry names kept in memory at once: the outer archive's index, or the paths
/// one layer wrote (for its whiteouts). Without it, 500,000 entries with 64 KiB names
/// would hold gigabytes.
pub(crate) const MAX_NAME_BYTES: u64 = 16 << 20;

/// Counts the bytes of the names kept, against [`MAX_NAME_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct NameBytes(u64);

impl NameBytes {
    pub fn add(&mut self, name: &[u8]) -> Result<(), ImageError> {
        self.0 += name.len() as u64;
        if self.0 > MAX_NAME_BYTES {
            return Err(ImageError::LimitExceeded {
                what: "bytes of entry names kept in memory",
                limit: MAX_NAME_BYTES,
            });
        }
        Ok(())
    }
}

/// A reader that counts every byte it yields against `usage.bytes` and fails once the
/// budget is exceeded (the caller recognizes the failure with [`Usage::bytes_exceeded`]).
pub(crate) struct CountingReader<'a, R> {
    pub inner: R,
    pub usage: &'a Usage,
    pub limit: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.usage.bytes.get() + n as u64;
        self.usage.bytes.set(total);
        if total > self.limit {
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        Ok(n)
    }
}
