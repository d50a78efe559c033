//! compress: NewBlob -> Framed. Workers: cfg.workers (CPU). Holds one zstd context per worker.
//!
//! The framed plaintext of a blob (what the encrypt stage seals) is
//! `[nonce room: 12][codec: u8][raw_len: u32 LE][payload_len: u32 LE][payload][zero padding]`.
//! Padding rounds the sealed size up to a bucket (at most ~3 % larger) so stored sizes do not
//! reveal exact chunk lengths. Incompressible data is detected with a 16 KiB probe and stored
//! raw: zstd on random data is pure waste.
#![forbid(unsafe_code)]

use crossbeam_channel::{Receiver, Sender};

use crate::msg::{BlobKind, Cancel, Framed, Member, NewBlob, BUNDLE_ID};
use crate::Workers;

pub const NONCE_ROOM: usize = 12;
const HEADER: usize = 1 + 4 + 4;
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 1;
/// No blob may claim to expand to more than this (chunks are at most 4 MiB, tree blobs are
/// split well below it): decoders reject larger claims instead of allocating them.
pub const MAX_BLOB: usize = 16 << 20;
const PROBE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct CompressConfig {
    pub workers: usize,
    /// zstd level of data chunks; 1 by default (see design.md 1b: level 3 costs ~40 % more CPU
    /// for 3–13 %). None: every blob is stored raw (codec 0).
    pub level: Option<i32>,
    /// zstd level of small-file bundles (`BUNDLE_LEVEL` by default); None: stored raw.
    pub bundle_level: Option<i32>,
}

impl CompressConfig {
    /// The measured defaults: level 1 for chunks, `BUNDLE_LEVEL` for bundles.
    pub fn auto(workers: usize) -> Self {
        CompressConfig { workers, level: Some(1), bundle_level: Some(BUNDLE_LEVEL) }
    }
}

/// The bucket a framed length is padded to: a multiple of 1/32 of its power of two (min 64).
pub fn padded_len(n: usize) -> usize {
    let pow = usize::BITS - n.max(1).leading_zeros(); // bits needed
    let gran = (1usize << pow.saturating_sub(6)).max(64);
    n.div_ceil(gran) * gran
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("blob frame is truncated or malformed")]
    Malformed,
    #[error("blob frame uses unknown codec {0}")]
    Codec(u8),
    #[error("blob claims {0} bytes, more than any blob may hold")]
    TooLarge(usize),
    #[error("blob does not decompress: {0}")]
    Decompress(String),
}

/// Bytes a zstd context at `level` holds once it has compressed `len` bytes in one call (zstd
/// sizes its tables to the input): measured on a context, as zstd's estimate is only in its
/// experimental API. Level 19 on a 4 MiB chunk holds about 50 MiB, level 1 well under 2 MiB:
/// a backup's memory ceiling counts them (engine::backup).
pub fn context_bytes(level: i32, len: usize) -> u64 {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::create();
    if cctx.set_parameter(CParameter::CompressionLevel(level)).is_err() {
        return 0;
    }
    let src = vec![0u8; len];
    let mut dst: Vec<u8> = Vec::with_capacity(zstd::zstd_safe::compress_bound(len));
    let _ = cctx.compress2(&mut dst, &src);
    cctx.sizeof() as u64
}

pub struct Compressor {
    /// None: store every blob raw (compression turned off).
    ctx: Option<zstd::bulk::Compressor<'static>>,
    /// For a compressor of bundles: zstd's output, kept from one bundle to the next, of which
    /// the frame is an exact-size copy. (A fresh output buffer of the worst-case size was zeroed
    /// and faulted in for every bundle.) Other blobs (up to 4 MiB) get a buffer of their own: a
    /// scratch for them would hold as much per worker for good.
    scratch: Option<Vec<u8>>,
}

/// Bundles are sealed at `BUNDLE_TARGET` plus at most one small blob.
const SCRATCH_INPUT: usize = BUNDLE_TARGET + SMALL_BLOB;

