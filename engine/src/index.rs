//! The index: blob id -> (pack, offset, length). On disk, segments written by backup sessions:
//! `"BKINDEX1" | seal_catalog("BKINDEX1", postcard(Vec<(PackId, Vec<BlobEntry>)>))`, named by the
//! BLAKE3 of its bytes. The index is a cache of the pack trailers: a segment that fails
//! authentication is reported and the packs it covered are read from their trailers instead.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use io::Backend;
use stages::{BlobId, BlobKind, Dedup};

use crate::crypto::{seal_catalog_value, Secret32};
use crate::error::{Error, Result};
use crate::pack::{self, BlobEntry, PackId};

pub const MAGIC: &[u8; 8] = b"BKINDEX1";

pub type SegmentBody = Vec<(PackId, Vec<BlobEntry>)>;

pub fn encode_segment(catalog_key: &Secret32, packs: &SegmentBody) -> Result<(String, Vec<u8>)> {
    let out = seal_catalog_value(catalog_key, MAGIC, MAGIC, packs).map_err(Error::Pipeline)?;
    let name = format!("index/{}", blake3::hash(&out).to_hex());
    Ok((name, out))
}

pub fn decode_segment(catalog_key: &Secret32, name: &str, data: Vec<u8>) -> Result<SegmentBody> {
    let mut body = Vec::new();
    for_each_pack(catalog_key, name, data, |p, entries| body.push((p, entries)))?;
    Ok(body)
}

/// Decodes the segment `data`, handing each pack's entries to `f` as they are decoded: the
/// plaintext is decrypted where it lies and only one pack's entries exist at a time. (Loading
/// a segment of 100,000 blobs whole took the raw bytes, a decrypted copy and every entry at
/// once: most of a no-change run's peak memory.) `f` is called only once the segment is
/// authenticated; if decoding fails midway, the packs handed over so far are valid entries of
/// an authentic segment.
pub fn for_each_pack(
    catalog_key: &Secret32,
    name: &str,
    mut data: Vec<u8>,
    f: impl FnMut(PackId, Vec<BlobEntry>),
) -> Result<()> {
    if data.len() < 8 || &data[..8] != MAGIC {
        return Err(Error::corrupt("index segment", name, "bad magic"));
    }
    let body = crate::crypto::open_catalog_in_place(catalog_key, MAGIC, &mut data, 8)
        .ok_or_else(|| Error::corrupt("index segment", name, "failed authentication"))?;
    let mut de = postcard::Deserializer::from_bytes(body);
    serde::Deserializer::deserialize_seq(&mut de, PackVisitor(f))
        .map_err(|e| Error::corrupt("index segment", name, e))?;
    match de.finalize() {
        Ok([]) => Ok(()),
        Ok(_) => Err(Error::corrupt("index segment", name, "trailing bytes")),
        Err(e) => Err(Error::corrupt("index segment", name, e)),
    }
}

/// Visits a segment's `[(pack id, [BlobEntry])]` one pack at a time.
struct PackVisitor<F>(F);

impl<'de, F: FnMut(PackId, Vec<BlobEntry>)> serde::de::Visitor<'de> for PackVisitor<F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence of packs and their blobs")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some((p, entries)) = seq.next_element::<(PackId, Vec<BlobEntry>)>()? {
            (self.0)(p, entries);
        }
        Ok(())
    }
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

/// Where a blob is, packed: 56 bytes with its id. (A hash map took ~128 bytes per blob at a
/// million blobs: its table is rounded up to a power of two, and doubles while it grows.)
#[derive(Clone, Copy)]
struct Slot {
    id: BlobId,
    pack: u32,
    offset: u32,
    len: u32,
    raw_len: u32,
    /// `NOT_INNER` for a blob that is not in a bundle.
    inner: u32,
    kind: u8,
}

/// Bundles are far smaller than 4 GiB: no member starts at this offset.
const NOT_INNER: u32 = u32::MAX;

impl Slot {
    fn loc(&self) -> Option<Loc> {
        let kind = BlobKind::from_u8(self.kind)?;
        let inner = (self.inner != NOT_INNER).then_some(self.inner);
        Some(Loc { pack: self.pack, offset: self.offset, len: self.len, raw_len: self.raw_len, kind, inner })
    }
}

/// The index while it is being read: packs and their entries in the order they count (of a
/// blob's copies, the one in the pack added first wins). `build` makes the lookup table.
#[derive(Default)]
pub struct IndexBuilder {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    slots: Vec<Slot>,
}

