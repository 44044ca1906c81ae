//! Per-function configuration (env, secrets, limits, timeout, concurrency): validated,
//! bounded by the operator's maxima, applied to the persisted record, and turned into what
//! a request runs with. Secret values are not part of the record: it keeps their names,
//! the values live in the secret store (secret_store.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::registry::FunctionRecord;
use super::Config;
use crate::api::{secret_name_problem, ConfigChange, MAX_SECRETS, MAX_SECRET_BYTES};
use crate::runtime::{ParentLimits, Resources, SecretFiles};

/// Bytes of `KEY=value` strings a function may set through the API, all together.
pub const MAX_ENV_BYTES: usize = 64 << 10;
/// Variables a function may set through the API.
pub const MAX_ENV_VARS: usize = 256;
/// Below this a container cannot even start its handler (the kernel charges its page
/// tables and the runtime's stacks to the cgroup).
pub const MIN_MEMORY_MB: u64 = 4;
/// The smallest CPU share a cgroup quota expresses sensibly (1 ms per 100 ms period).
pub const MIN_CPUS: f64 = 0.01;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("invalid env name {0:?}: it must be non-empty and contain no '=' or NUL")]
    EnvName(String),
    #[error("the value of env {0:?} contains a NUL byte")]
    EnvValue(String),
    #[error("the env set through faasd is {bytes} bytes in {vars} variables; the limit is {MAX_ENV_BYTES} bytes and {MAX_ENV_VARS} variables")]
    EnvTooLarge { bytes: usize, vars: usize },
    #[error("invalid secret name {name:?}: {why}")]
    SecretName { name: String, why: &'static str },
    #[error("secret {name:?} is {bytes} bytes; the limit is {MAX_SECRET_BYTES} bytes")]
    SecretTooLarge { name: String, bytes: usize },
    #[error("a function may have at most {MAX_SECRETS} secrets; this change leaves {0}")]
    TooManySecrets(usize),
    #[error("{what} {asked} is above the maximum the operator allows, {max} ({flag})")]
    AboveMax {
        what: &'static str,
        asked: String,
        max: String,
        flag: &'static str,
    },
    #[error("{what} {asked} is invalid: {why}")]
    Invalid {
        what: &'static str,
        asked: String,
        why: &'static str,
    },
}

/// What a function's configuration is persisted as, beside its resources (absent in
/// registries written before per-function configuration: the daemon's defaults then).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionSettings {
    /// Set through the API, merged over the image's `Env` at each spawn.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// None: `--exec-timeout`.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// None: `--max-per-function`.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Names of its secrets (their values are in the secret store).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secrets: BTreeSet<String>,
    /// Which generation of the secret store holds them (each change writes a new one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secrets_generation: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most a function may ask for: `--max-memory-mb`, `--max-cpus`, `--max-pids`,
/// `--max-timeout`, and `--max-per-function` for concurrency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Maxima {
    pub memory_mb: u64,
    pub cpus: f64,
    pub pids_max: u32,
    pub timeout_secs: f64,
    pub concurrency: usize,
}

impl Maxima {
    /// Unset maxima: what all containers together may use (memory, pids), every CPU of
    /// the machine, and ten times the default timeout.
    pub fn resolve(cfg: &Config, totals: &ParentLimits) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Maxima {
            memory_mb: cfg.max_memory_mb.unwrap_or(totals.memory_bytes >> 20),
            cpus: cfg.max_cpus.unwrap_or(cpus.max(cfg.cpus)),
            pids_max: cfg
                .max_pids
                .unwrap_or_else(|| u32::try_from(totals.pids_max).unwrap_or(u32::MAX)),
            timeout_secs: cfg.max_timeout.unwrap_or(cfg.exec_timeout * 10.0),
            concurrency: cfg.max_per_function,
        }
    }

    /// The daemon's own defaults must be allowed by its maxima.
    pub fn check_defaults(&self, cfg: &Config) -> Result<(), SettingsError> {
        let defaults = ConfigChange {
            memory_mb: Some(cfg.memory_mb),
            cpus: Some(cfg.cpus),
            pids_max: Some(cfg.pids_max),
            timeout_secs: Some(cfg.exec_timeout),
            ..ConfigChange::default()
        };
        // Named as the operator gave it: the daemon's flag for the timeout differs.
        check(&defaults, Resources::default(), self).map_err(|e| match e {
            SettingsError::AboveMax {
                what: "--timeout",
                asked,
                max,
                flag,
            } => SettingsError::AboveMax {
                what: "--exec-timeout",
                asked,
                max,
                flag,
            },
            e => e,
        })
    }
}

