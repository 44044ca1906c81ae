//! The outer `docker save` archive: spooling the upload to disk, indexing its members, and
//! reading the manifest of either layout (classic `manifest.json` with `Config`/`Layers`,
//! or the OCI image layout of Docker 25+: `index.json` + `blobs/sha256/...`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::Deserialize;

use super::digest;
use super::error::ImageError;
use super::limits::{Limits, NameBytes};
use super::tar_guard::{oversized, TarGuard, MAX_EXTENSION};

/// Largest manifest / index / config document we read into memory (real ones are a few
/// KiB; this bounds the per-install memory, see [`super::install`]).
const MAX_DOC: u64 = 4 << 20;
/// Maximum number of symlinks followed when resolving an archive member.
const MAX_LINK_HOPS: usize = 16;

/// Copies `upload` to a new file at `path`, at most `limit` bytes, and returns it (rewound).
pub(crate) fn spool(mut upload: impl Read, path: &Path, limit: u64) -> Result<File, ImageError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ImageError::Spool)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match upload.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::Spool(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(ImageError::UploadTooLarge { limit });
        }
        file.write_all(&buf[..n]).map_err(ImageError::Spool)?;
    }
    file.seek(SeekFrom::Start(0)).map_err(ImageError::Spool)?;
    Ok(file)
}

#[derive(Debug, Clone)]
enum Member {
    Data {
        offset: u64,
        size: u64,
    },
    /// A symlink or hardlink to another member (already resolved to an archive path).
    Link(String),
}

/// An index of the members of the spooled archive: name -> where its data lies.
pub(crate) struct Archive {
    file: File,
    members: HashMap<String, Member>,
}

/// What to install: the config document and the layers, bottom first.
#[derive(Debug)]
pub(crate) struct Plan {
    pub config_name: String,
    pub config: Vec<u8>,
    pub layers: Vec<String>,
}

/// Normalizes an archive member name: strips `./` and duplicate slashes. Returns `None` for
/// absolute names and names with `..` components.
pub(crate) fn clean_name(name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.join("/"))
}

