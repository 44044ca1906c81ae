//! `faas ip NAME`: the bare address (`GET /api/ip/<name>`).

use faasd::api::FunctionIp;

use crate::client::{encode_segment, say, CliError, Client};

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    pub name: String,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let answer: FunctionIp = client.get(&format!("/api/ip/{}", encode_segment(&args.name)))?;
    say(&answer.ip.to_string())
}
