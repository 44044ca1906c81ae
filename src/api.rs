//! The control API's request and answer bodies, defined once: the daemon serializes them
//! (`daemon::api`) and `faas` deserializes them. The seed's endpoints keep their exact
//! shapes (the prototype's client reads them); README "Control API" lists every endpoint.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::runtime::Resources;

/// Header of `POST /api/new` naming the function.
pub const IMAGE_NAME_HEADER: &str = "X-Image-Name";
/// Optional header of `POST /api/new`: a [`ConfigChange`] as JSON, applied with the deploy
/// (the body is the tarball, so the configuration travels beside it). It may not carry
/// secrets: header values are what proxies and access logs record.
pub const CONFIG_HEADER: &str = "X-Function-Config";
/// Optional header of `POST /api/new`: the body starts with this many bytes of a
/// [`ConfigChange`] as JSON (secrets included), and the tarball follows them.
pub const CONFIG_LENGTH_HEADER: &str = "X-Function-Config-Length";

/// Secrets one function may have.
pub const MAX_SECRETS: usize = 32;
/// Bytes of one secret's value.
pub const MAX_SECRET_BYTES: usize = 64 << 10;
/// Bytes of a secret's name.
pub const MAX_SECRET_NAME: usize = 128;

/// Every error answer: `{"error": "..."}` with a 4xx or 5xx status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /api/new`: the function is live at `ip`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    pub ip: Ipv4Addr,
    pub cmd: Vec<String>,
}

/// `POST /api/pull`: deploy function `name` from registry reference `image`, with `config`
/// applied at the deploy (as the [`CONFIG_HEADER`] of an upload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    pub name: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "ConfigChange::is_empty")]
    pub config: ConfigChange,
}

/// `GET /api/resolve?image=REF`: the image id (`sha256:<hex>` of its config blob, as
/// `describe` reports a deployed image) the registry gives for `image` now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedImage {
    pub image: String,
    pub digest: String,
}

/// `GET /api/ip/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionIp {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// `DELETE /api/functions/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub name: String,
}

/// `GET /api/list`: function name -> its entry.
pub type List = BTreeMap<String, ListEntry>;

/// One function in `GET /api/list` (the prototype's fields, plus env names and limits).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListEntry {
    pub ip: Ipv4Addr,
    pub rootfs: PathBuf,
    pub cmd: Vec<String>,
    /// Names only: values are often secrets, and the list needs no token.
    #[serde(default)]
    pub env: Vec<String>,
    /// Names of its secrets, never values.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub workdir: String,
    /// `uid:gid`.
    #[serde(default)]
    pub user: String,
    pub resources: Resources,
    /// Containers waiting for a request now (--prewarm); absent from an older daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<usize>,
}

/// A change to a function's configuration: the body of `PATCH /api/functions/<name>/config`
/// and, at deploy, the [`CONFIG_HEADER`]. Absent fields keep their current value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigChange {
    /// Set (or replace) these variables; merged over the image's `Env`, these win.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Remove these variables set earlier (the image's own `Env` is not touched).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset_env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u32>,
    /// Seconds a request may take before its container is killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<f64>,
    /// Containers of this function running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<usize>,
    /// Set (or replace) these secrets: each handler reads them at `/run/secrets/<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, SecretValue>,
    /// Remove these secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rm_secrets: Vec<String>,
}

impl ConfigChange {
    pub fn is_empty(&self) -> bool {
        *self == ConfigChange::default()
    }

    /// Whether it sets or removes a secret.
    pub fn touches_secrets(&self) -> bool {
        !self.secrets.is_empty() || !self.rm_secrets.is_empty()
    }
}

/// `POST /api/functions/<name>/secrets/compare`: whether the function's secrets are
/// exactly these, names and values (`faas apply` asks before it changes them). The answer
/// is one bit: no value, and nothing derived from one, leaves the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsCompare {
    pub secrets: BTreeMap<String, SecretValue>,
}

/// The answer to a [`SecretsCompare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsComparison {
    pub same: bool,
}

/// A secret's value: any bytes, base64 in JSON. Its `Debug` shows only its length, so
/// that no log line or error can carry it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for SecretValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        // A borrowed or owned string alike; the error never quotes the value.
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(SecretValue)
            .map_err(|_| serde::de::Error::custom("a secret's value is not valid base64"))
    }
}

/// Why `name` cannot name a secret (a file in /run/secrets), or None: 1 to
/// [`MAX_SECRET_NAME`] bytes of letters, digits, `.`, `_` and `-`, not starting with `.`
/// (so no `.`, `..`, hidden or temporary name, no `/`, no NUL).
pub fn secret_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_SECRET_NAME {
        Some("it is longer than 128 bytes")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Some("use only letters, digits, '.', '_' and '-'")
    } else {
        None
    }
}

/// What each of a function's requests runs with (in [`ConfigView`] and [`Description`]);
/// `GET /api/defaults`: what a new function runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionLimits {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids_max: u32,
    pub timeout_secs: f64,
    pub max_concurrency: usize,
}

/// A function's configuration as answered (`PATCH .../config`): env names, never values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    pub name: String,
    /// Names of the variables set through the API (over the image's).
    pub env: Vec<String>,
    /// Names of its secrets, never values.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(flatten)]
    pub limits: FunctionLimits,
}