impl Compressor {
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(Compressor { ctx: Some(zstd::bulk::Compressor::new(level)?), scratch: None })
    }

    /// A compressor at `level`, or (None) one that frames every blob raw.
    pub fn with_level(level: Option<i32>) -> std::io::Result<Self> {
        let ctx = level.map(zstd::bulk::Compressor::new).transpose()?;
        Ok(Compressor { ctx, scratch: None })
    }

    /// A compressor for bundles (see `scratch`).
    pub fn for_bundles(level: Option<i32>) -> std::io::Result<Self> {
        let ctx = level.map(zstd::bulk::Compressor::new).transpose()?;
        Ok(Compressor { ctx, scratch: Some(Vec::new()) })
    }

    /// `data` compressed, appended to `buf` (which holds `start` bytes of header room), when
    /// that makes it smaller.
    fn compress_into(&mut self, data: &[u8], buf: &mut Vec<u8>, start: usize) -> bool {
        let Some(ctx) = self.ctx.as_mut() else { return false };
        let bound = zstd::zstd_safe::compress_bound(data.len());
        if let Some(scratch) = self.scratch.as_mut().filter(|_| data.len() <= SCRATCH_INPUT) {
            if scratch.len() < bound {
                scratch.resize(bound, 0);
            }
            return match ctx.compress_to_buffer(data, &mut scratch[..bound]) {
                Ok(n) if n < data.len() => {
                    buf.reserve_exact(padded_len(HEADER + n) + NONCE_ROOM + 16 - buf.len());
                    buf.extend_from_slice(&scratch[..n]);
                    true
                }
                _ => false,
            };
        }
        // zstd writes into the spare capacity after `start` (through a cursor), so the bound is
        // not zeroed first: zeroing it touched, and so faulted in, about three times the pages
        // that a text chunk's compressed bytes need.
        buf.truncate(start);
        buf.reserve_exact(padded_len(HEADER + bound) + NONCE_ROOM + 16 - buf.len());
        let mut out = std::io::Cursor::new(&mut *buf);
        out.set_position(start as u64);
        match ctx.compress_to_buffer(data, &mut out) {
            Ok(n) if n < data.len() => {
                buf.truncate(start + n);
                true
            }
            _ => false,
        }
    }

    fn worth_it(&mut self, data: &[u8]) -> bool {
        let Some(ctx) = self.ctx.as_mut() else { return false };
        if data.len() < 64 {
            return false;
        }
        if data.len() <= 4 * PROBE {
            return true;
        }
        let mid = data.len() / 2 - PROBE / 2;
        let sample = &data[mid..mid + PROBE];
        match ctx.compress(sample) {
            Ok(c) => c.len() < PROBE * 97 / 100,
            Err(_) => false,
        }
    }

    /// Frames `data`, compressed when that pays.
    pub fn frame(&mut self, data: &[u8]) -> Vec<u8> {
        let start = NONCE_ROOM + HEADER;
        let mut buf = vec![0; start];
        let mut codec = CODEC_RAW;
        if self.worth_it(data) && self.compress_into(data, &mut buf, start) {
            codec = CODEC_ZSTD;
        }
        if codec == CODEC_RAW {
            buf.clear();
            buf.reserve(padded_len(HEADER + data.len()) + NONCE_ROOM + 16);
            buf.resize(start, 0);
            buf.extend_from_slice(data);
        }
        let payload = (buf.len() - start) as u32;
        buf[NONCE_ROOM] = codec;
        buf[NONCE_ROOM + 1..NONCE_ROOM + 5].copy_from_slice(&(data.len() as u32).to_le_bytes());
        buf[NONCE_ROOM + 5..start].copy_from_slice(&payload.to_le_bytes());
        buf.resize(NONCE_ROOM + padded_len(buf.len() - NONCE_ROOM), 0);
        buf
    }
}

/// Reverses `Compressor::frame` on a decrypted frame (without the nonce room).
pub fn unframe(frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    unframe_into(frame, &mut out)?;
    Ok(out)
}

