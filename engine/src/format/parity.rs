//! Reed-Solomon parity appended to a pack, so that damage up to a stated amount in each MiB
//! is repaired when the pack is read (issue #18; docs/format.md, "Parity").
//! ```text
//! data                                 (D bytes: the object as it is without parity)
//! recovery shards of group 0 | of group 1 | ...    (m_g shards of 4 KiB each)
//! table | table                        (two copies)
//! footer | footer                      (two copies, 32 bytes each)
//! ```
//! The data is cut into shards of 4 KiB (the last one padded with zeros for the code only,
//! not stored), and the shards into groups of 256 (1 MiB). A group of n shards gets
//! m = ceil(n × percent / 100) recovery shards of a Reed-Solomon code over GF(2^16)
//! (`reed-solomon-simd`, Leopard-RS), so any m of its n + m shards may be lost and the group
//! still decodes. At the default 5 %, that is any 13 damaged 4 KiB blocks per MiB: one burst of
//! up to 48 KiB anywhere in each MiB, or 13 scattered flipped bytes.
//!
//! The code repairs erasures, not errors, so a reader must know which shards are damaged: the
//! table holds the xxh3-64 of every data shard, then of every recovery shard, in order, and
//! ends with the xxh3-128 of those followed by D (u64 LE) and the percent (one byte), so a
//! table confirms the layout it was read with: two layouts of one size can put their tables at
//! the same place with the same length. The footer is `"BKPRTY01" | version 1 | percent |
//! 0u16 | D as u64 LE | 0u32 | xxh3-64 of the 24 bytes before`. The whole layout follows from
//! (D, percent), and the object's size grows strictly with D, so when both footers are damaged
//! a reader finds the layout from the size alone (one candidate per percent), confirmed by a
//! table's checksum.
//!
//! Parity is not authentication: whoever can write the object can write matching parity. What
//! a repair gives back is still checked by the blobs' AEAD and by the pack's name.
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BKPRTY01";
const VERSION: u8 = 1;
pub const SHARD: usize = 4096;
/// Data shards per group: 1 MiB.
pub const GROUP: usize = 256;
const GROUP_BYTES: usize = SHARD * GROUP;
const FOOTER: usize = 32;
/// Both footers: what a reader fetches from the end of an object first.
pub const TAIL: usize = 2 * FOOTER;
/// The default share of recovery shards (`init --parity`).
pub const DEFAULT_PERCENT: u8 = 5;
pub const MAX_PERCENT: u8 = 100;
/// Objects with more data than this are refused as damaged (pack offsets are 32-bit: 4 GiB).
const MAX_DATA: u64 = 1 << 33;

/// Where everything is in an object with parity, from its data length and percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub data_len: u64,
    pub percent: u8,
}

/// Recovery shards for a group of `n` data shards.
fn recovery_for(n: usize, percent: u8) -> usize {
    (n * usize::from(percent)).div_ceil(100).max(1)
}

impl Layout {
    /// None for a percent out of 1..=100 or a length past `MAX_DATA`.
    pub fn new(data_len: u64, percent: u8) -> Option<Layout> {
        ((1..=MAX_PERCENT).contains(&percent) && data_len <= MAX_DATA).then_some(Layout { data_len, percent })
    }

    fn shards(&self) -> u64 {
        self.data_len.div_ceil(SHARD as u64)
    }

    fn groups(&self) -> u64 {
        self.shards().div_ceil(GROUP as u64)
    }

    /// Data shards in group `g`.
    fn group_data(&self, g: u64) -> usize {
        (self.shards() - g * GROUP as u64).min(GROUP as u64) as usize
    }

    fn group_recovery(&self, g: u64) -> usize {
        recovery_for(self.group_data(g), self.percent)
    }

    /// Recovery shards of the groups before `g` (all full).
    fn recovery_before(&self, g: u64) -> u64 {
        g * recovery_for(GROUP, self.percent) as u64
    }

    fn recovery_total(&self) -> u64 {
        match self.groups() {
            0 => 0,
            n => self.recovery_before(n - 1) + self.group_recovery(n - 1) as u64,
        }
    }

    fn recovery_at(&self, g: u64) -> u64 {
        self.data_len + self.recovery_before(g) * SHARD as u64
    }

    fn table_len(&self) -> u64 {
        8 * (self.shards() + self.recovery_total()) + 16
    }

