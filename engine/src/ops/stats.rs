//! stats: what snapshots hold (files, bytes) and cost (distinct blobs, raw and stored bytes).
//!
//! Trees are walked with the reader's checked walk (`BlobReader::entries`: one directory's
//! blobs as one `Listing`, the walk's `Amplification` and `MAX_HELD`, depth at most
//! `MAX_DEPTH`), once per snapshot, so each path counts. Two maps bound the rest of the work:
//! - `owner`: every blob referenced (data and tree), with the one snapshot that references it
//!   or `MANY`: about 40-80 bytes per distinct blob (a 36-byte entry in a hash table between
//!   half and seven eighths full). A blob already `MANY`, or already this snapshot's, is not
//!   walked again; a tree is marked after its children, so what is below a marked tree is
//!   marked too, and each tree is read at most twice (first owner, then `MANY`).
//! - `counts`: each distinct directory's files, directories and bytes, by its blob list (~90
//!   bytes per distinct directory), so a directory walked again only for marking is not
//!   counted again, and one skipped is still counted.
//!
//! Stored bytes: a blob's sealed length in its pack, from the index (the copy the index reads).
//! A small blob sealed in a bundle is charged the bundle's sealed length times its share of the
//! bundle's plaintext (`raw_len / sum of the members' raw_len`), so the members' shares add up
//! to the bundle.
use std::collections::HashMap;

use stages::BlobId;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::pack;
use crate::repo::{BlobReader, Repository, SnapshotEntry, Tally};
use crate::tree::{NodeKind, MAX_DEPTH};

/// `owner` of a blob that more than one snapshot references.
const MANY: u32 = u32::MAX;

/// What one snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    pub id: String,
    pub files: u64,
    pub dirs: u64,
    /// Sum of the files' sizes as restored (a sparse file at its size), each path counted.
    pub bytes: u64,
    /// Blobs it alone references (among the snapshots looked at), and their raw bytes: what
    /// forgetting it would free, before prune's repacking.
    pub unique_blobs: u64,
    pub unique_raw: u64,
    /// Of `unique_raw`, the data blobs' (file contents).
    pub unique_data_raw: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub snapshots: Vec<SnapshotStats>,
    /// Sums over the snapshots.
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Distinct blobs referenced (after dedup): data and tree blobs.
    pub data_blobs: u64,
    pub tree_blobs: u64,
    /// Their plaintext bytes, and those of the data blobs alone (file contents).
    pub raw: u64,
    pub data_raw: u64,
    /// Their sealed bytes in packs (after compression and encryption; bundles by share).
    pub stored: u64,
    /// Referenced blobs the index lacks (`check` names them); not in `raw` or `stored`.
    pub missing: u64,
    /// The repository: packs on storage and their bytes, distinct blobs in the index.
    pub packs: u64,
    pub pack_bytes: u64,
    pub index_blobs: u64,
    /// Index blobs none of these snapshots references: count, raw and stored bytes.
    pub unused_blobs: u64,
    pub unused_raw: u64,
    pub unused_stored: u64,
}

impl Stats {
    /// Raw bytes per stored byte (0 when nothing is stored).
    pub fn ratio(&self) -> f64 {
        if self.stored == 0 {
            0.0
        } else {
            self.raw as f64 / self.stored as f64
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Counts {
    files: u64,
    dirs: u64,
    bytes: u64,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.files = self.files.saturating_add(o.files);
        self.dirs = self.dirs.saturating_add(o.dirs);
        self.bytes = self.bytes.saturating_add(o.bytes);
    }
}

struct Walk<'r, 'a> {
    reader: &'r BlobReader<'a>,
    owner: HashMap<BlobId, u32>,
    counts: HashMap<[u8; 32], Counts>,
}

impl Walk<'_, '_> {
    fn mark(&mut self, id: BlobId, snap: u32) {
        let o = self.owner.entry(id).or_insert(snap);
        if *o != snap {
            *o = MANY;
        }
    }

    /// Whether everything below `ids` is already counted for `snap`.
    fn done(&self, ids: &[BlobId], snap: u32) -> bool {
        ids.iter().all(|id| self.owner.get(id).is_some_and(|&o| o == snap || o == MANY))
    }

    /// The directory stored as `ids`, `depth` levels below the snapshot root (which is 1).
    /// Recursion stops at `MAX_DEPTH`, as restore's does.
    fn dir(&mut self, tally: &Tally, snap: u32, ids: &[BlobId], depth: usize) -> Result<Counts> {
        let key = list_key(ids);
        let known = self.counts.get(&key).copied();
        if let Some(c) = known {
            if self.done(ids, snap) {
                return Ok(c);
            }
        }
        if depth > MAX_DEPTH {
            let id = ids.first().map(hex::encode).unwrap_or_default();
            return Err(Error::corrupt("tree", id, format!("a directory deeper than {MAX_DEPTH} levels")));
        }
        let mut c = Counts::default();
        let mut entries = self.reader.entries(ids, tally);
        while let Some(n) = entries.next()? {
            match n.kind {
                NodeKind::File { size, content } | NodeKind::HardLink { size, content, .. } => {
                    c.files += 1;
                    c.bytes = c.bytes.saturating_add(size);
                    for id in content {
                        self.mark(id, snap);
                    }
                }
                NodeKind::Dir { subtree } => {
                    c.dirs += 1;
                    let below = self.dir(tally, snap, &subtree, depth + 1)?;
                    c.add(below);
                }
                _ => {}
            }
        }
        // After the children: a marked tree has everything below it marked.
        for id in ids {
            self.mark(*id, snap);
        }
        self.counts.insert(key, c);
        Ok(c)
    }
}

/// One key for a directory's whole list of tree blobs.
fn list_key(ids: &[BlobId]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(id);
    }
    *h.finalize().as_bytes()
}

/// Sealed bytes charged to each blob of the index: its own, or its share of its bundle.
struct Shares {
    /// (pack, offset) of a bundle -> the raw bytes of its members.
    bundles: HashMap<(u32, u32), u64>,
}

impl Shares {
    fn new(index: &Index) -> Shares {
        let mut bundles: HashMap<(u32, u32), u64> = HashMap::new();
        for (_, loc) in index.iter() {
            if loc.inner.is_some() {
                *bundles.entry((loc.pack, loc.offset)).or_default() += u64::from(loc.raw_len);
            }
        }
        Shares { bundles }
    }

