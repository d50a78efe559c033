//! Pack files: many sealed blobs and a sealed trailer that lists them, so a pack describes
//! itself and the index can always be rebuilt from packs.
//! ```text
//! "BKPACK01" | wrapped_len u32 LE | age(data key) for the recipient
//! sealed blob | sealed blob | ...                 (nonce | AES-256-GCM ciphertext | tag)
//! trailer: XChaCha20-Poly1305 of postcard(Vec<BlobEntry>), padded, AAD "BKPKTRL2", under
//!          pack_trailer_key(data key)
//! trailer_len u32 LE | "BKPKEND2"
//! parity (when the repository's config asks for it; `format::parity`)
//! ```
//! Only the owner unwraps the data key, so only the owner reads where a pack's blobs are and
//! how large. Packs of before 2026-12 end in "BKPKEND1" and their trailer is sealed with the
//! catalog key under AAD "BKPKTRL1" (a backup-only key reads those); both are read.
//! The pack's name is the BLAKE3 of all its bytes (`packs/<2 hex>/<64 hex>`), so bit rot is
//! detectable without any key. Parity, when present, follows the footer and is part of those
//! bytes; everything that reads a pack's end finds the footer at the end of its data
//! (`locate_parity`, `data_len`).
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use io::{Backend, Staged};
use serde::{Deserialize, Serialize};
use stages::encrypt::DataKey;
use stages::write::{BlobSink, SinkError};
use stages::{BlobId, BlobKind, Sealed};

use crate::crypto::{open_catalog, pack_trailer_key, seal_catalog_padded, unwrap_key, wrap_key, Secret32};
use crate::error::{Error, Result};
use crate::format::parity::{self, Parity};

pub const MAGIC: &[u8; 8] = b"BKPACK01";
/// The footer of packs of before 2026-12: the trailer is sealed with the catalog key.
pub const END: &[u8; 8] = b"BKPKEND1";
pub const TRAILER_MAGIC: &[u8] = b"BKPKTRL1";
/// The footer of packs whose trailer is sealed with a key derived from their data key.
pub const END2: &[u8; 8] = b"BKPKEND2";
pub const TRAILER_MAGIC2: &[u8] = b"BKPKTRL2";
pub const MAX_WRAPPED: u32 = 4096;
/// A trailer's plaintext is padded to at least this (~70 entries) and then as Padmé pads
/// (`crypto::padded_len`): its length does not give the pack's number of blobs.
const TRAILER_MIN: usize = 4096;

pub type PackId = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    pub id: BlobId,
    pub kind: u8,
    /// Where the sealed blob (or the sealed bundle holding it) starts in the pack, and its size.
    pub offset: u32,
    pub len: u32,
    pub raw_len: u32,
    /// For a blob inside a bundle: its offset in the bundle's plaintext (length `raw_len`).
    pub inner: Option<u32>,
}

impl BlobEntry {
    pub fn kind(&self) -> Option<BlobKind> {
        BlobKind::from_u8(self.kind)
    }
}

/// A pack's trailer (to end in `END2`): its entries, sealed with the key derived from the pack's
/// data key and padded (`TRAILER_MIN`).
pub fn seal_trailer(data_key: &DataKey, entries: &[BlobEntry]) -> Result<Vec<u8>> {
    seal_trailer_with(&pack_trailer_key(data_key), entries)
}

fn seal_trailer_with(trailer_key: &Secret32, entries: &[BlobEntry]) -> Result<Vec<u8>> {
    seal_catalog_padded(trailer_key, TRAILER_MAGIC2, &[], entries, TRAILER_MIN).map_err(Error::Pipeline)
}

/// What trailers are opened with: the catalog key for packs of before 2026-12, the owner's
/// identity (None with a backup-only key) for newer ones, whose data key it unwraps.
#[derive(Clone, Copy)]
pub struct TrailerKeys<'a> {
    pub catalog: &'a Secret32,
    pub identity: Option<&'a age::x25519::Identity>,
}

pub fn pack_key(id: &PackId) -> String {
    let h = hex::encode(id);
    format!("packs/{}/{}", &h[..2], h)
}

