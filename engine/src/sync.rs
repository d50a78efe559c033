//! `sync`: relay a repository to another place (a NAS to the cloud) by copying the objects the
//! destination lacks, without any key: nothing is decrypted, every object is checked against
//! its name (the BLAKE3 of its bytes) before it is written, and what the destination already
//! has is skipped, so an interrupted sync simply resumes.
//!
//! Safe while backups into the source go on: the source's snapshots are listed first, then its
//! index segments, then its packs, and objects are copied in the opposite order (packs, then
//! segments, then snapshots). A backup writes packs before its segment and its segment before
//! its snapshot, so every listed snapshot's data is listed too, and the destination never holds
//! a snapshot whose data it lacks, even if the sync is killed at any point.
//!
//! Sync only adds: what the source's prune deletes stays in the destination (prune it there,
//! with the secret key). Pending snapshots and condemnation records are the source's own state
//! and are not copied. The writer registry and its roster are copied before the snapshots, so
//! the copy trusts the same writers, and the owner's `index-signed` mark before the config.
use std::collections::HashSet;
use std::sync::Mutex;

use io::{Backend, StorageError};

use crate::config::Config;
use crate::error::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct Copied {
    pub objects: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct SyncReport {
    pub config_copied: bool,
    pub packs: Copied,
    pub segments: Copied,
    pub snapshots: Copied,
    /// Writer registry records (`writers/`).
    pub writers: Copied,
    /// Objects the destination already had.
    pub present: u64,
    /// Objects that vanished from the source during the sync (pruned there).
    pub vanished: Vec<String>,
}

fn name_ok(key: &str, data: &[u8]) -> bool {
    key.rsplit('/').next() == Some(blake3::hash(data).to_hex().as_str())
}

/// Copies `keys` from `from` to `to` with `workers` threads; counts into `copied`.
fn copy_all(
    from: &dyn Backend,
    to: &dyn Backend,
    keys: Vec<String>,
    workers: usize,
    copied: &mut Copied,
    vanished: &mut Vec<String>,
) -> Result<()> {
    let queue = Mutex::new(keys.into_iter());
    let totals = Mutex::new((Copied::default(), Vec::new()));
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                if first_error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
                    break;
                }
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some(key) = next else { break };
                let r = (|| -> Result<Option<u64>> {
                    let data = match from.get(&key) {
                        Ok(d) => d,
                        Err(StorageError::NotFound { .. }) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    };
                    if !name_ok(&key, &data) {
                        return Err(Error::corrupt(
                            "object",
                            key.clone(),
                            "content does not match its name in the source (run `bakare check` there); not copied",
                        ));
                    }
                    to.put(&key, &data)?;
                    Ok(Some(data.len() as u64))
                })();
                let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(Some(n)) => {
                        t.0.objects += 1;
                        t.0.bytes += n;
                    }
                    Ok(None) => t.1.push(key),
                    Err(e) => {
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let (c, v) = totals.into_inner().unwrap_or_else(|p| p.into_inner());
    copied.objects += c.objects;
    copied.bytes += c.bytes;
    vanished.extend(v);
    Ok(())
}

pub fn sync(from: &dyn Backend, to: &dyn Backend, workers: usize) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    let src_config = from.get("config").map_err(|e| match e {
        StorageError::NotFound { .. } => {
            Error::Invalid("the source is not a bakare repository (no config)".into())
        }
        e => e.into(),
    })?;
    let (src, _) = Config::decode_unverified(&src_config)?;
    let new = match to.get("config") {
        Ok(d) => {
            let (dst, _) = Config::decode_unverified(&d)?;
            if dst.repo_id != src.repo_id {
                return Err(Error::Invalid(format!(
                    "the destination is another repository ({}, not {}): refusing to mix them",
                    hex::encode(dst.repo_id),
                    hex::encode(src.repo_id)
                )));
            }
            // A source config of a newer format version (say, since its packs end in parity)
            // goes across before the objects that need it: an older bakare reading the mirror
            // must refuse it, not misread them.
            if src_config.get(8) > d.get(8) {
                to.replace("config", &src_config)?;
                report.config_copied = true;
            }
            false
        }
        Err(StorageError::NotFound { .. }) => true,
        Err(e) => return Err(e.into()),
    };
    // The owner's mark that the index is signed, before the config makes the destination a
    // repository (one without it would take planted unsigned segments for old ones).
    match from.get(crate::index::MARK) {
        Ok(mark) => to.put(crate::index::MARK, &mark)?,
        Err(StorageError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if new {
        to.put("config", &src_config)?;
        report.config_copied = true;
    }
    // Listed in this order on purpose (module doc).
    let snapshots = from.list("snapshots")?;
    let mut writers = from.list("writers")?;
    writers.extend(from.list("roster")?);
    let segments = from.list("index")?;
    let packs = from.list("packs")?;
    let mut missing = |dir: &str, keys: Vec<String>| -> Result<Vec<String>> {
        let have: HashSet<String> = to.list(dir)?.into_iter().collect();
        let (present, mut absent): (Vec<_>, Vec<_>) = keys.into_iter().partition(|k| have.contains(k));
        report.present += present.len() as u64;
        absent.sort();
        Ok(absent)
    };
    let packs = missing("packs", packs)?;
    let segments = missing("index", segments)?;
    let snapshots = missing("snapshots", snapshots)?;
    let (registry, roster): (Vec<_>, Vec<_>) = writers.into_iter().partition(|k| k.starts_with("writers/"));
    let mut writers = missing("writers", registry)?;
    writers.extend(missing("roster", roster)?);
    let mut vanished = Vec::new();
    copy_all(from, to, packs, workers, &mut report.packs, &mut vanished)?;
    copy_all(from, to, segments, workers, &mut report.segments, &mut vanished)?;
    // The writer registry (and its roster) before the snapshots it vouches for.
    copy_all(from, to, writers, workers, &mut report.writers, &mut vanished)?;
    copy_all(from, to, snapshots, workers, &mut report.snapshots, &mut vanished)?;
    report.vanished = vanished;
    Ok(report)
}
