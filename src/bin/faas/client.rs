//! The connection to faasd's control API: base URL, token, typed calls (the bodies are
//! `faasd::api`'s types), and the daemon's errors turned into one message.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use faasd::api::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::http::Response;
use ureq::{Agent, Body};

/// Largest answer we are willing to read from the daemon (a `list` of many functions).
const MAX_ANSWER: u64 = 64 << 20;

#[derive(Debug, PartialEq)]
pub enum CliError {
    /// The daemon answered with an error (its message), or something else went wrong locally.
    Msg(String),
    /// No answer from the daemon at all.
    Unreachable { url: String, why: String },
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Msg(m) => f.write_str(m),
            CliError::Unreachable { url, why } => write!(f, "cannot reach faasd at {url}: {why}"),
        }
    }
}

impl std::error::Error for CliError {}

pub fn msg(m: impl Into<String>) -> CliError {
    CliError::Msg(m.into())
}

/// Prints one line on stdout; a closed pipe (`faas list | head -1`) is not an error.
pub fn say(line: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(msg(format!("writing stdout: {e}"))),
        _ => Ok(()),
    }
}

pub fn read_token(file: Option<&Path>, env: Option<String>) -> Result<Option<String>, CliError> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| msg(format!("cannot read token file {}: {e}", path.display())))?,
        None => env.unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        if let Some(path) = file {
            return Err(msg(format!("token file {} is empty", path.display())));
        }
        return Ok(None);
    }
    Ok(Some(token.to_string()))
}

/// `--url` without a trailing slash; a bare `host:port` means http.
pub fn normalize_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// Refuses a `--url` that is not `http(s)://host[:port]`, before any connection attempt.
pub fn check_base(base: &str) -> Result<(), CliError> {
    let bad = |why: &str| msg(format!("invalid --url {base:?}: {why}"));
    let uri: ureq::http::Uri = base.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(())
}

/// Percent-encodes a function name for use as one path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/api/functions/<name><rest>` with the name encoded.
pub fn function_path(name: &str, rest: &str) -> String {
    format!("/api/functions/{}{rest}", encode_segment(name))
}

pub struct Client {
    pub agent: Agent,
    pub base: String,
    token: Option<String>,
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Self {
        let config = Agent::config_builder()
            // Read 4xx/5xx bodies ourselves: they carry the daemon's message.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            // faasd answers `Expect: 100-continue` as soon as its handler starts reading; a
            // server that ignores it costs this delay once per upload.
            .timeout_await_100(Some(Duration::from_secs(2)))
            .user_agent(concat!("faas/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.new_agent(),
            base: normalize_base(url),
            token,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The `Authorization` header's value, when there is a token.
    pub fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let mut req = self.agent.get(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.answer(req.call())
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let mut req = self.agent.delete(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.answer(req.call())
    }

    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        self.send_json(self.agent.patch(self.url(path)), body)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        self.send_json(self.agent.post(self.url(path)), body)
    }

    fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: &B,
    ) -> Result<T, CliError> {
        let json = serde_json::to_vec(body).map_err(|e| msg(format!("encoding: {e}")))?;
        let mut req = req.header("Content-Type", "application/json");
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.answer(req.send(&json[..]))
    }

    /// Turns ureq's outcome into the daemon's typed answer, or the daemon's error message.
    pub fn answer<T: DeserializeOwned>(
        &self,
        result: Result<Response<Body>, ureq::Error>,
    ) -> Result<T, CliError> {
        let resp = result.map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        let text = resp
            .into_body()
            .into_with_config()
            .limit(MAX_ANSWER)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| msg(format!("reading faasd's answer: {}", describe(&e))))?;
        if !status.is_success() {
            return Err(msg(error_message(
                status.as_u16(),
                status.canonical_reason(),
                &text,
            )));
        }
        serde_json::from_str(&text).map_err(|e| {
            msg(format!(
                "faasd answered HTTP {} with something this faas does not understand ({e}): {}",
                status.as_u16(),
                snippet(&text)
            ))
        })
    }

    pub fn transport_error(&self, e: ureq::Error) -> CliError {
        match e {
            ureq::Error::BadUri(u) => msg(format!("invalid --url {:?}: {u}", self.base)),
            ureq::Error::Http(e) => msg(format!("cannot build the request: {e}")),
            e => CliError::Unreachable {
                url: self.base.clone(),
                why: describe(&e),
            },
        }
    }
}

/// ureq's errors, without its `io:`-style prefixes where the cause speaks for itself.
pub fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        e => e.to_string(),
    }
}

/// The message of a failed call: the daemon's `{"error": ...}`, else its text, else the status.
pub fn error_message(status: u16, reason: Option<&str>, body: &str) -> String {
    if let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(body) {
        if !error.is_empty() {
            return error;
        }
    }
    let text = body.trim();
    let is_json = text.starts_with('{') && serde_json::from_str::<serde_json::Value>(text).is_ok();
    if text.is_empty() || is_json {
        let reason = reason.map(|r| format!(" {r}")).unwrap_or_default();
        if text.is_empty() {
            format!("faasd answered HTTP {status}{reason}")
        } else {
            format!("faasd answered HTTP {status}{reason}: {}", snippet(text))
        }
    } else {
        snippet(text)
    }
}

pub fn snippet(text: &str) -> String {
    const MAX: usize = 2000;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_normalization() {
        assert_eq!(
            normalize_base("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(normalize_base("127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(
            normalize_base("https://faas.example/"),
            "https://faas.example"
        );
    }

    #[test]
    fn base_url_checks() {
        assert!(check_base("http://127.0.0.1:8080").is_ok());
        assert!(check_base("https://faas.example").is_ok());
        assert!(check_base("http://[bad").is_err());
        assert!(check_base("ftp://host").is_err());
    }

    #[test]
    fn names_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("hello-world_1.x"), "hello-world_1.x");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(encode_segment("../x"), "..%2Fx");
        assert_eq!(
            function_path("a/b", "/config"),
            "/api/functions/a%2Fb/config"
        );
    }

    #[test]
    fn token_sources() {
        assert_eq!(read_token(None, None).unwrap(), None);
        assert_eq!(read_token(None, Some("  ".into())).unwrap(), None);
        assert_eq!(
            read_token(None, Some("s3cret\n".into())).unwrap(),
            Some("s3cret".into())
        );
        let dir = std::env::temp_dir().join(format!("faas-token-test-{}", std::process::id()));
        std::fs::write(&dir, "fromfile\n").unwrap();
        assert_eq!(
            read_token(Some(&dir), Some("fromenv".into())).unwrap(),
            Some("fromfile".into()),
            "--token-file wins over FAAS_TOKEN"
        );
        std::fs::write(&dir, "\n").unwrap();
        assert!(read_token(Some(&dir), None).is_err());
        std::fs::remove_file(&dir).unwrap();
        assert!(read_token(Some(Path::new("/nonexistent/token")), None).is_err());
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            error_message(404, Some("Not Found"), r#"{"error":"no function named x"}"#),
            "no function named x"
        );
        assert_eq!(
            error_message(502, Some("Bad Gateway"), "upstream down\n"),
            "upstream down"
        );
        assert_eq!(
            error_message(500, Some("Internal Server Error"), ""),
            "faasd answered HTTP 500 Internal Server Error"
        );
        assert_eq!(
            error_message(400, None, r#"{"detail":"x"}"#),
            r#"faasd answered HTTP 400: {"detail":"x"}"#
        );
    }

    #[test]
    fn cli_errors_display() {
        let e = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            why: "Connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot reach faasd at http://127.0.0.1:1: Connection refused"
        );
    }
}
