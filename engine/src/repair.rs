//! `repair index` rebuilds the index segments from the packs; `repair snapshots` writes new
//! snapshots that leave out what is damaged, so what is intact stays restorable by normal means.
//! Neither ever rewrites an object in place: new objects are written first, old ones removed
//! only once nothing needs them.
use std::collections::{HashMap, HashSet};

use stages::BlobId;

use crate::check::{self, CheckOptions, CheckReport, Subset, Walker};
use crate::commit::{self, commit_snapshot};
use crate::error::{Error, Result};
use crate::index::{decode_segment, Claim, Index, Voucher};
use crate::pack::{self, BlobEntry, PackId};
use crate::repo::Repository;
use crate::snapshot::{FileError, Snapshot};
use crate::tree::{NodeKind, Tree};
use crate::writer::BlobWriter;

/// Packs per rebuilt segment: segments stay a few MiB even for packs of tiny blobs.

#[derive(Debug, Default)]
pub struct IndexRepair {
    pub packs: usize,
    pub blobs: usize,
    pub segments_written: usize,
    pub segments_removed: usize,
    /// Damaged blobs left out (with `read_data`).
    pub dropped_blobs: usize,
    /// Problems found on the way (damaged segments, unreadable trailers, missing packs).
    pub problems: Vec<String>,
}

/// Rebuilds every index segment from the pack trailers (or, for a pack whose trailer is
/// damaged, from an intact segment that lists it), then removes the old segments. With
/// `read_data`, every pack is read and blobs that fail authentication are left out, so the
/// next backup of the same data stores it again instead of deduplicating against the damaged
/// copy, and the snapshots that referred to it become whole again.
///
/// Safe while backups run: segments are listed before packs, and a backup writes its packs
/// before its segment, so every pack of a listed segment is seen; segments written after the
/// listing are not touched.
pub fn repair_index(repo: &Repository, read_data: bool, workers: usize) -> Result<IndexRepair> {
    // The owner's: a backup-only key reads neither where blobs are in new segments nor new
    // packs' trailers, so it would rewrite the index without them (and delete what it replaces).
    repo.key.identity()?;
    let backend = repo.backend.as_ref();
    let mut out = IndexRepair::default();
    let mut old = backend.list("index")?;
    old.sort();
    // Each segment's word apart: for a pack whose trailer is damaged, the entries a segment
    // listed stay under the voucher of that segment (merged, a stranger's entries would pass
    // for a trusted writer's).
    let mut from_segments: HashMap<PackId, Vec<(Voucher, Vec<BlobEntry>)>> = HashMap::new();
    for name in &old {
        match backend
            .get(name)
            .map_err(Error::from)
            .and_then(|d| decode_segment(repo.segment_keys(), name, d))
        {
            Ok((voucher, packs)) => {
                for (p, entries) in packs {
                    from_segments.entry(p).or_default().push((voucher, entries));
                }
            }
            Err(e) => out.problems.push(format!("{e} (replaced)")),
        }
    }
    let mut packs = backend.list("packs")?;
    packs.sort();
    let mut present = HashSet::new();
    let mut body: Vec<Claim> = Vec::new();
    let mut from_trailer = HashSet::new();
    for key in packs {
        let Some(id) = pack::parse_pack_key(&key) else {
            out.problems.push(format!("{key}: not a pack name; ignored"));
            continue;
        };
        present.insert(id);
        let claims = from_segments.remove(&id).unwrap_or_default();
        match pack::read_trailer(backend, repo.trailer_keys(), &key) {
            Ok(entries) => {
                // The trailer's entries, each under the vouchers whose segments listed it.
                let listed: Vec<(Voucher, HashSet<BlobId>)> =
                    claims.iter().map(|(v, e)| (*v, e.iter().map(|e| e.id).collect())).collect();
                from_trailer.insert(id);
                body.extend(crate::index::split_by_claims(id, &entries, &listed));
            }
            Err(e @ Error::SealedToOwner(_)) if claims.is_empty() => {
                out.problems.push(format!("{e}; left for the owner's `bakare repair index` to list"))
            }
            Err(e) if claims.is_empty() => out.problems.push(format!("{e}; its blobs are lost")),
            Err(e) => {
                out.problems.push(format!("{e}; its blobs are listed from the old index instead"));
                body.extend(claims.into_iter().map(|(v, entries)| (v, id, entries)));
            }
        }
    }
    for (id, claims) in &from_segments {
        out.problems.push(format!(
            "{} is missing; the {} blobs the index listed in it are lost",
            pack::pack_key(id),
            claims.iter().map(|(_, e)| e.len()).max().unwrap_or(0)
        ));
    }
    if read_data {
        repo.key.identity()?;
        let mut ids: Vec<PackId> = body.iter().map(|(_, id, _)| *id).collect();
        ids.dedup();
        let verdicts: HashMap<PackId, check::PackVerdict> =
            check::verify_packs(repo, &Index::default(), ids, workers).into_iter().collect();
        for (voucher, id, entries) in &mut body {
            let Some(v) = verdicts.get(id) else { continue };
            let bad: HashSet<BlobId> = v.bad_blobs.iter().map(|(b, _)| *b).collect();
            if v.damage.is_empty() && bad.is_empty() && from_trailer.contains(id) {
                // Every blob its trailer lists was read and authenticated by the owner just
                // now: the owner vouches for them, whoever wrote the pack. (Never for a pack
                // with any damage, or whose entries came from segments: those were not read.)
                *voucher = Voucher::Key(repo.owner);
                continue;
            }
            if bad.is_empty() {
                continue;
            }
            out.problems.push(format!(
                "{}: {} damaged blobs left out of the index (a backup of the same data stores them again)",
                pack::pack_key(id),
                bad.len()
            ));
            out.dropped_blobs += bad.len();
            entries.retain(|e| !bad.contains(&e.id));
        }
    }
    if read_data
        && crate::index::signed_mark(backend, &repo.owner, &repo.config.repo_id)?
            == crate::index::Mark::Absent
    {
        // What is still unsigned was not vouched for by reading: `migrate` must not vouch
        // for it wholesale afterwards.
        crate::index::put_signed_mark(
            backend,
            &repo.key.owner_signer()?,
            &repo.config.repo_id,
            crate::clock::now_ns(),
        )?;
    }
    out.packs = body.iter().map(|(_, id, _)| *id).collect::<HashSet<_>>().len();
    out.blobs = body.iter().map(|(_, _, e)| e.len()).sum();
    let written: HashSet<String> =
        crate::index::put_vouched(backend, &repo.sealer()?, crate::index::by_voucher(body))?
            .into_iter()
            .collect();
    out.segments_written = written.len();
    for name in old {
        if !written.contains(&name) {
            backend.delete(&name)?;
            out.segments_removed += 1;
        }
    }
    Ok(out)
}

