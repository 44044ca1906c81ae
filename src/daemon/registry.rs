//! The deployments, persisted in `registry.json` and rewritten atomically on every change.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::settings::FunctionSettings;
use crate::image::ImageConfig;
use crate::runtime::Resources;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("reading {path} failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid registry: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path} failed: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One deployed function, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionRecord {
    pub ip: Ipv4Addr,
    pub config: ImageConfig,
    pub resources: Resources,
    /// Env, timeout and concurrency set through the API.
    #[serde(default)]
    pub settings: FunctionSettings,
    /// `sha256:<hex>` of the image's config blob (empty in older registries).
    #[serde(default)]
    pub image_digest: String,
    /// Seconds since the Unix epoch of the last deploy (absent in older registries).
    #[serde(default)]
    pub deployed_at: Option<u64>,
    /// Bytes the image takes on disk, measured at deploy (absent in older registries).
    #[serde(default)]
    pub image_size: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    functions: BTreeMap<String, FunctionRecord>,
}

pub struct Registry {
    path: PathBuf,
    functions: BTreeMap<String, FunctionRecord>,
}

impl Registry {
    /// Loads `path`, or starts empty when it does not exist yet.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let functions = match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<OnDisk>(&bytes)
                    .map_err(|source| RegistryError::Parse {
                        path: path.into(),
                        source,
                    })?
                    .functions
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(RegistryError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        Ok(Registry {
            path: path.into(),
            functions,
        })
    }

    pub fn functions(&self) -> &BTreeMap<String, FunctionRecord> {
        &self.functions
    }

    /// Inserts or replaces `name` and persists; on a write error the change is undone.
    pub fn put(&mut self, name: &str, record: FunctionRecord) -> Result<(), RegistryError> {
        let old = self.functions.insert(name.to_string(), record);
        self.save().inspect_err(|_| {
            match old {
                Some(old) => self.functions.insert(name.to_string(), old),
                None => self.functions.remove(name),
            };
        })
    }

    /// Removes `name` and persists; on a write error the change is undone.
    pub fn remove(&mut self, name: &str) -> Result<Option<FunctionRecord>, RegistryError> {
        let Some(old) = self.functions.remove(name) else {
            return Ok(None);
        };
        match self.save() {
            Ok(()) => Ok(Some(old)),
            Err(e) => {
                self.functions.insert(name.to_string(), old);
                Err(e)
            }
        }
    }

    /// temp file, fsync, rename, fsync of the directory: a crash leaves the old or the new
    /// registry, never a torn one.
    fn save(&self) -> Result<(), RegistryError> {
        let err = |source| RegistryError::Write {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&OnDisk {
            functions: self.functions.clone(),
        })
        .map_err(io::Error::other)
        .map_err(err)?;
        // 0600: the records hold every function's env. set_permissions too, for a stale
        // tmp file an older daemon left wider.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(ip: [u8; 4]) -> FunctionRecord {
        FunctionRecord {
            ip: Ipv4Addr::from(ip),
            config: ImageConfig {
                cmd: vec!["/test-handler".into()],
                env: vec!["PATH=/bin".into()],
                working_dir: "/".into(),
                uid: 0,
                gid: 0,
            },
            resources: Resources::default(),
            settings: FunctionSettings::default(),
            image_digest: String::new(),
            deployed_at: None,
            image_size: None,
        }
    }

    #[test]
    fn survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let mut reg = Registry::load(&path).unwrap();
        assert!(reg.functions().is_empty());
        reg.put("a", record([10, 0, 0, 10])).unwrap();
        reg.put("b", record([10, 0, 0, 11])).unwrap();
        reg.remove("a").unwrap();
        let again = Registry::load(&path).unwrap();
        assert_eq!(again.functions().len(), 1);
        assert_eq!(again.functions()["b"], record([10, 0, 0, 11]));
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_registry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        fs::write(&path, b"{not json").unwrap();
        let err = Registry::load(&path).err().expect("must fail");
        assert!(err.to_string().contains("not a valid registry"), "{err}");
    }

    #[test]
    fn failed_write_keeps_memory_and_disk_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("registry.json");
        let mut reg = Registry::load(&path).unwrap();
        assert!(reg.put("a", record([10, 0, 0, 10])).is_err());
        assert!(reg.functions().is_empty());
    }
}
