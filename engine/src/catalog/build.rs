//! Adding snapshots to the catalog (walking their trees, memoized by tree id) and dropping them
//! (re-encoding the deltas of the rest, forgetting versions no snapshot holds).
use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;

use rustc_hash::FxSeededState;

use stages::BlobId;

use super::bitmap::{normalize, Bitmap, Run};
use super::budget::{map_bytes, memo_bytes, path_map_bytes, query_arrays, version_map_bytes};
use super::{Catalog, DirMemo, SnapEntry, Version, ROOT};
use crate::error::Error;
use crate::repo::{BlobReader, Tally};
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};

/// The key under which a directory's contents are memoized: its one tree blob id, or the hash
/// of its several ones.
fn tree_key(ids: &[BlobId]) -> [u8; 32] {
    match ids {
        [one] => *one,
        many => {
            let mut h = blake3::Hasher::new();
            h.update(b"bakare tree list");
            for id in many {
                h.update(id);
            }
            *h.finalize().as_bytes()
        }
    }
}

fn fingerprint(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&h.finalize().as_bytes()[..8]);
    fp
}

fn version_of(path: u32, n: &Node) -> Version {
    let (size, fp) = match &n.kind {
        NodeKind::File { size, content } | NodeKind::HardLink { size, content, .. } => {
            let ids: Vec<&[u8]> = content.iter().map(|c| &c[..]).collect();
            (*size, fingerprint(&ids))
        }
        NodeKind::Symlink { target } => (0, fingerprint(&[target])),
        NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev } => (0, fingerprint(&[&rdev.to_le_bytes()])),
        NodeKind::Dir { .. } | NodeKind::Fifo | NodeKind::Socket => (0, [0; 8]),
    };
    Version { path, kind: n.type_char() as u8, size, mtime_ns: crate::tree::clamp_ns(n.mtime_ns), fp }
}

/// The delta of `set` against the previous snapshot of its lineage, or the whole set when that
/// is shorter.
fn encode_set(set: &Bitmap, prev: Option<(u32, &Bitmap)>) -> (Option<u32>, Vec<Run>, Vec<Run>) {
    let full = set.runs();
    if let Some((base, prev)) = prev {
        let (added, removed) = (set.runs_minus(prev), prev.runs_minus(set));
        if added.len() + removed.len() < full.len() {
            return (Some(base), added, removed);
        }
    }
    (None, full, Vec::new())
}

impl Catalog {
    pub(crate) fn push_path(&mut self, parent: u32, name: &[u8]) -> u32 {
        self.names.extend_from_slice(name);
        self.parents.push(parent);
        self.name_ends.push(self.names.len() as u32);
        (self.parents.len() - 1) as u32
    }
}

/// Keeps the memo entries that the newest snapshot of some lineage still reaches.
fn prune_memo(cat: &mut Catalog) {
    let mut keep = vec![false; cat.memo.len()];
    let mut stack: Vec<u32> = cat.snapshots.iter().filter_map(|s| s.memo_root).collect();
    while let Some(m) = stack.pop() {
        if let Some(false) = keep.get(m as usize) {
            keep[m as usize] = true;
            stack.extend_from_slice(&cat.memo[m as usize].children);
        }
    }
    if keep.iter().all(|&k| k) {
        return;
    }
    let mut remap = vec![u32::MAX; keep.len()];
    let mut next = 0u32;
    for (i, &k) in keep.iter().enumerate() {
        if k {
            remap[i] = next;
            next += 1;
        }
    }
    let old = std::mem::take(&mut cat.memo);
    cat.memo = old
        .into_iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(mut m, _)| {
            m.children.iter_mut().for_each(|c| *c = remap[*c as usize]);
            m
        })
        .collect();
    for s in &mut cat.snapshots {
        s.memo_root = s.memo_root.map(|m| remap[m as usize]).filter(|&m| m != u32::MAX);
    }
}

