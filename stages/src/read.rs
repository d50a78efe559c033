//! read: ReadJob -> Block (to the chunk worker chosen by `seq`). Workers: one io_uring thread with
//! up to `depth` files in flight, or `threads` plain-pread threads when io_uring is unavailable or
//! refused (forced with `ReadMode::Pool`). Each file's attributes (`OpenAttrs`) are read on the
//! descriptor it is read through and sent ahead of its blocks. Reads are uncached
//! (`io::uncached`: pages a read brings into the page cache are dropped, those already there
//! stay) where the file system allows. Holds one buffer per in-flight read; each buffer holds a
//! permit of twice its size, which also covers the compressed copy made downstream.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use ::io::uncached::Uncached;
use ::io::uring::{Outcome, Ring, Stamp};
use ::io::Source;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::batch::{recv_or_flush, Batcher, BYTES, ITEMS};
use crate::budget::{MemoryBudget, Permit};
use crate::msg::{Block, Cancel, Hole, OpenAttrs, ReadJob};

/// Bytes of extended attributes (names and values) the read stage carries for one file: ~1,000
/// files in flight hold at most 64 MiB of them. SELinux labels and ACLs are a few hundred.
const MAX_CARRIED: usize = 64 << 10;
use crate::pool::BufferPool;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// io_uring, falling back to the pool when the kernel refuses it. (The engine picks the
    /// pool itself for sources on memory file systems.)
    Auto,
    Uring,
    Pool,
}

#[derive(Clone, Debug)]
pub struct ReadConfig {
    pub mode: ReadMode,
    /// Bytes per read of a large file.
    pub segment: usize,
    /// Room left in front of every block after a file's first, for the chunker's carried tail
    /// (the chunker's maximum chunk size).
    pub headroom: usize,
    /// Pool threads.
    pub threads: usize,
    /// io_uring: files in flight at once.
    pub depth: u32,
}

pub struct ReadHandle {
    threads: Vec<JoinHandle<()>>,
    /// The mode actually in use (`Uring` or `Pool`), and why the pool was chosen under `Auto`.
    pub mode: ReadMode,
    pub fallback_reason: Option<String>,
}

