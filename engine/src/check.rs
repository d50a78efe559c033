//! `check`: verifies that every snapshot can be restored, and names exactly what is damaged.
//!
//! - Structure (always): every index segment authenticates and matches its name; every pack an
//!   index lists exists; every pack exists in some segment (or is a leftover nothing uses);
//!   every snapshot decrypts and matches its name; every tree of every snapshot (and pending
//!   snapshot) decrypts and decodes, and every blob a file needs is in the index.
//! - Data (`--read-data`, or a subset of the packs): every pack is read whole and hashed against
//!   its name (no key needed), and every blob in it is decrypted, decompressed and hashed
//!   against its id.
//! - Without the secret key only what the writer key can read is checked: segments, trailers,
//!   and pack files against their names.
//!
//! Trees are content-addressed, so a subtree found intact once is not walked again: checking
//! thirty snapshots of one tree costs little more than checking one.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use stages::compress::unframe;
use stages::encrypt;
use stages::hash::blob_id;
use stages::{BlobId, BlobKind, BUNDLE_ID};

use crate::commit::{self, PendingState};
use crate::crypto::unwrap_key;
use crate::error::{Error, Result};
use crate::index::{for_each_pack, Detail, Index, IndexBuilder, Trusted, Voucher};
use crate::pack::{self, BlobEntry, PackId};
use crate::repo::{BlobReader, Repository};
use crate::snapshot::Snapshot;
use crate::tree::{
    amplification_limit, entries_size, Listing, NodeKind, Tree, MAX_AMPLIFICATION, MAX_DEPTH, MAX_DIR_BLOBS,
    MAX_HELD, MAX_PATH,
};

/// Which packs `--read-data` reads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Subset {
    All,
    /// A random fraction (0 < f <= 1) of the packs, different on every run.
    Fraction(f64),
    /// Part `n` of `m` (1-based): the packs whose id's first byte is `n - 1` modulo `m`, so
    /// running 1/m ... m/m reads every pack once.
    Part(u32, u32),
}

impl Subset {
    /// Parses `10%`, `2.5%` or `n/m`.
    pub fn parse(s: &str) -> std::result::Result<Subset, String> {
        let bad = || format!("{s:?} is not a subset like 10% or 1/5");
        if let Some(p) = s.strip_suffix('%') {
            let f: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(f > 0.0 && f <= 100.0) {
                return Err(format!("{s:?}: the percentage must be above 0 and at most 100"));
            }
            return Ok(Subset::Fraction(f / 100.0));
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (n.trim().parse().map_err(|_| bad())?, m.trim().parse().map_err(|_| bad())?);
        if m == 0 || n == 0 || n > m || m > 256 {
            return Err(format!("{s:?}: need 1 <= n <= m <= 256"));
        }
        Ok(Subset::Part(n, m))
    }

    fn picks(&self, pack: &PackId, seed: &[u8; 32]) -> bool {
        match *self {
            Subset::All => true,
            Subset::Fraction(f) => {
                let h = blake3::keyed_hash(seed, pack);
                let mut b = [0u8; 8];
                b.copy_from_slice(&h.as_bytes()[..8]);
                (u64::from_le_bytes(b) as f64) < f * (u64::MAX as f64)
            }
            Subset::Part(n, m) => u32::from(pack[0]) % m == n - 1,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    pub read_data: Option<Subset>,
    /// With `read_data`: read only the packs this writer (by name, as `key list` shows it)
    /// vouched for, to find what a compromised writer damaged.
    pub writer: Option<String>,
    pub workers: usize,
    /// Packs to take as lost (`packs/hh/<id>` -> why), though listed: what a storage audit
    /// found a server no longer holds, so that the report names what depends on them.
    pub lost: BTreeMap<String, String>,
}

/// One damaged object: a repository file, or a blob inside a pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub object: String,
    pub why: String,
}

/// A file or directory of a snapshot that cannot be restored (whole or in part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affected {
    /// `snapshots/<id>` or `pending/<id>`.
    pub snapshot: String,
    pub path: Vec<u8>,
    pub why: String,
}

#[derive(Debug, Default)]
pub struct CheckReport {
    pub damage: Vec<Damage>,
    pub affected: Vec<Affected>,
    /// Harmless findings (leftovers of interrupted backups, pending snapshots).
    pub notes: Vec<String>,
    /// Packs whose damage their parity repairs (`format::parity`): not damage, as what they
    /// hold reads back exact, but worth rewriting. The 4 KiB data blocks rebuilt in each.
    pub corrected: Vec<(String, usize)>,
    pub snapshots: usize,
    pub trees: u64,
    pub packs: usize,
    pub packs_read: usize,
    pub bytes_read: u64,
    pub blobs_verified: u64,
    /// False with a backup-only key: snapshots and trees were not read.
    pub snapshots_checked: bool,
    /// Tree ids found intact (all they reference is present and undamaged), with the extent
    /// of what they hold.
    pub(crate) clean_trees: HashMap<BlobId, Extent>,
    /// Damaged copies of blobs found by reading data: (blob, pack holding the bad copy) -> why.
    pub(crate) bad_blobs: HashMap<(BlobId, PackId), String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty() && self.affected.is_empty()
    }
}