/// Resolves a relative symlink `target` found in directory `dir` of the archive.
fn resolve_link(dir: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

fn parent_of(name: &str) -> &str {
    name.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

impl Archive {
    /// Reads the tar headers of the spooled upload (seeking over the data).
    pub(crate) fn index(mut file: File, limits: &Limits) -> Result<Archive, ImageError> {
        let len = file.seek(SeekFrom::End(0)).map_err(ImageError::Spool)?;
        file.seek(SeekFrom::Start(0)).map_err(ImageError::Spool)?;
        if len == 0 {
            return Err(ImageError::NotATar {
                reason: "the upload is empty".into(),
            });
        }
        let mut members = HashMap::new();
        let mut count: u64 = 0;
        let mut name_bytes = NameBytes::default();
        {
            let mut ar = tar::Archive::new(TarGuard::new(&mut file));
            let entries = ar.entries_with_seek().map_err(not_a_tar)?;
            for entry in entries {
                let entry = entry.map_err(not_a_tar)?;
                count += 1;
                if count > limits.max_entries {
                    return Err(ImageError::LimitExceeded {
                        what: "archive members",
                        limit: limits.max_entries,
                    });
                }
                let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let Some(name) = clean_name(&raw_name) else {
                    continue;
                };
                let hdr = entry.header();
                let kind = hdr.entry_type();
                let member = if kind.is_file() || kind == tar::EntryType::Continuous {
                    let size = entry.size();
                    let offset = entry.raw_file_position();
                    if offset.saturating_add(size) > len {
                        return Err(ImageError::Truncated {
                            entry: raw_name,
                            needed: offset.saturating_add(size),
                            len,
                        });
                    }
                    Member::Data { offset, size }
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    let resolved = if kind.is_symlink() {
                        resolve_link(parent_of(&name), &target)
                    } else {
                        clean_name(&target)
                    };
                    match resolved {
                        Some(t) => Member::Link(t),
                        None => continue,
                    }
                } else {
                    continue;
                };
                name_bytes.add(name.as_bytes())?;
                members.insert(name, member);
            }
        }
        if members.is_empty() {
            return Err(ImageError::NotATar {
                reason: "it contains no files".into(),
            });
        }
        Ok(Archive { file, members })
    }

    /// Where the data of member `name` lies, following links.
    fn locate(&self, name: &str) -> Option<(u64, u64)> {
        let mut name = name.to_string();
        for _ in 0..MAX_LINK_HOPS {
            match self.members.get(&name)? {
                Member::Data { offset, size } => return Some((*offset, *size)),
                Member::Link(t) => name = t.clone(),
            }
        }
        None
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.locate(name).is_some()
    }

    /// A reader over the data of member `name` (which must exist).
    pub(crate) fn open(&self, name: &str) -> io::Result<io::Take<File>> {
        let (offset, size) = self
            .locate(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} not found")))?;
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(f.take(size))
    }

    fn read_doc(&self, name: &str, kind: &'static str, from: &str) -> Result<Vec<u8>, ImageError> {
        let (_, size) = self.locate(name).ok_or_else(|| ImageError::MissingBlob {
            file: from.to_string(),
            kind,
            name: name.to_string(),
        })?;
        if size > MAX_DOC {
            return Err(ImageError::BadManifest {
                file: name.to_string(),
                reason: format!("{size} bytes is too large for a {kind}"),
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.open(name)
            .and_then(|mut r| r.read_to_end(&mut buf))
            .map_err(ImageError::Spool)?;
        digest::verify_bytes(kind, name, &buf)?;
        Ok(buf)
    }

    /// Works out the config and the ordered layers, checking that every named blob is a
    /// clean relative path present in the archive (before anything is extracted).
    pub(crate) fn plan(&self) -> Result<Plan, ImageError> {
        if self.contains("manifest.json") {
            self.plan_classic()
        } else if self.contains("index.json") {
            self.plan_oci()
        } else {
            Err(ImageError::NoManifest)
        }
    }

    fn check_blob(&self, from: &str, kind: &'static str, name: &str) -> Result<String, ImageError> {
        let clean = clean_name(name).ok_or_else(|| ImageError::BadBlobPath {
            file: from.to_string(),
            kind,
            name: name.to_string(),
        })?;
        if !self.contains(&clean) {
            return Err(ImageError::MissingBlob {
                file: from.to_string(),
                kind,
                name: name.to_string(),
            });
        }
        Ok(clean)
    }

    fn plan_classic(&self) -> Result<Plan, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            layers: Vec<String>,
        }
        const F: &str = "manifest.json";
        let doc = self.read_doc(F, "manifest", "the archive")?;
        let entries: Vec<Entry> =
            serde_json::from_slice(&doc).map_err(|e| ImageError::BadManifest {
                file: F.into(),
                reason: e.to_string(),
            })?;
        let Some(first) = entries.into_iter().next() else {
            return Err(ImageError::BadManifest {
                file: F.into(),
                reason: "it lists no image".into(),
            });
        };
        let mut layers = Vec::new();
        for l in &first.layers {
            layers.push(self.check_blob(F, "layer", l)?);
        }
        let config_name = self.check_blob(F, "config", &first.config)?;
        let config = self.read_doc(&config_name, "config", F)?;
        Ok(Plan {
            config_name,
            config,
            layers,
        })
    }

    fn plan_oci(&self) -> Result<Plan, ImageError> {
        #[derive(Deserialize)]
        struct Descriptor {
            #[serde(rename = "mediaType", default)]
            media_type: String,
            digest: String,
        }
        #[derive(Deserialize)]
        struct Doc {
            #[serde(rename = "mediaType", default)]
            media_type: String,
            #[serde(default)]
            manifests: Vec<Descriptor>,
            config: Option<Descriptor>,
            #[serde(default)]
            layers: Vec<Descriptor>,
        }
        let mut file = "index.json".to_string();
        for _ in 0..8 {
            let doc = self.read_doc(&file, "manifest", "index.json")?;
            let d: Doc = serde_json::from_slice(&doc).map_err(|e| ImageError::BadManifest {
                file: file.clone(),
                reason: e.to_string(),
            })?;
            if let Some(cfg) = d.config {
                let _ = d.media_type;
                let mut layers = Vec::new();
                for l in &d.layers {
                    let p = blob_path(&file, &l.digest)?;
                    layers.push(self.check_blob(&file, "layer", &p)?);
                }
                let config_name =
                    self.check_blob(&file, "config", &blob_path(&file, &cfg.digest)?)?;
                let config = self.read_doc(&config_name, "config", &file)?;
                return Ok(Plan {
                    config_name,
                    config,
                    layers,
                });
            }
            // An index: follow the first image manifest (or nested index).
            let Some(next) = d
                .manifests
                .iter()
                .find(|m| m.media_type.contains("manifest"))
                .or_else(|| d.manifests.first())
            else {
                return Err(ImageError::BadManifest {
                    file,
                    reason: "it lists no manifest".into(),
                });
            };
            let p = blob_path(&file, &next.digest)?;
            file = self.check_blob(&file, "manifest", &p)?;
        }
        Err(ImageError::BadManifest {
            file,
            reason: "indexes nested too deeply".into(),
        })
    }
}

fn not_a_tar(e: io::Error) -> ImageError {
    match oversized(&e) {
        Some(o) => ImageError::ExtensionTooLarge {
            member: "the upload".into(),
            kind: o.kind,
            size: o.size,
            limit: MAX_EXTENSION,
        },
        None => ImageError::NotATar {
            reason: e.to_string(),
        },
    }
}

/// `sha256:<hex>` -> `blobs/sha256/<hex>`, refusing other algorithms and malformed digests.
fn blob_path(from: &str, digest: &str) -> Result<String, ImageError> {
    let bad = || ImageError::BadManifest {
        file: from.to_string(),
        reason: format!("invalid digest {digest:?}"),
    };
    let (alg, hex) = digest.split_once(':').ok_or_else(bad)?;
    if alg != "sha256" {
        return Err(ImageError::BadManifest {
            file: from.to_string(),
            reason: format!("digest {digest:?}: only sha256 digests are supported"),
        });
    }
    // 64 lowercase hex digits: the path then always carries a digest to verify.
    let path = format!("blobs/sha256/{hex}");
    if digest::named_digest(&path).is_none() {
        return Err(bad());
    }
    Ok(path)
}