    fn table_at(&self, copy: u64) -> u64 {
        self.data_len + self.recovery_total() * SHARD as u64 + copy * self.table_len()
    }

    /// The whole object's size. `MAX_DATA` keeps every term far from overflow.
    pub fn total_len(&self) -> u64 {
        self.table_at(2) + TAIL as u64
    }

    fn footer(&self) -> [u8; FOOTER] {
        let mut f = [0u8; FOOTER];
        f[..8].copy_from_slice(MAGIC);
        f[8] = VERSION;
        f[9] = self.percent;
        f[12..20].copy_from_slice(&self.data_len.to_le_bytes());
        let sum = xxh3_64(&f[..24]);
        f[24..].copy_from_slice(&sum.to_le_bytes());
        f
    }

    /// The checksum that ends the table: of its sums and of this layout.
    fn table_sum(&self, sums: &[u8]) -> [u8; 16] {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(sums);
        h.update(&self.data_len.to_le_bytes());
        h.update(&[self.percent]);
        h.digest128().to_le_bytes()
    }

    fn parse_footer(f: &[u8]) -> Option<Layout> {
        if f.len() != FOOTER || &f[..8] != MAGIC || f[8] != VERSION {
            return None;
        }
        if xxh3_64(&f[..24]).to_le_bytes() != f[24..] {
            return None;
        }
        Layout::new(u64::from_le_bytes(f[12..20].try_into().ok()?), f[9])
    }

    /// The layout whose object is `size` bytes at `percent`, if there is one (binary search:
    /// the size grows strictly with the data length).
    fn for_size(size: u64, percent: u8) -> Option<Layout> {
        let (mut lo, mut hi) = (0u64, size.min(MAX_DATA));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if Layout::new(mid, percent)?.total_len() < size {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Layout::new(lo, percent).filter(|l| l.total_len() == size)
    }
}

fn rs_err(e: reed_solomon_simd::Error) -> Error {
    Error::Pipeline(format!("parity: {e}"))
}

/// The Reed-Solomon encoder every `Encoder` of the process takes in turn: its work area is a
/// group's worth (1 MiB for 256 data shards), and with one encoder per open pack (one per
/// writer) the 128M run of tests/memory.rs, 7 writers, held 7 MiB of them. A group encodes in
/// about a millisecond, against the tens a writer takes to fill it.
static SHARED: std::sync::Mutex<Option<ReedSolomonEncoder>> = std::sync::Mutex::new(None);

/// Computes the parity section of an object fed to it in order, holding one group (1 MiB) and
/// the recovery shards so far (percent of what was fed).
pub struct Encoder {
    percent: u8,
    data_len: u64,
    group: Vec<u8>,
    recovery: Vec<u8>,
    data_sums: Vec<u64>,
    recovery_sums: Vec<u64>,
}

impl Encoder {
    /// None for percent 0 (no parity).
    pub fn new(percent: u8) -> Option<Encoder> {
        Layout::new(0, percent)?;
        Some(Encoder {
            percent,
            data_len: 0,
            group: Vec::new(),
            recovery: Vec::new(),
            data_sums: Vec::new(),
            recovery_sums: Vec::new(),
        })
    }

    /// `new`, expecting an object of about `data_len` bytes: its recovery shards are reserved
    /// at once, not copied at each doubling (a reservation not yet written costs no memory).
    pub fn with_hint(percent: u8, data_len: u64) -> Option<Encoder> {
        let mut e = Encoder::new(percent)?;
        if let Some(l) = Layout::new(data_len, percent) {
            // The whole section: `finish` appends the tables and footers to the same vector.
            e.recovery.reserve_exact(usize::try_from(l.total_len() - l.data_len).unwrap_or(0));
            e.group.reserve_exact(GROUP_BYTES.min(usize::try_from(data_len).unwrap_or(GROUP_BYTES)));
        }
        Some(e)
    }

    pub fn update(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.data_len += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (GROUP_BYTES - self.group.len()).min(bytes.len());
            self.group.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.group.len() == GROUP_BYTES {
                self.encode_group()?;
            }
        }
        Ok(())
    }

