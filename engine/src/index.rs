//! The index: blob id -> (pack, offset, length). On disk, segments written by backup sessions
//! (and rewritten by prune and `repair index`), named by the BLAKE3 of their bytes:
//!
//! - `"BKINDEX3" | seal_catalog("BKINDEX3", seal(signer, IndexSegment, vouched_by (32) |
//!   postcard(Head { count, wrapped, places }) | postcard(Vec<(PackId, Vec<BlobId>)>)))`: the
//!   blob ids are readable with the catalog key (a backup-only key deduplicates against them),
//!   but where each blob is, how large and of what kind (`places`, one [`Place`] per id in
//!   order) is sealed under a fresh key that `wrapped` gives only to the owner's identity (age):
//!   a stolen backup-only key learns ids, never sizes. Signed by the writer that wrote it.
//!   `vouched_by` is who stored the packs it lists: the signer itself, or, in a segment the
//!   owner signed, the writer whose packs the owner relays (prune and repair rewrite segments
//!   but never sign for a writer), or [`NOBODY`] for packs of unknown origin (found only by
//!   their trailers).
//! - `"BKINDEX2"`: the same before places were sealed (2026-12): `vouched_by |
//!   postcard(Vec<(PackId, Vec<BlobEntry>)>)`, whole entries under the catalog key. Read alike.
//! - `"BKINDEX1" | seal_catalog("BKINDEX1", postcard(...))`: unsigned, from before 2026-12; read
//!   alike, vouched for by nobody until the owner's `migrate` signs it.
//!
//! Backups deduplicate only against packs vouched for by a writer in good standing (the owner,
//! a registered writer not revoked, or the writer itself): a writer that stored garbage under
//! real ids poisons nothing once it is revoked (docs/security.md). The index is a cache of the
//! pack trailers: a segment that fails authentication is reported and the packs it covered
//! are read from their trailers instead.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use io::Backend;
use stages::{BlobId, BlobKind, Dedup};

use serde::{Deserialize, Serialize};

use crate::crypto::{open_catalog, seal_catalog, unwrap_key, wrap_key, Secret32};
use crate::error::{Error, Result};
use crate::pack::{self, BlobEntry, PackId};
use crate::signing::{self, PublicKey, Purpose, SigningKey};

pub const MAGIC: &[u8; 8] = b"BKINDEX3";
/// Signed segments with whole entries under the catalog key, from before places were sealed.
pub const MAGIC_V2: &[u8; 8] = b"BKINDEX2";
/// What a segment's sealed places are bound to.
const PLACES_MAGIC: &[u8] = b"BKIXPLC3";
/// Unsigned segments, from before 2026-12.
pub const MAGIC_V1: &[u8; 8] = b"BKINDEX1";
/// `vouched_by` of packs whose writer nobody knows (not a valid Ed25519 key, so never a signer).
pub const NOBODY: PublicKey = [0; 32];
/// `vouched_by` of packs the owner relays from an unsigned segment of before 2026-12 (prune
/// and repair rewrite the index before `migrate` vouches for them). Not a valid key either.
pub const UNSIGNED: PublicKey = [0xff; 32];

pub type SegmentBody = Vec<(PackId, Vec<BlobEntry>)>;

/// Who stands behind the packs a segment lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Voucher {
    /// An unsigned segment of before 2026-12.
    Unsigned,
    /// Signed, but for packs of unknown origin (or a writer claiming to relay another's).
    Nobody,
    /// The writer (or owner) with this key stored them.
    Key(PublicKey),
}

impl Voucher {
    pub fn key(&self) -> Option<&PublicKey> {
        match self {
            Voucher::Key(k) => Some(k),
            _ => None,
        }
    }

    /// As stored in a segment's `vouched_by`.
    pub fn stored(&self) -> PublicKey {
        match self {
            Voucher::Key(k) => *k,
            Voucher::Nobody => NOBODY,
            Voucher::Unsigned => UNSIGNED,
        }
    }
}

/// What segments are opened with: the catalog key decrypts the blob ids; the owner's identity
/// (None with a backup-only key) opens where the blobs are and how large; the repository id and
/// the owner's key tell whose word a segment carries.
#[derive(Clone, Copy)]
pub struct SegmentKeys<'a> {
    pub catalog: &'a Secret32,
    pub identity: Option<&'a age::x25519::Identity>,
    pub repo_id: &'a [u8; 16],
    pub owner: &'a PublicKey,
}

/// What segments are written with: the catalog key, the writer's signing key, and the owner's
/// recipient (which alone opens where the blobs are).
#[derive(Clone)]
pub struct SegmentSealer {
    pub catalog: Secret32,
    pub signer: SigningKey,
    pub repo_id: [u8; 16],
    pub recipient: age::x25519::Recipient,
}

/// How much of a segment a reader needs: whole entries (the owner, reading data back), or only
/// which ids each pack holds (a backup deduplicating). With `Ids`, entries of a `BKINDEX3`
/// segment come with `kind` Data and zero offsets and lengths: never read through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    Full,
    Ids,
}