/// `unframe` into `out` (emptied first), so that a reader can reuse one buffer for every blob;
/// zstd writes into its spare capacity, which is never zeroed first.
pub fn unframe_into(frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    out.clear();
    if frame.len() < HEADER {
        return Err(FrameError::Malformed);
    }
    let codec = frame[0];
    let raw_len = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let payload_len = u32::from_le_bytes([frame[5], frame[6], frame[7], frame[8]]) as usize;
    if raw_len > MAX_BLOB {
        return Err(FrameError::TooLarge(raw_len));
    }
    let payload = frame.get(HEADER..HEADER + payload_len).ok_or(FrameError::Malformed)?;
    match codec {
        CODEC_RAW if payload_len == raw_len => {
            out.extend_from_slice(payload);
            Ok(())
        }
        CODEC_RAW => Err(FrameError::Malformed),
        CODEC_ZSTD => {
            thread_local! {
                // A decompression context per thread: creating one per blob showed in profiles.
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            out.reserve(raw_len);
            let n = DCTX
                .with(|cell| {
                    let mut slot = cell.borrow_mut();
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new()?);
                    }
                    match slot.as_mut() {
                        // Bounded by the capacity (at least `raw_len`); a frame that holds more
                        // or less than it claims fails below.
                        Some(d) => d.decompress_to_buffer(payload, out),
                        None => Err(std::io::Error::other("no zstd context")),
                    }
                })
                .map_err(|e| FrameError::Decompress(e.to_string()))?;
            if n != raw_len || out.len() != raw_len {
                out.clear();
                return Err(FrameError::Malformed);
            }
            Ok(())
        }
        c => Err(FrameError::Codec(c)),
    }
}

/// Data blobs smaller than this are compressed together in bundles: compressed one by one,
/// small files lose most of their compression (restic stores 595 MiB of a tree that
/// `tar | zstd -3` makes 341 MiB).
pub const SMALL_BLOB: usize = 32 * 1024;
/// zstd level of bundles. Measured on 100,000 small text files (200 MiB): level 1 stores
/// 97.2 MiB in 2.27 s, level 2 90.9 MiB in 2.53 s, level 3 86.7 MiB in ~2.8 s, against
/// 75.7 MiB for `tar | zstd -3`: level 3 is the one within 20 % of a single stream.
pub const BUNDLE_LEVEL: i32 = 3;
/// A bundle is sealed once it holds this much plaintext (or when the input ends).
pub const BUNDLE_TARGET: usize = 512 * 1024;

/// Small blobs gathered for one compressed frame.
///
/// A bundle holds copies, not the blobs' buffers, and lets go of their permits at once: a small
/// blob can be the tail of a large file's 8 MiB block, and bundles pinning such blocks held the
/// whole budget and deadlocked the pipeline under a small --mem-limit. A bundle's own memory is
/// bounded by construction (BUNDLE_TARGET, plus its frame, per compress worker) and is part of
/// the fixed reserve, not of the budget.
#[derive(Default)]
struct Bundle {
    data: Vec<u8>,
    members: Vec<Member>,
}

impl Bundle {
    fn add(&mut self, blob: NewBlob) {
        let offset = self.data.len() as u32;
        self.data.extend_from_slice(&blob.data);
        self.members.push(Member { id: blob.id, offset, len: blob.data.len() as u32 });
        // `blob` (its buffer slice and permit) is dropped here.
    }

    fn take(&mut self, c: &mut Compressor) -> Option<Framed> {
        if self.members.is_empty() {
            return None;
        }
        let buf = c.frame(&self.data);
        let raw_len = self.data.len() as u32;
        // The gathering buffer is kept for the next bundle (the allocator returns freed memory
        // to the kernel at once, so a new one was faulted in and zeroed again as it grew).
        self.data.clear();
        let members = std::mem::take(&mut self.members);
        Some(Framed { id: BUNDLE_ID, kind: BlobKind::Bundle, raw_len, buf, members, permits: Vec::new() })
    }
}

