//! `faas config NAME [flags]`: changes a function's configuration without re-uploading
//! its image (`PATCH /api/functions/<name>/config`). The same flags work at `faas new`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use faasd::api::{secret_name_problem, ConfigChange, ConfigView, SecretValue, MAX_SECRET_BYTES};

use crate::client::{function_path, msg, say, CliError, Client};

/// The configuration flags of `faas new` and `faas config`.
#[derive(clap::Args, Debug, Default, PartialEq)]
pub struct ConfigFlags {
    /// Set an environment variable (over the image's own); repeatable.
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Read variables from FILE: `K=V` lines; blank lines and `#` comments are skipped.
    /// --env wins over the file.
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<PathBuf>,
    /// Memory limit of each container, in MiB.
    #[arg(long, value_name = "N")]
    pub memory_mb: Option<u64>,
    /// CPU quota of each container, in CPUs (0.5 = half of one).
    #[arg(long, value_name = "X")]
    pub cpus: Option<f64>,
    /// Process limit of each container.
    #[arg(long, value_name = "N")]
    pub pids_max: Option<u32>,
    /// Seconds a request may take before its container is killed.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Containers of this function running at once.
    #[arg(long, value_name = "N")]
    pub max_concurrency: Option<usize>,
    /// A secret: the handler reads FILE's contents at /run/secrets/NAME (read-only,
    /// 0400, its own user's); repeatable. The value goes to faasd in the request body.
    #[arg(long = "secret", value_name = "NAME=FILE", value_parser = parse_secret)]
    pub secrets: Vec<(String, PathBuf)>,
}

impl ConfigFlags {
    /// The change these flags ask for, plus `unset_env` and `rm_secrets`.
    pub fn change(
        &self,
        unset_env: Vec<String>,
        rm_secrets: Vec<String>,
    ) -> Result<ConfigChange, CliError> {
        let mut env = match &self.env_file {
            Some(path) => read_env_file(path)?,
            None => BTreeMap::new(),
        };
        env.extend(self.env.iter().cloned());
        if let Some(name) = unset_env.iter().find(|n| env.contains_key(*n)) {
            return Err(msg(format!("{name} is both set and unset")));
        }
        let mut secrets = BTreeMap::new();
        for (name, file) in &self.secrets {
            if secrets.insert(name.clone(), read_secret(file)?).is_some() {
                return Err(msg(format!("secret {name} is given twice")));
            }
        }
        if let Some(name) = rm_secrets.iter().find(|n| secrets.contains_key(*n)) {
            return Err(msg(format!("secret {name} is both set and removed")));
        }
        Ok(ConfigChange {
            secrets,
            rm_secrets,
            env,
            unset_env,
            memory_mb: self.memory_mb,
            cpus: self.cpus,
            pids_max: self.pids_max,
            timeout_secs: self.timeout,
            max_concurrency: self.max_concurrency,
        })
    }
}

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    pub name: String,
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Remove a variable set earlier through faasd; repeatable.
    #[arg(long, value_name = "K")]
    pub unset_env: Vec<String>,
    /// Remove a secret; repeatable.
    #[arg(long = "rm-secret", value_name = "NAME", value_parser = parse_secret_name)]
    pub rm_secrets: Vec<String>,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let change = args.config.change(args.unset_env, args.rm_secrets)?;
    if change.is_empty() {
        return Err(msg(
            "nothing to change: give at least one of --env, --env-file, --unset-env, \
             --secret, --rm-secret, --memory-mb, --cpus, --pids-max, --timeout, \
             --max-concurrency",
        ));
    }
    let view: ConfigView = client.patch(&function_path(&args.name, "/config"), &change)?;
    say(&format_view(&view))
}

/// One line: what the function's requests run with from now on.
fn format_view(v: &ConfigView) -> String {
    let names = |n: &[String]| match n.is_empty() {
        true => "none".to_string(),
        false => n.join(","),
    };
    let (env, secrets) = (names(&v.env), names(&v.secrets));
    format!(
        "Configured {}: memory {} MiB, cpus {}, pids {}, timeout {} s, max concurrency {}, env {env}, secrets {secrets}",
        v.name,
        v.limits.memory_mb,
        v.limits.cpus,
        v.limits.pids_max,
        v.limits.timeout_secs,
        v.limits.max_concurrency
    )
}

/// `K=V`; the value may contain `=`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

/// `NAME=FILE`, the name checked as the daemon would.
fn parse_secret(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !file.is_empty() => {
            Ok((parse_secret_name(name)?, PathBuf::from(file)))
        }
        _ => Err(format!("{s:?} is not NAME=FILE")),
    }
}

fn parse_secret_name(name: &str) -> Result<String, String> {
    match secret_name_problem(name) {
        Some(why) => Err(format!("invalid secret name {name:?}: {why}")),
        None => Ok(name.to_string()),
    }
}