/// Where one blob is, how large and of what kind: what a segment seals to the owner, each in
/// `PLACE_BYTES` (kind, then offset, sealed length, raw length and offset in its bundle, or
/// `NOT_INNER`, as u32 LE): fixed, so that the sealed places' length gives only their count
/// (variable-length integers gave each blob's size class).
#[derive(Clone, Copy)]
struct Place {
    kind: u8,
    offset: u32,
    len: u32,
    raw_len: u32,
    inner: Option<u32>,
}

impl Place {
    fn of(e: &BlobEntry) -> Self {
        Place { kind: e.kind, offset: e.offset, len: e.len, raw_len: e.raw_len, inner: e.inner }
    }

    fn entry(&self, id: BlobId) -> BlobEntry {
        let Place { kind, offset, len, raw_len, inner } = *self;
        BlobEntry { id, kind, offset, len, raw_len, inner }
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        for n in [self.offset, self.len, self.raw_len, self.inner.unwrap_or(NOT_INNER)] {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }

    fn read(b: &[u8]) -> Option<Place> {
        let n = |at: usize| b.get(at..at + 4).and_then(|x| x.try_into().ok()).map(u32::from_le_bytes);
        let inner = n(13)?;
        Some(Place {
            kind: *b.first()?,
            offset: n(1)?,
            len: n(5)?,
            raw_len: n(9)?,
            inner: (inner != NOT_INNER).then_some(inner),
        })
    }
}

const PLACE_BYTES: usize = 17;

/// `places` as sealed: `PLACE_BYTES` each.
fn encode_places<'a>(places: impl Iterator<Item = &'a BlobEntry>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in places {
        Place::of(e).put(&mut out);
    }
    out
}

/// What a `BKINDEX3` segment says before its ids: how many, and their places sealed to the
/// owner (`wrapped`: the places' key, age-encrypted to the owner's recipient).
#[derive(Serialize, Deserialize)]
struct Head {
    count: u64,
    wrapped: Vec<u8>,
    places: Vec<u8>,
}

/// A segment body's ids, pack by pack, encoded without copying them out.
struct Ids<'a>(&'a SegmentBody);

impl Serialize for Ids<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(p, entries)| (p, IdList(entries))))
    }
}

struct IdList<'a>(&'a [BlobEntry]);

impl Serialize for IdList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|e| &e.id))
    }
}

impl SegmentSealer {
    /// A segment for packs the signer stored itself.
    pub fn own(&self, packs: &SegmentBody) -> Result<(String, Vec<u8>)> {
        self.seal(&Voucher::Key(self.signer.public()), packs)
    }

    /// A segment saying `voucher` stored `packs`. Only the owner's word about another writer
    /// counts; a writer saying so is read as `Nobody`.
    pub fn seal(&self, voucher: &Voucher, packs: &SegmentBody) -> Result<(String, Vec<u8>)> {
        let encoding = |e: &dyn std::fmt::Display| Error::Pipeline(format!("encoding an index segment: {e}"));
        let places = encode_places(packs.iter().flat_map(|(_, entries)| entries.iter()));
        let key = stages::encrypt::DataKey::random();
        let wrapped = wrap_key(&self.recipient, &key).map_err(|e| encoding(&e))?;
        let sealed = seal_catalog(&Secret32::from_bytes(*key.as_bytes()), PLACES_MAGIC, &places);
        let head = Head { count: (places.len() / PLACE_BYTES) as u64, wrapped, places: sealed };
        drop(places);
        let plain = postcard::to_extend(&head, voucher.stored().to_vec()).map_err(|e| encoding(&e))?;
        let plain = postcard::to_extend(&Ids(packs), plain).map_err(|e| encoding(&e))?;
        let signed = signing::seal(&self.signer, Purpose::IndexSegment, &self.repo_id, plain);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&seal_catalog(&self.catalog, MAGIC, &signed));
        let name = format!("index/{}", blake3::hash(&out).to_hex());
        Ok((name, out))
    }
}

/// The object saying that the owner's `migrate` vouched for the unsigned segments of before
/// (it does so once): `"BKIXMARK" | signed(owner, time_ns as 8 bytes LE)`. Unsigned segments
/// found after it were planted, and stay unvouched.
pub const MARK: &str = "index-signed";
const MARK_MAGIC: &[u8; 8] = b"BKIXMARK";

/// What the mark says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// No mark: a repository from before signed segments whose owner has not migrated yet.
    Absent,
    /// The owner signed the index at this time.
    Signed(i64),
    /// Something is there that is not the owner's mark. It counts as signed: a mark anyone can
    /// write must never make `migrate` vouch for what is unsigned (the worst it can do is keep
    /// old data from being deduplicated against).
    Forged,
}

