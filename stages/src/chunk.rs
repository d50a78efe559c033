//! chunk: Block -> Chunk (to hash) + FileEvent::End/Failed/Holes/Attrs (to the tree builder).
//! Workers: one per input queue; the read stage routes every block of a file to the same worker,
//! so a file is chunked as one stream. Holds, per file being read, the unchunked tail of its last
//! block (at most `max` bytes, still inside that block's buffer and permit).
//!
//! Content-defined chunking is FastCDC 2020 over slices (zero copy), with the gear table keyed by
//! `seed` (derived from the writer key) so chunk boundaries do not reveal content to someone who
//! knows the public algorithm.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use fastcdc::v2020::{FastCDC, Normalization};

use crate::batch::{recv_or_flush, Batcher, Closed, BYTES, ITEMS};
use crate::budget::Permit;
use crate::msg::{Block, Cancel, Chunk, FileEvent};
use crate::pool::{BufferPool, Pooled};
use crate::Workers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
    pub seed: u64,
}

impl ChunkParams {
    /// min 256 KiB, average 1 MiB, max 4 MiB: few enough chunks that the index of a large
    /// repository stays small, small enough that an edit costs about a megabyte of new data.
    pub const DEFAULT_MIN: u32 = 256 * 1024;
    pub const DEFAULT_AVG: u32 = 1024 * 1024;
    pub const DEFAULT_MAX: u32 = 4 * 1024 * 1024;

    pub fn with_seed(seed: u64) -> Self {
        ChunkParams { min: Self::DEFAULT_MIN, avg: Self::DEFAULT_AVG, max: Self::DEFAULT_MAX, seed }
    }

    /// FastCDC's own limits (it asserts them only in debug builds).
    pub fn is_valid(&self) -> bool {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        (64..=1 << 20).contains(&min)
            && (256..=4 << 20).contains(&avg)
            && (1024..=16 << 20).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0
    }
}

/// Cut points of `data` as (offset, length). When `more` is true the data continues in a later
/// block, so the final piece is not a real boundary and is returned separately as the tail.
pub fn cut(params: &ChunkParams, data: &[u8], more: bool) -> (Vec<(usize, usize)>, usize) {
    if data.len() <= params.min as usize && !more {
        return (if data.is_empty() { vec![] } else { vec![(0, data.len())] }, data.len());
    }
    let cdc = FastCDC::with_level_and_seed(
        data,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        Normalization::Level1,
        params.seed,
    );
    let mut cuts: Vec<(usize, usize)> = cdc.map(|c| (c.offset, c.length)).collect();
    let mut tail_start = data.len();
    if more {
        if let Some(&(off, _)) = cuts.last() {
            cuts.pop();
            tail_start = off;
        }
    }
    (cuts, tail_start)
}

struct FileState {
    index: u32,
    tail: Option<(Bytes, Arc<Permit>)>,
}

pub fn spawn(
    params: ChunkParams,
    inputs: Vec<Receiver<Vec<Block>>>,
    out: Sender<Vec<Chunk>>,
    events: Sender<Vec<FileEvent>>,
    pool: Arc<BufferPool>,
    cancel: Cancel,
) -> std::io::Result<Workers> {
    // Each worker owns one input queue: the read stage routes a file's blocks by its seq.
    let inputs = Arc::new(inputs);
    Workers::spawn("chunk", inputs.len(), move |i| {
        if let Some(input) = inputs.get(i) {
            let mut out = Batcher::new(out.clone(), ITEMS, BYTES);
            let mut events = Batcher::new(events.clone(), ITEMS, usize::MAX);
            worker(params, input, &mut out, &mut events, &pool, &cancel);
            let _ = out.flush().and_then(|()| events.flush());
        }
    })
}

fn worker(
    params: ChunkParams,
    input: &Receiver<Vec<Block>>,
    out: &mut Batcher<Chunk>,
    events: &mut Batcher<FileEvent>,
    pool: &Arc<BufferPool>,
    cancel: &Cancel,
) {
    let mut files: HashMap<u64, FileState> = HashMap::new();
    while let Some(batch) = recv_or_flush(input, || out.flush().and_then(|()| events.flush())) {
        for block in batch {
            if cancel.is_cancelled() {
                files.clear();
                continue;
            }
            if chunk_block(&params, block, &mut files, out, events, pool).is_err() {
                return;
            }
        }
    }
}

