//! backup: wires the stages into one pipeline and builds the trees on the calling thread.
//!
//! The tree builder takes the scan's events in order and, for each file, waits for that file's
//! chunk ids (FileEvents from the chunk and hash stages, drained continuously so those stages
//! never block on it). Directories become tree blobs that join the data blobs at the compress
//! stage. When the scan is over and every stage has drained, the packs are committed, then the
//! session's index segment, then the snapshot (pending, then committed).
use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};
use io::Source;
use stages::compress::CompressConfig;
use stages::encrypt::EncryptConfig;
use stages::read::{ReadConfig, ReadMode};
use stages::scan::{Exclude, Known, ScanConfig};
use stages::{BlobId, BlobKind, Cancel, Dedup, FileEvent, MemoryBudget, Meta, NewBlob, Progress, ScanEvent};

use crate::error::{Error, Result};
use crate::filescache::{self, CacheEntry, CacheReader, CacheWriter};
use crate::index::{encode_segment, Index, SessionDedup};
use crate::pack::PackSink;
use crate::repo::Repository;
use crate::snapshot::{FileError, Snapshot, Stats};
use crate::tree::{Node, NodeKind, Tree, MAX_ENTRIES};

/// Bytes per read of a large file. 8 MiB: large enough that per-read overhead vanishes, small
/// enough that a 64 MiB budget keeps several reads in flight.
pub const SEGMENT: usize = 8 << 20;
/// The data budget when no --mem-limit is given.
pub const DEFAULT_BUDGET: u64 = 64 << 20;
/// What --mem-limit keeps back from the data budget for everything that is not data in flight:
/// the binary, thread stacks, allocator slack and channel buffers (measured: ~25 MiB RSS with an
/// empty pipeline), the compress workers' bundles (~1.5 MiB each), plus the index (see
/// `index_reserve`).
pub const FIXED_RESERVE: u64 = 40 << 20;

/// The smallest data budget: two full blocks of a large file (the chunker keeps the tail of one
/// while the next is read, each holding twice its 8 MiB plus 4 MiB of headroom). Less deadlocks
/// as soon as a file spans several blocks.
pub const MIN_BUDGET: u64 = 2 * 2 * (SEGMENT as u64 + (4 << 20));

pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<String>,
    pub mem_limit: Option<u64>,
    pub read_mode: ReadMode,
    pub workers: usize,
    pub source: Arc<dyn Source>,
    pub host: String,
    pub tags: Vec<String>,
    /// Where files caches live; None disables the cache (every file is read).
    pub cache_dir: Option<PathBuf>,
    /// Updated as the backup runs, for a progress display.
    pub progress: Arc<Progress>,
}

pub struct BackupResult {
    pub snapshot_id: String,
    pub snapshot: Snapshot,
    pub warnings: Vec<String>,
    pub read_mode: ReadMode,
    pub budget: u64,
    pub budget_peak: u64,
}

/// Memory the in-memory index takes, estimated per blob (hash map entry + id).
fn index_reserve(blobs: usize) -> u64 {
    blobs as u64 * 96
}

/// Patterns from the user, plus directories that are always left out (bakare's own repository
/// and caches: backing them up would chase files that change while they are written).
pub fn build_exclude(patterns: &[String], always: Vec<PathBuf>) -> Result<Option<Exclude>> {
    if patterns.is_empty() && always.is_empty() {
        return Ok(None);
    }
    // Like restic: a pattern without '/' matches a name anywhere, one with '/' the whole path.
    let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
    for p in patterns {
        let g = Glob::new(p).map_err(|e| Error::Invalid(format!("exclude pattern {p:?}: {e}")))?;
        if p.contains('/') {
            paths.add(g);
        } else {
            names.add(g);
        }
    }
    let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::Invalid(e.to_string()));
    let (names, paths): (GlobSet, GlobSet) = (build(names)?, build(paths)?);
    Ok(Some(Arc::new(move |path: &Path, _is_dir: bool| {
        always.iter().any(|a| a == path)
            || paths.is_match(path)
            || path.file_name().is_some_and(|n| names.is_match(n))
    })))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn default_host() -> String {
    hostname()
}

