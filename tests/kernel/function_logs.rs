//! Issue 14, logs, through the real binaries: each handler's stdout and stderr kept per
//! function with the request id and the stream (`faas logs`, `--tail`, `--since`, `-f`),
//! 0600 files in a 0700 directory gone with `faas rm`, and a flooding handler cut at the
//! per-request budget with the file kept under `--log-max-mb`. The `env` test handler
//! writes one line to each stream and answers "hostname ID", its request's id.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use libtest_mimic::{Failed, Trial};

use crate::e2e::{eventually, Setup, Via, SLACK};
use crate::request_security::metric;
use crate::support::TestResult;

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test(
            "function_logs::lines_tagged_tailed_followed_and_removed",
            lines_tagged_tailed_followed_and_removed,
        ),
        Trial::test(
            "function_logs::flood_is_cut_and_the_file_bounded",
            flood_is_cut_and_the_file_bounded,
        ),
        Trial::test(
            "function_logs::stale_logs_swept_at_start",
            stale_logs_swept_at_start,
        ),
    ]
}

/// One request to the `env` handler; its request id.
fn request(s: &Setup, ip: Ipv4Addr) -> Result<String, Failed> {
    let r = s.get(ip, "/env")?;
    s.check(r.status() == Some(200), format!("GET /env: {r}"))?;
    r.body()
        .lines()
        .find_map(|l| l.strip_prefix("hostname "))
        .map(str::to_string)
        .ok_or_else(|| s.fail(format!("no hostname line in {r}")))
}

/// `faas logs NAME ARGS`, its lines.
fn logs(s: &Setup, name: &str, args: &[&str]) -> Result<Vec<String>, Failed> {
    let all: Vec<&str> = ["logs", name].iter().chain(args).copied().collect();
    Ok(s.faas_ok(&all)?.lines().map(str::to_string).collect())
}

/// Waits until `faas logs NAME` has `n` lines (both of a request's streams are read by
/// the daemon while its client already has the answer).
fn wait_for_lines(s: &Setup, name: &str, n: usize) -> Result<Vec<String>, Failed> {
    let mut lines = Vec::new();
    eventually(SLACK, || {
        lines = logs(s, name, &[]).unwrap_or_default();
        lines.len() >= n
    });
    s.check(lines.len() == n, format!("want {n} lines, got {lines:?}"))?;
    Ok(lines)
}

/// The two lines the `env` handler writes, as `faas logs` prints them (after the time).
fn expected(id: &str) -> [String; 2] {
    [
        format!("{id} stdout env handler: stdout line"),
        format!("{id} stderr env handler: stderr line"),
    ]
}

fn without_time(line: &str) -> &str {
    line.split_once(' ').map_or("", |(_, rest)| rest)
}

fn same_lines(s: &Setup, got: &[String], want: &[String]) -> TestResult {
    let mut got: Vec<&str> = got.iter().map(|l| without_time(l)).collect();
    let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    s.check(got == want, format!("logs {got:?}, want {want:?}"))
}

