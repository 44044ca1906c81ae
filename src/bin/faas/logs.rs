//! `faas logs NAME [-f] [--since 5m|TIME] [--tail N]`: the function's handler output, one
//! line each as `TIME REQUEST STREAM TEXT` (`GET /api/functions/<name>/logs`).

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use faasd::api::LogLine;

use crate::client::{error_message, function_path, msg, say, snippet, CliError, Client};

/// Longest answer line read: far above the daemon's longest (a 16 KiB piece, escaped).
const MAX_LINE: u64 = 1 << 20;

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    pub name: String,
    /// Keep printing new lines until interrupted (or the function is removed).
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines since then: a duration ago (`90s`, `5m`, `1h30m`) or a time
    /// (`2026-01-02T03:04:05Z`).
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<u64>,
    /// Only the last N lines (then, with -f, the new ones).
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
}

/// `--since` as seconds since the Unix epoch.
fn parse_since(s: &str) -> Result<u64, String> {
    let at = match humantime::parse_duration(s) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{s:?} is before the Unix epoch"))?,
        Err(_) => humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("{s:?} is neither a duration (5m, 1h30m) nor a time (2026-01-02T03:04:05Z)")
        })?,
    };
    Ok(at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before the Unix epoch"))?
        .as_secs())
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let mut req = client
        .agent
        .get(client.url(&function_path(&args.name, "/logs")));
    if let Some(since) = args.since {
        req = req.query("since", since.to_string());
    }
    if let Some(tail) = args.tail {
        req = req.query("tail", tail.to_string());
    }
    if args.follow {
        req = req.query("follow", "true");
    }
    if let Some(a) = client.auth() {
        req = req.header("Authorization", a);
    }
    let resp = req.call().map_err(|e| client.transport_error(e))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.into_body().read_to_string().unwrap_or_default();
        return Err(msg(error_message(
            status.as_u16(),
            status.canonical_reason(),
            &text,
        )));
    }
    let mut body = BufReader::new(resp.into_body().into_reader());
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut body)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(|e| msg(format!("reading faasd's answer: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&buf);
        // Empty lines keep an idle follow stream alive.
        if text.trim().is_empty() {
            continue;
        }
        let line: LogLine = serde_json::from_str(&text).map_err(|e| {
            msg(format!(
                "faasd answered a log line this faas does not understand ({e}): {}",
                snippet(&text)
            ))
        })?;
        say(&format_line(&line))?;
    }
}

/// `TIME REQUEST STREAM TEXT`, a cut line marked.
fn format_line(l: &LogLine) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(l.ts_ms);
    let more = if l.cut { " [line continues]" } else { "" };
    format!(
        "{} {} {} {}{more}",
        humantime::format_rfc3339_millis(at),
        l.request,
        l.stream.as_str(),
        l.text
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use faasd::api::LogStream;

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let five_min = parse_since("5m").unwrap();
        assert!((now - 301..=now - 299).contains(&five_min), "{five_min}");
        assert_eq!(parse_since("2026-01-02T03:04:05Z").unwrap(), 1_767_323_045);
        for bad in ["soon", "5 parsecs", "-5m", ""] {
            assert!(parse_since(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_line_shows_time_request_stream_and_text() {
        let mut l = LogLine {
            ts_ms: 1_767_323_045_123,
            request: "r7".into(),
            stream: LogStream::Stderr,
            text: "boom".into(),
            cut: false,
        };
        assert_eq!(format_line(&l), "2026-01-02T03:04:05.123Z r7 stderr boom");
        l.cut = true;
        assert!(format_line(&l).ends_with("boom [line continues]"));
    }
}
