//! Warm by default (issue 13) through the real binaries: `--prewarm auto` keeps one
//! container waiting from a deploy until the function has been idle for `--prewarm-idle`,
//! the first request after a deploy is a warm hit, a waiting container that dies is
//! replaced and counted, `--prewarm-memory-mb` bounds them all, and each still serves
//! exactly one request. Followed through /metrics, `faas list` and the cgroups, as an
//! operator would.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::e2e::{eventually, Setup, Via, SLACK};
use crate::support::TestResult;

pub fn tests() -> Vec<Trial> {
    macro_rules! trials {
        ($($test:ident),* $(,)?) => {
            vec![$(Trial::test(concat!("prewarm::", stringify!($test)), $test)),*]
        };
    }
    trials![
        idle_function_scales_to_zero_and_back,
        a_dead_waiting_container_is_replaced_and_counted,
        each_warm_container_serves_one_request,
        waiting_memory_is_bounded,
    ]
}

/// The value of `faasd_<name>{function="<function>"}` in /metrics (0 when absent).
fn metric(s: &Setup, name: &str, function: &str) -> Result<f64, Failed> {
    let r = s.control("GET /metrics HTTP/1.1", b"")?;
    s.check(r.status() == Some(200), format!("/metrics answered {r}"))?;
    let prefix = format!("faasd_{name}{{function=\"{function}\"}} ");
    Ok(r.body()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

/// The Warm column of `faas list` for `name`.
fn listed_warm(s: &Setup, name: &str) -> Result<String, Failed> {
    let out = s.faas(&["list"], None)?;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&name))
        .and_then(|w| w.get(2).map(|v| v.to_string()))
        .ok_or_else(|| s.fail(format!("{name} not in faas list:\n{table}")))
}

fn idle_function_scales_to_zero_and_back() -> TestResult {
    // Longer than a container's start in the emulated VM, so that one it started is not
    // idle before it is seen.
    const IDLE: Duration = Duration::from_secs(5);
    let s = Setup::new(&["--prewarm-idle", "5", "--connect-timeout", "30"])?;
    let _d = s.start()?;
    let ip = s.deploy("fn", "test-handler.tar", Via::File)?;
    // The deploy answered once its first container waited.
    let waiting = || metric(&s, "prewarmed", "fn");
    s.check(
        waiting()? == 1.0 && s.containers().len() == 1 && listed_warm(&s, "fn")? == "1",
        format!(
            "right after the deploy: {} waiting, cgroups {:?}",
            waiting()?,
            s.containers()
        ),
    )?;
    s.expect_hello(ip, "/first")?;
    let (hits, misses) = (
        metric(&s, "prewarmed_requests_total", "fn")?,
        metric(&s, "cold_requests_total", "fn")?,
    );
    s.check(
        hits == 1.0 && misses == 0.0,
        format!("the first request after the deploy: {hits} warm hits, {misses} misses"),
    )?;

    // The served container is replaced: between its exit and its successor's start
    // nothing waits, which is not yet idleness.
    let since = Instant::now();
    let one = || waiting().is_ok_and(|w| w == 1.0) && s.containers().len() == 1;
    s.check(
        eventually(IDLE * 3 / 4, one),
        format!(
            "{:?} after the first request: cgroups {:?}",
            since.elapsed(),
            s.containers()
        ),
    )?;

    // Idle: nothing waits any more, no cgroup, no process.
    let zero = || {
        waiting().is_ok_and(|w| w == 0.0) && s.containers().is_empty() && s.processes().is_empty()
    };
    s.check(
        eventually(IDLE + SLACK, zero),
        format!(
            "idle for {:?}: cgroups {:?}",
            since.elapsed(),
            s.containers()
        ),
    )?;
    let took = since.elapsed();
    s.check(
        took >= IDLE - Duration::from_millis(200) && listed_warm(&s, "fn")? == "0",
        format!("scaled to zero after {took:?} (--prewarm-idle 5)"),
    )?;
    eprintln!("scaled to zero {took:?} after the last request (--prewarm-idle 5)");

    // The next request starts its own container, and one waits again right after.
    s.expect_hello(ip, "/wake")?;
    let answered = Instant::now();
    s.check(
        eventually(IDLE * 3 / 4, one),
        format!(
            "{:?} after a request to an idle function: cgroups {:?}",
            answered.elapsed(),
            s.containers()
        ),
    )?;
    eprintln!(
        "one waiting again {:?} after the answer",
        answered.elapsed()
    );
    s.check(
        metric(&s, "cold_requests_total", "fn")? == 1.0,
        "the request to the idle function was not counted as a miss",
    )?;

    // Idle again; a redeploy brings one of the new image before it answers.
    s.check(eventually(IDLE + SLACK, zero), "not idle again")?;
    s.deploy("fn", "test-handler-serve.tar", Via::Stdin)?;
    s.check(
        waiting()? == 1.0 && s.containers().len() == 1,
        format!("right after the redeploy: cgroups {:?}", s.containers()),
    )?;
    s.expect_hello(ip, "/after-redeploy")?;
    let hits = metric(&s, "prewarmed_requests_total", "fn")?;
    s.check(
        hits == 2.0,
        format!("the first request after the redeploy was not warm ({hits} hits)"),
    )
}