/// Keeps the snapshot entries for which `keep` holds; returns how many went. The others are
/// re-encoded against their lineage's previous survivor, and versions that no survivor holds
/// are dropped (numbering stays in order, so runs stay runs).
pub(super) fn retain(cat: &mut Catalog, keep: impl Fn(&SnapEntry) -> bool) -> usize {
    let flags: Vec<bool> = cat.snapshots.iter().map(&keep).collect();
    let dropped = flags.iter().filter(|k| !**k).count();
    if dropped == 0 {
        return 0;
    }
    let mut entries: Vec<SnapEntry> = Vec::new();
    let mut last: HashMap<[u8; 16], (u32, Bitmap)> = HashMap::new();
    let mut live = Bitmap::default();
    cat.for_each_set(|i, set| {
        if !flags[i] {
            return;
        }
        let s = &cat.snapshots[i];
        let (base, added, removed) = encode_set(set, last.get(&s.lineage).map(|(b, p)| (*b, p)));
        entries.push(SnapEntry { base, added, removed, ..s.clone() });
        live.union_with(set);
        last.insert(s.lineage, ((entries.len() - 1) as u32, set.clone()));
    });
    cat.snapshots = entries;
    prune_memo(cat);
    // New ids: live_before[v] = live versions below v.
    let n = cat.versions.len();
    let mut live_before = Vec::with_capacity(n + 1);
    let mut count = 0u32;
    for v in 0..n as u32 {
        live_before.push(count);
        count += u32::from(live.contains(v));
    }
    live_before.push(count);
    if count as usize == n {
        return dropped;
    }
    // Every run left names live versions only: survivors' sets and the memo of their trees.
    let remap = |runs: &mut Vec<Run>| {
        *runs =
            normalize(runs.iter().map(|r| (live_before[r.0 as usize], live_before[r.1 as usize])).collect());
    };
    for s in &mut cat.snapshots {
        remap(&mut s.added);
        remap(&mut s.removed);
    }
    for m in &mut cat.memo {
        remap(&mut m.entries);
    }
    let mut v = 0;
    cat.versions.retain(|_| {
        v += 1;
        live.contains(v - 1)
    });
    dropped
}

/// The maps that adding snapshots needs (and queries do not): built from the loaded catalog,
/// dropped when the new snapshots are in.
/// Maps whose keys are ids or keyed hashes: Fx (seeded) is several times quicker than SipHash
/// here, and the names, which anyone may choose, are hashed with SipHash first.
type Fast<K, V> = HashMap<K, V, FxSeededState>;

fn fast<K, V>(capacity: usize) -> Fast<K, V> {
    let seed = RandomState::new().hash_one(0u8) as usize;
    HashMap::with_capacity_and_hasher(capacity, FxSeededState::with_seed(seed))
}

pub(super) struct Builder<'c> {
    cat: &'c mut Catalog,
    hasher: RandomState,
    /// (parent, SipHash of name) -> path; a name whose hash collides goes to `collided`.
    paths: Fast<(u32, u64), u32>,
    collided: HashMap<(u32, Vec<u8>), u32>,
    versions: Fast<Version, u32>,
    memo: Fast<(u32, [u8; 32]), u32>,
    /// The newest memo entry of each directory path: what a changed directory looked like.
    by_path: Fast<u32, u32>,
    /// The newest complete entry of each lineage, and its set: the base of the next one.
    latest: HashMap<[u8; 16], (u32, Bitmap)>,
    /// Directories decoded from the repository.
    pub decoded: u64,
    /// What the catalog, these maps and a query may hold (`budget::Budget::build`).
    budget: u64,
    /// The heap of the snapshot and memo entries.
    entries: u64,
    /// The bitmaps in `latest`.
    bases: u64,
    /// The directories a walk is in: their entries and subdirectories still to walk.
    open: u64,
    /// The bytes of every full path (what a query's `full_paths` holds).
    full: u64,
    /// The estimate went past the budget: the snapshot being walked is given up.
    overflow: bool,
    /// The catalog was already too large for the budget when loaded: nothing is added.
    closed: bool,
    /// The largest estimate within the budget. Memory passes it by no more than the entry
    /// that made the estimate go over, since the estimate has room for the largest vector or
    /// map to double.
    pub peak: u64,
}

/// How far the catalog went before a snapshot, to go back to when it does not fit.
struct Mark {
    paths: usize,
    names: usize,
    versions: usize,
    memo: usize,
    full: u64,
}

/// A directory being walked: its own entries' versions and its subdirectories.
struct Frame {
    path: u32,
    key: [u8; 32],
    entries: Vec<Run>,
    todo: std::vec::IntoIter<(u32, Vec<BlobId>)>,
    children: Vec<u32>,
    /// Something below could not be read: not memoized.
    damaged: bool,
    /// Its full path's length.
    len: u64,
    /// What it counts in `Builder::open`.
    bytes: u64,
}