    fn encode_group(&mut self) -> Result<()> {
        let n = self.group.len().div_ceil(SHARD);
        self.group.resize(n * SHARD, 0);
        let m = recovery_for(n, self.percent);
        self.data_sums.extend(self.group.chunks_exact(SHARD).map(xxh3_64));
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        let rs = match &mut *shared {
            Some(rs) => {
                rs.reset(n, m, SHARD).map_err(rs_err)?;
                rs
            }
            None => shared.insert(ReedSolomonEncoder::new(n, m, SHARD).map_err(rs_err)?),
        };
        for shard in self.group.chunks_exact(SHARD) {
            rs.add_original_shard(shard).map_err(rs_err)?;
        }
        let out = rs.encode().map_err(rs_err)?;
        for shard in out.recovery_iter() {
            self.recovery_sums.push(xxh3_64(shard));
            self.recovery.extend_from_slice(shard);
        }
        self.group.clear();
        Ok(())
    }

    /// The parity section to append after the data.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        if !self.group.is_empty() {
            self.encode_group()?;
        }
        let layout = Layout::new(self.data_len, self.percent)
            .ok_or_else(|| Error::Pipeline("parity: object too large".into()))?;
        let mut table = Vec::with_capacity(layout.table_len() as usize);
        for s in self.data_sums.iter().chain(&self.recovery_sums) {
            table.extend_from_slice(&s.to_le_bytes());
        }
        let sum = layout.table_sum(&table);
        table.extend_from_slice(&sum);
        let mut out = std::mem::take(&mut self.recovery);
        out.reserve_exact(2 * table.len() + TAIL);
        out.extend_from_slice(&table);
        out.extend_from_slice(&table);
        let footer = layout.footer();
        out.extend_from_slice(&footer);
        out.extend_from_slice(&footer);
        debug_assert_eq!(layout.total_len(), self.data_len + out.len() as u64);
        Ok(out)
    }
}

/// The parity section of `data`, or nothing at percent 0.
pub fn section(data: &[u8], percent: u8) -> Result<Vec<u8>> {
    let Some(mut enc) = Encoder::new(percent) else { return Ok(Vec::new()) };
    enc.update(data)?;
    enc.finish()
}

/// Reads `len` bytes at an offset of the object.
pub type Read<'a> = dyn FnMut(u64, usize) -> Result<Vec<u8>> + 'a;

/// A parity layout and its verified table.
pub struct Parity {
    pub layout: Layout,
    /// The shards' checksums; empty when both copies are damaged (the layout, from a
    /// checksummed footer, still says where the data ends: nothing can be repaired).
    table: Vec<u64>,
}

fn parse_table(layout: &Layout, bytes: &[u8]) -> Option<Vec<u64>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(16)?)?;
    if layout.table_sum(body) != sum {
        return None;
    }
    let sums: Vec<u64> =
        body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    (sums.len() as u64 == layout.shards() + layout.recovery_total()).then_some(sums)
}

impl Parity {
    /// The parity of an object of `size` bytes whose last bytes are `tail` (up to `TAIL`):
    /// `Ok(None)` when it has none (its end is a pack footer, `ends_plain`). Reads a table
    /// through `read`; both footers damaged, it tries the layout each percent gives the size.
    pub fn locate(size: u64, tail: &[u8], ends_plain: bool, read: &mut Read) -> Result<Option<Parity>> {
        let bad = |why: String| Error::corrupt("object", "", why);
        let mut found: Vec<Layout> = Vec::new();
        // The footers are the last two 32-byte pieces of the tail, however long it is.
        for back in [FOOTER, TAIL] {
            let at = tail.len().checked_sub(back);
            if let Some(l) = at.and_then(|at| tail.get(at..at + FOOTER)).and_then(Layout::parse_footer) {
                if l.total_len() == size && !found.contains(&l) {
                    found.push(l);
                }
            }
        }
        let from_footer = found.first().copied();
        if found.is_empty() {
            if ends_plain {
                return Ok(None);
            }
            found = (1..=MAX_PERCENT).filter_map(|p| Layout::for_size(size, p)).collect();
        }
        for layout in found {
            let len = layout.table_len();
            if len > usize::MAX as u64 / 2 {
                continue;
            }
            for copy in 0..2 {
                // A storage error is not damage (a pack deleted meanwhile, a network failure):
                // it goes up as it is, for the caller's handling of those.
                let bytes = match read(layout.table_at(copy), len as usize) {
                    Ok(b) => b,
                    Err(Error::Storage(e)) => return Err(Error::Storage(e)),
                    Err(_) => continue,
                };
                if let Some(table) = parse_table(&layout, &bytes) {
                    return Ok(Some(Parity { layout, table }));
                }
            }
        }
        // Both tables damaged: a footer that checks out still says where the data ends (the
        // pack's own footer and trailer are authenticated on their own); no repair.
        if let Some(layout) = from_footer {
            return Ok(Some(Parity { layout, table: Vec::new() }));
        }
        Err(bad("parity footer and tables damaged (or truncated)".into()))
    }