pub fn backup(repo: &Repository, opts: BackupOptions) -> Result<BackupResult> {
    let started = Instant::now();
    let time_ns = crate::clock::now_ns();
    let (index, mut warnings) = repo.load_index()?;
    let roots = stages::scan::normalize_roots(&opts.paths).map_err(|e| Error::io(".", e))?;
    for r in &roots {
        if std::fs::symlink_metadata(r).is_err() {
            return Err(Error::Invalid(format!("{}: no such file or directory", r.display())));
        }
    }
    let budget_bytes = match opts.mem_limit {
        None => DEFAULT_BUDGET,
        Some(limit) => {
            let reserve = FIXED_RESERVE + index_reserve(index.blob_count());
            if limit < reserve + MIN_BUDGET {
                return Err(Error::Invalid(format!(
                    "--mem-limit {} MiB is too small for this repository (needs at least {} MiB)",
                    limit >> 20,
                    (reserve + MIN_BUDGET).div_ceil(1 << 20)
                )));
            }
            limit - reserve
        }
    };
    let budget = MemoryBudget::new(budget_bytes);
    let cancel = Cancel::default();
    let workers = opts.workers.max(1);
    let params = repo.chunk_params();
    let dedup = Arc::new(SessionDedup::new(Arc::new(index)));

    let (ev_tx, ev_rx) = bounded::<ScanEvent>(4096);
    let (job_tx, job_rx) = bounded(1024);
    let (fe_tx, fe_rx) = bounded::<FileEvent>(4096);
    let (blk_txs, blk_rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(4)).unzip();
    let (chunk_tx, chunk_rx) = bounded(64);
    let (new_tx, new_rx) = bounded::<NewBlob>(64);
    let (framed_tx, framed_rx) = bounded(64);
    let (sealed_txs, sealed_rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(32)).unzip();

    let sinks: Vec<PackSink> = (0..workers)
        .map(|_| {
            PackSink::new(
                repo.backend.clone(),
                repo.key.recipient.clone(),
                repo.wk.catalog_key.clone(),
                repo.config.pack_size,
            )
        })
        .collect();
    let spawn_err = |e: std::io::Error| Error::Pipeline(format!("cannot start a stage: {e}"));
    let write = stages::write::spawn(sinks, sealed_rxs, cancel.clone()).map_err(spawn_err)?;
    let enc_cfg = EncryptConfig { workers, rotate_after: repo.config.pack_size };
    let encrypt =
        stages::encrypt::spawn(enc_cfg, framed_rx, sealed_txs, cancel.clone()).map_err(spawn_err)?;
    let comp_cfg = CompressConfig { workers, level: 1 };
    let compress = stages::compress::spawn(comp_cfg, new_rx, framed_tx, cancel.clone()).map_err(spawn_err)?;

    let hash = stages::hash::spawn(
        workers,
        *repo.wk.id_key.as_bytes(),
        dedup.clone(),
        chunk_rx,
        new_tx.clone(),
        fe_tx.clone(),
        cancel.clone(),
    )
    .map_err(spawn_err)?;
    let chunk = stages::chunk::spawn(params, blk_rxs, chunk_tx, fe_tx, cancel.clone()).map_err(spawn_err)?;
    let read_cfg = ReadConfig {
        mode: opts.read_mode,
        segment: SEGMENT,
        headroom: params.max as usize,
        threads: 2,
        depth: 64,
    };
    let read =
        stages::read::spawn(read_cfg, opts.source.clone(), budget.clone(), job_rx, blk_txs, cancel.clone())
            .map_err(|e| Error::Pipeline(format!("cannot start the read stage: {e}")))?;
    let mode = read.mode;
    if let Some(w) = &read.fallback_reason {
        warnings.push(w.clone());
    }
    let own: Vec<PathBuf> = [Some(repo.location.clone()), opts.cache_dir.clone()]
        .into_iter()
        .flatten()
        .filter_map(|p| std::path::absolute(p).ok())
        .collect();
    let exclude = build_exclude(&opts.excludes, own)?;
    let (known, cache_out, cache_problem) =
        open_cache(repo, &opts, &roots, dedup.index.clone(), &mut warnings);
    let scan_cfg = ScanConfig { roots: roots.clone(), exclude, known, progress: opts.progress.clone() };
    let scan = stages::scan::spawn(scan_cfg, ev_tx, job_tx, cancel.clone()).map_err(spawn_err)?;

    let root_frame =
        Frame { name: Vec::new(), meta: None, path: Vec::new(), nodes: Vec::new(), blobs: Vec::new() };
    let mut builder = Builder {
        stack: vec![root_frame],
        pending: HashMap::new(),
        links: HashMap::new(),
        fevents: fe_rx,
        trees: Some(new_tx),
        dedup: dedup.clone(),
        id_key: *repo.wk.id_key.as_bytes(),
        budget: budget.clone(),
        cancel: cancel.clone(),
        errors: Vec::new(),
        stats: Stats::default(),
        cache: cache_out,
        racy_ns: time_ns - 1_000_000_000,
        progress: opts.progress.clone(),
    };
    let built = builder.run(&ev_rx);
    if built.is_err() {
        cancel.cancel();
    }
    // Shutdown is closing the inputs: each stage ends when its input closes, in pipeline order.
    drop(ev_rx);
    builder.trees = None;
    scan.finish();
    read.finish();
    chunk.finish();
    hash.finish();
    compress.finish();
    encrypt.finish();
    let written = write.finish();
    let root = built?;
    let mut builder = builder;
    let sinks = written.map_err(|e| Error::Pipeline(format!("writing packs: {e}")))?;
    if cancel.is_cancelled() {
        return Err(Error::Pipeline("the backup was cancelled".into()));
    }

    let packs: Vec<_> = sinks.iter().flat_map(|s| s.packs.iter().cloned()).collect();
    if !packs.is_empty() {
        let (name, bytes) = encode_segment(&repo.wk.catalog_key, &packs)?;
        repo.backend.put(&name, &bytes)?;
    }
    if let Some(p) = cache_problem.lock().unwrap_or_else(|p| p.into_inner()).take() {
        warnings.push(p);
    }
    let mut stats = builder.stats;
    stats.new_blobs = sinks.iter().map(|s| s.new_blobs).sum();
    stats.new_bytes = sinks.iter().map(|s| s.new_raw_bytes).sum();
    stats.stored_bytes = sinks.iter().map(|s| s.stored_bytes).sum();
    stats.errors = builder.errors.len() as u64;
    stats.duration_ns = started.elapsed().as_nanos() as u64;
    let snapshot = Snapshot {
        version: crate::snapshot::VERSION,
        time_ns,
        host: opts.host,
        user: std::env::var("USER").unwrap_or_default(),
        paths: roots.iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect(),
        tags: opts.tags,
        tree: root,
        stats,
        errors: std::mem::take(&mut builder.errors),
        program: format!("bakare {}", env!("CARGO_PKG_VERSION")),
    };
    let snapshot_id = commit_snapshot(repo, &snapshot)?;
    if let Some(cache) = builder.cache {
        if let Err(e) = cache.commit() {
            warnings.push(format!("cannot save the files cache ({e}); the next run reads every file"));
        }
    }
    Ok(BackupResult {
        snapshot_id,
        snapshot,
        warnings,
        read_mode: mode,
        budget: budget_bytes,
        budget_peak: budget.peak(),
    })
}

