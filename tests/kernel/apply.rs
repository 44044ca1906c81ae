//! `faas apply -f FILE` (issue 15, declarative deploy) through the real binaries: create,
//! a second apply that changes nothing (no deploy, no configuration change in the daemon's
//! log, same address and deploy time), an image update, a configuration update, prune,
//! a dry run, bad files and a failure midway; a registry image compared by its digest.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;

use libtest_mimic::{Failed, Trial};
use serde_json::Value;

use crate::e2e::{eventually, Setup, Via, SLACK};
use crate::function_config::env_of;
use crate::registry::{self, Registry};
use crate::support::{image, TestResult};

pub fn tests() -> Vec<Trial> {
    macro_rules! trials {
        ($($test:ident),* $(,)?) => {
            vec![$(Trial::test(concat!("apply::", stringify!($test)), $test)),*]
        };
    }
    trials![
        create_noop_update_prune,
        dry_run_changes_nothing,
        bad_file_changes_nothing,
        failure_midway_says_what_was_done,
        registry_image_by_digest,
        with_a_token,
        secrets_compared_by_the_daemon,
    ]
}

/// The daemon's maxima in these tests.
const MAXIMA: [&str; 4] = ["--memory-mb", "128", "--max-memory-mb", "256"];

/// Writes `text` as the test's functions file (beside its state directory) and returns
/// its path; `{images}` in it becomes the test images' directory.
fn functions_file(s: &Setup, text: &str) -> Result<PathBuf, Failed> {
    let images = image("test-handler.tar")?;
    let images = images.parent().unwrap().display().to_string();
    let path = s.state().with_file_name("functions.toml");
    fs::write(&path, text.replace("{images}", &images))?;
    Ok(path)
}

/// `faas apply -f FILE ARGS`.
fn apply(s: &Setup, file: &Path, args: &[&str]) -> Result<Output, Failed> {
    let mut all = vec!["apply", "-f", file.to_str().unwrap()];
    all.extend(args);
    s.faas(&all, None)
}

