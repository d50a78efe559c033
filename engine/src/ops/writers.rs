//! `key export --backup-only`, `key list`, `key revoke`: registering the writers whose
//! snapshots the owner trusts, and revoking them (docs/security.md).
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::repo::Repository;
use crate::signing::PublicKey;
use crate::snapshot::Signer;
use crate::writers::{Writer, WriterRecord, VERSION};

/// A new backup-only key named `name`, registered in the repository's writer registry.
/// Refused when a writer of that name is registered and not revoked.
pub fn export_backup_key(repo: &Repository, name: &str) -> Result<Key> {
    let (registry, _) = repo.registry()?;
    if !registry.active(name).is_empty() {
        return Err(Error::Invalid(format!(
            "a writer named {name:?} is registered already: revoke it first (bakare key revoke {name}) or pick another name"
        )));
    }
    let key = repo.key.backup_only(name)?;
    let signer = key.snapshot_signer()?;
    record(repo, name, signer.public(), false)?;
    Ok(key)
}

fn record(repo: &Repository, name: &str, key: PublicKey, revoked: bool) -> Result<String> {
    let r = WriterRecord {
        version: VERSION,
        name: name.to_string(),
        key,
        time_ns: crate::clock::now_ns(),
        revoked,
    };
    let (object, bytes) = r.encode(&repo.key.owner_signer()?, &repo.config.repo_id, &repo.key.recipient)?;
    repo.backend.put(&object, &bytes)?;
    Ok(object)
}

/// Revokes every registered writer named `name`; returns them. From then on their snapshots
/// are ignored by default, like a stranger's.
pub fn revoke(repo: &Repository, name: &str) -> Result<Vec<Writer>> {
    let (registry, _) = repo.registry()?;
    let active: Vec<Writer> = registry.active(name).into_iter().cloned().collect();
    if active.is_empty() {
        return Err(Error::Invalid(format!(
            "no registered writer named {name:?} (bakare key list shows them)"
        )));
    }
    for w in &active {
        record(repo, name, w.key, true)?;
    }
    Ok(active)
}

/// A writer as `key list` shows it.
#[derive(Debug)]
pub struct Listed {
    pub writer: Writer,
    pub snapshots: usize,
    pub last_snapshot_ns: Option<i64>,
}

/// Every registered writer, the owner first, with its snapshots counted.
pub fn list(repo: &Repository) -> Result<(Vec<Listed>, Vec<String>)> {
    let (registry, mut warnings) = repo.registry()?;
    let (snaps, w) = repo.all_snapshots()?;
    warnings.extend(w);
    let owner = Writer {
        name: crate::writers::OWNER.into(),
        key: repo.owner,
        registered_ns: repo.config.created_ns,
        revoked_ns: None,
    };
    let mut out: Vec<Listed> = std::iter::once(owner)
        .chain(registry.writers.values().cloned())
        .map(|writer| Listed { writer, snapshots: 0, last_snapshot_ns: None })
        .collect();
    for e in &snaps {
        let Signer::Key(k) = e.signer else { continue };
        if let Some(l) = out.iter_mut().find(|l| l.writer.key == k) {
            l.snapshots += 1;
            l.last_snapshot_ns =
                Some(l.last_snapshot_ns.map_or(e.snapshot.time_ns, |t| t.max(e.snapshot.time_ns)));
        }
    }
    Ok((out, warnings))
}
