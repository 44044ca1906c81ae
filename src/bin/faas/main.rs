//! `faas`: the command-line client of faasd's control API, one module per verb.
//!
//! ```text
//! docker save hello | faas new hello     # Deployed hello at 10.0.0.10
//! faas new hello -f hello.tar --env GREETING=hi --memory-mb 64 --timeout 5
//! faas config hello --env GREETING=hello --unset-env OLD --max-concurrency 4
//! faas describe hello                    # address, image, limits, requests, failures
//! faas invoke hello /path -X POST -H 'X-A: b' -d @body.json -i
//! faas logs hello -f --since 5m --tail 20 # TIME REQUEST STREAM TEXT, then new lines
//! faas ip hello                          # 10.0.0.10
//! faas list [--json]
//! faas rm hello                          # Removed hello
//! faas apply -f functions.toml [--prune] [--dry-run]
//! ```
//!
//! Errors go to stderr as `faas: <message>` (the daemon's own message when it sent one) and
//! the exit status is 1.

mod apply;
mod client;
mod config;
mod describe;
mod invoke;
mod ip;
mod list;
mod logs;
mod new;
mod pull;
mod rm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use client::{check_base, normalize_base, read_token, CliError, Client};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Parser, Debug)]
#[command(
    name = "faas",
    version,
    about = "Deploy and manage functions on a faasd daemon",
    after_help = "The bearer token, when the daemon wants one, comes from --token-file or the \
                  FAAS_TOKEN environment variable."
)]
struct Cli {
    /// The daemon's control API.
    #[arg(long, global = true, env = "FAAS_URL", default_value = DEFAULT_URL)]
    url: String,