/// `faas apply`, which must succeed: its stdout lines.
fn apply_ok(s: &Setup, file: &Path, args: &[&str]) -> Result<Vec<String>, Failed> {
    let out = apply(s, file, args)?;
    s.check(
        out.status.success(),
        format!(
            "faas apply {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

fn expect_lines(s: &Setup, got: &[String], want: &[&str]) -> TestResult {
    s.check(
        got == want,
        format!("faas apply printed {got:#?}, want {want:#?}"),
    )
}

/// `GET /api/functions/NAME`, parsed.
fn describe(s: &Setup, name: &str) -> Result<Value, Failed> {
    Ok(serde_json::from_str(
        &s.faas_ok(&["describe", name, "--json"])?,
    )?)
}

/// Lines of the daemon's log saying `message` about function `name`.
fn logged(s: &Setup, message: &str, name: &str) -> Result<usize, Failed> {
    let log = fs::read_to_string(s.log())?;
    let field = format!("function={name} ");
    Ok(log
        .lines()
        .filter(|l| {
            l.contains(message) && (l.contains(&field) || l.ends_with(&field[..field.len() - 1]))
        })
        .count())
}

fn ip_of(s: &Setup, name: &str) -> Result<Ipv4Addr, Failed> {
    Ok(s.faas_ok(&["ip", name])?.trim().parse()?)
}

const TWO: &str = r#"
[functions.hello]
file = "{images}/test-handler.tar"

[functions.cfg]
file = "{images}/test-handler-env.tar"
env = { GREETING = "first" }
memory_mb = 64
"#;

fn create_noop_update_prune() -> TestResult {
    let s = Setup::new(&MAXIMA)?;
    let _d = s.start()?;
    let file = functions_file(&s, TWO)?;
    let out = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &out,
        &[
            "+ create cfg",
            "+ create hello",
            "applied: 2 created, 0 updated, 0 removed, 0 unchanged",
        ],
    )?;
    let (hello, cfg) = (ip_of(&s, "hello")?, ip_of(&s, "cfg")?);
    s.expect_hello(hello, "/applied")?;
    s.check(
        env_of(&s, cfg)?.contains(&"GREETING=first".to_string()),
        "cfg was created without its env",
    )?;
    s.check(
        describe(&s, "cfg")?["memory_mb"] == 64,
        "cfg was created without its memory limit",
    )?;

    // A second apply: everything unchanged, and nothing redeployed or reconfigured.
    let before = (describe(&s, "hello")?, describe(&s, "cfg")?);
    let out = apply_ok(&s, &file, &["--prune"])?;
    expect_lines(
        &s,
        &out,
        &[
            "= cfg unchanged",
            "= hello unchanged",
            "applied: 0 created, 0 updated, 0 removed, 2 unchanged",
        ],
    )?;
    for (name, was) in [("hello", &before.0), ("cfg", &before.1)] {
        let now = describe(&s, name)?;
        for key in ["ip", "deployed_at", "image_digest", "env_set_digest"] {
            s.check(
                now[key] == was[key],
                format!("{name}: {key} {} -> {}", was[key], now[key]),
            )?;
        }
        s.check(
            logged(&s, "deployed", name)? == 1 && logged(&s, "configuration updated", name)? == 0,
            format!("the no-op apply deployed or configured {name} again"),
        )?;
    }

    // A configuration change: patched in place (no deploy), same address.
    let changed = TWO
        .replace(
            "GREETING = \"first\"",
            "GREETING = \"second\", ADDED = \"yes\"",
        )
        .replace("memory_mb = 64", "memory_mb = 96");
    functions_file(&s, &changed)?;
    let out = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &out,
        &[
            "~ update cfg (config: env, memory_mb)",
            "= hello unchanged",
            "applied: 0 created, 1 updated, 0 removed, 1 unchanged",
        ],
    )?;
    let env = env_of(&s, cfg)?;
    s.check(
        env.contains(&"GREETING=second".to_string()) && env.contains(&"ADDED=yes".to_string()),
        format!("after the config update: {env:?}"),
    )?;
    s.check(
        ip_of(&s, "cfg")? == cfg
            && describe(&s, "cfg")?["memory_mb"] == 96
            && logged(&s, "deployed", "cfg")? == 1
            && logged(&s, "configuration updated", "cfg")? == 1,
        "the config update redeployed cfg or did not configure it once",
    )?;

    // A limit taken out of the file goes back to the daemon's default (--memory-mb 128).
    functions_file(&s, &changed.replace("memory_mb = 96", ""))?;
    let out = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &out,
        &[
            "~ update cfg (config: memory_mb)",
            "= hello unchanged",
            "applied: 0 created, 1 updated, 0 removed, 1 unchanged",
        ],
    )?;
    s.check(
        describe(&s, "cfg")?["memory_mb"] == 128,
        "memory_mb did not go back to the default",
    )?;

    // An image change: hello redeployed at its address; then cfg pruned.
    let swapped = functions_file(
        &s,
        "[functions.hello]\nfile = \"{images}/test-handler-probe.tar\"\n",
    )?;
    let out = apply_ok(&s, &swapped, &[])?;
    expect_lines(
        &s,
        &out,
        &[
            "~ update hello (image)",
            "applied: 0 created, 1 updated, 0 removed, 0 unchanged",
        ],
    )?;
    let r = s.get(hello, "/probe")?;
    s.check(r.body().contains("sid="), format!("not the new image: {r}"))?;
    s.check(ip_of(&s, "hello")? == hello, "the image update moved hello")?;
    s.check(
        s.list()?.get("cfg").is_some(),
        "cfg removed without --prune",
    )?;
    let out = apply_ok(&s, &swapped, &["--prune"])?;
    expect_lines(
        &s,
        &out,
        &[
            "= hello unchanged",
            "- remove cfg",
            "applied: 0 created, 0 updated, 1 removed, 1 unchanged",
        ],
    )?;
    // The removed image's directory goes once its last request has ended.
    let gone = eventually(SLACK, || s.entries("images") == ["hello"]);
    s.check(
        gone && s.list()?.get("cfg").is_none(),
        format!("after prune: images {:?}", s.entries("images")),
    )?;
    s.check_no_request_left()
}