/// Refuses a change that no function could take (a bad env, a value above a maximum).
pub fn check(
    change: &ConfigChange,
    mut resources: Resources,
    max: &Maxima,
) -> Result<(), SettingsError> {
    apply_to(
        &mut resources,
        &mut FunctionSettings::default(),
        change,
        max,
    )
}

/// Applies `change` to `rec`, or leaves it untouched and says why not.
pub fn apply(
    rec: &mut FunctionRecord,
    change: &ConfigChange,
    max: &Maxima,
) -> Result<(), SettingsError> {
    let (mut resources, mut settings) = (rec.resources, rec.settings.clone());
    apply_to(&mut resources, &mut settings, change, max)?;
    rec.resources = resources;
    rec.settings = settings;
    Ok(())
}

fn apply_to(
    resources: &mut Resources,
    settings: &mut FunctionSettings,
    change: &ConfigChange,
    max: &Maxima,
) -> Result<(), SettingsError> {
    for name in &change.unset_env {
        check_env_name(name)?;
        settings.env.remove(name);
    }
    for (name, value) in &change.env {
        check_env_name(name)?;
        if value.contains('\0') {
            return Err(SettingsError::EnvValue(name.clone()));
        }
        settings.env.insert(name.clone(), value.clone());
    }
    for name in &change.rm_secrets {
        check_secret_name(name)?;
        settings.secrets.remove(name);
    }
    for (name, value) in &change.secrets {
        check_secret_name(name)?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(SettingsError::SecretTooLarge {
                name: name.clone(),
                bytes: value.len(),
            });
        }
        settings.secrets.insert(name.clone());
    }
    if settings.secrets.len() > MAX_SECRETS {
        return Err(SettingsError::TooManySecrets(settings.secrets.len()));
    }
    let bytes: usize = settings
        .env
        .iter()
        .map(|(k, v)| k.len() + v.len() + 1)
        .sum();
    if bytes > MAX_ENV_BYTES || settings.env.len() > MAX_ENV_VARS {
        return Err(SettingsError::EnvTooLarge {
            bytes,
            vars: settings.env.len(),
        });
    }
    if let Some(mb) = change.memory_mb {
        bounded(
            "--memory-mb",
            mb,
            MIN_MEMORY_MB,
            max.memory_mb,
            "--max-memory-mb",
        )?;
        resources.memory_bytes = mb << 20;
    }
    if let Some(cpus) = change.cpus {
        if !cpus.is_finite() {
            return Err(invalid("--cpus", cpus, "not a number"));
        }
        bounded("--cpus", cpus, MIN_CPUS, max.cpus, "--max-cpus")?;
        resources.cpu_millis = (cpus * 1000.0).round() as u64;
    }
    if let Some(n) = change.pids_max {
        bounded("--pids-max", n, 1, max.pids_max, "--max-pids")?;
        resources.pids_max = n;
    }
    if let Some(secs) = change.timeout_secs {
        if !secs.is_finite() {
            return Err(invalid("--timeout", secs, "not a number"));
        }
        bounded("--timeout", secs, 0.001, max.timeout_secs, "--max-timeout")?;
        settings.timeout_secs = Some(secs);
    }
    if let Some(n) = change.max_concurrency {
        bounded(
            "--max-concurrency",
            n,
            1,
            max.concurrency,
            "--max-per-function",
        )?;
        settings.max_concurrency = Some(n);
    }
    Ok(())
}

fn invalid(what: &'static str, asked: impl ToString, why: &'static str) -> SettingsError {
    SettingsError::Invalid {
        what,
        asked: asked.to_string(),
        why,
    }
}

fn bounded<T: PartialOrd + ToString>(
    what: &'static str,
    asked: T,
    min: T,
    max: T,
    flag: &'static str,
) -> Result<(), SettingsError> {
    if asked < min {
        return Err(SettingsError::Invalid {
            what,
            asked: asked.to_string(),
            why: "below the smallest usable value",
        });
    }
    if asked > max {
        return Err(SettingsError::AboveMax {
            what,
            asked: asked.to_string(),
            max: max.to_string(),
            flag,
        });
    }
    Ok(())
}