impl IndexBuilder {
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
            let inner = e.inner.unwrap_or(NOT_INNER);
            let (offset, len, raw_len) = (e.offset, e.len, e.raw_len);
            self.slots.push(Slot { id: e.id, pack: p, offset, len, raw_len, inner, kind: kind as u8 });
        }
    }

    /// Sorts the blobs by id, keeping of each the copy in the pack added first (then the one
    /// first in that pack), and indexes them by their ids' leading bits: ids are keyed hashes, evenly
    /// spread, so each bucket holds a few blobs side by side in memory.
    pub fn build(self) -> Index {
        let IndexBuilder { packs, pack_pos, mut slots } = self;
        // Unstable (no scratch memory); ties are broken by pack index, which is the order in
        // which the packs were added, then by position in the pack. The ids' leading eight bytes
        // are compared as one integer first: they differ almost always, and comparing whole ids
        // called memcmp for every comparison (a third of the sort's time).
        slots.sort_unstable_by(|a, b| {
            (lead(&a.id).cmp(&lead(&b.id)))
                .then_with(|| a.id.cmp(&b.id))
                .then(a.pack.cmp(&b.pack))
                .then(a.offset.cmp(&b.offset))
        });
        slots.dedup_by(|later, first| later.id == first.id);
        slots.shrink_to_fit();
        // About four blobs per bucket.
        let bits = (usize::BITS - (slots.len() / 4).leading_zeros()).min(24);
        let mut dir = vec![0u32; (1usize << bits) + 1];
        for s in &slots {
            dir[bucket(&s.id, bits) + 1] += 1;
        }
        for i in 1..dir.len() {
            dir[i] += dir[i - 1];
        }
        Index { packs, pack_pos, slots, dir, bits, recovered: Vec::new() }
    }
}

/// An id's leading eight bytes, as an integer in the ids' order.
pub(crate) fn lead(id: &BlobId) -> u64 {
    u64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
}

/// The leading `bits` bits of an id.
fn bucket(id: &BlobId, bits: u32) -> usize {
    lead(id).checked_shr(64 - bits).unwrap_or(0) as usize
}

/// blob id -> where it is: a sorted table, with a directory by the ids' leading bits.
pub struct Index {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    slots: Vec<Slot>,
    /// Slots `dir[b]..dir[b + 1]` have ids whose leading `bits` bits are `b`.
    dir: Vec<u32>,
    bits: u32,
    /// Packs that no readable segment listed, as read from their trailers. The next backup
    /// lists them in its own segment, so a damaged or missing segment heals itself.
    pub recovered: Vec<(PackId, Vec<BlobEntry>)>,
}

impl Default for Index {
    fn default() -> Self {
        IndexBuilder::default().build()
    }
}

impl Index {
    /// The slots whose ids share `id`'s leading bits (about four).
    fn bucket_slots(&self, id: &BlobId) -> Option<&[Slot]> {
        let b = bucket(id, self.bits);
        let (start, end) = (*self.dir.get(b)? as usize, *self.dir.get(b + 1)? as usize);
        self.slots.get(start..end)
    }

    fn slot(&self, id: &BlobId) -> Option<&Slot> {
        let range = self.bucket_slots(id)?;
        // A bucket holds about four ids: a scan that compares their leading eight bytes as one
        // integer first. Binary search called memcmp on every probe and, with the table's cache
        // misses, took 40 % of a no-change run's scan thread (300,000 files, each id checked).
        let want = lead(id);
        range.iter().find(|s| lead(&s.id) == want && s.id == *id)
    }

    /// Starts bringing the slots where `id` would be into the cache, for a lookup soon after:
    /// its bucket, up to eight slots (a bucket holds about four).
    pub fn prefetch(&self, id: &BlobId) {
        for slot in self.bucket_slots(id).unwrap_or_default().iter().take(8) {
            ::io::cpu::prefetch(slot);
        }
    }

    pub fn get(&self, id: &BlobId) -> Option<Loc> {
        self.slot(id).and_then(Slot::loc)
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.slot(id).is_some()
    }