/// `GET /api/functions/<name>`: everything about a function but its env values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// `sha256:<hex>` of the image's config blob (its image id); empty for a function
    /// deployed before faasd recorded it.
    pub image_digest: String,
    /// Bytes the image takes on disk, measured at deploy (None: before faasd recorded it).
    pub image_size_bytes: Option<u64>,
    pub cmd: Vec<String>,
    pub workdir: String,
    /// `uid:gid`.
    pub user: String,
    /// Names of every variable the handler gets (the image's and ours), never values.
    pub env: Vec<String>,
    /// Names of its secrets (files in /run/secrets), never values.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Names of the variables set through faasd (over the image's own).
    #[serde(default)]
    pub env_set: Vec<String>,
    /// [`env_digest`] of the variables set through faasd: `faas apply` compares a file's
    /// env with it, so the values never leave the daemon (empty from an older daemon).
    #[serde(default)]
    pub env_set_digest: String,
    #[serde(flatten)]
    pub limits: FunctionLimits,
    /// Seconds since the Unix epoch of the last deploy (None: before faasd recorded it).
    pub deployed_at: Option<u64>,
    /// Requests whose handler ran to its exit, since the daemon started.
    pub requests_served: u64,
    /// Failed requests by reason (the `faasd_failures_total` reasons), since the start.
    pub failures: BTreeMap<String, u64>,
    pub last_failure: Option<LastFailure>,
    /// Prewarmed containers waiting for a request.
    pub warm: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastFailure {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub request: String,
    pub reason: String,
    pub message: String,
}

/// Query of `GET /api/functions/<name>/logs`; the answer is NDJSON, one [`LogLine`] a line
/// (oldest first), and with `follow` it goes on with new lines (an empty line now and then
/// keeps an idle stream checked) until the client leaves or the function is removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogQuery {
    /// Only lines logged at or after this time, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Only the last N lines of what is kept (then, with `follow`, every new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    #[serde(default)]
    pub follow: bool,
}

/// Which of the handler's outputs a [`LogLine`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One line a handler wrote (or a piece of a longer one), as kept in the function's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Milliseconds since the Unix epoch, when the daemon read it.
    pub ts_ms: u64,
    /// The request (container) id, as in the daemon's log and `describe`.
    pub request: String,
    pub stream: LogStream,
    /// Invalid UTF-8 replaced.
    pub text: String,
    /// The line was longer than the daemon keeps as one: it goes on in the next.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// `sha256:<hex>` of `env` (variables set through faasd) in one canonical form, the JSON of
/// the sorted map: the daemon reports it in [`Description::env_set_digest`] and `faas apply`
/// computes it from its file.
pub fn env_digest(env: &BTreeMap<String, String>) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(env).expect("a map of strings serializes");
    format!("sha256:{:x}", sha2::Sha256::digest(json))
}

/// `KEY=value` -> `KEY`.
pub fn env_names(env: &[String]) -> Vec<String> {
    env.iter()
        .map(|kv| {
            kv.split_once('=')
                .map_or(kv.as_str(), |(k, _)| k)
                .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_entry_keeps_the_prototype_field_names() {
        let e = ListEntry {
            ip: Ipv4Addr::new(10, 0, 0, 10),
            rootfs: "/var/lib/faasd/images/f/rootfs".into(),
            cmd: vec!["/h".into()],
            env: vec!["PATH".into()],
            secrets: vec!["db".into()],
            workdir: "/".into(),
            user: "0:0".into(),
            resources: Resources::default(),
            warm: Some(1),
        };
        let v = serde_json::to_value(&e).unwrap();
        for key in ["ip", "rootfs", "cmd", "env", "workdir", "user", "resources"] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v["ip"], "10.0.0.10");
        let back: ListEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn config_change_omits_what_it_does_not_change_and_refuses_unknown_fields() {
        assert_eq!(
            serde_json::to_string(&ConfigChange::default()).unwrap(),
            "{}"
        );
        let c: ConfigChange = serde_json::from_str(r#"{"memory_mb":64}"#).unwrap();
        assert_eq!(c.memory_mb, Some(64));
        assert!(!c.is_empty());
        assert!(serde_json::from_str::<ConfigChange>(r#"{"memory":64}"#).is_err());
    }

    #[test]
    fn secret_values_are_base64_and_never_debug_printed() {
        let c = ConfigChange {
            secrets: [("db".to_string(), SecretValue::new(b"pa\0ss".to_vec()))].into(),
            ..Default::default()
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"secrets":{"db":"cGEAc3M="}}"#);
        assert_eq!(serde_json::from_str::<ConfigChange>(&json).unwrap(), c);
        let debug = format!("{c:?}");
        assert!(
            debug.contains("<5 bytes redacted>") && !debug.contains("pa"),
            "{debug}"
        );
        let err =
            serde_json::from_str::<ConfigChange>(r#"{"secrets":{"db":"not base64 hunter2!"}}"#)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("not valid base64") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn secret_names_are_plain_file_names() {
        for good in ["db", "api-key", "tls.crt", "A_1", &"x".repeat(128)] {
            assert_eq!(secret_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a\0b",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(secret_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn env_digest_depends_on_names_and_values_not_on_order() {
        let a: BTreeMap<String, String> =
            [("A".into(), "1".into()), ("B".into(), "2".into())].into();
        let mut b = BTreeMap::new();
        b.insert("B".to_string(), "2".to_string());
        b.insert("A".to_string(), "1".to_string());
        assert_eq!(env_digest(&a), env_digest(&b));
        assert!(env_digest(&a).starts_with("sha256:"));
        b.insert("B".into(), "3".into());
        assert_ne!(env_digest(&a), env_digest(&b));
        assert_ne!(env_digest(&BTreeMap::new()), env_digest(&a));
    }

    #[test]
    fn env_names_drop_values() {
        let env = vec!["A=1".to_string(), "B=x=y".into(), "C".into()];
        assert_eq!(env_names(&env), ["A", "B", "C"]);
    }
}
