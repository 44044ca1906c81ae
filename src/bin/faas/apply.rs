//! `faas apply -f FILE [--prune] [--dry-run]`: makes the daemon's functions match a
//! functions file (apply/file.rs): creates the absent, redeploys those whose image id
//! differs, changes the configuration that differs (`PATCH .../config`, so requests in
//! flight are not dropped), leaves the rest alone, and with `--prune` removes the functions
//! the file does not name. The plan (apply/plan.rs) is computed from the file and the
//! daemon's answers before anything changes; so are every check the daemon can make
//! without changing anything (registry references resolved, configurations checked
//! against its maxima): a bad file changes nothing. A second apply finds everything
//! unchanged and sends nothing that changes state.

mod file;
mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;

use faasd::api::{
    ConfigChange, ConfigView, Description, FunctionLimits, List, Removed, ResolvedImage,
    SecretsCompare, SecretsComparison,
};

use crate::client::{encode_segment, function_path, msg, say, CliError, Client};
use file::{Source, Wanted};
use plan::{Step, Target};

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    /// The functions file (TOML; see README "Declarative deploy").
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Also remove the deployed functions the file does not name.
    #[arg(long)]
    pub prune: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let nothing_changed = |why: String| msg(format!("{why}\nnothing was changed"));
    let wanted = file::load(&args.file).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        nothing_changed(lines.join("\n"))
    })?;
    let steps = prepare(client, &wanted, args.prune).map_err(|e| nothing_changed(e.to_string()))?;
    if args.dry_run {
        for step in &steps {
            say(&step.to_string())?;
        }
        return say(&format!(
            "dry run: {}; nothing was changed",
            summary(&steps, "to ")
        ));
    }
    for (i, step) in steps.iter().enumerate() {
        if let Err(e) = carry_out(client, &wanted, step) {
            return Err(msg(failed_midway(&steps, i, &e)));
        }
        say(&step.to_string())?;
    }
    say(&format!("applied: {}", summary(&steps, "")))
}

/// The plan, once every check the daemon can make without a change has passed.
fn prepare(client: &Client, wanted: &[Wanted], prune: bool) -> Result<Vec<Step>, CliError> {
    let current = deployed(client)?;
    let digests = wanted
        .iter()
        .map(|w| image_digest(client, w))
        .collect::<Result<Vec<_>, _>>()?;
    let same = wanted
        .iter()
        .map(|w| secrets_same(client, w, current.get(&w.name)))
        .collect::<Result<Vec<_>, _>>()?;
    let targets: Vec<Target<'_>> = wanted
        .iter()
        .zip(&digests)
        .zip(same)
        .map(|((w, digest), secrets_same)| Target {
            name: &w.name,
            digest,
            config: &w.config,
            secrets_same,
        })
        .collect();
    let defaults: FunctionLimits = client.get("/api/defaults")?;
    let steps = plan::plan(&targets, &current, &defaults, prune);
    check_configs(client, &steps)?;
    Ok(steps)
}

/// Whether a deployed function's secrets are exactly those `w` names: the daemon compares
/// (no value or digest of one is ever answered). Not deployed, or no secrets on either
/// side: nothing to ask.
fn secrets_same(client: &Client, w: &Wanted, have: Option<&Description>) -> Result<bool, CliError> {
    let Some(have) = have else { return Ok(true) };
    if w.config.secrets.is_empty() && have.secrets.is_empty() {
        return Ok(true);
    }
    let asked = SecretsCompare {
        secrets: w.config.secrets.clone(),
    };
    let answer: SecretsComparison =
        client.post(&function_path(&w.name, "/secrets/compare"), &asked)?;
    Ok(answer.same)
}

/// Every deployed function, described (image id, env set through faasd, limits).
fn deployed(client: &Client) -> Result<BTreeMap<String, Description>, CliError> {
    let list: List = client.get("/api/list")?;
    list.into_keys()
        .map(|name| {
            let d = client.get(&function_path(&name, ""))?;
            Ok((name, d))
        })
        .collect()
}

/// The image id `w`'s image has now: read from the archive as the daemon will read it,
/// or what the daemon's registry gives for the reference (its manifest only).
fn image_digest(client: &Client, w: &Wanted) -> Result<String, CliError> {
    match &w.source {
        Source::File(path) => {
            let f = std::fs::File::open(path).map_err(|e| {
                msg(format!(
                    "function {}: cannot open {}: {e}",
                    w.name,
                    path.display()
                ))
            })?;
            faasd::image::archive_digest(f).map_err(|e| {
                msg(format!(
                    "function {}: {} is not an image archive faasd can deploy: {e}",
                    w.name,
                    path.display()
                ))
            })
        }
        Source::Image(reference) => {
            let r: ResolvedImage = client
                .get(&format!("/api/resolve?image={}", encode_segment(reference)))
                .map_err(|e| msg(format!("function {}: {e}", w.name)))?;
            Ok(r.digest)
        }
    }
}

