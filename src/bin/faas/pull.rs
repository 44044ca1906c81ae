//! `faas new NAME --image REF`: has the daemon pull REF from an OCI registry
//! (`POST /api/pull`) and shows the download; the answer is one JSON object per line, a
//! progress step each, then the outcome.

use std::io::{self, BufRead, IsTerminal};

use faasd::api::{ConfigChange, PullRequest};
use serde_json::Value;

use crate::client::{msg, snippet, CliError, Client};
use crate::new::progress_bar;

/// Returns the deployed function's address; `config` is applied with the deploy.
pub fn pull(
    client: &Client,
    name: &str,
    image: &str,
    config: &ConfigChange,
) -> Result<String, CliError> {
    let mut req = client
        .agent
        .post(client.url("/api/pull"))
        .header("Content-Type", "application/json");
    if let Some(a) = client.auth() {
        req = req.header("Authorization", a);
    }
    let body = serde_json::to_string(&PullRequest {
        name: name.to_string(),
        image: image.to_string(),
        config: config.clone(),
    })
    .expect("a PullRequest always serializes");
    let resp = req.send(body).map_err(|e| client.transport_error(e))?;
    if !resp.status().is_success() {
        client.answer::<Value>(Ok(resp))?;
        return Err(msg("faasd refused the pull"));
    }
    let terminal = io::stderr().is_terminal();
    let bar = progress_bar(None, terminal);
    bar.set_message(format!("pulling {image}"));
    let mut pulled = 0;
    for line in io::BufReader::new(resp.into_body().into_reader()).lines() {
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
            return Err(msg(e.as_str().unwrap_or_default()));
        } else if let Some(done) = v.get("deployed") {
            bar.finish_and_clear();
            if !terminal {
                eprintln!("Pulled {image} ({})", indicatif::HumanBytes(pulled));
            }
            let ip = done
                .get("ip")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            return ip
                .map(str::to_string)
                .ok_or_else(|| msg("faasd's answer has no \"ip\""));
        }
    }
    bar.finish_and_clear();
    Err(msg("faasd ended the pull without saying how it went"))
}
