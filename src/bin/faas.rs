//! `faas`: the command-line client of faasd's control API.
//!
//! ```text
//! docker save hello | faas new hello     # Deployed hello at 10.0.0.10
//! faas new hello -f hello.tar
//! faas new hello --image registry.example/hello:1   # the daemon pulls it
//! faas ip hello                          # 10.0.0.10
//! faas list [--json]
//! faas rm hello                          # Removed hello
//! ```
//!
//! Errors go to stderr as `faas: <message>` (the daemon's own message when it sent one) and
//! the exit status is 1.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use ureq::http::Response;
use ureq::{Agent, Body, SendBody};

const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Largest answer we are willing to read from the daemon (a `list` of many functions).
const MAX_ANSWER: u64 = 64 << 20;

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
    /// Deploy an image (`docker save` tarball, or a registry's) as function NAME.
    New {
        name: String,
        /// Read the tarball from FILE instead of stdin ("-" is stdin).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// Have the daemon pull REF from an OCI registry instead (e.g. host:5000/app:1).
        #[arg(long, value_name = "REF", conflicts_with = "file")]
        image: Option<String>,
    },
    /// Print the IP address of function NAME.
    Ip { name: String },
    /// List the deployed functions.
    #[command(visible_alias = "ls")]
    List {
        /// Print the daemon's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove function NAME.
    #[command(visible_alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, PartialEq)]
enum CliError {
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

fn msg(m: impl Into<String>) -> CliError {
    CliError::Msg(m.into())
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
        Command::New { name, file, image } => {
            let (ip, name) = match image {
                Some(image) => client.pull(&name, &image)?,
                None => client.deploy(&name, file.as_deref())?,
            };
            say(&format!("Deployed {name} at {ip}"))
        }
        Command::Ip { name } => {
            let v = client.get(&format!("/api/ip/{}", encode_segment(&name)))?;
            let ip = v.get("ip").map(display_value).filter(|s| !s.is_empty());
            say(&ip.ok_or_else(|| msg("faasd's answer has no \"ip\""))?)
        }
        Command::List { json } => {
            let v = client.get("/api/list")?;
            if json {
                let pretty = serde_json::to_string_pretty(&v).expect("a Value always serializes");
                say(&pretty)
            } else {
                let rows = list_rows(&v)?;
                say(format_table(&rows).trim_end_matches('\n'))
            }
        }
        Command::Rm { name } => {
            client.delete(&format!("/api/functions/{}", encode_segment(&name)))?;
            say(&format!("Removed {name}"))
        }
    }
}

/// Prints one line on stdout; a closed pipe (`faas list | head -1`) is not an error.
fn say(line: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(msg(format!("writing stdout: {e}"))),
        _ => Ok(()),
    }
}