/// The mark, as stored.
pub fn signed_mark(backend: &dyn Backend, owner: &PublicKey, repo_id: &[u8; 16]) -> Result<Mark> {
    let data = match backend.get(MARK) {
        Ok(d) => d,
        Err(io::StorageError::NotFound { .. }) => return Ok(Mark::Absent),
        Err(e) => return Err(e.into()),
    };
    let Some(signed) = data.strip_prefix(MARK_MAGIC) else { return Ok(Mark::Forged) };
    Ok(match signing::open(Purpose::Marker, repo_id, signed) {
        Some((body, signer)) if signer == *owner => {
            body.try_into().ok().map(i64::from_le_bytes).map_or(Mark::Forged, Mark::Signed)
        }
        _ => Mark::Forged,
    })
}

/// Writes the mark (never replacing one).
pub fn put_signed_mark(
    backend: &dyn Backend,
    owner: &SigningKey,
    repo_id: &[u8; 16],
    time_ns: i64,
) -> Result<()> {
    let mut out = MARK_MAGIC.to_vec();
    out.extend_from_slice(&signing::seal(owner, Purpose::Marker, repo_id, time_ns.to_le_bytes().to_vec()));
    backend.put(MARK, &out)?;
    Ok(())
}

/// Packs per segment when prune or `repair index` rewrites the index.
pub const PACKS_PER_SEGMENT: usize = 512;

/// A pack as one segment lists it: whose word, and the entries that word covers.
pub type Claim = (Voucher, PackId, Vec<BlobEntry>);

/// Groups `claims` by voucher: the segments `put_vouched` writes for them.
pub fn by_voucher(
    claims: impl IntoIterator<Item = Claim>,
) -> std::collections::BTreeMap<PublicKey, SegmentBody> {
    let mut groups: std::collections::BTreeMap<PublicKey, SegmentBody> = Default::default();
    for (v, p, entries) in claims {
        groups.entry(v.stored()).or_default().push((p, entries));
    }
    groups
}

/// `entries` (a pack's own trailer, its writer's word) under each voucher whose segment listed
/// their ids in this pack; entries no segment listed are nobody's. A voucher's word never
/// covers more than what it listed (two writers listing one pack keep apart what each said).
pub fn split_by_claims(
    pack: PackId,
    entries: &[BlobEntry],
    claims: &[(Voucher, HashSet<BlobId>)],
) -> Vec<Claim> {
    let mut out: Vec<Claim> = claims
        .iter()
        .map(|(v, ids)| {
            (*v, pack, entries.iter().filter(|e| ids.contains(&e.id)).copied().collect::<Vec<_>>())
        })
        .filter(|(_, _, e)| !e.is_empty())
        .collect();
    let rest: Vec<BlobEntry> =
        entries.iter().filter(|e| !claims.iter().any(|(_, ids)| ids.contains(&e.id))).copied().collect();
    if !rest.is_empty() {
        out.push((Voucher::Nobody, pack, rest));
    }
    out
}

/// How many segments `put_vouched` writes for these groups.
pub fn segments_for(groups: &std::collections::BTreeMap<PublicKey, SegmentBody>) -> usize {
    groups.values().map(|g| g.len().div_ceil(PACKS_PER_SEGMENT)).sum()
}

/// Writes `groups` (from `by_voucher`) as segments signed by `sealer` (the owner's), one set
/// per voucher, so that each pack keeps the word of whoever vouched for it, for exactly the
/// entries that word covered (a pack several segments list keeps each claim apart: merged, a
/// stranger's extra entries would pass for the owner's). Returns the names written.
pub fn put_vouched(
    backend: &dyn Backend,
    sealer: &SegmentSealer,
    groups: std::collections::BTreeMap<PublicKey, SegmentBody>,
) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for (by, packs) in groups {
        let voucher = match by {
            NOBODY => Voucher::Nobody,
            UNSIGNED => Voucher::Unsigned,
            k => Voucher::Key(k),
        };
        for part in packs.chunks(PACKS_PER_SEGMENT) {
            let (name, bytes) = sealer.seal(&voucher, &part.to_vec())?;
            backend.put(&name, &bytes)?;
            names.push(name);
        }
    }
    Ok(names)
}

/// A segment whole, with every entry's place: for the owner (a backup-only key cannot open a
/// `BKINDEX3` segment's places, and gets an error).
pub fn decode_segment(keys: SegmentKeys, name: &str, data: Vec<u8>) -> Result<(Voucher, SegmentBody)> {
    let mut body = Vec::new();
    let v = for_each_pack(keys, name, data, Detail::Full, |_, p, entries| body.push((p, entries)))?;
    Ok((v, body))
}