/// The repository as check sees it: the index (segments plus trailers of uncovered packs) and
/// what is wrong with it.
pub(crate) struct Survey {
    pub index: Index,
    /// Packs prune has condemned (deleted a grace period later unless a snapshot needs them).
    pub condemned: HashSet<PackId>,
    pub present: BTreeMap<PackId, String>,
    /// Blobs that only missing packs hold (kept out of the index, so another copy wins).
    pub missing_blobs: HashMap<BlobId, PackId>,
    /// Why each missing pack was expected: the segment that lists it, and how many blobs.
    pub missing_why: Vec<(PackId, String)>,
    pub uncovered: Vec<PackId>,
    /// Every word segments give for each pack (`Nobody` for packs known only by their
    /// trailers).
    pub vouchers: HashMap<PackId, Vec<crate::index::Voucher>>,
}

fn name_matches(name: &str, data: &[u8]) -> bool {
    name.rsplit('/').next() == Some(blake3::hash(data).to_hex().as_str())
}

/// Lists packs and reads every index segment (and the trailers of packs no segment lists).
pub(crate) fn survey(
    repo: &Repository,
    lost: &BTreeMap<String, String>,
    report: &mut CheckReport,
) -> Result<Survey> {
    let backend = repo.backend.as_ref();
    let mut present = BTreeMap::new();
    for key in backend.list("packs")? {
        match pack::parse_pack_key(&key) {
            Some(_) if lost.contains_key(&key) => {}
            Some(id) if pack::pack_key(&id) == key => {
                present.insert(id, key);
            }
            _ => report
                .damage
                .push(Damage { object: key, why: "not a pack name (a stray file in packs/)".into() }),
        }
    }
    report.packs = present.len();
    let condemned = match crate::gc::load(backend, repo.gc_keys()) {
        Ok(records) => {
            for (name, why) in records.refused {
                report.damage.push(Damage {
                    object: name,
                    why: format!("{why}: it condemns nothing (prune removes it)"),
                });
            }
            crate::gc::condemned_packs(&records.valid)
        }
        Err(e) => {
            report.damage.push(Damage { object: "gc/".into(), why: e.to_string() });
            HashSet::new()
        }
    };
    let mut index = IndexBuilder::default();
    let mut late = Vec::new();
    let mut covered = HashSet::new();
    let mut missing_packs = HashSet::new();
    let mut missing_blobs = HashMap::new();
    let mut missing_why = Vec::new();
    let trusted = match repo.trusted() {
        Ok((t, warnings)) => {
            report.notes.extend(warnings);
            t
        }
        Err(e) => {
            report.damage.push(Damage { object: "writers/".into(), why: e.to_string() });
            Trusted::default()
        }
    };
    let mut vouchers: HashMap<PackId, Vec<Voucher>> = HashMap::new();
    let mut segments = backend.list("index")?;
    segments.sort();
    for name in segments {
        let data = match backend.get(&name) {
            Ok(d) => d,
            Err(e) => {
                report.damage.push(Damage { object: name, why: format!("cannot read: {e}") });
                continue;
            }
        };
        let matches = name_matches(&name, &data);
        // A backup-only key reads which ids each pack holds, not where (sealed to the owner).
        let detail = if repo.key.identity.is_some() { Detail::Full } else { Detail::Ids };
        let mut packs = Vec::new();
        let body =
            for_each_pack(repo.segment_keys(), &name, data, detail, |_, p, entries| packs.push((p, entries)))
                .map(|voucher| (voucher, packs));
        let mut why = match &body {
            Err(e) => Some(e.to_string()),
            Ok(_) if !matches => Some("content does not match its name".into()),
            Ok(_) => None,
        };
        if let Ok((voucher, packs)) = body {
            let vouched = trusted.vouches(&voucher);
            for (p, entries) in packs {
                covered.insert(p);
                let v = vouchers.entry(p).or_default();
                if !v.contains(&voucher) {
                    v.push(voucher);
                }
                if condemned.contains(&p) {
                    // Read last, so surviving copies win; deleted ones are expected.
                    if present.contains_key(&p) {
                        late.push((p, entries, vouched));
                    }
                    continue;
                }
                if !present.contains_key(&p) {
                    if missing_packs.insert(p) {
                        let why = match lost.get(&pack::pack_key(&p)) {
                            Some(why) => format!("{why} ({} blobs listed by {name})", entries.len()),
                            None => format!("missing ({} blobs listed by {name})", entries.len()),
                        };
                        missing_why.push((p, why));
                    }
                    for e in &entries {
                        missing_blobs.entry(e.id).or_insert(p);
                    }
                    continue;
                }
                index.add_pack_vouched(p, &entries, vouched);
            }
        }
        if let Some(w) = why.take() {
            report.damage.push(Damage {
                object: name,
                why: format!("{w} (the packs it lists are read from their trailers; `bakare repair index` rewrites it)"),
            });
        }
    }
    let mut uncovered = Vec::new();
    let mut sealed = 0usize;
    for (id, key) in &present {
        if covered.contains(id) {
            continue;
        }
        uncovered.push(*id);
        vouchers.insert(*id, vec![Voucher::Nobody]);
        match pack::read_trailer(backend, repo.trailer_keys(), key) {
            Ok(entries) if condemned.contains(id) => late.push((*id, entries, false)),
            Ok(entries) => index.add_pack_vouched(*id, &entries, false),
            Err(Error::SealedToOwner(_)) => sealed += 1,
            Err(e) => report.damage.push(Damage { object: key.clone(), why: e.to_string() }),
        }
    }
    if sealed > 0 {
        report.notes.push(format!(
            "{sealed} packs in no index segment have blob lists sealed to the owner: a backup-only key \
             cannot check them"
        ));
    }
    for (p, entries, vouched) in late {
        index.add_pack_with(p, &entries, vouched, true);
    }
    let index = index.build();
    missing_blobs.retain(|b, _| !index.contains(b));
    let unvouched = present
        .keys()
        .filter(|p| !vouchers.get(*p).is_some_and(|v| v.iter().any(|v| trusted.vouches(v))))
        .count();
    if unvouched > 0 {
        report.notes.push(format!(
            "{unvouched} packs are vouched for by no writer in good standing (a revoked or unregistered \
             writer's, unsigned index segments of before 2026-12, or packs found only by their trailers): \
             backups do not deduplicate against them"
        ));
    }
    Ok(Survey { index, condemned, present, missing_blobs, missing_why, uncovered, vouchers })
}

