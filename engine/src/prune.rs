//! `prune`: two-phase garbage collection without locks (design.md section 4, rule 2;
//! docs/concurrency.md has the argument).
//!
//! Every run does, in order:
//! - **Phase 2** for each condemnation record at least the grace period G old: list pending,
//!   then committed snapshots (in that order: `pending/X` is removed only once `snapshots/X`
//!   holds the same bytes, or once its writer proved it will never promote it, so one listing
//!   or the other sees every snapshot that is or will be committed); rescue each condemned pack
//!   holding a blob some snapshot references and no surviving pack also holds; index the
//!   rescued packs in a new segment; delete the condemned segments, then the other condemned
//!   packs, then the record.
//! - **Phase 1**: find the packs no snapshot (pending or committed) uses, and the packs mostly
//!   unused (above the repack threshold), whose used blobs are first copied to new packs; write
//!   index segments covering every pack that stays; then a record condemning the unused packs
//!   and the superseded segments, timed when it is written. Nothing is deleted.
//! - **Leftovers**: writers delete nothing (commit.rs), so prune removes the pending copies of
//!   committed snapshots (same bytes in `snapshots/`) and the pending snapshots whose writers
//!   gave them up (a valid `abandoned/<id>`), with those markers. Any other pending snapshot
//!   stays a root.
//!
//! Repacking copies sealed blobs byte for byte, under the same wrapped data key (the new pack
//! repeats the old header), so nothing is decrypted and bundles stay whole.
use std::collections::{BTreeMap, HashMap, HashSet};

use stages::{BlobId, BlobKind};

use crate::commit::{self, PendingState};
use crate::error::{Error, Result};
use crate::gc::{self, GcRecord};
use crate::index::{decode_segment, Claim, Index, IndexBuilder, Voucher};
use crate::pack::{self, BlobEntry, PackId};
use crate::repo::{BlobReader, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{NodeKind, Tree};

/// Packs per segment written by prune.

#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Repack a pack when more than this fraction of its bytes is unused (0..=1).
    pub repack_threshold: f64,
    pub dry_run: bool,
    /// Run phase 2 on every record now, ignoring the grace period: unsafe while any other
    /// process may be backing up.
    pub unsafe_now: bool,
    pub host: String,
    /// Where this machine keeps when it first saw each condemnation record (`format::seen`);
    /// None: every record counts as first seen now, so nothing becomes due.
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            repack_threshold: 0.3,
            dry_run: false,
            unsafe_now: false,
            host: String::new(),
            state_dir: crate::filescache::default_dir(),
        }
    }
}

#[derive(Debug, Default)]
pub struct PhaseTwo {
    pub record: String,
    pub condemned: usize,
    pub rescued: usize,
    pub deleted_packs: usize,
    pub deleted_segments: usize,
    pub freed_bytes: u64,
}

#[derive(Debug, Default)]
pub struct PruneReport {
    pub snapshots: usize,
    pub pending: usize,
    pub phase2: Vec<PhaseTwo>,
    /// Records not yet due: (name, due time ns, packs, bytes).
    pub waiting: Vec<(String, i64, usize, u64)>,
    /// Phase 1: packs condemned now (unused, and repacked ones), and their bytes.
    pub condemned_packs: usize,
    pub condemned_bytes: u64,
    pub repacked_packs: usize,
    pub repacked_bytes_copied: u64,
    pub new_packs: usize,
    pub segments_written: usize,
    pub segments_condemned: usize,
    /// The phase 1 record written (None when there was nothing to condemn, or in a dry run).
    pub record: Option<String>,
    pub grace_ns: i64,
    /// Pending copies of committed snapshots removed (writers leave them: commit.rs).
    pub pending_removed: usize,
    /// Pending snapshots their writers gave up, removed with their markers.
    pub abandoned_removed: usize,
    /// Temporary files of interrupted writes older than the grace period: removed (or, in a
    /// dry run, that would be), and their bytes.
    pub temp_removed: usize,
    pub temp_bytes: u64,
    /// Younger temporary files, kept: a writer suspended mid-write may still commit them.
    pub temp_kept: usize,
    pub warnings: Vec<String>,
}

impl PruneReport {
    pub fn freed_now(&self) -> u64 {
        self.phase2.iter().map(|p| p.freed_bytes).sum()
    }
    pub fn freed_later(&self) -> u64 {
        self.condemned_bytes + self.waiting.iter().map(|w| w.3).sum::<u64>()
    }
}

/// The whole repository as prune sees it.
struct View {
    /// Every pack that exists, with its blobs (from segments, or from its trailer).
    packs: BTreeMap<PackId, Vec<BlobEntry>>,
    sizes: HashMap<PackId, u64>,
    segments: Vec<String>,
    /// Which segment(s) list each pack.
    covered: HashSet<PackId>,
    records: Vec<(String, GcRecord)>,
    /// Records that do not count: not the owner's (forged), damaged, or unsigned from before.
    refused: Vec<(String, String)>,
    /// Who vouches for each pack (the best word any segment gives): the segments prune writes
    /// keep each pack's word (the owner never vouches for a pack it has not read), and a
    /// repacked pack inherits its source's.
    vouchers: HashMap<PackId, Voucher>,
    /// Each word apart, for the packs several segments list: rewritten, each voucher keeps
    /// exactly the entries it listed (a stranger's extra entries must not pass for the
    /// owner's). Packs listed once are `packs` under `vouchers`.
    claims: HashMap<PackId, Vec<(Voucher, Vec<BlobEntry>)>>,
}

