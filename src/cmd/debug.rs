//! `builder debug ast|graph`: show how a Dockerfile is read.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum DebugCommand {
    /// Print BuildKit's AST dump of a Dockerfile.
    Ast {
        /// The Dockerfile.
        file: std::path::PathBuf,
    },
}

pub(crate) fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::Ast { file } => {
            anyhow::bail!("debug ast {}: the parser is not wired yet", file.display())
        }
    }
}
