//! `builder cache-server`: a build cache shared by a team, served over the
//! subset of the OCI distribution API (docker registry v2) that cache import
//! and export need, so that the same client talks to it or to any registry.
//!
//! Layout: [`auth`] (token file, bearer and basic credentials), `state`
//! (repository records, blob sizes and access times, LRU eviction) and `api`
//! (routing and the endpoint handlers). Blobs live in a [`Store`] at the
//! store directory, which is also an OCI image layout; upload sessions write
//! into its `tmp/` and enter it by the store's checked, atomic commit.

mod api;
pub mod auth;
mod state;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Store, StoreError};

pub use auth::{Access, TokenFileError, Tokens};
pub use state::StateError;

/// How long to wait for requests in flight after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Settings of a cache server.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST:PORT`; port 0 picks a free port (printed when listening).
    pub listen: String,
    /// The store directory.
    pub store: PathBuf,
    /// Tokens that clients must present; without them only loopback
    /// addresses may be listened on.
    pub tokens: Option<Tokens>,
    /// Keep blobs under this many bytes by LRU eviction.
    pub max_size: Option<u64>,
    /// Log one line per request to stderr.
    pub verbose: bool,
    /// Unreferenced blobs younger than this are never evicted: they are
    /// probably layers of a push whose manifest is still to come.
    pub upload_grace: Duration,
}

impl Config {
    pub fn new(listen: impl Into<String>, store: impl Into<PathBuf>) -> Config {
        Config {
            listen: listen.into(),
            store: store.into(),
            tokens: None,
            max_size: None,
            verbose: false,
            upload_grace: Duration::from_secs(600),
        }
    }
}

/// An error starting or running the cache server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid listen address {0:?}: expected HOST:PORT, like 127.0.0.1:5000")]
    BadAddress(String),
    #[error(
        "refusing to listen on {0} without --token-file: anyone who can reach it could read and overwrite the cache (listen on a loopback address such as 127.0.0.1, or give a token file)"
    )]
    NotLoopback(String),
    #[error("cannot open the store {path}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("another cache server is using the store {0}")]
    StoreBusy(PathBuf),
    #[error("cannot load the cache server's records in {path}")]
    State {
        path: PathBuf,
        #[source]
        source: StateError,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
}

/// Serves until SIGINT or SIGTERM, then finishes the requests in flight (for
/// at most a few seconds). Prints `listening on ADDR` to stderr once ready.
pub fn serve(config: Config) -> Result<(), ServerError> {
    let addrs: Vec<SocketAddr> = config
        .listen
        .to_socket_addrs()
        .map_err(|_| ServerError::BadAddress(config.listen.clone()))?
        .collect();
    let Some(addr) = addrs.first().copied() else {
        return Err(ServerError::BadAddress(config.listen.clone()));
    };
    if config.tokens.is_none() && !addrs.iter().all(|a| a.ip().is_loopback()) {
        return Err(ServerError::NotLoopback(config.listen.clone()));
    }
    let store = Store::open(&config.store).map_err(|source| ServerError::Store {
        path: config.store.clone(),
        source,
    })?;
    let _lock = store
        .try_lock_exclusive("cache-server")
        .map_err(|source| ServerError::Store {
            path: config.store.clone(),
            source,
        })?
        .ok_or_else(|| ServerError::StoreBusy(config.store.clone()))?;
    let state =
        state::State::load(store, config.max_size, config.upload_grace).map_err(|source| {
            ServerError::State {
                path: config.store.clone(),
                source,
            }
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .enable_time()
        .thread_name("cache-server")
        .build()
        .map_err(ServerError::Runtime)?;
    let server = Arc::new(api::Server::new(state, config.tokens, config.verbose));
    let serving_server = server.clone();
    let result = runtime.block_on(async move {
        let server = serving_server;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(ServerError::Serve)?;
        server.evict_in_background();
        let app = api::router(server.clone());
        // The handlers go in before the line that says the server is ready:
        // whoever reads it may send SIGTERM at once, and without them that
        // would kill the server instead of stopping it gracefully.
        let signals = ShutdownSignals::install();
        eprintln!("listening on {local}");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(async move {
            let mut stop = stop_rx;
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        signals.recv().await;
        eprintln!("shutting down");
        let _ = stop_tx.send(true);
        match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
            Ok(Ok(result)) => result.map_err(ServerError::Serve),
            Ok(Err(join)) => Err(ServerError::Serve(std::io::Error::other(join))),
            Err(_) => {
                eprintln!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
                Ok(())
            }
        }
    });
    // Requests abandoned by the timeout may hold blocking tasks.
    runtime.shutdown_timeout(Duration::from_secs(1));
    server.shutdown();
    result
}

/// The SIGTERM and SIGINT handlers; from `install` on, these signals no
/// longer kill the process but wait here to be received.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Must run inside the runtime.
    fn install() -> ShutdownSignals {
        use tokio::signal::unix::{SignalKind, signal};
        ShutdownSignals {
            term: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
            int: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
        }
    }

    /// Waits for the first SIGTERM or SIGINT (one that came before is not lost).
    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