/// Decodes the segment `data`, handing each pack's entries to `f` as they are decoded: the
/// plaintext is decrypted where it lies and only one pack's entries exist at a time. (Loading
/// a segment of 100,000 blobs whole took the raw bytes, a decrypted copy and every entry at
/// once: most of a no-change run's peak memory.) `f` is called only once the segment is
/// authenticated (and its signature verified); if decoding fails midway, the packs handed over
/// so far are valid entries of an authentic segment. Returns who vouches for its packs.
/// `detail` says whether entries need their places (see [`Detail`]).
pub fn for_each_pack(
    keys: SegmentKeys,
    name: &str,
    mut data: Vec<u8>,
    detail: Detail,
    mut f: impl FnMut(Voucher, PackId, Vec<BlobEntry>),
) -> Result<Voucher> {
    let bad = |why: &str| Error::corrupt("index segment", name, why);
    let magic: &[u8; 8] = match data.get(..8) {
        Some(m) if m == MAGIC => MAGIC,
        Some(m) if m == MAGIC_V2 => MAGIC_V2,
        Some(m) if m == MAGIC_V1 => MAGIC_V1,
        _ => return Err(bad("bad magic")),
    };
    let plain = crate::crypto::open_catalog_in_place(keys.catalog, magic, &mut data, 8)
        .ok_or_else(|| bad("failed authentication"))?;
    let (voucher, body) = if magic == MAGIC_V1 {
        (Voucher::Unsigned, plain)
    } else {
        let (signed, signer) = signing::open(Purpose::IndexSegment, keys.repo_id, plain)
            .ok_or_else(|| bad("its signature does not verify"))?;
        let (by, body) = signed.split_first_chunk::<32>().ok_or_else(|| bad("too short"))?;
        let voucher = if *by == NOBODY {
            Voucher::Nobody
        } else if *by == UNSIGNED {
            if signer == *keys.owner {
                Voucher::Unsigned
            } else {
                Voucher::Nobody
            }
        } else if *by == signer || signer == *keys.owner {
            Voucher::Key(*by)
        } else {
            Voucher::Nobody // a writer cannot vouch for another
        };
        (voucher, body)
    };
    if magic != MAGIC {
        let mut de = postcard::Deserializer::from_bytes(body);
        serde::Deserializer::deserialize_seq(
            &mut de,
            PackVisitor(|p, e: Vec<BlobEntry>| f(voucher, p, e), std::marker::PhantomData),
        )
        .map_err(|e| Error::corrupt("index segment", name, e))?;
        return match de.finalize() {
            Ok([]) => Ok(voucher),
            Ok(_) => Err(bad("trailing bytes")),
            Err(e) => Err(Error::corrupt("index segment", name, e)),
        };
    }
    let (head, ids) =
        postcard::take_from_bytes::<Head>(body).map_err(|e| Error::corrupt("index segment", name, e))?;
    let plain;
    let mut places = match detail {
        Detail::Ids => None,
        Detail::Full => {
            let identity = keys.identity.ok_or_else(|| {
                Error::Pipeline(format!(
                    "index segment {name}: where its blobs are is sealed to the repository owner \
                     (a backup-only key cannot read it)"
                ))
            })?;
            let key = unwrap_key(identity, &head.wrapped).map_err(|e| bad(&e))?;
            plain = open_catalog(&Secret32::from_bytes(*key.as_bytes()), PLACES_MAGIC, &head.places)
                .ok_or_else(|| bad("its blob places fail authentication"))?;
            if usize::try_from(head.count).ok().and_then(|n| n.checked_mul(PLACE_BYTES)) != Some(plain.len())
            {
                return Err(bad("its places do not match its count"));
            }
            Some(plain.chunks_exact(PLACE_BYTES).filter_map(Place::read))
        }
    };
    let (mut seen, mut short) = (0u64, false);
    let mut de = postcard::Deserializer::from_bytes(ids);
    let visit = PackVisitor(
        |p, ids: Vec<BlobId>| {
            seen = seen.saturating_add(ids.len() as u64);
            let entries = match &mut places {
                // Not read through: `Detail::Ids` promises only the ids. A bundle's entry (all-zero
                // id; its members are listed on their own) is no blob to deduplicate against.
                None => ids
                    .into_iter()
                    .filter(|id| *id != stages::BUNDLE_ID)
                    .map(|id| {
                        Place { kind: BlobKind::Data as u8, offset: 0, len: 0, raw_len: 0, inner: None }
                            .entry(id)
                    })
                    .collect(),
                Some(places) => {
                    let entries: Vec<BlobEntry> =
                        ids.into_iter().map_while(|id| places.next().map(|pl| pl.entry(id))).collect();
                    short |= seen > head.count;
                    entries
                }
            };
            if !short && seen <= head.count {
                f(voucher, p, entries);
            }
        },
        std::marker::PhantomData,
    );
    serde::Deserializer::deserialize_seq(&mut de, visit)
        .map_err(|e| Error::corrupt("index segment", name, e))?;
    if seen != head.count {
        return Err(bad("it lists another number of blobs than it says"));
    }
    match de.finalize() {
        Ok([]) => Ok(voucher),
        Ok(_) => Err(bad("trailing bytes")),
        Err(e) => Err(Error::corrupt("index segment", name, e)),
    }
}

/// The writers whose packs a backup deduplicates against: the owner, registered writers not
/// revoked, and the writer itself.
#[derive(Clone, Debug, Default)]
pub struct Trusted(pub HashSet<PublicKey>);

impl Trusted {
    pub fn vouches(&self, v: &Voucher) -> bool {
        v.key().is_some_and(|k| self.0.contains(k))
    }