/// What reading one pack found.
#[derive(Default)]
pub(crate) struct PackVerdict {
    pub damage: Vec<Damage>,
    pub bad_blobs: Vec<(BlobId, String)>,
    pub bytes: u64,
    pub blobs: u64,
    /// The data blocks its parity rebuilt, when the pack read back exact only through it.
    pub corrected: Option<usize>,
}

/// Reads a pack whole: checks its name, header, trailer, and (with the identity) every blob.
fn verify_pack(
    repo: &Repository,
    identity: Option<&age::x25519::Identity>,
    index: &Index,
    id: &PackId,
    key: &str,
) -> PackVerdict {
    let mut v = PackVerdict::default();
    let data = match repo.backend.get(key) {
        Ok(d) => d,
        Err(e) => {
            v.damage.push(Damage { object: key.into(), why: format!("cannot read: {e}") });
            return v;
        }
    };
    v.bytes = data.len() as u64;
    let mut data = data;
    if blake3::hash(&data).as_bytes() != id {
        // Repaired from its parity into exactly the bytes it was named by: a correction. If
        // not, the blobs are verified from the bytes as they are.
        let mut repaired = data.clone();
        match crate::format::parity::repair_whole(&mut repaired, pack::ends_plain) {
            Ok(Some(n)) if blake3::hash(&repaired).as_bytes() == id => {
                v.corrected = Some(n);
                data = repaired;
            }
            _ => v.damage.push(Damage {
                object: key.into(),
                why: "content does not match its name (bit rot, truncation or tampering)".into(),
            }),
        }
    }
    // Which blobs to verify: the trailer's list, or the index's when the trailer is damaged.
    let entries: Vec<BlobEntry> = match pack::trailer_from_bytes(repo.trailer_keys(), key, &data) {
        Ok(e) => e,
        // Only the owner reads it (and the blobs): its name was all a backup-only key could check.
        Err(Error::SealedToOwner(_)) => return v,
        Err(e) => {
            v.damage.push(Damage { object: key.into(), why: e.to_string() });
            let pos = (0..index.pack_count() as u32).find(|&p| index.pack_id(p) == Some(id));
            index
                .iter()
                .filter(|(_, l)| Some(l.pack) == pos)
                .map(|(b, l)| BlobEntry {
                    id: *b,
                    kind: l.kind as u8,
                    offset: l.offset,
                    len: l.len,
                    raw_len: l.raw_len,
                    inner: l.inner,
                })
                .collect()
        }
    };
    let Some(identity) = identity else { return v };
    let data_key = match pack::header_key(&data).and_then(|w| unwrap_key(identity, w).ok()) {
        Some(k) => k,
        None => {
            v.damage.push(Damage { object: key.into(), why: "header (wrapped data key) is damaged".into() });
            for e in &entries {
                v.bad_blobs.push((e.id, format!("in {key}, whose data key is damaged")));
            }
            return v;
        }
    };
    // Group bundle members by the sealed bundle that holds them.
    let mut units: BTreeMap<(u32, u32), Vec<&BlobEntry>> = BTreeMap::new();
    for e in &entries {
        units.entry((e.offset, e.len)).or_default().push(e);
    }
    let id_key = repo.wk.id_key.as_bytes();
    let mut bad = 0usize;
    for ((offset, len), members) in units {
        let sealed = data.get(offset as usize..offset as usize + len as usize);
        let bundle = members.iter().any(|e| e.inner.is_some());
        let plain = sealed.and_then(|s| {
            let (bid, kind) = if bundle {
                (BUNDLE_ID, BlobKind::Bundle)
            } else {
                (members[0].id, members[0].kind().unwrap_or(BlobKind::Data))
            };
            let frame = encrypt::open(&data_key, &bid, kind, s).ok()?;
            unframe(&frame).ok()
        });
        for e in members {
            v.blobs += 1;
            let part = plain.as_ref().and_then(|p| match e.inner {
                Some(i) => p.get(i as usize..i as usize + e.raw_len as usize),
                None => Some(p.as_slice()),
            });
            if part.is_none_or(|p| blob_id(id_key, p) != e.id) {
                bad += 1;
                v.bad_blobs.push((e.id, format!("damaged (in {key} at offset {offset})")));
            }
        }
    }
    if bad > 0 {
        v.damage.push(Damage { object: key.into(), why: format!("{bad} blobs fail authentication") });
    }
    v
}

