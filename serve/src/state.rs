//! The server's own state under `STORAGE/.serve/`: its TLS certificate and key, and its clients
//! with their credentials. A bucket name cannot start with a dot, so no repository can be named
//! `.serve`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub(crate) const STATE_DIR: &str = ".serve";
const CLIENTS: &str = "clients.json";
const CLIENTS_VERSION: u32 = 1;

/// One machine allowed to use the server.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Client {
    /// Also its access key id in signed requests.
    pub name: String,
    /// 32 random bytes, hex: the secret key it signs requests with.
    pub secret: String,
    /// The owner may delete and replace objects (prune, forget); other clients only add.
    pub owner: bool,
    /// Bytes of new objects it may add, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
    /// The one repository it may use, if confined to one (a friend paired with `--approve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("secret", &"[redacted]")
            .field("owner", &self.owner)
            .field("quota", &self.quota)
            .field("repo", &self.repo)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct ClientsFile {
    version: u32,
    clients: BTreeMap<String, Client>,
}

/// Where the server keeps its state.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// Client names double as access key ids and appear in file names of invitations: plain ASCII.
pub fn valid_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl StateDir {
    pub fn new(storage: &Path) -> StateDir {
        StateDir { dir: storage.join(STATE_DIR) }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn create(&self) -> Result<()> {
        ::io::durable::create_private_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Held while the clients file is read, changed and written: two `--add-client` at once
    /// must not lose one (whose invitation would then be refused).
    fn lock_clients(&self) -> Result<std::fs::File> {
        self.create()?;
        let path = self.file("clients.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.lock().map_err(|e| Error::io(&path, e))?;
        Ok(f)
    }

    /// Reads the clients; none when the file does not exist yet.
    pub fn clients(&self) -> Result<BTreeMap<String, Client>> {
        let path = self.file(CLIENTS);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let f: ClientsFile = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: not a clients file: {e}", path.display())))?;
        if f.version != CLIENTS_VERSION {
            return Err(Error::Invalid(format!(
                "{}: clients file version {} (this bakare reads {CLIENTS_VERSION})",
                path.display(),
                f.version
            )));
        }
        for (k, c) in &f.clients {
            if k != &c.name || !valid_client_name(k) || c.secret.len() != 64 {
                return Err(Error::Invalid(format!("{}: client entry {k:?} is malformed", path.display())));
            }
        }
        Ok(f.clients)
    }

    fn write_clients(&self, clients: BTreeMap<String, Client>) -> Result<()> {
        self.create()?;
        let path = self.file(CLIENTS);
        let bytes = serde_json::to_vec_pretty(&ClientsFile { version: CLIENTS_VERSION, clients })
            .map_err(|e| Error::Invalid(format!("encoding {}: {e}", path.display())))?;
        write_private(&path, &bytes)
    }

    /// Adds a client with a new random secret. Refuses a name in use: its holder would lose
    /// access without being told.
    pub fn add_client(&self, name: &str, owner: bool, quota: Option<u64>) -> Result<Client> {
        self.add(name, owner, quota, None)
    }

    /// Adds an append-only client confined to `repo` (a paired friend).
    pub(crate) fn add_client_for(
        &self,
        name: &str,
        quota: Option<u64>,
        repo: Option<String>,
    ) -> Result<Client> {
        self.add(name, false, quota, repo)
    }

    fn add(&self, name: &str, owner: bool, quota: Option<u64>, repo: Option<String>) -> Result<Client> {
        if !valid_client_name(name) {
            return Err(Error::Invalid(format!(
                "{name:?} is not a client name: 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        let _lock = self.lock_clients()?;
        let mut clients = self.clients()?;
        if clients.contains_key(name) {
            return Err(Error::Invalid(format!(
                "a client named {name:?} exists already (remove it first with --remove-client {name})"
            )));
        }
        if let Some(r) = &repo {
            if let Some(other) = clients.values().find(|c| c.repo.as_ref() == Some(r)) {
                return Err(Error::Invalid(format!(
                    "client {:?} has repository {r:?} already (remove it first with --remove-client {})",
                    other.name, other.name
                )));
            }
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let client = Client { name: name.to_string(), secret: hex::encode(secret), owner, quota, repo };
        clients.insert(name.to_string(), client.clone());
        self.write_clients(clients)?;
        Ok(client)
    }

    /// Removes a client; its next request is refused. False when there was none of that name.
    pub fn remove_client(&self, name: &str) -> Result<bool> {
        self.remove_where(name, |_| true)
    }

    /// Removes the client `name` only if it still has `secret`.
    pub(crate) fn remove_client_if(&self, name: &str, secret: &str) -> Result<bool> {
        self.remove_where(name, |c| c.secret == secret)
    }

    fn remove_where(&self, name: &str, this_one: impl Fn(&Client) -> bool) -> Result<bool> {
        let _lock = self.lock_clients()?;
        let mut clients = self.clients()?;
        if !clients.get(name).is_some_and(this_one) {
            return Ok(false);
        }
        clients.remove(name);
        self.write_clients(clients)?;
        Ok(true)
    }
}

/// Writes a file only its owner can read: temporary name created 0600, fsync, rename over,
/// fsync the directory.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = ::io::durable::temp_path(dir);
    let written = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        ::io::durable::sync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(|e| Error::io(path, e))
}

/// Refuses a state file others can read (a key or the clients' secrets).
pub(crate) fn check_private(path: &Path) -> Result<()> {
    let md = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(Error::Invalid(format!(
            "{} can be read by other users (mode {:o}): chmod 600 it",
            path.display(),
            md.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_added_listed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        assert!(s.clients().unwrap().is_empty());
        let a = s.add_client("laptop", false, None).unwrap();
        let o = s.add_client("owner_1", true, Some(5)).unwrap();
        assert_ne!(a.secret, o.secret);
        assert!(s.add_client("laptop", false, None).is_err(), "a name in use is refused");
        assert!(s.add_client("bad name", false, None).is_err());
        assert!(s.add_client("", false, None).is_err());
        let all = s.clients().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["laptop"], a);
        assert!(all["owner_1"].owner);
        check_private(&s.file(CLIENTS)).unwrap();
        assert!(s.remove_client("laptop").unwrap());
        assert!(!s.remove_client("laptop").unwrap());
        assert_eq!(s.clients().unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_clients_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        s.create().unwrap();
        fs::write(s.file(CLIENTS), b"{ not json").unwrap();
        let e = s.clients().unwrap_err().to_string();
        assert!(e.contains("clients.json"), "{e}");
    }
}