type CacheSetup = (Option<Known>, Option<CacheWriter>, Arc<Mutex<Option<String>>>);

/// Opens the previous files cache (as the scan's `Known` lookup) and starts the next one.
fn open_cache(
    repo: &Repository,
    opts: &BackupOptions,
    roots: &[PathBuf],
    index: Arc<Index>,
    warnings: &mut Vec<String>,
) -> CacheSetup {
    let problem = Arc::new(Mutex::new(None));
    let Some(dir) = &opts.cache_dir else { return (None, None, problem) };
    let repo_id = repo.config.repo_id;
    let path = filescache::cache_file(dir, &repo_id, &opts.host, roots);
    let writer = match CacheWriter::create(&path, &repo_id) {
        Ok(w) => Some(w),
        Err(e) => {
            warnings.push(format!(
                "cannot write the files cache in {} ({e}); the next run reads every file",
                dir.display()
            ));
            None
        }
    };
    let mut reader = match CacheReader::open(&path, &repo_id) {
        Ok(r) => r,
        Err(why) => {
            warnings.push(format!("{why}; reading every file"));
            None
        }
    };
    let Some(_) = reader else { return (None, writer, problem) };
    let shared = problem.clone();
    let known: Known = Box::new(move |path: &Path, meta: &Meta| {
        let r = reader.as_mut()?;
        let found = r.lookup(path.as_os_str().as_bytes());
        if let Some(p) = r.problem.take() {
            *shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        }
        let e = found?;
        let same = e.size == meta.size
            && e.mtime_ns == meta.mtime_ns
            && e.ctime_ns == meta.ctime_ns
            && e.ino == meta.ino
            && e.dev == meta.dev;
        // Cached ids are dedup decisions like any other: each must be in the repository.
        (same && e.content.iter().all(|id| index.contains(id))).then_some(e.content)
    });
    (Some(known), writer, problem)
}