/// Reads `packs` whole with `workers` threads (`verify_pack` each); results sorted by pack.
pub(crate) fn verify_packs(
    repo: &Repository,
    index: &Index,
    packs: Vec<PackId>,
    workers: usize,
) -> Vec<(PackId, PackVerdict)> {
    let identity = repo.key.identity().ok();
    let next = Mutex::new(packs.into_iter());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let job = next.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some(id) = job else { break };
                let v = verify_pack(repo, identity, index, &id, &pack::pack_key(&id));
                results.lock().unwrap_or_else(|p| p.into_inner()).push((id, v));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|r| r.0);
    results
}

/// Reads the selected packs in parallel.
/// With `only`, just the packs that one of those keys vouched for.
fn read_data(
    repo: &Repository,
    survey: &Survey,
    subset: Subset,
    only: Option<&HashSet<crate::signing::PublicKey>>,
    workers: usize,
    report: &mut CheckReport,
) {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let by_writer = |id: &PackId| {
        only.is_none_or(|keys| {
            survey
                .vouchers
                .get(id)
                .is_some_and(|v| v.iter().filter_map(Voucher::key).any(|k| keys.contains(k)))
        })
    };
    let chosen: Vec<PackId> =
        survey.present.keys().filter(|id| by_writer(id) && subset.picks(id, &seed)).copied().collect();
    report.packs_read = chosen.len();
    for (pack, v) in verify_packs(repo, &survey.index, chosen, workers) {
        if let Some(n) = v.corrected {
            report.corrected.push((pack::pack_key(&pack), n));
        }
        report.damage.extend(v.damage);
        report.bytes_read += v.bytes;
        report.blobs_verified += v.blobs;
        for (id, why) in v.bad_blobs {
            report.bad_blobs.entry((id, pack)).or_insert(why);
        }
    }
}

/// Walks snapshot trees, recording damage and the referenced blobs.
pub(crate) struct Walker<'a> {
    pub reader: BlobReader<'a>,
    survey: &'a Survey,
    pub referenced: HashSet<BlobId>,
    damaged_trees: HashSet<BlobId>,
    /// Intact directories stored in several blobs, by `list_key`.
    clean_dirs: HashMap<[u8; 32], Extent>,
    /// Entries of the distinct tree blobs decoded.
    entries: u64,
    /// Damaged directories, by `list_key`.
    damaged_dirs: HashSet<[u8; 32]>,
    /// Estimated bytes of the entries the open levels hold (`tree::entries_size`).
    held: usize,
}

impl<'a> Walker<'a> {
    /// Why a blob a file needs cannot be read, if it cannot.
    pub fn blob_problem(&self, report: &CheckReport, id: &BlobId) -> Option<String> {
        let Some(loc) = self.survey.index.get(id) else {
            return Some(match self.survey.missing_blobs.get(id) {
                Some(p) => format!("blob {} is in missing pack {}", hex::encode(id), hex::encode(p)),
                None => format!("blob {} is in no pack", hex::encode(id)),
            });
        };
        let pack = self.survey.index.pack_id(loc.pack)?;
        // Only the copy the index points at matters (a good copy elsewhere heals a bad one).
        report.bad_blobs.get(&(*id, *pack)).map(|why| format!("blob {} is {why}", hex::encode(id)))
    }

