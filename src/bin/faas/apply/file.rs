//! The functions file of `faas apply -f FILE` (TOML): what it may say, and its checks.
//!
//! ```toml
//! [functions.hello]
//! file = "images/hello.tar"        # a `docker save` archive, relative to this file
//! env = { GREETING = "hi" }
//! env_file = "hello.env"           # K=V lines; `env` wins over it
//! secrets = { db = "db.pass" }       # /run/secrets/db holds the file's contents
//! memory_mb = 64
//! cpus = 0.5
//! pids_max = 32
//! timeout = 5                      # seconds
//! max_concurrency = 4
//!
//! [functions.api]
//! image = "registry.example:5000/api:1"   # pulled by the daemon
//! ```
//!
//! Everything is checked before anything is sent: an unknown field, a bad name, neither or
//! both of `file` and `image`, a missing archive or env file, a bad variable. A function is
//! a table keyed by its name, so TOML itself refuses a name given twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use faasd::api::{secret_name_problem, ConfigChange};
use serde::Deserialize;

use crate::config::{parse_env_file, read_secret};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FileError {
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("{path} is not a valid functions file: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("{path} lists no function (a function is a [functions.NAME] table)")]
    Empty { path: PathBuf },
    #[error("invalid function name {0:?}: 1 to 63 letters, digits, '-' or '_', starting with a letter or digit")]
    Name(String),
    #[error("function {0}: give either `file` (an image archive) or `image` (a registry reference), not both")]
    BothSources(String),
    #[error(
        "function {0}: no image: give `file` (an image archive) or `image` (a registry reference)"
    )]
    NoSource(String),
    #[error("function {name}: image archive {path}: {why}")]
    Archive {
        name: String,
        path: PathBuf,
        why: String,
    },
    #[error("function {name}: env file {path}: {why}")]
    EnvFile {
        name: String,
        path: PathBuf,
        why: String,
    },
    #[error(
        "function {name}: invalid env name {var:?}: it must be non-empty and contain no '=' or NUL"
    )]
    EnvName { name: String, var: String },
    #[error("function {name}: the value of env {var:?} contains a NUL byte")]
    EnvValue { name: String, var: String },
    #[error("function {name}: invalid secret name {secret:?}: {why}")]
    SecretName {
        name: String,
        secret: String,
        why: &'static str,
    },
    #[error("function {name}: secret {secret}: {why}")]
    SecretFile {
        name: String,
        secret: String,
        why: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionsFile {
    #[serde(default)]
    functions: BTreeMap<String, Entry>,
}

/// One `[functions.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    file: Option<PathBuf>,
    image: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    env_file: Option<PathBuf>,
    /// Secret name -> file holding its value (relative to the functions file); the
    /// handler reads it at /run/secrets/<name>.
    #[serde(default)]
    secrets: BTreeMap<String, PathBuf>,
    memory_mb: Option<u64>,
    cpus: Option<f64>,
    pids_max: Option<u32>,
    timeout: Option<f64>,
    max_concurrency: Option<usize>,
}

/// Where a function's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// An archive on this machine (its path resolved against the functions file's
    /// directory), uploaded.
    File(PathBuf),
    /// A registry reference the daemon pulls.
    Image(String),
}

/// A function as the file wants it, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub name: String,
    pub source: Source,
    /// Its whole configuration: `env` is every variable set through faasd (`env_file`
    /// merged under `env`), the limits those the file gives (one it omits is the
    /// daemon's default).
    pub config: ConfigChange,
}

/// Reads and checks the functions file at `path`: every function, or every error found.
pub fn load(path: &Path) -> Result<Vec<Wanted>, Vec<FileError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![FileError::Read {
            path: path.into(),
            why: e.to_string(),
        }]
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(path, &text, base)
}