    /// Every blob and where it is, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, Loc)> {
        self.slots.iter().filter_map(|s| Some((&s.id, s.loc()?)))
    }

    pub fn pack_id(&self, idx: u32) -> Option<&PackId> {
        self.packs.get(idx as usize)
    }

    pub fn has_pack(&self, id: &PackId) -> bool {
        self.pack_pos.contains_key(id)
    }

    pub fn blob_count(&self) -> usize {
        self.slots.len()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
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
        let mut idx = IndexBuilder::default();
        let mut recovered = Vec::new();
        let mut warnings = Vec::new();
        // Segments are listed first, then packs: a backup writes its packs before its segment,
        // so every pack of a segment listed here is in the pack listing (unless it was lost).
        // Each segment is then decoded and added on its own (never all of them at once: at a
        // million blobs that doubled the memory of the index while it loaded).
        let mut names = backend.list("index")?;
        names.sort();
        let mut packs = backend.list("packs")?;
        packs.sort();
        let present: HashSet<PackId> = packs.iter().filter_map(|k| pack::parse_pack_key(k)).collect();
        let mut late = Vec::new();
        let mut covered = HashSet::new();
        if !backend.remote() {
            // A bound on the blobs (an entry takes at least 37 bytes of a segment), so that the
            // table is allocated once instead of doubling, and being copied, as it fills (the
            // copy was the peak of a no-change run). Untouched, the excess costs no memory.
            let bytes: u64 = names.iter().filter_map(|n| backend.size(n).ok()).sum();
            idx.slots.reserve_exact(usize::try_from(bytes / 37).unwrap_or(0));
        }
        for name in names {
            let data = match backend.get(&name) {
                Ok(data) => data,
                Err(e) => {
                    warnings.push(format!("{}; reading pack trailers instead", Error::from(e)));
                    continue;
                }
            };
            let added = for_each_pack(catalog_key, &name, data, |p, entries| {
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
            });
            if let Err(e) = added {
                warnings.push(format!("{e}; reading pack trailers instead"));
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
                    recovered.push((id, entries));
                }
                Err(e) => warnings.push(format!("{e}; its blobs are unavailable")),
            }
        }
        if usage == Use::Read {
            for (p, entries) in late {
                idx.add_pack(p, &entries);
            }
        }
        let mut idx = idx.build();
        idx.recovered = recovered;
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

/// The ids a session has claimed: each stored once, in blocks that never move, and found through
/// a hash table of 4-byte positions keyed by the ids' leading bytes (keyed BLAKE3 outputs, so
/// uniform already). A `HashSet<BlobId>` kept every id in a table at most 7/8 full that doubles
/// as it grows: over 300,000 new files it took 17 MiB, and 26 MiB while it doubled, which was
/// the peak of the whole backup. Here an id costs 32 bytes plus 5 per table slot.
#[derive(Default)]
struct Claimed {
    blocks: Vec<Vec<BlobId>>,
    table: hashbrown::HashTable<u32>,
    len: usize,
}

/// Ids per block of `Claimed` (128 KiB).
const CLAIM_BLOCK: usize = 4096;

impl Claimed {
    fn id(blocks: &[Vec<BlobId>], at: u32) -> &BlobId {
        let i = at as usize;
        &blocks[i / CLAIM_BLOCK][i % CLAIM_BLOCK]
    }

    /// Adds `id`; false if it was claimed already.
    fn insert(&mut self, id: &BlobId) -> bool {
        let Claimed { blocks, table, len } = self;
        let hash = lead(id);
        if table.find(hash, |&at| Self::id(blocks, at) == id).is_some() {
            return false;
        }
        let Ok(at) = u32::try_from(*len) else {
            return true; // four billion claims: store it again rather than lose track of it
        };
        if blocks.last().is_none_or(|b| b.len() == CLAIM_BLOCK) {
            blocks.push(Vec::with_capacity(CLAIM_BLOCK));
        }
        if let Some(b) = blocks.last_mut() {
            b.push(*id);
        }
        *len += 1;
        table.insert_unique(hash, at, |&at| lead(Self::id(blocks, at)));
        true
    }
}

/// Dedup for one backup session: blobs in the loaded index, plus those claimed by this session.
pub struct SessionDedup {
    pub index: Arc<Index>,
    claimed: Mutex<Claimed>,
    /// The set of claimed ids grows with every new blob and lives to the end of the run; its
    /// memory is taken from the data budget as it grows (down to `floor`), so that a run with
    /// millions of new blobs still holds its memory ceiling.
    budget: Option<(stages::MemoryBudget, u64)>,
}

