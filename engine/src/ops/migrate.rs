//! `bakare migrate`: the one owner step that brings a repository of format 2 (checksummed
//! config, unsigned condemnation records and snapshots) to format 3. It signs the config,
//! removes the unsigned condemnation records (a record holds no data, and the next prune
//! condemns again what nothing uses), and adopts the unsigned snapshots as the owner's: each is
//! written again, signed, and the unsigned copy removed. Adopting is the owner's explicit
//! decision that those snapshots are genuine; `migrate --dry-run` lists them first.
use crate::config::Seal;
use crate::error::Result;
use crate::repo::Repository;
use crate::snapshot::{Signer, Snapshot};

#[derive(Debug, Default)]
pub struct MigrateReport {
    /// The config's format version before (3 when it was signed already).
    pub config_from: u8,
    pub records_removed: Vec<String>,
    /// (old id, new id, snapshot) for each adopted snapshot; new id empty in a dry run.
    pub adopted: Vec<(String, String, Snapshot)>,
    pub warnings: Vec<String>,
}

/// Opens with `Repository::open_with(.., legacy: true)` first.
pub fn migrate(repo: &Repository, dry_run: bool) -> Result<MigrateReport> {
    let identity = repo.key.identity()?;
    let owner = repo.key.owner_signer()?;
    let mut report = MigrateReport::default();
    let raw = repo.backend.get("config")?;
    let (config, seal) = crate::config::Config::decode_unverified(&raw)?;
    report.config_from = match seal {
        Seal::Checksum(v) => v,
        Seal::Signed(k) if k == repo.owner => crate::config::VERSION,
        Seal::Signed(_) => {
            return Err(crate::Error::corrupt(
                "config",
                "config",
                "signed by someone other than this key's owner: refusing to migrate it",
            ))
        }
    };
    if report.config_from != crate::config::VERSION {
        let mut config = config;
        // Format 2 allowed periods down to 1 s; prune no longer honours less than the minimum.
        if config.grace_secs < crate::config::MIN_GRACE_SECS {
            report.warnings.push(format!(
                "the grace period was {} s; it is {} s now (the minimum)",
                config.grace_secs,
                crate::config::MIN_GRACE_SECS
            ));
            config.set_grace(crate::config::MIN_GRACE_SECS, crate::clock::now_ns());
        }
        if !dry_run {
            repo.backend.replace("config", &config.encode(&owner))?;
        }
    }
    let records = crate::gc::load(repo.backend.as_ref(), repo.gc_keys())?;
    for (name, why) in records.refused {
        if !dry_run {
            repo.backend.delete(&name)?;
        }
        report.records_removed.push(format!("{name}: {why}"));
    }
    let mut names = repo.backend.list("snapshots")?;
    names.sort();
    let mut decoded = Vec::new();
    for name in names {
        let data = repo.backend.get(&name)?;
        match Snapshot::decode(identity, &repo.config.repo_id, &name, &data) {
            Ok((snap, signer)) => decoded.push((name, snap, signer)),
            Err(e) => report.warnings.push(format!("{e}; left as it is")),
        }
    }
    // An unsigned snapshot whose signed copy exists was adopted by an interrupted migrate.
    let signed: Vec<&Snapshot> =
        decoded.iter().filter(|(_, _, s)| *s != Signer::Nobody).map(|(_, snap, _)| snap).collect();
    let (done, todo): (Vec<_>, Vec<_>) = decoded
        .iter()
        .filter(|(_, _, s)| *s == Signer::Nobody)
        .partition(|(_, snap, _)| signed.contains(&snap));
    for (name, _, _) in done {
        if !dry_run {
            repo.backend.delete(name)?;
        }
    }
    for (name, snap, _) in todo {
        let old = name.trim_start_matches("snapshots/").to_string();
        let new = if dry_run {
            String::new()
        } else {
            // The signed copy first, so an interruption leaves both rather than neither.
            let bytes = snap.encode(&repo.key.recipient, &owner, &repo.config.repo_id)?;
            let id = blake3::hash(&bytes).to_hex().to_string();
            repo.backend.put(&format!("snapshots/{id}"), &bytes)?;
            repo.backend.delete(name)?;
            id
        };
        report.adopted.push((old, new, snap.clone()));
    }
    Ok(report)
}