    /// Repairs `buf`, the object's bytes from `at` (within the data), from the groups it
    /// overlaps, read through `read`. Returns how many data shards were damaged and rebuilt
    /// (0: those groups read back intact, and `buf` now holds them).
    pub fn repair(&self, at: u64, buf: &mut [u8], read: &mut Read) -> Result<usize> {
        Ok(self.repair_listed(at, buf, read)?.len())
    }

    /// `repair`, naming the data shards rebuilt (their index in the object), so that a reader
    /// repairing the same group twice counts its damage once.
    pub fn repair_listed(&self, at: u64, buf: &mut [u8], read: &mut Read) -> Result<Vec<u64>> {
        let end = at.checked_add(buf.len() as u64).filter(|e| *e <= self.layout.data_len);
        let Some(end) = end else { return Err(Error::Pipeline("parity: range outside the data".into())) };
        let mut fixed = Vec::new();
        if self.table.is_empty() && self.layout.data_len > 0 {
            return Err(Error::Pipeline("parity: both tables are damaged, nothing to repair with".into()));
        }
        if buf.is_empty() {
            return Ok(fixed);
        }
        for g in at / GROUP_BYTES as u64..=(end - 1) / GROUP_BYTES as u64 {
            let (start, data) = self.group(g, read, &mut fixed)?;
            let from = at.max(start);
            let to = end.min(start + data.len() as u64);
            buf[(from - at) as usize..(to - at) as usize]
                .copy_from_slice(&data[(from - start) as usize..(to - start) as usize]);
        }
        Ok(fixed)
    }

    /// Group `g`'s data (its real length), rebuilt if damaged.
    fn group(&self, g: u64, read: &mut Read, fixed: &mut Vec<u64>) -> Result<(u64, Vec<u8>)> {
        let l = &self.layout;
        let start = g * GROUP_BYTES as u64;
        let len = (l.data_len - start).min(GROUP_BYTES as u64) as usize;
        let mut data = read(start, len)?;
        if data.len() != len {
            return Err(Error::Pipeline("parity: short read".into()));
        }
        let (n, m) = (l.group_data(g), l.group_recovery(g));
        let first = (g * GROUP as u64) as usize;
        data.resize(n * SHARD, 0);
        let bad: Vec<usize> =
            (0..n).filter(|&i| xxh3_64(&data[i * SHARD..(i + 1) * SHARD]) != self.table[first + i]).collect();
        if !bad.is_empty() {
            let rec = read(l.recovery_at(g), m * SHARD)?;
            let rfirst = (l.shards() + l.recovery_before(g)) as usize;
            let good_rec: Vec<usize> = (0..m)
                .filter(|&j| {
                    rec.get(j * SHARD..(j + 1) * SHARD).is_some_and(|s| xxh3_64(s) == self.table[rfirst + j])
                })
                .collect();
            if good_rec.len() < bad.len() {
                return Err(Error::Pipeline(format!(
                    "parity: group {g} has {} damaged data shards and {} intact recovery shards of {m}: \
                     beyond repair",
                    bad.len(),
                    good_rec.len()
                )));
            }
            let mut rs = ReedSolomonDecoder::new(n, m, SHARD).map_err(rs_err)?;
            for i in (0..n).filter(|i| !bad.contains(i)) {
                rs.add_original_shard(i, &data[i * SHARD..(i + 1) * SHARD]).map_err(rs_err)?;
            }
            for &j in &good_rec {
                rs.add_recovery_shard(j, &rec[j * SHARD..(j + 1) * SHARD]).map_err(rs_err)?;
            }
            let out = rs.decode().map_err(rs_err)?;
            for &i in &bad {
                let shard = out.restored_original(i).filter(|s| xxh3_64(s) == self.table[first + i]);
                let Some(shard) = shard else {
                    return Err(Error::Pipeline(format!("parity: group {g} shard {i} did not decode")));
                };
                data[i * SHARD..(i + 1) * SHARD].copy_from_slice(shard);
            }
            fixed.extend(bad.iter().map(|&i| (first + i) as u64));
        }
        data.truncate(len);
        Ok((start, data))
    }
}