    fn stored(&self, loc: &crate::index::Loc) -> u64 {
        if loc.inner.is_none() {
            return u64::from(loc.len);
        }
        let total = self.bundles.get(&(loc.pack, loc.offset)).copied().unwrap_or(0).max(1);
        (u128::from(loc.len) * u128::from(loc.raw_len) / u128::from(total)) as u64
    }
}

/// The figures for `snapshots` (each counted once, in the order given). Also returns warnings
/// (from loading the index).
pub fn stats(repo: &Repository, snapshots: &[&SnapshotEntry]) -> Result<(Stats, Vec<String>)> {
    let (index, warnings) = repo.load_index()?;
    let reader = BlobReader::new(repo, &index)?;
    let mut walk = Walk { reader: &reader, owner: HashMap::new(), counts: HashMap::new() };
    let mut out = Stats::default();
    for (i, e) in snapshots.iter().enumerate() {
        let snap = u32::try_from(i)
            .ok()
            .filter(|&s| s != MANY)
            .ok_or_else(|| Error::Invalid(format!("more than {} snapshots at once", MANY - 1)))?;
        // One tally per snapshot: the amplification limit is per walk, as restore's is.
        let tally = Tally::default();
        // Every tree is needed for the figures: a damaged one stops stats, naming the snapshot.
        let c = walk.dir(&tally, snap, &e.snapshot.tree, 1).map_err(|err| {
            Error::corrupt("snapshot", e.id.clone(), format!("{err} (`bakare check` names the damage)"))
        })?;
        out.files = out.files.saturating_add(c.files);
        out.dirs = out.dirs.saturating_add(c.dirs);
        out.bytes = out.bytes.saturating_add(c.bytes);
        out.snapshots.push(SnapshotStats {
            id: e.id.clone(),
            files: c.files,
            dirs: c.dirs,
            bytes: c.bytes,
            ..Default::default()
        });
    }
    drop(walk.counts);
    let shares = Shares::new(&index);
    for (id, &o) in &walk.owner {
        let Some(loc) = index.get(id) else {
            out.missing += 1;
            continue;
        };
        let raw = u64::from(loc.raw_len);
        let data = loc.kind != stages::BlobKind::Tree;
        if data {
            out.data_blobs += 1;
            out.data_raw += raw;
        } else {
            out.tree_blobs += 1;
        }
        out.raw += raw;
        out.stored += shares.stored(&loc);
        if let Some(s) = out.snapshots.get_mut(o as usize) {
            s.unique_blobs += 1;
            s.unique_raw += raw;
            if data {
                s.unique_data_raw += raw;
            }
        }
    }
    // The index's table is sorted by id: a blob stored in several packs is counted once.
    let mut last: Option<&BlobId> = None;
    for (id, loc) in index.iter() {
        if last == Some(id) {
            continue;
        }
        last = Some(id);
        out.index_blobs += 1;
        if !walk.owner.contains_key(id) {
            out.unused_blobs += 1;
            out.unused_raw += u64::from(loc.raw_len);
            out.unused_stored += shares.stored(&loc);
        }
    }
    let backend = repo.backend.as_ref();
    for key in backend.list("packs")? {
        if pack::parse_pack_key(&key).is_none() {
            continue;
        }
        match backend.size(&key) {
            Ok(size) => {
                out.packs += 1;
                out.pack_bytes += size;
            }
            // Deleted since the listing, by a prune.
            Err(io::StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((out, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexBuilder;
    use crate::pack::BlobEntry;

    fn entry(n: u8, offset: u32, len: u32, raw_len: u32, inner: Option<u32>) -> BlobEntry {
        BlobEntry { id: [n; 32], kind: stages::BlobKind::Data as u8, offset, len, raw_len, inner }
    }

    #[test]
    fn bundle_members_share_the_bundle_by_raw_bytes() {
        let mut b = IndexBuilder::default();
        // A bundle of 1000 sealed bytes holding 300 + 100 raw bytes, and a blob of its own.
        let entries = [
            entry(1, 10, 1000, 300, Some(0)),
            entry(2, 10, 1000, 100, Some(300)),
            entry(3, 1010, 500, 800, None),
        ];
        b.add_pack([7; 32], &entries);
        let index = b.build();
        let shares = Shares::new(&index);
        let stored = |n: u8| shares.stored(&index.get(&[n; 32]).unwrap());
        assert_eq!((stored(1), stored(2), stored(3)), (750, 250, 500));
    }
}