fn lines_tagged_tailed_followed_and_removed() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let ip = s.deploy("lg", "test-handler-env.tar", Via::File)?;
    let mut want = Vec::new();
    for i in 1..=3 {
        let id = request(&s, ip)?;
        want.extend(expected(&id));
        let got = wait_for_lines(&s, "lg", 2 * i)?;
        same_lines(&s, &got, &want)?;
    }
    same_lines(&s, &logs(&s, "lg", &["--tail", "2"])?, &want[4..])?;

    // --since: only what came after a pause.
    thread::sleep(Duration::from_secs(4));
    let fourth = request(&s, ip)?;
    wait_for_lines(&s, "lg", 8)?;
    same_lines(&s, &logs(&s, "lg", &["--since", "2s"])?, &expected(&fourth))?;

    // The files: 0600 in a 0700 directory.
    let dir = s.state().join("logs");
    let file = dir.join("lg.log");
    let mode = |p: &std::path::Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    s.check(
        mode(&dir)? == 0o700 && mode(&file)? == 0o600,
        format!("modes {:o} {:o}", mode(&dir)?, mode(&file)?),
    )?;

    let bad = s.control("GET /api/functions/lg/logs?tail=-1 HTTP/1.1", b"")?;
    s.check(
        bad.status() == Some(400) && bad.body().contains("\"error\""),
        format!("a bad tail: {bad}"),
    )?;

    // -f prints the next request's lines as they come, and ends with the function.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(["--url", &format!("http://{}", s.control_addr())])
        .args(["logs", "lg", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = mpsc::channel();
    let out = follower.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The kept line comes once the follower is subscribed: a request after it is followed.
    let first = rx.recv_timeout(SLACK).unwrap_or_default();
    s.check(
        first.contains(&fourth),
        format!("faas logs -f --tail 1 began with {first:?}"),
    )?;
    let id = request(&s, ip)?;
    let mut got = Vec::new();
    while got.len() < 2 {
        match rx.recv_timeout(SLACK) {
            Ok(line) => got.push(line),
            Err(_) => break,
        }
    }
    let followed_ok = same_lines(&s, &got, &expected(&id));
    s.faas_ok(&["rm", "lg"])?;
    let ended = eventually(SLACK, || matches!(follower.try_wait(), Ok(Some(_))));
    if !ended {
        let _ = follower.kill();
    }
    let status = follower.wait()?;
    let _ = reader.join();
    followed_ok?;
    s.check(
        ended && status.success(),
        format!("faas logs -f did not end cleanly with the function: {status}"),
    )?;
    s.check(
        !file.exists() && !dir.join("lg.log.1").exists(),
        "the log outlived faas rm",
    )?;
    let err = s.faas_err(&["logs", "lg"], None)?;
    s.check(
        err.contains("no function named"),
        format!("faas logs after rm: {err}"),
    )
}

fn flood_is_cut_and_the_file_bounded() -> TestResult {
    const MAX: u64 = 1 << 20;
    let s = Setup::new(&["--log-max-mb", "1"])?;
    let _d = s.start()?;
    let ip = s.deploy("fl", "test-handler-flood.tar", Via::File)?;
    // Requests of 1 GiB each (or 20 s of it): at least the burst of each (256 KiB) is
    // logged, more than the 1 MiB bound all together: the file rotates.
    for _ in 0..3 {
        let r = s.get(ip, "/flood")?;
        s.check(r.status() == Some(200), format!("GET /flood: {r}"))?;
    }
    let dropped = "faasd_log_bytes_dropped_total{function=\"fl\"}";
    eventually(SLACK, || {
        metric(&s, dropped).unwrap_or(0.0) > (64 << 20) as f64
    });
    let dir = s.state().join("logs");
    let size = |name: &str| fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    let (current, rotated) = (size("fl.log"), size("fl.log.1"));
    s.check(
        rotated > 0 && current + rotated <= MAX,
        format!("fl.log {current} + fl.log.1 {rotated} bytes, bound {MAX}"),
    )?;
    // Without a tail the answer streams (chunked), the whole kept log.
    let all = s.control("GET /api/functions/fl/logs HTTP/1.1", b"")?;
    let head = all
        .text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    s.check(
        all.status() == Some(200)
            && head.contains("transfer-encoding: chunked")
            && all.body().len() as u64 > (current + rotated) / 2,
        format!("a full read: {head:?}, {} bytes", all.body().len()),
    )?;
    // No newline in the flood: its lines are cut pieces, marked so.
    let last = logs(&s, "fl", &["--tail", "3"])?;
    s.check(
        last.len() == 3 && last.iter().all(|l| l.ends_with(" [line continues]")),
        format!(
            "last lines: {:?}",
            last.iter()
                .map(|l| &l[..l.len().min(80)])
                .collect::<Vec<_>>()
        ),
    )
}

/// A crash between an undeploy's registry change and its log removal leaves the log of a
/// function that is gone: the next start removes it, and keeps a deployed one's.
fn stale_logs_swept_at_start() -> TestResult {
    let s = Setup::new(&[])?;
    let mut d = s.start()?;
    let ip = s.deploy("kept", "test-handler-env.tar", Via::File)?;
    let id = request(&s, ip)?;
    wait_for_lines(&s, "kept", 2)?;
    d.kill9()?;
    drop(d);
    let dir = s.state().join("logs");
    for stale in ["gone.log", "gone.log.1"] {
        fs::write(dir.join(stale), "{}\n")?;
    }
    let _d = s.start()?;
    let mut left: Vec<String> = fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    left.sort();
    s.check(
        left == ["kept.log"],
        format!("logs/ after the start: {left:?}"),
    )?;
    same_lines(&s, &logs(&s, "kept", &[])?, &expected(&id))
}
