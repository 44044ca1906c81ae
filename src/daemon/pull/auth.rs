//! Registry credentials from a docker `config.json` (`--registry-auth FILE`): the `auths`
//! map, keyed by registry host (`docker login` writes `host:port`, or a URL for Docker
//! Hub), each with `auth` (base64 of `user:password`) or `username` and `password`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("reading the registry auth file {path} failed: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry auth file {path} is not a docker config.json: {reason}")]
    Format { path: PathBuf, reason: String },
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials per registry host.
#[derive(Default)]
pub struct Credentials {
    by_host: HashMap<String, (String, String)>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let bytes = std::fs::read(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |reason: String| AuthFileError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let config: DockerConfig =
            serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
        let mut by_host = HashMap::new();
        for (key, entry) in config.auths {
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => decode(&auth).ok_or_else(|| {
                    format(format!(
                        "the \"auth\" of {key:?} is not base64 of user:password"
                    ))
                })?,
                (_, Some(user), Some(password)) => (user, password),
                // An entry without credentials (e.g. one kept by a credential helper).
                _ => continue,
            };
            by_host.insert(host_of(&key).to_string(), pair);
        }
        Ok(Credentials { by_host })
    }

    /// The credentials for `registry` (`host[:port]`), else anonymous.
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self.by_host.get(registry) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

fn decode(auth: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// `https://index.docker.io/v1/` -> `index.docker.io`; `host:port` stays.
fn host_of(key: &str) -> &str {
    let key = key.split_once("://").map_or(key, |(_, rest)| rest);
    key.split('/').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_login_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // "alice:pw" and "bob:x:y" (a password may hold a colon).
        std::fs::write(
            &path,
            r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6cHc="},
                          "https://index.docker.io/v1/": {"auth": "Ym9iOng6eQ=="},
                          "plain.example": {"username": "carol", "password": "c"},
                          "helper.example": {}},
                "credsStore": "desktop"}"#,
        )
        .unwrap();
        let c = Credentials::load(&path).unwrap();
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        assert_eq!(c.for_registry("127.0.0.1:5000"), basic("alice", "pw"));
        assert_eq!(c.for_registry("index.docker.io"), basic("bob", "x:y"));
        assert_eq!(c.for_registry("plain.example"), basic("carol", "c"));
        assert_eq!(c.for_registry("helper.example"), RegistryAuth::Anonymous);
        assert_eq!(c.for_registry("127.0.0.1:5001"), RegistryAuth::Anonymous);
    }

    #[test]
    fn a_broken_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths": {"r": {"auth": "not base64!"}}}"#).unwrap();
        let e = Credentials::load(&path).err().unwrap().to_string();
        assert!(e.contains("not base64 of user:password"), "{e}");
        let e = Credentials::load(&dir.path().join("missing"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("reading the registry auth file"), "{e}");
    }
}
