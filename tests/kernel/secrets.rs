//! Issue 14, secrets, through the real binaries: a handler sees exactly the configured
//! secrets at /run/secrets (contents, mode 0400, its own user, read-only), on both
//! backends; no endpoint, log or registry shows a value; `--rm-secret` and a new value
//! reach the next request; they survive a restart and a kill -9 and go with `faas rm`; a
//! bad name, an oversized value or an image that cannot hold them is refused with a 4xx
//! and leaves nothing. The `env` test handler (as user 1234:2345) reports what it finds.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use base64::Engine;
use libtest_mimic::{Failed, Trial};
use serde_json::json;

use crate::e2e::{Setup, SLACK};
use crate::support::TestResult;

pub fn tests() -> Vec<Trial> {
    macro_rules! trials {
        ($($test:ident),* $(,)?) => {
            vec![$(Trial::test(concat!("secrets::", stringify!($test)), $test)),*]
        };
    }
    trials![
        shown_read_only_changed_kept_and_never_leaked,
        runc_shows_the_same,
        refused_and_leave_nothing,
    ]
}

/// The handler's user (test-handler-env-user.tar).
const OWNER: &str = "uid=1234 gid=2345";
/// EROFS: the tmpfs is read-only (checked before file permissions).
const EROFS: &str = "errno 30";

/// Writes `value` to a file beside the test's state and returns its path.
fn secret_file(s: &Setup, name: &str, value: &str) -> Result<PathBuf, Failed> {
    let path = s.state().parent().unwrap().join(format!("secret-{name}"));
    fs::write(&path, value)?;
    Ok(path)
}

/// What the handler found in /run/secrets: its "secret", "secret-write" and
/// "secrets-create" lines, sorted.
fn secrets_seen(s: &Setup, ip: Ipv4Addr) -> Result<Vec<String>, Failed> {
    let r = s.get(ip, "/env")?;
    s.check(r.status() == Some(200), format!("GET /env: {r}"))?;
    let mut lines: Vec<String> = r
        .body()
        .lines()
        .filter(|l| l.starts_with("secret"))
        .map(str::to_string)
        .collect();
    lines.sort();
    Ok(lines)
}

/// The lines a handler reports for exactly `secrets` (name, value), read-only (with none,
/// /run/secrets is the image's own directory, read-only too).
fn expected(secrets: &[(&str, &str)]) -> Vec<String> {
    let mut lines: Vec<String> = secrets
        .iter()
        .flat_map(|(name, value)| {
            [
                format!(
                    "secret {name} mode=0400 {OWNER} size={}: {value}",
                    value.len()
                ),
                format!("secret-write {name} {EROFS}"),
            ]
        })
        .collect();
    lines.push(format!("secrets-create {EROFS}"));
    lines.sort();
    lines
}

fn expect_secrets(s: &Setup, ip: Ipv4Addr, secrets: &[(&str, &str)]) -> TestResult {
    let seen = secrets_seen(s, ip)?;
    let want = expected(secrets);
    s.check(
        seen == want,
        format!("/run/secrets: got {seen:#?}, want {want:#?}"),
    )
}

fn deployed_ip(s: &Setup, out: &str) -> Result<Ipv4Addr, Failed> {
    out.trim()
        .rsplit_once(" at ")
        .and_then(|(_, ip)| ip.parse().ok())
        .ok_or_else(|| s.fail(format!("faas new said {out:?}")))
}

/// Nothing the daemon shows or writes outside the secret store holds `values`.
fn check_never_shown(s: &Setup, name: &str, values: &[&str]) -> TestResult {
    let shown = [
        ("/api/list", s.control("GET /api/list HTTP/1.1", b"")?.text),
        ("describe", s.faas_ok(&["describe", name])?),
        ("describe --json", s.faas_ok(&["describe", name, "--json"])?),
        ("faas logs", s.faas_ok(&["logs", name])?),
        ("the daemon's log", fs::read_to_string(s.log())?),
        (
            "registry.json",
            fs::read_to_string(s.state().join("registry.json"))?,
        ),
    ];
    for (what, text) in shown {
        for v in values {
            s.check(!text.contains(v), format!("{what} shows a secret's value"))?;
        }
    }
    Ok(())
}