fn dry_run_changes_nothing() -> TestResult {
    let s = Setup::new(&MAXIMA)?;
    let _d = s.start()?;
    s.deploy("old", "test-handler.tar", Via::File)?;
    s.deploy("hello", "test-handler-probe.tar", Via::File)?;
    let file = functions_file(&s, TWO)?;
    let before = (s.list()?, describe(&s, "hello")?);
    let out = apply_ok(&s, &file, &["--dry-run", "--prune"])?;
    expect_lines(
        &s,
        &out,
        &[
            "+ create cfg",
            "~ update hello (image)",
            "- remove old",
            "dry run: 1 to create, 1 to update, 1 to remove, 0 unchanged; nothing was changed",
        ],
    )?;
    let after = (s.list()?, describe(&s, "hello")?);
    s.check(
        before == after,
        format!("the dry run changed {before:?} into {after:?}"),
    )?;
    s.check(
        s.entries("images") == ["hello", "old"] && logged(&s, "deployed", "hello")? == 1,
        "the dry run deployed something",
    )
}

fn bad_file_changes_nothing() -> TestResult {
    let s = Setup::new(&MAXIMA)?;
    let _d = s.start()?;
    let good = "[functions.good]\nfile = \"{images}/test-handler.tar\"\n";
    for (bad, says) in [
        ("unknown = 1\n", "unknown field"),
        (
            "[functions.x]\nfile = \"{images}/absent.tar\"\n",
            "function x: image archive",
        ),
        (
            "[functions.x]\nfile = \"{images}/.debs\"\n",
            "not a regular file",
        ),
        (
            "[functions.x]\nimage = \"127.0.0.1:1/x:1\"\nfile = \"{images}/test-handler.tar\"\n",
            "not both",
        ),
        (
            "[functions.\"-x\"]\nfile = \"{images}/test-handler.tar\"\n",
            "invalid function name",
        ),
        // Accepted by faas, refused by the daemon's maxima before anything is deployed.
        (
            "[functions.x]\nfile = \"{images}/test-handler.tar\"\nmemory_mb = 1024\n",
            "--max-memory-mb",
        ),
        (
            "[functions.x]\nimage = \"127.0.0.1:1/x:1\"\nsecrets = { DB = \"no-such-file\" }\n",
            "cannot read secret file",
        ),
        (
            "[functions.x]\nimage = \"not a reference\"\n",
            "invalid image reference",
        ),
    ] {
        let file = functions_file(&s, &format!("{good}{bad}"))?;
        let out = apply(&s, &file, &["--prune"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        s.check(
            out.status.code() == Some(1)
                && stderr.contains(says)
                && stderr.contains("nothing was changed"),
            format!(
                "{bad:?}: exit {:?}, stderr {stderr:?}, want {says:?}",
                out.status
            ),
        )?;
        s.check_no_function(&format!("applying {bad:?}"))?;
    }
    // A text archive where an image should be.
    let junk = s.state().with_file_name("junk.tar");
    fs::write(&junk, "not a tarball")?;
    let file = functions_file(
        &s,
        &format!("{good}[functions.x]\nfile = \"{}\"\n", junk.display()),
    )?;
    let out = apply(&s, &file, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    s.check(
        out.status.code() == Some(1) && stderr.contains("not an image archive"),
        format!("junk archive: {stderr:?}"),
    )?;
    s.check_no_function("a junk archive")
}

fn failure_midway_says_what_was_done() -> TestResult {
    // The Python image is over this upload limit; the static one is not.
    let s = Setup::new(&["--max-upload-mb", "10"])?;
    let _d = s.start()?;
    let file = functions_file(
        &s,
        "[functions.a]\nfile = \"{images}/test-handler.tar\"\n\
         [functions.b]\nfile = \"{images}/python-handler.tar\"\n\
         [functions.c]\nfile = \"{images}/test-handler.tar\"\n",
    )?;
    let out = apply(&s, &file, &[])?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    s.check(
        out.status.code() == Some(1)
            && stdout.trim() == "+ create a"
            && stderr.contains("+ create b failed:")
            && stderr.contains("done:\n  + create a\nnot done:\n  + create b\n  + create c"),
        format!("stdout {stdout:?}, stderr {stderr:?}"),
    )?;
    s.check(
        s.entries("images") == ["a"],
        format!("images {:?}", s.entries("images")),
    )
}

fn registry_image_by_digest() -> TestResult {
    let s = registry::setup()?;
    let _d = s.start()?;
    let registry = Registry::start(&s, None)?;
    registry.push("test-handler-env.tar", "app:1")?;
    let reference = registry.reference("app:1");
    let file = functions_file(
        &s,
        &format!("[functions.app]\nimage = \"{reference}\"\nenv = {{ FROM = \"apply\" }}\n"),
    )?;
    let out = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &out,
        &[
            "+ create app",
            "applied: 1 created, 0 updated, 0 removed, 0 unchanged",
        ],
    )?;
    let ip = ip_of(&s, "app")?;
    s.check(
        env_of(&s, ip)?.contains(&"FROM=apply".to_string()),
        "the pulled function was created without its env",
    )?;
    let out = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &out,
        &[
            "= app unchanged",
            "applied: 0 created, 0 updated, 0 removed, 1 unchanged",
        ],
    )?;
    s.check(
        logged(&s, "deployed", "app")? == 1,
        "the no-op apply pulled again",
    )?;
    // The tag moves to another image: the digest differs, the function is redeployed.
    registry.push("test-handler-probe.tar", "app:1")?;
    let out = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &out,
        &[
            "~ update app (image)",
            "applied: 0 created, 1 updated, 0 removed, 0 unchanged",
        ],
    )?;
    let r = s.get(ip, "/probe")?;
    s.check(r.body().contains("sid="), format!("not the new image: {r}"))?;
    // faas new --image takes configuration flags too; one the daemon refuses costs no pull.
    let out = s.faas(
        &[
            "new",
            "big",
            "--image",
            &reference,
            "--memory-mb",
            "100000000",
        ],
        None,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    s.check(
        out.status.code() == Some(1) && stderr.contains("--max-memory-mb"),
        format!("an impossible memory limit at pull: {stderr:?}"),
    )?;
    // An unknown tag is refused before anything changes.
    let file = functions_file(
        &s,
        &format!(
            "[functions.other]\nimage = \"{}\"\n",
            registry.reference("app:nope")
        ),
    )?;
    let out = apply(&s, &file, &["--prune"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    s.check(
        out.status.code() == Some(1) && stderr.contains("has no image"),
        format!("unknown tag: {stderr:?}"),
    )?;
    // (The image the redeploy replaced goes once its last request has ended.)
    s.check(
        eventually(SLACK, || s.entries("images") == ["app"]),
        format!(
            "the refused apply changed the images: {:?}",
            s.entries("images")
        ),
    )
}

/// With --token-file, apply works with the token, and the endpoints it added answer 401
/// without it.
fn with_a_token() -> TestResult {
    let mut s = Setup::new(&[])?;
    let token = s.state().with_file_name("token");
    fs::write(&token, "s3cret\n")?;
    s.add_flags(&["--token-file", token.to_str().unwrap()]);
    let _d = s.start()?;
    let file = functions_file(&s, "[functions.t]\nfile = \"{images}/test-handler.tar\"\n")?;
    let out = apply(&s, &file, &[])?;
    s.check(
        out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("token"),
        format!("apply without the token: {out:?}"),
    )?;
    let out = apply_ok(&s, &file, &["--token-file", token.to_str().unwrap()])?;
    expect_lines(
        &s,
        &out,
        &[
            "+ create t",
            "applied: 1 created, 0 updated, 0 removed, 0 unchanged",
        ],
    )?;
    for head in [
        "GET /api/defaults HTTP/1.1",
        "GET /api/resolve?image=127.0.0.1:1/x:1 HTTP/1.1",
        "POST /api/check-config HTTP/1.1\r\nContent-Length: 2",
    ] {
        let r = s.control(head, b"{}")?;
        s.check(
            r.status() == Some(401),
            format!("{head} without the token: {r}"),
        )?;
    }
    Ok(())
}

/// The `secret NAME ...: VALUE` lines the env handler prints for /run/secrets.
fn secrets_shown(s: &Setup, ip: Ipv4Addr) -> Result<Vec<String>, Failed> {
    let r = s.get(ip, "/env")?;
    s.check(r.status() == Some(200), format!("GET /env: {r}"))?;
    Ok(r.body()
        .lines()
        .filter(|l| l.starts_with("secret "))
        .map(str::to_string)
        .collect())
}

fn secrets_compared_by_the_daemon() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let pass = s.state().with_file_name("db.pass");
    fs::write(&pass, "first-value")?;
    let file = functions_file(
        &s,
        "[functions.sec]\nfile = \"{images}/test-handler-env.tar\"\nsecrets = { db = \"db.pass\" }\n",
    )?;
    let created = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &created,
        &[
            "+ create sec",
            "applied: 1 created, 0 updated, 0 removed, 0 unchanged",
        ],
    )?;
    let ip = ip_of(&s, "sec")?;
    let shown = secrets_shown(&s, ip)?;
    s.check(
        shown.len() == 1
            && shown[0].starts_with("secret db ")
            && shown[0].ends_with(": first-value"),
        format!("after create: {shown:?}"),
    )?;

    // Same file: the daemon finds the same secrets; nothing is sent or changed.
    let again = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &again,
        &[
            "= sec unchanged",
            "applied: 0 created, 0 updated, 0 removed, 1 unchanged",
        ],
    )?;
    s.check(
        logged(&s, "configuration updated", "sec")? == 0,
        "the no-op apply reconfigured sec",
    )?;

    // A new value in the file: updated in place, seen by the next request.
    fs::write(&pass, "second-value")?;
    let updated = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &updated,
        &[
            "~ update sec (config: secrets)",
            "applied: 0 created, 1 updated, 0 removed, 0 unchanged",
        ],
    )?;
    let shown = secrets_shown(&s, ip)?;
    s.check(
        shown.len() == 1 && shown[0].ends_with(": second-value"),
        format!("after the new value: {shown:?}"),
    )?;

    // Dropped from the file: removed.
    functions_file(
        &s,
        "[functions.sec]\nfile = \"{images}/test-handler-env.tar\"\n",
    )?;
    let dropped = apply_ok(&s, &file, &[])?;
    expect_lines(
        &s,
        &dropped,
        &[
            "~ update sec (config: secrets)",
            "applied: 0 created, 1 updated, 0 removed, 0 unchanged",
        ],
    )?;
    s.check(
        secrets_shown(&s, ip)?.is_empty()
            && describe(&s, "sec")?["secrets"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
        "the secret dropped from the file is still there",
    )?;

    // No value, and nothing derived from one, in what apply or describe printed.
    let printed = [created, again, updated, dropped].concat().join("\n");
    let described = s.faas_ok(&["describe", "sec", "--json"])?;
    for value in ["first-value", "second-value"] {
        s.check(
            !printed.contains(value) && !described.contains(value),
            format!("{value} shown by apply or describe"),
        )?;
    }
    s.check_no_request_left()
}