/// Repairs a whole object in memory: its data from parity, then its parity section written
/// again from the data. Returns the data shards rebuilt; `Ok(None)` when it has no parity.
pub fn repair_whole(object: &mut Vec<u8>, ends_plain: impl Fn(&[u8]) -> bool) -> Result<Option<usize>> {
    let size = object.len() as u64;
    let tail = object[object.len().saturating_sub(TAIL)..].to_vec();
    let plain = ends_plain(object);
    let mut read = |at: u64, len: usize| -> Result<Vec<u8>> {
        let end = at.checked_add(len as u64).filter(|e| *e <= size);
        end.map(|e| object[at as usize..e as usize].to_vec())
            .ok_or_else(|| Error::Pipeline("parity: read past the end".into()))
    };
    let Some(parity) = Parity::locate(size, &tail, plain, &mut read)? else { return Ok(None) };
    let d = parity.layout.data_len;
    let mut data = vec![0u8; d as usize];
    let fixed = parity.repair(0, &mut data, &mut read)?;
    let section = section(&data, parity.layout.percent)?;
    data.extend_from_slice(&section);
    *object = data;
    Ok(Some(fixed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn object(len: usize, percent: u8, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut x = seed | 1;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut obj = data.clone();
        obj.extend(section(&data, percent).unwrap());
        (data, obj)
    }

    fn reader(obj: &[u8]) -> impl FnMut(u64, usize) -> Result<Vec<u8>> + '_ {
        move |at, len| {
            obj.get(at as usize..at as usize + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| Error::Pipeline("past the end".into()))
        }
    }

    fn locate(obj: &[u8]) -> Result<Option<Parity>> {
        let tail = &obj[obj.len().saturating_sub(TAIL)..];
        Parity::locate(obj.len() as u64, tail, false, &mut reader(obj))
    }

    #[test]
    fn sizes_follow_the_layout() {
        for (len, p) in [(0, 5), (1, 5), (4096, 5), (4097, 1), (1 << 20, 5), ((3 << 20) + 17, 5), (5000, 100)]
        {
            let (_, obj) = object(len, p, 7);
            let l = Layout::new(len as u64, p).unwrap();
            assert_eq!(l.total_len(), obj.len() as u64, "{len} at {p} %");
            assert_eq!(Layout::for_size(obj.len() as u64, p), Some(l));
        }
        // 5 % of a full MiB group is 13 shards: 52 KiB, plus 2 × 8 bytes per shard of table.
        let l = Layout::new(32 << 20, 5).unwrap();
        let overhead = (l.total_len() - l.data_len) as f64 / l.data_len as f64;
        assert!((0.054..0.056).contains(&overhead), "{overhead}");
    }

    #[test]
    fn thirteen_damaged_blocks_per_mib_are_rebuilt_and_fourteen_are_not() {
        let (data, obj) = object(3 << 20, 5, 11);
        // 13 whole blocks zeroed in the second MiB (a 52 KiB burst), flips in the first and third.
        let mut bad = obj.clone();
        let at = (1 << 20) + 3 * SHARD;
        bad[at..at + 13 * SHARD].fill(0);
        for i in 0..13 {
            bad[i * 70_001 % (1 << 20)] ^= 0x40;
            bad[(2 << 20) + i * 7919] ^= 1;
        }
        let p = locate(&bad).unwrap().unwrap();
        let mut buf = vec![0u8; data.len()];
        let fixed = p.repair(0, &mut buf, &mut reader(&bad)).unwrap();
        assert_eq!(buf, data);
        assert_eq!(fixed, 13 + 13 + 13);
        // A part of the data only: the groups it overlaps.
        let mut part = vec![0u8; 5000];
        assert_eq!(p.repair((1 << 20) + 4 * SHARD as u64 + 10, &mut part, &mut reader(&bad)).unwrap(), 13);
        assert_eq!(part, data[(1 << 20) + 4 * SHARD + 10..][..5000]);
        // One more block in the same group is beyond the code.
        let mut worse = bad.clone();
        worse[at + 20 * SHARD] ^= 1;
        assert!(p.repair(1 << 20, &mut part, &mut reader(&worse)).is_err());
        // The whole object comes back byte for byte, parity included.
        let mut whole = bad.clone();
        assert_eq!(repair_whole(&mut whole, |_| false).unwrap(), Some(39));
        assert_eq!(whole, obj);
    }

    #[test]
    fn damaged_footers_and_one_table_are_survived() {
        let (data, obj) = object(700_000, 7, 3);
        let mut bad = obj.clone();
        let n = bad.len();
        bad[n - TAIL..].fill(0xff);
        let l = Layout::new(data.len() as u64, 7).unwrap();
        let t0 = l.table_at(0) as usize;
        bad[t0 + 3] ^= 1;
        bad[100] ^= 1;
        let mut whole = bad.clone();
        assert_eq!(repair_whole(&mut whole, |_| false).unwrap(), Some(1));
        assert_eq!(whole, obj);
        // Both tables damaged: nothing to tell damaged shards by. With a footer intact the
        // data's end is still known; without one, nothing is.
        let t1 = l.table_at(1) as usize;
        bad[t1 + 3] ^= 1;
        assert!(locate(&bad).is_err());
        let mut buf = vec![0u8; 10];
        let mut footer_kept = obj.clone();
        footer_kept[t0 + 3] ^= 1;
        footer_kept[t1 + 3] ^= 1;
        let p = locate(&footer_kept).unwrap().unwrap();
        assert_eq!(p.layout, l);
        assert!(p.repair(0, &mut buf, &mut reader(&footer_kept)).is_err());
    }

    #[test]
    fn an_object_without_parity_is_not_taken_for_one() {
        let obj = b"....BKPKEND2".to_vec();
        let tail = &obj[obj.len().saturating_sub(TAIL)..];
        assert!(Parity::locate(obj.len() as u64, tail, true, &mut reader(&obj)).unwrap().is_none());
    }

    const KNOWN: [u64; 3] = [0x0800_edb8_ac1a_b9a3, 0x75df_69cf_7ff9_2586, 0xa5fc_2f38_8ef8_8b20];

    /// The recovery bytes are part of the format: a different Reed-Solomon code (a new version
    /// of the crate choosing another one) would make every stored pack's parity useless and
    /// its name unmatched by `repair_whole`. Known answers, from reed-solomon-simd 3.1.0.
    #[test]
    fn parity_sections_are_exactly_the_known_ones() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(31) % 251) as u8).collect();
        let got: Vec<u64> = [1u8, 5, 100].iter().map(|&p| xxh3_64(&section(&data, p).unwrap())).collect();
        assert_eq!(got, KNOWN, "{got:#x?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn damage_within_the_bound_is_always_repaired(
            len in 1usize..(2 << 20) + 9000,
            percent in 1u8..=20,
            seed in any::<u64>(),
            picks in proptest::collection::vec(any::<u32>(), 0..40),
        ) {
            let (data, obj) = object(len, percent, seed);
            let l = Layout::new(len as u64, percent).unwrap();
            // Damage at most m_g data shards of each group, anywhere in them.
            let mut bad = obj.clone();
            let mut per_group = vec![0usize; l.groups() as usize];
            let mut hit = std::collections::BTreeSet::new();
            for p in picks {
                let shard = p as u64 % l.shards();
                let g = (shard / GROUP as u64) as usize;
                if hit.contains(&shard) || per_group[g] == l.group_recovery(g as u64) {
                    continue;
                }
                hit.insert(shard);
                per_group[g] += 1;
                let at = (shard as usize * SHARD + (p as usize >> 8) % SHARD).min(len - 1);
                if at / SHARD != shard as usize { continue; }
                bad[at] ^= 1 + (p as u8 & 0x7f);
            }
            let mut whole = bad;
            let fixed = repair_whole(&mut whole, |_| false).unwrap().unwrap();
            prop_assert_eq!(&whole[..len], &data[..]);
            prop_assert_eq!(whole, obj);
            prop_assert!(fixed <= hit.len());
        }

        #[test]
        fn garbage_tails_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..=TAIL), size in any::<u64>()) {
            let mut read = |_: u64, len: usize| -> Result<Vec<u8>> { Ok(vec![0; len.min(1 << 16)]) };
            let _ = Parity::locate(size, &tail, false, &mut read);
        }
    }
}