/// Parses `packs/xx/<64 hex>` back into an id.
pub fn parse_pack_key(key: &str) -> Option<PackId> {
    let name = key.rsplit('/').next()?;
    let v = hex::decode(name).ok()?;
    v.try_into().ok()
}

struct PackWriter {
    staged: Box<dyn Staged>,
    hasher: blake3::Hasher,
    written: u64,
    blob_bytes: u64,
    entries: Vec<BlobEntry>,
    /// Derived from the pack's data key: what its trailer is sealed with.
    trailer_key: Secret32,
    /// The parity of what was written so far (None at parity 0).
    parity: Option<parity::Encoder>,
}

impl PackWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.write_raw(data)?;
        if let Some(p) = &mut self.parity {
            p.update(data)?;
        }
        Ok(())
    }

    /// Writes bytes the parity does not cover (the parity itself).
    fn write_raw(&mut self, data: &[u8]) -> Result<()> {
        self.staged.write_all(data).map_err(|e| Error::Pipeline(format!("writing pack: {e}")))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }
}

/// The write stage's sink: one open pack per data key epoch, sealed when it reaches the pack
/// size or `MAX_PACK_ENTRIES` (the encrypt stage starts a new epoch at the same point, so
/// nothing more arrives for it).
pub struct PackSink {
    backend: Arc<dyn Backend>,
    recipient: age::x25519::Recipient,
    /// Signs the session's index segments.
    sealer: crate::index::SegmentSealer,
    pack_size: u64,
    /// Percent of parity appended to each pack (`Config::parity`).
    parity: u8,
    open: HashMap<u64, PackWriter>,
    /// Packs committed by this sink, with their blobs: the session's index segment.
    pub packs: Vec<(PackId, Vec<BlobEntry>)>,
    pub stored_bytes: u64,
    pub new_raw_bytes: u64,
    pub new_blobs: u64,
    /// Segments this sink wrote during the session (the rest are in `packs`).
    pub flushed_segments: u64,
    /// When the oldest pack in `packs` was sealed.
    oldest: Option<std::time::Instant>,
    segment_age: std::time::Duration,
}

/// Index entries at which a pack is sealed (as at the pack size; the blob that reaches it, a
/// bundle of up to a few thousand members, goes in whole). Its entries stay in memory, outside
/// the byte budget, until it is sealed, and sealing encodes them twice more (its trailer, then
/// the session's segment): a 32 MiB pack of compressible tiny files held ~100,000 of them, and
/// with a pack open per writer a first backup of 200,000 such files peaked at 43 MiB of entries
/// and their encodings (heaptrack), 99 MiB of RSS against a 48 MiB budget (tests/memory.rs).
/// Now an open pack's entries take at most ~1.8 MiB (56 bytes each, in a vector that doubles).
/// Readers take packs of any count (older packs, repacked ones).
pub const MAX_PACK_ENTRIES: usize = 16_384;

/// Index entries a sink keeps before writing them as a segment. Before `MAX_PACK_ENTRIES`, a
/// pack of tiny files held ~37,000 entries or more: with 65,536 the first pack's entries waited
/// for the second's, and a first backup of 300,000 files peaked at 49-50 MiB instead of 44-45.
const FLUSH_ENTRIES: usize = 16_384;

/// The longest a sealed pack waits for a segment to list it. Packs that no segment lists are
/// vouched for by nobody, so no backup deduplicates against them: an interrupted run's next
/// run stores again what it wrote in its last minute, no more. (Files of large chunks fill a
/// pack with a few dozen entries: by entries alone, a run could write 16,384 of them, ~16 GiB,
/// before its first segment.) restic writes its index every few minutes likewise.
pub const SEGMENT_AGE: std::time::Duration = std::time::Duration::from_secs(60);