    /// Checks the directory stored as `ids` at `path`, `depth` levels below the snapshot root
    /// (which is 1): its extent when all of it is intact and within the limits of
    /// `tree::MAX_DEPTH`, None otherwise (the damage is recorded). Recursion stops at the
    /// depth limit, so a hostile chain of directories cannot overflow the stack.
    fn dir(
        &mut self,
        report: &mut CheckReport,
        snap: &str,
        path: &[u8],
        ids: &[BlobId],
        depth: usize,
    ) -> Option<Extent> {
        let lost = |report: &mut CheckReport, why: String| {
            report.affected.push(Affected { snapshot: snap.into(), path: display_path(path), why });
        };
        if depth > MAX_DEPTH {
            lost(report, format!("deeper than {MAX_DEPTH} levels: restore refuses it"));
            if let Some(id) = ids.first() {
                if self.damaged_trees.insert(*id) {
                    let why = format!("a directory deeper than {MAX_DEPTH} levels");
                    report.damage.push(Damage { object: format!("tree {}", hex::encode(id)), why });
                }
            }
            return None;
        }
        // A directory of several blobs is checked as a whole (names ordered across blobs);
        // one found intact is not walked again.
        let whole = (ids.len() > 1).then(|| list_key(ids));
        if let Some(e) = whole.as_ref().and_then(|k| self.clean_dirs.get(k)) {
            return within_depth(*e, depth).then_some(*e);
        }
        // A damaged directory is walked once: shared by many paths (a crafted tree can list
        // one 2^40 times), it is named again at each, not walked again.
        let key = list_key(ids);
        if self.damaged_dirs.contains(&key) {
            lost(report, "directory contents damaged (named above)".into());
            return None;
        }
        if ids.len() > MAX_DIR_BLOBS {
            lost(report, format!("stored in {} tree blobs: restore refuses it", ids.len()));
            return None;
        }
        let mut listing = Listing::default();
        let mut extent = Extent::default();
        let mut ok = true;
        for id in ids {
            self.referenced.insert(*id);
            let cached = report.clean_trees.get(id).copied();
            if let (Some(e), None) = (cached, &whole) {
                extent = e;
                continue;
            }
            report.trees += 1;
            // A tree the index lacks is named the way a file's blob is (e.g. "in missing pack").
            let mut blob_refused = false;
            let tree = match self.survey.index.get(id) {
                None => Err(self.blob_problem(report, id).unwrap_or_default()),
                Some(_) => self
                    .reader
                    .read(id, BlobKind::Tree)
                    .and_then(|d| Tree::decode_entries(&hex::encode(id), &d))
                    .map_err(|e| e.to_string())
                    .and_then(|(nodes, refused)| listing.admit(&nodes).map(|()| (nodes, refused))),
            };
            let nodes = match tree {
                Ok((nodes, refused)) => {
                    // One bad entry costs only itself: named, and the rest checked.
                    for bad in &refused {
                        let mut p = path.to_vec();
                        p.push(b'/');
                        p.extend_from_slice(&bad.name);
                        let why = format!("refused by restore: {}", bad.why);
                        report.affected.push(Affected { snapshot: snap.into(), path: p, why });
                    }
                    if let Some(bad) = refused.first() {
                        ok = false;
                        blob_refused = true;
                        if self.damaged_trees.insert(*id) {
                            let why = format!("{} entries refused, the first: {}", refused.len(), bad.why);
                            report.damage.push(Damage { object: format!("tree {}", hex::encode(id)), why });
                        }
                    }
                    nodes
                }
                Err(e) => {
                    if self.damaged_trees.insert(*id) {
                        report
                            .damage
                            .push(Damage { object: format!("tree {}", hex::encode(id)), why: e.clone() });
                    }
                    lost(report, format!("directory contents lost: {e}"));
                    ok = false;
                    // Restore refuses the rest of a directory whose blobs break its order.
                    break;
                }
            };
            if let Some(e) = cached {
                extent = extent.and(e);
                continue;
            }
            // Each level's entries are held while the levels below it are checked: bounded as
            // restore bounds them (`MAX_HELD`), and refused as restore refuses them.
            let size = entries_size(&nodes);
            if self.held + size > MAX_HELD {
                let why = format!(
                    "its entries and those of the directories above it take more than {} MiB: restore refuses it",
                    MAX_HELD >> 20
                );
                if self.damaged_trees.insert(*id) {
                    report
                        .damage
                        .push(Damage { object: format!("tree {}", hex::encode(id)), why: why.clone() });
                }
                lost(report, why);
                ok = false;
                break;
            }
            self.held += size;
            self.entries += nodes.len() as u64;
            let mut own = Extent { height: 1, nodes: nodes.len() as u64 };
            let mut tree_ok = !blob_refused;
            for n in nodes {
                let mut child = path.to_vec();
                child.push(b'/');
                child.extend_from_slice(&n.name);
                match &n.kind {
                    NodeKind::File { content, .. } | NodeKind::HardLink { content, .. } => {
                        self.referenced.extend(content.iter().copied());
                        if let Some(why) = content.iter().find_map(|b| self.blob_problem(report, b)) {
                            report.affected.push(Affected { snapshot: snap.into(), path: child, why });
                            tree_ok = false;
                        }
                    }
                    NodeKind::Dir { .. } if child.len() > MAX_PATH => {
                        let why = format!("its path is longer than {MAX_PATH} bytes: restore refuses it");
                        report.affected.push(Affected { snapshot: snap.into(), path: child, why });
                        if self.damaged_trees.insert(*id) {
                            let why = format!("a directory path longer than {MAX_PATH} bytes");
                            report.damage.push(Damage { object: format!("tree {}", hex::encode(id)), why });
                        }
                        tree_ok = false;
                    }
                    NodeKind::Dir { subtree } => match self.dir(report, snap, &child, subtree, depth + 1) {
                        Some(e) => own = own.above(e),
                        None => tree_ok = false,
                    },
                    _ => {}
                }
            }
            self.held -= size;
            if tree_ok {
                report.clean_trees.insert(*id, own);
            } else {
                ok = false;
            }
            extent = extent.and(own);
        }
        if !ok {
            self.damaged_dirs.insert(key);
            return None;
        }
        if let Some(k) = whole {
            self.clean_dirs.insert(k, extent);
        }
        if !within_depth(extent, depth) {
            lost(report, format!("holds directories deeper than {MAX_DEPTH} levels: restore refuses them"));
            return None;
        }
        Some(extent)
    }
}