#[derive(Clone, Debug, Default)]
pub struct SnapshotRepairOptions {
    /// Only these snapshots (ids or unique prefixes); empty = every damaged one.
    pub snapshots: Vec<String>,
    /// Remove each damaged snapshot once its repaired copy is committed.
    pub forget: bool,
    pub dry_run: bool,
    /// Which packs to read to find damaged file data (None: structure only).
    pub read_data: Option<Subset>,
    pub workers: usize,
}

#[derive(Debug)]
pub struct RepairedSnapshot {
    pub old: String,
    /// The new snapshot's id (None in a dry run).
    pub new: Option<String>,
    pub dropped: Vec<(Vec<u8>, String)>,
}

#[derive(Debug, Default)]
pub struct SnapshotRepair {
    pub repaired: Vec<RepairedSnapshot>,
    pub unrepairable: Vec<(String, String)>,
    pub forgotten: Vec<String>,
    pub check: CheckReport,
}

struct Rewriter<'a, 'w> {
    walker: &'w Walker<'a>,
    report: &'w CheckReport,
    writer: Option<&'w mut BlobWriter<'a>>,
    /// Estimated bytes of the entries the open levels hold (each level its decoded nodes and
    /// the ones it keeps), at most `tree::MAX_HELD`, as restore and check hold them.
    held: usize,
}

impl Rewriter<'_, '_> {
    /// The directory stored as `ids`, without its damaged parts (named in `dropped`).
    fn dir(
        &mut self,
        ids: &[BlobId],
        path: &[u8],
        depth: usize,
        dropped: &mut Vec<(Vec<u8>, String)>,
    ) -> Result<Vec<BlobId>> {
        let mut out = Vec::new();
        if depth > crate::tree::MAX_DEPTH {
            dropped.push((path.to_vec(), format!("deeper than {} levels", crate::tree::MAX_DEPTH)));
            return Ok(out);
        }
        for id in ids {
            if self.report.clean_trees.contains_key(id) {
                out.push(*id);
                continue;
            }
            let nodes = match self.walker.reader.tree(std::slice::from_ref(id)) {
                Ok(n) => n,
                Err(e) => {
                    let p = if path.is_empty() { b"/".to_vec() } else { path.to_vec() };
                    dropped.push((p, format!("directory contents lost: {e}")));
                    continue;
                }
            };
            let size = 2 * crate::tree::entries_size(&nodes);
            if self.held + size > crate::tree::MAX_HELD {
                let p = if path.is_empty() { b"/".to_vec() } else { path.to_vec() };
                let why = format!(
                    "its entries and those of the directories above it take more than {} MiB: restore refuses it",
                    crate::tree::MAX_HELD >> 20
                );
                dropped.push((p, why));
                continue;
            }
            self.held += size;
            let mut kept = Vec::with_capacity(nodes.len());
            for mut n in nodes {
                let mut child = path.to_vec();
                child.push(b'/');
                child.extend_from_slice(&n.name);
                match &mut n.kind {
                    NodeKind::File { content, .. } | NodeKind::HardLink { content, .. } => {
                        if let Some(why) =
                            content.iter().find_map(|b| self.walker.blob_problem(self.report, b))
                        {
                            dropped.push((child, why));
                            continue;
                        }
                    }
                    NodeKind::Dir { subtree } => {
                        *subtree = self.dir(subtree, &child, depth + 1, dropped)?;
                    }
                    _ => {}
                }
                kept.push(n);
            }
            self.held -= size;
            if let Some(w) = self.writer.as_deref_mut() {
                out.push(w.put_tree(&Tree { nodes: kept })?);
            }
        }
        if out.is_empty() {
            if let Some(w) = self.writer.as_deref_mut() {
                out.push(w.put_tree(&Tree::default())?);
            }
        }
        Ok(out)
    }
}