impl PackSink {
    pub fn new(
        backend: Arc<dyn Backend>,
        recipient: age::x25519::Recipient,
        sealer: crate::index::SegmentSealer,
        pack_size: u64,
        parity: u8,
    ) -> Self {
        PackSink {
            backend,
            recipient,
            sealer,
            pack_size,
            parity,
            open: HashMap::new(),
            packs: Vec::new(),
            stored_bytes: 0,
            new_raw_bytes: 0,
            new_blobs: 0,
            flushed_segments: 0,
            oldest: None,
            segment_age: crate::hooks::segment_age(),
        }
    }

    /// Writes the index segment for the packs sealed so far and forgets their entries, so a
    /// session's index entries never pile up in memory (a million small files would hold
    /// ~60 MiB of entries, and encoding them at the end as much again). Rule 1 holds: the
    /// packs are committed before their segment.
    fn flush_segment(&mut self) -> Result<()> {
        if self.packs.is_empty() {
            return Ok(());
        }
        let (name, bytes) = self.sealer.own(&self.packs)?;
        self.backend.put(&name, &bytes)?;
        self.packs.clear();
        self.oldest = None;
        self.flushed_segments += 1;
        Ok(())
    }

    fn seal(&mut self, mut w: PackWriter) -> Result<()> {
        let trailer = seal_trailer_with(&w.trailer_key, &w.entries)?;
        w.write(&trailer)?;
        w.write(&(trailer.len() as u32).to_le_bytes())?;
        w.write(END2)?;
        if let Some(p) = w.parity.take() {
            w.write_raw(&p.finish()?)?;
        }
        let id: PackId = *w.hasher.finalize().as_bytes();
        w.staged.commit(&pack_key(&id))?;
        self.stored_bytes += w.written;
        self.packs.push((id, w.entries));
        let oldest = *self.oldest.get_or_insert_with(std::time::Instant::now);
        if self.packs.iter().map(|(_, e)| e.len()).sum::<usize>() >= FLUSH_ENTRIES
            || oldest.elapsed() >= self.segment_age
        {
            self.flush_segment()?;
        }
        Ok(())
    }

    fn add_blob(&mut self, blob: Sealed) -> Result<()> {
        // Sealed packs wait at most the segment age for a segment, even while the next pack
        // fills slowly.
        if self.oldest.is_some_and(|t| t.elapsed() >= self.segment_age) {
            self.flush_segment()?;
        }
        let epoch = blob.epoch.id;
        if !self.open.contains_key(&epoch) {
            let wrapped = wrap_key(&self.recipient, &blob.epoch.key).map_err(Error::Pipeline)?;
            let mut w = PackWriter {
                staged: self.backend.stage()?,
                hasher: blake3::Hasher::new(),
                written: 0,
                blob_bytes: 0,
                entries: Vec::new(),
                trailer_key: pack_trailer_key(&blob.epoch.key),
                parity: parity::Encoder::with_hint(self.parity, self.pack_size),
            };
            w.write(MAGIC)?;
            w.write(&(wrapped.len() as u32).to_le_bytes())?;
            w.write(&wrapped)?;
            self.open.insert(epoch, w);
        }
        let Some(w) = self.open.get_mut(&epoch) else {
            return Err(Error::Pipeline("pack vanished".into()));
        };
        let offset = u32::try_from(w.written).map_err(|_| Error::Pipeline("pack over 4 GiB".into()))?;
        w.write(&blob.bytes)?;
        w.blob_bytes += blob.bytes.len() as u64;
        let len = blob.bytes.len() as u32;
        if blob.kind == BlobKind::Bundle {
            for m in &blob.members {
                let kind = BlobKind::Data as u8;
                w.entries.push(BlobEntry {
                    id: m.id,
                    kind,
                    offset,
                    len,
                    raw_len: m.len,
                    inner: Some(m.offset),
                });
                self.new_raw_bytes += u64::from(m.len);
                self.new_blobs += 1;
            }
        } else {
            let kind = blob.kind as u8;
            w.entries.push(BlobEntry { id: blob.id, kind, offset, len, raw_len: blob.raw_len, inner: None });
            if blob.kind == BlobKind::Data {
                self.new_raw_bytes += u64::from(blob.raw_len);
            }
            self.new_blobs += 1;
        }
        if w.blob_bytes >= self.pack_size || w.entries.len() >= MAX_PACK_ENTRIES {
            if let Some(w) = self.open.remove(&epoch) {
                self.seal(w)?;
            }
        }
        Ok(())
    }
}

