//! `faas new NAME [-f TAR] [config flags]` (or `--image REF`, see pull.rs): streams a `docker save` tarball to
//! `POST /api/new`, with the function's configuration in the `X-Function-Config` header.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use faasd::api::{ConfigChange, Deployed, CONFIG_HEADER, IMAGE_NAME_HEADER};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ureq::SendBody;

use crate::client::{msg, say, CliError, Client};
use crate::config::ConfigFlags;

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    pub name: String,
    /// Read the tarball from FILE instead of stdin ("-" is stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Have the daemon pull REF from an OCI registry instead (e.g. host:5000/app:1).
    #[arg(long, value_name = "REF", conflicts_with = "file")]
    pub image: Option<String>,
    #[command(flatten)]
    pub config: ConfigFlags,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let change = args.config.change(Vec::new())?;
    if let Some(image) = &args.image {
        let ip = crate::pull::pull(client, &args.name, image, &change)?;
        return say(&format!("Deployed {} at {ip}", args.name));
    }
    let done = deploy(client, &args.name, args.file.as_deref(), &change)?;
    say(&format!("Deployed {} at {}", done.name, done.ip))
}

/// Streams the tarball from `file` (or stdin) to `/api/new`.
pub fn deploy(
    client: &Client,
    name: &str,
    file: Option<&Path>,
    change: &ConfigChange,
) -> Result<Deployed, CliError> {
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

    let mut req = client
        .agent
        .post(client.url("/api/new"))
        .header(IMAGE_NAME_HEADER, name)
        .header("Content-Type", "application/x-tar")
        // Lets the daemon refuse (bad name, bad configuration, too large, no token)
        // before the upload.
        .header("Expect", "100-continue");
    if !change.is_empty() {
        req = req.header(CONFIG_HEADER, config_header(change));
    }
    if let Some(a) = client.auth() {
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
    client.answer(result)
}

/// The change as JSON in plain ASCII (non-ASCII escaped as `\uXXXX`): header values
/// beyond ASCII do not survive every proxy.
fn config_header(change: &ConfigChange) -> String {
    let json = serde_json::to_string(change).expect("a ConfigChange always serializes");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // Non-ASCII only occurs inside JSON strings, where \u escapes are valid.
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
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

pub fn progress_bar(len: Option<u64>, visible: bool) -> ProgressBar {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_header_is_ascii_json_of_the_change() {
        let change = ConfigChange {
            env: [("GREETING".to_string(), "héllo 🦀".to_string())].into(),
            memory_mb: Some(64),
            ..Default::default()
        };
        let h = config_header(&change);
        assert!(h.is_ascii(), "{h}");
        assert_eq!(serde_json::from_str::<ConfigChange>(&h).unwrap(), change);
    }
}
