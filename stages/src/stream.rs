//! stream: a pipe -> one `ScanEvent::File` (to the tree builder) and its `Block`s (to the chunk
//! worker chosen by its seq). Stands in for scan and read when standard input, or a command's
//! output, is backed up as one file (`bakare run --stdin`). Workers: one thread. Holds one block
//! at a time, in a pooled buffer like a large file's blocks, so the input is never held whole.
//!
//! A pipe has no size in advance and cannot be stat'ed or opened again: the file's size is what
//! was read when the input ended, carried to the builder by the chunker's `FileEvent::End` (the
//! event's `Meta::size` is 0). A block that fills its buffer is not known to be the last, so a
//! stream that ends exactly on a block boundary ends with an empty last block.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::budget::MemoryBudget;
use crate::msg::{Block, Cancel, Meta, Progress, ScanEvent};
use crate::pool::BufferPool;

/// The seq of the one file.
const SEQ: u64 = 0;

pub struct StreamConfig {
    /// The file's name at the snapshot root.
    pub name: OsString,
    /// Its metadata, but for the size (see the module doc).
    pub meta: Meta,
    /// Bytes per block (at most: a pooled buffer holds `headroom` and a block).
    pub segment: usize,
    /// Room in front of every block after the first, for the chunker's carried tail.
    pub headroom: usize,
    pub progress: Arc<Progress>,
}

pub struct StreamHandle {
    thread: JoinHandle<io::Result<u64>>,
}

impl StreamHandle {
    /// Waits for the input to end: the bytes read, or why reading stopped.
    pub fn finish(self) -> io::Result<u64> {
        self.thread.join().unwrap_or_else(|_| Err(io::Error::other("the stream reader panicked")))
    }
}

pub fn spawn(
    cfg: StreamConfig,
    input: File,
    budget: MemoryBudget,
    pool: Arc<BufferPool>,
    events: Sender<Vec<ScanEvent>>,
    out: Vec<Sender<Vec<Block>>>,
    cancel: Cancel,
) -> io::Result<StreamHandle> {
    let thread = std::thread::Builder::new().name("stream".into()).spawn(move || {
        Progress::add(&cfg.progress.files_total, 1);
        cfg.progress.scan_done.store(true, std::sync::atomic::Ordering::Relaxed);
        let file = ScanEvent::File { seq: SEQ, name: cfg.name.clone(), meta: cfg.meta.clone() };
        // The builder waits for the file's blocks once it has this event; closing the events
        // channel then ends the scan side.
        events.send(vec![file]).map_err(|_| io::Error::other("the tree builder stopped"))?;
        drop(events);
        let i = (SEQ % out.len().max(1) as u64) as usize;
        let Some(out) = out.get(i) else { return Err(io::Error::other("no chunk worker")) };
        let r = pump(&cfg, input, &budget, &pool, out, &cancel);
        if let Err(e) = &r {
            let why = format!("read error: {e}");
            let _ = out.send(vec![Block::Failed { seq: SEQ, path: PathBuf::from(&cfg.name), why }]);
        }
        r
    })?;
    Ok(StreamHandle { thread })
}

/// Reads `input` to its end, block by block; returns the bytes read.
fn pump(
    cfg: &StreamConfig,
    mut input: File,
    budget: &MemoryBudget,
    pool: &Arc<BufferPool>,
    out: &Sender<Vec<Block>>,
    cancel: &Cancel,
) -> io::Result<u64> {
    let mut offset = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        let headroom = if offset == 0 { 0 } else { cfg.headroom };
        let len = cfg.segment.min(pool.cap().saturating_sub(headroom)).max(1);
        let Some((mut buf, pooled)) = pool.take(true) else { continue };
        // The data's own permit, as the read stage takes it for a block of a large file.
        let permit = budget.acquire_or((headroom + len) as u64, || pool.reclaim());
        // A pooled buffer's stale bytes are overwritten, not zeroed first.
        buf.resize(headroom + len, 0);
        let n = read_full(&mut input, &mut buf[headroom..])?;
        buf.truncate(headroom + n);
        let last = n < len;
        let block =
            Block::Data { seq: SEQ, buf, start: headroom, offset, last, permit, pooled: Some(pooled) };
        out.send(vec![block]).map_err(|_| io::Error::other("the chunker stopped"))?;
        offset += n as u64;
        Progress::add(&cfg.progress.bytes_total, n as u64);
        if last {
            return Ok(offset);
        }
    }
}

/// read(2) until `buf` is full or the input ends (a pipe returns what it has).
fn read_full(input: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{self, ChunkParams};
    use crate::msg::{FileEvent, FileKind};
    use std::io::Write;

    fn meta() -> Meta {
        Meta {
            kind: FileKind::File,
            mode: 0o100600,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
            nlink: 1,
            rdev: 0,
            blocks: 0,
        }
    }

    /// Streamed through a pipe and chunked, the input comes out whole and in order, with its
    /// size in the end event, whether or not it ends on a block boundary.
    #[test]
    fn pipe_through_chunker() {
        for size in [0usize, 1, 3 << 20, 6 << 20, (6 << 20) + 17] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let (reader, mut writer) = std::io::pipe().unwrap();
            let input = File::from(std::os::fd::OwnedFd::from(reader));
            let feed = data.clone();
            let w = std::thread::spawn(move || writer.write_all(&feed).unwrap());
            let params = ChunkParams { min: 64 << 10, avg: 256 << 10, max: 1 << 20, seed: 1 };
            let seg = 3 << 20;
            let budget = MemoryBudget::new(64 << 20);
            let pool = BufferPool::new(budget.clone(), params.max as usize + seg);
            let (etx, erx) = crossbeam_channel::unbounded();
            let (btx, brx) = crossbeam_channel::bounded(2);
            let (ctx, crx) = crossbeam_channel::unbounded();
            let (ftx, frx) = crossbeam_channel::unbounded();
            let cancel = Cancel::default();
            let ch = chunk::spawn(params, vec![brx], ctx, ftx, pool.clone(), cancel.clone()).unwrap();
            let cfg = StreamConfig {
                name: "dump".into(),
                meta: meta(),
                segment: seg,
                headroom: params.max as usize,
                progress: Arc::default(),
            };
            let h = spawn(cfg, input, budget, pool, etx, vec![btx], cancel).unwrap();
            // Chunks are drained as they come: the budget is smaller than the input.
            let mut joined = Vec::new();
            let reader = std::thread::spawn(move || {
                for c in crx.iter().flatten() {
                    joined.extend_from_slice(&c.data);
                }
                joined
            });
            assert_eq!(h.finish().unwrap(), size as u64);
            w.join().unwrap();
            ch.finish();
            assert_eq!(reader.join().unwrap(), data, "size {size}");
            let evs: Vec<ScanEvent> = erx.iter().flatten().collect();
            assert!(matches!(&evs[..], [ScanEvent::File { seq: 0, .. }]));
            let ends: Vec<FileEvent> = frx.iter().flatten().collect();
            match &ends[..] {
                [FileEvent::End { seq: 0, size: s, .. }] => assert_eq!(*s, size as u64),
                other => panic!("{other:?}"),
            }
        }
    }
}
