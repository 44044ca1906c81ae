//! Errors of the image installer: one variant per failing operation, each message naming
//! what is wrong so that the person who uploaded the image can act on it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while installing or loading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The staging directory could not be created in the work directory.
    #[error("cannot create a staging directory in {dir}: {source}")]
    Staging { dir: PathBuf, source: io::Error },

    /// Copying the upload to the spool file failed (read error, disk full, ...).
    #[error("cannot store the upload: {0}")]
    Spool(io::Error),

    /// The upload is bigger than the configured budget allows.
    #[error("the upload is larger than {limit} bytes, the limit for one image")]
    UploadTooLarge { limit: u64 },

    /// The bound on installs running at once held for too long.
    #[error("{limit} images are being installed already; retry in a while (waited {waited:?})")]
    InstallsBusy {
        limit: usize,
        waited: std::time::Duration,
    },

    /// The upload itself is not a (complete) tar archive.
    #[error("the upload is not a docker-save tar archive: {reason}")]
    NotATar { reason: String },

    /// The upload ends before an entry's data does.
    #[error(
        "the upload is truncated: entry {entry} needs {needed} bytes but the upload has only {len}"
    )]
    Truncated {
        entry: String,
        needed: u64,
        len: u64,
    },

    /// Neither manifest.json nor index.json is present.
    #[error(
        "the archive has neither manifest.json nor index.json; is it the output of `docker save`?"
    )]
    NoManifest,

    /// manifest.json / index.json / an OCI manifest blob cannot be understood.
    #[error("{file} is invalid: {reason}")]
    BadManifest { file: String, reason: String },

    /// A manifest names a layer or config by a path that is absolute or climbs out with `..`.
    #[error("{file} names {kind} {name}, which is not a relative path inside the archive")]
    BadBlobPath {
        file: String,
        kind: &'static str,
        name: String,
    },

    /// A manifest names a blob that is not in the archive.
    #[error("{file} names {kind} {name}, which is missing from the archive")]
    MissingBlob {
        file: String,
        kind: &'static str,
        name: String,
    },

    /// A blob's content does not hash to the digest its manifest names it by.
    #[error("{kind} {name} does not match its digest: its content is sha256:{actual}")]
    DigestMismatch {
        kind: &'static str,
        name: String,
        actual: String,
    },

    /// The image config JSON cannot be parsed.
    #[error("image config {name} is invalid: {reason}")]
    BadConfig { name: String, reason: String },

    /// WorkingDir or the command lies under /proc or /sys.
    #[error("image config {name}: {field} {path:?} lies under /proc or /sys, where a function may not start")]
    KernelFsPath {
        name: String,
        field: &'static str,
        path: String,
    },

    /// A layer blob is compressed with an unsupported algorithm.
    #[error(
        "layer {layer} is compressed with {algo}, which is not supported (use gzip, zstd or none)"
    )]
    UnsupportedCompression { layer: String, algo: &'static str },

    /// A layer blob does not start like a tar archive.
    #[error("layer {layer} is not a tar archive: {reason}")]
    LayerNotTar { layer: String, reason: String },

    /// A tar extension record (long name, long link, PAX header) is larger than we read.
    #[error("{member}: a {kind} record of {size} bytes exceeds the limit of {limit} bytes")]
    ExtensionTooLarge {
        member: String,
        kind: &'static str,
        size: u64,
        limit: u64,
    },

    /// A layer could be opened but reading it failed part way (truncated, corrupt stream).
    #[error("layer {layer} is truncated or corrupt: {source}")]
    LayerCorrupt { layer: String, source: io::Error },

    /// A layer entry's path leaves the image root (`..`, absolute path, hardlink target outside).
    #[error("layer {layer}: entry {entry} escapes the image root")]
    Escape { layer: String, entry: String },

    /// A layer entry is malformed (symlink without a name, malformed whiteout, ...).
    #[error("layer {layer}: entry {entry} is invalid: {reason}")]
    BadEntry {
        layer: String,
        entry: String,
        reason: String,
    },

    /// Applying an entry to the rootfs failed.
    #[error("layer {layer}: cannot {op} {entry}: {source}")]
    Extract {
        layer: String,
        entry: String,
        op: &'static str,
        source: io::Error,
    },

    /// A budget on the decompressed content was exceeded.
    #[error("the image exceeds the limit of {limit} {what}")]
    LimitExceeded { what: &'static str, limit: u64 },

    /// A runtime mount point in the image has the wrong type.
    #[error("image path {path} is {found}; the runtime refuses to mount over it")]
    MountPoint { path: String, found: &'static str },

    /// Preparing a runtime mount point failed for another reason.
    #[error("cannot prepare mount point {path} in the image: {source}")]
    PrepareMountPoint { path: String, source: io::Error },

    /// The image's `User` cannot be resolved against its /etc/passwd and /etc/group.
    #[error("image user {user:?} cannot be resolved: {reason}")]
    User { user: String, reason: String },

    /// Writing config.json into the staging directory failed.
    #[error("cannot write {path}: {source}")]
    WriteConfig { path: PathBuf, source: io::Error },

    /// Renaming the staged image into place failed.
    #[error("cannot move the staged image to {dest}: {source}")]
    Commit { dest: PathBuf, source: io::Error },

    /// Reading an installed image's config.json failed.
    #[error("cannot read image config {path}: {reason}")]
    LoadConfig { path: PathBuf, reason: String },
}
