//! Issue 14, per-function configuration through the real binaries: env merged over the
//! image's, limits and timeout per function bounded by the daemon's maxima, `faas config`
//! without re-uploading, requests in flight unaffected, all of it surviving a restart and a
//! kill -9. The `env` test handler answers with its environment ("env K=V" lines).

use std::fs;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::e2e::{eventually, exchange, Setup, Via, SLACK};
use crate::request_security::metric;
use crate::support::TestResult;

pub fn tests() -> Vec<Trial> {
    macro_rules! trials {
        ($($test:ident),* $(,)?) => {
            vec![$(Trial::test(concat!("function_config::", stringify!($test)), $test)),*]
        };
    }
    trials![
        env_and_limits_set_changed_and_kept_across_restarts,
        above_the_maxima_is_refused_and_leaves_nothing,
        config_update_spares_requests_in_flight,
        memory_limit_is_the_functions_own,
        describe_and_invoke,
    ]
}

/// The daemon's maxima in these tests (its defaults must be within them).
const MAXIMA: [&str; 10] = [
    "--memory-mb",
    "128",
    "--exec-timeout",
    "10",
    "--max-memory-mb",
    "256",
    "--max-timeout",
    "20",
    "--max-per-function",
    "4",
];

/// The handler's environment, as it reported it: its "env K=V" lines.
pub(crate) fn env_of(s: &Setup, ip: Ipv4Addr) -> Result<Vec<String>, Failed> {
    let r = s.get(ip, "/env")?;
    s.check(r.status() == Some(200), format!("GET /env: {r}"))?;
    Ok(r.body()
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .map(str::to_string)
        .collect())
}

fn expect_env(s: &Setup, ip: Ipv4Addr, want: &[&str], not: &[&str]) -> TestResult {
    let env = env_of(s, ip)?;
    s.check(
        want.iter().all(|w| env.iter().any(|e| e == w))
            && not.iter().all(|n| env.iter().all(|e| e != n)),
        format!("environment {env:?}: want {want:?}, not {not:?}"),
    )
}

fn env_and_limits_set_changed_and_kept_across_restarts() -> TestResult {
    let s = Setup::new(&MAXIMA)?;
    let mut d = s.start()?;
    let image = crate::support::image("test-handler-env.tar")?;
    let out = s.faas_ok(&[
        "new",
        "cfg",
        "-f",
        image.to_str().unwrap(),
        "--env",
        "GREETING=value-at-deploy",
        "--env",
        "PATH=/usr/bin:/bin",
        "--memory-mb",
        "64",
        "--timeout",
        "3",
    ])?;
    let ip: Ipv4Addr = out
        .trim()
        .strip_prefix("Deployed cfg at ")
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| s.fail(format!("faas new: {out:?}")))?;
    // The image sets PATH=/bin: ours wins.
    expect_env(
        &s,
        ip,
        &["GREETING=value-at-deploy", "PATH=/usr/bin:/bin"],
        &["PATH=/bin"],
    )?;

    let vars = s.state().parent().unwrap().join("vars.env");
    fs::write(&vars, "# from a file\nFROM_FILE=yes\nGREETING=from-file\n")?;
    let out = s.faas_ok(&[
        "config",
        "cfg",
        "--env-file",
        vars.to_str().unwrap(),
        "--env",
        "GREETING=value-changed",
        "--pids-max",
        "32",
    ])?;
    s.check(
        out.trim()
            == "Configured cfg: memory 64 MiB, cpus 1, pids 32, timeout 3 s, max concurrency 4, \
                env FROM_FILE,GREETING,PATH, secrets none",
        format!("faas config said {out:?}"),
    )?;
    let want = [
        "GREETING=value-changed",
        "FROM_FILE=yes",
        "PATH=/usr/bin:/bin",
    ];
    expect_env(&s, ip, &want, &["GREETING=value-at-deploy"])?;
    s.faas_ok(&["config", "cfg", "--unset-env", "PATH"])?;
    expect_env(&s, ip, &["PATH=/bin"], &["PATH=/usr/bin:/bin"])?;
    let want = ["GREETING=value-changed", "FROM_FILE=yes", "PATH=/bin"];

    // The list shows names, never values.
    let list = s.control("GET /api/list HTTP/1.1", b"")?;
    s.check(
        list.body().contains("\"GREETING\"") && !list.body().contains("value-changed"),
        format!("/api/list: {list}"),
    )?;
    let registry = s.state().join("registry.json");
    let mode = fs::metadata(&registry)?.permissions();
    s.check(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o600,
        "registry.json (which holds env values) is not 0600",
    )?;

    let status = d.stop()?;
    drop(d);
    s.check(status.success(), format!("faasd exited with {status}"))?;
    let mut d = s.start()?;
    expect_env(&s, ip, &want, &[])?;
    d.kill9()?;
    drop(d);
    let _d = s.start()?;
    expect_env(&s, ip, &want, &[])?;
    let out = s.faas_ok(&["config", "cfg", "--max-concurrency", "2"])?;
    s.check(
        out.contains("memory 64 MiB, cpus 1, pids 32, timeout 3 s, max concurrency 2"),
        format!("after two restarts, faas config said {out:?}"),
    )
}