fn read_token(file: Option<&Path>, env: Option<String>) -> Result<Option<String>, CliError> {
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
fn normalize_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// Refuses a `--url` that is not `http(s)://host[:port]`, before any connection attempt.
fn check_base(base: &str) -> Result<(), CliError> {
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
fn encode_segment(s: &str) -> String {
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

struct Client {
    agent: Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(url: &str, token: Option<String>) -> Self {
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

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    fn get(&self, path: &str) -> Result<Value, CliError> {
        let mut req = self.agent.get(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.answer(req.call())
    }

    fn delete(&self, path: &str) -> Result<Value, CliError> {
        let mut req = self.agent.delete(self.url(path));
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        self.answer(req.call())
    }

    /// Streams the tarball from `file` (or stdin) to `/api/new`; returns (ip, name).
    fn deploy(&self, name: &str, file: Option<&Path>) -> Result<(String, String), CliError> {
        let file = file.filter(|p| p.as_os_str() != "-");
        let (source, len, what): (Box<dyn Read>, Option<u64>, String) = match file {
            Some(path) => {
                let f = File::open(path)
                    .map_err(|e| msg(format!("cannot open {}: {e}", path.display())))?;
                let meta = f
                    .metadata()
                    .map_err(|e| msg(format!("cannot stat {}: {e}", path.display())))?;
                if meta.is_dir() {
                    return Err(msg(format!("{} is a directory", path.display())));
                }
                let len = meta.is_file().then_some(meta.len());
                (Box::new(f), len, path.display().to_string())
            }
            None => {
                let stdin = io::stdin();
                if stdin.is_terminal() {
                    return Err(msg("no image: pipe a `docker save` tarball on stdin \
                         (docker save IMAGE | faas new NAME) or pass -f FILE"));
                }
                (Box::new(stdin.lock()), None, "stdin".to_string())
            }
        };

        let bar = progress_bar(len, io::stderr().is_terminal());
        let mut upload = Upload {
            inner: source,
            bar: bar.clone(),
            error: None,
            sent: 0,
            done: false,
        };

        let mut req = self
            .agent
            .post(self.url("/api/new"))
            .header("X-Image-Name", name)
            .header("Content-Type", "application/x-tar")
            // Lets the daemon refuse (bad name, too large, no token) before the upload.
            .header("Expect", "100-continue");
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        if let Some(n) = len {
            // Sized rather than chunked when we know the size.
            req = req.header("Content-Length", n);
        }
        let result = req.send(SendBody::from_reader(&mut upload));
        bar.finish_and_clear();
        if let Some(e) = upload.error {
            return Err(msg(format!("reading the image from {what}: {e}")));
        }
        if let Err(ureq::Error::Io(e)) = &result {
            if upload.sent > 0 && !upload.done {
                // The daemon hung up mid-upload: it refused the image without reading it all.
                return Err(msg(format!(
                    "faasd closed the connection after {} of the image ({e}); it refused the \
                     upload part way, e.g. because the image is over its size limit",
                    indicatif::HumanBytes(upload.sent)
                )));
            }
        }
        let v = self.answer(result)?;
        let ip = v
            .get("ip")
            .map(display_value)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| msg("faasd's answer has no \"ip\""))?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(name)
            .to_string();
        Ok((ip, name))
    }

    /// Has the daemon deploy `image` from its registry, showing the download; returns
    /// (ip, name). The answer is a line per progress step, then the outcome.
    fn pull(&self, name: &str, image: &str) -> Result<(String, String), CliError> {
        let mut req = self
            .agent
            .post(self.url("/api/pull"))
            .header("Content-Type", "application/json");
        if let Some(a) = self.auth() {
            req = req.header("Authorization", a);
        }
        let result = req.send(serde_json::json!({ "name": name, "image": image }).to_string());
        let resp = result.map_err(|e| self.transport_error(e))?;
        if !resp.status().is_success() {
            self.answer(Ok(resp))?;
            return Err(msg("faasd refused the pull"));
        }
        let terminal = io::stderr().is_terminal();
        let bar = progress_bar(None, terminal);
        bar.set_message(format!("pulling {image}"));
        let mut pulled = 0;
        let lines = io::BufReader::new(resp.into_body().into_reader()).lines();
        for line in lines {
            let line = line.map_err(|e| msg(format!("reading faasd's answer: {e}")))?;
            let v: Value = serde_json::from_str(&line).map_err(|e| {
                msg(format!(
                    "faasd sent a line that is not JSON ({e}): {}",
                    snippet(&line)
                ))
            })?;
            if let Some(p) = v.get("progress") {
                pulled = p.get("bytes").and_then(Value::as_u64).unwrap_or(pulled);
                if let Some(total) = p.get("total").and_then(Value::as_u64) {
                    bar.set_length(total);
                }
                bar.set_position(pulled);
            } else if let Some(e) = v.get("error") {
                bar.finish_and_clear();
                return Err(msg(display_value(e)));
            } else if let Some(done) = v.get("deployed") {
                bar.finish_and_clear();
                if !terminal {
                    eprintln!("Pulled {image} ({})", indicatif::HumanBytes(pulled));
                }
                let ip = done.get("ip").map(display_value).filter(|s| !s.is_empty());
                let ip = ip.ok_or_else(|| msg("faasd's answer has no \"ip\""))?;
                return Ok((ip, name.to_string()));
            }
        }
        bar.finish_and_clear();
        Err(msg("faasd ended the pull without saying how it went"))
    }

    /// Turns ureq's outcome into the daemon's JSON, or the daemon's error message.
    fn answer(&self, result: Result<Response<Body>, ureq::Error>) -> Result<Value, CliError> {
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
                "faasd answered HTTP {} with something that is not JSON ({e}): {}",
                status.as_u16(),
                snippet(&text)
            ))
        })
    }

    fn transport_error(&self, e: ureq::Error) -> CliError {
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
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        e => e.to_string(),
    }
}