/// FILE's bytes, refused past the daemon's limit without reading further.
pub fn read_secret(path: &Path) -> Result<SecretValue, CliError> {
    let cannot =
        |e: std::io::Error| msg(format!("cannot read secret file {}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SECRET_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(msg(format!(
            "secret file {} is larger than {MAX_SECRET_BYTES} bytes, the limit for one secret",
            path.display()
        )));
    }
    Ok(SecretValue::new(bytes))
}

fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| msg(format!("cannot read env file {}: {e}", path.display())))?;
    parse_env_file(&text)
        .map_err(|(line, why)| msg(format!("env file {} line {line}: {why}", path.display())))
}

/// Docker's `--env-file` format, minus its "take the value from my environment" form.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut env = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (k, v) = parse_env(trimmed).map_err(|e| (i + 1, e))?;
        env.insert(k, v);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(parse_env("A=x=y"), Ok(("A".into(), "x=y".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), "".into())));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=1").is_err());
    }

    #[test]
    fn env_file_format() {
        let env = parse_env_file("# comment\n\nA=1\n  B=two words\nA=3\n").unwrap();
        assert_eq!(env["A"], "3", "a later line wins");
        assert_eq!(env["B"], "two words");
        assert_eq!(
            parse_env_file("A=1\nNOVALUE\n"),
            Err((2, "\"NOVALUE\" is not K=V".into()))
        );
    }

    #[test]
    fn flags_win_over_the_file_and_cannot_also_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "A=file\nB=file\n").unwrap();
        let flags = ConfigFlags {
            env: vec![("A".into(), "flag".into())],
            env_file: Some(file.clone()),
            ..Default::default()
        };
        let change = flags.change(vec!["C".into()], vec![]).unwrap();
        assert_eq!(change.env["A"], "flag");
        assert_eq!(change.env["B"], "file");
        assert_eq!(change.unset_env, ["C"]);
        let err = flags.change(vec!["B".into()], vec![]).unwrap_err();
        assert_eq!(err.to_string(), "B is both set and unset");
        let missing = ConfigFlags {
            env_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        assert!(missing
            .change(vec![], vec![])
            .unwrap_err()
            .to_string()
            .contains("cannot read env file"));
    }

    #[test]
    fn secrets_are_read_from_their_files_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (key, big) = (dir.path().join("key"), dir.path().join("big"));
        std::fs::write(&key, b"s3cr\0t\n").unwrap();
        std::fs::write(&big, vec![b'x'; MAX_SECRET_BYTES + 1]).unwrap();
        let flags = |secrets: &[(&str, &Path)]| ConfigFlags {
            secrets: secrets
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                .collect(),
            ..Default::default()
        };
        let change = flags(&[("api", &key)])
            .change(vec![], vec!["old".into()])
            .unwrap();
        assert_eq!(change.secrets["api"].as_bytes(), b"s3cr\0t\n");
        assert_eq!(change.rm_secrets, ["old"]);
        let err = |f: ConfigFlags, rm: &[&str]| {
            f.change(vec![], rm.iter().map(|s| s.to_string()).collect())
                .unwrap_err()
                .to_string()
        };
        assert!(err(flags(&[("big", &big)]), &[]).contains("larger than 65536 bytes"));
        let missing = dir.path().join("missing");
        assert!(err(flags(&[("m", &missing)]), &[]).contains("cannot read secret file"));
        assert_eq!(
            err(flags(&[("api", &key)]), &["api"]),
            "secret api is both set and removed"
        );
        assert_eq!(
            err(flags(&[("api", &key), ("api", &key)]), &[]),
            "secret api is given twice"
        );
    }

    #[test]
    fn secret_flags_parse_name_and_file() {
        assert_eq!(
            parse_secret("db=/run/db.pw"),
            Ok(("db".into(), "/run/db.pw".into()))
        );
        assert_eq!(parse_secret("db=a=b"), Ok(("db".into(), "a=b".into())));
        for bad in ["db", "db=", "=file", "../x=f", "a/b=f", ".hidden=f"] {
            assert!(parse_secret(bad).is_err(), "{bad:?}");
        }
        assert!(parse_secret_name("..")
            .unwrap_err()
            .contains("starts with '.'"));
    }

    #[test]
    fn view_line() {
        let v = ConfigView {
            name: "f".into(),
            env: vec!["A".into(), "B".into()],
            secrets: vec!["db".into()],
            limits: faasd::api::FunctionLimits {
                memory_mb: 64,
                cpus: 0.5,
                pids_max: 16,
                timeout_secs: 2.5,
                max_concurrency: 3,
            },
        };
        assert_eq!(
            format_view(&v),
            "Configured f: memory 64 MiB, cpus 0.5, pids 16, timeout 2.5 s, max concurrency 3, env A,B, secrets db"
        );
    }
}
