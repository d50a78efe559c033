//! `bakare migrate`: the one owner step that brings a repository of format 2 (checksummed
//! config, unsigned condemnation records and snapshots) to format 3. It adopts the unsigned
//! snapshots as the owner's (each is written again, signed, and the unsigned copy removed),
//! removes the unsigned condemnation records (a record holds no data, and the next prune
//! condemns again what nothing uses), and signs the config, last: an interrupted migrate is
//! simply run again. Adopting is the owner's explicit decision that those snapshots are
//! genuine; `migrate --dry-run` lists them first. Likewise it signs the index segments written
//! before 2026-12 as the owner's word, so that backups deduplicate against their packs again,
//! and writes the roster entries (the registry as writers read it) that are missing. On a repository of format 3, migrate adopts
//! nothing: an unsigned snapshot there was planted.
use crate::config::{Config, Seal};
use crate::error::{Error, Result};
use crate::index::{Mark, Voucher};
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
    /// Unsigned index segments (of before 2026-12) signed again, vouched for by the owner.
    pub segments_signed: usize,
    /// Segments of a format before places were sealed (`BKINDEX2`, and unsigned ones left
    /// unvouched), written again with their places sealed to the owner, each keeping its voucher.
    pub segments_sealed: usize,
    /// Roster entries written for writers the registry has and the roster lacks.
    pub roster_written: usize,
    /// Unsigned segments found after an earlier migrate signed the index: left unvouched.
    pub segments_left_unsigned: usize,
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
        Seal::SignedBefore(k) if k == repo.owner => crate::config::VERSION_BEFORE_SEALED_PLACES,
        Seal::Signed(_) | Seal::SignedBefore(_) => {
            return Err(Error::corrupt(
                "config",
                "config",
                "signed by someone other than this key's owner: refusing to migrate it",
            ))
        }
    };
    // Checksummed (format 2 or before): what signing brought is to be done.
    let legacy = report.config_from < crate::config::VERSION_BEFORE_SEALED_PLACES;

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

    // Index segments of before 2026-12 are unsigned, so backups do not deduplicate against
    // their packs: the owner vouches for them, its explicit decision as with adopting snapshots
    // (`repair index --read-data` vouches only for the blobs it reads and authenticates). It
    // does so once: the mark it leaves says that unsigned segments found later were planted.
    let mark = crate::index::signed_mark(repo.backend.as_ref(), &repo.owner, &repo.config.repo_id)?;
    if mark == Mark::Forged {
        report.warnings.push(format!(
            "{} is not the owner's mark (damaged or forged): it counts as signed, so migrate vouches \
             for no unsigned segment (`bakare repair index --read-data` vouches for what it reads)",
            crate::index::MARK
        ));
    }
    // A writer revoked since may have written unsigned segments too: vouching for them all
    // would undo the revocation. Only reading them can tell.
    let (registry, _) = repo.registry()?;
    let revoked = registry.writers.values().any(|w| w.revoked_ns.is_some());
    let vouch = mark == Mark::Absent && !revoked;
    let sealer = repo.sealer()?;
    let mut segments = repo.backend.list("index")?;
    segments.sort();
    for name in segments {
        let data = match repo.backend.get(&name) {
            Ok(d) => d,
            Err(io::StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        // Of a format before sealed places: entries readable with a backup-only key.
        let whole_entries = !data.starts_with(crate::index::MAGIC);
        match crate::index::decode_segment(repo.segment_keys(), &name, data) {
            Ok((Voucher::Unsigned, body)) if !vouch => {
                report.segments_left_unsigned += 1;
                if whole_entries {
                    // Sealed, relayed by the owner as unsigned (as prune does): still unvouched.
                    if !dry_run {
                        let (new, bytes) = sealer.seal(&Voucher::Unsigned, &body)?;
                        repo.backend.put(&new, &bytes)?;
                        repo.backend.delete(&name)?;
                    }
                    report.segments_sealed += 1;
                }
            }
            Ok((Voucher::Unsigned, body)) => {
                if !dry_run {
                    // The signed copy first, so an interruption leaves both rather than neither.
                    let (new, bytes) = sealer.seal(&Voucher::Key(repo.owner), &body)?;
                    repo.backend.put(&new, &bytes)?;
                    repo.backend.delete(&name)?;
                }
                report.segments_signed += 1;
            }
            // Its entries' places readable with a backup-only key: sealed to the owner now,
            // under the same voucher (the owner relays a writer's word, never adds to it).
            Ok((voucher, body)) if whole_entries => {
                if !dry_run {
                    let (new, bytes) = sealer.seal(&voucher, &body)?;
                    repo.backend.put(&new, &bytes)?;
                    repo.backend.delete(&name)?;
                }
                report.segments_sealed += 1;
            }
            Ok(_) => {}
            Err(e) => report.warnings.push(format!("{e}; left as it is (`bakare repair index` rewrites it)")),
        }
    }
    let n = report.segments_left_unsigned;
    if n > 0 {
        let why = match mark {
            Mark::Signed(t) => {
                format!("appeared after the owner signed the index ({})", crate::clock::format_ns(t))
            }
            Mark::Forged => "are not vouched for: the mark is not the owner's".to_string(),
            Mark::Absent => "may include a revoked writer's".to_string(),
        };
        report.warnings.push(format!(
            "{n} unsigned index segments {why}: left unvouched, so no backup deduplicates against \
             their packs (`bakare repair index --read-data` vouches for what it reads and authenticates)"
        ));
    }
    if mark == Mark::Absent && !dry_run {
        crate::index::put_signed_mark(
            repo.backend.as_ref(),
            &owner,
            &repo.config.repo_id,
            crate::clock::now_ns(),
        )?;
    }
    report.roster_written = crate::ops::writers::sync_roster(repo, dry_run)?;

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
    } else if report.config_from < crate::config::VERSION {
        // Signed already, as format 3: the same config as format 4, once the segments above
        // are sealed (last, so that an interrupted migrate runs again).
        if !dry_run {
            repo.backend.replace("config", &config.encode(&owner))?;
        }
        report.config = Some(config);
    }
    Ok(report)
}