/// Writes the snapshot to pending/, then snapshots/, then removes the pending copy.
fn commit_snapshot(repo: &Repository, snapshot: &Snapshot) -> Result<String> {
    let bytes = snapshot.encode(&repo.key.recipient)?;
    let id = blake3::hash(&bytes).to_hex().to_string();
    let pending = format!("pending/{id}");
    repo.backend.put(&pending, &bytes)?;
    repo.backend.put(&format!("snapshots/{id}"), &bytes)?;
    repo.backend.delete(&pending)?;
    Ok(id)
}

struct Frame {
    name: Vec<u8>,
    meta: Option<Meta>,
    /// Path from the snapshot root, for hard link targets.
    path: Vec<u8>,
    nodes: Vec<Node>,
    blobs: Vec<BlobId>,
}

#[derive(Default)]
struct PendingFile {
    ids: Vec<Option<BlobId>>,
    got: u32,
    end: Option<(u32, u64)>,
    failed: Option<(PathBuf, String)>,
}

impl PendingFile {
    fn complete(&self) -> bool {
        self.failed.is_some() || self.end.is_some_and(|(n, _)| n == self.got)
    }
}

struct Builder {
    stack: Vec<Frame>,
    pending: HashMap<u64, PendingFile>,
    /// First names of multiply-linked files: seq -> (path, content, size).
    links: HashMap<u64, (Vec<u8>, Vec<BlobId>, u64)>,
    fevents: Receiver<FileEvent>,
    /// The compress stage's input, for tree blobs; None once the tree is complete.
    trees: Option<Sender<NewBlob>>,
    dedup: Arc<SessionDedup>,
    id_key: [u8; 32],
    budget: MemoryBudget,
    cancel: Cancel,
    errors: Vec<FileError>,
    stats: Stats,
    /// The files cache being written for the next run.
    cache: Option<CacheWriter>,
    progress: Arc<Progress>,
    /// Files modified at or after this instant are not cached: they may change again within the
    /// same timestamp granularity without their mtime moving (the racy-timestamp problem).
    racy_ns: i64,
}

