//! Per-client quotas: the bytes of the objects each client created (an object it wrote again
//! with the same bytes, or that another client created first, does not count again), kept in
//! `.serve/usage.json`, written at most once a second and when the server stops.
//!
//! Checked before an upload is accepted, against what the client has used plus the upload's
//! length: uploads in flight at the moment the quota is reached can each pass, so a client may
//! exceed it by those. A kill -9 loses at most the last second's counts (the quota is then
//! lenient by those bytes, never strict by bytes that were not written).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;

use s3s::{S3Error, S3ErrorCode};

use crate::state::{write_private, Client, StateDir};
use crate::{Error, Result};

const USAGE: &str = "usage.json";

pub(crate) struct Usage {
    path: PathBuf,
    /// Bytes per client, and whether they changed since last written.
    inner: Mutex<(BTreeMap<String, u64>, bool)>,
}

/// What each client has used, as last written.
pub fn usage(state: &StateDir) -> Result<BTreeMap<String, u64>> {
    Ok(Usage::load(state)?.inner.into_inner().map(|u| u.0).unwrap_or_default())
}

impl Usage {
    pub(crate) fn load(state: &StateDir) -> Result<Usage> {
        let path = state.file(USAGE);
        let used = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Invalid(format!("{}: not a usage file: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(Usage { path, inner: Mutex::new((used, false)) })
    }

    pub(crate) fn used(&self, name: &str) -> u64 {
        self.inner.lock().map(|u| u.0.get(name).copied().unwrap_or(0)).unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn add(&self, name: &str, bytes: u64) {
        if let Ok(mut u) = self.inner.lock() {
            let e = u.0.entry(name.to_string()).or_insert(0);
            *e = e.saturating_add(bytes);
            u.1 = true;
        }
    }

    /// Checks `adding` more bytes against the client's quota and counts them, in one step (so
    /// that uploads finishing together cannot all pass on the same count).
    pub(crate) fn reserve(&self, client: &Client, adding: u64) -> std::result::Result<(), S3Error> {
        let mut u = self.inner.lock().map_err(|_| s3s::s3_error!(InternalError, "a thread panicked"))?;
        let used = u.0.get(&client.name).copied().unwrap_or(0);
        if let Some(quota) = client.quota {
            if used.saturating_add(adding) > quota {
                return Err(over_quota(client, used, quota, adding));
            }
        }
        u.0.insert(client.name.clone(), used.saturating_add(adding));
        u.1 = true;
        Ok(())
    }

    /// Gives back what `reserve` counted for an object that was not created.
    pub(crate) fn refund(&self, name: &str, bytes: u64) {
        if let Ok(mut u) = self.inner.lock() {
            if let Some(e) = u.0.get_mut(name) {
                *e = e.saturating_sub(bytes);
                u.1 = true;
            }
        }
    }

    /// Writes the counts if they changed.
    pub(crate) fn flush(&self) -> Result<()> {
        let bytes = {
            let Ok(mut u) = self.inner.lock() else { return Ok(()) };
            if !u.1 {
                return Ok(());
            }
            u.1 = false;
            serde_json::to_vec(&u.0).map_err(|e| Error::Invalid(format!("encoding usage: {e}")))?
        };
        write_private(&self.path, &bytes)
    }

    /// The error for an upload of `adding` bytes that would take `client` past its quota.
    pub(crate) fn check(&self, client: &Client, adding: u64) -> std::result::Result<(), S3Error> {
        let Some(quota) = client.quota else { return Ok(()) };
        let used = self.used(&client.name);
        if used.saturating_add(adding) <= quota {
            return Ok(());
        }
        Err(over_quota(client, used, quota, adding))
    }
}

/// The error for an upload of `adding` bytes that would take `client` past its quota.
fn over_quota(client: &Client, used: u64, quota: u64, adding: u64) -> S3Error {
    eprintln!(
        "bakare serve: refused: client {} is at {used} of its quota of {quota} bytes ({adding} more asked)",
        client.name
    );
    let code = S3ErrorCode::Custom("QuotaExceeded".into());
    let mut e = S3Error::with_message(
        code,
        format!("client {} has used {used} of its quota of {quota} bytes", client.name),
    );
    // Not a 5xx: clients must not retry it.
    e.set_status_code(http::StatusCode::FORBIDDEN);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_counted_checked_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        s.create().unwrap();
        let u = Usage::load(&s).unwrap();
        let c =
            Client { name: "a".into(), secret: "0".repeat(64), owner: false, quota: Some(100), repo: None };
        u.check(&c, 100).unwrap();
        u.add("a", 60);
        u.check(&c, 40).unwrap();
        let e = u.check(&c, 41).unwrap_err();
        assert_eq!(e.status_code(), Some(http::StatusCode::FORBIDDEN));
        assert!(e.message().unwrap().contains("60 of its quota of 100"), "{e:?}");
        u.flush().unwrap();
        assert_eq!(Usage::load(&s).unwrap().used("a"), 60);
        let unlimited = Client { quota: None, ..c.clone() };
        u.check(&unlimited, u64::MAX).unwrap();
        u.reserve(&c, 40).unwrap();
        assert!(u.reserve(&c, 1).is_err());
        u.refund("a", 40);
        assert_eq!(u.used("a"), 60);
    }
}