/// How deep an intact directory goes (1: no subdirectories) and how many entries it holds,
/// its subdirectories' included (saturating: shared subtrees can describe exponentially many).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Extent {
    pub height: u32,
    pub nodes: u64,
}

impl Extent {
    /// Another blob of the same directory.
    fn and(self, other: Extent) -> Extent {
        Extent { height: self.height.max(other.height), nodes: self.nodes.saturating_add(other.nodes) }
    }

    /// A subdirectory of this blob.
    fn above(self, sub: Extent) -> Extent {
        Extent {
            height: self.height.max(sub.height.saturating_add(1)),
            nodes: self.nodes.saturating_add(sub.nodes),
        }
    }
}

/// Whether a directory of `extent` at `depth` stays within `MAX_DEPTH`.
fn within_depth(extent: Extent, depth: usize) -> bool {
    depth + (extent.height.max(1) as usize) - 1 <= MAX_DEPTH
}

/// One key for a directory's whole list of tree blobs.
fn list_key(ids: &[BlobId]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(id);
    }
    *h.finalize().as_bytes()
}

fn display_path(p: &[u8]) -> Vec<u8> {
    if p.is_empty() {
        b"/".to_vec()
    } else {
        p.to_vec()
    }
}

/// Every committed snapshot and every pending one still in flight that decodes, with its object
/// name; damage for the rest. Pending copies that prune removes (commit.rs: the same bytes are
/// committed, or the writer gave it up) are notes, not snapshots: the committed copy is walked
/// once, and a given-up snapshot may reference data that is gone.
pub(crate) fn load_snapshots(
    repo: &Repository,
    identity: &age::x25519::Identity,
    report: &mut CheckReport,
) -> Result<Vec<(String, Snapshot)>> {
    let mut out = Vec::new();
    let (registry, warnings) = repo.registry()?;
    for w in warnings {
        report.damage.push(Damage { object: "writers/".into(), why: w });
    }
    let now = crate::clock::now_ns();
    let mut committed: HashMap<String, Vec<u8>> = HashMap::new();
    let mut copies = 0;
    let markers = commit::markers(repo)?;
    for dir in ["snapshots", "pending"] {
        let mut names = repo.backend.list(dir)?;
        names.sort();
        for name in names {
            let decoded = repo.backend.get(&name).map_err(Error::from).and_then(|d| {
                if !name_matches(&name, &d) {
                    return Err(Error::corrupt("snapshot", name.clone(), "content does not match its name"));
                }
                Snapshot::decode(identity, &repo.config.repo_id, &name, &d).map(|s| (s, d))
            });
            match decoded {
                Ok(((s, signer), data)) => {
                    let s = trust_note(&registry, now, &name, s, signer, report);
                    let id = commit::id_of(dir, &name).unwrap_or_default().to_string();
                    if dir == "snapshots" {
                        committed.insert(id, data);
                        out.push((name, s));
                        continue;
                    }
                    let marker = if markers.contains(&id) {
                        match repo.backend.get(&commit::abandoned_key(&id)) {
                            Ok(m) => Some(m),
                            Err(io::StorageError::NotFound { .. }) => None,
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        None
                    };
                    let state = commit::classify(
                        &data,
                        &s,
                        committed.get(&id).map(Vec::as_slice),
                        marker.as_deref(),
                    )?;
                    report.notes.push(match state {
                        // Every backup leaves one: counted in one note below.
                        PendingState::Committed => {
                            copies += 1;
                            continue;
                        }
                        PendingState::Abandoned => {
                            format!("{name}: given up by its writer (the next prune removes it)")
                        }
                        PendingState::BadMarker => format!(
                            "{name}: a snapshot being committed; {} does not prove that its writer gave it up",
                            commit::abandoned_key(&id)
                        ),
                        PendingState::InFlight => format!(
                            "{name}: a snapshot being committed (or left by a backup interrupted while committing)"
                        ),
                    });
                    if !state.removable() {
                        out.push((name, s));
                    }
                }
                Err(e) => {
                    report.damage.push(Damage { object: name.clone(), why: e.to_string() });
                    report.affected.push(Affected {
                        snapshot: name,
                        path: b"/".to_vec(),
                        why: "the snapshot record is damaged".into(),
                    });
                }
            }
        }
    }
    if copies > 0 {
        report.notes.push(format!(
            "{copies} pending copies of committed snapshots (backups leave them; the next prune removes them)"
        ));
    }
    Ok(out)
}

/// Names a snapshot nobody trusts: damage when no known key signed it (forged; or, in a
/// repository not yet migrated, from before snapshots were signed), a note when its signer is
/// known but revoked, or it is dated ahead.
fn trust_note(
    registry: &crate::writers::Registry,
    now: i64,
    name: &str,
    snapshot: Snapshot,
    signer: crate::snapshot::Signer,
    report: &mut CheckReport,
) -> Snapshot {
    use crate::writers::Standing;
    let standing = match &signer {
        crate::snapshot::Signer::Key(k) => registry.standing(k),
        crate::snapshot::Signer::Nobody => Standing::Unknown,
    };
    let entry =
        crate::repo::SnapshotEntry { id: name.to_string(), snapshot, signer, standing: standing.clone() };
    match (entry.distrust(now), &standing) {
        (None, _) => {}
        // Genuine signatures, of a writer revoked since, or dated ahead: not used by default.
        (Some(why), Standing::Revoked(_) | Standing::Registered(_) | Standing::Owner) => {
            report.notes.push(format!("{name}: {why}: not used without --trust-all"))
        }
        (Some(why), Standing::Unknown) => report.damage.push(Damage {
            object: name.to_string(),
            why: format!(
                "{why}: not from the owner or a registered writer (forged; or, in a repository not yet \
                 migrated, from before snapshots were signed)"
            ),
        }),
    }
    entry.snapshot
}

pub(crate) fn walker<'a>(repo: &'a Repository, survey: &'a Survey) -> Result<Walker<'a>> {
    Ok(Walker {
        reader: BlobReader::new(repo, &survey.index)?,
        survey,
        referenced: HashSet::new(),
        damaged_trees: HashSet::new(),
        clean_dirs: HashMap::new(),
        entries: 0,
        damaged_dirs: HashSet::new(),
        held: 0,
    })
}

/// The owner's mark that the index is signed (`index::MARK`): damage when it is not the
/// owner's, or missing from a repository whose segments are all signed (made since, or
/// migrated: someone deleted it); a note when unsigned segments still wait for `migrate`.
fn index_mark(repo: &Repository, survey: &Survey, report: &mut CheckReport) -> Result<()> {
    let unsigned = survey.vouchers.values().any(|v| v.contains(&Voucher::Unsigned));
    let mark = crate::index::signed_mark(repo.backend.as_ref(), &repo.owner, &repo.config.repo_id)?;
    let why = match (mark, unsigned) {
        (crate::index::Mark::Forged, _) => {
            "not the owner's mark (damaged or forged): it counts as signed, so `migrate` vouches for no unsigned segment"
        }
        (crate::index::Mark::Absent, false) => {
            "missing, though every index segment is signed (deleted?): `bakare migrate` writes it again"
        }
        (crate::index::Mark::Absent, true) => {
            report.notes.push(
                "index segments of before 2026-12 are unsigned: backups do not deduplicate against their packs \
                 until the owner runs `bakare migrate`"
                    .into(),
            );
            return Ok(());
        }
        (crate::index::Mark::Signed(_), _) => return Ok(()),
    };
    report.damage.push(Damage { object: crate::index::MARK.into(), why: why.into() });
    Ok(())
}

/// The keys of every writer ever registered as `name` (`owner` is the owner), revoked or not.
fn writer_keys(repo: &Repository, name: &str) -> Result<HashSet<crate::signing::PublicKey>> {
    if name == crate::writers::OWNER {
        return Ok(HashSet::from([repo.owner]));
    }
    let (registry, _) = repo.registry()?;
    let keys: HashSet<_> = registry.writers.values().filter(|w| w.name == name).map(|w| w.key).collect();
    if keys.is_empty() {
        return Err(Error::Invalid(format!(
            "no writer named {name:?} was ever registered (bakare key list shows them)"
        )));
    }
    Ok(keys)
}

pub fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    Ok(check_with_survey(repo, opts)?.0)
}