/// [`load`] of `text`, with relative paths taken from `base`.
pub fn parse(path: &Path, text: &str, base: &Path) -> Result<Vec<Wanted>, Vec<FileError>> {
    let file: FunctionsFile = toml::from_str(text).map_err(|e| {
        vec![FileError::Parse {
            path: path.into(),
            why: e.to_string(),
        }]
    })?;
    if file.functions.is_empty() {
        return Err(vec![FileError::Empty { path: path.into() }]);
    }
    let (mut wanted, mut errors) = (Vec::new(), Vec::new());
    for (name, entry) in file.functions {
        match check(name, entry, base) {
            Ok(w) => wanted.push(w),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(wanted)
    } else {
        Err(errors)
    }
}

fn check(name: String, e: Entry, base: &Path) -> Result<Wanted, Vec<FileError>> {
    let mut errors = Vec::new();
    if !faasd::daemon::valid_name(&name) {
        errors.push(FileError::Name(name.clone()));
    }
    let source = match (e.file, e.image) {
        (Some(_), Some(_)) => Err(FileError::BothSources(name.clone())),
        (None, None) => Err(FileError::NoSource(name.clone())),
        (Some(file), None) => {
            let path = base.join(file);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => Ok(Source::File(path)),
                Ok(_) => Err(FileError::Archive {
                    name: name.clone(),
                    path,
                    why: "not a regular file".into(),
                }),
                Err(err) => Err(FileError::Archive {
                    name: name.clone(),
                    path,
                    why: err.to_string(),
                }),
            }
        }
        (None, Some(image)) => Ok(Source::Image(image)),
    };
    let source = source.map_err(|err| errors.push(err)).ok();
    let mut env = BTreeMap::new();
    if let Some(file) = e.env_file {
        let path = base.join(file);
        let read = std::fs::read_to_string(&path)
            .map_err(|err| err.to_string())
            .and_then(|text| {
                parse_env_file(&text).map_err(|(line, why)| format!("line {line}: {why}"))
            });
        match read {
            Ok(vars) => env = vars,
            Err(why) => errors.push(FileError::EnvFile {
                name: name.clone(),
                path,
                why,
            }),
        }
    }
    env.extend(e.env);
    for (var, value) in &env {
        if var.is_empty() || var.contains(['=', '\0']) {
            errors.push(FileError::EnvName {
                name: name.clone(),
                var: var.clone(),
            });
        } else if value.contains('\0') {
            errors.push(FileError::EnvValue {
                name: name.clone(),
                var: var.clone(),
            });
        }
    }
    let mut secrets = BTreeMap::new();
    for (secret, file) in e.secrets {
        if let Some(why) = secret_name_problem(&secret) {
            errors.push(FileError::SecretName {
                name: name.clone(),
                secret,
                why,
            });
            continue;
        }
        match read_secret(&base.join(file)) {
            Ok(value) => {
                secrets.insert(secret, value);
            }
            Err(why) => errors.push(FileError::SecretFile {
                name: name.clone(),
                secret,
                why: why.to_string(),
            }),
        }
    }
    match source {
        Some(source) if errors.is_empty() => Ok(Wanted {
            name,
            source,
            config: ConfigChange {
                env,
                secrets,
                memory_mb: e.memory_mb,
                cpus: e.cpus,
                pids_max: e.pids_max,
                timeout_secs: e.timeout,
                max_concurrency: e.max_concurrency,
                ..Default::default()
            },
        }),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(dir: &Path, text: &str) -> Result<Vec<Wanted>, Vec<FileError>> {
        parse(&dir.join("functions.toml"), text, dir)
    }

    #[test]
    fn every_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.tar"), "x").unwrap();
        std::fs::write(dir.path().join("hello.env"), "A=file\nB=file\n").unwrap();
        let wanted = parse_in(
            dir.path(),
            r#"
            [functions.hello]
            file = "hello.tar"
            env = { A = "inline", C = "3" }
            env_file = "hello.env"
            memory_mb = 64
            cpus = 0.5
            pids_max = 32
            timeout = 2.5
            max_concurrency = 4

            [functions.api]
            image = "127.0.0.1:5000/api:1"
            "#,
        )
        .unwrap();
        assert_eq!(wanted.len(), 2);
        // Sorted by name.
        assert_eq!(wanted[0].name, "api");
        assert_eq!(
            wanted[0].source,
            Source::Image("127.0.0.1:5000/api:1".into())
        );
        assert!(wanted[0].config.is_empty());
        let hello = &wanted[1];
        assert_eq!(hello.source, Source::File(dir.path().join("hello.tar")));
        let env: Vec<(&str, &str)> = hello
            .config
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "inline"), ("B", "file"), ("C", "3")]);
        let c = &hello.config;
        assert_eq!(
            (
                c.memory_mb,
                c.cpus,
                c.pids_max,
                c.timeout_secs,
                c.max_concurrency
            ),
            (Some(64), Some(0.5), Some(32), Some(2.5), Some(4))
        );
    }

    #[test]
    fn unknown_fields_and_bad_toml_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (text, says) in [
            ("[functions.f]\nimage = \"r/i:1\"\nmemory = 64\n", "memory"),
            ("[function.f]\nimage = \"r/i:1\"\n", "function"),
            (
                "[functions.f]\nimage = \"r/i:1\"\nmemory_mb = -1\n",
                "memory_mb",
            ),
            (
                "[functions.f]\nimage = \"r/i:1\"\ncpus = \"half\"\n",
                "cpus",
            ),
            ("[functions.f\nimage = 1\n", "unclosed table"),
        ] {
            let errors = parse_in(dir.path(), text).unwrap_err();
            assert!(
                matches!(&errors[..], [FileError::Parse { why, .. }] if why.contains(says)),
                "{text:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_name_given_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let errors = parse_in(
            dir.path(),
            "[functions.f]\nimage = \"r/i:1\"\n[functions.f]\nimage = \"r/i:2\"\n",
        )
        .unwrap_err();
        assert!(
            matches!(&errors[..], [FileError::Parse { why, .. }] if why.contains("duplicate")),
            "{errors:?}"
        );
    }

    #[test]
    fn every_bad_function_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.tar"), "x").unwrap();
        std::fs::create_dir(dir.path().join("adir")).unwrap();
        let errors = parse_in(
            dir.path(),
            r#"
            [functions."bad name"]
            image = "r/i:1"
            [functions.both]
            file = "a.tar"
            image = "r/i:1"
            [functions.none]
            env = { A = "1" }
            [functions.missing]
            file = "nope.tar"
            [functions.dir]
            file = "adir"
            [functions.envs]
            image = "r/i:1"
            env = { "A=B" = "1", C = "x\u0000y" }
            env_file = "no.env"
            [functions.secret]
            image = "r/i:1"
            secrets = { DB = "db.txt", "../x" = "y" }
            [functions.good]
            image = "r/i:1"
            "#,
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for want in [
            "invalid function name \"bad name\"",
            "function both: give either",
            "function none: no image",
            "function missing: image archive",
            "function dir: image archive",
            "not a regular file",
            "function envs: env file",
            "invalid env name \"A=B\"",
            "the value of env \"C\" contains a NUL",
            "function secret: secret DB: cannot read secret file",
            "function secret: invalid secret name \"../x\"",
        ] {
            assert!(
                text.iter().any(|t| t.contains(want)),
                "{want:?} not in {text:#?}"
            );
        }
        assert!(!text.iter().any(|t| t.contains("good")), "{text:#?}");
    }

    #[test]
    fn secrets_are_read_from_files_beside_the_functions_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db.pass"), b"s3cr\0t").unwrap();
        let wanted = parse_in(
            dir.path(),
            r#"
            [functions.api]
            image = "r/i:1"
            secrets = { db = "db.pass" }
            "#,
        )
        .unwrap();
        let secrets = &wanted[0].config.secrets;
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets["db"].as_bytes(), b"s3cr\0t");
    }

    #[test]
    fn an_empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let errors = parse_in(dir.path(), "# nothing\n").unwrap_err();
        assert!(
            matches!(&errors[..], [FileError::Empty { .. }]),
            "{errors:?}"
        );
    }

    #[test]
    fn paths_are_relative_to_the_functions_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("deploy");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("f.tar"), "x").unwrap();
        let file = sub.join("functions.toml");
        std::fs::write(&file, "[functions.f]\nfile = \"f.tar\"\n").unwrap();
        let wanted = load(&file).unwrap();
        assert_eq!(wanted[0].source, Source::File(sub.join("f.tar")));
        let errors = load(&dir.path().join("absent.toml")).unwrap_err();
        assert!(
            matches!(&errors[..], [FileError::Read { .. }]),
            "{errors:?}"
        );
    }
}