fn check_secret_name(name: &str) -> Result<(), SettingsError> {
    match secret_name_problem(name) {
        Some(why) => Err(SettingsError::SecretName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

fn check_env_name(name: &str) -> Result<(), SettingsError> {
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(SettingsError::EnvName(name.to_string()));
    }
    Ok(())
}

/// The image's `Env` with the function's variables over it: the image's entries of the
/// same names are dropped, the function's follow in name order.
pub fn merge_env(image: &[String], ours: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = image
        .iter()
        .filter(|kv| {
            let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            !ours.contains_key(name)
        })
        .cloned()
        .collect();
    out.extend(ours.iter().map(|(k, v)| format!("{k}={v}")));
    out
}

/// What a request runs with, fixed when it starts: a configuration update makes a new
/// one for the requests after it, and those in flight keep theirs.
pub struct Live {
    pub resources: Resources,
    pub env: BTreeMap<String, String>,
    /// Its secrets, mounted at /run/secrets in each of its containers.
    pub secrets: Arc<SecretFiles>,
    pub exec_timeout: Duration,
    pub max_concurrency: usize,
    /// This function's containers at once. A new configuration gets a fresh semaphore:
    /// until the requests on the old one end, both may run (the global slots still bound
    /// the total).
    pub slots: Arc<Semaphore>,
}

impl Live {
    /// What `rec`'s requests run with; `secrets` are its values of `rec.settings.secrets`.
    pub fn of(rec: &FunctionRecord, cfg: &Config, secrets: Arc<SecretFiles>) -> Self {
        let max_concurrency = rec.settings.max_concurrency.unwrap_or(cfg.max_per_function);
        Live {
            resources: rec.resources,
            env: rec.settings.env.clone(),
            secrets,
            exec_timeout: rec
                .settings
                .timeout_secs
                .map_or_else(|| cfg.exec_timeout(), Duration::from_secs_f64),
            max_concurrency,
            slots: Arc::new(Semaphore::new(max_concurrency)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max() -> Maxima {
        Maxima {
            memory_mb: 1024,
            cpus: 2.0,
            pids_max: 256,
            timeout_secs: 60.0,
            concurrency: 8,
        }
    }

    fn record() -> FunctionRecord {
        crate::daemon::registry::tests::record([10, 0, 0, 10])
    }

    #[test]
    fn applies_every_field_within_bounds() {
        let mut rec = record();
        let change = ConfigChange {
            env: [("A".to_string(), "1".to_string())].into(),
            memory_mb: Some(64),
            cpus: Some(0.5),
            pids_max: Some(16),
            timeout_secs: Some(2.5),
            max_concurrency: Some(3),
            ..Default::default()
        };
        apply(&mut rec, &change, &max()).unwrap();
        assert_eq!(rec.resources.memory_bytes, 64 << 20);
        assert_eq!(rec.resources.cpu_millis, 500);
        assert_eq!(rec.resources.pids_max, 16);
        assert_eq!(rec.settings.timeout_secs, Some(2.5));
        assert_eq!(rec.settings.max_concurrency, Some(3));
        assert_eq!(rec.settings.env["A"], "1");
        let unset = ConfigChange {
            unset_env: vec!["A".into()],
            ..Default::default()
        };
        apply(&mut rec, &unset, &max()).unwrap();
        assert!(rec.settings.env.is_empty());
        assert_eq!(rec.resources.pids_max, 16, "absent fields are kept");
    }

    #[test]
    fn above_a_maximum_is_refused_and_changes_nothing() {
        let cases = [
            ConfigChange {
                memory_mb: Some(1025),
                ..Default::default()
            },
            ConfigChange {
                cpus: Some(2.5),
                ..Default::default()
            },
            ConfigChange {
                pids_max: Some(257),
                ..Default::default()
            },
            ConfigChange {
                timeout_secs: Some(61.0),
                ..Default::default()
            },
            ConfigChange {
                max_concurrency: Some(9),
                ..Default::default()
            },
        ];
        for mut change in cases {
            // A valid env change beside it must not be half-applied.
            change.env = [("B".to_string(), "2".to_string())].into();
            let mut rec = record();
            let err = apply(&mut rec, &change, &max()).unwrap_err();
            assert!(
                matches!(err, SettingsError::AboveMax { .. }),
                "{change:?}: {err}"
            );
            assert!(err.to_string().contains("--max-"), "{err}");
            assert_eq!(rec, record());
        }
    }

    #[test]
    fn nonsense_values_are_refused() {
        for change in [
            ConfigChange {
                memory_mb: Some(0),
                ..Default::default()
            },
            ConfigChange {
                cpus: Some(f64::NAN),
                ..Default::default()
            },
            ConfigChange {
                cpus: Some(0.0),
                ..Default::default()
            },
            ConfigChange {
                pids_max: Some(0),
                ..Default::default()
            },
            ConfigChange {
                timeout_secs: Some(-1.0),
                ..Default::default()
            },
            ConfigChange {
                max_concurrency: Some(0),
                ..Default::default()
            },
        ] {
            let err = apply(&mut record(), &change, &max()).unwrap_err();
            assert!(
                matches!(err, SettingsError::Invalid { .. }),
                "{change:?}: {err}"
            );
        }
    }

    #[test]
    fn env_is_validated() {
        for bad in ["", "A=B", "A\0"] {
            let change = ConfigChange {
                env: [(bad.to_string(), "v".to_string())].into(),
                ..Default::default()
            };
            assert_eq!(
                apply(&mut record(), &change, &max()),
                Err(SettingsError::EnvName(bad.into()))
            );
        }
        let change = ConfigChange {
            env: [("A".to_string(), "x\0y".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            apply(&mut record(), &change, &max()),
            Err(SettingsError::EnvValue("A".into()))
        );
        let big = ConfigChange {
            env: [("A".to_string(), "x".repeat(MAX_ENV_BYTES))].into(),
            ..Default::default()
        };
        assert!(matches!(
            apply(&mut record(), &big, &max()),
            Err(SettingsError::EnvTooLarge { .. })
        ));
        let many = ConfigChange {
            env: (0..=MAX_ENV_VARS)
                .map(|i| (format!("V{i}"), String::new()))
                .collect(),
            ..Default::default()
        };
        assert!(matches!(
            apply(&mut record(), &many, &max()),
            Err(SettingsError::EnvTooLarge { .. })
        ));
    }

    #[test]
    fn secrets_are_validated_and_bounded() {
        use crate::api::SecretValue;
        let set = |name: &str, len: usize| ConfigChange {
            secrets: [(name.to_string(), SecretValue::new(vec![b'x'; len]))].into(),
            ..Default::default()
        };
        let mut rec = record();
        apply(&mut rec, &set("db", MAX_SECRET_BYTES), &max()).unwrap();
        assert_eq!(rec.settings.secrets, BTreeSet::from(["db".to_string()]));
        for bad in ["", "..", "a/b", "a\0b"] {
            let err = apply(&mut rec, &set(bad, 1), &max()).unwrap_err();
            assert!(
                matches!(err, SettingsError::SecretName { .. }),
                "{bad:?}: {err}"
            );
        }
        let err = apply(&mut rec, &set("big", MAX_SECRET_BYTES + 1), &max()).unwrap_err();
        assert!(matches!(err, SettingsError::SecretTooLarge { .. }), "{err}");
        let many = ConfigChange {
            secrets: (0..MAX_SECRETS)
                .map(|i| (format!("s{i}"), SecretValue::new(b"v".to_vec())))
                .collect(),
            ..Default::default()
        };
        let err = apply(&mut rec, &many, &max()).unwrap_err();
        assert_eq!(err, SettingsError::TooManySecrets(MAX_SECRETS + 1));
        assert_eq!(
            rec.settings.secrets.len(),
            1,
            "a refused change changes nothing"
        );
        let rm = ConfigChange {
            rm_secrets: vec!["db".into(), "never-set".into()],
            ..Default::default()
        };
        apply(&mut rec, &rm, &max()).unwrap();
        assert!(rec.settings.secrets.is_empty());
    }

    #[test]
    fn our_env_wins_over_the_image() {
        let image = vec!["PATH=/bin".to_string(), "MODE=image".into(), "X".into()];
        let ours: BTreeMap<String, String> = [
            ("MODE".to_string(), "ours".to_string()),
            ("NEW".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(
            merge_env(&image, &ours),
            ["PATH=/bin", "X", "MODE=ours", "NEW=1"]
        );
    }

    #[test]
    fn an_old_registry_record_has_default_settings() {
        let json = r#"{"ip":"10.0.0.10","config":{"cmd":["/h"],"env":[],"working_dir":"/","uid":0,"gid":0},
            "resources":{"memory_bytes":536870912,"cpu_millis":1000,"pids_max":128}}"#;
        let rec: FunctionRecord = serde_json::from_str(json).unwrap();
        assert_eq!(rec.settings, FunctionSettings::default());
    }
}
