//! `builder login [-u USER] [--password-stdin] [REGISTRY]` and
//! `builder logout [REGISTRY]`: credentials in docker's `config.json`
//! (`$DOCKER_CONFIG` honoured), or in its configured credential helper.
//! Login checks the credentials against the registry before storing them.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use cache::registry::credentials::{self, Credentials};
use clap::Args;

use super::pull::RegistryArgs;

#[derive(Args, Debug)]
pub(crate) struct LoginArgs {
    /// User name.
    #[arg(short, long)]
    username: Option<String>,
    /// Password (visible in the process list: prefer --password-stdin).
    #[arg(short, long)]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    registry: RegistryArgs,
    /// The registry (`host[:port]`); Docker Hub when omitted.
    server: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct LogoutArgs {
    /// The registry (`host[:port]`); Docker Hub when omitted.
    server: Option<String>,
}

/// `https://host:5000/v2/` or `host:5000` → `host:5000`, as docker accepts both.
fn registry_host(server: Option<&str>) -> String {
    let s = server.unwrap_or("docker.io");
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

fn prompt(label: &str) -> anyhow::Result<String> {
    eprint!("{label}: ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub(crate) fn login(_root: &Path, args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_host(args.server.as_deref());
    if args.password.is_some() && args.password_stdin {
        anyhow::bail!("--password and --password-stdin are mutually exclusive");
    }
    let interactive = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(u) => u,
        None if interactive && !args.password_stdin => prompt("Username")?,
        None => anyhow::bail!("a user name is needed: use -u USER"),
    };
    let password = if args.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .lock()
            .read_to_string_lossy(&mut s)
            .context("cannot read the password from standard input")?;
        s.trim_end_matches(['\r', '\n']).to_string()
    } else if let Some(p) = args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p
    } else if interactive {
        prompt("Password")?
    } else {
        anyhow::bail!("a password is needed: use --password-stdin")
    };
    if username.is_empty() || password.is_empty() {
        anyhow::bail!("user name and password must not be empty");
    }
    let creds = Credentials {
        username,
        secret: password,
    };
    let client = args.registry.client(None)?;
    client.set_credentials(&registry, creds.clone());
    client
        .ping(&registry)
        .with_context(|| format!("login to {registry} failed"))?;
    let place = credentials::store(&registry, &creds)?;
    eprintln!("credentials saved in {place}");
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn logout(_root: &Path, args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_host(args.server.as_deref());
    if credentials::erase(&registry)? {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `read_to_string` that keeps going on invalid UTF-8 (a password is bytes).
trait ReadLossy {
    fn read_to_string_lossy(&mut self, out: &mut String) -> std::io::Result<()>;
}

impl<R: std::io::Read> ReadLossy for R {
    fn read_to_string_lossy(&mut self, out: &mut String) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        self.read_to_end(&mut bytes)?;
        out.push_str(&String::from_utf8_lossy(&bytes));
        Ok(())
    }
}
