//! `builder`: the command line. Parsing of arguments and rendering only; the
//! work is done by the library crates.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

/// mimalloc: Dockerfile compilation and layer work allocate many small,
/// short-lived objects, where it is markedly faster than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "builder",
    version,
    about = "A daemonless container image builder"
)]
pub(crate) struct Cli {
    /// Root of the store (an OCI image layout).
    #[arg(
        long,
        global = true,
        env = "BUILDER_ROOT",
        default_value = "/var/lib/builder"
    )]
    pub(crate) root: std::path::PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Inspect how builder reads a Dockerfile.
    #[command(subcommand)]
    Debug(cmd::debug::DebugCommand),
    /// List images.
    Images(cmd::images::ImagesArgs),
    /// Create a name that refers to an image.
    Tag(cmd::tag::TagArgs),
    /// Remove image names (blobs stay until prune).
    Rmi(cmd::rmi::RmiArgs),
    /// Show an image's manifest, config, digest and ID as JSON.
    Inspect(cmd::inspect::InspectArgs),
    /// Load images from an OCI layout tarball or a docker archive.
    Load(cmd::load::LoadArgs),
    /// Save images to a tarball (an OCI layout that docker load reads too).
    Save(cmd::save::SaveArgs),
    /// Run a command in a new container from an image of the local store.
    Run(cmd::run::RunArgs),
    /// Build an image from a Dockerfile.
    Build(cmd::build::BuildArgs),
    /// Show the disk space used by images, build cache and cache mounts.
    Du(cmd::du::DuArgs),
    /// Remove build cache (images and what they need are kept).
    Prune(cmd::prune::PruneArgs),
    /// Download an image from a registry.
    Pull(cmd::pull::PullArgs),
    /// Upload an image to a registry.
    Push(cmd::push::PushArgs),
    /// Log in to a registry (credentials go to docker's config.json).
    Login(cmd::login::LoginArgs),
    /// Log out from a registry.
    Logout(cmd::login::LogoutArgs),
    /// Serve a build cache shared by a team (OCI distribution API).
    CacheServer(cmd::cache_server::CacheServerArgs),
    /// Internal: deletes what the automatic cap after a build moved away,
    /// in the background (see cmd::prune::auto).
    #[command(name = cmd::prune::REAPER_COMMAND, hide = true)]
    RemoveTrash(cmd::prune::RemoveTrashArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Debug(c) => cmd::debug::run(c),
        Command::Images(a) => cmd::images::run(&cli.root, a),
        Command::Tag(a) => cmd::tag::run(&cli.root, a),
        Command::Rmi(a) => cmd::rmi::run(&cli.root, a),
        Command::Inspect(a) => cmd::inspect::run(&cli.root, a),
        Command::Load(a) => cmd::load::run(&cli.root, a),
        Command::Save(a) => cmd::save::run(&cli.root, a),
        Command::Run(a) => cmd::run::run(&cli.root, a),
        Command::Build(a) => cmd::build::run(&cli.root, a),
        Command::Du(a) => cmd::du::run(&cli.root, a),
        Command::Prune(a) => cmd::prune::run(&cli.root, a),
        Command::Pull(a) => cmd::pull::run(&cli.root, a),
        Command::Push(a) => cmd::push::run(&cli.root, a),
        Command::Login(a) => cmd::login::login(&cli.root, a),
        Command::Logout(a) => cmd::login::logout(&cli.root, a),
        Command::CacheServer(a) => cmd::cache_server::run(a),
        Command::RemoveTrash(a) => cmd::prune::remove_trash(&cli.root, a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
