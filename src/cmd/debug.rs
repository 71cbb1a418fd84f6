//! `builder debug ast|graph`: show how a Dockerfile is read.

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub(crate) enum DebugCommand {
    /// Print BuildKit's AST dump of a Dockerfile.
    Ast {
        /// The Dockerfile (`-` reads standard input).
        file: std::path::PathBuf,
    },
}

pub(crate) fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::Ast { file } => {
            use anyhow::Context as _;
            use std::io::{Read as _, Write as _};
            let (shown, bytes) = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading the Dockerfile from stdin")?;
                ("-".to_owned(), buf)
            } else {
                let buf =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                (file.display().to_string(), buf)
            };
            match frontend::parser::parse(&bytes) {
                Ok(ast) => {
                    std::io::stdout()
                        .lock()
                        .write_all(frontend::parser::dump(&ast).as_bytes())
                        .context("writing the dump")?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(err) => {
                    // Printed here rather than returned so that main does not
                    // prefix the `PATH:LINE:COL:` line with `error:`.
                    eprint!("{}", err.render(&shown, &bytes));
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