    /// Read the bearer token from FILE (takes precedence over FAAS_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug, PartialEq)]
enum Command {
    /// Deploy an image (`docker save` tarball) as function NAME, with its configuration.
    New(new::Args),
    /// Change function NAME's configuration (env, limits, timeout) without re-uploading.
    Config(config::Args),
    /// Show function NAME: address, image, env names, limits, requests and failures.
    Describe(describe::Args),
    /// Send one HTTP request to function NAME and print the answer's body (exit 1 on a
    /// connection error or a 5xx).
    Invoke(invoke::Args),
    /// Print function NAME's handler output (stdout and stderr), oldest first.
    Logs(logs::Args),
    /// Print the IP address of function NAME.
    Ip(ip::Args),
    /// List the deployed functions.
    #[command(visible_alias = "ls")]
    List(list::Args),
    /// Remove function NAME.
    #[command(visible_alias = "remove")]
    Rm(rm::Args),
    /// Make the daemon's functions match a functions file (TOML): create, update, and with
    /// --prune remove; --dry-run prints the plan only.
    Apply(apply::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faas: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let token = read_token(cli.token_file.as_deref(), std::env::var("FAAS_TOKEN").ok())?;
    check_base(&normalize_base(&cli.url))?;
    let client = Client::new(&cli.url, token);
    match cli.command {
        Command::New(args) => new::run(&client, args),
        Command::Config(args) => config::run(&client, args),
        Command::Describe(args) => describe::run(&client, args),
        Command::Invoke(args) => invoke::run(&client, args),
        Command::Logs(args) => logs::run(&client, args),
        Command::Ip(args) => ip::run(&client, args),
        Command::List(args) => list::run(&client, args),
        Command::Rm(args) => rm::run(&client, args),
        Command::Apply(args) => apply::run(&client, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use config::ConfigFlags;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("faas").chain(args.iter().copied()))
    }

    fn new_args(name: &str, file: Option<&str>) -> Command {
        Command::New(new::Args {
            name: name.into(),
            file: file.map(PathBuf::from),
            image: None,
            config: ConfigFlags::default(),
        })
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_new_with_and_without_file() {
        assert_eq!(
            parse(&["new", "hello"]).unwrap().command,
            new_args("hello", None)
        );
        assert_eq!(
            parse(&["new", "hello", "-f", "img.tar"]).unwrap().command,
            new_args("hello", Some("img.tar"))
        );
        assert_eq!(
            parse(&["new", "--file", "img.tar", "hello"])
                .unwrap()
                .command,
            new_args("hello", Some("img.tar"))
        );
        assert!(parse(&["new"]).is_err(), "the name is required");
    }

    #[test]
    fn parses_every_config_flag_at_new_and_config() {
        let flags = ConfigFlags {
            env: vec![("A".into(), "1".into()), ("B".into(), "x=y".into())],
            env_file: Some("vars".into()),
            memory_mb: Some(64),
            cpus: Some(0.5),
            pids_max: Some(16),
            timeout: Some(2.5),
            max_concurrency: Some(3),
            secrets: vec![("db".into(), "pw".into()), ("tls.key".into(), "k".into())],
        };
        let given = [
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--env-file",
            "vars",
            "--memory-mb",
            "64",
            "--cpus",
            "0.5",
            "--pids-max",
            "16",
            "--timeout",
            "2.5",
            "--max-concurrency",
            "3",
            "--secret",
            "db=pw",
            "--secret",
            "tls.key=k",
        ];
        let new: Vec<&str> = ["new", "f", "-f", "i.tar"]
            .iter()
            .chain(&given)
            .copied()
            .collect();
        assert_eq!(
            parse(&new).unwrap().command,
            Command::New(new::Args {
                name: "f".into(),
                file: Some("i.tar".into()),
                image: None,
                config: flags,
            })
        );
        let cfg: Vec<&str> = ["config", "f"]
            .iter()
            .chain(&given)
            .chain(&["--unset-env", "C", "--unset-env", "D", "--rm-secret", "old"])
            .copied()
            .collect();
        let Command::Config(args) = parse(&cfg).unwrap().command else {
            panic!("not config");
        };
        assert_eq!(args.unset_env, ["C", "D"]);
        assert_eq!(args.rm_secrets, ["old"]);
        assert_eq!(args.config.secrets.len(), 2);
        assert_eq!(args.config.memory_mb, Some(64));
        assert!(
            parse(&["new", "f", "--unset-env", "C"]).is_err(),
            "only at config"
        );
        assert!(
            parse(&["new", "f", "--rm-secret", "old"]).is_err(),
            "only at config"
        );
    }

    #[test]
    fn bad_config_flags_are_refused() {
        for bad in [
            &["config", "f", "--env", "NOEQUALS"][..],
            &["config", "f", "--env", "=v"],
            &["config", "f", "--memory-mb", "-1"],
            &["config", "f", "--memory-mb", "lots"],
            &["config", "f", "--cpus", "half"],
            &["config", "f", "--pids-max", "1.5"],
            &["config", "f", "--timeout", "soon"],
            &["config", "f", "--max-concurrency", "-2"],
            &["config", "f", "--secret", "nofile"],
            &["config", "f", "--secret", "../escape=file"],
            &["config", "f", "--secret", "=file"],
            &["config", "f", "--rm-secret", "a/b"],
            &["config", "f", "--rm-secret", ""],
            &["config"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn parses_describe_and_invoke() {
        assert_eq!(
            parse(&["describe", "f", "--json"]).unwrap().command,
            Command::Describe(describe::Args {
                name: "f".into(),
                json: true
            })
        );
        let cli = parse(&[
            "invoke", "f", "/p?q=1", "-X", "put", "-H", "A: 1", "--header", "B: 2", "-d", "@body",
            "-i",
        ])
        .unwrap();
        assert_eq!(
            cli.command,
            Command::Invoke(invoke::Args {
                name: "f".into(),
                path: "/p?q=1".into(),
                method: Some(ureq::http::Method::PUT),
                headers: vec![("A".into(), "1".into()), ("B".into(), "2".into())],
                data: Some("@body".into()),
                include: true,
            })
        );
        let Command::Invoke(a) = parse(&["invoke", "f"]).unwrap().command else {
            panic!("not invoke");
        };
        assert_eq!((a.path.as_str(), a.method, a.include), ("/", None, false));
        for bad in [
            &["invoke"][..],
            &["invoke", "f", "-H", "nocolon"],
            &["invoke", "f", "-X", "TWO WORDS"],
            &["describe"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn parses_logs_flags_and_refuses_bad_ones() {
        let Command::Logs(a) = parse(&["logs", "f", "-f", "--since", "5m", "--tail", "3"])
            .unwrap()
            .command
        else {
            panic!("not logs");
        };
        assert_eq!((a.name.as_str(), a.follow, a.tail), ("f", true, Some(3)));
        assert!(a.since.is_some());
        assert_eq!(
            parse(&["logs", "f"]).unwrap().command,
            Command::Logs(logs::Args {
                name: "f".into(),
                follow: false,
                since: None,
                tail: None,
            })
        );
        for bad in [
            &["logs"][..],
            &["logs", "f", "--tail", "-1"],
            &["logs", "f", "--tail", "many"],
            &["logs", "f", "--since", "yesterday-ish"],
            &["logs", "f", "--since"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn parses_ip_list_rm() {
        assert_eq!(
            parse(&["ip", "f"]).unwrap().command,
            Command::Ip(ip::Args { name: "f".into() })
        );
        let list = |json| Command::List(list::Args { json });
        assert_eq!(parse(&["list"]).unwrap().command, list(false));
        assert_eq!(parse(&["list", "--json"]).unwrap().command, list(true));
        assert_eq!(parse(&["ls"]).unwrap().command, list(false));
        assert_eq!(
            parse(&["rm", "f"]).unwrap().command,
            Command::Rm(rm::Args { name: "f".into() })
        );
        assert!(parse(&["rm"]).is_err());
        assert!(parse(&[]).is_err(), "a subcommand is required");
        assert!(parse(&["frobnicate"]).is_err());
    }

    #[test]
    fn parses_apply() {
        assert_eq!(
            parse(&["apply", "-f", "fns.toml"]).unwrap().command,
            Command::Apply(apply::Args {
                file: "fns.toml".into(),
                prune: false,
                dry_run: false,
            })
        );
        assert_eq!(
            parse(&["apply", "--file", "fns.toml", "--prune", "--dry-run"])
                .unwrap()
                .command,
            Command::Apply(apply::Args {
                file: "fns.toml".into(),
                prune: true,
                dry_run: true,
            })
        );
        assert!(parse(&["apply"]).is_err(), "the file is required");
        assert!(parse(&["apply", "fns.toml"]).is_err(), "-f names it");
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = parse(&["--url", "http://h:1", "ip", "f"]).unwrap();
        assert_eq!(cli.url, "http://h:1");
        let cli = parse(&["ip", "f", "--url", "http://h:2", "--token-file", "/t"]).unwrap();
        assert_eq!(cli.url, "http://h:2");
        assert_eq!(cli.token_file, Some(PathBuf::from("/t")));
    }

    #[test]
    fn default_url() {
        // Only meaningful when the test runner's environment does not set FAAS_URL.
        if std::env::var_os("FAAS_URL").is_none() {
            assert_eq!(parse(&["list"]).unwrap().url, DEFAULT_URL);
        }
    }
}
