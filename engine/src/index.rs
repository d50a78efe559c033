//! The index: blob id -> (pack, offset, length). On disk, one segment per backup session:
//! `"BKINDEX1" | seal_catalog("BKINDEX1", postcard(Vec<(PackId, Vec<BlobEntry>)>))`, named by the
//! BLAKE3 of its bytes. The index is a cache of the pack trailers: a segment that fails
//! authentication is reported and the packs it covered are read from their trailers instead.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use io::Backend;
// Blob ids are keyed BLAKE3 hashes: uniformly spread and not chosen by the files' owners, so a
// fast unkeyed hash suffices (SipHash was ~4 % of a no-change run).
use rustc_hash::{FxHashMap, FxHashSet};
use stages::{BlobId, BlobKind, Dedup};

use crate::crypto::{open_catalog, seal_catalog, Secret32};
use crate::error::{Error, Result};
use crate::pack::{self, BlobEntry, PackId};

pub const MAGIC: &[u8; 8] = b"BKINDEX1";

pub type SegmentBody = Vec<(PackId, Vec<BlobEntry>)>;

pub fn encode_segment(catalog_key: &Secret32, packs: &SegmentBody) -> Result<(String, Vec<u8>)> {
    let body = postcard::to_allocvec(packs).map_err(|e| Error::Pipeline(e.to_string()))?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&seal_catalog(catalog_key, MAGIC, &body));
    let name = format!("index/{}", blake3::hash(&out).to_hex());
    Ok((name, out))
}

pub fn decode_segment(catalog_key: &Secret32, name: &str, data: &[u8]) -> Result<SegmentBody> {
    if data.len() < 8 || &data[..8] != MAGIC {
        return Err(Error::corrupt("index segment", name, "bad magic"));
    }
    let body = open_catalog(catalog_key, MAGIC, &data[8..])
        .ok_or_else(|| Error::corrupt("index segment", name, "failed authentication"))?;
    postcard::from_bytes(&body).map_err(|e| Error::corrupt("index segment", name, e))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub pack: u32,
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
    pub kind: BlobKind,
    /// Offset inside a bundle's plaintext, for a small blob sealed in a bundle.
    pub inner: Option<u32>,
}

#[derive(Default)]
pub struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    blobs: FxHashMap<BlobId, Loc>,
    /// Packs that no readable segment listed, as read from their trailers. The next backup
    /// lists them in its own segment, so a damaged or missing segment heals itself.
    pub recovered: Vec<(PackId, Vec<BlobEntry>)>,
}

impl Index {
    pub fn add_pack(&mut self, pack: PackId, entries: &[BlobEntry]) {
        let p = *self.pack_pos.entry(pack).or_insert_with(|| {
            self.packs.push(pack);
            (self.packs.len() - 1) as u32
        });
        for e in entries {
            let Some(kind) = e.kind() else { continue };
            if kind == BlobKind::Bundle {
                continue; // bundles are reached through their members
            }
            let loc = Loc { pack: p, offset: e.offset, len: e.len, raw_len: e.raw_len, kind, inner: e.inner };
            self.blobs.entry(e.id).or_insert(loc);
        }
    }

    pub fn get(&self, id: &BlobId) -> Option<Loc> {
        self.blobs.get(id).copied()
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn pack_id(&self, idx: u32) -> Option<&PackId> {
        self.packs.get(idx as usize)
    }

    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Every blob and where it is, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, &Loc)> {
        self.blobs.iter()
    }

