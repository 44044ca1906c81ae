//! `faas new NAME [-f TAR] [config flags]` (or `--image REF`, see pull.rs): streams a `docker save` tarball to
//! `POST /api/new`, the function's configuration (secrets included) at the start of the
//! body, its length in `X-Function-Config-Length`.

use std::fs::File;
use std::io::{self, Cursor, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use faasd::api::{ConfigChange, Deployed, CONFIG_LENGTH_HEADER, IMAGE_NAME_HEADER};
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
    let change = args.config.change(Vec::new(), Vec::new())?;
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

    // The configuration goes first in the body: secrets never travel in a header.
    let config = match change.is_empty() {
        true => Vec::new(),
        false => serde_json::to_vec(change).expect("a ConfigChange always serializes"),
    };
    let config_len = config.len();
    let len = len.map(|n| n + config_len as u64);
    let bar = progress_bar(len, io::stderr().is_terminal());
    let mut upload = Upload {
        inner: Box::new(Cursor::new(config).chain(source)),
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
    if config_len > 0 {
        req = req.header(CONFIG_LENGTH_HEADER, config_len);
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