impl<'c> Builder<'c> {
    /// A builder that keeps the catalog's estimate within `budget` bytes.
    pub(super) fn new(cat: &'c mut Catalog, budget: u64) -> Self {
        let mut newest: HashMap<[u8; 16], usize> = HashMap::new();
        for (i, s) in cat.snapshots.iter().enumerate().filter(|(_, s)| s.complete) {
            let e = newest.entry(s.lineage).or_insert(i);
            if cat.snapshots[*e].time_ns <= s.time_ns {
                *e = i;
            }
        }
        let mut latest = HashMap::new();
        cat.for_each_set(|i, set| {
            let l = cat.snapshots[i].lineage;
            if newest.get(&l) == Some(&i) {
                latest.insert(l, (i as u32, set.clone()));
            }
        });
        let hasher = RandomState::new();
        let entries = cat.entries_bytes();
        let full = cat.full_path_bytes();
        let bases = latest.values().map(|(_, b)| b.heap_bytes()).sum();
        // The maps below take about this much: a catalog that leaves them no room (loaded
        // under a larger budget) gets nothing added, and they are not built.
        let (np, nv) = (cat.parents.len(), cat.versions.len());
        let at_start = cat.query_peak(entries, full).max(
            cat.tables().iter().sum::<u64>() + entries + bases + path_map_bytes(np) + version_map_bytes(nv),
        );
        let mut b = Builder {
            cat,
            hasher,
            paths: fast(0),
            collided: HashMap::new(),
            versions: fast(0),
            memo: fast(0),
            by_path: fast(0),
            latest,
            decoded: 0,
            budget,
            entries,
            bases,
            open: 0,
            full,
            overflow: false,
            closed: at_start > budget,
            peak: 0,
        };
        if b.closed {
            return b;
        }
        b.paths = fast(np);
        for i in 1..np as u32 {
            let name = b.cat.name(i);
            let key = (b.cat.parents[i as usize], b.hasher.hash_one(name));
            match b.paths.entry(key) {
                Entry::Vacant(e) => {
                    e.insert(i);
                }
                // Two names with one hash: the second is kept exactly.
                Entry::Occupied(_) => {
                    b.collided.insert((key.0, name.to_vec()), i);
                }
            }
        }
        b.versions = fast(nv);
        b.versions.extend(b.cat.versions.iter().enumerate().map(|(i, v)| (*v, i as u32)));
        b.index_memo();
        b.check(&Bitmap::default());
        b
    }

    /// The estimate of what the catalog, the maps and a walk hold now, and of what a query
    /// over the catalog will: the larger. Vectors and maps count by capacity, plus room for
    /// the largest of them to double (while it moves, it is held twice and a half).
    /// `collided` is not counted: it holds names whose keyed SipHash collides, which no
    /// repository can choose.
    fn estimate(&self, set: &Bitmap) -> u64 {
        let tables = self.cat.tables();
        let maps = [
            map_bytes(&self.paths),
            map_bytes(&self.versions),
            map_bytes(&self.memo),
            map_bytes(&self.by_path),
            set.heap_bytes(),
        ];
        let grown: u64 = tables.iter().chain(&maps).sum();
        let largest = tables.iter().chain(&maps).copied().max().unwrap_or(0);
        let build = grown + 2 * largest + self.entries + self.bases + self.open;
        let query = tables.iter().sum::<u64>()
            + self.entries
            + self.full
            + query_arrays(self.cat.parents.len(), self.cat.versions.len());
        build.max(query)
    }

    /// Whether the estimate is still within the budget (`over` is set when not).
    fn check(&mut self, set: &Bitmap) -> bool {
        let e = self.estimate(set);
        self.overflow |= e > self.budget;
        if !self.overflow {
            self.peak = self.peak.max(e);
        }
        !self.overflow
    }

    fn mark_point(&self) -> Mark {
        Mark {
            paths: self.cat.parents.len(),
            names: self.cat.names.len(),
            versions: self.cat.versions.len(),
            memo: self.cat.memo.len(),
            full: self.full,
        }
    }

    /// Forgets everything added since `m`: the paths, versions and memo entries of the
    /// snapshot given up (nothing before refers to them), and the memory its walk grew.
    fn roll_back(&mut self, m: Mark) {
        let c = &mut *self.cat;
        c.parents.truncate(m.paths);
        c.name_ends.truncate(m.paths);
        c.names.truncate(m.names);
        c.versions.truncate(m.versions);
        c.memo.truncate(m.memo);
        for v in [&mut c.parents, &mut c.name_ends] {
            v.shrink_to_fit();
        }
        c.names.shrink_to_fit();
        c.versions.shrink_to_fit();
        c.memo.shrink_to_fit();
        let (np, nv) = (m.paths as u32, m.versions as u32);
        self.paths.retain(|_, p| *p < np);
        self.paths.shrink_to_fit();
        self.collided.retain(|_, p| *p < np);
        self.versions.retain(|_, v| *v < nv);
        self.versions.shrink_to_fit();
        self.index_memo();
        self.entries = self.cat.entries_bytes();
        self.full = m.full;
        self.open = 0;
        self.overflow = false;
    }