fn above_the_maxima_is_refused_and_leaves_nothing() -> TestResult {
    let s = Setup::new(&MAXIMA)?;
    let _d = s.start()?;
    let image = crate::support::image("test-handler-env.tar")?;
    let image = image.to_str().unwrap();
    let refused: [(&[&str], &str); 5] = [
        (&["--memory-mb", "257"], "--max-memory-mb"),
        (&["--timeout", "21"], "--max-timeout"),
        (&["--max-concurrency", "5"], "--max-per-function"),
        (&["--cpus", "1000"], "--max-cpus"),
        (&["--memory-mb", "1"], "below the smallest"),
    ];
    for (flags, why) in refused {
        let mut args = vec!["new", "big", "-f", image];
        args.extend_from_slice(flags);
        let err = s.faas_err(&args, None)?;
        s.check(err.contains(why), format!("faas new {flags:?}: {err:?}"))?;
    }
    // NUL cannot pass through argv: the daemon's own check, through a raw request.
    let head = "POST /api/new HTTP/1.1\r\nX-Image-Name: big\r\n\
                X-Function-Config: {\"env\":{\"BAD\\u0000\":\"1\"}}\r\nContent-Length: 0";
    let r = s.control(head, b"")?;
    s.check(
        r.status() == Some(400) && r.body().contains("invalid env name"),
        format!("NUL in an env name: {r}"),
    )?;
    s.check_no_function("refused configurations")?;

    let ip = s.deploy("ok", "test-handler-env.tar", Via::File)?;
    for (flags, why) in [
        (&["--memory-mb", "300"][..], "--max-memory-mb"),
        (&["--pids-max", "0"], "below the smallest"),
        (&["--env", "X=1", "--unset-env", "X"], "both set and unset"),
        (&[], "nothing to change"),
    ] {
        let mut args = vec!["config", "ok"];
        args.extend_from_slice(flags);
        let err = s.faas_err(&args, None)?;
        s.check(err.contains(why), format!("faas config {flags:?}: {err:?}"))?;
    }
    let err = s.faas_err(&["config", "nope", "--timeout", "1"], None)?;
    s.check(err.contains("no function named"), format!("{err:?}"))?;
    // A malformed body, and one of unknown fields, are 400 with a message.
    for body in [&b"{not json"[..], br#"{"memory":1}"#] {
        let head = format!(
            "PATCH /api/functions/ok/config HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        );
        let r = s.control(&head, body)?;
        s.check(
            r.status() == Some(400) && r.body().contains("not a valid configuration"),
            format!("PATCH {:?}: {r}", String::from_utf8_lossy(body)),
        )?;
    }
    // Nothing refused changed anything.
    expect_env(&s, ip, &["PATH=/bin"], &["X=1"])
}

/// A config update while a slow request (2 s) runs: the request in flight keeps its
/// timeout and answers; the next one gets the new 1 s timeout and is cut.
fn config_update_spares_requests_in_flight() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let ip = s.deploy("slow", "test-handler-slow.tar", Via::File)?;
    let request = move || {
        exchange(
            (ip, 80),
            b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    };
    let in_flight = thread::spawn(request);
    let busy = eventually(SLACK, || {
        metric(&s, "faasd_in_flight{function=\"slow\"}").is_ok_and(|v| v == 1.0)
    });
    s.check(busy, "the slow request never showed as in flight")?;
    s.faas_ok(&["config", "slow", "--timeout", "1"])?;
    let r = in_flight.join().unwrap()?;
    s.check(
        r.status() == Some(200) && r.body().contains("Hello from FaaS handler!"),
        format!("the request in flight during the update: {r}"),
    )?;
    let started = Instant::now();
    let r = request()?;
    s.check(
        r.status().is_none() && started.elapsed() < Duration::from_millis(1900),
        format!("a request after --timeout 1 must be cut at 1 s: {r}"),
    )?;
    let timed_out = eventually(SLACK, || {
        metric(
            &s,
            "faasd_failures_total{function=\"slow\",reason=\"exec_timeout\"}",
        )
        .is_ok_and(|v| v == 1.0)
    });
    s.check(timed_out, "the cut request is not counted as exec_timeout")?;
    s.check_no_request_left()
}

/// `--memory-mb 64` on a handler that touches 400 MiB: killed by the OOM killer in its
/// own cgroup, while the daemon's default (512) would have let it live.
fn memory_limit_is_the_functions_own() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let image = crate::support::image("test-handler-memhog.tar")?;
    s.faas_ok(&[
        "new",
        "hog",
        "-f",
        image.to_str().unwrap(),
        "--memory-mb",
        "64",
        "--timeout",
        "10",
    ])?;
    let ip = s.faas_ok(&["ip", "hog"])?.trim().parse::<Ipv4Addr>()?;
    let r = s.get(ip, "/")?;
    s.check(r.status().is_none(), format!("the hog answered: {r}"))?;
    let oom = eventually(SLACK, || {
        metric(
            &s,
            "faasd_failures_total{function=\"hog\",reason=\"oom_killed\"}",
        )
        .is_ok_and(|v| v == 1.0)
    });
    s.check(oom, "the hog was not OOM-killed at 64 MiB")?;
    s.check_no_request_left()
}

