//! `bakare serve`: repositories stored under one directory, served to other machines over
//! HTTPS with the S3 protocol (the `s3s` crate), one credential per client, append-only for
//! every client but the owner. See docs/serve.md.
#![forbid(unsafe_code)]

mod pairing;
mod quota;
mod relay;
mod route;
mod server;
mod state;
mod store;
mod tls;

use std::path::{Path, PathBuf};

pub use pairing::{
    code as pairing_code, commitment as pairing_commitment, confirmation as pairing_confirmation, repo_of,
    Pending, Poll, EXPIRY as PAIRING_EXPIRY,
};
pub use quota::usage;
pub use relay::{status as relay_status, upstream_of, Backlog, RepoStatus, Status as RelayStatus};
pub use server::{serve, Options};
pub use state::{valid_client_name, Client, StateDir};
pub use tls::Identity;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The server's identity: the user's certificate and key when given, else its own self-signed
/// one (made on first use, naming `names`).
pub fn identity(storage: &Path, cert: Option<(&Path, &Path)>, names: &[String]) -> Result<Identity> {
    match cert {
        Some((c, k)) => tls::load(c, k),
        None => tls::self_signed(&StateDir::new(storage), names),
    }
}

/// The one line a client needs to join: the server's address, the certificate's SHA-256 when
/// it is self-signed (clients pin it), and the client's credential.
pub fn invitation(address: &str, identity: &Identity, client: &Client) -> String {
    let pin =
        if identity.self_signed { format!("?sha256={}", identity.fingerprint()) } else { String::new() };
    format!("bakare-join:https://{}:{}@{address}/{pin}", client.name, client.secret)
}