impl View {
    /// Which ids each voucher listed in pack `p`.
    fn listed_ids(&self, p: &PackId) -> Vec<(Voucher, HashSet<BlobId>)> {
        let ids = |e: &[BlobEntry]| e.iter().map(|e| e.id).collect::<HashSet<_>>();
        match self.claims.get(p) {
            Some(claims) => claims.iter().map(|(v, e)| (*v, ids(e))).collect(),
            None => match (self.vouchers.get(p), self.packs.get(p)) {
                (Some(v), Some(e)) => vec![(*v, ids(e))],
                _ => Vec::new(),
            },
        }
    }

    /// Claims for `entries` read from pack `p`'s own trailer, stored now as pack `as_pack`
    /// (itself, or its repacked copy).
    fn trailer_claims(&self, p: &PackId, as_pack: PackId, entries: &[BlobEntry]) -> Vec<Claim> {
        crate::index::split_by_claims(as_pack, entries, &self.listed_ids(p))
    }

    /// What the segments prune writes say of pack `p` holding `entries`.
    fn claims_of(&self, p: &PackId, entries: &[BlobEntry]) -> Vec<Claim> {
        match self.claims.get(p) {
            Some(claims) => claims.iter().map(|(v, e)| (*v, *p, e.clone())).collect(),
            None => vec![(self.vouchers.get(p).copied().unwrap_or(Voucher::Nobody), *p, entries.to_vec())],
        }
    }
}

