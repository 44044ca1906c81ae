//! Which function a request head on the gateway port is for: `Host: <name>.<domain>` when
//! a domain is configured and the host is under it, else the path prefix
//! `/function/<name>/`. The head is only read here, never rewritten: in path mode the
//! handler sees `/function/<name>/...` exactly as the client sent it.

/// Headers a head may carry; more is a malformed request (400).
const MAX_HEADERS: usize = 100;
/// The path prefix that names a function.
const PREFIX: &str = "/function/";

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Hand the connection to this function (it may not exist: the caller looks it up).
    Function(String),
    /// `GET /healthz` on the gateway itself, for load balancers.
    Health,
    /// Neither a function's host nor its path: what was asked, for the 404.
    Nowhere(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    Done(Route),
    /// Not an HTTP/1 request head (400), with httparse's reason.
    Malformed(String),
}

/// Routes the complete request head at the start of `bytes` (what has arrived so far).
pub fn parse(bytes: &[u8], domain: Option<&str>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(e) => Parsed::Malformed(e.to_string()),
        Ok(httparse::Status::Complete(_)) => {
            let host = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            let path = req.path.unwrap_or("");
            Parsed::Done(route(host.as_deref(), path, domain))
        }
    }
}

fn route(host: Option<&str>, path: &str, domain: Option<&str>) -> Route {
    if let Some(name) = domain.zip(host).and_then(|(d, h)| name_from_host(h, d)) {
        return Route::Function(name.to_string());
    }
    if let Some(rest) = path.strip_prefix(PREFIX) {
        let name = rest.split(['/', '?']).next().unwrap_or("");
        return match name {
            "" => Route::Nowhere(path.to_string()),
            name => Route::Function(name.to_string()),
        };
    }
    if path == "/healthz" {
        return Route::Health;
    }
    Route::Nowhere(path.to_string())
}

/// `<name>.<domain>[:port]` -> `<name>` (one label; the domain compared without regard to
/// case, the name as sent, since function names are case-sensitive).
fn name_from_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = host.trim();
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.strip_suffix('.').unwrap_or(host);
    let domain = domain.trim_matches('.');
    let split = host.len().checked_sub(domain.len() + 1)?;
    let (name, suffix) = host.split_at(split);
    (suffix.as_bytes()[0] == b'.'
        && suffix[1..].eq_ignore_ascii_case(domain)
        && !name.is_empty()
        && !name.contains('.'))
    .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(head: &str, domain: Option<&str>) -> Route {
        match parse(head.as_bytes(), domain) {
            Parsed::Done(r) => r,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn f(name: &str) -> Route {
        Route::Function(name.into())
    }

    #[test]
    fn host_under_the_domain_names_the_function() {
        let d = Some("fn.example");
        assert_eq!(
            done("GET / HTTP/1.1\r\nHost: hello.fn.example\r\n\r\n", d),
            f("hello")
        );
        assert_eq!(
            done("GET /x HTTP/1.1\r\nhost: hello.FN.Example:8081\r\n\r\n", d),
            f("hello")
        );
        assert_eq!(
            done("GET / HTTP/1.1\r\nHost: hello.fn.example.\r\n\r\n", d),
            f("hello")
        );
        // Not under the domain (or a deeper name): the path decides.
        assert_eq!(
            done("GET /function/b/ HTTP/1.1\r\nHost: a.other\r\n\r\n", d),
            f("b")
        );
        assert_eq!(
            done("GET / HTTP/1.1\r\nHost: a.b.fn.example\r\n\r\n", d),
            Route::Nowhere("/".into())
        );
        assert_eq!(
            done("GET / HTTP/1.1\r\nHost: xfn.example\r\n\r\n", d),
            Route::Nowhere("/".into())
        );
        // No domain configured: the Host header is not looked at.
        assert_eq!(
            done("GET / HTTP/1.1\r\nHost: hello.fn.example\r\n\r\n", None),
            Route::Nowhere("/".into())
        );
    }

    #[test]
    fn the_path_prefix_names_the_function() {
        assert_eq!(
            done("GET /function/hello/a/b?c HTTP/1.1\r\n\r\n", None),
            f("hello")
        );
        assert_eq!(
            done("GET /function/hello HTTP/1.1\r\n\r\n", None),
            f("hello")
        );
        assert_eq!(
            done("POST /function/hello?x=1 HTTP/1.0\r\n\r\n", None),
            f("hello")
        );
        assert_eq!(
            done("GET /function/ HTTP/1.1\r\n\r\n", None),
            Route::Nowhere("/function/".into())
        );
        assert_eq!(
            done("GET /functions/hello HTTP/1.1\r\n\r\n", None),
            Route::Nowhere("/functions/hello".into())
        );
        assert_eq!(done("GET /healthz HTTP/1.1\r\n\r\n", None), Route::Health);
    }

    #[test]
    fn incomplete_and_malformed_heads() {
        assert_eq!(
            parse(b"GET /function/a HTTP/1.1\r\nHost: x", None),
            Parsed::Partial
        );
        assert_eq!(parse(b"", None), Parsed::Partial);
        assert!(matches!(
            parse(b"\x16\x03\x01 hello\r\n\r\n", None),
            Parsed::Malformed(_)
        ));
    }
}