fn a_dead_waiting_container_is_replaced_and_counted() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let ip = s.deploy("fn", "test-handler.tar", Via::File)?;
    let (before, pids) = (s.containers(), s.processes());
    s.check(
        before.len() == 1 && pids.len() == 1,
        format!("one container should wait: cgroups {before:?}, processes {pids:?}"),
    )?;
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL)?;
    let replaced = eventually(SLACK, || {
        metric(&s, "prewarm_failures_total", "fn").is_ok_and(|n| n == 1.0)
            && metric(&s, "prewarmed", "fn").is_ok_and(|n| n == 1.0)
            && s.containers().len() == 1
            && s.processes().len() == 1
            && s.processes() != pids
    });
    s.check(
        replaced,
        format!(
            "after killing the waiting handler: failures {}, cgroups {:?} (was {before:?}), \
             processes {:?} (was {pids:?})",
            metric(&s, "prewarm_failures_total", "fn")?,
            s.containers(),
            s.processes()
        ),
    )?;
    s.expect_hello(ip, "/after-the-death")?;
    s.check(
        metric(&s, "prewarmed_requests_total", "fn")? == 1.0,
        "the replacement did not serve the request",
    )
}

fn each_warm_container_serves_one_request() -> TestResult {
    let s = Setup::new(&[])?;
    let _d = s.start()?;
    let ip = s.deploy("fn", "test-handler.tar", Via::File)?;
    let mut seen = HashSet::new();
    for i in 1..=10 {
        // One container waits (the one that served is gone): note which, by its
        // process (its cgroup may be one an ended container drained).
        let mut waiting = Vec::new();
        let one = eventually(SLACK, || {
            waiting = s.processes();
            waiting.len() == 1
                && s.containers().len() == 1
                && metric(&s, "prewarmed", "fn").is_ok_and(|n| n == 1.0)
        });
        s.check(one, format!("before request {i}: processes {waiting:?}"))?;
        s.check(
            seen.insert(waiting[0]),
            format!("request {i}: container process {} waits again", waiting[0]),
        )?;
        s.expect_hello(ip, &format!("/{i}"))?;
        let hits = metric(&s, "prewarmed_requests_total", "fn")?;
        s.check(hits == i as f64, format!("request {i}: {hits} warm hits"))?;
    }
    s.check_no_request_left()
}

fn waiting_memory_is_bounded() -> TestResult {
    // A waiting static handler holds 250-500 KiB (more for the first: the page cache of
    // the binary is charged to the cgroup that read it first): 2 MiB fits 4 to 8 of the
    // 2 x 8 asked for.
    const BUDGET_MB: f64 = 2.0;
    const ASKED: f64 = 16.0;
    let s = Setup::new(&["--prewarm", "8", "--prewarm-memory-mb", "2"])?;
    let _d = s.start()?;
    let a = s.deploy("a", "test-handler.tar", Via::File)?;
    let b = s.deploy("b", "test-handler.tar", Via::File)?;
    std::thread::sleep(Duration::from_secs(2));
    let (waiting, memory) = (
        s.metric_total("prewarmed"),
        s.metric_total("prewarmed_memory_bytes"),
    );
    eprintln!("{waiting} waiting hold {memory} bytes (--prewarm-memory-mb 2)");
    s.check(
        memory <= BUDGET_MB * (1 << 20) as f64
            && (2.0..ASKED).contains(&waiting)
            && s.containers().len() as f64 == waiting,
        format!(
            "budget {BUDGET_MB} MiB: {waiting} waiting holding {memory} bytes, cgroups {:?}",
            s.containers()
        ),
    )?;
    // Each function has its first: one function's surplus gave way.
    s.check(
        metric(&s, "prewarmed", "a")? >= 1.0 && metric(&s, "prewarmed", "b")? >= 1.0,
        "a function got no waiting container within the budget",
    )?;
    s.expect_hello(a, "/a")?;
    s.expect_hello(b, "/b")?;
    s.check(
        s.metric_total("prewarmed_requests_total") == 2.0,
        "both requests should have been warm hits",
    )
}