    /// Of two vouchers for one pack (segments can overlap), the one that counts: the owner's,
    /// then a trusted writer's, then any key's, then an unsigned segment's.
    pub fn better(&self, owner: &PublicKey, a: Voucher, b: Voucher) -> Voucher {
        let rank = |v: &Voucher| match v {
            Voucher::Key(k) if k == owner => 4,
            v if self.vouches(v) => 3,
            Voucher::Key(_) => 2,
            Voucher::Unsigned => 1,
            Voucher::Nobody => 0,
        };
        if rank(&b) > rank(&a) {
            b
        } else {
            a
        }
    }
}

/// Visits a segment's `[(pack id, [T])]` one pack at a time: whole entries, or (`BKINDEX3`)
/// blob ids.
struct PackVisitor<T, F>(F, std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>, F: FnMut(PackId, Vec<T>)> serde::de::Visitor<'de> for PackVisitor<T, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence of packs and their blobs")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some((p, blobs)) = seq.next_element::<(PackId, Vec<T>)>()? {
            (self.0)(p, blobs);
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
    /// The blob's kind, with `UNVOUCHED` set when no writer in good standing vouches for its
    /// pack.
    kind: u8,
}

/// Set in `Slot::kind` for a copy that no writer in good standing vouches for.
const UNVOUCHED: u8 = 0x40;
/// Set in `Slot::kind` for a copy in a pack prune has condemned: read only after every other.
/// The higher bit, so that the copies sort live first, then vouched-for first.
const LATE: u8 = 0x80;

/// Bundles are far smaller than 4 GiB: no member starts at this offset.
const NOT_INNER: u32 = u32::MAX;

impl Slot {
    fn loc(&self) -> Option<Loc> {
        let kind = BlobKind::from_u8(self.kind & !(UNVOUCHED | LATE))?;
        let inner = (self.inner != NOT_INNER).then_some(self.inner);
        Some(Loc { pack: self.pack, offset: self.offset, len: self.len, raw_len: self.raw_len, kind, inner })
    }
}

/// The index while it is being read: packs and their entries in the order they count (of a
/// blob's copies, a vouched-for one wins over others, then the one in the pack added first).
/// `build` makes the lookup table.
#[derive(Default)]
pub struct IndexBuilder {
    packs: Vec<PackId>,
    pack_pos: HashMap<PackId, u32>,
    slots: Vec<Slot>,
}

impl IndexBuilder {
    pub fn add_pack(&mut self, pack: PackId, entries: &[BlobEntry]) {
        self.add_pack_vouched(pack, entries, true);
    }

    /// Adds a pack whose copies count after vouched-for ones unless `vouched`.
    pub fn add_pack_vouched(&mut self, pack: PackId, entries: &[BlobEntry], vouched: bool) {
        self.add_pack_with(pack, entries, vouched, false);
    }

