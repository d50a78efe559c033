//! `key export --backup-only`, `key list`, `key revoke`: registering the writers whose
//! snapshots the owner trusts, and revoking them (docs/security.md).
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::repo::Repository;
use crate::signing::PublicKey;
use crate::snapshot::Signer;
use crate::writers::{RosterEntry, Writer, WriterRecord, VERSION};

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

/// Records a registration or a revocation: the roster entry writers read first (a revocation
/// is then in force for writers even if the registry record is never written; `revoke` again
/// writes it), then the registry record.
fn record(repo: &Repository, name: &str, key: PublicKey, revoked: bool) -> Result<String> {
    let time_ns = crate::clock::now_ns();
    roster(repo, key, revoked, time_ns)?;
    let r = WriterRecord { version: VERSION, name: name.to_string(), key, time_ns, revoked };
    let (object, bytes) = r.encode(&repo.key.owner_signer()?, &repo.config.repo_id, &repo.key.recipient)?;
    repo.backend.put(&object, &bytes)?;
    Ok(object)
}

fn roster(repo: &Repository, key: PublicKey, revoked: bool, time_ns: i64) -> Result<()> {
    let e = RosterEntry { version: VERSION, key, time_ns, revoked };
    let (object, bytes) = e.encode(&repo.key.owner_signer()?, &repo.config.repo_id, &repo.wk.catalog_key)?;
    repo.backend.put(&object, &bytes)?;
    Ok(())
}

/// Writes the roster entries the registry has and the roster lacks (registries from before
/// the roster, or a revocation interrupted midway). Returns how many it wrote.
pub fn sync_roster(repo: &Repository, dry_run: bool) -> Result<usize> {
    let (registry, _) = repo.registry()?;
    let (entries, _) = repo.roster()?;
    let mut written = 0;
    for w in registry.writers.values() {
        let has = |revoked: bool| entries.iter().any(|e| e.key == w.key && e.revoked == revoked);
        for (revoked, at) in [(false, Some(w.registered_ns)), (true, w.revoked_ns)] {
            let Some(at) = at else { continue };
            if !has(revoked) {
                if !dry_run {
                    roster(repo, w.key, revoked, at)?;
                }
                written += 1;
            }
        }
    }
    Ok(written)
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