/// Cuts one block into chunks (its file's state in `files`); Err when downstream is gone.
fn chunk_block(
    params: &ChunkParams,
    block: Block,
    files: &mut HashMap<u64, FileState>,
    out: &mut Batcher<Chunk>,
    events: &mut Batcher<FileEvent>,
    pool: &Arc<BufferPool>,
) -> Result<(), Closed> {
    let (seq, mut buf, start, offset, last, permit, mut pooled) = match block {
        Block::Failed { seq, path, why } => {
            files.remove(&seq);
            return events.push(FileEvent::Failed { seq, path, why }, 0);
        }
        Block::Holes { seq, holes } => return events.push(FileEvent::Holes { seq, holes }, 0),
        Block::Attrs { seq, attrs } => return events.push(FileEvent::Attrs { seq, attrs }, 0),
        Block::Data { seq, buf, start, offset, last, permit, pooled } => {
            (seq, buf, start, offset, last, permit, pooled)
        }
    };
    let st = files.entry(seq).or_insert(FileState { index: 0, tail: None });
    let mut begin = start;
    let mut carried = 0;
    if let Some((tail, _tail_permit)) = st.tail.take() {
        carried = tail.len();
        // The read stage leaves `max` bytes of headroom in every block after the first, and a
        // tail is always shorter than `max`.
        if tail.len() <= start {
            begin = start - tail.len();
            buf[begin..start].copy_from_slice(&tail);
        } else {
            let mut joined = Vec::with_capacity(tail.len() + buf.len() - start);
            joined.extend_from_slice(&tail);
            joined.extend_from_slice(&buf[start..]);
            let old = std::mem::replace(&mut buf, joined);
            if let Some(p) = pooled.take() {
                pool.give(old, p);
            }
            begin = 0;
        }
    }
    let data = match pooled {
        // The buffer goes back to the pool when its last chunk is dropped.
        Some(p) => Bytes::from_owner(Pooled::new(buf, p, pool.clone())),
        None => Bytes::from(buf),
    }
    .slice(begin..);
    let permit = Arc::new(permit);
    let (cuts, tail_start) = cut(params, &data, !last);
    for (off, len) in cuts {
        let chunk = Chunk { seq, index: st.index, data: data.slice(off..off + len), permit: permit.clone() };
        st.index += 1;
        out.push(chunk, len)?;
    }
    if last {
        let chunks = st.index;
        files.remove(&seq);
        let size = offset + (data.len() - carried) as u64;
        events.push(FileEvent::End { seq, chunks, size }, 0)?;
    } else if tail_start < data.len() {
        st.tail = Some((data.slice(tail_start..), permit));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;

    fn corpus(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    /// Chunking one buffer whole and chunking it as a stream of blocks gives the same chunks,
    /// with blocks after the first in pooled buffers (which go back to the pool, permits and
    /// all, once their chunks are dropped).
    #[test]
    fn streamed_equals_whole() {
        let params = ChunkParams::with_seed(42);
        let data = corpus(20 << 20, 7);
        let (whole, _) = cut(&params, &data, false);

        let budget = MemoryBudget::new(1 << 30);
        let (btx, brx) = crossbeam_channel::unbounded();
        let (ctx, crx) = crossbeam_channel::unbounded();
        let (etx, erx) = crossbeam_channel::unbounded();
        let seg = 3 << 20;
        let pool = BufferPool::new(budget.clone(), params.max as usize + seg);
        let h = spawn(params, vec![brx], ctx, etx, pool.clone(), Cancel::default()).unwrap();
        let mut off = 0;
        while off < data.len() {
            let len = seg.min(data.len() - off);
            let headroom = if off == 0 { 0 } else { params.max as usize };
            let (mut buf, pooled) = match off {
                0 => (Vec::new(), None),
                _ => pool.take(false).map(|(b, p)| (b, Some(p))).unwrap(),
            };
            buf.clear();
            buf.resize(headroom, 0);
            buf.extend_from_slice(&data[off..off + len]);
            let last = off + len == data.len();
            let permit = budget.acquire(1);
            let start = headroom;
            btx.send(vec![Block::Data { seq: 9, buf, start, offset: off as u64, last, permit, pooled }])
                .unwrap();
            off += len;
        }
        drop(btx);
        h.finish();
        let chunks: Vec<Chunk> = crx.iter().flatten().collect();
        let got: Vec<usize> = chunks.iter().map(|c| c.data.len()).collect();
        let want: Vec<usize> = whole.iter().map(|c| c.1).collect();
        assert_eq!(got, want);
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(joined, data);
        let events: Vec<FileEvent> = erx.iter().flatten().collect();
        match &events[..] {
            [FileEvent::End { seq, chunks: n, size }] => {
                assert_eq!((*seq, *n as usize, *size), (9, want.len(), data.len() as u64))
            }
            other => panic!("{other:?}"),
        }
        drop(chunks);
        assert_eq!(budget.used() % (params.max as u64 + seg as u64), 0, "only idle pooled buffers");
        assert!(budget.used() > 0, "pooled buffers came back");
        pool.reclaim();
        assert_eq!(budget.used(), 0);
    }

    /// Pinned boundaries: a change here silently breaks dedup against every existing repository.
    #[test]
    fn golden_boundaries() {
        let params = ChunkParams::with_seed(0x0123_4567_89ab_cdef);
        let data = corpus(8 << 20, 1);
        let (cuts, _) = cut(&params, &data, false);
        let lens: Vec<usize> = cuts.iter().map(|c| c.1).collect();
        assert_eq!(lens, GOLDEN);
    }
    const GOLDEN: &[usize] = &[1298266, 1627216, 968499, 4194304, 300323];

    #[test]
    fn seed_changes_boundaries() {
        let data = corpus(8 << 20, 3);
        let a = cut(&ChunkParams::with_seed(1), &data, false).0;
        let b = cut(&ChunkParams::with_seed(2), &data, false).0;
        assert_ne!(a, b);
    }
}