impl ReadHandle {
    pub fn finish(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Files larger than one segment keep their last block's unchunked tail, and with it that
/// block's permit, until their next block arrives. Were many such files read at once, their
/// tails could hold the whole budget while each waits for budget for its next block: a
/// deadlock. So only as many large files are read at once as can each hold two blocks.
struct LargeSlots {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl LargeSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn try_take(&self) -> bool {
        let mut u = self.lock();
        let ok = *u < self.max;
        if ok {
            *u += 1;
        }
        ok
    }
    fn take(&self) {
        let mut u = self.lock();
        while *u >= self.max {
            u = self.freed.wait(u).unwrap_or_else(|p| p.into_inner());
        }
        *u += 1;
    }
    fn give(&self) {
        *self.lock() -= 1;
        self.freed.notify_one();
    }
}

struct Shared {
    large: LargeSlots,
    cfg: ReadConfig,
    source: Arc<dyn Source>,
    budget: MemoryBudget,
    /// Blocks for each chunk worker, sent in batches (`crate::batch`): every reader thread
    /// flushes them all before it waits (for a job, for budget, for a large-file slot, for the
    /// ring), so no block sits in a batch while the readers sleep.
    out: Vec<Mutex<Batcher<Block>>>,
    /// Buffers for the blocks of large files, kept for reuse (`crate::pool`).
    pool: Arc<BufferPool>,
    /// Reads leave the page cache as they found it where the file system allows.
    uncached: Uncached,
    cancel: Cancel,
}

impl Shared {
    fn is_large(&self, job: &ReadJob) -> bool {
        job.meta.size > self.cfg.segment as u64
    }

    fn send(&self, block: Block) {
        let i = (block.seq() % self.out.len() as u64) as usize;
        let weight = match &block {
            Block::Data { buf, .. } => buf.len(),
            Block::Holes { .. } | Block::Attrs { .. } | Block::Failed { .. } => 0,
        };
        if let Some(out) = self.out.get(i) {
            // A closed channel means the pipeline is shutting down; dropping the block is right.
            let _ = out.lock().unwrap_or_else(|p| p.into_inner()).push(block, weight);
        }
    }

    /// Sends every gathered block: called before any wait.
    fn flush(&self) {
        for out in &self.out {
            let _ = out.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }

    /// Budget for a read, flushing first (and freeing idle pooled buffers) if it has to wait.
    fn acquire(&self, bytes: u64) -> Permit {
        self.budget.try_acquire(bytes).unwrap_or_else(|| {
            self.flush();
            self.budget.acquire_or(bytes, || self.pool.reclaim())
        })
    }

    fn get(&self, bytes: u64, wait: bool) -> Option<Permit> {
        if wait {
            Some(self.acquire(bytes))
        } else {
            self.budget.try_acquire(bytes)
        }
    }

    /// Budget and a buffer for a read of `len` bytes after `headroom`: (buffer, permit for the
    /// data, permit for a pooled buffer). A block of a large file gets a pooled buffer, whose
    /// own permit covers its whole capacity (possibly resident from an earlier block); its
    /// contents are stale, its length anything. Any other block gets a new buffer of `headroom`
    /// zeroes, and one permit for twice its size, as before. Without `wait`, None when the
    /// budget is short.
    fn reserve(&self, job: &ReadJob, headroom: usize, len: usize, wait: bool) -> Option<Reserved> {
        if self.is_large(job) && headroom + len <= self.pool.cap() {
            if wait {
                self.flush();
            }
            let (buf, pooled) = self.pool.take(wait)?;
            let Some(permit) = self.get((headroom + len) as u64, wait) else {
                self.pool.give(buf, pooled);
                return None;
            };
            return Some(Reserved { buf, permit, pooled: Some(pooled) });
        }
        let permit = self.get(Self::permit_bytes(headroom, len), wait)?;
        let mut buf = Vec::with_capacity(headroom + len);
        buf.resize(headroom, 0);
        Some(Reserved { buf, permit, pooled: None })
    }

    /// The next job, flushing first if it has to wait.
    fn next_job(&self, jobs: &Receiver<ReadJob>) -> Option<ReadJob> {
        recv_or_flush(jobs, || {
            self.flush();
            Ok(())
        })
    }

    fn fail(&self, job: &ReadJob, why: String) {
        self.send(Block::Failed { seq: job.seq, path: job.path.clone(), why });
    }

    /// (headroom, bytes to read) for the read at `offset`, which stops at the next hole. Only
    /// a file's first block needs no headroom: nothing can be carried into it.
    fn shape(&self, job: &ReadJob, layout: &Layout, offset: u64) -> (usize, usize) {
        let end = layout.data_end(job.meta.size);
        let len = end.saturating_sub(offset).min(self.cfg.segment as u64) as usize;
        let headroom = if offset == layout.skipped { 0 } else { self.cfg.headroom };
        (headroom, len)
    }

    fn permit_bytes(headroom: usize, len: usize) -> u64 {
        2 * (headroom + len) as u64
    }

    /// Opens a job's file; files of size zero need no reading and are done at once.
    fn open(&self, job: &ReadJob) -> Option<Arc<File>> {
        if job.meta.size == 0 {
            let permit = self.budget.acquire(0);
            let last = true;
            let (buf, pooled) = (Vec::new(), None);
            self.send(Block::Data { seq: job.seq, buf, start: 0, offset: 0, last, permit, pooled });
            return None;
        }
        match self.source.open(&job.path) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                let why = if e.kind() == io::ErrorKind::NotFound {
                    "vanished before it could be read".to_string()
                } else {
                    format!("cannot open: {e}")
                };
                self.fail(job, why);
                None
            }
        }
    }

    /// A file's layout once it is open, and where its first read is: its attributes are read
    /// and sent first, then its holes, when it may have any, are found and sent ahead of its
    /// blocks. None when the file is done already (nothing but a hole: one empty block ends it)
    /// or failed (reported).
    fn layout(&self, job: &ReadJob, file: &File) -> Option<(Layout, u64)> {
        // Here, on the descriptor open for the content, rather than by the builder through the
        // path: that cost an open and a close per file (+32 % system time on 300,000 small
        // files, bench/README.md). On the io_uring thread too: io_uring has no FS_IOC_GETFLAGS
        // (the ioctl, flistxattr and one fgetxattr per attribute; a slow network or FUSE file
        // system delays the ring's other files by as much). Many files' attributes are in
        // flight at once, outside the byte budget: only small ones are carried; larger ones
        // (past `MAX_CARRIED`) the builder reads by path, one file at a time.
        let fd = std::os::fd::AsFd::as_fd(file);
        let xattrs = ::io::attrs::xattrs_upto(::io::attrs::At::Fd(fd), MAX_CARRIED).transpose();
        if let Some(xattrs) = xattrs {
            let attrs = OpenAttrs { xattrs, flags: ::io::attrs::flags(fd) };
            self.send(Block::Attrs { seq: job.seq, attrs });
        }
        let size = job.meta.size;
        if !::io::sparse::may_have_holes(size, job.meta.blocks) {
            return Some((Layout::default(), 0));
        }
        let holes = match ::io::sparse::holes(file, size) {
            Ok(h) => h,
            Err(e) => {
                self.fail(job, format!("cannot find its holes: {e}"));
                return None;
            }
        };
        if holes.is_empty() {
            return Some((Layout::default(), 0));
        }
        self.send(Block::Holes { seq: job.seq, holes: holes.clone() });
        let mut layout = Layout { holes, passed: 0, skipped: 0 };
        let first = layout.skip(0);
        if first >= size {
            // Nothing to read, but checked like every file: one that changed since the scan is
            // not saved as what it was.
            let stamp = stamp_of(file).map_err(|e| format!("cannot stat after reading: {e}"));
            if let Err(why) = stamp.and_then(|st| unchanged(&st, job)) {
                self.fail(job, why);
                return None;
            }
            let (permit, buf, last) = (self.budget.acquire(0), Vec::new(), true);
            self.send(Block::Data { seq: job.seq, buf, start: 0, offset: 0, last, permit, pooled: None });
            return None;
        }
        Some((layout, first))
    }

    /// Turns a finished read at `offset` into its block: (block, next offset, last). None when
    /// the file failed (reported).
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        job: &ReadJob,
        layout: &mut Layout,
        mut buf: Vec<u8>,
        headroom: usize,
        offset: u64,
        result: io::Result<usize>,
        permit: Permit,
        pooled: Option<Permit>,
    ) -> Option<(Block, u64, bool)> {
        let res = self.source.after_read(&job.path, offset, &mut buf[headroom..], result);
        let n = match res {
            Ok(0) => {
                self.fail(job, "changed while being read (it shrank)".into());
                return None;
            }
            Ok(n) => n.min(buf.len() - headroom),
            Err(e) => {
                self.fail(job, format!("read error at offset {offset}: {e}"));
                return None;
            }
        };
        buf.truncate(headroom + n);
        // Downstream, a block's offset counts only data: the holes before it are left out.
        let data_offset = offset - layout.skipped;
        let next = layout.skip(offset + n as u64);
        let last = next >= job.meta.size;
        let block =
            Block::Data { seq: job.seq, buf, start: headroom, offset: data_offset, last, permit, pooled };
        Some((block, next, last))
    }