fn join_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Builder {
    fn record(&mut self, ev: FileEvent) {
        match ev {
            FileEvent::ChunkId { seq, index, id, len } => {
                Progress::add(&self.progress.bytes_done, u64::from(len));
                let p = self.pending.entry(seq).or_default();
                let i = index as usize;
                if p.ids.len() <= i {
                    p.ids.resize(i + 1, None);
                }
                if p.ids[i].replace(id).is_none() {
                    p.got += 1;
                }
            }
            FileEvent::End { seq, chunks, size } => {
                self.pending.entry(seq).or_default().end = Some((chunks, size))
            }
            FileEvent::Failed { seq, path, why } => {
                self.pending.entry(seq).or_default().failed = Some((path, why))
            }
        }
    }

    /// Waits for every chunk id of file `seq`, draining other files' events meanwhile.
    fn wait_file(&mut self, seq: u64) -> Result<PendingFile> {
        loop {
            if self.pending.get(&seq).is_some_and(PendingFile::complete) {
                return self.pending.remove(&seq).ok_or_else(|| Error::Pipeline("lost file".into()));
            }
            match self.fevents.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => self.record(ev),
                Err(RecvTimeoutError::Timeout) if self.cancel.is_cancelled() => {
                    return Err(Error::Pipeline("cancelled".into()))
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Pipeline("the pipeline ended before every file was complete".into()))
                }
            }
        }
    }

    fn abs_path(&self, name: &[u8]) -> Vec<u8> {
        let top = self.stack.last().map(|f| f.path.as_slice()).unwrap_or_default();
        let mut p = b"/".to_vec();
        p.extend_from_slice(&join_path(top, name));
        p
    }

    fn push(&mut self, node: Node) -> Result<()> {
        let full = {
            let Some(frame) = self.stack.last_mut() else {
                return Err(Error::Pipeline("unbalanced scan events".into()));
            };
            frame.nodes.push(node);
            frame.nodes.len() >= MAX_ENTRIES
        };
        if full {
            self.flush_top()?;
        }
        Ok(())
    }

    /// Stores the top directory's pending entries as one tree blob.
    fn flush_top(&mut self) -> Result<()> {
        let Some(frame) = self.stack.last_mut() else { return Ok(()) };
        if frame.nodes.is_empty() {
            return Ok(());
        }
        let tree = Tree { nodes: std::mem::take(&mut frame.nodes) };
        let data = tree.encode();
        let id = stages::hash::blob_id(&self.id_key, &data);
        frame.blobs.push(id);
        if self.dedup.claim(&id, BlobKind::Tree) {
            let permit = self.acquire(2 * data.len() as u64)?;
            let blob =
                NewBlob { id, kind: BlobKind::Tree, data: Bytes::from(data), permit: Arc::new(permit) };
            let sent = self.trees.as_ref().map(|t| t.send(blob).is_ok());
            if sent != Some(true) {
                return Err(Error::Pipeline("compress stage gone".into()));
            }
        }
        Ok(())
    }

    /// Takes budget without ever blocking the stages that feed this thread.
    fn acquire(&mut self, bytes: u64) -> Result<stages::Permit> {
        loop {
            if let Some(p) = self.budget.try_acquire(bytes) {
                return Ok(p);
            }
            match self.fevents.recv_timeout(Duration::from_millis(5)) {
                Ok(ev) => self.record(ev),
                Err(RecvTimeoutError::Timeout) if self.cancel.is_cancelled() => {
                    return Err(Error::Pipeline("cancelled".into()))
                }
                Err(_) => {}
            }
        }
    }

    /// A file whose content is known: its node, its hard-link record, its files-cache entry.
    fn file_done(
        &mut self,
        seq: u64,
        name: Vec<u8>,
        meta: Meta,
        size: u64,
        content: Vec<BlobId>,
    ) -> Result<()> {
        self.stats.files += 1;
        self.stats.bytes += size;
        Progress::add(&self.progress.files_done, 1);
        if self.stats.files % 64 == 1 || size > 1 << 20 {
            let p = PathBuf::from(std::ffi::OsString::from_vec(self.abs_path(&name)));
            *self.progress.current.lock().unwrap_or_else(|p| p.into_inner()) = p;
        }
        if meta.nlink > 1 {
            let top = self.stack.last().map(|f| f.path.as_slice()).unwrap_or_default();
            self.links.insert(seq, (join_path(top, &name), content.clone(), size));
        }
        if meta.mtime_ns < self.racy_ns {
            let entry = CacheEntry {
                path: self.abs_path(&name),
                size,
                mtime_ns: meta.mtime_ns,
                ctime_ns: meta.ctime_ns,
                ino: meta.ino,
                dev: meta.dev,
                content: content.clone(),
            };
            if let Some(Err(_)) = self.cache.as_mut().map(|c| c.add(&entry)) {
                self.cache = None; // a cache that cannot be written is simply not kept
            }
        }
        self.push(Node::new(name, NodeKind::File { size, content }, &meta))
    }

    fn error(&mut self, path: Vec<u8>, why: String) {
        self.errors.push(FileError { path, why });
    }

    fn scan_event(&mut self, ev: ScanEvent) -> Result<()> {
        match ev {
            ScanEvent::Enter { name, meta } => {
                self.stats.dirs += 1;
                let name = name.as_bytes().to_vec();
                let parent = self.stack.last().map(|f| f.path.clone()).unwrap_or_default();
                let path = join_path(&parent, &name);
                self.stack.push(Frame { name, meta: Some(meta), path, nodes: Vec::new(), blobs: Vec::new() });
            }
            ScanEvent::Leave => {
                self.flush_top()?;
                if self.stack.len() < 2 {
                    return Err(Error::Pipeline("unbalanced scan events".into()));
                }
                let Some(frame) = self.stack.pop() else { return Ok(()) };
                let Some(meta) = frame.meta else { return Ok(()) };
                self.push(Node::new(frame.name, NodeKind::Dir { subtree: frame.blobs }, &meta))?;
            }
            ScanEvent::File { seq, name, meta } => {
                let done = self.wait_file(seq)?;
                let name = name.as_bytes().to_vec();
                if let Some((path, why)) = done.failed {
                    self.error(path.as_os_str().as_bytes().to_vec(), why);
                    return Ok(());
                }
                let (_, size) = done.end.unwrap_or((0, 0));
                let content: Vec<BlobId> = done.ids.into_iter().flatten().collect();
                self.stats.read_bytes += size;
                self.file_done(seq, name, meta, size, content)?;
            }
            ScanEvent::Unchanged { seq, name, meta, content } => {
                self.stats.unchanged_files += 1;
                Progress::add(&self.progress.bytes_done, meta.size);
                let size = meta.size;
                self.file_done(seq, name.as_bytes().to_vec(), meta, size, content)?;
            }

            ScanEvent::HardLink { first, name, meta } => {
                let name = name.as_bytes().to_vec();
                match self.links.get(&first) {
                    Some((target, content, size)) => {
                        let kind = NodeKind::HardLink {
                            target: target.clone(),
                            size: *size,
                            content: content.clone(),
                        };
                        self.stats.files += 1;
                        self.push(Node::new(name, kind, &meta))?;
                    }
                    None => {
                        let p = self.abs_path(&name);
                        self.error(p, "hard link to a file that could not be saved".into());
                    }
                }
            }
            ScanEvent::Symlink { name, meta, target } => {
                let kind = NodeKind::Symlink { target: target.as_bytes().to_vec() };
                self.push(Node::new(name.as_bytes().to_vec(), kind, &meta))?;
            }
            ScanEvent::Special { name, meta } => {
                let kind = match meta.kind {
                    stages::FileKind::Fifo => NodeKind::Fifo,
                    stages::FileKind::Socket => NodeKind::Socket,
                    stages::FileKind::CharDev => NodeKind::CharDev { rdev: meta.rdev },
                    _ => NodeKind::BlockDev { rdev: meta.rdev },
                };
                self.push(Node::new(name.as_bytes().to_vec(), kind, &meta))?;
            }
            ScanEvent::Error { path, why } => self.error(path.as_os_str().as_bytes().to_vec(), why),
        }
        Ok(())
    }

    fn run(&mut self, events: &Receiver<ScanEvent>) -> Result<Vec<BlobId>> {
        let fevents = self.fevents.clone();
        let mut fevents_open = true;
        loop {
            if self.cancel.is_cancelled() {
                return Err(Error::Pipeline("cancelled".into()));
            }
            let ev = if fevents_open {
                select! {
                    recv(events) -> ev => ev,
                    recv(fevents) -> fe => {
                        match fe {
                            Ok(fe) => self.record(fe),
                            Err(_) => fevents_open = false,
                        }
                        continue;
                    }
                }
            } else {
                events.recv()
            };
            match ev {
                Ok(ev) => self.scan_event(ev)?,
                Err(_) => break,
            }
        }
        if self.stack.len() != 1 {
            return Err(Error::Pipeline("the scan ended inside a directory".into()));
        }
        self.flush_top()?;
        Ok(self.stack.pop().map(|f| f.blobs).unwrap_or_default())
    }
}