/// The files of the secret store, as `function/generation/name` with their modes.
fn store_files(s: &Setup) -> Vec<(String, u32)> {
    let root = s.state().join("secrets");
    let mut out = Vec::new();
    let mut walk = vec![root.clone()];
    while let Some(dir) = walk.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let mode = entry
                .metadata()
                .map_or(0, |m| m.permissions().mode() & 0o777);
            let rel = path.strip_prefix(&root).unwrap().display().to_string();
            if path.is_dir() {
                walk.push(path.clone());
            }
            out.push((rel, mode));
        }
    }
    out.sort();
    out
}

fn shown_read_only_changed_kept_and_never_leaked() -> TestResult {
    let s = Setup::new(&[])?;
    let mut d = s.start()?;
    let image = crate::support::image("test-handler-env-user.tar")?;
    let (db, key, new) = ("db-value-7f3b2c", "key-value-91c2e8", "new-value-4d5a61");
    let (db_file, key_file) = (secret_file(&s, "db", db)?, secret_file(&s, "key", key)?);
    let out = s.faas_ok(&[
        "new",
        "sec",
        "-f",
        image.to_str().unwrap(),
        "--secret",
        &format!("db={}", db_file.display()),
        "--secret",
        &format!("api.key={}", key_file.display()),
    ])?;
    let ip = deployed_ip(&s, &out)?;
    expect_secrets(&s, ip, &[("db", db), ("api.key", key)])?;
    let store = store_files(&s);
    s.check(
        store
            == [
                ("sec".to_string(), 0o700),
                ("sec/1".into(), 0o700),
                ("sec/1/api.key".into(), 0o600),
                ("sec/1/db".into(), 0o600),
            ],
        format!("the secret store holds {store:?}"),
    )?;

    // One removed, one added: the next request sees exactly that.
    let new_file = secret_file(&s, "new", new)?;
    let out = s.faas_ok(&[
        "config",
        "sec",
        "--rm-secret",
        "db",
        "--secret",
        &format!("new={}", new_file.display()),
    ])?;
    s.check(
        out.trim().ends_with("secrets api.key,new"),
        format!("faas config said {out:?}"),
    )?;
    expect_secrets(&s, ip, &[("api.key", key), ("new", new)])?;
    let text = s.faas_ok(&["describe", "sec"])?;
    s.check(
        text.lines().any(|l| l == "Secrets:         api.key,new"),
        format!("describe:\n{text}"),
    )?;
    let list = s.list()?;
    s.check(
        list["sec"]["secrets"] == json!(["api.key", "new"]),
        format!("/api/list: {list}"),
    )?;
    check_never_shown(&s, "sec", &[db, key, new])?;
    let store = store_files(&s);
    s.check(
        store.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>()
            == ["sec", "sec/2", "sec/2/api.key", "sec/2/new"],
        format!("after the change the store holds {store:?}"),
    )?;

    // Kept across a clean restart and a kill -9.
    let status = d.stop()?;
    drop(d);
    s.check(status.success(), format!("faasd exited with {status}"))?;
    let mut d = s.start()?;
    expect_secrets(&s, ip, &[("api.key", key), ("new", new)])?;
    d.kill9()?;
    drop(d);
    let _d = s.start()?;
    expect_secrets(&s, ip, &[("api.key", key), ("new", new)])?;
    check_never_shown(&s, "sec", &[db, key, new])?;

    // The last one removed: an empty /run/secrets (the image's directory), no store.
    s.faas_ok(&[
        "config",
        "sec",
        "--rm-secret",
        "api.key",
        "--rm-secret",
        "new",
    ])?;
    expect_secrets(&s, ip, &[])?;
    s.check(store_files(&s).is_empty(), "secrets left in the store")?;
    s.faas_ok(&[
        "config",
        "sec",
        "--secret",
        &format!("db={}", db_file.display()),
    ])?;
    expect_secrets(&s, ip, &[("db", db)])?;
    s.faas_ok(&["rm", "sec"])?;
    let store = store_files(&s);
    s.check(
        store.is_empty(),
        format!("after faas rm the store holds {store:?}"),
    )?;
    s.check_no_request_left()
}