    /// Loads every segment; packs that no readable segment covers (a damaged segment, or a
    /// session that crashed after writing packs but before its segment) are read from their
    /// trailers. Returns the index and a warning per problem found. Packs prune has condemned
    /// are handled as `usage` says: a reader still reads them (after every other copy of a
    /// blob); a writer treats their blobs as absent (design.md section 4, rule 3), and so stores
    /// such data again.
    pub fn load_with(
        backend: &dyn Backend,
        catalog_key: &Secret32,
        condemned: &HashSet<PackId>,
        usage: Use,
    ) -> Result<(Index, Vec<String>)> {
        let mut idx = Index::default();
        let mut warnings = Vec::new();
        // Segments first, then packs: a backup writes its packs before its segment, so every
        // pack of a segment listed here is in the pack listing (unless it was lost).
        let mut names = backend.list("index")?;
        names.sort();
        let mut segments = Vec::new();
        for name in names {
            match backend
                .get(&name)
                .map_err(Error::from)
                .and_then(|data| decode_segment(catalog_key, &name, &data))
            {
                Ok(packs) => segments.push((name, packs)),
                Err(e) => warnings.push(format!("{e}; reading pack trailers instead")),
            }
        }
        let mut packs = backend.list("packs")?;
        packs.sort();
        let present: HashSet<PackId> = packs.iter().filter_map(|k| pack::parse_pack_key(k)).collect();
        let mut late = Vec::new();
        let mut covered = HashSet::new();
        for (name, packs) in segments {
            for (p, entries) in packs {
                covered.insert(p);
                if !present.contains(&p) && condemned.contains(&p) {
                    // Deleted by prune after a grace period; its segment goes next.
                } else if !present.contains(&p) {
                    // Never dedup against data that is gone: treat its blobs as absent.
                    warnings.push(format!(
                        "{} (listed by {name}) is missing: its {} blobs are unavailable (see `bakare check`)",
                        pack::pack_key(&p),
                        entries.len()
                    ));
                } else if condemned.contains(&p) {
                    late.push((p, entries));
                } else {
                    idx.add_pack(p, &entries);
                }
            }
        }
        for key in packs {
            let Some(id) = pack::parse_pack_key(&key) else { continue };
            if covered.contains(&id) {
                continue;
            }
            match pack::read_trailer(backend, catalog_key, &key) {
                Ok(entries) if condemned.contains(&id) => late.push((id, entries)),
                Ok(entries) => {
                    idx.add_pack(id, &entries);
                    idx.recovered.push((id, entries));
                }
                Err(e) => warnings.push(format!("{e}; its blobs are unavailable")),
            }
        }
        if usage == Use::Read {
            for (p, entries) in late {
                idx.add_pack(p, &entries);
            }
        }
        Ok((idx, warnings))
    }
}

/// What an index is loaded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Reading back: every copy counts, condemned ones last.
    Read,
    /// Deduplicating a backup against: condemned copies do not count.
    Dedup,
}

/// Dedup for one backup session: blobs in the loaded index, plus those claimed by this session.
pub struct SessionDedup {
    pub index: Arc<Index>,
    claimed: Mutex<FxHashSet<BlobId>>,
    /// The set of claimed ids grows with every new blob and lives to the end of the run; its
    /// memory is taken from the data budget as it grows (down to `floor`), so that a run with
    /// millions of new blobs still holds its memory ceiling.
    budget: Option<(stages::MemoryBudget, u64)>,
}

/// Bytes a claimed id costs in the set (32-byte key in a hash table kept at most 7/8 full,
/// doubling as it grows).
pub const CLAIM_BYTES: u64 = 64;
const CLAIMS_PER_SHRINK: usize = 4096;

impl SessionDedup {
    pub fn new(index: Arc<Index>) -> Self {
        SessionDedup { index, claimed: Mutex::new(FxHashSet::default()), budget: None }
    }

    /// Charges the growth of the claimed set to `budget`, never lowering it below `floor`.
    pub fn with_budget(mut self, budget: stages::MemoryBudget, floor: u64) -> Self {
        self.budget = Some((budget, floor));
        self
    }
}

impl Dedup for SessionDedup {
    fn claim(&self, id: &BlobId, _kind: BlobKind) -> bool {
        if self.index.contains(id) {
            return false;
        }
        // A poisoned lock only means another worker panicked; the set itself is intact.
        let mut c = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let new = c.insert(*id);
        if new && c.len().is_multiple_of(CLAIMS_PER_SHRINK) {
            if let Some((b, floor)) = &self.budget {
                b.shrink(CLAIMS_PER_SHRINK as u64 * CLAIM_BYTES, *floor);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segment_round_trip() {
        let k = Secret32::random();
        let e = BlobEntry { id: [9; 32], kind: 0, offset: 100, len: 50, raw_len: 40, inner: None };
        let body = vec![([1u8; 32], vec![e])];
        let (name, bytes) = encode_segment(&k, &body).unwrap();
        assert!(name.starts_with("index/"));
        assert_eq!(decode_segment(&k, &name, &bytes).unwrap(), body);
        let mut t = bytes.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(decode_segment(&k, &name, &t).is_err());
        let mut idx = Index::default();
        idx.add_pack([1; 32], &body[0].1);
        let d = SessionDedup::new(Arc::new(idx));
        assert!(!d.claim(&[9; 32], BlobKind::Data));
        assert!(d.claim(&[8; 32], BlobKind::Data));
        assert!(!d.claim(&[8; 32], BlobKind::Data));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let k = Secret32::random();
            let _ = decode_segment(&k, "x", &g);
        }
    }
}