    fn index_memo(&mut self) {
        self.memo = fast(self.cat.memo.len());
        self.by_path = fast(self.cat.memo.len());
        for (i, m) in self.cat.memo.iter().enumerate() {
            self.memo.insert((m.path, m.tree), i as u32);
            self.by_path.insert(m.path, i as u32);
        }
    }

    pub(super) fn full_path(&self, path: u32) -> Vec<u8> {
        self.cat.full_path(path)
    }

    /// The id of `name` in `parent` (whose full path is `parent_len` bytes, 0 for the root).
    fn path(&mut self, parent: u32, parent_len: u64, name: &[u8]) -> u32 {
        let key = (parent, self.hasher.hash_one(name));
        match self.paths.get(&key) {
            Some(&id) if self.cat.name(id) == name => id,
            Some(_) => {
                if let Some(&id) = self.collided.get(&(parent, name.to_vec())) {
                    return id;
                }
                let id = self.new_path(parent, parent_len, name);
                self.collided.insert((parent, name.to_vec()), id);
                id
            }
            None => {
                let id = self.new_path(parent, parent_len, name);
                self.paths.insert(key, id);
                id
            }
        }
    }

    /// Adds a path, counting its full path (`/` + name after its parent's) for the budget.
    fn new_path(&mut self, parent: u32, parent_len: u64, name: &[u8]) -> u32 {
        self.full = self.full.saturating_add(parent_len + 1 + name.len() as u64);
        self.cat.push_path(parent, name)
    }

    fn version(&mut self, v: Version) -> u32 {
        *self.versions.entry(v).or_insert_with(|| {
            self.cat.versions.push(v);
            (self.cat.versions.len() - 1) as u32
        })
    }

    /// Walks one snapshot and adds it; returns the directories that could not be read, or
    /// None when the catalog would outgrow its budget with it: then nothing of it is kept.
    pub(super) fn add(
        &mut self,
        reader: &BlobReader,
        id: String,
        snap: &Snapshot,
    ) -> Option<Vec<(u32, Error)>> {
        if self.closed {
            return None;
        }
        let lineage = SnapEntry::lineage(&snap.host, &snap.paths);
        let mut set = Bitmap::default();
        let mut lost = Vec::new();
        let mark = self.mark_point();
        let root = self.walk(reader, &snap.tree, &mut lost, &mut set);
        let prev = self.latest.get(&lineage).map(|(b, p)| (*b, p));
        let (base, added, removed) = encode_set(&set, prev);
        let runs = (added.capacity() + removed.capacity()) as u64 * std::mem::size_of::<Run>() as u64;
        self.entries += runs;
        if self.overflow || !self.check(&set) {
            self.roll_back(mark);
            return None;
        }
        let complete = lost.is_empty();
        let i = self.cat.snapshots.len() as u32;
        // The newest snapshot of a source is the best base and memo for the next one; an older
        // one added late (its own catalog entry was dropped) does not replace it.
        let newest = match self.latest.get(&lineage) {
            Some((b, _)) => self.cat.snapshots[*b as usize].time_ns <= snap.time_ns,
            None => true,
        };
        let memo_root = if complete && newest { root } else { None };
        if memo_root.is_some() {
            if let Some((b, _)) = self.latest.get(&lineage) {
                self.cat.snapshots[*b as usize].memo_root = None;
            }
            self.latest.insert(lineage, (i, set));
        }
        self.cat.snapshots.push(SnapEntry {
            id,
            time_ns: snap.time_ns,
            host: snap.host.clone(),
            lineage,
            base,
            added,
            removed,
            complete,
            memo_root,
        });
        prune_memo(self.cat);
        self.index_memo();
        self.entries = self.cat.entries_bytes();
        self.bases = self.latest.values().map(|(_, b)| b.heap_bytes()).sum();
        Some(lost)
    }