/// `--runtime runc`: the same files, modes, owner and read-only tmpfs; no mount left on
/// the host once the requests are done.
fn runc_shows_the_same() -> TestResult {
    // runc under emulation (the VM tier) takes seconds to start a container.
    let s = Setup::new(&[
        "--runtime",
        "runc",
        "--prewarm",
        "0",
        "--connect-timeout",
        "30",
    ])?;
    let _d = s.start()?;
    let image = crate::support::image("test-handler-env-user.tar")?;
    let value = "runc-value-5e6f70";
    let file = secret_file(&s, "tok", value)?;
    let out = s.faas_ok(&[
        "new",
        "rsec",
        "-f",
        image.to_str().unwrap(),
        "--secret",
        &format!("tok={}", file.display()),
    ])?;
    let ip = deployed_ip(&s, &out)?;
    expect_secrets(&s, ip, &[("tok", value)])?;
    check_never_shown(&s, "rsec", &[value])?;
    s.check_no_request_left()?;
    let state = s.state().display().to_string();
    let mounted = eventually_no_mount_under(&state);
    s.check(
        mounted.is_empty(),
        format!("mounts left under the state dir: {mounted:?}"),
    )?;
    s.faas_ok(&["rm", "rsec"])?;
    s.check(store_files(&s).is_empty(), "secrets left after faas rm")
}

/// The daemon's mounts under `dir` but the image store's own, once teardown is done.
fn eventually_no_mount_under(dir: &str) -> Vec<String> {
    let mut left = Vec::new();
    crate::e2e::eventually(SLACK, || {
        left = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(dir) && !m.ends_with("/images"))
            .map(str::to_string)
            .collect();
        left.is_empty()
    });
    left
}