impl BlobSink for PackSink {
    fn add(&mut self, blob: Sealed) -> std::result::Result<(), SinkError> {
        Ok(self.add_blob(blob)?)
    }

    fn finish(&mut self) -> std::result::Result<(), SinkError> {
        let mut open: Vec<(u64, PackWriter)> = self.open.drain().collect();
        open.sort_by_key(|(e, _)| *e);
        for (_, w) in open {
            self.seal(w)?;
        }
        Ok(())
    }
}

/// The wrapped data key from a pack's header.
pub fn read_wrapped_key(backend: &dyn Backend, key: &str) -> Result<Vec<u8>> {
    let head = backend.get_range(key, 0, 12)?;
    if &head[..8] != MAGIC {
        return Err(Error::corrupt("pack", key, "bad header magic"));
    }
    let n = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if n == 0 || n > MAX_WRAPPED {
        return Err(Error::corrupt("pack", key, "bad wrapped key length"));
    }
    Ok(backend.get_range(key, 12, n as usize)?)
}

/// Decodes a trailer (the sealed bytes between the blobs and the footer) sealed with `key`
/// under the AAD `magic` (`TRAILER_MAGIC` or `TRAILER_MAGIC2`, by the footer).
pub fn decode_trailer(key: &Secret32, magic: &[u8], name: &str, sealed: &[u8]) -> Result<Vec<BlobEntry>> {
    let body = open_catalog(key, magic, sealed)
        .ok_or_else(|| Error::corrupt("pack", name, "trailer failed authentication"))?;
    postcard::from_bytes(&body).map_err(|e| Error::corrupt("pack", name, e))
}

