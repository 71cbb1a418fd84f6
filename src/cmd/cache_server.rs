//! `builder cache-server`: serve a build cache to a team over the OCI
//! distribution API (see `cache::cacheserver`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cache::cacheserver::{self, Config, Tokens};
use cache::gc;
use clap::Args;

#[derive(Args, Debug)]
pub(crate) struct CacheServerArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free one; the
    /// address is printed as `listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Directory of the cache (an OCI image layout; created if missing).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// File of tokens, one `ro TOKEN` or `rw TOKEN` a line. Clients send
    /// them as `Authorization: Bearer TOKEN` or as a basic-auth password.
    /// Required to listen on a non-loopback address.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Keep the cache under this size (10GB, 512MiB) by evicting the least
    /// recently used entries.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
    /// Keep blobs that no manifest names yet (a push in progress) at least
    /// this many seconds before they may be evicted.
    #[arg(long, value_name = "SECONDS", default_value_t = 600, hide = true)]
    upload_grace: u64,
    /// Log one line per request.
    #[arg(short, long)]
    verbose: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    gc::parse_size(s).map_err(|e| e.to_string())
}

pub(crate) fn run(args: CacheServerArgs) -> anyhow::Result<ExitCode> {
    let tokens = args
        .token_file
        .as_deref()
        .map(Tokens::load)
        .transpose()
        .context("cannot use the token file")?;
    let mut config = Config::new(args.listen, args.store);
    config.tokens = tokens;
    config.max_size = args.max_size;
    config.verbose = args.verbose;
    config.upload_grace = Duration::from_secs(args.upload_grace);
    cacheserver::serve(config)?;
    Ok(ExitCode::SUCCESS)
}
