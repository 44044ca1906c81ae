//! The gateway port (issue 15) through the real faasd binary: routing by Host and by path,
//! the handler reading the untouched request, 404s from faasd, and the head's bounds in
//! size and time (slowloris), none of which may cost a container. The gateway listens on
//! 127.0.n.1 inside the harness's private network namespace.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::e2e::{exchange, Reply, Setup, Via, SLACK};
use crate::request_security::metric;
use crate::support::{image, TestResult};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test("gateway::routes_by_host_and_by_path", routes),
        Trial::test("gateway::unknown_function_is_a_404_from_faasd", unknown),
        Trial::test("gateway::head_bounded_in_size_and_time", head_limits),
    ]
}

const DOMAIN: &str = "fn.test";

/// A faasd with a gateway on 127.0.n.1:8081 and `flags`.
fn setup(flags: &[&str]) -> Result<(Setup, String), Failed> {
    let mut s = Setup::new(flags)?;
    let gateway = format!("127.0.{}.1:8081", s.n);
    // No containers started ahead: what is left after the requests is a leak.
    s.add_flags(&[
        "--gateway",
        &gateway,
        "--gateway-domain",
        DOMAIN,
        "--prewarm",
        "0",
    ]);
    Ok((s, gateway))
}

/// `head` (request line and headers, without the blank line) sent to the gateway.
fn send(gateway: &str, head: &str) -> Result<Reply, Failed> {
    Ok(exchange(
        gateway,
        format!("{head}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?)
}

/// Fails unless `r` is the test handler's answer to exactly `request_line`.
fn handled(s: &Setup, r: &Reply, request_line: &str, what: &str) -> TestResult {
    s.check(
        r.status() == Some(200)
            && r.body().contains("Hello from FaaS handler!")
            && r.body().lines().any(|l| l == request_line),
        format!("{what}: expected the handler to read {request_line:?}, got {r}"),
    )
}

/// Both routing modes, with a control API token set (which the gateway ignores): each
/// handler reads the request exactly as the client sent it, `/function/<name>/` included.
fn routes() -> TestResult {
    let (s, gw) = setup(&[])?;
    let token = s.state().with_file_name("token");
    std::fs::write(&token, "s3cret\n")?;
    let mut s = s;
    s.add_flags(&["--token-file", token.to_str().unwrap()]);
    let _d = s.start()?;
    for (name, file) in [
        ("hello", "test-handler.tar"),
        ("probe", "test-handler-probe.tar"),
    ] {
        let body = std::fs::read(image(file)?)?;
        let head = format!(
            "POST /api/new HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nX-Image-Name: {name}\r\n\
             Content-Length: {}",
            body.len()
        );
        let r = s.control(&head, &body)?;
        s.check(r.status() == Some(200), format!("deploying {name}: {r}"))?;
    }

    let line = "GET /some/path?q=1 HTTP/1.1";
    let r = send(&gw, &format!("{line}\r\nHost: hello.{DOMAIN}"))?;
    handled(&s, &r, line, "by Host")?;
    s.check(
        !r.body().contains("sid="),
        format!("hello answered as probe: {r}"),
    )?;
    let r = send(&gw, &format!("{line}\r\nHost: probe.FN.test:8081"))?;
    handled(&s, &r, line, "by Host with a port, domain in capitals")?;
    s.check(
        r.body().contains("sid="),
        format!("probe's answer lacks its report: {r}"),
    )?;

    let line = "GET /function/hello/sub/dir?x=1 HTTP/1.1";
    let r = send(&gw, &format!("{line}\r\nHost: {gw}"))?;
    handled(&s, &r, line, "by path")?;
    let line = "GET /function/probe HTTP/1.0";
    let r = send(&gw, line)?;
    handled(&s, &r, line, "by path, HTTP/1.0 without Host")?;
    s.check(
        r.body().contains("sid="),
        format!("probe's answer lacks its report: {r}"),
    )?;

    // The gateway is for functions only: the control API is neither there nor open.
    let r = send(&gw, "GET /api/list HTTP/1.1")?;
    s.check(
        r.status() == Some(404),
        format!("/api/list on the gateway: {r}"),
    )?;
    let r = s.control("GET /api/list HTTP/1.1", b"")?;
    s.check(
        r.status() == Some(401),
        format!("the control API without token: {r}"),
    )?;
    let r = send(&gw, "GET /healthz HTTP/1.1")?;
    s.check(
        r.status() == Some(200),
        format!("/healthz on the gateway: {r}"),
    )?;
    // The loopback-IP model stays as it was.
    s.expect_hello(s.ip(10), "/direct")?;
    s.check_no_request_left()
}

/// Unknown names and paths get faasd's 404 and start no container.
fn unknown() -> TestResult {
    let (s, gw) = setup(&[])?;
    let _d = s.start()?;
    s.deploy("hello", "test-handler.tar", Via::File)?;
    for (head, says) in [
        (
            format!("GET / HTTP/1.1\r\nHost: nope.{DOMAIN}"),
            "no function named \"nope\"",
        ),
        (
            "GET /function/nope/x HTTP/1.1".to_string(),
            "no function named \"nope\"",
        ),
        (
            "GET /index.html HTTP/1.1\r\nHost: elsewhere".to_string(),
            "/function/<name>/",
        ),
    ] {
        let r = send(&gw, &head)?;
        s.check(
            r.status() == Some(404) && r.body().contains(says),
            format!("{head:?}: expected a 404 saying {says:?}, got {r}"),
        )?;
    }
    s.check(
        metric(
            &s,
            "faasd_gateway_closed_total{reason=\"unknown_function\"}",
        )? == 2.0
            && metric(&s, "faasd_gateway_closed_total{reason=\"no_route\"}")? == 1.0,
        "the 404s are not counted in /metrics",
    )?;
    s.check(
        metric(&s, "faasd_requests_total{function=\"hello\"}")? == 0.0,
        "a 404 started a container",
    )?;
    s.check_no_request_left()
}

/// How long the gateway let a client trickle a never-ending head, one byte every 100 ms,
/// before it closed the connection (None: still open after `give_up`).
fn trickle(gw: &str, give_up: Duration) -> std::io::Result<Option<Duration>> {
    let mut c = TcpStream::connect(gw)?;
    let start = Instant::now();
    let head = b"GET /function/hello/ HTTP/1.1\r\nX-Slow: ";
    for i in 0.. {
        let byte = head.get(i).copied().unwrap_or(b'a');
        if c.write_all(&[byte]).is_err() {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > give_up {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

/// Slowloris (silent and trickling clients) is closed at --header-timeout whatever it
/// sends, counted, and starts no container while a real request is served beside it; a
/// head over the size bound gets 431, garbage 400.
fn head_limits() -> TestResult {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let (s, gw) = setup(&["--header-timeout", "2"])?;
    let _d = s.start()?;
    s.deploy("hello", "test-handler.tar", Via::File)?;

    let trickling: Vec<_> = (0..4)
        .map(|_| {
            let gw = gw.clone();
            thread::spawn(move || trickle(&gw, TIMEOUT + SLACK))
        })
        .collect();
    let silent: Vec<_> = (0..4)
        .map(|_| -> Result<(TcpStream, Instant), Failed> {
            let c = TcpStream::connect(&gw)?;
            c.set_read_timeout(Some(TIMEOUT + SLACK))?;
            Ok((c, Instant::now()))
        })
        .collect::<Result<_, _>>()?;
    // Served beside them, at once.
    let line = "GET /function/hello/ HTTP/1.1";
    let r = send(&gw, line)?;
    handled(&s, &r, line, "beside slow clients")?;
    s.check(
        r.took < TIMEOUT,
        format!("the request waited for the slow clients: {r}"),
    )?;

    for (mut c, start) in silent {
        let mut buf = [0u8; 64];
        let end = c.read(&mut buf);
        let took = start.elapsed();
        s.check(
            matches!(end, Ok(0) | Err(_))
                && took >= TIMEOUT - Duration::from_millis(200)
                && took < TIMEOUT + SLACK,
            format!("a silent client: {end:?} after {took:?} (header timeout {TIMEOUT:?})"),
        )?;
    }
    for t in trickling {
        let closed = t.join().map_err(|_| "trickling thread panicked")??;
        s.check(
            closed.is_some_and(|took| took >= TIMEOUT - Duration::from_millis(200)),
            format!("a trickling client (one byte per 100 ms) was closed after {closed:?}, not at {TIMEOUT:?}"),
        )?;
    }

    let big = format!("{line}\r\nX-Big: {}", "a".repeat(20 << 10));
    let r = send(&gw, &big)?;
    s.check(r.status() == Some(431), format!("a 20 KiB head: {r}"))?;
    let r = exchange(&gw, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")?;
    s.check(r.status() == Some(400), format!("a TLS hello: {r}"))?;

    s.check(
        metric(&s, "faasd_gateway_closed_total{reason=\"head_timeout\"}")? == 8.0
            && metric(&s, "faasd_gateway_closed_total{reason=\"head_too_large\"}")? == 1.0
            && metric(&s, "faasd_gateway_closed_total{reason=\"malformed\"}")? == 1.0,
        "the closed heads are not counted in /metrics",
    )?;
    s.check(
        metric(&s, "faasd_requests_total{function=\"hello\"}")? == 1.0,
        "a slow, large or malformed head started a container",
    )?;
    s.check_no_request_left()
}
