//! Each function's secret values on disk: `<state-dir>/secrets/<function>/<generation>/
//! <name>`, files 0600 in 0700 directories, never read by anything but the daemon.
//!
//! A change writes a whole new generation (unchanged secrets hard-linked from the current
//! one, new values written and fsynced), which the registry then names
//! (`settings.secrets_generation`): the registry's atomic rewrite is the commit point, so
//! a crash leaves the old set or the new one, never a mix. Generations and functions the
//! registry does not name are what a crash or a failed change left: [`SecretStore::sweep`]
//! removes them at start, and a [`Staged`] generation that is never committed removes
//! itself.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::registry::FunctionRecord;
use super::settings::FunctionSettings;
use super::state_dir::{DIR_MODE, FILE_MODE};
use crate::api::{SecretValue, MAX_SECRET_BYTES};
use crate::runtime::{RuntimeError, SecretFiles};

#[derive(Debug, thiserror::Error)]
pub enum SecretStoreError {
    #[error("secret store: {op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("secret store: {path} is larger than a secret may be")]
    TooLarge { path: PathBuf },
    #[error(transparent)]
    Files(#[from] RuntimeError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SecretStoreError + 'a {
    move |source| SecretStoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub struct SecretStore {
    dir: PathBuf,
}

impl SecretStore {
    /// The store at `dir` (created 0700 if missing).
    pub fn open(dir: PathBuf) -> Result<Self, SecretStoreError> {
        make_dir(&dir)?;
        Ok(SecretStore { dir })
    }

    fn function_dir(&self, function: &str) -> PathBuf {
        self.dir.join(function)
    }

    fn generation_dir(&self, function: &str, generation: u64) -> PathBuf {
        self.function_dir(function).join(generation.to_string())
    }

    /// Writes the generation after `old`'s holding the secrets named in `new` (whose
    /// `secrets_generation` the caller sets to the returned one): the values in `values`,
    /// the others linked from `old`'s generation. No secret left: generation 0, no files.
    pub fn stage(
        &self,
        function: &str,
        old: &FunctionSettings,
        new: &FunctionSettings,
        values: &BTreeMap<String, SecretValue>,
    ) -> Result<Staged, SecretStoreError> {
        let previous = (old.secrets_generation != 0)
            .then(|| self.generation_dir(function, old.secrets_generation));
        let mut staged = Staged {
            generation: 0,
            dir: None,
            previous,
        };
        if new.secrets.is_empty() {
            return Ok(staged);
        }
        staged.generation = old.secrets_generation + 1;
        let dir = self.generation_dir(function, staged.generation);
        make_dir(&self.function_dir(function))?;
        // A generation staged before a crash, never committed.
        remove_tree(&dir)?;
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        staged.dir = Some(dir.clone());
        for name in &new.secrets {
            let path = dir.join(name);
            match (values.get(name), &staged.previous) {
                (Some(value), _) => write_file(&path, value.as_bytes())?,
                (None, Some(prev)) => {
                    fs::hard_link(prev.join(name), &path).map_err(io_err("link", &path))?
                }
                (None, None) => {
                    return Err(SecretStoreError::Io {
                        op: "find the value of",
                        path,
                        source: io::ErrorKind::NotFound.into(),
                    })
                }
            }
        }
        sync_dir(&dir)?;
        sync_dir(&self.function_dir(function))?;
        Ok(staged)
    }

    /// The values of `settings.secrets`, from its generation.
    pub fn load(
        &self,
        function: &str,
        settings: &FunctionSettings,
    ) -> Result<SecretFiles, SecretStoreError> {
        if settings.secrets.is_empty() {
            return Ok(SecretFiles::default());
        }
        let dir = self.generation_dir(function, settings.secrets_generation);
        let files = settings
            .secrets
            .iter()
            .map(|name| {
                let path = dir.join(name);
                Ok((name.clone(), SecretValue::new(read_file(&path)?)))
            })
            .collect::<Result<Vec<_>, SecretStoreError>>()?;
        Ok(SecretFiles::new(files)?)
    }

    /// Removes every secret of `function` (it is gone from the registry).
    pub fn remove_function(&self, function: &str) -> Result<(), SecretStoreError> {
        remove_tree(&self.function_dir(function))
    }

    /// Removes what the registry does not name: functions no longer deployed (a crash
    /// mid-undeploy) and generations staged or replaced but not cleaned up (a crash
    /// mid-change). Returns how many directories went.
    pub fn sweep(
        &self,
        records: &BTreeMap<String, FunctionRecord>,
    ) -> Result<usize, SecretStoreError> {
        let mut removed = 0;
        for function in list(&self.dir)? {
            let path = self.dir.join(&function);
            let current = records
                .get(&function)
                .filter(|r| !r.settings.secrets.is_empty())
                .map(|r| r.settings.secrets_generation.to_string());
            let Some(current) = current else {
                remove_tree(&path)?;
                removed += 1;
                continue;
            };
            for generation in list(&path)? {
                if generation != current {
                    remove_tree(&path.join(generation))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A generation written but not yet named by the registry: removed on drop unless
/// committed.
pub struct Staged {
    pub generation: u64,
    dir: Option<PathBuf>,
    /// The generation it replaces, removed at commit.
    previous: Option<PathBuf>,
}

impl Staged {
    /// The registry names this generation now: the one it replaced goes.
    pub fn commit(mut self) {
        self.dir = None;
        if let Some(prev) = self.previous.take() {
            if let Err(e) = remove_tree(&prev) {
                tracing::warn!("removing replaced secrets: {e} (swept at the next start)");
            }
            if self.generation == 0 {
                // No secret left: the function's directory goes too (it is empty).
                if let Some(parent) = prev.parent() {
                    let _ = fs::remove_dir(parent);
                }
            }
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!("removing uncommitted secrets: {e} (swept at the next start)");
            }
            // The function's directory too, when this was its only generation.
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), SecretStoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err("create", dir))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SecretStoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("sync", path))
}

fn read_file(path: &Path) -> Result<Vec<u8>, SecretStoreError> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let mut bytes = Vec::new();
    f.take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(SecretStoreError::TooLarge { path: path.into() });
    }
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> Result<(), SecretStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

fn remove_tree(path: &Path) -> Result<(), SecretStoreError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn list(dir: &Path) -> Result<Vec<String>, SecretStoreError> {
    fs::read_dir(dir)
        .map_err(io_err("list", dir))?
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(io_err("list", dir))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(names: &[&str], generation: u64) -> FunctionSettings {
        FunctionSettings {
            secrets: names.iter().map(|n| n.to_string()).collect(),
            secrets_generation: generation,
            ..Default::default()
        }
    }

    fn value(s: &str) -> SecretValue {
        SecretValue::new(s.as_bytes().to_vec())
    }

    fn names(files: &SecretFiles) -> Vec<&str> {
        files.names().collect()
    }

    #[test]
    fn generations_replace_each_other_and_keep_unchanged_values() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::open(tmp.path().join("secrets")).unwrap();
        let none = FunctionSettings::default();
        let first = settings(&["a", "b"], 0);
        let values = [("a".into(), value("1")), ("b".into(), value("2"))].into();
        let staged = store.stage("f", &none, &first, &values).unwrap();
        assert_eq!(staged.generation, 1);
        staged.commit();
        let first = settings(&["a", "b"], 1);
        let file = tmp.path().join("secrets/f/1/a");
        assert_eq!(fs::read(&file).unwrap(), b"1");
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dir = fs::metadata(tmp.path().join("secrets/f/1")).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);

        // b replaced, a kept, c added.
        let second = settings(&["a", "b", "c"], 0);
        let values = [("b".into(), value("two")), ("c".into(), value("3"))].into();
        let staged = store.stage("f", &first, &second, &values).unwrap();
        assert_eq!(staged.generation, 2);
        // Until the commit, the old generation is still whole.
        assert_eq!(fs::read(tmp.path().join("secrets/f/1/b")).unwrap(), b"2");
        staged.commit();
        assert!(!tmp.path().join("secrets/f/1").exists());
        let loaded = store.load("f", &settings(&["a", "b", "c"], 2)).unwrap();
        assert_eq!(names(&loaded), ["a", "b", "c"]);
        assert_eq!(fs::read(tmp.path().join("secrets/f/2/b")).unwrap(), b"two");
        assert_eq!(fs::read(tmp.path().join("secrets/f/2/a")).unwrap(), b"1");
    }

    #[test]
    fn an_uncommitted_generation_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SecretStore::open(tmp.path().join("secrets")).unwrap();
        let values = [("a".into(), value("1"))].into();
        let staged = store
            .stage(
                "f",
                &FunctionSettings::default(),
                &settings(&["a"], 0),
                &values,
            )
            .unwrap();
        drop(staged);
        assert!(!tmp.path().join("secrets/f").exists());
    }

    #[test]
    fn sweep_keeps_only_what_the_registry_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("secrets");
        let store = SecretStore::open(root.clone()).unwrap();
        for dir in ["kept/3", "kept/2", "kept/4", "gone/1"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        let mut rec = crate::daemon::registry::tests::record([10, 0, 0, 10]);
        rec.settings = settings(&["a"], 3);
        let records = [("kept".to_string(), rec)].into();
        assert_eq!(store.sweep(&records).unwrap(), 3);
        assert_eq!(list(&root).unwrap(), ["kept"]);
        assert_eq!(list(&root.join("kept")).unwrap(), ["3"]);
    }
}