fn load_view(repo: &Repository, warnings: &mut Vec<String>) -> Result<View> {
    let backend = repo.backend.as_ref();
    let gc::Records { valid: records, refused } = gc::load(backend, repo.gc_keys())?;
    let mut segments = backend.list("index")?;
    segments.sort();
    let mut listed: HashMap<PackId, Vec<(Voucher, Vec<BlobEntry>)>> = HashMap::new();
    let (trusted, w) = repo.trusted()?;
    warnings.extend(w);
    for name in &segments {
        match backend
            .get(name)
            .map_err(Error::from)
            .and_then(|d| decode_segment(repo.segment_keys(), name, d))
        {
            Ok((voucher, body)) => {
                for (p, entries) in body {
                    listed.entry(p).or_default().push((voucher, entries));
                }
            }
            // Superseded and deleted since the listing by another prune, which indexed its
            // packs anew first; those not listed yet are read from their trailers.
            Err(Error::Storage(io::StorageError::NotFound { .. })) => {}
            Err(e) => warnings.push(format!("{e}; its packs are read from their trailers")),
        }
    }
    let mut packs = BTreeMap::new();
    let mut sizes = HashMap::new();
    for key in backend.list("packs")? {
        let Some(id) = pack::parse_pack_key(&key) else { continue };
        match backend.size(&key) {
            Ok(size) => sizes.insert(id, size),
            // Deleted since the listing, by another prune's phase 2.
            Err(io::StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        packs.insert(id, Vec::new());
    }
    // Every segment's entries for a pack, merged: a segment written with a backup-only key
    // (which holds the catalog key) could otherwise list a pack with some of its blobs left
    // out, and prune would take them for unused. Claims can only add entries here; what a
    // pack really holds is checked against its own trailer before it is deleted (phase 2).
    let mut covered = HashSet::new();
    let mut vouchers: HashMap<PackId, Voucher> = HashMap::new();
    let mut claims = HashMap::new();
    for (p, mut listings) in listed {
        let Some(slot) = packs.get_mut(&p) else { continue };
        covered.insert(p);
        let mut best = Voucher::Nobody;
        for (v, entries) in &listings {
            slot.extend_from_slice(entries);
            best = trusted.better(&repo.owner, best, *v);
        }
        vouchers.insert(p, best);
        listings.sort_by_key(|a| a.0.stored());
        listings.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
        if listings.len() > 1 {
            claims.insert(p, listings);
        }
    }
    for slot in packs.values_mut() {
        slot.sort_unstable_by_key(|e| (e.offset, e.inner, e.id, e.len, e.raw_len, e.kind));
        slot.dedup();
    }
    for (id, entries) in packs.iter_mut() {
        if covered.contains(id) {
            continue;
        }
        match pack::read_trailer(backend, repo.trailer_keys(), &pack::pack_key(id)) {
            Ok(e) => *entries = e,
            // An unreadable pack is neither used nor condemned here: check reports it.
            Err(e) => warnings.push(format!("{e}; left alone")),
        }
    }
    Ok(View { packs, sizes, segments, covered, records, refused, vouchers, claims })
}

/// Every blob referenced by `snapshots`, walking each distinct tree once. A snapshot whose
/// trees this prune's index cannot read is tried again with the index as it is now: it may
/// have been committed after the view was loaded (its segment is newer), or another prune may
/// have deleted the copy the view's index names (a surviving copy is in a newer segment).
fn referenced(
    repo: &Repository,
    index: &Index,
    snapshots: &[(String, Snapshot)],
    warnings: &mut Vec<String>,
) -> Result<HashSet<BlobId>> {
    let mut seen: HashSet<BlobId> = HashSet::new();
    let reader = BlobReader::new(repo, index)?;
    let failed = walk_references(&reader, snapshots.iter(), &mut seen);
    if failed.is_empty() {
        return Ok(seen);
    }
    let (now, _) = repo.load_index()?;
    let reader = BlobReader::new(repo, &now)?;
    let again = walk_references(&reader, failed.iter().map(|(i, _)| &snapshots[*i]), &mut seen);
    for (i, e) in again {
        let name = &snapshots[failed[i].0].0;
        // Without all of a committed snapshot's references, deleting anything is unsafe.
        if name.starts_with("snapshots/") {
            return Err(Error::Invalid(format!(
                "{name} cannot be read ({e}): prune stops without deleting anything \
                 (see `bakare check`; `bakare repair snapshots` or `forget` it)"
            )));
        }
        // A pending snapshot whose trees are gone was written too late: its writer found
        // its view stale and gave it up (or was killed before it could say so, commit.rs);
        // it protects nothing.
        warnings.push(format!("{name}: {e}; ignored (an abandoned pending snapshot)"));
    }
    Ok(seen)
}

/// Adds the blobs each of `snapshots` references to `seen` (a snapshot's only when all of them
/// could be read); returns the position among `snapshots` and the error of those that failed.
fn walk_references<'s>(
    reader: &BlobReader,
    snapshots: impl Iterator<Item = &'s (String, Snapshot)>,
    seen: &mut HashSet<BlobId>,
) -> Vec<(usize, Error)> {
    let mut failures = Vec::new();
    for (at, (_, snap)) in snapshots.enumerate() {
        // This snapshot's references are merged only when all of them could be read.
        let mut mine: HashSet<BlobId> = HashSet::new();
        let mut stack: Vec<BlobId> = snap.tree.clone();
        let mut failed = None;
        while let Some(id) = stack.pop() {
            if seen.contains(&id) || !mine.insert(id) {
                continue;
            }
            let tree = reader.read(&id, BlobKind::Tree).and_then(|d| Tree::decode(&hex::encode(id), &d));
            let tree = match tree {
                Ok(t) => t,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            for n in tree.nodes {
                match n.kind {
                    NodeKind::File { content, .. } | NodeKind::HardLink { content, .. } => {
                        mine.extend(content)
                    }
                    NodeKind::Dir { subtree } => stack.extend(subtree),
                    _ => {}
                }
            }
        }
        match failed {
            None => seen.extend(mine),
            Some(e) => failures.push((at, e)),
        }
    }
    failures
}

/// What prune starts from: the snapshots whose references are live, and the pending copies
/// it may remove (commit.rs).
struct Roots {
    /// Committed snapshots, and pending ones not known to be finished with.
    roots: Vec<(String, Snapshot)>,
    /// How many of the roots are pending.
    pending: usize,
    /// Pending copies that may go: their id and why.
    leftovers: Vec<(String, PendingState)>,
    /// `abandoned/<id>` markers whose pending copy is gone already.
    orphan_markers: Vec<String>,
}

fn read_roots(repo: &Repository, warnings: &mut Vec<String>) -> Result<Roots> {
    let identity = repo.key.identity()?;
    // Markers, then pending, then committed snapshots (see the module doc). A writer creates
    // `abandoned/X` only after `pending/X`: a marker listed here whose pending copy the next
    // listing lacks lost its pending copy before that listing.
    let markers = commit::markers(repo)?;
    let mut pending_names = repo.backend.list("pending")?;
    pending_names.sort();
    let listed: HashSet<&str> = pending_names.iter().filter_map(|n| commit::id_of("pending", n)).collect();
    let mut pending = Vec::new();
    for name in &pending_names {
        let data = match repo.backend.get(name) {
            Ok(d) => d,
            // Removed since the listing (by another prune, or by forget with its snapshot).
            Err(io::StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        // Whoever signed it: a snapshot nobody trusts still keeps its data (any doubt keeps).
        match Snapshot::decode(identity, &repo.config.repo_id, name, &data).map(|(s, _)| s) {
            Ok(s) => pending.push((name.clone(), data, s)),
            Err(e) => warnings.push(format!("{e}; ignored")),
        }
    }
    let mut roots = Vec::new();
    let mut committed: HashMap<String, Vec<u8>> = HashMap::new();
    let mut names = repo.backend.list("snapshots")?;
    names.sort();
    for name in names {
        let data = match repo.backend.get(&name) {
            Ok(d) => d,
            // Forgotten since the listing: its data is no longer protected by it.
            Err(io::StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let s =
            Snapshot::decode(identity, &repo.config.repo_id, &name, &data).map(|(s, _)| s).map_err(|e| {
                Error::Invalid(format!("{e}: prune stops without deleting anything (see `bakare check`)"))
            })?;
        if let Some(id) = commit::id_of("snapshots", &name) {
            committed.insert(id.to_string(), data);
        }
        roots.push((name, s));
    }
    let mut out = Roots { roots, pending: 0, leftovers: Vec::new(), orphan_markers: Vec::new() };
    for (name, data, s) in pending {
        let Some(id) = commit::id_of("pending", &name) else { continue };
        let marker = if markers.contains(id) {
            match repo.backend.get(&commit::abandoned_key(id)) {
                Ok(m) => Some(m),
                Err(io::StorageError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        let state = commit::classify(&data, &s, committed.get(id).map(Vec::as_slice), marker.as_deref())?;
        if state.removable() {
            out.leftovers.push((id.to_string(), state));
            continue;
        }
        if state == PendingState::BadMarker {
            warnings.push(format!(
                "{}: does not prove that the writer of {name} gave it up (damaged, or forged by a holder \
                 of a backup key); the pending snapshot is kept",
                commit::abandoned_key(id)
            ));
        }
        out.pending += 1;
        out.roots.push((name, s));
    }
    out.orphan_markers = markers.iter().filter(|m| !listed.contains(m.as_str())).cloned().collect();
    out.orphan_markers.sort();
    Ok(out)
}

/// Removes the pending copies that may go, then markers left without a pending copy; returns
/// (pending copies of committed snapshots, abandoned pending snapshots) removed.
fn remove_leftovers(repo: &Repository, roots: &Roots) -> Result<(usize, usize)> {
    let (mut copies, mut abandoned) = (0, 0);
    for (id, state) in &roots.leftovers {
        repo.backend.delete(&commit::pending_key(id))?;
        if *state == PendingState::Abandoned {
            // The marker after its pending copy: a marker left alone is harmless.
            repo.backend.delete(&commit::abandoned_key(id))?;
            abandoned += 1;
        } else {
            copies += 1;
        }
    }
    for id in &roots.orphan_markers {
        repo.backend.delete(&commit::abandoned_key(id))?;
    }
    Ok((copies, abandoned))
}

/// Copies of blobs read back and authenticated by this prune, and those that failed.
#[derive(Default)]
struct Verified {
    seen: HashMap<(BlobId, PackId), bool>,
    failures: Vec<String>,
}

impl Verified {
    /// Verifies, pack by pack, every copy outside `doomed` of a used blob inside `doomed`: one
    /// reader per pack, so a pack's key is unwrapped once and a bundle decompressed once for
    /// all its members (blob by blob, a repack of small files would decompress each 512 KiB
    /// bundle once per member).
    fn prefetch(
        &mut self,
        repo: &Repository,
        view: &View,
        doomed: &HashSet<PackId>,
        condemned: &HashSet<PackId>,
        holders: &HashMap<BlobId, Vec<PackId>>,
    ) {
        let mut by_pack: BTreeMap<PackId, HashSet<BlobId>> = BTreeMap::new();
        for p in doomed {
            for e in &view.packs[p] {
                let stays = |h: &&PackId| !doomed.contains(*h) && !condemned.contains(*h);
                for h in holders.get(&e.id).into_iter().flatten().filter(stays) {
                    if !self.seen.contains_key(&(e.id, *h)) {
                        by_pack.entry(*h).or_default().insert(e.id);
                    }
                }
            }
        }
        for (h, ids) in by_pack {
            let entries: Vec<BlobEntry> =
                view.packs.get(&h).into_iter().flatten().filter(|e| ids.contains(&e.id)).cloned().collect();
            let mut b = IndexBuilder::default();
            b.add_pack(h, &entries);
            let index = b.build();
            let reader = match BlobReader::new(repo, &index) {
                Ok(r) => r,
                Err(_) => continue, // verified one by one later, and refused there
            };
            for e in &entries {
                let Some(kind) = e.kind() else { continue };
                let ok = self.judge(h, &e.id, reader.read(&e.id, kind).map(drop));
                self.seen.insert((e.id, h), ok);
            }
        }
    }

    /// Whether a read of blob `id` from pack `holder` verified; a failure is named.
    fn judge(&mut self, holder: PackId, id: &BlobId, read: Result<()>) -> bool {
        match read {
            Ok(()) => true,
            Err(err) => {
                self.failures.push(format!(
                    "{}: its copy of blob {} does not verify ({err}); the condemned copy is kept",
                    pack::pack_key(&holder),
                    hex::encode(id)
                ));
                false
            }
        }
    }

    /// Whether pack `holder` really holds blob `e.id`: its entry there is read, decrypted and
    /// hashed (once per blob and pack). Any error counts as no.
    fn holds(&mut self, repo: &Repository, view: &View, holder: PackId, e: &BlobEntry) -> bool {
        if let Some(ok) = self.seen.get(&(e.id, holder)) {
            return *ok;
        }
        let ok = match (view.packs.get(&holder).and_then(|es| es.iter().find(|x| x.id == e.id)), e.kind()) {
            (Some(entry), Some(kind)) => {
                let mut b = IndexBuilder::default();
                b.add_pack(holder, std::slice::from_ref(entry));
                let index = b.build();
                self.judge(
                    holder,
                    &e.id,
                    BlobReader::new(repo, &index).and_then(|r| r.read(&e.id, kind)).map(drop),
                )
            }
            _ => false,
        };
        self.seen.insert((e.id, holder), ok);
        ok
    }
}

fn build_index(view: &View, condemned: &HashSet<PackId>) -> Index {
    let mut idx = IndexBuilder::default();
    // Surviving copies first, so reads prefer them.
    for (p, entries) in view.packs.iter().filter(|(p, _)| !condemned.contains(*p)) {
        idx.add_pack(*p, entries);
    }
    for (p, entries) in view.packs.iter().filter(|(p, _)| condemned.contains(*p)) {
        idx.add_pack(*p, entries);
    }
    idx.build()
}

/// Segments saying `claims`, signed by the owner, each pack under its voucher's word.
fn write_segments(repo: &Repository, claims: Vec<Claim>) -> Result<Vec<String>> {
    crate::index::put_vouched(repo.backend.as_ref(), &repo.sealer()?, crate::index::by_voucher(claims))
}

/// A new pack holding the sealed units of `src` that contain a used blob, under the same data
/// key. Returns its id, entries and size.
fn repack(repo: &Repository, src: &PackId, used: &HashSet<BlobId>) -> Result<(PackId, Vec<BlobEntry>, u64)> {
    let key = pack::pack_key(src);
    let data = repo.backend.get(&key)?;
    let wrapped = pack::header_key(&data).ok_or_else(|| Error::corrupt("pack", &key, "bad header"))?;
    let header_len = 12 + wrapped.len();
    // The new pack keeps the header, so its trailer is sealed under the same data key.
    let data_key = crate::crypto::unwrap_key(repo.key.identity()?, wrapped)
        .map_err(|e| Error::corrupt("pack", &key, e))?;
    // The pack's own trailer, not what segments claim it holds: a segment can list entries
    // that are not there (a forged one, written with the catalog key a backup-only key has),
    // and the new pack must not carry them under its source's voucher.
    if blake3::hash(&data).as_bytes() != src {
        return Err(Error::corrupt("pack", &key, "content does not match its name"));
    }
    let entries = pack::trailer_from_bytes(repo.trailer_keys(), &key, &data)?;
    let mut units: BTreeMap<(u32, u32), Vec<&BlobEntry>> = BTreeMap::new();
    for e in &entries {
        units.entry((e.offset, e.len)).or_default().push(e);
    }
    let mut out = data[..header_len].to_vec();
    let mut kept = Vec::new();
    for ((offset, len), members) in units {
        if !members.iter().any(|e| used.contains(&e.id)) {
            continue;
        }
        let unit = data
            .get(offset as usize..offset as usize + len as usize)
            .ok_or_else(|| Error::corrupt("pack", &key, "blob outside the pack"))?;
        let new_offset = u32::try_from(out.len()).map_err(|_| Error::Pipeline("pack over 4 GiB".into()))?;
        out.extend_from_slice(unit);
        kept.extend(members.into_iter().map(|e| BlobEntry { offset: new_offset, ..*e }));
    }
    let trailer = pack::seal_trailer(&data_key, &kept)?;
    out.extend_from_slice(&trailer);
    out.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
    out.extend_from_slice(pack::END2);
    let parity = crate::format::parity::section(&out, repo.config.parity)?;
    out.extend_from_slice(&parity);
    let id: PackId = *blake3::hash(&out).as_bytes();
    repo.backend.put(&pack::pack_key(&id), &out)?;
    Ok((id, kept, out.len() as u64))
}

pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    repo.key.identity()?;
    let mut report = PruneReport::default();
    // The grace period as stored now (another machine may have changed it).
    let config = repo.fresh_config()?;
    let now = crate::clock::now_ns();
    let grace = config.prune_grace_ns(now);
    report.grace_ns = grace;

    let mut warnings = Vec::new();
    // This prune's own view age, on the boot clock (suspends count): phase 2 deletes only
    // while it is under half the shortest grace period any prune may be using (during a
    // change, another may already act on the new one; docs/concurrency.md, two prunes at
    // once). Checked before every deletion.
    let view_ns = crate::clock::boot_ns();
    let guard_ns = config.shortest_grace_ns(now) / 2;
    let young =
        || opts.dry_run || opts.unsafe_now || crate::clock::boot_ns().saturating_sub(view_ns) <= guard_ns;
    let mut stale = false;
    let view = load_view(repo, &mut warnings)?;
    let roots = read_roots(repo, &mut warnings)?;
    report.snapshots = roots.roots.len() - roots.pending;
    report.pending = roots.pending;
    // A record that is not the owner's condemns nothing; it goes (a record holds no data).
    for (name, why) in &view.refused {
        if opts.dry_run {
            warnings.push(format!("{name}: {why}: ignored; prune removes it"));
        } else {
            repo.backend.delete(name)?;
            warnings.push(format!("{name}: {why}: ignored and removed"));
        }
    }
    let all_condemned = gc::condemned_packs(&view.records);
    let index = build_index(&view, &all_condemned);
    let used = referenced(repo, &index, &roots.roots, &mut warnings)?;

    // Which packs hold each used blob.
    let mut holders: HashMap<BlobId, Vec<PackId>> = HashMap::new();
    for (p, entries) in &view.packs {
        for e in entries {
            if used.contains(&e.id) {
                holders.entry(e.id).or_default().push(*p);
            }
        }
    }

    // Phase 2.
    let mut verified = Verified::default();
    let mut own: HashMap<PackId, Vec<BlobEntry>> = HashMap::new();
    let mut gone: HashSet<PackId> = HashSet::new();
    let mut rescued_all: Vec<PackId> = Vec::new();
    let mut live_records = Vec::new();
    let mut live_names: Vec<&str> = Vec::new();
    let mut deleted_segments: HashSet<String> = HashSet::new();
    let place = match &repo.location {
        crate::repo::Location::Local(p) => {
            use std::os::unix::ffi::OsStrExt;
            std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).as_os_str().as_bytes().to_vec()
        }
        crate::repo::Location::S3(url) | crate::repo::Location::Serve(url) => url.as_bytes().to_vec(),
    };
    let mut seen = crate::format::seen::Seen::load(opts.state_dir.as_deref(), &repo.config.repo_id, &place);
    // An older config than one seen before was put back: writers that read the newer one may
    // count on its grace period, so nothing is deleted until the owner writes a new config.
    let replayed = seen.config_older_than_seen(config.grace_changed_ns).filter(|_| !opts.unsafe_now);
    if let Some(newer) = replayed {
        warnings.push(format!(
            "config: its grace period last changed at {}, before that of a config this machine saw \
             ({}): an old config was put back (or written from a clock far behind); prune deletes \
             nothing until the owner writes a new one (`bakare config --grace ...`)",
            crate::clock::format_ns(config.grace_changed_ns),
            crate::clock::format_ns(newer)
        ));
    }
    for (name, rec) in &view.records {
        // From the later of its own time and when this machine first saw it: a record put back
        // after it was processed must wait its grace period again.
        let since = rec.time_ns.max(seen.first_seen(name, now));
        let due = since.saturating_add(grace);
        if !(opts.unsafe_now || now >= due) {
            let packs: Vec<_> = rec.packs.iter().filter(|p| view.packs.contains_key(*p)).collect();
            let bytes = packs.iter().filter_map(|p| view.sizes.get(*p)).sum();
            report.waiting.push((name.clone(), due, packs.len(), bytes));
            live_records.push(rec);
            live_names.push(name.as_str());
            continue;
        }
        if replayed.is_some() || stale || !young() {
            stale = replayed.is_none();
            // Due, and held back: listed as waiting (due now), so freed_later counts it.
            let packs: Vec<_> = rec.packs.iter().filter(|p| view.packs.contains_key(*p)).collect();
            let bytes = packs.iter().filter_map(|p| view.sizes.get(*p)).sum();
            report.waiting.push((name.clone(), now, packs.len(), bytes));
            live_records.push(rec);
            live_names.push(name.as_str());
            continue;
        }
        let mut doomed: HashSet<PackId> =
            rec.packs.iter().copied().filter(|p| view.packs.contains_key(p)).collect();
        // What each pack about to go holds, by its own trailer (the pack's name is the hash of
        // its bytes, so its trailer is what its writer wrote): a used blob the segments left out
        // still counts. A pack whose trailer cannot be read stays (any doubt keeps).
        for p in doomed.clone() {
            match pack::read_trailer(repo.backend.as_ref(), repo.trailer_keys(), &pack::pack_key(&p)) {
                Ok(entries) => {
                    for e in entries.iter().filter(|e| used.contains(&e.id)) {
                        let hs = holders.entry(e.id).or_default();
                        if !hs.contains(&p) {
                            hs.push(p);
                        }
                    }
                    own.insert(p, entries);
                }
                // Deleted already, by another prune's phase 2.
                Err(Error::Storage(io::StorageError::NotFound { .. })) => {
                    doomed.remove(&p);
                    gone.insert(p);
                }
                Err(e) => {
                    doomed.remove(&p);
                    warnings.push(format!("{e}: its trailer cannot be read, so it is kept"));
                }
            }
        }
        doomed.extend(gone.iter().copied());
        // Rescue until nothing changes: a pack may go only when every used blob in it also
        // lives in a pack that stays, and that copy has been read and authenticated here: an
        // index entry is only a claim (a backup-only key can write one for any id). A pack
        // that stays is one no record in this view condemns, due or waiting: another prune
        // may be deleting a pack whose record is due for it and not yet for this one
        // (docs/concurrency.md, two prunes at once).
        let mut rescued = Vec::new();
        verified.prefetch(repo, &view, &doomed, &all_condemned, &holders);
        loop {
            let stays = |h: &PackId| !doomed.contains(h) && !all_condemned.contains(h);
            let save: Vec<PackId> = doomed
                .iter()
                .filter(|p| {
                    own.get(*p).unwrap_or(&view.packs[*p]).iter().any(|e| {
                        holders.get(&e.id).is_some_and(|hs| {
                            !hs.iter().any(|h| stays(h) && verified.holds(repo, &view, *h, e))
                        })
                    })
                })
                .copied()
                .collect();
            if save.is_empty() {
                break;
            }
            for p in save {
                doomed.remove(&p);
                if !gone.contains(&p) {
                    rescued.push(p);
                }
            }
        }
        let mut outcome = PhaseTwo {
            record: name.clone(),
            condemned: rec.packs.len(),
            rescued: rescued.len(),
            ..Default::default()
        };
        if !opts.dry_run {
            // Rescued packs need a segment that survives (theirs may be condemned).
            // A pack's own trailer (read above) under each voucher, for the ids it listed.
            let claims: Vec<Claim> = rescued
                .iter()
                .flat_map(|p| match own.get(p) {
                    Some(e) => view.trailer_claims(p, *p, e),
                    None => view.claims_of(p, &view.packs[p]),
                })
                .collect();
            write_segments(repo, claims)?;
            for s in &rec.segments {
                if !young() {
                    stale = true;
                    break;
                }
                if let Ok(sz) = repo.backend.size(s) {
                    outcome.freed_bytes += sz;
                }
                repo.backend.delete(s)?;
                deleted_segments.insert(s.clone());
                outcome.deleted_segments += 1;
            }
        }
        for p in &doomed {
            if gone.contains(p) {
                continue;
            }
            if stale || !young() {
                stale = true;
                break;
            }
            if !opts.dry_run {
                repo.backend.delete(&pack::pack_key(p))?;
            }
            gone.insert(*p);
            outcome.deleted_packs += 1;
            outcome.freed_bytes += view.sizes.get(p).copied().unwrap_or(0);
        }
        rescued_all.extend(rescued);
        report.phase2.push(outcome);
        if stale {
            // Kept: the next prune finishes it. What it deleted is in `deleted`; what is left,
            // in `waiting`.
            let left: Vec<_> = doomed.iter().filter(|p| !gone.contains(*p)).collect();
            let bytes = left.iter().filter_map(|p| view.sizes.get(*p)).sum();
            report.waiting.push((name.clone(), now, left.len(), bytes));
            live_records.push(rec);
            live_names.push(name.as_str());
            continue;
        }
        if !opts.dry_run {
            repo.backend.delete(name)?;
        }
    }
    if stale {
        warnings.push(
            "this prune's view of the repository grew older than half the grace period (was it \
             suspended?): it stopped deleting; the next prune finishes the job"
                .into(),
        );
    }

    warnings.append(&mut verified.failures);

    // Phase 1, over the packs no record still waiting condemns.
    let waiting_condemned: HashSet<PackId> =
        live_records.iter().flat_map(|r| r.packs.iter().copied()).collect();
    let candidates: Vec<&PackId> = view
        .packs
        .keys()
        .filter(|p| !gone.contains(*p) && !waiting_condemned.contains(*p) && !rescued_all.contains(*p))
        .collect();
    let mut condemn = Vec::new();
    let mut to_repack = Vec::new();
    for p in candidates {
        let entries = &view.packs[p];
        if entries.is_empty() {
            continue; // unreadable: left alone
        }
        let mut units: HashMap<(u32, u32), bool> = HashMap::new();
        for e in entries {
            *units.entry((e.offset, e.len)).or_default() |= used.contains(&e.id);
        }
        let total: u64 = units.keys().map(|(_, l)| u64::from(*l)).sum();
        let live: u64 = units.iter().filter(|(_, u)| **u).map(|((_, l), _)| u64::from(*l)).sum();
        if live == 0 {
            condemn.push(*p);
        } else if total > 0 && (total - live) as f64 > opts.repack_threshold * total as f64 {
            to_repack.push(*p);
        }
    }
    let mut new_packs: Vec<Claim> = Vec::new();
    for p in &to_repack {
        if opts.dry_run {
            report.repacked_packs += 1;
            continue;
        }
        let (id, entries, size) = match repack(repo, p, &used) {
            Ok(r) => r,
            // Deleted since the view was loaded: another prune's phase 2 found it condemned
            // and every used blob in it held elsewhere.
            Err(Error::Storage(io::StorageError::NotFound { .. })) => {
                gone.insert(*p);
                continue;
            }
            // A pack whose trailer or header does not read stays as it is (check names it).
            Err(e @ Error::Corrupt { .. }) => {
                warnings.push(format!("{e}; not repacked"));
                continue;
            }
            Err(e) => return Err(e),
        };
        report.repacked_bytes_copied += size;
        report.repacked_packs += 1;
        if id != *p {
            // A repacked pack holds a subset of the sealed units of its source, copied as
            // they are with the entries of its trailer: each voucher of the source vouches for
            // the entries it listed there.
            new_packs.extend(view.trailer_claims(p, id, &entries));
            condemn.push(*p);
        }
    }
    report.new_packs = new_packs.len();
    report.condemned_packs = condemn.len() + if opts.dry_run { to_repack.len() } else { 0 };
    report.condemned_bytes = condemn
        .iter()
        .chain(if opts.dry_run { to_repack.iter() } else { [].iter() })
        .filter_map(|p| view.sizes.get(p))
        .sum();
    // Compact the index when there is anything to condemn or several segments to merge.
    let uncovered_live =
        view.packs.keys().any(|p| !view.covered.contains(p) && !condemn.contains(p) && !gone.contains(p));
    // Segments still in force: not deleted now, not already condemned by a waiting record.
    let condemned_segments: HashSet<&String> = live_records.iter().flat_map(|r| r.segments.iter()).collect();
    let segments: Vec<&String> = view
        .segments
        .iter()
        .filter(|s| !deleted_segments.contains(*s) && !condemned_segments.contains(s))
        .collect();
    let rescue_segments = !rescued_all.is_empty();
    let condemned_now: HashSet<PackId> = condemn.iter().copied().collect();
    let claims: Vec<Claim> = view
        .packs
        .iter()
        .filter(|(p, e)| {
            !e.is_empty()
                && !gone.contains(*p)
                && !condemned_now.contains(*p)
                && !waiting_condemned.contains(*p)
        })
        .flat_map(|(p, e)| view.claims_of(p, e))
        .chain(new_packs)
        .collect();
    let groups = crate::index::by_voucher(claims);
    // Compacted, the index takes a set of segments per voucher: more than that is worth
    // merging (and exactly that, rewritten, would be written again on every run).
    let merge = segments.len() > crate::index::segments_for(&groups);
    if !opts.dry_run && (!condemn.is_empty() || merge || uncovered_live || rescue_segments) {
        let written = crate::index::put_vouched(repo.backend.as_ref(), &repo.sealer()?, groups)?;
        report.segments_written = written.len();
        let superseded: Vec<String> =
            segments.into_iter().filter(|s| !written.contains(s)).cloned().collect();
        report.segments_condemned = superseded.len();
        let rec = GcRecord {
            version: gc::VERSION,
            // T1 is when the record becomes visible: a writer that did not see it looked earlier.
            time_ns: crate::clock::now_ns(),
            host: opts.host.clone(),
            packs: condemn,
            segments: superseded,
        };
        if !rec.packs.is_empty() || !rec.segments.is_empty() {
            let (name, bytes) =
                rec.encode(&repo.wk.catalog_key, &repo.key.owner_signer()?, &repo.config.repo_id)?;
            repo.backend.put(&name, &bytes)?;
            seen.first_seen(&name, rec.time_ns);
            report.record = Some(name);
        }
    }
    if !opts.dry_run {
        live_names.extend(report.record.as_deref());
        if let Err(e) = seen.save(&live_names) {
            warnings.push(format!(
                "cannot save when condemnation records were first seen ({e}): the next prune waits their grace period again"
            ));
        }
    }
    // Last: removing a pending copy frees nothing by itself (its data goes through phases 1
    // and 2 like any other), and a prune stopped before this point leaves it for the next one.
    if opts.dry_run {
        let n = |st| roots.leftovers.iter().filter(|(_, s)| *s == st).count();
        (report.pending_removed, report.abandoned_removed) =
            (n(PendingState::Committed), n(PendingState::Abandoned));
    } else {
        (report.pending_removed, report.abandoned_removed) = remove_leftovers(repo, &roots)?;
    }
    // The roster is how writers learn of revocations: an entry deleted from storage (or never
    // written, in a repository from before it) is written again from the owner's registry.
    match crate::ops::writers::sync_roster(repo, opts.dry_run) {
        Ok(0) => {}
        Ok(n) => warnings.push(format!(
            "{n} roster entries were missing (deleted, or from before the roster); {}",
            if opts.dry_run { "prune writes them" } else { "written again" }
        )),
        Err(e) => warnings.push(format!("cannot bring the roster up to date: {e}")),
    }
    // Temporary files of writes that never finished (a killed run) hold nothing anyone reads.
    // One younger than the grace period may belong to a writer that is only suspended, like
    // the packs phase 2 waits for.
    for t in repo.backend.leftovers()? {
        let age = now.saturating_sub(t.modified_ns);
        if !opts.unsafe_now && age <= grace {
            report.temp_kept += 1;
            continue;
        }
        if !opts.dry_run && !repo.backend.remove_leftover(&t.name)? {
            report.temp_kept += 1; // a writer is still writing it
            continue;
        }
        report.temp_removed += 1;
        report.temp_bytes = report.temp_bytes.saturating_add(t.size);
    }
    report.warnings = warnings;
    Ok(report)
}