/// Has the daemon check every configuration the plan would send (its maxima, the env's
/// bounds), so that a refused one stops the apply before anything changed.
fn check_configs(client: &Client, steps: &[Step]) -> Result<(), CliError> {
    for step in steps {
        let config = match step {
            Step::Create { config, .. } | Step::Update { config, .. } => config,
            Step::Unchanged { .. } | Step::Remove { .. } => continue,
        };
        if config.is_empty() {
            continue;
        }
        client
            .post::<_, serde_json::Value>("/api/check-config", config)
            .map_err(|e| msg(format!("function {}: {e}", step.name())))?;
    }
    Ok(())
}

fn carry_out(client: &Client, wanted: &[Wanted], step: &Step) -> Result<(), CliError> {
    let deploy = |name: &str, config: &ConfigChange| {
        let w = wanted
            .iter()
            .find(|w| w.name == name)
            .expect("the plan only creates and updates functions of the file");
        match &w.source {
            Source::File(path) => crate::new::deploy(client, name, Some(path), config).map(drop),
            Source::Image(reference) => {
                crate::pull::pull(client, name, reference, config).map(drop)
            }
        }
    };
    match step {
        Step::Create { name, config } => deploy(name, config),
        Step::Update {
            name,
            image: true,
            config,
            ..
        } => deploy(name, config),
        Step::Update { name, config, .. } => client
            .patch::<_, ConfigView>(&function_path(name, "/config"), config)
            .map(drop),
        Step::Unchanged { .. } => Ok(()),
        Step::Remove { name } => client.delete::<Removed>(&function_path(name, "")).map(drop),
    }
}

/// What step `failed` of `steps` met, what was done before it and what was not.
fn failed_midway(steps: &[Step], failed: usize, e: &CliError) -> String {
    let list = |steps: &[Step]| {
        let lines: Vec<String> = steps
            .iter()
            .filter(|s| s.changes())
            .map(|s| format!("  {s}"))
            .collect();
        if lines.is_empty() {
            "  nothing".to_string()
        } else {
            lines.join("\n")
        }
    };
    format!(
        "{} failed: {e}\ndone:\n{}\nnot done:\n{}",
        steps[failed],
        list(&steps[..failed]),
        list(&steps[failed..])
    )
}

/// `1 created, 0 updated, 0 removed, 2 unchanged` (`prefix` "to ": `1 to create, ...`).
fn summary(steps: &[Step], prefix: &str) -> String {
    let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
    let (create, update, remove, same) = (
        count(|s| matches!(s, Step::Create { .. })),
        count(|s| matches!(s, Step::Update { .. })),
        count(|s| matches!(s, Step::Remove { .. })),
        count(|s| matches!(s, Step::Unchanged { .. })),
    );
    if prefix.is_empty() {
        format!("{create} created, {update} updated, {remove} removed, {same} unchanged")
    } else {
        format!(
            "{create} {prefix}create, {update} {prefix}update, {remove} {prefix}remove, {same} unchanged"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<Step> {
        vec![
            Step::Create {
                name: "a".into(),
                config: ConfigChange::default(),
            },
            Step::Unchanged { name: "b".into() },
            Step::Update {
                name: "c".into(),
                image: true,
                config: ConfigChange::default(),
                changed: vec![],
            },
            Step::Remove { name: "d".into() },
        ]
    }

    #[test]
    fn a_failure_says_what_was_done_and_what_was_not() {
        let text = failed_midway(&steps(), 2, &msg("the registry is down"));
        assert_eq!(
            text,
            "~ update c (image) failed: the registry is down\n\
             done:\n  + create a\n\
             not done:\n  ~ update c (image)\n  - remove d"
        );
        let first = failed_midway(&steps(), 0, &msg("x"));
        assert!(first.contains("done:\n  nothing\n"), "{first}");
    }

    #[test]
    fn summaries() {
        assert_eq!(
            summary(&steps(), ""),
            "1 created, 1 updated, 1 removed, 1 unchanged"
        );
        assert_eq!(
            summary(&steps(), "to "),
            "1 to create, 1 to update, 1 to remove, 1 unchanged"
        );
    }
}