    /// Handles a finished read (the plain path). Returns the next offset to read, or None when
    /// the file is done (sent whole, or failed).
    #[allow(clippy::too_many_arguments)]
    fn completed(
        &self,
        job: &ReadJob,
        layout: &mut Layout,
        file: &File,
        buf: Vec<u8>,
        headroom: usize,
        offset: u64,
        result: io::Result<usize>,
        permit: Permit,
        pooled: Option<Permit>,
    ) -> Option<u64> {
        let (block, next, last) = self.block(job, layout, buf, headroom, offset, result, permit, pooled)?;
        if last {
            let stamp = stamp_of(file).map_err(|e| format!("cannot stat after reading: {e}"));
            if let Err(why) = stamp.and_then(|st| unchanged(&st, job)) {
                self.fail(job, why);
                return None;
            }
        }
        self.send(block);
        (!last).then_some(next)
    }
}

/// Where a file's data is: the holes every read skips (none for most files).
#[derive(Default)]
struct Layout {
    holes: Vec<Hole>,
    /// Holes wholly before the read position, and their bytes.
    passed: usize,
    skipped: u64,
}

impl Layout {
    /// The read position `pos`, moved past a hole that starts there.
    fn skip(&mut self, mut pos: u64) -> u64 {
        while let Some(h) = self.holes.get(self.passed) {
            if h.offset > pos {
                break;
            }
            pos = pos.max(h.offset.saturating_add(h.len));
            self.skipped += h.len;
            self.passed += 1;
        }
        pos
    }

    /// Where the run of data at the read position ends: the next hole, or the end.
    fn data_end(&self, size: u64) -> u64 {
        self.holes.get(self.passed).map_or(size, |h| h.offset.min(size))
    }
}

fn stamp_of(file: &File) -> io::Result<Stamp> {
    let md = file.metadata()?;
    use ::io::uring::ns;
    Ok(Stamp {
        size: md.size(),
        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
    })
}

