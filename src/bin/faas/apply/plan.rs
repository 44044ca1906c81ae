//! What `faas apply` does, computed from the file and the daemon's state alone (no I/O):
//! create what is absent, redeploy what runs another image, change the configuration that
//! differs, leave the rest, and with `--prune` remove what the file does not name.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use faasd::api::{env_digest, ConfigChange, Description, FunctionLimits};

/// A function the file wants, with the image id its image has now.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub name: &'a str,
    /// `sha256:<hex>` of the image's config: of the archive, or the registry's.
    pub digest: &'a str,
    /// Its whole configuration (every variable set through faasd, its secrets, the
    /// limits given).
    pub config: &'a ConfigChange,
    /// Whether the deployed function's secrets are exactly `config.secrets` (the daemon
    /// compares: values never leave it); true when it is not deployed.
    pub secrets_same: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Deploy it with this configuration.
    Create {
        name: String,
        config: ConfigChange,
    },
    /// Redeploy its image (`image`) and/or change its configuration (`config`, the
    /// fields named in `changed`).
    Update {
        name: String,
        image: bool,
        config: ConfigChange,
        changed: Vec<&'static str>,
    },
    Unchanged {
        name: String,
    },
    Remove {
        name: String,
    },
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Create { name, .. }
            | Step::Update { name, .. }
            | Step::Unchanged { name }
            | Step::Remove { name } => name,
        }
    }

    /// Whether carrying it out changes anything.
    pub fn changes(&self) -> bool {
        !matches!(self, Step::Unchanged { .. })
    }
}

/// One line: `+ create f`, `~ update f (image, config: env, memory_mb)`, `- remove f`,
/// `= f unchanged`.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Create { name, .. } => write!(f, "+ create {name}"),
            Step::Update {
                name,
                image,
                changed,
                ..
            } => {
                let mut what = Vec::new();
                if *image {
                    what.push("image".to_string());
                }
                if !changed.is_empty() {
                    what.push(format!("config: {}", changed.join(", ")));
                }
                write!(f, "~ update {name} ({})", what.join(", "))
            }
            Step::Unchanged { name } => write!(f, "= {name} unchanged"),
            Step::Remove { name } => write!(f, "- remove {name}"),
        }
    }
}