    /// `add_pack_vouched`, for a pack prune has condemned when `late`: its copies count after
    /// every other, and never for a writer.
    pub fn add_pack_with(&mut self, pack: PackId, entries: &[BlobEntry], vouched: bool, late: bool) {
        let flag = if vouched { 0 } else { UNVOUCHED } | if late { LATE } else { 0 };
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
            self.slots.push(Slot { id: e.id, pack: p, offset, len, raw_len, inner, kind: kind as u8 | flag });
        }
    }

    /// Sorts the blobs by id, keeping of each a vouched-for copy if there is one, and of those
    /// the copy in the pack added first (then the one first in that pack), and indexes them by their ids' leading bits: ids are keyed hashes, evenly
    /// spread, so each bucket holds a few blobs side by side in memory.
    pub fn build(self) -> Index {
        let IndexBuilder { packs, pack_pos, mut slots } = self;
        // Unstable (no scratch memory); ties are broken by whether the copy is vouched for, then
        // by pack index, which is the order in which the packs were added, then by position. The ids' leading eight bytes
        // are compared as one integer first: they differ almost always, and comparing whole ids
        // called memcmp for every comparison (a third of the sort's time).
        slots.sort_unstable_by(|a, b| {
            (lead(&a.id).cmp(&lead(&b.id)))
                .then_with(|| a.id.cmp(&b.id))
                .then((a.kind & (LATE | UNVOUCHED)).cmp(&(b.kind & (LATE | UNVOUCHED))))
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

    /// Whether a writer may reference the blob: a copy vouched for by a writer in good standing
    /// and not condemned. (In an index loaded for a writer every copy is.)
    pub fn contains_vouched(&self, id: &BlobId) -> bool {
        self.slot(id).is_some_and(|s| s.kind & (UNVOUCHED | LATE) == 0)
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
    /// such data again. Packs that no writer in `trusted` vouches for (a revoked writer's, a
    /// stranger's, unsigned segments', those found only by their trailers) are read after
    /// vouched-for copies, and a writer treats their blobs as absent too.
    pub fn load_with(
        backend: &dyn Backend,
        keys: SegmentKeys,
        trusted: &Trusted,
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
        // Packs in no segment whose trailer this key cannot read (a backup-only key's).
        let mut sealed = 0usize;
        // Packs listed by a segment of before 2026-12 and by no vouched-for one.
        let mut unsigned = HashSet::new();
        let mut vouched = HashSet::new();
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
            let detail = if usage == Use::Read { Detail::Full } else { Detail::Ids };
            let added = for_each_pack(keys, &name, data, detail, |voucher, p, entries| {
                covered.insert(p);
                let ok = trusted.vouches(&voucher);
                if ok {
                    vouched.insert(p);
                } else if voucher == Voucher::Unsigned {
                    unsigned.insert(p);
                }
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
                    late.push((p, entries, ok));
                } else if ok || usage == Use::Read {
                    idx.add_pack_vouched(p, &entries, ok);
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
            let trailer_keys = pack::TrailerKeys { catalog: keys.catalog, identity: keys.identity };
            match pack::read_trailer(backend, trailer_keys, &key) {
                Ok(entries) if condemned.contains(&id) => late.push((id, entries, false)),
                Ok(entries) => {
                    if usage == Use::Read {
                        idx.add_pack_vouched(id, &entries, false);
                    }
                    recovered.push((id, entries));
                }
                // A backup-only key's: not damage, said once below.
                Err(Error::SealedToOwner(_)) => sealed += 1,
                Err(e) => warnings.push(format!("{e}; its blobs are unavailable")),
            }
        }
        if sealed > 0 {
            warnings.push(format!(
                "{sealed} packs that no index segment lists are sealed to the owner, so this key cannot \
                 list them (the owner's next backup or `bakare prune` does); backups do not deduplicate \
                 against them"
            ));
        }
        if usage == Use::Read {
            for (p, entries, ok) in late {
                idx.add_pack_with(p, &entries, ok, true);
            }
        }
        unsigned.retain(|p| !vouched.contains(p) && present.contains(p));
        if usage == Use::Dedup && !unsigned.is_empty() {
            warnings.push(match signed_mark(backend, keys.owner, keys.repo_id)? {
                Mark::Absent => format!(
                    "{} packs are listed only by unsigned index segments (written before 2026-12): \
                     backups do not deduplicate against them until the owner runs `bakare migrate`",
                    unsigned.len()
                ),
                Mark::Signed(_) | Mark::Forged => format!(
                    "{} packs are listed only by unsigned index segments written after the owner signed \
                     the index (planted?): backups never deduplicate against them",
                    unsigned.len()
                ),
            });
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
        if self.index.contains_vouched(id) {
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

    /// The owner's identity of these tests' repository.
    fn identity() -> &'static age::x25519::Identity {
        static ID: std::sync::OnceLock<age::x25519::Identity> = std::sync::OnceLock::new();
        ID.get_or_init(age::x25519::Identity::generate)
    }

    fn sealer(catalog: &Secret32, signer: &SigningKey) -> SegmentSealer {
        SegmentSealer {
            catalog: catalog.clone(),
            signer: signer.clone(),
            repo_id: [4; 16],
            recipient: identity().to_public(),
        }
    }

    #[test]
    fn segment_round_trip() {
        let k = Secret32::random();
        let owner = SigningKey::generate();
        let keys = SegmentKeys {
            catalog: &k,
            identity: Some(identity()),
            repo_id: &[4; 16],
            owner: &owner.public(),
        };
        let e = BlobEntry { id: [9; 32], kind: 0, offset: 100, len: 50, raw_len: 40, inner: None };
        let body = vec![([1u8; 32], vec![e])];
        let (name, bytes) = sealer(&k, &owner).own(&body).unwrap();
        assert!(name.starts_with("index/"));
        assert_eq!(
            decode_segment(keys, &name, bytes.clone()).unwrap(),
            (Voucher::Key(owner.public()), body.clone())
        );
        let mut t = bytes.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(decode_segment(keys, &name, t).is_err());
        // another repository's id does not verify
        let other = SegmentKeys { repo_id: &[5; 16], ..keys };
        assert!(decode_segment(other, &name, bytes).is_err());
        let mut idx = IndexBuilder::default();
        idx.add_pack([1; 32], &body[0].1);
        let d = SessionDedup::new(Arc::new(idx.build()));
        assert!(!d.claim(&[9; 32], BlobKind::Data));
        assert!(d.claim(&[8; 32], BlobKind::Data));
        assert!(!d.claim(&[8; 32], BlobKind::Data));
    }

    /// A backup-only key (the catalog key, no identity) reads which ids each pack holds, and
    /// nothing of where they are or how large; the owner reads both. Segments of before (whole
    /// entries under the catalog key) are still read.
    #[test]
    fn places_are_sealed_to_the_owner() {
        let k = Secret32::random();
        let owner = SigningKey::generate();
        let owner_keys = SegmentKeys {
            catalog: &k,
            identity: Some(identity()),
            repo_id: &[4; 16],
            owner: &owner.public(),
        };
        let writer_keys = SegmentKeys { identity: None, ..owner_keys };
        let entry = |id: u8, offset| BlobEntry {
            id: [id; 32],
            kind: 1,
            offset,
            len: 777_777,
            raw_len: 999_999,
            inner: Some(3),
        };
        let body = vec![([1u8; 32], vec![entry(9, 100), entry(8, 200)]), ([2u8; 32], vec![entry(7, 300)])];
        let (name, bytes) = sealer(&k, &owner).own(&body).unwrap();
        let err = decode_segment(writer_keys, &name, bytes.clone()).unwrap_err().to_string();
        assert!(err.contains("sealed to the repository owner"), "{err}");
        let mut seen = Vec::new();
        for_each_pack(writer_keys, &name, bytes.clone(), Detail::Ids, |v, p, entries| {
            seen.push((v, p, entries))
        })
        .unwrap();
        let ids: Vec<(PackId, Vec<BlobId>)> =
            seen.iter().map(|(_, p, es)| (*p, es.iter().map(|e| e.id).collect())).collect();
        assert_eq!(ids, vec![([1; 32], vec![[9; 32], [8; 32]]), ([2; 32], vec![[7; 32]])]);
        assert!(seen
            .iter()
            .flat_map(|(_, _, es)| es)
            .all(|e| (e.offset, e.len, e.raw_len, e.inner) == (0, 0, 0, None)));
        // What the catalog key opens holds no length: 777,777 and 999,999 appear nowhere in it.
        let mut plain = bytes.clone();
        let opened = crate::crypto::open_catalog_in_place(&k, MAGIC, &mut plain, 8).unwrap().to_vec();
        for n in [777_777u32, 999_999] {
            let varint = postcard::to_allocvec(&n).unwrap();
            assert!(!opened.windows(varint.len()).any(|w| w == varint.as_slice()), "{n} readable");
            assert!(!opened.windows(4).any(|w| w == n.to_le_bytes()), "{n} readable");
        }
        // The sealed places' length gives the number of blobs, not their sizes: those of tiny
        // blobs and of huge ones are as long. (age's header varies at random: grease stanzas.)
        let sized = |n: u32| {
            vec![(
                [1u8; 32],
                (0..40u8)
                    .map(|i| BlobEntry {
                        id: [i; 32],
                        kind: 0,
                        offset: n,
                        len: n,
                        raw_len: n,
                        inner: Some(n),
                    })
                    .collect(),
            )]
        };
        let places_len = |bytes: Vec<u8>| {
            let mut bytes = bytes;
            let plain = crate::crypto::open_catalog_in_place(&k, MAGIC, &mut bytes, 8).unwrap();
            let (signed, _) = signing::open(Purpose::IndexSegment, &[4; 16], plain).unwrap();
            postcard::take_from_bytes::<Head>(&signed[32..]).unwrap().0.places.len()
        };
        let lens: Vec<usize> = [1, 200, 70_000, 40 << 20]
            .iter()
            .map(|&n| places_len(sealer(&k, &owner).own(&sized(n)).unwrap().1))
            .collect();
        assert!(lens.iter().all(|&l| l == 40 * PLACE_BYTES + 40), "{lens:?}");
        // Another identity opens nothing.
        let stranger = age::x25519::Identity::generate();
        assert!(
            decode_segment(SegmentKeys { identity: Some(&stranger), ..owner_keys }, &name, bytes).is_err()
        );
        // A segment of before: whole entries, read by both.
        let mut plain = owner.public().to_vec();
        plain.extend(postcard::to_allocvec(&body).unwrap());
        let signed = signing::seal(&owner, Purpose::IndexSegment, &[4; 16], plain);
        let mut v2 = MAGIC_V2.to_vec();
        v2.extend_from_slice(&seal_catalog(&k, MAGIC_V2, &signed));
        for keys in [owner_keys, writer_keys] {
            assert_eq!(
                decode_segment(keys, "v2", v2.clone()).unwrap(),
                (Voucher::Key(owner.public()), body.clone())
            );
        }
    }

    /// A signed segment whose count, places and ids disagree is refused, not half read.
    #[test]
    fn a_segment_whose_places_and_ids_disagree_is_refused() {
        let k = Secret32::random();
        let owner = SigningKey::generate();
        let keys = SegmentKeys {
            catalog: &k,
            identity: Some(identity()),
            repo_id: &[4; 16],
            owner: &owner.public(),
        };
        let e = BlobEntry { id: [9; 32], kind: 0, offset: 1, len: 2, raw_len: 3, inner: None };
        let forge = |count: u64, places: Vec<BlobEntry>, ids: SegmentBody| {
            let key = stages::encrypt::DataKey::random();
            let wrapped = wrap_key(&identity().to_public(), &key).unwrap();
            let sealed = seal_catalog(
                &Secret32::from_bytes(*key.as_bytes()),
                PLACES_MAGIC,
                &encode_places(places.iter()),
            );
            let plain =
                postcard::to_extend(&Head { count, wrapped, places: sealed }, owner.public().to_vec())
                    .unwrap();
            let plain = postcard::to_extend(&Ids(&ids), plain).unwrap();
            let signed = signing::seal(&owner, Purpose::IndexSegment, &[4; 16], plain);
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&seal_catalog(&k, MAGIC, &signed));
            out
        };
        let one = vec![([1u8; 32], vec![e])];
        let two = vec![([1u8; 32], vec![e, e])];
        assert!(decode_segment(keys, "ok", forge(1, vec![e], one.clone())).is_ok());
        for (what, seg) in [
            ("count above places", forge(2, vec![e], one.clone())),
            ("more ids than places", forge(1, vec![e], two.clone())),
            ("more places than ids", forge(2, vec![e, e], one.clone())),
        ] {
            assert!(decode_segment(keys, what, seg.clone()).is_err(), "{what}");
            if what != "count above places" {
                let ids_only = for_each_pack(
                    SegmentKeys { identity: None, ..keys },
                    what,
                    seg,
                    Detail::Ids,
                    |_, _, _| {},
                );
                assert!(ids_only.is_err(), "{what}: the ids disagree with the count");
            }
        }
    }

    /// A writer vouches for its own packs only; the owner may relay a writer's word (prune
    /// and repair rewrite segments); unsigned segments of before are nobody's word.
    #[test]
    fn only_the_owner_vouches_for_another_writer() {
        let k = Secret32::random();
        let (owner, laptop) = (SigningKey::generate(), SigningKey::generate());
        let keys = SegmentKeys {
            catalog: &k,
            identity: Some(identity()),
            repo_id: &[4; 16],
            owner: &owner.public(),
        };
        let body: SegmentBody = vec![([1; 32], vec![])];
        let voucher = |sealer: SegmentSealer, v: Voucher| {
            let (name, bytes) = sealer.seal(&v, &body).unwrap();
            decode_segment(keys, &name, bytes).unwrap().0
        };
        let lk = Voucher::Key(laptop.public());
        assert_eq!(voucher(sealer(&k, &laptop), lk), lk);
        assert_eq!(voucher(sealer(&k, &laptop), Voucher::Key(owner.public())), Voucher::Nobody);
        assert_eq!(voucher(sealer(&k, &owner), lk), lk);
        assert_eq!(voucher(sealer(&k, &owner), Voucher::Nobody), Voucher::Nobody);
        // the owner relays unsigned packs as unsigned (for migrate); a writer cannot
        assert_eq!(voucher(sealer(&k, &owner), Voucher::Unsigned), Voucher::Unsigned);
        assert_eq!(voucher(sealer(&k, &laptop), Voucher::Unsigned), Voucher::Nobody);
        let mut old = MAGIC_V1.to_vec();
        old.extend_from_slice(&seal_catalog(&k, MAGIC_V1, &postcard::to_allocvec(&body).unwrap()));
        assert_eq!(decode_segment(keys, "old", old).unwrap(), (Voucher::Unsigned, body.clone()));
        // a v2 or v3 segment must be signed
        let mut unsigned = MAGIC_V2.to_vec();
        let mut plain = NOBODY.to_vec();
        plain.extend(postcard::to_allocvec(&body).unwrap());
        unsigned.extend_from_slice(&seal_catalog(&k, MAGIC_V2, &plain));
        assert!(decode_segment(keys, "forged", unsigned).is_err());
        let mut unsigned = MAGIC.to_vec();
        unsigned.extend_from_slice(&seal_catalog(&k, MAGIC, &plain));
        assert!(decode_segment(keys, "forged", unsigned).is_err());
    }

    /// Of a blob's copies, a vouched-for one wins whatever the order; a writer's index leaves
    /// the others out.
    #[test]
    fn vouched_copies_win() {
        let e = |offset| BlobEntry { id: [9; 32], kind: 0, offset, len: 5, raw_len: 5, inner: None };
        let mut b = IndexBuilder::default();
        b.add_pack_vouched([1; 32], &[e(1)], false);
        b.add_pack_vouched([2; 32], &[e(2)], true);
        let idx = b.build();
        assert_eq!(idx.get(&[9; 32]).map(|l| (l.offset, l.kind)), Some((2, BlobKind::Data)));
        assert_eq!(idx.blob_count(), 1);
        assert!(idx.contains_vouched(&[9; 32]));
        // A condemned copy comes after any live one, vouched or not, and a writer never
        // references it; an unvouched copy alone is not for writers either.
        let mut b = IndexBuilder::default();
        b.add_pack_with([1; 32], &[e(1)], true, true);
        b.add_pack_vouched([2; 32], &[e(2)], false);
        let idx = b.build();
        assert_eq!(idx.get(&[9; 32]).map(|l| l.offset), Some(2));
        assert!(idx.contains(&[9; 32]) && !idx.contains_vouched(&[9; 32]));
        let mut b = IndexBuilder::default();
        b.add_pack_with([1; 32], &[e(1)], true, true);
        assert!(!b.build().contains_vouched(&[9; 32]));
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
            let keys = SegmentKeys { catalog: &k, identity: None, repo_id: &[0; 16], owner: &[1; 32] };
            let _ = decode_segment(keys, "x", g);
        }
    }
}
