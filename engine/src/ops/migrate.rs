//! `bakare migrate`: the one owner step that brings a repository of format 2 (checksummed
//! config, unsigned condemnation records and snapshots) to format 3. It adopts the unsigned
//! snapshots as the owner's (each is written again, signed, and the unsigned copy removed),
//! removes the unsigned condemnation records (a record holds no data, and the next prune
//! condemns again what nothing uses), and signs the config, last: an interrupted migrate is
//! simply run again. Adopting is the owner's explicit decision that those snapshots are
//! genuine; `migrate --dry-run` lists them first. On a repository of format 3, migrate adopts
//! nothing: an unsigned snapshot there was planted.
use crate::config::{Config, Seal};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::snapshot::{Signer, Snapshot};

#[derive(Debug, Default)]
pub struct MigrateReport {
    /// The config's format version before (3 when it was signed already).
    pub config_from: u8,
    /// The config as it is signed (or would be).
    pub config: Option<Config>,
    pub records_removed: Vec<String>,
    /// (old id, new id, snapshot) for each adopted snapshot; new id empty in a dry run.
    pub adopted: Vec<(String, String, Snapshot)>,
    /// Unsigned snapshots left alone (the repository was of format 3 already).
    pub left: Vec<String>,
    pub warnings: Vec<String>,
}

/// Opens with `Repository::open_with(.., legacy: true)` first.
pub fn migrate(repo: &Repository, dry_run: bool) -> Result<MigrateReport> {
    let identity = repo.key.identity()?;
    let owner = repo.key.owner_signer()?;
    let mut report = MigrateReport::default();
    let raw = repo.backend.get("config")?;
    let (mut config, seal) = Config::decode_unverified(&raw)?;
    report.config_from = match seal {
        Seal::Checksum(v) => v,
        Seal::Signed(k) if k == repo.owner => crate::config::VERSION,
        Seal::Signed(_) => {
            return Err(Error::corrupt(
                "config",
                "config",
                "signed by someone other than this key's owner: refusing to migrate it",
            ))
        }
    };
    let legacy = report.config_from < crate::config::VERSION;

    let mut names = repo.backend.list("snapshots")?;
    names.sort();
    let mut decoded = Vec::new();
    for name in names {
        let data = repo.backend.get(&name)?;
        if name.strip_prefix("snapshots/") != Some(blake3::hash(&data).to_hex().as_str()) {
            report.warnings.push(format!("{name}: content does not match its name; left as it is"));
            continue;
        }
        match Snapshot::decode(identity, &repo.config.repo_id, &name, &data) {
            Ok((snap, signer)) => decoded.push((name, snap, signer)),
            Err(e) => report.warnings.push(format!("{e}; left as it is")),
        }
    }
    // A checksummed config beside objects only format 3 writes (writers' snapshots, the writer
    // registry) was put back by someone else: the owner signs no config it did not write.
    // (Snapshots the owner signed may come from an interrupted migrate.)
    let foreign = decoded.iter().any(|(_, _, s)| matches!(s, Signer::Key(k) if *k != repo.owner));
    if legacy && (foreign || !repo.backend.list("writers")?.is_empty()) {
        return Err(Error::corrupt(
            "config",
            "config",
            format!(
                "is of format {}, but the repository holds objects of format 3 (writers' snapshots or \
                 registered writers): it was replaced by someone else; refusing to sign it",
                report.config_from
            ),
        ));
    }

    // An unsigned snapshot whose owner-signed copy exists was adopted by an interrupted migrate.
    let owners: Vec<&Snapshot> =
        decoded.iter().filter(|(_, _, s)| *s == Signer::Key(repo.owner)).map(|(_, snap, _)| snap).collect();
    for (name, snap, signer) in &decoded {
        if *signer != Signer::Nobody {
            continue;
        }
        let old = name.trim_start_matches("snapshots/").to_string();
        if !legacy {
            report.left.push(old);
            continue;
        }
        if owners.contains(&snap) {
            if !dry_run {
                repo.backend.delete(name)?;
            }
            continue;
        }
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

    let records = crate::gc::load(repo.backend.as_ref(), repo.gc_keys())?;
    for (name, why) in records.refused {
        if !dry_run {
            repo.backend.delete(&name)?;
        }
        report.records_removed.push(format!("{name}: {why}"));
    }

    if legacy {
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
        report.config = Some(config);
    }
    Ok(report)
}