    /// Decodes one directory, numbering its entries' versions.
    /// `len` is the length of its full path (0 for the root). Stops early, with `over` set,
    /// once the estimate passes the budget.
    fn open_dir(
        &mut self,
        reader: &BlobReader,
        (path, len): (u32, u64),
        ids: &[BlobId],
        lost: &mut Vec<(u32, Error)>,
        set: &mut Bitmap,
    ) -> Frame {
        let mut f = Frame {
            path,
            key: tree_key(ids),
            entries: Vec::new(),
            todo: Vec::new().into_iter(),
            children: Vec::new(),
            damaged: false,
            len,
            bytes: 0,
        };
        self.decoded += 1;
        // What this directory held before, by name: unchanged entries (most of them) are
        // recognised without a lookup in the large maps.
        let mut before: Vec<(u32, u32)> = Vec::new();
        if let Some(m) = self.by_path.get(&path).and_then(|&m| self.cat.memo.get(m as usize)) {
            for &(a, b) in &m.entries {
                before.extend((a..b).filter_map(|v| self.cat.versions.get(v as usize).map(|x| (x.path, v))));
            }
            before.sort_unstable_by(|x, y| self.cat.name(x.0).cmp(self.cat.name(y.0)));
        }
        let before_bytes = before.capacity() as u64 * 8;
        self.open += before_bytes;
        // One tree blob at a time: a directory of millions of entries costs its catalog
        // entries, not its decoded nodes.
        let tally = Tally::default();
        let mut entries = reader.entries(ids, &tally);
        let mut todo = Vec::new();
        let mut at = 0;
        loop {
            let n = match entries.next() {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    lost.push((path, e));
                    f.damaged = true;
                    break;
                }
            };
            while before.get(at).is_some_and(|b| self.cat.name(b.0) < n.name.as_slice()) {
                at += 1;
            }
            let known = before.get(at).filter(|b| self.cat.name(b.0) == n.name.as_slice()).copied();
            let p = match known {
                Some((p, _)) => p,
                None => self.path(path, len, &n.name),
            };
            let ver = version_of(p, &n);
            let v = match known {
                Some((_, v)) if self.cat.versions.get(v as usize) == Some(&ver) => v,
                _ => self.version(ver),
            };
            f.entries.push((v, v + 1));
            set.insert(v);
            let mut bytes = std::mem::size_of::<Run>() as u64;
            if let NodeKind::Dir { subtree } = n.kind {
                bytes += (std::mem::size_of::<(u32, Vec<BlobId>)>() + subtree.len() * 32) as u64;
                todo.push((p, subtree));
            }
            f.bytes += bytes;
            self.open += bytes;
            if !self.check(set) {
                break;
            }
        }
        self.open -= before_bytes;
        f.todo = todo.into_iter();
        f
    }

    /// Adds every version below the memoized directory `m` to `set`.
    fn mark(&self, m: u32, set: &mut Bitmap) {
        let mut stack = vec![m];
        while let Some(m) = stack.pop() {
            if let Some(d) = self.cat.memo.get(m as usize) {
                set.insert_runs(&d.entries);
                stack.extend_from_slice(&d.children);
            }
        }
    }

    /// Puts the versions below the root tree `root` into `set`, and returns the root's memo
    /// entry (None when something could not be read). Depth first with an explicit stack
    /// (memory grows with depth, not width); a directory already walked at the same path with
    /// the same tree ids is not decoded again.
    fn walk(
        &mut self,
        reader: &BlobReader,
        root: &[BlobId],
        lost: &mut Vec<(u32, Error)>,
        set: &mut Bitmap,
    ) -> Option<u32> {
        if let Some(&m) = self.memo.get(&(ROOT, tree_key(root))) {
            self.mark(m, set);
            return Some(m);
        }
        let mut stack = vec![self.open_dir(reader, (ROOT, 0), root, lost, set)];
        if self.overflow {
            return None;
        }
        // Entries decoded, against those of the distinct trees among them: shared subtrees
        // are decoded once per path, so a crafted tree could describe 2^depth paths.
        let mut amplification = crate::tree::Amplification::default();
        let mut over: Option<String> = None;
        loop {
            let depth = stack.len();
            let top = stack.last_mut()?;
            if let Some((path, subtree)) = top.todo.next() {
                match self.memo.get(&(path, tree_key(&subtree))).copied() {
                    Some(m) => {
                        top.children.push(m);
                        top.bytes += 4;
                        self.open += 4;
                        self.mark(m, set);
                    }
                    None if depth >= crate::tree::MAX_DEPTH => {
                        let why = format!("deeper than {} levels", crate::tree::MAX_DEPTH);
                        lost.push((path, Error::corrupt("tree", hex::encode(subtree.first()?), why)));
                        top.damaged = true;
                    }
                    None if over.is_some() => {
                        let why = over.clone().unwrap_or_default();
                        lost.push((path, Error::corrupt("tree", hex::encode(subtree.first()?), why)));
                        top.damaged = true;
                    }
                    None => {
                        let len = top.len + 1 + self.cat.name(path).len() as u64;
                        let f = self.open_dir(reader, (path, len), &subtree, lost, set);
                        over = amplification.visit(subtree.first(), f.entries.len()).err();
                        stack.push(f);
                    }
                }
                if self.overflow {
                    return None;
                }
                continue;
            }
            let done = stack.pop()?;
            self.open = self.open.saturating_sub(done.bytes);
            let idx = (!done.damaged).then(|| {
                let idx = self.cat.memo.len() as u32;
                let entries = normalize(done.entries);
                self.cat.memo.push(DirMemo {
                    path: done.path,
                    tree: done.key,
                    entries,
                    children: done.children,
                });
                self.memo.insert((done.path, done.key), idx);
                self.by_path.insert(done.path, idx);
                idx
            });
            if let Some(m) = self.cat.memo.last().filter(|_| idx.is_some()) {
                self.entries += memo_bytes(m);
            }
            if !self.check(set) {
                return None;
            }
            match (stack.last_mut(), idx) {
                (Some(parent), Some(i)) => parent.children.push(i),
                (Some(parent), None) => parent.damaged = true,
                (None, _) => return idx,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use super::super::{catalog_file, test_catalog, Budget, TestFile};
    use super::*;
    use crate::repo::Repository;

    fn paths_in(c: &Catalog) -> Vec<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        c.for_each_set(|_, set| {
            let mut v: Vec<(Vec<u8>, u64)> = (0..c.versions.len() as u32)
                .filter(|&v| set.contains(v))
                .map(|v| (c.full_path(c.versions[v as usize].path), c.versions[v as usize].size))
                .collect();
            v.sort();
            out.push(v);
        });
        out
    }

    #[test]
    fn dropping_snapshots_rebases_the_rest_and_forgets_dead_versions() {
        let s1: &[TestFile] = &[(b"/a/x", 1, 1), (b"/a/y", 1, 1)];
        let s2: &[TestFile] = &[(b"/a/x", 2, 2), (b"/a/y", 1, 1)];
        let s3: &[TestFile] = &[(b"/a/x", 3, 3), (b"/a/y", 1, 1)];
        let mut c = test_catalog(&[("h", 1, s1), ("h", 2, s2), ("h", 3, s3)]);
        let before = paths_in(&c);
        let middle = c.snapshots[1].id.clone();
        assert_eq!(retain(&mut c, |s| s.id != middle), 1);
        assert_eq!(paths_in(&c), vec![before[0].clone(), before[2].clone()]);
        assert_eq!(c.versions.len(), 4, "/a, /a/y, and /a/x twice: the size-2 version is gone");
        assert_eq!(c.snapshots[1].base, Some(0), "the third is now a delta on the first");
        c.check(&[1; 16]).unwrap();
        let first = c.snapshots[0].id.clone();
        assert_eq!(retain(&mut c, |s| s.id != first), 1);
        assert_eq!(paths_in(&c), vec![before[2].clone()]);
        assert_eq!(c.snapshots[0].base, None);
        assert_eq!(retain(&mut c, |_| true), 0);
    }

    fn backup(repo: &Repository, src: &Path, host: &str) -> String {
        let opts = crate::backup::BackupOptions {
            paths: vec![src.to_path_buf()],
            excludes: vec![],
            select: Default::default(),
            selection: Vec::new(),
            mem_limit: None,
            read_mode: stages::read::ReadMode::Pool,
            workers: 2,
            source: std::sync::Arc::new(::io::LocalSource::default()),
            host: host.into(),
            tags: vec![],
            description: None,
            cache_dir: None,
            progress: Default::default(),
            on_file: None,
            dry_run: false,
            watched: None,
            unless_tree: None,
        };
        crate::backup::backup(repo, opts).unwrap().snapshot_id
    }

    #[test]
    fn incremental_walks_skip_unchanged_directories_and_follow_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for (p, data) in [("a/1.txt", "one"), ("a/2.txt", "two"), ("a/deep/3.txt", "3"), ("b/4.txt", "four")]
        {
            fs::create_dir_all(src.join(p).parent().unwrap()).unwrap();
            fs::write(src.join(p), data).unwrap();
        }
        let repo = Repository::init(dir.path().join("repo"), Some(&dir.path().join("key"))).unwrap();
        let cache = dir.path().join("cache");
        let first = backup(&repo, &src, "h");
        let (c1, o1) = Catalog::open(&repo, Some(&cache), Budget::new(None)).unwrap();
        assert_eq!((o1.added, o1.dropped, c1.snapshots.len()), (1, 0, 1));
        assert!(o1.warnings.is_empty(), "{:?}", o1.warnings);
        let depth = src.components().count() as u64; // the root and every ancestor of src
        assert_eq!(o1.decoded_dirs, depth + 3, "root .. src, a, a/deep, b");

        // Warm: nothing to walk, the same catalog.
        let (c2, o2) = Catalog::open(&repo, Some(&cache), Budget::new(None)).unwrap();
        assert_eq!((o2.added, o2.decoded_dirs), (0, 0));
        assert_eq!(c2, c1);

        // One file changes: a and a/deep are not decoded again; the unchanged files keep their
        // versions.
        fs::write(src.join("b/4.txt"), "FOUR!").unwrap();
        backup(&repo, &src, "h");
        let (c3, o3) = Catalog::open(&repo, Some(&cache), Budget::new(None)).unwrap();
        assert_eq!((o3.added, c3.snapshots.len()), (1, 2));
        assert_eq!(o3.decoded_dirs, depth + 1, "root .. src and b only");
        let sets = paths_in(&c3);
        let four = |s: &Vec<(Vec<u8>, u64)>| {
            s.iter().filter(|(p, _)| p.ends_with(b"/b/4.txt")).map(|x| x.1).collect::<Vec<_>>()
        };
        assert_eq!((four(&sets[0]), four(&sets[1])), (vec![4], vec![5]));
        let one = |s: &Vec<(Vec<u8>, u64)>| s.iter().filter(|(p, _)| p.ends_with(b"/a/1.txt")).count();
        assert_eq!((one(&sets[0]), one(&sets[1])), (1, 1));
        assert_eq!(c3.versions.iter().filter(|v| c3.full_path(v.path).ends_with(b"/a/1.txt")).count(), 1);

        // Another source (host) in between does not disturb the memo of the first.
        backup(&repo, &src.join("a"), "other");
        fs::write(src.join("b/4.txt"), "FOUR again").unwrap();
        backup(&repo, &src, "h");
        let (c4, o4) = Catalog::open(&repo, Some(&cache), Budget::new(None)).unwrap();
        assert_eq!((o4.added, c4.snapshots.len()), (2, 4));
        assert_eq!(
            o4.decoded_dirs,
            depth + (depth + 1),
            "the other source: root .. src (a is known); then root .. src and b"
        );

        // The first snapshot goes: its own versions go with it.
        fs::remove_file(dir.path().join("repo/snapshots").join(&first)).unwrap();
        let (c5, o5) = Catalog::open(&repo, Some(&cache), Budget::new(None)).unwrap();
        assert_eq!((o5.added, o5.dropped, c5.snapshots.len()), (0, 1, 3));
        assert_eq!(paths_in(&c5)[..], paths_in(&c4)[1..]);
        assert!(!c5.versions.iter().any(|v| v.size == 4 && c5.full_path(v.path).ends_with(b"/b/4.txt")));
        c5.check(&repo.config.repo_id).unwrap();

        // A damaged file is rebuilt, with a warning, to the same content.
        let file = catalog_file(&cache, &repo.config.repo_id);
        let mut bytes = fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&file, &bytes).unwrap();
        let (c6, o6) = Catalog::open(&repo, Some(&cache), Budget::new(None)).unwrap();
        assert!(o6.warnings.iter().any(|w| w.contains("rebuilding")), "{:?}", o6.warnings);
        assert_eq!(o6.added, 3);
        assert_eq!(paths_in(&c6), paths_in(&c5));

        // A backup-only key is refused.
        let mut backup_only =
            Repository::open(dir.path().join("repo"), Some(&dir.path().join("key"))).unwrap();
        backup_only.key = backup_only.key.backup_only("test").unwrap();
        assert!(matches!(
            Catalog::open(&backup_only, Some(&cache), Budget::new(None)),
            Err(Error::BackupOnlyKey(_))
        ));
    }
    /// A budget that leaves the catalog exactly `bytes` while snapshots are added
    /// (`Budget::build`: a cache of 8 MiB when the rest is under 32 MiB).
    fn budget_leaving(repo: &Repository, bytes: u64) -> Budget {
        let blobs = repo.load_index().unwrap().0.blob_count();
        let fixed = crate::backup::FIXED_RESERVE
            + crate::backup::index_reserve(blobs)
            + crate::tree::MAX_HELD as u64
            + (8 << 20);
        let b = Budget::new(Some(fixed + bytes));
        assert_eq!(b.build(blobs), (8 << 20, bytes));
        b
    }

    #[test]
    fn a_snapshot_too_large_for_the_budget_is_left_out_whole_and_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        let big = dir.path().join("big");
        fs::create_dir_all(&small).unwrap();
        fs::write(small.join("needle.txt"), "n").unwrap();
        fs::write(small.join("other.txt"), "o").unwrap();
        for d in 0..20 {
            fs::create_dir_all(big.join(format!("d{d}"))).unwrap();
            for f in 0..100 {
                fs::write(big.join(format!("d{d}/file-{f}.txt")), format!("{d} {f}")).unwrap();
            }
        }
        let repo = Repository::init(dir.path().join("repo"), Some(&dir.path().join("key"))).unwrap();
        let first = backup(&repo, &small, "h");
        let (c1, o1) = Catalog::open(&repo, None, Budget::new(None)).unwrap();
        let second = backup(&repo, &big, "h");
        let (both, o2) = Catalog::open(&repo, None, Budget::new(None)).unwrap();
        assert_eq!((o2.added, o2.skipped, both.snapshots.len()), (2, 0, 2), "{:?}", o2.warnings);
        // Room for the first snapshot and its maps to double, not for the second.
        let room = 2 * o1.peak_estimate + (16 << 10);
        assert!(o2.peak_estimate > room, "{} against {room}", o2.peak_estimate);

        let cache = dir.path().join("cache");
        let tight = budget_leaving(&repo, room);
        let (c, o) = Catalog::open(&repo, Some(&cache), tight).unwrap();
        assert_eq!((o.added, o.skipped), (1, 1));
        assert!(o.peak_estimate <= room, "{} against {room}", o.peak_estimate);
        let warned: Vec<&String> = o.warnings.iter().filter(|w| w.contains("not searched")).collect();
        assert_eq!(warned.len(), 1, "{:?}", o.warnings);
        assert!(warned[0].contains(&second[..16]) && warned[0].contains("--mem-limit"), "{}", warned[0]);
        assert_eq!(c.snapshots.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec![first.as_str()]);
        assert_eq!(c.path_count(), c1.path_count());
        assert_eq!(c, c1, "nothing of the second snapshot is left");
        c.check(&repo.config.repo_id).unwrap();
        let q = crate::find::Query {
            matching: crate::find::Matching::Exact("needle".into()),
            snapshots: vec![],
            host: None,
            only: None,
            path: None,
            newer_ns: None,
            older_ns: None,
            limit: 10,
        };
        let found = crate::find::find(&c, &q).unwrap();
        assert_eq!(found.hits.len(), 1);
        assert!(found.hits[0].path.ends_with(b"/small/needle.txt"));

        // The saved catalog lacks the second: with room, it is walked now.
        let (c2, o2) = Catalog::open(&repo, Some(&cache), Budget::new(None)).unwrap();
        assert_eq!((o2.added, o2.skipped, c2.snapshots.len()), (1, 0, 2), "{:?}", o2.warnings);
        assert_eq!(paths_in(&c2), paths_in(&both));

        // A saved catalog that a query could not hold within the budget is not used: it is
        // rebuilt within it (here, with no room for even an empty one, to nothing).
        let (c3, o3) = Catalog::open(&repo, Some(&cache), tight).unwrap();
        assert_eq!((o3.added, o3.skipped), (0, 0), "a query holds less than a build: it fits");
        assert_eq!(c3, c2);
        let smaller = Budget::new(Some(crate::backup::FIXED_RESERVE + room));
        let (c4, o4) = Catalog::open(&repo, Some(&cache), smaller).unwrap();
        assert!(
            o4.warnings.iter().any(|w| w.contains("rebuilding it within the limit")),
            "{:?}",
            o4.warnings
        );
        assert_eq!((o4.added, o4.skipped, c4.snapshots.len()), (0, 2, 0));
        c4.check(&repo.config.repo_id).unwrap();
    }
}