/// `faas invoke` reaches the function (method, path, body, `-i`), exits 1 on a 5xx and
/// on a connection the handler reset;
/// `faas describe` shows the image, env names (never values), limits, requests served and
/// failures.
fn describe_and_invoke() -> TestResult {
    let s = Setup::new(&["--connect-timeout", "1"])?;
    let _d = s.start()?;
    let image = crate::support::image("test-handler-env.tar")?;
    s.faas_ok(&[
        "new",
        "fn",
        "-f",
        image.to_str().unwrap(),
        "--env",
        "API_KEY=value-never-shown",
        "--cpus",
        "0.5",
    ])?;
    let out = s.faas_ok(&["invoke", "fn", "/hello?x=1", "-i"])?;
    s.check(
        out.starts_with("HTTP/1.0 200 OK\r\n")
            && out.contains("GET /hello?x=1 HTTP/1.1")
            && out.contains("env API_KEY=value-never-shown"),
        format!("faas invoke -i: {out:?}"),
    )?;
    let body = s.state().parent().unwrap().join("body");
    fs::write(&body, "payload")?;
    let out = s.faas_ok(&[
        "invoke",
        "fn",
        "echo",
        "-H",
        "X-Test: 1",
        "-d",
        &format!("@{}", body.display()),
    ])?;
    s.check(
        out.starts_with("Hello from FaaS handler!\nPOST /echo HTTP/1.1\n"),
        format!("faas invoke -d @FILE: {out:?}"),
    )?;
    // The handler connects and dies at once: the daemon either handed the connection
    // over first (the client's connection then closes unanswered) or found the handler
    // gone (and answers 502 itself). A race between the two processes; faas names the
    // failure either way.
    s.deploy("crash", "test-handler-crash.tar", Via::File)?;
    let err = s.faas_err(&["invoke", "crash"], None)?;
    s.check(
        err.contains("cannot reach function crash at")
            || err.contains("crash answered HTTP 502 Bad Gateway"),
        format!("{err:?}"),
    )?;
    s.deploy("silent", "test-handler-noconnect.tar", Via::File)?;
    let out = s.faas(&["invoke", "silent"], None)?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    s.check(
        out.status.code() == Some(1)
            && stdout.contains("did not connect to /control.sock")
            && stderr.contains("silent answered HTTP 504 Gateway Timeout"),
        format!("invoke of a handler that never connects: {out:?}"),
    )?;
    let err = s.faas_err(&["invoke", "nope"], None)?;
    s.check(err.contains("no function named"), format!("{err:?}"))?;

    // With the default --prewarm auto, one container waits for fn again once its last
    // request has ended (refilled off the request path: poll, bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = s.faas_ok(&["describe", "fn"])?;
        if text.lines().any(|l| l == "Warm containers: 1") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let json = s.faas_ok(&["describe", "fn", "--json"])?;
    let d: serde_json::Value = serde_json::from_str(&json)?;
    for line in [
        "Command:         /test-handler env",
        "Env:             PATH,API_KEY",
        "CPUs:            0.5",
        "Memory:          512 MiB",
        "Requests served: 2",
        "Failures:        none",
        "Warm containers: 1",
    ] {
        s.check(
            text.lines().any(|l| l == line),
            format!("{line:?} not in\n{text}"),
        )?;
    }
    s.check(
        d["image_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71)
            && d["image_size_bytes"].as_u64().is_some_and(|n| n > 100_000)
            && d["deployed_at"].as_u64().is_some(),
        format!("describe --json: {d}"),
    )?;
    s.check(
        !text.contains("value-never-shown") && !json.contains("value-never-shown"),
        "describe shows an env value",
    )?;
    let crash = s.faas_ok(&["describe", "crash"])?;
    s.check(
        crash
            .lines()
            .any(|l| l.starts_with("Failures:") && l.ends_with(" 1"))
            && crash
                .lines()
                .any(|l| l.starts_with("Last failure:") && l.contains("(request ")),
        format!("describe crash:\n{crash}"),
    )?;
    let log = fs::read_to_string(s.log())?;
    s.check(
        !log.contains("value-never-shown"),
        "the daemon's log shows an env value",
    )
}
