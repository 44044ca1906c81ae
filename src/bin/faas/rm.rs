//! `faas rm NAME` (`DELETE /api/functions/<name>`).

use faasd::api::Removed;

use crate::client::{function_path, say, CliError, Client};

#[derive(clap::Args, Debug, PartialEq)]
pub struct Args {
    pub name: String,
}

pub fn run(client: &Client, args: Args) -> Result<(), CliError> {
    let _: Removed = client.delete(&function_path(&args.name, ""))?;
    say(&format!("Removed {}", args.name))
}