/// Bytes a claimed id costs at most: 32 in its block, and 4-byte slots (plus a control byte) in
/// a table kept at most 7/8 full, up to twice that while it doubles.
pub const CLAIM_BYTES: u64 = 48;
const CLAIMS_PER_SHRINK: usize = 4096;

impl SessionDedup {
    pub fn new(index: Arc<Index>) -> Self {
        SessionDedup { index, claimed: Mutex::new(Claimed::default()), budget: None }
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
        let new = c.insert(id);
        if new && c.len.is_multiple_of(CLAIMS_PER_SHRINK) {
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
        assert_eq!(decode_segment(&k, &name, bytes.clone()).unwrap(), body);
        let mut t = bytes.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(decode_segment(&k, &name, t).is_err());
        let mut idx = IndexBuilder::default();
        idx.add_pack([1; 32], &body[0].1);
        let d = SessionDedup::new(Arc::new(idx.build()));
        assert!(!d.claim(&[9; 32], BlobKind::Data));
        assert!(d.claim(&[8; 32], BlobKind::Data));
        assert!(!d.claim(&[8; 32], BlobKind::Data));
    }

    #[test]
    fn claims_are_told_apart_by_the_whole_id() {
        let mut c = Claimed::default();
        let mut a = [1u8; 32];
        let mut b = a;
        b[31] = 2; // same leading bytes, so the same hash
        assert!(c.insert(&a) && c.insert(&b));
        assert!(!c.insert(&a) && !c.insert(&b));
        a[0] = 9;
        assert!(c.insert(&a));
        assert_eq!(c.len, 3);
    }

    proptest! {
        /// Claims answer like a set, across blocks, with duplicates and with ids that share
        /// their leading bytes (the hash) but not their last one.
        #[test]
        fn claims_answer_like_a_set(ids in proptest::collection::vec((0u8..4, 0u16..2048, 0u8..3), 0..6_000)) {
            let mut c = Claimed::default();
            let mut set = std::collections::HashSet::new();
            for (lead, mid, last) in ids {
                let mut id = [lead; 32];
                id[1..3].copy_from_slice(&mid.to_le_bytes());
                id[31] = last;
                prop_assert_eq!(c.insert(&id), set.insert(id));
            }
            prop_assert_eq!(c.len, set.len());
        }

        /// The table answers like a map that keeps, of each blob's copies, the one in the pack
        /// added first (then the one first in that pack).
        #[test]
        fn lookups_match_a_map_that_keeps_the_first_copy(
            packs in proptest::collection::vec(
                proptest::collection::vec((0u8..40, any::<u8>(), 0u32..1000, proptest::option::of(0u32..9), 0u8..4), 0..30),
                0..12,
            ),
        ) {
            let mut b = IndexBuilder::default();
            let mut expect: HashMap<BlobId, Loc> = HashMap::new();
            for (n, entries) in packs.iter().enumerate() {
                // Few distinct ids (40 x 256 spread over the leading byte), so copies collide.
                let entries: Vec<BlobEntry> = entries
                    .iter()
                    .map(|&(a, c, offset, inner, kind)| {
                        let mut id = [a; 32];
                        id[31] = c;
                        BlobEntry { id, kind, offset, len: offset + 1, raw_len: 7, inner }
                    })
                    .collect();
                let pack = [n as u8 % 7; 32]; // some packs are added again
                b.add_pack(pack, &entries);
                let p = b.pack_pos[&pack];
                for e in &entries {
                    match e.kind() {
                        Some(BlobKind::Bundle) | None => {}
                        Some(kind) => {
                            let loc = Loc { pack: p, offset: e.offset, len: e.len, raw_len: 7, kind, inner: e.inner };
                            // The copy in the pack added first wins, then the one first in it.
                            let first = expect.entry(e.id).or_insert(loc);
                            if (loc.pack, loc.offset) < (first.pack, first.offset) {
                                *first = loc;
                            }
                        }
                    }
                }
            }
            let idx = b.build();
            prop_assert_eq!(idx.blob_count(), expect.len());
            for (id, loc) in &expect {
                prop_assert_eq!(idx.get(id), Some(*loc));
            }
            for a in 0u8..=255 {
                let id = [a; 32];
                prop_assert_eq!(idx.contains(&id), expect.contains_key(&id));
            }
        }

        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let k = Secret32::random();
            let _ = decode_segment(&k, "x", g);
        }
    }
}