/// The steps: the file's functions first, then (with `prune`) the removals, each part by
/// name, so that new and updated functions are up before anything is taken away. A limit
/// a target leaves out is the daemon's default (`defaults`).
pub fn plan(
    targets: &[Target<'_>],
    current: &BTreeMap<String, Description>,
    defaults: &FunctionLimits,
    prune: bool,
) -> Vec<Step> {
    let mut steps: Vec<Step> = targets
        .iter()
        .map(|t| match current.get(t.name) {
            None => Step::Create {
                name: t.name.to_string(),
                config: t.config.clone(),
            },
            Some(have) => {
                let image = have.image_digest != t.digest;
                let (config, changed) = config_diff(t, have, defaults);
                if image || !changed.is_empty() {
                    Step::Update {
                        name: t.name.to_string(),
                        image,
                        config,
                        changed,
                    }
                } else {
                    Step::Unchanged {
                        name: t.name.to_string(),
                    }
                }
            }
        })
        .collect();
    if prune {
        let named = |n: &str| targets.iter().any(|t| t.name == n);
        steps.extend(
            current
                .keys()
                .filter(|n| !named(n))
                .map(|n| Step::Remove { name: n.clone() }),
        );
    }
    steps
}

/// The change that makes `have` configured as the target says, and the fields it
/// changes. The env is compared by digest and the secrets by the daemon (which never
/// answers values); a limit the target leaves out is compared with the daemon's
/// default, and set back to it.
fn config_diff(
    target: &Target<'_>,
    have: &Description,
    defaults: &FunctionLimits,
) -> (ConfigChange, Vec<&'static str>) {
    let want = target.config;
    let mut change = ConfigChange::default();
    let mut changed = Vec::new();
    if !target.secrets_same {
        change.secrets = want.secrets.clone();
        change.rm_secrets = have
            .secrets
            .iter()
            .filter(|n| !want.secrets.contains_key(*n))
            .cloned()
            .collect();
        changed.push("secrets");
    }
    if env_digest(&want.env) != have.env_set_digest {
        change.env = want.env.clone();
        change.unset_env = have
            .env_set
            .iter()
            .filter(|n| !want.env.contains_key(*n))
            .cloned()
            .collect();
        // (An older daemon reports no digest: an empty env then changes nothing.)
        if !change.is_empty() {
            changed.push("env");
        }
    }
    let have = &have.limits;
    let memory_mb = want.memory_mb.unwrap_or(defaults.memory_mb);
    if memory_mb != have.memory_mb {
        change.memory_mb = Some(memory_mb);
        changed.push("memory_mb");
    }
    // The daemon keeps CPUs in thousandths.
    let millis = |cpus: f64| (cpus * 1000.0).round() as i64;
    let cpus = want.cpus.unwrap_or(defaults.cpus);
    if millis(cpus) != millis(have.cpus) {
        change.cpus = Some(cpus);
        changed.push("cpus");
    }
    let pids_max = want.pids_max.unwrap_or(defaults.pids_max);
    if pids_max != have.pids_max {
        change.pids_max = Some(pids_max);
        changed.push("pids_max");
    }
    // The daemon keeps the timeout as a Duration: compare as one.
    let duration = |secs: f64| Duration::try_from_secs_f64(secs).ok();
    let timeout = want.timeout_secs.unwrap_or(defaults.timeout_secs);
    if duration(timeout) != duration(have.timeout_secs) {
        change.timeout_secs = Some(timeout);
        changed.push("timeout");
    }
    let max_concurrency = want.max_concurrency.unwrap_or(defaults.max_concurrency);
    if max_concurrency != have.max_concurrency {
        change.max_concurrency = Some(max_concurrency);
        changed.push("max_concurrency");
    }
    (change, changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faasd::api::SecretValue;

    /// The daemon's defaults in these tests: what `deployed` functions run with.
    fn defaults() -> FunctionLimits {
        FunctionLimits {
            memory_mb: 512,
            cpus: 1.0,
            pids_max: 128,
            timeout_secs: 30.0,
            max_concurrency: 32,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A deployed function with image `digest`, env `set` (through faasd) and limits.
    fn deployed(digest: &str, set: &[(&str, &str)]) -> Description {
        let set = env(set);
        Description {
            name: "f".into(),
            ip: "10.0.0.10".parse().unwrap(),
            port: 80,
            image_digest: digest.into(),
            image_size_bytes: None,
            cmd: vec![],
            workdir: "/".into(),
            user: "0:0".into(),
            env: set.keys().cloned().chain(["PATH".to_string()]).collect(),
            secrets: vec![],
            env_set: set.keys().cloned().collect(),
            env_set_digest: env_digest(&set),
            limits: defaults(),
            deployed_at: None,
            requests_served: 0,
            failures: BTreeMap::new(),
            last_failure: None,
            warm: 0,
        }
    }

    fn current(fns: Vec<(&str, Description)>) -> BTreeMap<String, Description> {
        fns.into_iter().map(|(n, d)| (n.to_string(), d)).collect()
    }

    /// The plan for function "f" of image `digest` configured as `want`, deployed as `have`.
    fn plan_f(digest: &str, want: &ConfigChange, have: Description) -> Vec<Step> {
        let t = [Target {
            name: "f",
            digest,
            config: want,
            secrets_same: true,
        }];
        plan(&t, &current(vec![("f", have)]), &defaults(), true)
    }

    fn lines(steps: &[Step]) -> Vec<String> {
        steps.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn creates_updates_keeps_and_prunes() {
        let with_env = ConfigChange {
            env: env(&[("A", "1")]),
            memory_mb: Some(64),
            ..Default::default()
        };
        let plain = ConfigChange::default();
        let targets = [
            Target {
                name: "new",
                digest: "sha256:n",
                config: &with_env,
                secrets_same: true,
            },
            Target {
                name: "same",
                digest: "sha256:s",
                config: &plain,
                secrets_same: true,
            },
            Target {
                name: "image",
                digest: "sha256:i2",
                config: &plain,
                secrets_same: true,
            },
        ];
        let have = current(vec![
            ("same", deployed("sha256:s", &[])),
            ("image", deployed("sha256:i1", &[])),
            ("old", deployed("sha256:o", &[])),
        ]);
        assert_eq!(
            lines(&plan(&targets, &have, &defaults(), false)),
            ["+ create new", "= same unchanged", "~ update image (image)"]
        );
        let steps = plan(&targets, &have, &defaults(), true);
        assert_eq!(
            lines(&steps),
            [
                "+ create new",
                "= same unchanged",
                "~ update image (image)",
                "- remove old"
            ]
        );
        assert_eq!(
            steps[0],
            Step::Create {
                name: "new".into(),
                config: with_env.clone()
            },
            "a new function gets its whole configuration at the deploy"
        );
        let Step::Update { config, .. } = &steps[2] else {
            panic!("not an update");
        };
        assert!(config.is_empty(), "an image update alone changes no config");
    }

    #[test]
    fn a_second_apply_plans_nothing() {
        let want = ConfigChange {
            env: env(&[("A", "1"), ("B", "two")]),
            memory_mb: Some(512),
            cpus: Some(1.0),
            pids_max: Some(128),
            timeout_secs: Some(30.0),
            max_concurrency: Some(32),
            ..Default::default()
        };
        let steps = plan_f(
            "sha256:a",
            &want,
            deployed("sha256:a", &[("A", "1"), ("B", "two")]),
        );
        assert_eq!(lines(&steps), ["= f unchanged"]);
        assert!(!steps[0].changes());
    }

    #[test]
    fn config_changes_name_their_fields_and_unset_what_the_file_dropped() {
        let want = ConfigChange {
            env: env(&[("A", "new"), ("C", "3")]),
            memory_mb: Some(64),
            cpus: Some(0.5),
            pids_max: Some(128),
            timeout_secs: Some(5.0),
            max_concurrency: Some(2),
            ..Default::default()
        };
        let steps = plan_f(
            "sha256:a",
            &want,
            deployed("sha256:a", &[("A", "old"), ("B", "2")]),
        );
        assert_eq!(
            lines(&steps),
            ["~ update f (config: env, memory_mb, cpus, timeout, max_concurrency)"]
        );
        let Step::Update { image, config, .. } = &steps[0] else {
            panic!("not an update");
        };
        assert!(!image);
        assert_eq!(
            *config,
            ConfigChange {
                env: want.env.clone(),
                unset_env: vec!["B".into()],
                memory_mb: Some(64),
                cpus: Some(0.5),
                pids_max: None,
                timeout_secs: Some(5.0),
                max_concurrency: Some(2),
                ..Default::default()
            }
        );
    }

    #[test]
    fn an_env_value_change_alone_is_seen() {
        let want = ConfigChange {
            env: env(&[("A", "2")]),
            ..Default::default()
        };
        let have = || deployed("sha256:a", &[("A", "1")]);
        assert_eq!(
            lines(&plan_f("sha256:a", &want, have())),
            ["~ update f (config: env)"]
        );
        // Removing every variable: unset them all.
        let steps = plan_f("sha256:a", &ConfigChange::default(), have());
        let Step::Update { config, .. } = &steps[0] else {
            panic!("not an update");
        };
        assert_eq!(config.unset_env, ["A"]);
        assert!(config.env.is_empty());
    }

    #[test]
    fn secrets_the_daemon_finds_different_are_set_and_the_rest_removed() {
        let want = ConfigChange {
            secrets: [("db".to_string(), SecretValue::new(b"new".to_vec()))].into(),
            ..Default::default()
        };
        let mut have = deployed("sha256:a", &[]);
        have.secrets = vec!["db".into(), "old".into()];
        let t = |secrets_same| {
            [Target {
                name: "f",
                digest: "sha256:a",
                config: &want,
                secrets_same,
            }]
        };
        let same = plan(
            &t(true),
            &current(vec![("f", have.clone())]),
            &defaults(),
            false,
        );
        assert_eq!(lines(&same), ["= f unchanged"]);
        let steps = plan(&t(false), &current(vec![("f", have)]), &defaults(), false);
        assert_eq!(lines(&steps), ["~ update f (config: secrets)"]);
        let Step::Update { config, .. } = &steps[0] else {
            panic!("not an update");
        };
        assert_eq!(config.secrets, want.secrets);
        assert_eq!(config.rm_secrets, ["old"]);
    }

    #[test]
    fn image_and_config_together_and_limits_compared_as_the_daemon_keeps_them() {
        let want = ConfigChange {
            // 0.3334 CPUs is kept as 333 thousandths, as is 0.333.
            cpus: Some(0.3334),
            timeout_secs: Some(0.1),
            ..Default::default()
        };
        let mut have = deployed("sha256:old", &[]);
        have.limits.cpus = 0.333;
        have.limits.timeout_secs = Duration::from_secs_f64(0.1).as_secs_f64();
        assert_eq!(
            lines(&plan_f("sha256:old", &want, have.clone())),
            ["= f unchanged"]
        );
        let want = ConfigChange {
            pids_max: Some(16),
            ..want
        };
        assert_eq!(
            lines(&plan_f("sha256:new", &want, have)),
            ["~ update f (image, config: pids_max)"]
        );
    }

    #[test]
    fn limits_the_file_leaves_out_go_back_to_the_defaults() {
        let mut have = deployed("sha256:a", &[]);
        have.limits.memory_mb = 64;
        have.limits.timeout_secs = 5.0;
        let steps = plan_f("sha256:a", &ConfigChange::default(), have);
        assert_eq!(lines(&steps), ["~ update f (config: memory_mb, timeout)"]);
        let Step::Update { config, .. } = &steps[0] else {
            panic!("not an update");
        };
        assert_eq!(
            (config.memory_mb, config.timeout_secs, config.cpus),
            (Some(512), Some(30.0), None)
        );
    }
}
