//! `faas describe NAME [--json]`: everything about a function but its env values
//! (`GET /api/functions/<name>`).

use faasd::api::Description;

use crate::client::{function_path, say, CliError, Client};

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    pub name: String,
    /// Print the daemon's JSON instead of the text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let path = function_path(&args.name, "");
    if args.json {
        let v: serde_json::Value = client.get(&path)?;
        return say(&serde_json::to_string_pretty(&v).expect("a Value always serializes"));
    }
    let d: Description = client.get(&path)?;
    say(format_description(&d).trim_end())
}

/// `key: value` lines, aligned.
fn format_description(d: &Description) -> String {
    let or_none = |v: String| if v.is_empty() { "none".into() } else { v };
    let failures = d
        .failures
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let last_failure = d.last_failure.as_ref().map_or(String::new(), |l| {
        format!(
            "{} at {} (request {}): {}",
            l.reason, l.at, l.request, l.message
        )
    });
    let rows = [
        ("Name", d.name.clone()),
        ("Address", format!("{}:{}", d.ip, d.port)),
        ("Image", or_none(d.image_digest.clone())),
        (
            "Image size",
            d.image_size_bytes
                .map_or("unknown".into(), |n| format!("{n} bytes")),
        ),
        ("Command", d.cmd.join(" ")),
        ("Working dir", d.workdir.clone()),
        ("User", d.user.clone()),
        ("Env", or_none(d.env.join(","))),
        ("Secrets", or_none(d.secrets.join(","))),
        ("Memory", format!("{} MiB", d.limits.memory_mb)),
        ("CPUs", d.limits.cpus.to_string()),
        ("Pids max", d.limits.pids_max.to_string()),
        ("Timeout", format!("{} s", d.limits.timeout_secs)),
        ("Max concurrency", d.limits.max_concurrency.to_string()),
        (
            "Deployed at",
            d.deployed_at
                .map_or("unknown".into(), |t| format!("{t} (Unix time)")),
        ),
        ("Requests served", d.requests_served.to_string()),
        ("Failures", or_none(failures)),
        ("Last failure", or_none(last_failure)),
        ("Warm containers", d.warm.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    rows.iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use faasd::api::{FunctionLimits, LastFailure};

    #[test]
    fn describes_every_field() {
        let d = Description {
            name: "f".into(),
            ip: "10.0.0.10".parse().unwrap(),
            port: 80,
            image_digest: "sha256:ab".into(),
            image_size_bytes: Some(1234),
            cmd: vec!["/h".into(), "serve".into()],
            workdir: "/".into(),
            user: "0:0".into(),
            env: vec!["PATH".into(), "A".into()],
            secrets: vec!["db".into(), "tls.key".into()],
            env_set: vec!["A".into()],
            env_set_digest: "sha256:cd".into(),
            limits: FunctionLimits {
                memory_mb: 64,
                cpus: 0.5,
                pids_max: 16,
                timeout_secs: 3.0,
                max_concurrency: 2,
            },
            deployed_at: Some(1_800_000_000),
            requests_served: 7,
            failures: [("exec_timeout".to_string(), 2)].into(),
            last_failure: Some(LastFailure {
                at: 1_800_000_100,
                request: "ab12-3".into(),
                reason: "exec_timeout".into(),
                message: "the handler ended with TimedOut".into(),
            }),
            warm: 1,
        };
        let text = format_description(&d);
        for line in [
            "Address:         10.0.0.10:80",
            "Image:           sha256:ab",
            "Command:         /h serve",
            "Env:             PATH,A",
            "Secrets:         db,tls.key",
            "Memory:          64 MiB",
            "Timeout:         3 s",
            "Failures:        exec_timeout 2",
            "Last failure:    exec_timeout at 1800000100 (request ab12-3): the handler ended with TimedOut",
            "Warm containers: 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }
}