/// A raw `POST /api/new` whose body starts with `config` (X-Function-Config-Length).
fn deploy_with_body_config(
    s: &Setup,
    name: &str,
    config: &serde_json::Value,
    image: &[u8],
) -> Result<crate::e2e::Reply, Failed> {
    let config = serde_json::to_vec(config)?;
    let head = format!(
        "POST /api/new HTTP/1.1\r\nX-Image-Name: {name}\r\nX-Function-Config-Length: {}\r\n\
         Content-Length: {}",
        config.len(),
        config.len() + image.len()
    );
    Ok(s.control(&head, &[&config[..], image].concat())?)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An image whose /run is a symlink to /etc: a mount at /run/secrets would follow it.
fn image_with_run_symlink() -> Vec<u8> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(0);
    h.set_entry_type(tar::EntryType::Regular);
    layer.append_data(&mut h, "h", &b""[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    layer.append_link(&mut h, "run", "/etc").unwrap();
    let layer = layer.into_inner().unwrap();
    crate::image_security::docker_save(json!({"Cmd": ["/h"]}), &layer)
}

fn refused_and_leave_nothing() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let image_path = crate::support::image("test-handler-env-user.tar")?;
    let image = fs::read(&image_path)?;
    let value = "refused-value-0a1b2c";
    let ok = b64(value.as_bytes());
    let big = b64(&vec![b'x'; 64 * 1024 + 1]);
    let many: serde_json::Map<_, _> = (0..33).map(|i| (format!("s{i}"), json!(ok))).collect();
    let refused = [
        (json!({"secrets": {"../up": ok}}), "starts with '.'"),
        (json!({"secrets": {"a/b": ok}}), "invalid secret name"),
        (json!({"secrets": {"": ok}}), "it is empty"),
        (json!({"secrets": {"x": big}}), "the limit is 65536 bytes"),
        (json!({"secrets": many}), "at most 32 secrets"),
        (json!({"secrets": {"x": "not base64!"}}), "not valid base64"),
        (json!({"rm_secrets": [".."]}), "invalid secret name"),
    ];
    for (config, why) in &refused {
        let r = deploy_with_body_config(&s, "bad", config, &image)?;
        s.check(
            r.status() == Some(400) && r.body().contains(why) && !r.text.contains(value),
            format!("deploy with {why:?}: {r}"),
        )?;
    }
    // In a header, secrets are refused whatever they are.
    let head = format!(
        "POST /api/new HTTP/1.1\r\nX-Image-Name: bad\r\n\
         X-Function-Config: {{\"secrets\":{{\"db\":\"{ok}\"}}}}\r\nContent-Length: {}",
        image.len()
    );
    let r = s.control(&head, &image)?;
    s.check(
        r.status() == Some(400) && r.body().contains("may not travel in a header"),
        format!("secrets in a header: {r}"),
    )?;
    // An image whose /run is a symlink cannot hold secrets (refused after the upload).
    let r = deploy_with_body_config(
        &s,
        "bad",
        &json!({"secrets": {"db": ok}}),
        &image_with_run_symlink(),
    )?;
    s.check(
        r.status() == Some(400) && r.body().contains("cannot hold secrets"),
        format!("an image with /run a symlink: {r}"),
    )?;
    s.check_no_function("refused secrets")?;
    s.check(store_files(&s).is_empty(), "a refused deploy left secrets")?;

    // The same through the CLI and PATCH on a live function: refused, nothing changed.
    let ip = s.deploy_path("ok", &image_path, crate::e2e::Via::File)?;
    let big_file = secret_file(&s, "big", &"x".repeat(64 * 1024 + 1))?;
    let small = secret_file(&s, "small", value)?;
    let cli: [(Vec<String>, &str); 3] = [
        (
            vec!["--secret".into(), format!("../x={}", small.display())],
            "invalid secret name",
        ),
        (
            vec!["--secret".into(), format!("x={}", big_file.display())],
            "larger than 65536 bytes",
        ),
        (
            vec!["--rm-secret".into(), "a/b".into()],
            "invalid secret name",
        ),
    ];
    for (flags, why) in &cli {
        let mut args = vec!["config", "ok"];
        args.extend(flags.iter().map(String::as_str));
        // Exit 2 for what clap refuses, 1 for the rest.
        let out = s.faas(&args, None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        s.check(
            !out.status.success() && err.contains(why),
            format!("faas config {flags:?}: {out:?}"),
        )?;
    }
    for (config, why) in &refused {
        let body = serde_json::to_vec(config)?;
        let head = format!(
            "PATCH /api/functions/ok/config HTTP/1.1\r\nContent-Length: {}",
            body.len()
        );
        let r = s.control(&head, &body)?;
        s.check(
            r.status() == Some(400) && r.body().contains(why),
            format!("PATCH with {why:?}: {r}"),
        )?;
    }
    s.check(store_files(&s).is_empty(), "a refused change left secrets")?;
    // The image has no /run/secrets: nothing is mounted without secrets.
    let seen = secrets_seen(&s, ip)?;
    s.check(
        seen == ["secrets=errno 2"],
        format!("after refused changes the handler sees {seen:?}"),
    )?;
    check_never_shown(&s, "ok", &[value])?;
    // A secret given later to a function deployed without: its image gets /run/secrets
    // then, under the mount template built at deploy.
    s.faas_ok(&[
        "config",
        "ok",
        "--secret",
        &format!("late={}", small.display()),
    ])?;
    expect_secrets(&s, ip, &[("late", value)])
}