/// A file whose size, mtime or ctime moved while it was read is not saved half old, half new.
fn unchanged(st: &Stamp, job: &ReadJob) -> Result<(), String> {
    if st.size != job.meta.size || st.mtime_ns != job.meta.mtime_ns || st.ctime_ns != job.meta.ctime_ns {
        return Err("changed while being read".into());
    }
    Ok(())
}

pub fn spawn(
    cfg: ReadConfig,
    source: Arc<dyn Source>,
    budget: MemoryBudget,
    jobs: Receiver<ReadJob>,
    out: Vec<Sender<Vec<Block>>>,
    pool: Arc<BufferPool>,
    cancel: Cancel,
) -> io::Result<ReadHandle> {
    let mode = cfg.mode;
    let block = Shared::permit_bytes(cfg.headroom, cfg.segment);
    let max = (budget.limit() / (4 * block)).max(1) as usize;
    let large = LargeSlots { max, used: Mutex::new(0), freed: Condvar::new() };
    let out = out.into_iter().map(|tx| Mutex::new(Batcher::new(tx, ITEMS, BYTES))).collect();
    let uncached = Uncached::default();
    let shared = Arc::new(Shared { large, cfg, source, budget, out, pool, uncached, cancel });
    let mut fallback_reason = None;
    if mode != ReadMode::Pool {
        match Ring::new(shared.cfg.depth.max(1)) {
            Ok(ring) => {
                let t = std::thread::Builder::new().name("read-uring".into()).spawn(move || {
                    UringReader {
                        s: shared,
                        ring,
                        files: HashMap::new(),
                        ready: VecDeque::new(),
                        deferred: VecDeque::new(),
                    }
                    .run(jobs)
                })?;
                return Ok(ReadHandle { threads: vec![t], mode: ReadMode::Uring, fallback_reason });
            }
            Err(e) if mode == ReadMode::Uring => return Err(e),
            Err(e) => fallback_reason = Some(format!("io_uring unavailable ({e}); using read threads")),
        }
    }
    let mut threads = Vec::new();
    for i in 0..shared.cfg.threads.max(1) {
        let s = shared.clone();
        let jobs = jobs.clone();
        threads.push(
            std::thread::Builder::new().name(format!("read-{i}")).spawn(move || pool_worker(&s, &jobs))?,
        );
    }
    Ok(ReadHandle { threads, mode: ReadMode::Pool, fallback_reason })
}

fn pool_worker(s: &Shared, jobs: &Receiver<ReadJob>) {
    while let Some(job) = s.next_job(jobs) {
        if s.cancel.is_cancelled() {
            continue;
        }
        let large = s.is_large(&job);
        if large && !s.large.try_take() {
            s.flush();
            s.large.take();
        }
        read_file(s, &job);
        if large {
            s.large.give();
        }
    }
    s.flush();
}

fn read_file(s: &Shared, job: &ReadJob) {
    let Some(file) = s.open(job) else { return };
    let Some((mut layout, mut offset)) = s.layout(job, &file) else { return };
    loop {
        let (headroom, len) = s.shape(job, &layout, offset);
        let Some(Reserved { mut buf, permit, pooled }) = s.reserve(job, headroom, len, true) else { break };
        // A pooled buffer's stale bytes are overwritten, not zeroed first.
        buf.resize(headroom + len, 0);
        let result = read_full(&s.uncached, job.meta.dev, &file, &mut buf[headroom..], offset);
        match s.completed(job, &mut layout, &file, buf, headroom, offset, result, permit, pooled) {
            Some(next) => offset = next,
            None => break,
        }
    }
}

/// A read's buffer and budget (`Shared::reserve`).
struct Reserved {
    buf: Vec<u8>,
    permit: Permit,
    pooled: Option<Permit>,
}