/// Finds damage (as `check` does) and writes, for each damaged snapshot, a copy without the
/// damaged files and directories, tagged `repaired`, with what was left out in its error list.
pub fn repair_snapshots(repo: &Repository, opts: &SnapshotRepairOptions) -> Result<SnapshotRepair> {
    let identity = repo.key.identity()?;
    let copts = CheckOptions {
        read_data: opts.read_data,
        writer: None,
        workers: opts.workers,
        lost: Default::default(),
    };
    let (report, survey) = check::check_with_survey(repo, &copts)?;
    let mut out = SnapshotRepair::default();
    let mut scratch = CheckReport::default();
    let snaps = check::load_snapshots(repo, identity, &mut scratch)?;
    let trusted: std::collections::HashSet<String> =
        repo.snapshots()?.0.into_iter().map(|e| format!("snapshots/{}", e.id)).collect();
    let wanted = |name: &str| {
        let id = name.trim_start_matches("snapshots/");
        opts.snapshots.is_empty() || opts.snapshots.iter().any(|s| id.starts_with(s.as_str()))
    };
    for a in &report.affected {
        let damaged_record = !snaps.iter().any(|(n, _)| *n == a.snapshot);
        if damaged_record && a.snapshot.starts_with("snapshots/") && wanted(&a.snapshot) {
            out.unrepairable.push((a.snapshot.clone(), "the snapshot record itself is damaged".into()));
        }
    }
    let walker = check::walker(repo, &survey)?;
    let mut writer = if opts.dry_run { None } else { Some(BlobWriter::new(repo, &survey.index)?) };
    let mut new_snaps = Vec::new();
    for (name, snap) in &snaps {
        let damaged = report.affected.iter().any(|a| a.snapshot == *name);
        if !name.starts_with("snapshots/") || !damaged || !wanted(name) {
            continue;
        }
        // The repaired copy is signed by the owner: repairing a snapshot nobody trusts would
        // turn it into the owner's.
        if !trusted.contains(name.as_str()) {
            out.unrepairable.push((
                name.clone(),
                "not signed by the owner or a writer in good standing: repairing it would sign it as the \
                 owner's (--trust-all does, if you are sure)"
                    .into(),
            ));
            continue;
        }
        let mut dropped = Vec::new();
        let mut rw = Rewriter { walker: &walker, report: &report, writer: writer.as_mut(), held: 0 };
        let tree = rw.dir(&snap.tree, b"", 1, &mut dropped)?;
        if dropped.iter().any(|(p, _)| p == b"/") {
            out.unrepairable
                .push((name.clone(), "its root directory is lost: nothing in it can be read".into()));
            continue;
        }
        let mut s: Snapshot = snap.clone();
        s.tree = tree;
        if !s.tags.iter().any(|t| t == "repaired") {
            s.tags.push("repaired".into());
        }
        s.errors.extend(dropped.iter().map(|(p, why)| FileError {
            path: p.clone(),
            why: format!("left out by `bakare repair snapshots`: {why}"),
        }));
        s.stats.errors = s.errors.len() as u64;
        s.program = format!("bakare {} (repair snapshots)", env!("CARGO_PKG_VERSION"));
        new_snaps.push((name.clone(), s, dropped));
    }
    // Packs and their segment first, then the snapshots that refer to them (rule 1).
    if let Some(w) = writer {
        w.finish()?;
    }
    for (old, s, dropped) in new_snaps {
        let new = if opts.dry_run { None } else { Some(commit_snapshot(repo, &s)?) };
        if opts.forget && !opts.dry_run {
            // A committed snapshot goes with its pending copy, if one is left.
            match commit::id_of("snapshots", &old) {
                Some(id) => commit::remove_snapshot(repo, id)?,
                None => repo.backend.delete(&old)?,
            }
            out.forgotten.push(old.clone());
        }
        out.repaired.push(RepairedSnapshot { old, new, dropped });
    }
    out.check = report;
    Ok(out)
}