/// The key and AAD a trailer is opened with, by its footer `end`: the catalog key (`END`), or
/// the key derived from the data key the owner unwraps from `wrapped`, the pack's header
/// (`END2`; read only then).
fn trailer_opener(
    keys: TrailerKeys,
    name: &str,
    end: &[u8],
    wrapped: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<(Secret32, &'static [u8])> {
    if end == END {
        return Ok((keys.catalog.clone(), TRAILER_MAGIC));
    }
    if end != END2 {
        return Err(Error::corrupt("pack", name, "bad footer (truncated?)"));
    }
    let Some(identity) = keys.identity else {
        return Err(Error::SealedToOwner(name.to_string()));
    };
    let data_key = unwrap_key(identity, &wrapped()?).map_err(|e| Error::corrupt("pack", name, e))?;
    Ok((pack_trailer_key(&data_key), TRAILER_MAGIC2))
}

/// The wrapped data key in a whole pack's bytes.
pub fn header_key(data: &[u8]) -> Option<&[u8]> {
    if data.get(..8)? != MAGIC {
        return None;
    }
    let n = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    if n == 0 || n > MAX_WRAPPED {
        return None;
    }
    data.get(12..12 + n as usize)
}

/// Whether `end`, the last bytes of a pack, is a footer: the pack has no parity after it.
pub fn ends_plain(end: &[u8]) -> bool {
    end.len() >= 8 && matches!(&end[end.len() - 8..], e if e == END || e == END2)
}

/// A pack's parity (`format::parity`), None when it has none, found from its size and its last
/// `parity::TAIL` bytes. Both parity footers damaged, it finds the layout from the size.
pub fn locate_parity(backend: &dyn Backend, key: &str, size: u64) -> Result<Option<Parity>> {
    let n = size.min(parity::TAIL as u64);
    let tail = backend.get_range(key, size - n, n as usize)?;
    let mut read = |at: u64, len: usize| Ok(backend.get_range(key, at, len)?);
    Parity::locate(size, &tail, ends_plain(&tail), &mut read).map_err(|e| Error::corrupt("pack", key, e))
}

/// How much of a pack of `size` bytes is its data (header, blobs, trailer, footer): all of it,
/// or what comes before its parity.
pub fn data_len(parity: Option<&Parity>, size: u64) -> u64 {
    parity.map_or(size, |p| p.layout.data_len)
}

/// `len` bytes at `offset` of a pack's data, repaired from its parity, and the data shards
/// rebuilt (`Parity::repair_listed`). None when the pack has no parity, when nothing there was
/// damaged, or when the damage is beyond what the parity repairs: the reader's error stands.
pub fn repaired_range(
    backend: &dyn Backend,
    key: &str,
    offset: u64,
    len: usize,
) -> Option<(Vec<u8>, Vec<u64>)> {
    let size = backend.size(key).ok()?;
    let parity = locate_parity(backend, key, size).ok()??;
    let len = len.min(usize::try_from(parity.layout.data_len.checked_sub(offset)?).ok()?);
    let mut buf = vec![0u8; len];
    let mut read = |at: u64, len: usize| Ok(backend.get_range(key, at, len)?);
    let fixed = parity.repair_listed(offset, &mut buf, &mut read).ok()?;
    (!fixed.is_empty()).then_some((buf, fixed))
}

/// The parity of a pack given whole (`locate_parity`).
fn parity_in(name: &str, data: &[u8]) -> Result<Option<Parity>> {
    let size = data.len() as u64;
    let tail = &data[data.len().saturating_sub(parity::TAIL)..];
    let mut read = |at: u64, len: usize| {
        let end = at.checked_add(len as u64).filter(|e| *e <= size);
        end.map(|e| data[at as usize..e as usize].to_vec())
            .ok_or_else(|| Error::corrupt("pack", name, "parity read past the end"))
    };
    Parity::locate(size, tail, ends_plain(tail), &mut read).map_err(|e| Error::corrupt("pack", name, e))
}

/// The blob list of a pack given whole.
pub fn trailer_from_bytes(keys: TrailerKeys, name: &str, data: &[u8]) -> Result<Vec<BlobEntry>> {
    let parity = parity_in(name, data)?;
    let data = &data[..data_len(parity.as_ref(), data.len() as u64) as usize];
    trailer_of_data(keys, name, data)
}

/// The blob list of a pack's data (without parity).
fn trailer_of_data(keys: TrailerKeys, name: &str, data: &[u8]) -> Result<Vec<BlobEntry>> {
    let bad = |why: &str| Error::corrupt("pack", name, why);
    let size = data.len();
    if size < 24 {
        return Err(bad("bad footer (truncated?)"));
    }
    let (key, magic) = trailer_opener(keys, name, &data[size - 8..], || {
        header_key(data).map(<[u8]>::to_vec).ok_or_else(|| bad("bad header"))
    })?;
    let n = u32::from_le_bytes([data[size - 12], data[size - 11], data[size - 10], data[size - 9]]) as usize;
    if n.checked_add(24).is_none_or(|end| end > size) {
        return Err(bad("trailer length out of range"));
    }
    decode_trailer(&key, magic, name, &data[size - 12 - n..size - 12])
}

/// The most of a pack's end a damaged trailer is repaired from: a trailer of
/// `MAX_PACK_ENTRIES` entries, padded, stays under 2 MiB (packs with parity all have the cap).
const TRAILER_READ_MAX: u64 = 4 << 20;

/// Reads a pack's blob list from its trailer, found at the end of its data. When that fails
/// and the pack has parity, the end of its data (up to the start of its trailer) is repaired
/// from the parity and read again.
pub fn read_trailer(backend: &dyn Backend, keys: TrailerKeys, key: &str) -> Result<Vec<BlobEntry>> {
    let size = backend.size(key)?;
    let parity = locate_parity(backend, key, size)?;
    let data_len = data_len(parity.as_ref(), size);
    let first = read_trailer_at(backend, keys, key, data_len);
    let Some(parity) = parity else { return first };
    let Err(e) = first else { return first };
    if matches!(e, Error::SealedToOwner(_) | Error::Storage(_)) {
        return Err(e);
    }
    // The trailer's length may be what is damaged: repair the last MiB first, then the whole
    // region a trailer can span; the header too (the trailer's key is unwrapped from it).
    let mut read = |at: u64, len: usize| Ok(backend.get_range(key, at, len)?);
    let repair = |at: u64, len: u64, read: &mut parity::Read| {
        let mut buf = vec![0u8; len as usize];
        let fixed = parity.repair(at, &mut buf, read).map_err(|e| Error::corrupt("pack", key, e))?;
        Ok::<_, Error>((buf, fixed))
    };
    for span in [(parity::SHARD * parity::GROUP) as u64, TRAILER_READ_MAX] {
        let at = data_len.saturating_sub(span);
        // Beyond repair, or the tables lost: the first error stands.
        let Ok((tail, fixed_tail)) = repair(at, data_len - at, &mut read) else { break };
        let Ok((mut data, fixed_head)) = repair(0, at.min(12 + u64::from(MAX_WRAPPED)), &mut read) else {
            break;
        };
        if fixed_tail + fixed_head == 0 {
            break; // nothing there is damaged: the first error stands
        }
        data.extend_from_slice(&tail);
        match trailer_of_data(keys, key, &data) {
            Ok(entries) => return Ok(entries),
            Err(sealed @ Error::SealedToOwner(_)) => return Err(sealed),
            Err(_) => {}
        }
        if at == 0 {
            break;
        }
    }
    Err(e)
}

/// The trailer of a pack whose data is its first `data_len` bytes.
fn read_trailer_at(backend: &dyn Backend, keys: TrailerKeys, key: &str, size: u64) -> Result<Vec<BlobEntry>> {
    if size < 12 + 12 {
        return Err(Error::corrupt("pack", key, "too short"));
    }
    let foot = backend.get_range(key, size - 12, 12)?;
    let (trailer_key, magic) = trailer_opener(keys, key, &foot[4..], || read_wrapped_key(backend, key))?;
    let n = u64::from(u32::from_le_bytes([foot[0], foot[1], foot[2], foot[3]]));
    if n + 24 > size {
        return Err(Error::corrupt("pack", key, "trailer length out of range"));
    }
    let sealed = backend.get_range(key, size - 12 - n, n as usize)?;
    decode_trailer(&trailer_key, magic, key, &sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn trailer_garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let k = Secret32::random();
            let _ = decode_trailer(&k, TRAILER_MAGIC, "p", &g);
            let _ = decode_trailer(&k, TRAILER_MAGIC2, "p", &g);
        }
    }

    /// A sink writing packs of `pack_size` into `backend`, with the owner's identity and the
    /// catalog key.
    fn test_sink(backend: Arc<dyn Backend>, pack_size: u64) -> (PackSink, age::x25519::Identity, Secret32) {
        test_sink_with(backend, pack_size, 0)
    }

    fn test_sink_with(
        backend: Arc<dyn Backend>,
        pack_size: u64,
        parity: u8,
    ) -> (PackSink, age::x25519::Identity, Secret32) {
        let identity = age::x25519::Identity::generate();
        let catalog = Secret32::random();
        let sealer = crate::index::SegmentSealer {
            catalog: catalog.clone(),
            signer: crate::signing::SigningKey::from_seed(&[3; 32]),
            repo_id: [4; 16],
            recipient: identity.to_public(),
        };
        (PackSink::new(backend, identity.to_public(), sealer, pack_size, parity), identity, catalog)
    }

    /// `data` sealed as the `counter`-th data blob under `epoch`.
    fn sealed(epoch: &Arc<stages::encrypt::KeyEpoch>, counter: u64, data: &[u8]) -> Sealed {
        let id = stages::hash::blob_id(&[1; 32], data);
        let mut bytes = [&[0; stages::compress::NONCE_ROOM][..], data].concat();
        assert!(stages::encrypt::seal(epoch, counter, &id, BlobKind::Data, &mut bytes));
        Sealed {
            id,
            kind: BlobKind::Data,
            raw_len: data.len() as u32,
            epoch: epoch.clone(),
            bytes,
            members: Vec::new(),
            permits: Vec::new(),
        }
    }

    /// A pack of two blobs written by a sink, and its id, entries and the owner's identity.
    fn written_pack(backend: Arc<dyn Backend>) -> (PackId, Vec<BlobEntry>, age::x25519::Identity, Secret32) {
        let (mut sink, identity, catalog) = test_sink(backend, 1 << 20);
        let epoch = Arc::new(stages::encrypt::KeyEpoch::new());
        for (i, data) in [&b"first blob"[..], &b"second, longer blob"[..]].into_iter().enumerate() {
            sink.add(sealed(&epoch, i as u64, data)).unwrap();
        }
        sink.finish().unwrap();
        let (id, entries) = sink.packs.pop().unwrap();
        (id, entries, identity, catalog)
    }

    /// A pack is sealed at `MAX_PACK_ENTRIES` entries however small its blobs: its entries are
    /// held in memory until then. Blobs of the same key that come after go to a pack of their
    /// own, and every entry is listed once, in the pack that holds it.
    #[test]
    fn a_pack_is_sealed_at_its_entry_limit() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(io::LocalBackend::new(dir.path()));
        let (mut sink, identity, catalog) = test_sink(backend.clone(), 32 << 20);
        let epoch = Arc::new(stages::encrypt::KeyEpoch::new());
        let n = MAX_PACK_ENTRIES + 7;
        for i in 0..n {
            sink.add(sealed(&epoch, i as u64, &(i as u64).to_le_bytes())).unwrap();
        }
        sink.finish().unwrap();
        // The first pack filled a segment, written at once; the second is left for the end.
        assert_eq!(sink.flushed_segments, 1);
        assert_eq!(sink.packs.iter().map(|(_, e)| e.len()).collect::<Vec<_>>(), [7]);
        assert_eq!(sink.new_blobs, n as u64);
        let owner = TrailerKeys { catalog: &catalog, identity: Some(&identity) };
        let mut sizes = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for key in backend.list("packs").unwrap() {
            let entries = read_trailer(backend.as_ref(), owner, &key).unwrap();
            sizes.push(entries.len());
            ids.extend(entries.iter().map(|e| e.id));
        }
        sizes.sort_unstable();
        assert_eq!(sizes, [7, MAX_PACK_ENTRIES]);
        assert_eq!(ids.len(), n);
    }

    #[test]
    fn new_trailers_open_with_the_owners_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(io::LocalBackend::new(dir.path()));
        let (id, entries, identity, catalog) = written_pack(backend.clone());
        assert_eq!(entries.len(), 2);
        let key = pack_key(&id);
        let data = backend.get(&key).unwrap();
        assert_eq!(&data[data.len() - 8..], END2);
        let owner = TrailerKeys { catalog: &catalog, identity: Some(&identity) };
        assert_eq!(read_trailer(backend.as_ref(), owner, &key).unwrap(), entries);
        assert_eq!(trailer_from_bytes(owner, &key, &data).unwrap(), entries);
        // The catalog key alone (a backup-only key) is told the trailer is the owner's.
        let writer = TrailerKeys { catalog: &catalog, identity: None };
        assert!(
            matches!(read_trailer(backend.as_ref(), writer, &key), Err(Error::SealedToOwner(n)) if n == key)
        );
        assert!(matches!(trailer_from_bytes(writer, &key, &data), Err(Error::SealedToOwner(_))));
        // Another owner's identity cannot unwrap the data key: corrupt, not a panic.
        let other = age::x25519::Identity::generate();
        let stranger = TrailerKeys { catalog: &catalog, identity: Some(&other) };
        assert!(matches!(trailer_from_bytes(stranger, &key, &data), Err(Error::Corrupt { .. })));
    }

    /// A pack with parity: named by all its bytes, its footer at the end of its data, and a
    /// damaged trailer (length and all) or header read back through the parity.
    #[test]
    fn parity_follows_the_footer_and_repairs_the_trailer() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(io::LocalBackend::new(dir.path()));
        let (mut sink, identity, catalog) = test_sink_with(backend.clone(), 1 << 30, 5);
        let epoch = Arc::new(stages::encrypt::KeyEpoch::new());
        for i in 0..40u64 {
            let data: Vec<u8> = (0..60_000u64).map(|j| (j * 31 + i * 7) as u8).collect();
            sink.add(sealed(&epoch, i, &data)).unwrap();
        }
        sink.finish().unwrap();
        let (id, entries) = sink.packs.pop().unwrap();
        let key = pack_key(&id);
        let data = backend.get(&key).unwrap();
        assert_eq!(blake3::hash(&data).as_bytes(), &id);
        assert_ne!(&data[data.len() - 8..], END2);
        let p = locate_parity(backend.as_ref(), &key, data.len() as u64).unwrap().unwrap();
        let d = data_len(Some(&p), data.len() as u64) as usize;
        assert_eq!(&data[d - 8..d], END2);
        assert_eq!(parity::Layout::new(d as u64, 5).unwrap().total_len(), data.len() as u64);
        let owner = TrailerKeys { catalog: &catalog, identity: Some(&identity) };
        assert_eq!(read_trailer(backend.as_ref(), owner, &key).unwrap(), entries);
        assert_eq!(trailer_from_bytes(owner, &key, &data).unwrap(), entries);
        // The footer, the trailer's length, the trailer and the wrapped key damaged at once.
        let mut bad = data.clone();
        bad[d - 12..d].fill(0);
        bad[d - 900] ^= 1;
        bad[20] ^= 1;
        backend.put("packs/00/bad", &bad).unwrap();
        assert_eq!(read_trailer(backend.as_ref(), owner, "packs/00/bad").unwrap(), entries);
        // Beyond repair: the first error is what is said.
        bad[d - 14 * 4096..d].fill(0);
        backend.put("packs/00/worse", &bad).unwrap();
        assert!(read_trailer(backend.as_ref(), owner, "packs/00/worse").is_err());
    }

    #[test]
    fn a_flipped_byte_in_a_new_trailer_fails_authentication() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(io::LocalBackend::new(dir.path()));
        let (id, _, identity, catalog) = written_pack(backend.clone());
        let data = backend.get(&pack_key(&id)).unwrap();
        let owner = TrailerKeys { catalog: &catalog, identity: Some(&identity) };
        let n = u32::from_le_bytes(data[data.len() - 12..data.len() - 8].try_into().unwrap()) as usize;
        for at in [data.len() - 12 - n, data.len() - 12 - n / 2, data.len() - 13] {
            let mut bad = data.clone();
            bad[at] ^= 0x40;
            let e = trailer_from_bytes(owner, "p", &bad).unwrap_err();
            assert!(e.to_string().contains("trailer failed authentication"), "{e}");
        }
        // A new footer on an old trailer, or the other way round, is refused too.
        let mut swapped = data.clone();
        let end = swapped.len() - 8;
        swapped[end..].copy_from_slice(END);
        assert!(matches!(trailer_from_bytes(owner, "p", &swapped), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn old_trailers_still_open_with_the_catalog_key() {
        let dir = tempfile::tempdir().unwrap();
        let backend = io::LocalBackend::new(dir.path());
        let catalog = Secret32::random();
        let entries =
            vec![BlobEntry { id: [9; 32], kind: 0, offset: 100, len: 50, raw_len: 30, inner: None }];
        let mut pack = MAGIC.to_vec();
        pack.extend_from_slice(&4u32.to_le_bytes());
        pack.extend_from_slice(b"junk");
        let trailer = seal_catalog_padded(&catalog, TRAILER_MAGIC, &[], &entries, TRAILER_MIN).unwrap();
        pack.extend_from_slice(&trailer);
        pack.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        pack.extend_from_slice(END);
        backend.put("packs/00/old", &pack).unwrap();
        let writer = TrailerKeys { catalog: &catalog, identity: None };
        assert_eq!(read_trailer(&backend, writer, "packs/00/old").unwrap(), entries);
        assert_eq!(trailer_from_bytes(writer, "old", &pack).unwrap(), entries);
        let other = Secret32::random();
        let wrong = TrailerKeys { catalog: &other, identity: None };
        assert!(matches!(trailer_from_bytes(wrong, "old", &pack), Err(Error::Corrupt { .. })));
    }
}