pub(crate) fn check_with_survey(repo: &Repository, opts: &CheckOptions) -> Result<(CheckReport, Survey)> {
    let mut report = CheckReport::default();
    let only = match &opts.writer {
        None => None,
        Some(_) if opts.read_data.is_none() => {
            return Err(Error::Invalid("--writer needs --read-data: it names what to read".into()))
        }
        Some(name) => Some(writer_keys(repo, name)?),
    };
    let survey = survey(repo, &opts.lost, &mut report)?;
    index_mark(repo, &survey, &mut report)?;
    match repo.backend.leftovers() {
        Ok(t) if !t.is_empty() => report.notes.push(format!(
            "{} temporary files of interrupted writes ({} bytes): `bakare prune` removes those older than the grace period",
            t.len(),
            t.iter().map(|t| t.size).sum::<u64>()
        )),
        Ok(_) => {}
        Err(e) => report.notes.push(format!("cannot look for temporary files of interrupted writes: {e}")),
    }
    if let Some(subset) = opts.read_data {
        read_data(repo, &survey, subset, only.as_ref(), opts.workers, &mut report);
    }
    let identity = match repo.key.identity() {
        Ok(i) => i,
        Err(_) => {
            // Without the trees nobody can tell whether a snapshot needs a missing pack.
            for (p, why) in &survey.missing_why {
                report.damage.push(Damage { object: pack::pack_key(p), why: why.clone() });
            }
            if !survey.uncovered.is_empty() {
                report.notes.push(format!(
                    "{} packs are in no index segment (an interrupted backup, or a damaged segment)",
                    survey.uncovered.len()
                ));
            }
            report.notes.push(
                "with a backup-only key, snapshots, trees and file contents cannot be read: \
                 only index segments, pack trailers and pack names were checked"
                    .into(),
            );
            return Ok((report, survey));
        }
    };
    report.snapshots_checked = true;
    let snaps = load_snapshots(repo, identity, &mut report)?;
    report.snapshots = snaps.len();
    let mut walker = walker(repo, &survey)?;
    for (name, snap) in &snaps {
        // Each snapshot names every file its damage affects; within one, a damaged directory
        // reached by several paths is walked once.
        walker.damaged_dirs.clear();
        let extent = walker.dir(&mut report, name, b"", &snap.tree, 1);
        let limit = amplification_limit(walker.entries);
        if let Some(e) = extent.filter(|e| e.nodes > limit) {
            let why = format!(
                "its trees share subtrees so that they describe {} entries, more than {MAX_AMPLIFICATION} \
                 for each of the {} stored: restore refuses the rest",
                e.nodes, walker.entries
            );
            report.damage.push(Damage { object: name.clone(), why: why.clone() });
            report.affected.push(Affected { snapshot: name.clone(), path: b"/".to_vec(), why });
        }
    }
    // Packs by use: referenced packs outside every segment need `repair index`; packs nothing
    // references are leftovers (interrupted backups) that prune will collect.
    let mut used = HashSet::new();
    for b in &walker.referenced {
        if let Some(p) = survey.index.get(b).and_then(|l| survey.index.pack_id(l.pack)) {
            used.insert(*p);
        } else if let Some(p) = survey.missing_blobs.get(b) {
            used.insert(*p);
        }
    }
    // Trees repaired from their packs' parity on the way (packs read whole are listed already).
    for (key, n) in walker.reader.corrected() {
        if !report.corrected.iter().any(|(k, _)| *k == key) {
            report.corrected.push((key, n));
        }
    }
    drop(walker);
    // A missing pack is damage when a snapshot needs it; otherwise its segment is a leftover
    // (a backup that found its view stale and started again after prune deleted its packs).
    for (p, why) in &survey.missing_why {
        if used.contains(p) {
            report
                .damage
                .push(Damage { object: pack::pack_key(p), why: format!("{why}; snapshots need it") });
        } else {
            report.notes.push(format!(
                "{}: {why}, but no snapshot needs it (a leftover; the next prune drops it from the index)",
                pack::pack_key(p)
            ));
        }
    }
    for p in &survey.uncovered {
        if used.contains(p) && !survey.condemned.contains(p) {
            report.damage.push(Damage {
                object: pack::pack_key(p),
                why: "snapshots use it but no index segment lists it (`bakare repair index` fixes this)"
                    .into(),
            });
        }
    }
    let doomed = survey.present.keys().filter(|p| survey.condemned.contains(*p)).count();
    if doomed > 0 {
        report.notes.push(format!(
            "{doomed} packs are condemned by prune (deleted after the grace period unless a snapshot needs them)"
        ));
    }
    let unused: Vec<_> =
        survey.present.keys().filter(|p| !used.contains(*p) && !survey.condemned.contains(*p)).collect();
    if !unused.is_empty() {
        let bytes: u64 = unused.iter().filter_map(|p| repo.backend.size(&pack::pack_key(p)).ok()).sum();
        report.notes.push(format!(
            "{} packs ({} bytes) hold nothing any snapshot uses (left by interrupted backups, or garbage for prune)",
            unused.len(),
            bytes
        ));
    }
    Ok((report, survey))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets() {
        assert_eq!(Subset::parse("10%").unwrap(), Subset::Fraction(0.1));
        assert_eq!(Subset::parse("2/5").unwrap(), Subset::Part(2, 5));
        for bad in ["0%", "101%", "x%", "0/3", "4/3", "1/0", "abc", "1/300"] {
            assert!(Subset::parse(bad).is_err(), "{bad}");
        }
        // Parts 1..m partition the packs.
        let seed = [0u8; 32];
        for b in 0..=255u8 {
            let id = [b; 32];
            let n = (1..=3).filter(|&n| Subset::Part(n, 3).picks(&id, &seed)).count();
            assert_eq!(n, 1);
        }
        let hits = (0..1000u32)
            .filter(|i| {
                let id = *blake3::hash(&i.to_le_bytes()).as_bytes();
                Subset::Fraction(0.25).picks(&id, &seed)
            })
            .count();
        assert!((150..350).contains(&hits), "{hits}");
    }
}
