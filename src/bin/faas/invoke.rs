//! `faas invoke NAME [PATH] [-X METHOD] [-H 'K: V']... [-d DATA|@FILE] [-i]`: one HTTP
//! request to the function's own address and port (from `GET /api/functions/<name>`), its
//! answer's body on stdout. The control API's token is never sent to the function.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use std::net::Ipv4Addr;

use faasd::api::Description;
use ureq::http::{Method, Request, Response};
use ureq::{Agent, Body};

use crate::client::{describe, function_path, msg, CliError, Client};

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    pub name: String,
    /// The request's path (and query).
    #[arg(default_value = "/")]
    pub path: String,
    /// The method (default GET, or POST with -d).
    #[arg(short = 'X', long = "request", value_name = "METHOD", value_parser = parse_method)]
    pub method: Option<Method>,
    /// A request header; repeatable.
    #[arg(short = 'H', long = "header", value_name = "K: V", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The request body: DATA itself, @FILE for a file's contents, @- for stdin.
    #[arg(short = 'd', long = "data", value_name = "DATA|@FILE")]
    pub data: Option<String>,
    /// Print the status line and the headers before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let d: Description = client.get(&function_path(&args.name, ""))?;
    let at = Target {
        ip: d.ip,
        port: d.port,
    };
    let body = match &args.data {
        Some(d) => Some(read_data(d)?),
        None => None,
    };
    let request = build(&args, &at, body)?;
    let agent: Agent = Agent::config_builder()
        // The function's statuses are the answer, not errors of ours.
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_connect(Some(Duration::from_secs(10)))
        .user_agent(concat!("faas/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let resp = agent.run(request).map_err(|e| {
        msg(format!(
            "cannot reach function {} at {}:{}: {}",
            args.name,
            at.ip,
            at.port,
            describe(&e)
        ))
    })?;
    let status = resp.status();
    print_answer(resp, args.include).map_err(|e| msg(format!("reading the answer: {e}")))?;
    if status.is_server_error() {
        return Err(msg(format!(
            "{} answered HTTP {}",
            args.name,
            status_line(status)
        )));
    }
    Ok(())
}

/// Where the function listens.
struct Target {
    ip: Ipv4Addr,
    port: u16,
}

fn build(args: &Args, at: &Target, body: Option<Vec<u8>>) -> Result<Request<Vec<u8>>, CliError> {
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let method = args.method.clone().unwrap_or(match body {
        Some(_) => Method::POST,
        None => Method::GET,
    });
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}:{}{path}", at.ip, at.port));
    for (k, v) in &args.headers {
        req = req.header(k, v);
    }
    req.body(body.unwrap_or_default())
        .map_err(|e| msg(format!("invalid request: {e}")))
}

fn print_answer(resp: Response<Body>, include: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if include {
        writeln!(out, "{:?} {}\r", resp.version(), status_line(resp.status()))?;
        for (k, v) in resp.headers() {
            out.write_all(k.as_str().as_bytes())?;
            out.write_all(b": ")?;
            out.write_all(v.as_bytes())?;
            out.write_all(b"\r\n")?;
        }
        out.write_all(b"\r\n")?;
    }
    let copied = io::copy(&mut resp.into_body().into_reader(), &mut out);
    match copied.and_then(|_| out.flush()) {
        // `faas invoke f | head -1` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn status_line(s: ureq::http::StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
        .trim_end()
        .to_string()
}

/// `-d`: the data itself, `@FILE`, or `@-` for stdin.
fn read_data(d: &str) -> Result<Vec<u8>, CliError> {
    match d.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| msg(format!("reading the body from stdin: {e}")))?;
            Ok(buf)
        }
        Some(file) => {
            std::fs::read(Path::new(file)).map_err(|e| msg(format!("cannot read {file}: {e}")))
        }
        None => Ok(d.as_bytes().to_vec()),
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|e| format!("{s:?}: {e}"))
}

/// `K: V` (a header's own syntax; the value may be empty).
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not 'Name: value'"))?;
    let k = k.trim();
    ureq::http::HeaderName::from_bytes(k.as_bytes())
        .map_err(|_| format!("{k:?} is not a header name"))?;
    ureq::http::HeaderValue::from_str(v.trim())
        .map_err(|_| format!("the value of {k} is not a header value"))?;
    Ok((k.to_string(), v.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(path: &str) -> Args {
        Args {
            name: "f".into(),
            path: path.into(),
            method: None,
            headers: vec![],
            data: None,
            include: false,
        }
    }

    fn at() -> Target {
        Target {
            ip: "10.0.0.10".parse().unwrap(),
            port: 8080,
        }
    }

    #[test]
    fn headers_and_methods() {
        assert_eq!(parse_header("X-A: b c"), Ok(("X-A".into(), "b c".into())));
        assert_eq!(parse_header("X-A:"), Ok(("X-A".into(), "".into())));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: v").is_err());
        assert!(parse_header("X: a\u{7f}").is_err());
        assert_eq!(parse_method("put"), Ok(Method::PUT));
        assert!(parse_method("BAD METHOD").is_err());
    }

    #[test]
    fn request_defaults_get_or_post_with_data() {
        let r = build(&args("hello?x=1"), &at(), None).unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri(), "http://10.0.0.10:8080/hello?x=1");
        let r = build(&args("/"), &at(), Some(b"x".to_vec())).unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.body(), b"x");
        let mut a = args("/");
        a.method = Some(Method::DELETE);
        a.headers = vec![("X-T".into(), "1".into())];
        let r = build(&a, &at(), None).unwrap();
        assert_eq!(r.method(), Method::DELETE);
        assert_eq!(r.headers()["x-t"], "1");
    }

    #[test]
    fn data_sources() {
        assert_eq!(read_data("plain").unwrap(), b"plain");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("body");
        std::fs::write(&file, b"from file").unwrap();
        assert_eq!(
            read_data(&format!("@{}", file.display())).unwrap(),
            b"from file"
        );
        assert!(read_data("@/nonexistent/body")
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