pub fn spawn(
    cfg: CompressConfig,
    input: Receiver<Vec<NewBlob>>,
    out: Sender<Framed>,
    cancel: Cancel,
) -> std::io::Result<Workers> {
    // Fail here, not in a worker, if zstd refuses a level.
    Compressor::with_level(cfg.level)?;
    Compressor::with_level(cfg.bundle_level)?;
    Workers::spawn("compress", cfg.workers, move |_| {
        let (Ok(mut c), Ok(mut cb)) =
            (Compressor::with_level(cfg.level), Compressor::for_bundles(cfg.bundle_level))
        else {
            cancel.cancel();
            return;
        };
        let mut bundle = Bundle::default();
        for blob in input.iter().flatten() {
            if cancel.is_cancelled() {
                continue;
            }
            if blob.kind == BlobKind::Data && blob.data.len() < SMALL_BLOB {
                bundle.add(blob);
                if bundle.data.len() >= BUNDLE_TARGET {
                    if let Some(f) = bundle.take(&mut cb) {
                        if out.send(f).is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            let buf = c.frame(&blob.data);
            let raw_len = blob.data.len() as u32;
            let framed = Framed {
                id: blob.id,
                kind: blob.kind,
                raw_len,
                buf,
                members: Vec::new(),
                permits: vec![blob.permit],
            };
            if out.send(framed).is_err() {
                return;
            }
        }
        // The input is closed: what is gathered goes out now.
        if let Some(f) = bundle.take(&mut cb) {
            if !cancel.is_cancelled() {
                let _ = out.send(f);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn higher_levels_hold_larger_contexts() {
        let t = std::time::Instant::now();
        let (one, three, nineteen) =
            (context_bytes(1, MAX_BLOB), context_bytes(3, MAX_BLOB), context_bytes(19, MAX_BLOB));
        eprintln!(
            "levels 1, 3, 19 on {MAX_BLOB} bytes: {one}, {three}, {nineteen} bytes ({:?})",
            t.elapsed()
        );
        assert!(one > 0 && one < three && three < nineteen, "{one} {three} {nineteen}");
        assert!(nineteen > 16 << 20, "{nineteen}");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padding_is_bounded() {
        for n in [1usize, 63, 64, 65, 1000, 4096, 100_000, 1 << 20, (1 << 20) + 1, 4 << 20] {
            let p = padded_len(n);
            assert!(p >= n);
            assert!(p - n <= (n / 32).max(63), "{n} -> {p}");
        }
    }

    #[test]
    fn random_data_is_stored_raw() {
        let mut c = Compressor::new(1).unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let f = c.frame(&data);
        let text = b"hello world, hello world, hello world ".repeat(5000);
        let g = c.frame(&text);
        assert_eq!(g[NONCE_ROOM], CODEC_ZSTD);
        assert!(g.len() < text.len() / 10);
        assert_eq!(unframe(&f[NONCE_ROOM..]).unwrap(), data);
        assert_eq!(unframe(&g[NONCE_ROOM..]).unwrap(), text);
    }

    #[test]
    fn compression_off_frames_everything_raw_and_higher_levels_store_less() {
        let text = b"hello world, the quick brown fox, hello world ".repeat(20_000);
        let mut off = Compressor::with_level(None).unwrap();
        let f = off.frame(&text);
        assert_eq!(f[NONCE_ROOM], CODEC_RAW);
        assert_eq!(unframe(&f[NONCE_ROOM..]).unwrap(), text);
        let mut bundles = Compressor::for_bundles(None).unwrap();
        assert_eq!(bundles.frame(&text[..4000])[NONCE_ROOM], CODEC_RAW);
        let mixed: Vec<u8> =
            (0..400_000u32).map(|i| b"abcdefgh"[(i.wrapping_mul(2654435761) >> 29) as usize]).collect();
        let one = Compressor::with_level(Some(1)).unwrap().frame(&mixed);
        let nineteen = Compressor::with_level(Some(19)).unwrap().frame(&mixed);
        assert!(nineteen.len() < one.len(), "{} !< {}", nineteen.len(), one.len());
        assert_eq!(unframe(&nineteen[NONCE_ROOM..]).unwrap(), mixed);
    }

    proptest! {
        #[test]
        fn frame_round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), rep in 1usize..20) {
            let mut c = Compressor::new(1).unwrap();
            let input = data.repeat(rep);
            let f = c.frame(&input);
            prop_assert_eq!(unframe(&f[NONCE_ROOM..]).unwrap(), input);
        }

        #[test]
        fn unframe_rejects_garbage_without_panicking(g in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = unframe(&g);
        }
    }
}
