//! `builder debug ast|graph`: show how a Dockerfile is read.

use std::process::ExitCode;

use clap::Subcommand;

mod graph;

#[derive(Subcommand, Debug)]
pub(crate) enum DebugCommand {
    /// Print BuildKit's AST dump of a Dockerfile.
    Ast {
        /// The Dockerfile (`-` reads standard input).
        file: std::path::PathBuf,
    },
    /// Print the build graph of a Dockerfile (base images are not resolved).
    Graph {
        /// The Dockerfile, relative to the current directory (default: CONTEXT/Dockerfile; `-` reads stdin).
        #[arg(short = 'f', long = "file")]
        file: Option<std::path::PathBuf>,
        /// The stage to build (default: the last one).
        #[arg(long)]
        target: Option<String>,
        /// A build argument, `KEY=VALUE`, or `KEY` to take the value from the environment.
        #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
        build_args: Vec<String>,
        /// The platform to build for (default: linux/amd64).
        #[arg(long)]
        platform: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = graph::GraphFormat::Dot)]
        format: graph::GraphFormat,
        /// The build context directory.
        context: std::path::PathBuf,
    },
}

pub(crate) fn run(cmd: DebugCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DebugCommand::Graph {
            file,
            target,
            build_args,
            platform,
            format,
            context,
        } => graph::run(graph::GraphArgs {
            file,
            target,
            build_args,
            platform,
            format,
            context,
        }),
        DebugCommand::Ast { file } => {
            use anyhow::Context as _;
            use std::io::{Read as _, Write as _};
            let (shown, bytes) = if file.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .context("reading the Dockerfile from stdin")?;
                // As docker does for `-f -`, a Dockerfile read from stdin
                // is named `Dockerfile` in messages.
                ("Dockerfile".to_owned(), buf)
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