/// pread (uncached where the file system on `dev` allows) until `buf` is full or the file ends.
fn read_full(uncached: &Uncached, dev: u64, file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match uncached.read_at(file, dev, &mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

struct InFlight {
    job: ReadJob,
    /// None while the ring opens it.
    file: Option<Arc<File>>,
    layout: Layout,
    next: u64,
    headroom: usize,
    permit: Option<Permit>,
    pooled: Option<Permit>,
    /// Holds a large-file slot.
    large: bool,
    /// The RWF_* flags and length of the read in flight (made again without the flags where
    /// the file system refuses them).
    flags: u32,
    want: usize,
    /// The file's last block, held until a statx shows the file did not change while read.
    last: Option<Block>,
}

/// The token of close operations (their completions need no handling).
const CLOSE: u64 = u64::MAX;

struct UringReader {
    s: Arc<Shared>,
    ring: Ring,
    /// Files being read; each has at most one read in the ring, so blocks leave in order.
    files: HashMap<u64, InFlight>,
    /// Files whose next read waits for budget.
    ready: VecDeque<u64>,
    /// Large files waiting for a slot.
    deferred: VecDeque<ReadJob>,
}

/// Large files waiting for a slot while small files go ahead.
const MAX_DEFERRED: usize = 16;

impl UringReader {
    /// The next job to start: a deferred large file once a slot frees, else a new job (waiting
    /// for one only when nothing is in flight). Large files without a slot are deferred.
    fn next_job(&mut self, jobs: &Receiver<ReadJob>, jobs_open: &mut bool) -> Option<(ReadJob, bool)> {
        loop {
            if !self.deferred.is_empty() && self.s.large.try_take() {
                return self.deferred.pop_front().map(|j| (j, true));
            }
            if !*jobs_open || self.deferred.len() >= MAX_DEFERRED {
                return None;
            }
            let job = if self.files.is_empty() && self.deferred.is_empty() {
                self.s.next_job(jobs)
            } else {
                match jobs.try_recv() {
                    Ok(j) => Some(j),
                    Err(TryRecvError::Empty) => return None,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            let Some(job) = job else {
                *jobs_open = false;
                continue;
            };
            if !self.s.is_large(&job) {
                return Some((job, false));
            }
            if self.s.large.try_take() {
                return Some((job, true));
            }
            self.deferred.push_back(job);
        }
    }

    /// Starts a file: opened through the ring when the source allows it (each step of a small
    /// file, open, read, statx and close, then shares a system call with other files' steps),
    /// else opened here.
    fn start(&mut self, job: ReadJob, large: bool) {
        let seq = job.seq;
        // A path the kernel cannot take in one call is opened here, a piece at a time.
        let by_ring = job.meta.size > 0 && self.ring.file_ops() && !::io::longpath::too_long(&job.path);
        let flags = self.s.source.open_flags().filter(|_| by_ring);
        let path = flags.and_then(|_| CString::new(job.path.as_os_str().as_bytes()).ok());
        let (file, layout, next) = match (flags, path) {
            (Some(flags), Some(path)) => {
                self.ring.open(path, flags, seq);
                (None, Layout::default(), 0)
            }
            _ => match self.s.open(&job).and_then(|f| Some((self.s.layout(&job, &f)?, f))) {
                Some(((layout, next), file)) => (Some(file), layout, next),
                None => {
                    if large {
                        self.s.large.give();
                    }
                    return;
                }
            },
        };
        let ready = file.is_some();
        let (headroom, permit, pooled, last) = (0, None, None, None);
        self.files.insert(
            seq,
            InFlight { job, file, layout, next, headroom, permit, pooled, large, flags: 0, want: 0, last },
        );
        if ready {
            self.ready.push_back(seq);
        }
    }

    /// A file is done (sent whole, or failed): its slot is freed and it is closed in the ring.
    fn end(&mut self, mut f: InFlight) {
        if f.large {
            self.s.large.give();
        }
        if let Some(file) = f.file.take().and_then(|a| Arc::try_unwrap(a).ok()) {
            if self.ring.file_ops() {
                self.ring.close(file, CLOSE);
            }
        }
    }

    fn opened(&mut self, seq: u64, res: io::Result<File>) {
        let Some(mut f) = self.files.remove(&seq) else { return };
        let file = match res {
            Ok(file) => Some(Arc::new(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.s.fail(&f.job, "vanished before it could be read".into());
                None
            }
            // Any other refusal (O_NOATIME on another user's file, ...) is retried by the
            // source itself, which adapts or names the reason.
            Err(_) => self.s.open(&f.job),
        };
        match file.map(|file| (self.s.layout(&f.job, &file), file)) {
            Some((Some((layout, next)), file)) => {
                (f.file, f.layout, f.next) = (Some(file), layout, next);
                self.files.insert(seq, f);
                self.ready.push_back(seq);
            }
            Some((None, file)) => {
                f.file = Some(file);
                self.end(f)
            }
            None => self.end(f),
        }
    }

    fn read_done(&mut self, seq: u64, file: Arc<File>, buf: Vec<u8>, offset: u64, result: io::Result<usize>) {
        let Some(mut f) = self.files.remove(&seq) else { return };
        if let Err(e) = &result {
            if Uncached::is_refusal(f.flags, e) {
                // The file system takes no uncached reads: this one again, plainly, and the
                // rest of its files plainly from now on.
                self.s.uncached.refuse(f.job.meta.dev);
                f.flags = 0;
                self.ring.read(file, buf, f.want, offset, 0, seq);
                self.files.insert(seq, f);
                return;
            }
        }
        let Some(permit) = f.permit.take() else { return };
        let pooled = f.pooled.take();
        match self.s.block(&f.job, &mut f.layout, buf, f.headroom, offset, result, permit, pooled) {
            None => {
                drop(file);
                self.end(f);
            }
            Some((block, _, true)) if self.ring.file_ops() => {
                f.last = Some(block);
                self.ring.statx(file, seq);
                self.files.insert(seq, f);
            }
            Some((block, _, true)) => {
                f.last = Some(block);
                let stamp = stamp_of(&file);
                self.files.insert(seq, f);
                self.verified(seq, file, stamp);
            }
            Some((block, next, false)) => {
                self.s.send(block);
                f.next = next;
                self.files.insert(seq, f);
                self.ready.push_back(seq);
            }
        }
    }

    fn verified(&mut self, seq: u64, file: Arc<File>, result: io::Result<Stamp>) {
        drop(file);
        let Some(mut f) = self.files.remove(&seq) else { return };
        let check = result.map_err(|e| format!("cannot stat after reading: {e}"));
        match (check.and_then(|st| unchanged(&st, &f.job)), f.last.take()) {
            (Ok(()), Some(block)) => self.s.send(block),
            (Err(why), _) => self.s.fail(&f.job, why),
            (Ok(()), None) => {}
        }
        self.end(f);
    }

    fn run(mut self, jobs: Receiver<ReadJob>) {
        let mut jobs_open = true;
        loop {
            self.submit_ready();
            // Take new files while there is room in the ring and nothing waits for budget.
            while self.ready.is_empty() && self.files.len() < self.s.cfg.depth as usize {
                let Some((job, large)) = self.next_job(&jobs, &mut jobs_open) else { break };
                if self.s.cancel.is_cancelled() {
                    if large {
                        self.s.large.give();
                    }
                    continue;
                }
                self.start(job, large);
                self.submit_ready();
            }
            if self.files.is_empty() && self.ring.in_flight() == 0 {
                if !jobs_open && self.deferred.is_empty() {
                    self.s.flush();
                    return;
                }
                continue;
            }
            self.s.flush();
            let done = match self.ring.complete(1) {
                Ok(d) => d,
                Err(e) => {
                    // The ring itself failed: fail every file in it rather than hang.
                    for (_, f) in self.files.drain() {
                        self.s.fail(&f.job, format!("io_uring failed: {e}"));
                        if f.large {
                            self.s.large.give();
                        }
                    }
                    self.ready.clear();
                    continue;
                }
            };
            for c in done {
                match c.outcome {
                    Outcome::Open(res) => self.opened(c.token, res),
                    Outcome::Read { file, buf, offset, result } => {
                        self.read_done(c.token, file, buf, offset, result)
                    }
                    Outcome::Statx { file, result } => self.verified(c.token, file, result),
                    Outcome::Closed(_) => {}
                }
            }
        }
    }

    /// Submits the next read of each ready file while the budget allows. With nothing in flight
    /// it waits for budget (others' progress downstream frees it); otherwise it leaves the file
    /// ready and lets completions flow first, so a full budget never stalls the ring.
    fn submit_ready(&mut self) {
        while let Some(&seq) = self.ready.front() {
            let Some(f) = self.files.get_mut(&seq) else {
                self.ready.pop_front();
                continue;
            };
            let (headroom, len) = self.s.shape(&f.job, &f.layout, f.next);
            let wait = self.ring.in_flight() == 0;
            let Some(Reserved { mut buf, permit, pooled }) = self.s.reserve(&f.job, headroom, len, wait)
            else {
                return;
            };
            self.ready.pop_front();
            f.permit = Some(permit);
            f.pooled = pooled;
            f.headroom = headroom;
            let Some(file) = f.file.clone() else { continue };
            // The ring reads after the buffer's length: `headroom` bytes, stale ones included.
            buf.truncate(headroom);
            buf.resize(headroom, 0);
            (f.flags, f.want) = (self.s.uncached.flags(f.job.meta.dev), len);
            self.ring.read(file, buf, len, f.next, f.flags, seq);
        }
    }
}
