//! Blobs checked against the sha256 digests their manifest names them by (issue 11 #5):
//! OCI `blobs/sha256/<hex>` always, a classic `docker save` config `<hex>.json`. Classic
//! `<id>/layer.tar` names carry a v1 layer id, not a digest, so there is nothing to check.
//! Layers are hashed while they stream into the rootfs; a mismatch fails the install, which
//! then removes its staging directory.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::error::ImageError;

/// The sha256 (lowercase hex) that archive member `name` is named by, if any.
pub(crate) fn named_digest(name: &str) -> Option<&str> {
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json").filter(|n| !n.contains('/')))?;
    let is_hex = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    is_hex.then_some(hex)
}

fn check(kind: &'static str, name: &str, hasher: Sha256) -> Result<(), ImageError> {
    let Some(expected) = named_digest(name) else {
        return Ok(());
    };
    let actual = format!("{:x}", hasher.finalize());
    if actual == expected {
        return Ok(());
    }
    Err(ImageError::DigestMismatch {
        kind,
        name: name.into(),
        actual,
    })
}

/// Checks a blob read whole (config, manifest) against the digest in its name.
pub(crate) fn verify_bytes(kind: &'static str, name: &str, bytes: &[u8]) -> Result<(), ImageError> {
    check(kind, name, Sha256::new_with_prefix(bytes))
}

/// A reader that hashes what passes through it.
pub(crate) struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what the extractor left (padding after the tar end, a compressed stream's
    /// trailer) and checks the whole blob against the digest in `name`.
    pub fn verify(mut self, kind: &'static str, name: &str) -> Result<(), ImageError> {
        if named_digest(name).is_none() {
            return Ok(());
        }
        io::copy(&mut self, &mut io::sink()).map_err(ImageError::Spool)?;
        check(kind, name, self.hasher)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
