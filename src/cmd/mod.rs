//! One module per subcommand.

pub(crate) mod build;
pub(crate) mod cache_server;
pub(crate) mod context;
pub(crate) mod debug;
pub(crate) mod du;
pub(crate) mod images;
pub(crate) mod inspect;
pub(crate) mod load;
pub(crate) mod login;
pub(crate) mod progress;
pub(crate) mod prune;
pub(crate) mod pull;
pub(crate) mod push;
pub(crate) mod rmi;
pub(crate) mod run;
pub(crate) mod save;
pub(crate) mod tag;