/// The message of a failed call: the daemon's `{"error": ...}`, else its text, else the status.
fn error_message(status: u16, reason: Option<&str>, body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        if let Some(m) = v.get("error").map(display_value).filter(|m| !m.is_empty()) {
            return m;
        }
    }
    let text = body.trim();
    if text.is_empty() || text.starts_with('{') && serde_json::from_str::<Value>(text).is_ok() {
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

fn snippet(text: &str) -> String {
    const MAX: usize = 2000;
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// A JSON value as a person reads it: strings without quotes, null as nothing.
fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The tarball on its way to the daemon: counts bytes for the bar and remembers a failure of
/// the source itself (as opposed to the connection).
struct Upload {
    inner: Box<dyn Read>,
    bar: ProgressBar,
    error: Option<io::Error>,
    sent: u64,
    done: bool,
}

impl Read for Upload {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(0) => {
                    self.done = true;
                    self.bar.set_message("sent, faasd is unpacking");
                    return Ok(0);
                }
                Ok(n) => {
                    self.sent += n as u64;
                    self.bar.inc(n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let err = io::Error::new(e.kind(), e.to_string());
                    self.error = Some(e);
                    return Err(err);
                }
            }
        }
    }
}

fn progress_bar(len: Option<u64>, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let style = match len {
        Some(_) => ProgressStyle::with_template(
            "{spinner} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .map(|s| s.progress_chars("=> ")),
        None => ProgressStyle::with_template("{spinner} {bytes} sent {bytes_per_sec} {msg}"),
    };
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// One line of `faas list`.
#[derive(Debug, PartialEq)]
struct Row {
    name: String,
    ip: String,
    command: String,
}

/// The rows of `faas list` from `GET /api/list`, sorted by name.
fn list_rows(v: &Value) -> Result<Vec<Row>, CliError> {
    let map = v.as_object().ok_or_else(|| {
        msg(format!(
            "faasd's list is not a JSON object: {}",
            snippet(&v.to_string())
        ))
    })?;
    let mut rows: Vec<Row> = map
        .iter()
        .map(|(name, f)| Row {
            name: name.clone(),
            ip: f.get("ip").map(display_value).unwrap_or_default(),
            command: match f.get("cmd") {
                Some(Value::Array(parts)) => parts
                    .iter()
                    .map(display_value)
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(other) => display_value(other),
                None => String::new(),
            },
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// An aligned Name/IP/Command table, one line per row, no trailing spaces.
fn format_table(rows: &[Row]) -> String {
    const HEAD: [&str; 3] = ["Name", "IP", "Command"];
    let width = |h: &str, f: &dyn Fn(&Row) -> &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .chain([h.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let w_name = width(HEAD[0], &|r| &r.name);
    let w_ip = width(HEAD[1], &|r| &r.ip);
    let mut out = String::new();
    let mut line = |a: &str, b: &str, c: &str| {
        let l = format!("{a:<w_name$}  {b:<w_ip$}  {c}");
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(HEAD[0], HEAD[1], HEAD[2]);
    for r in rows {
        line(&r.name, &r.ip, &r.command);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use serde_json::json;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("faas").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_new_with_and_without_file() {
        let cli = parse(&["new", "hello"]).unwrap();
        assert_eq!(
            cli.command,
            Command::New {
                name: "hello".into(),
                file: None,
                image: None
            }
        );
        let cli = parse(&["new", "hello", "-f", "img.tar"]).unwrap();
        assert_eq!(
            cli.command,
            Command::New {
                name: "hello".into(),
                file: Some("img.tar".into()),
                image: None
            }
        );
        let cli = parse(&["new", "--file", "img.tar", "hello"]).unwrap();
        assert_eq!(
            cli.command,
            Command::New {
                name: "hello".into(),
                file: Some("img.tar".into()),
                image: None
            }
        );
        assert!(parse(&["new"]).is_err(), "the name is required");
        let cli = parse(&["new", "hello", "--image", "r:5000/a:1"]).unwrap();
        assert_eq!(
            cli.command,
            Command::New {
                name: "hello".into(),
                file: None,
                image: Some("r:5000/a:1".into())
            }
        );
        assert!(parse(&["new", "hello", "--image", "a", "-f", "x"]).is_err());
    }

    #[test]
    fn parses_ip_list_rm() {
        assert_eq!(
            parse(&["ip", "f"]).unwrap().command,
            Command::Ip { name: "f".into() }
        );
        assert_eq!(
            parse(&["list"]).unwrap().command,
            Command::List { json: false }
        );
        assert_eq!(
            parse(&["list", "--json"]).unwrap().command,
            Command::List { json: true }
        );
        assert_eq!(
            parse(&["ls"]).unwrap().command,
            Command::List { json: false }
        );
        assert_eq!(
            parse(&["rm", "f"]).unwrap().command,
            Command::Rm { name: "f".into() }
        );
        assert!(parse(&["rm"]).is_err());
        assert!(parse(&[]).is_err(), "a subcommand is required");
        assert!(parse(&["frobnicate"]).is_err());
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
    fn table_is_sorted_and_aligned() {
        let v = json!({
            "zeta": {"ip": "10.0.0.11", "rootfs": "/r/zeta", "cmd": ["/bin/handler"]},
            "a": {"ip": "10.0.0.100", "rootfs": "/r/a", "cmd": ["python3", "-u", "/app/h.py"]},
            "middle-name": {"ip": "10.0.0.9", "cmd": []},
        });
        let table = format_table(&list_rows(&v).unwrap());
        let expected = "\
Name         IP          Command
a            10.0.0.100  python3 -u /app/h.py
middle-name  10.0.0.9
zeta         10.0.0.11   /bin/handler
";
        assert_eq!(table, expected);
        for line in table.lines() {
            assert_eq!(line, line.trim_end(), "no trailing spaces");
        }
    }

    #[test]
    fn empty_table_is_just_the_header() {
        let table = format_table(&list_rows(&json!({})).unwrap());
        assert_eq!(table, "Name  IP  Command\n");
    }

    #[test]
    fn table_tolerates_odd_entries() {
        let v = json!({
            "s": {"ip": "10.0.0.10", "cmd": "/bin/sh -c x"},
            "n": {"ip": null},
        });
        let rows = list_rows(&v).unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    name: "n".into(),
                    ip: "".into(),
                    command: "".into()
                },
                Row {
                    name: "s".into(),
                    ip: "10.0.0.10".into(),
                    command: "/bin/sh -c x".into()
                },
            ]
        );
        assert!(list_rows(&json!([1, 2])).is_err());
    }

    #[test]
    fn table_aligns_by_characters_not_bytes() {
        let rows = vec![
            Row {
                name: "héllo".into(),
                ip: "1".into(),
                command: "c".into(),
            },
            Row {
                name: "abcdef".into(),
                ip: "2".into(),
                command: "d".into(),
            },
        ];
        let t = format_table(&rows);
        let cols: Vec<usize> = t
            .lines()
            .map(|l| {
                l.char_indices()
                    .position(|(_, c)| c == '1' || c == '2' || c == 'I')
                    .unwrap()
            })
            .collect();
        assert!(cols.windows(2).all(|w| w[0] == w[1]), "{t}");
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
