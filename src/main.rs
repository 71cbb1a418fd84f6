//! `builder`: the command line. Parsing of arguments and rendering only; the
//! work is done by the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser, Debug)]
#[command(name = "builder", version, about = "A daemonless container image builder")]
pub(crate) struct Cli {
    /// Root of the store (an OCI image layout).
    #[arg(long, global = true, env = "BUILDER_ROOT", default_value = "/var/lib/builder")]
    pub(crate) root: std::path::PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Inspect how builder reads a Dockerfile.
    #[command(subcommand)]
    Debug(cmd::debug::DebugCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Debug(c) => cmd::debug::run(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
