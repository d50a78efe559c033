//! backup: wires the stages into one pipeline and runs the tree builder (builder.rs) on the
//! calling thread. When the scan is over and every stage has drained, the packs are committed,
//! then the session's index segment, then the snapshot (pending, then committed: commit.rs), and
//! last the files cache for the next run. A dry run (`BackupOptions::dry_run`) ends the
//! pipeline after hash, counting what is new (changes.rs), and commits nothing.
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::bounded;
use io::Source;
use stages::compress::CompressConfig;
use stages::encrypt::EncryptConfig;
use stages::pool::BufferPool;
use stages::read::{ReadConfig, ReadHandle, ReadMode};
use stages::scan::{Known, Limits, ScanConfig, ScanHandle, Select};
use stages::stream::{StreamConfig, StreamHandle};
use stages::{Cancel, FileEvent, MemoryBudget, Meta, NewBlob, Progress, ScanEvent};

use crate::builder::{Builder, Wiring};
use crate::changes::{dry_result, CacheLookup, Classify, Counts, OnFile, Summary, Tally};
use crate::commit;
use crate::error::{Error, Result};
use crate::filescache::{self, CacheReader, CacheWriter};
use crate::index::{Index, SessionDedup, Voucher};
use crate::ops::select::{Patterns, Rules, Selection};
use crate::pack::PackSink;
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// Bytes per read of a large file. 8 MiB: large enough that per-read overhead vanishes, small
/// enough that the budget keeps two reads in flight.
pub const SEGMENT: usize = 8 << 20;
/// The data budget when no --mem-limit is given. With read buffers reused (`stages::pool`) the
/// smallest budget is also the fastest measured: first backup of the mixed corpus 0.79–0.86 s at
/// 68–71 MiB peak RSS, against 0.82–0.90 s at 74–81 MiB with 64 MiB.
pub const DEFAULT_BUDGET: u64 = MIN_BUDGET;
/// What --mem-limit keeps back from the data budget for everything that is not data in flight:
/// the binary, thread stacks, allocator slack and channel buffers (measured: ~25 MiB RSS with an
/// empty pipeline), two pipeline workers (`WORKER_RESERVE`), plus the index (see
/// `index_reserve`). Restore and find keep back as much.
pub const FIXED_RESERVE: u64 = 40 << 20;

/// What each pipeline worker past two adds outside the byte budget: its compression contexts
/// (~1.9 MiB at the default levels), the bundle it fills (up to ~1 MiB), its compressed output
/// buffer, its writer's open pack's index entries (up to ~1.8 MiB, `pack::MAX_PACK_ENTRIES`),
/// and its threads' stacks and allocator heaps. Measured on a first backup of tests/memory.rs's
/// tree at the default budget: peak RSS 73, 86, 110 and 160 MiB with 2, 4, 8 and 16 workers,
/// 6.2 MiB a worker (least squares); 7 are kept back.
pub const WORKER_RESERVE: u64 = 7 << 20;

/// What parity adds to each worker (`format::parity`): its open pack's group of 1 MiB and the
/// recovery shards so far (up to ~1.7 MiB of a 32 MiB pack at 5 %), and allocator slack.
/// Measured on tests/memory.rs's tree: 7 workers under --mem-limit 128M peaked at 101 MiB
/// without parity and 127 MiB with it, ~3.7 MiB a worker; 4 are kept back.
pub const PARITY_RESERVE: u64 = 4 << 20;

/// What parity at `percent` holds per worker: `PARITY_RESERVE` at the default, more where the
/// recovery shards of a 32 MiB pack take more (2 MiB for the group and slack, and the
/// shards: 34 MiB at 100 %).
pub fn parity_reserve(percent: u8) -> u64 {
    match percent {
        0 => 0,
        p => PARITY_RESERVE.max((2 << 20) + (crate::repo::DEFAULT_PACK_SIZE * u64::from(p)).div_ceil(100)),
    }
}

/// What each worker past two costs outside the data budget, with parity at `parity` percent.
pub fn worker_reserve(parity: u8) -> u64 {
    WORKER_RESERVE + parity_reserve(parity)
}

/// The most workers per stage a run takes (`--workers`).
pub const MAX_WORKERS: usize = 1024;

/// The data budget and the number of workers for a run asked for `workers` under `mem_limit`
/// with an index of `blobs` blobs: without a limit, the default budget and every worker asked
/// for; with one, as many workers as fit beside the smallest budget (at least the fewer of two
/// and those asked for: below that the limit is refused), and the rest of the limit as the
/// budget. Each worker past two costs `WORKER_RESERVE`, and each worker its compression
/// contexts beyond the default levels' (`compression_reserve`) and, with `parity` above 0,
/// `PARITY_RESERVE`.
pub fn budget_and_workers(
    mem_limit: Option<u64>,
    workers: usize,
    compression: crate::format::config::Compression,
    parity: u8,
    blobs: usize,
) -> Result<(u64, usize)> {
    let workers = workers.clamp(1, MAX_WORKERS);
    let Some(limit) = mem_limit else {
        return Ok((DEFAULT_BUDGET, workers));
    };
    // Linear in the workers: measured once, for one.
    let contexts = compression_reserve(compression, 1) + worker_reserve(parity) - WORKER_RESERVE;
    let reserve = |w: usize| {
        let past_two = WORKER_RESERVE.saturating_mul(w.saturating_sub(2) as u64);
        FIXED_RESERVE
            .saturating_add(index_reserve(blobs))
            .saturating_add(past_two)
            .saturating_add(contexts.saturating_mul(w as u64))
    };
    let fewest = workers.min(2);
    let needed = reserve(fewest).saturating_add(MIN_BUDGET);
    if limit < needed {
        return Err(Error::Invalid(format!(
            "--mem-limit {} MiB is too small for this repository (needs at least {} MiB)",
            limit >> 20,
            needed.div_ceil(1 << 20)
        )));
    }
    // Each worker past `fewest` costs `step` (its share past two, and its contexts).
    let step = contexts.saturating_add(if fewest < 2 { 0 } else { WORKER_RESERVE }).max(1);
    let more = usize::try_from((limit - needed) / step).unwrap_or(usize::MAX);
    let fit = fewest.saturating_add(more).min(workers);
    Ok((limit - reserve(fit), fit))
}

/// The smallest data budget: two full blocks of a large file (the chunker keeps the tail of one
/// while the next is read, each holding twice its 8 MiB plus 4 MiB of headroom). Less deadlocks
/// as soon as a file spans several blocks.
pub const MIN_BUDGET: u64 = 2 * 2 * (SEGMENT as u64 + (4 << 20));

pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub excludes: Vec<String>,
    /// The other selection options (`excludes` are added to its patterns).
    pub select: Rules,
    pub mem_limit: Option<u64>,
    pub read_mode: ReadMode,
    pub workers: usize,
    pub source: Arc<dyn Source>,
    pub host: String,
    pub tags: Vec<String>,
    /// What the user says about this run, kept in the snapshot.
    pub description: Option<String>,
    /// The selection options of this run as command-line words (`--exclude`, `*.tmp`, ...),
    /// kept in the snapshot so that a later look can tell what was left out on purpose.
    pub selection: Vec<String>,
    /// Where files caches live; None disables the cache (every file is read).
    pub cache_dir: Option<PathBuf>,
    /// Updated as the backup runs, for a progress display.
    pub progress: Arc<Progress>,
    /// Told of each regular file: new, changed or unchanged since the last run (`run -v`).
    pub on_file: Option<OnFile>,
    /// Scan, read, chunk and hash as usual and look the ids up in the index, but store nothing:
    /// no pack, index segment, snapshot or files cache is written (`run --dry-run`).
    pub dry_run: bool,
    /// What a file watcher saw change since the files cache was written (`bakare watch`):
    /// directories it saw no change in are taken from the cache unlisted. Ignored without a
    /// files cache.
    pub watched: Option<Arc<stages::dirty::Dirty>>,
    /// No snapshot is written when its root tree is this one: nothing it holds changed since
    /// the run that made it (`watch`, unless `--always`). The files cache is saved all the same.
    pub unless_tree: Option<Vec<stages::BlobId>>,
}

/// Standard input, or a command's output, backed up as one regular file at the snapshot root
/// (`bakare run --stdin`): read to its end through the pipeline like any file, never held whole.
pub struct Stream {
    /// The file's name at the snapshot root.
    pub name: StreamName,
    pub input: std::fs::File,
    /// The producer's verdict once the input has ended (a command's exit status). An Err fails
    /// the run before anything is committed: a dump cut short must not pass for a whole one.
    pub verdict: Box<dyn FnOnce() -> std::result::Result<(), String> + Send>,
}

/// A name for a stream's file: one path component (never empty, `.` or `..`, no `/` or NUL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamName(std::ffi::OsString);

impl StreamName {
    pub fn new(name: &std::ffi::OsStr) -> Result<StreamName> {
        let b = name.as_bytes();
        // What a tree holds and a Linux file system can restore (NAME_MAX): the name is checked
        // before the stream is read, not after it was stored.
        if !crate::tree::valid_name(b) || b.len() > 255 {
            return Err(Error::Invalid(format!(
                "{:?} is not a file name (one path component of at most 255 bytes: not empty, `.` \
                 or `..`, no `/`)",
                name
            )));
        }
        Ok(StreamName(name.to_os_string()))
    }

    pub fn as_os_str(&self) -> &std::ffi::OsStr {
        &self.0
    }
}

pub struct BackupResult {
    pub snapshot_id: String,
    pub snapshot: Snapshot,
    pub warnings: Vec<String>,
    pub read_mode: ReadMode,
    pub budget: u64,
    pub budget_peak: u64,
    /// Workers per CPU stage: as asked for, or fewer to fit --mem-limit.
    pub workers: usize,
    /// Directories whose tree was reused from the last run (unchanged, not encoded again).
    pub reused_dirs: u64,
    /// Directories (absolute paths) not recorded in the files cache for the next run: a
    /// watcher lists them again. None: too many to list.
    pub unrecorded: Option<Vec<Vec<u8>>>,
    /// Files new, changed and unchanged since the last run (None when nothing classified them:
    /// no files cache, no `on_file`, no dry run).
    pub changes: Option<(u64, u64, u64)>,
    /// In a dry run, what would have been stored (`snapshot_id` is empty then, and the
    /// snapshot's stats count new blobs and bytes before compression).
    pub dry_run: Option<Tally>,
}

/// Memory the compression contexts of a level other than the default hold beyond the default
/// levels' (which `FIXED_RESERVE` counts): two per worker, one for chunks and trees (sized to
/// the largest tree blob, 8 MiB), one for bundles. Measured, not guessed: level 19 holds
/// ~80 MiB per worker more than level 1.
fn compression_reserve(c: crate::format::config::Compression, workers: usize) -> u64 {
    use stages::compress::{context_bytes, BUNDLE_TARGET, SMALL_BLOB};
    const LARGEST: usize = 8 << 20;
    let held = |(level, bundle): (Option<i32>, Option<i32>)| {
        let size = |l: Option<i32>, len: usize| l.map_or(0, |l| context_bytes(l, len));
        size(level, LARGEST) + size(bundle, BUNDLE_TARGET + SMALL_BLOB)
    };
    let default = crate::format::config::Compression::Auto;
    if c == default {
        return 0;
    }
    held(c.levels()).saturating_sub(held(default.levels())).saturating_mul(workers as u64)
}

/// Memory the in-memory index takes, estimated per blob: a 56-byte slot, its share of the
/// directory, and the segment being decoded while the table is built.
pub(crate) fn index_reserve(blobs: usize) -> u64 {
    blobs as u64 * 64
}

/// Returns true for paths to leave out (and, for directories, not to descend into).
pub type Exclude = Arc<dyn Fn(&Path, bool) -> bool + Send + Sync>;

/// Patterns from the user (restore's --exclude, which has `run --exclude`'s rule), plus paths
/// that are always left out.
pub fn build_exclude(patterns: &[String], always: Vec<PathBuf>) -> Result<Option<Exclude>> {
    if patterns.is_empty() && always.is_empty() {
        return Ok(None);
    }
    let mut rules = Rules::default();
    for p in patterns {
        rules.exclude(p, false, "--exclude")?;
    }
    let patterns = Patterns::new(rules.globs())?;
    // Compared as bytes (the paths are normalised, so are these).
    let always: Vec<Vec<u8>> =
        always.iter().map(|a| a.components().collect::<PathBuf>().into_os_string().into_vec()).collect();
    Ok(Some(Arc::new(move |path: &Path, _is_dir: bool| {
        let bytes = path.as_os_str().as_bytes();
        always.iter().any(|a| *a == bytes) || patterns.is_match(path)
    })))
}

/// `Auto` reads through io_uring, which keeps a disk busy with many reads in flight (99,803
/// small files, cold page cache on ext4: 2.24-2.58 s, against 4.49-4.56 s for the read
/// threads) — unless every root is on a memory file system (tmpfs, ramfs). There is no disk to
/// keep busy there, and the kernel hands each ring read of a tmpfs file to one of its worker
/// threads: the read threads were faster (the same files: 0.87-1.01 s against 1.21-1.27 s; a
/// million files: 26.0 s against 30.9 s). `--io uring` still forces the ring.
#[allow(clippy::unnecessary_cast)] // statfs's f_type is i64 here, narrower on other targets
fn read_mode_for(mode: ReadMode, roots: &[PathBuf]) -> ReadMode {
    /// statfs(2)'s f_type of ramfs (linux/magic.h; libc has tmpfs's only).
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let in_memory = |p: &PathBuf| {
        rustix::fs::statfs(p.as_path()).is_ok_and(|s| {
            let t = s.f_type as i64;
            t == libc::TMPFS_MAGIC as i64 || t == RAMFS_MAGIC
        })
    };
    if mode == ReadMode::Auto && !roots.is_empty() && roots.iter().all(in_memory) {
        return ReadMode::Pool;
    }
    mode
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn default_host() -> String {
    hostname()
}

/// How many times a backup whose view of the repository went stale (a suspend longer than
/// half the grace period) is run again before giving up.
const MAX_ATTEMPTS: u32 = 4;

enum Attempt {
    Committed(Box<BackupResult>),
    /// The pending snapshot was written too late after the view was taken: prune may since
    /// have condemned (and, a grace period later, deleted) data it references.
    Stale {
        age_ns: i64,
        /// Why the abandonment marker could not be written, if it could not.
        unmarked: Option<String>,
    },
}

/// Backs up `opts.paths` and commits a snapshot by the protocol of design.md section 4: the
/// view of the repository (index and condemnation records) is taken at the start; packs, then
/// their index segment, then `pending/<id>`; then, only if the pending write finished less
/// than G/2 after the view was taken (on a clock that counts suspended time), the snapshot is
/// promoted to `snapshots/`. Otherwise the pending copy is marked abandoned and the backup runs
/// again with a fresh view, which stores again whatever is now condemned or gone (unchanged
/// data that is still live is found in the index, so a repeat costs little). Nothing is ever
/// deleted (commit.rs): credentials that can create and read are enough.
pub fn backup(repo: &Repository, opts: BackupOptions) -> Result<BackupResult> {
    run(repo, opts, None)
}

/// Backs up `stream` as the one file of a snapshot whose paths are `["/NAME"]` (`opts.paths`,
/// the selection and the files cache are not used). Unlike `backup`, a stale view is not run
/// again: the stream cannot be read twice.
pub fn backup_stream(repo: &Repository, opts: BackupOptions, stream: Stream) -> Result<BackupResult> {
    run(repo, opts, Some(stream))
}

fn run(repo: &Repository, opts: BackupOptions, mut stream: Option<Stream>) -> Result<BackupResult> {
    // Refused before any work: the decoder would refuse the record (snapshot.rs).
    if opts.description.as_ref().is_some_and(|d| d.len() > crate::snapshot::MAX_DESCRIPTION) {
        return Err(Error::Invalid("--description: longer than 64 KiB".into()));
    }
    let started = Instant::now();
    let time_ns = crate::clock::now_ns();
    let mut notes = Vec::new();
    for n in 1..=MAX_ATTEMPTS {
        let streamed = stream.is_some();
        match attempt(repo, &opts, time_ns, started, stream.take())? {
            Attempt::Committed(mut r) => {
                notes.append(&mut r.warnings);
                r.warnings = notes;
                return Ok(*r);
            }
            Attempt::Stale { age_ns, .. } if streamed => {
                return Err(Error::Pipeline(format!(
                    "the view of the repository was {} s old when the snapshot was ready (suspended?), \
                     over half the grace period, and a stream cannot be read again; nothing was committed",
                    age_ns / 1_000_000_000
                )));
            }
            Attempt::Stale { age_ns, unmarked } => {
                notes.push(format!(
                    "the view of the repository was {} s old when the snapshot was ready (suspended?), over \
                     half the grace period: prune may have condemned data since, so the backup runs again \
                     (attempt {})",
                    age_ns / 1_000_000_000,
                    n + 1
                ));
                notes.extend(unmarked);
            }
        }
    }
    Err(Error::Pipeline(format!(
        "the view of the repository went stale {MAX_ATTEMPTS} times in a row (is the machine suspending \
         constantly, or the grace period tiny?); nothing was committed"
    )))
}

fn attempt(
    repo: &Repository,
    opts: &BackupOptions,
    time_ns: i64,
    started: Instant,
    stream: Option<Stream>,
) -> Result<Attempt> {
    // The view: taken before anything is read from the repository.
    let view_ns = crate::clock::boot_ns();
    let config = repo.fresh_config()?;
    let signer = repo.key.snapshot_signer()?;
    let (index, mut warnings) = repo.load_dedup_index()?;
    let roots = match &stream {
        Some(_) => Vec::new(),
        None => stages::scan::normalize_roots(&opts.paths).map_err(|e| Error::io(".", e))?,
    };
    for r in roots.iter().filter(|r| r.unreachable.is_none()) {
        let md = match r.follow {
            true => std::fs::metadata(&r.path),
            false => std::fs::symlink_metadata(&r.path),
        };
        match md {
            Err(_) => return Err(Error::Invalid(format!("{}: no such file or directory", r.path.display()))),
            Ok(md) if r.follow && !md.is_dir() => {
                return Err(Error::Invalid(format!("{}/: not a directory", r.path.display())))
            }
            Ok(_) => {}
        }
    }
    // What the snapshot records (the paths backed up, as given: `LINK/` as LINK, which holds the
    // directory's contents), and what keys the files cache (a followed root is another source
    // than the link).
    // A stream is one file, `/NAME`, and no source the files cache knows.
    let paths: Vec<PathBuf> = match &stream {
        Some(s) => vec![Path::new("/").join(s.name.as_os_str())],
        None => roots.iter().filter(|r| r.unreachable.is_none()).map(|r| r.path.clone()).collect(),
    };
    let sources = sources(&roots);
    // A dry run writes no packs: no parity to hold.
    let parity = if opts.dry_run { 0 } else { config.parity };
    let (budget_bytes, workers) =
        budget_and_workers(opts.mem_limit, opts.workers, config.compression, parity, index.blob_count())?;
    let budget = MemoryBudget::new(budget_bytes);
    let cancel = Cancel::default();
    let params = repo.chunk_params();
    let dedup = Arc::new(SessionDedup::new(Arc::new(index)).with_budget(budget.clone(), MIN_BUDGET));

    let (ev_tx, ev_rx) = bounded::<Vec<ScanEvent>>(16);
    let (job_tx, job_rx) = bounded(1024);
    let (fe_tx, fe_rx) = bounded::<Vec<FileEvent>>(256);
    let (blk_txs, blk_rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(4)).unzip();
    // Batches of up to 64 (`stages::batch`).
    let (chunk_tx, chunk_rx) = bounded(4);
    let (new_tx, new_rx) = bounded::<Vec<NewBlob>>(4);
    let (framed_tx, framed_rx) = bounded(8);
    let (sealed_txs, sealed_rxs): (Vec<_>, Vec<_>) = (0..workers).map(|_| bounded(8)).unzip();

    let sealer = repo.sealer()?;
    let spawn_err = |e: std::io::Error| Error::Pipeline(format!("cannot start a stage: {e}"));
    // A dry run ends the pipeline after hashing: the blobs dedup found new are counted and
    // dropped, and nothing is compressed, sealed or written.
    let store = match opts.dry_run {
        true => Store::Count(crate::changes::count(new_rx).map_err(spawn_err)?),
        false => {
            let sinks: Vec<PackSink> = (0..workers)
                .map(|_| {
                    PackSink::new(
                        repo.backend.clone(),
                        repo.key.recipient.clone(),
                        sealer.clone(),
                        repo.config.pack_size,
                        config.parity,
                    )
                })
                .collect();
            let write = stages::write::spawn(sinks, sealed_rxs, cancel.clone()).map_err(spawn_err)?;
            let enc_cfg = EncryptConfig {
                workers,
                rotate_after: repo.config.pack_size,
                rotate_entries: crate::pack::MAX_PACK_ENTRIES,
            };
            let encrypt =
                stages::encrypt::spawn(enc_cfg, framed_rx, sealed_txs, cancel.clone()).map_err(spawn_err)?;
            // The setting as of this attempt's view (`config --compression` may change it).
            let (level, bundle_level) = config.compression.levels();
            let comp_cfg = CompressConfig { workers, level, bundle_level };
            let compress =
                stages::compress::spawn(comp_cfg, new_rx, framed_tx, cancel.clone()).map_err(spawn_err)?;
            Store::Write { compress, encrypt, write }
        }
    };

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
    // Buffers for the blocks of large files, reused (`stages::pool`).
    let pool = BufferPool::new(budget.clone(), params.max as usize + SEGMENT);
    let chunk = stages::chunk::spawn(params, blk_rxs, chunk_tx, fe_tx, pool.clone(), cancel.clone())
        .map_err(spawn_err)?;
    // A stream stands in for the scan and the read stage; it is neither looked up in nor
    // written to the files cache (whose key is a path).
    let counts = Arc::new(Counts::default());
    let mut classify = false;
    let (input, cache_out, cache_problem) = match stream {
        Some(Stream { name, input, verdict }) => {
            let cfg = StreamConfig {
                name: name.as_os_str().to_os_string(),
                meta: stream_meta(time_ns),
                segment: SEGMENT,
                headroom: params.max as usize,
                progress: opts.progress.clone(),
            };
            drop((job_tx, job_rx));
            let s = stages::stream::spawn(cfg, input, budget.clone(), pool, ev_tx, blk_txs, cancel.clone())
                .map_err(spawn_err)?;
            (Input::Stream(s, verdict), None, Arc::new(Mutex::new(None)))
        }
        None => {
            let read_cfg = ReadConfig {
                mode: read_mode_for(opts.read_mode, &paths),
                segment: SEGMENT,
                headroom: params.max as usize,
                threads: 2,
                depth: 64,
            };
            let read = stages::read::spawn(
                read_cfg,
                opts.source.clone(),
                budget.clone(),
                job_rx,
                blk_txs,
                pool,
                cancel.clone(),
            )
            .map_err(|e| Error::Pipeline(format!("cannot start the read stage: {e}")))?;
            if let Some(w) = &read.fallback_reason {
                warnings.push(w.clone());
            }
            let own: Vec<PathBuf> = [repo.location.local().map(Path::to_path_buf), opts.cache_dir.clone()]
                .into_iter()
                .flatten()
                .filter_map(|p| std::path::absolute(p).ok())
                .collect();
            // bakare's own repository and caches are always left out: backing them up would
            // chase files that change while they are written.
            let selection = Selection::new(&opts.select, &opts.excludes, own)?;
            let select_warnings = selection.as_ref().map(Selection::warnings);
            let select = selection.map(|s| Box::new(s) as Box<dyn Select>);
            let (lookup, cache_out, cache_problem) =
                open_cache(repo, opts, &sources, dedup.index.clone(), &mut warnings);
            // Without a files cache, a plain scan (no lookups) unless someone asks what is new.
            classify = lookup.is_some() || opts.on_file.is_some() || opts.dry_run;
            let known = classify.then(|| {
                let on_file = opts.on_file.clone();
                Box::new(Classify { inner: lookup, counts: counts.clone(), on_file }) as Box<dyn Known>
            });
            // What readers of the snapshot refuse (restore, check) is not saved, but named.
            let limits = Limits { path: crate::tree::MAX_PATH, depth: crate::tree::MAX_DEPTH };
            let progress = opts.progress.clone();
            let watched = opts.watched.clone();
            let scan_cfg = ScanConfig { roots, select, known, progress, limits, watched };
            let scan = stages::scan::spawn(scan_cfg, ev_tx, job_tx, cancel.clone()).map_err(spawn_err)?;
            (Input::Scan { scan, read, select_warnings }, cache_out, cache_problem)
        }
    };
    let mode = match &input {
        Input::Scan { read, .. } => read.mode,
        Input::Stream(..) => ReadMode::Pool,
    };
    let mut builder = Builder::new(Wiring {
        fevents: fe_rx,
        trees: new_tx,
        dedup: dedup.clone(),
        id_key: *repo.wk.id_key.as_bytes(),
        budget: budget.clone(),
        cancel: cancel.clone(),
        cache: cache_out,
        racy_ns: i128::from(time_ns) - 1_000_000_000,
        progress: opts.progress.clone(),
    });
    // A stream's name is not a path on this machine: there are no attributes to read there.
    builder.read_attrs = matches!(input, Input::Scan { .. });
    let built = builder.run(&ev_rx);
    if built.is_err() {
        cancel.cancel();
    }
    // Shutdown is closing the inputs: each stage ends when its input closes, in pipeline order.
    drop(ev_rx);
    builder.trees = None;
    let ended = match input {
        Input::Scan { scan, read, select_warnings } => {
            scan.finish();
            if let Some(w) = select_warnings.as_ref().and_then(|w| w.lock().ok()) {
                warnings.extend(w.iter().cloned());
            }
            read.finish();
            None
        }
        Input::Stream(s, verdict) => Some((s.finish(), verdict)),
    };
    chunk.finish();
    hash.finish();
    let (compress, encrypt, write) = match store {
        Store::Count(counter) => {
            let tally = counter.join().map_err(|_| Error::Pipeline("the dry-run counter failed".into()))?;
            let root = built?;
            if cancel.is_cancelled() {
                return Err(Error::Pipeline("the backup was cancelled".into()));
            }
            if let Some(p) = cache_problem.lock().unwrap_or_else(|p| p.into_inner()).take() {
                warnings.push(p);
            }
            let changes = classify.then(|| counts.get());
            return Ok(Attempt::Committed(Box::new(dry_result(
                builder,
                root,
                tally,
                opts,
                Summary {
                    paths,
                    time_ns,
                    started,
                    warnings,
                    read_mode: mode,
                    budget_bytes,
                    budget_peak: budget.peak(),
                    workers,
                    changes,
                },
            ))));
        }
        Store::Write { compress, encrypt, write } => (compress, encrypt, write),
    };
    compress.finish();
    encrypt.finish();
    let written = write.finish();
    // A failed write (storage gone) stops the pipeline early; it is the cause to report, not
    // the incomplete files the builder then sees.
    let sinks = written.map_err(|e| Error::Pipeline(format!("writing packs: {e}")))?;
    if let Some((read, verdict)) = ended {
        // Before anything is committed: the producer's failure is the cause to report.
        let read =
            read.map_err(|e| Error::Pipeline(format!("reading the stream: {e}; nothing was committed")));
        verdict().map_err(|why| Error::Pipeline(format!("{why}; nothing was committed")))?;
        read?;
    }
    let root = built?;
    let mut builder = builder;
    if cancel.is_cancelled() {
        return Err(Error::Pipeline("the backup was cancelled".into()));
    }

    let packs: Vec<_> = sinks.iter().flat_map(|s| s.packs.iter().cloned()).collect();
    if !packs.is_empty() {
        let (name, bytes) = sealer.own(&packs)?;
        repo.backend.put(&name, &bytes)?;
    }
    // The packs that only their trailers described (left by a session that crashed before its
    // segment, or covered by a damaged segment) are listed too, vouched for by nobody: who
    // wrote them is unknown, so no backup deduplicates against them (this one did not).
    if !dedup.index.recovered.is_empty() {
        let (name, bytes) = sealer.seal(&Voucher::Nobody, &dedup.index.recovered)?;
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
    let snapshot = new_snapshot(opts, time_ns, &paths, root, stats, std::mem::take(&mut builder.errors));
    let snapshot_id = match opts.unless_tree.as_ref() == Some(&snapshot.tree) {
        // Nothing the snapshot holds changed: none is written (its data, if any, is in packs
        // that no snapshot references, which prune collects).
        true => String::new(),
        false => {
            let bytes = snapshot.encode(&repo.key.recipient, &signer, &repo.config.repo_id)?;
            let snapshot_id = commit::write_pending(repo, &bytes)?;
            let age_ns = crate::clock::boot_ns() - view_ns;
            if age_ns >= config.writer_grace_ns() / 2 {
                // Given up for good: this attempt returns here, and the next one seals a
                // snapshot of its own (age encryption is randomized, so its bytes and id differ).
                let unmarked = commit::abandon(repo, &snapshot_id, &snapshot).err().map(|e| {
                    format!(
                        "cannot mark pending/{snapshot_id} as abandoned ({e}): prune keeps it, and the \
                         data it references, for good (docs/concurrency.md, Leftovers)"
                    )
                });
                return Ok(Attempt::Stale { age_ns, unmarked });
            }
            // Promotion may be late (a suspend here is harmless): the pending copy already
            // protects everything the snapshot references. The pending copy is left for the
            // owner's prune, so a backup never needs delete permission.
            commit::promote(repo, &snapshot_id, &bytes)?;
            snapshot_id
        }
    };
    if let Some(cache) = builder.cache {
        if let Err(e) = cache.commit() {
            warnings.push(format!("cannot save the files cache ({e}); the next run reads every file"));
        }
    }
    Ok(Attempt::Committed(Box::new(BackupResult {
        snapshot_id,
        snapshot,
        warnings,
        read_mode: mode,
        budget: budget_bytes,
        budget_peak: budget.peak(),
        workers,
        reused_dirs: builder.reused_dirs,
        unrecorded: builder.unrecorded.take(),
        changes: classify.then(|| counts.get()),
        dry_run: None,
    })))
}

/// Where the pipeline's files come from.
enum Input {
    Scan { scan: ScanHandle, read: ReadHandle, select_warnings: Option<crate::ops::select::Warnings> },
    Stream(StreamHandle, Box<dyn FnOnce() -> std::result::Result<(), String> + Send>),
}

/// A stream's file: regular, 0600 and the running user's (restic uses 0644; a dump of unknown
/// content is not made readable by all when restored), modified when the backup started.
fn stream_meta(time_ns: i64) -> Meta {
    let now = i128::from(time_ns);
    Meta {
        kind: stages::FileKind::File,
        mode: libc::S_IFREG | 0o600,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        size: 0,
        mtime_ns: now,
        ctime_ns: now,
        ino: 0,
        dev: 0,
        nlink: 1,
        rdev: 0,
        blocks: 0,
    }
}

/// The record of a run of `opts` over `paths` (a real one, or what a dry run would write).
pub(crate) fn new_snapshot(
    opts: &BackupOptions,
    time_ns: i64,
    paths: &[PathBuf],
    tree: Vec<stages::BlobId>,
    stats: crate::snapshot::Stats,
    errors: Vec<crate::snapshot::FileError>,
) -> Snapshot {
    Snapshot {
        version: crate::snapshot::VERSION,
        time_ns,
        host: opts.host.clone(),
        user: std::env::var("USER").unwrap_or_default(),
        paths: paths.iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect(),
        tags: opts.tags.clone(),
        tree,
        stats,
        errors,
        program: format!("bakare {}", env!("CARGO_PKG_VERSION")),
        description: opts.description.clone(),
        selection: opts.selection.clone(),
        original: None,
    }
}

/// Where the blobs dedup found new go: to packs, or (a dry run) to a counter.
enum Store {
    Write { compress: stages::Workers, encrypt: stages::Workers, write: stages::write::WriteHandle<PackSink> },
    Count(std::thread::JoinHandle<Tally>),
}

/// What keys the files cache of `roots`: a followed root (`LINK/`) is another source than the
/// link.
fn sources(roots: &[stages::scan::Root]) -> Vec<PathBuf> {
    roots
        .iter()
        .filter(|r| r.unreachable.is_none())
        .map(|r| if r.follow { r.path.join("") } else { r.path.clone() })
        .collect()
}

/// The files cache a run of `paths` from `host` into `repo` uses in `cache_dir`.
pub fn cache_file_of(repo: &Repository, host: &str, cache_dir: &Path, paths: &[PathBuf]) -> Result<PathBuf> {
    let roots = stages::scan::normalize_roots(paths).map_err(|e| Error::io(".", e))?;
    Ok(filescache::cache_file(cache_dir, &repo.config.repo_id, host, &sources(&roots)))
}

type CacheSetup = (Option<CacheLookup>, Option<CacheWriter>, Arc<Mutex<Option<String>>>);

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
    // A dry run leaves the cache as it is: it reads the last one and starts no next one.
    let writer = match opts.dry_run {
        true => None,
        false => match CacheWriter::create(&path, &repo_id, filescache::cache_key(&repo.wk.catalog_key)) {
            Ok(w) => Some(w),
            Err(e) => {
                warnings.push(format!(
                    "cannot write the files cache in {} ({e}); the next run reads every file",
                    dir.display()
                ));
                None
            }
        },
    };
    let reader = match CacheReader::open(&path, &repo_id, filescache::cache_key(&repo.wk.catalog_key)) {
        Ok(r) => r,
        Err(why) => {
            warnings.push(format!("{why}; reading every file"));
            None
        }
    };
    let Some(reader) = reader else { return (None, writer, problem) };
    let lookup = CacheLookup { reader, index, problem: problem.clone(), found: false };
    (Some(lookup), writer, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// --mem-limit holds whatever the machine's CPU count: each worker past two is reserved
    /// for, and workers are dropped to fit rather than the limit.
    #[test]
    fn workers_are_fitted_to_the_memory_limit() {
        use crate::format::config::Compression;
        const M: u64 = 1 << 20;
        let fit = |limit: Option<u64>, workers| budget_and_workers(limit, workers, Compression::Auto, 0, 0);
        assert_eq!(fit(None, 16).unwrap(), (DEFAULT_BUDGET, 16));
        assert_eq!(fit(Some(88 * M), 16).unwrap(), (48 * M, 2));
        assert_eq!(fit(Some(88 * M), 1).unwrap(), (48 * M, 1));
        // 40 MiB for two workers, 7 more for each other: seven fit beside 48 MiB in 128.
        assert_eq!(fit(Some(128 * M), 16).unwrap(), (128 * M - 75 * M, 7));
        assert_eq!(fit(Some(128 * M), 4).unwrap(), (128 * M - 54 * M, 4));
        assert_eq!(fit(Some(1 << 40), usize::MAX).unwrap().1, MAX_WORKERS);
        assert_eq!(fit(Some(512 * M), 2).unwrap(), (472 * M, 2));
        let e = fit(Some(87 * M), 16).unwrap_err().to_string();
        assert!(e.contains("--mem-limit 87 MiB is too small") && e.contains("at least 88 MiB"), "{e}");
        // The index is reserved for too: 100,000 blobs take 6.1 MiB more.
        let with_index = budget_and_workers(Some(128 * M), 16, Compression::Auto, 0, 100_000).unwrap();
        assert_eq!(with_index, (128 * M - 68 * M - index_reserve(100_000), 6));
        // A level whose contexts are larger costs that much per worker too, two included.
        let level = Compression::Level(19);
        let per = compression_reserve(level, 1);
        assert!(per > 10 * M, "{per}");
        let (budget, w) = budget_and_workers(Some(512 * M), 16, level, 0, 0).unwrap();
        assert_eq!(budget, 512 * M - 40 * M - 7 * M * (w as u64 - 2) - per * w as u64);
        assert!(budget >= MIN_BUDGET && budget < MIN_BUDGET + 7 * M + per, "{budget} {w}");
        // Parity costs 4 MiB more a worker, the first two included: 40 + 8, then 11 each, so
        // four fit beside 48 MiB in 128.
        let parity = budget_and_workers(Some(128 * M), 16, Compression::Auto, 5, 0).unwrap();
        assert_eq!(parity, (128 * M - 40 * M - 14 * M - 16 * M, 4));
        assert_eq!(worker_reserve(5), 11 * M);
        assert_eq!(worker_reserve(0), WORKER_RESERVE);
        // At 100 % the recovery shards are as large as the pack.
        assert_eq!(parity_reserve(100), 34 * M);
    }

    /// A run of `src` into `repo` with the files cache in `cache`, told by a watcher that
    /// only `changed` (absolute) changed (None: a plain run).
    fn watched_run(
        repo: &Repository,
        src: &Path,
        cache: &Path,
        changed: Option<&[&Path]>,
    ) -> Result<BackupResult> {
        backup(repo, watched_opts(src, cache, changed))
    }

    fn watched_opts(src: &Path, cache: &Path, changed: Option<&[&Path]>) -> BackupOptions {
        let watched = changed.map(|dirs| {
            let mut d = stages::dirty::Dirty::default();
            for dir in dirs {
                d.mark(dir.as_os_str().as_bytes());
            }
            Arc::new(d)
        });
        BackupOptions {
            paths: vec![src.to_path_buf()],
            excludes: vec![],
            select: Default::default(),
            selection: Vec::new(),
            mem_limit: None,
            read_mode: ReadMode::Pool,
            workers: 2,
            source: Arc::new(::io::LocalSource::default()),
            host: "h".into(),
            tags: vec![],
            description: None,
            cache_dir: Some(cache.to_path_buf()),
            progress: Default::default(),
            on_file: None,
            dry_run: false,
            watched,
            unless_tree: None,
        }
    }

    fn content_at(repo: &Repository, r: &BackupResult, path: &Path) -> Option<Vec<stages::BlobId>> {
        let (index, _) = repo.load_index().unwrap();
        let reader = crate::repo::BlobReader::new(repo, &index).unwrap();
        let node = crate::find::lookup(&reader, &r.snapshot.tree, path.as_os_str().as_bytes()).unwrap()?;
        match node.kind {
            crate::tree::NodeKind::File { content, .. } => Some(content),
            _ => None,
        }
    }

    #[test]
    fn a_run_that_makes_the_tree_it_is_told_of_writes_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), "f").unwrap();
        let repo = Repository::init(dir.path().join("repo"), Some(&dir.path().join("key"))).unwrap();
        let cache = dir.path().join("cache");
        let first = watched_run(&repo, &src, &cache, None).unwrap();
        let again = |unless: Option<Vec<stages::BlobId>>| {
            let mut o = watched_opts(&src, &cache, None);
            o.unless_tree = unless;
            backup(&repo, o).unwrap()
        };
        let same = again(Some(first.snapshot.tree.clone()));
        assert_eq!(same.snapshot_id, "", "the same tree: no snapshot");
        assert_eq!(same.snapshot.tree, first.snapshot.tree);
        assert_eq!(repo.snapshots().unwrap().0.len(), 1);
        let other = again(Some(vec![[7u8; 32]]));
        assert!(!other.snapshot_id.is_empty());
        assert_eq!(repo.snapshots().unwrap().0.len(), 2);
    }

    #[test]
    fn a_watched_run_takes_untouched_directories_unlisted_and_a_missed_change_stops_it() {
        use std::fs;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for (p, data) in [("a/1", "one"), ("a/2", "two"), ("b/deep/3", "three"), ("c/4", "four")] {
            fs::create_dir_all(src.join(p).parent().unwrap()).unwrap();
            fs::write(src.join(p), data).unwrap();
        }
        let repo = Repository::init(dir.path().join("repo"), Some(&dir.path().join("key"))).unwrap();
        let cache = dir.path().join("cache");
        // Entries changed within a second of a run are not recorded (racy timestamps).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let first = watched_run(&repo, &src, &cache, None).unwrap();
        // Only the directories above the root (made by the test, so unsettled) are not.
        let unrecorded = first.unrecorded.clone().unwrap();
        assert!(unrecorded.iter().all(|d| !d.starts_with(src.as_os_str().as_bytes())), "{unrecorded:?}");
        let old3 = content_at(&repo, &first, &src.join("b/deep/3")).unwrap();

        // A change the watcher did not report, deep in b: b is not listed, so the run keeps
        // what the cache recorded. That is what proves the directory was not looked at.
        fs::write(src.join("b/deep/3"), "THREE").unwrap();
        fs::write(src.join("a/new"), "new").unwrap();
        let a = src.join("a");
        let second = watched_run(&repo, &src, &cache, Some(&[a.as_path()])).unwrap();
        assert!(content_at(&repo, &second, &src.join("a/new")).is_some(), "a was listed");
        assert_eq!(content_at(&repo, &second, &src.join("b/deep/3")).unwrap(), old3);
        assert_eq!(second.snapshot.stats.files, 5);
        assert_eq!(second.reused_dirs, 3, "b, b/deep and c, from the cache");
        // A plain run sees everything.
        let third = watched_run(&repo, &src, &cache, None).unwrap();
        assert_ne!(content_at(&repo, &third, &src.join("b/deep/3")).unwrap(), old3);

        // A new entry in c moves c's stamp: told c is untouched, the run finds the cache's
        // record of c out of date, and commits nothing.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let _ = watched_run(&repo, &src, &cache, None).unwrap();
        fs::write(src.join("c/5"), "five").unwrap();
        let before = repo.snapshots().unwrap().0.len();
        match watched_run(&repo, &src, &cache, Some(&[a.as_path()])) {
            Err(Error::WatchGap(why)) => assert!(why.contains("/c"), "{why}"),
            other => panic!("expected a gap, got {:?}", other.map(|r| r.snapshot_id)),
        }
        assert_eq!(repo.snapshots().unwrap().0.len(), before, "nothing committed");
        // Told about c, the run is whole, and tree for tree what a plain run makes.
        let c = src.join("c");
        let told = watched_run(&repo, &src, &cache, Some(&[c.as_path()])).unwrap();
        let plain = watched_run(&repo, &src, &dir.path().join("other-cache"), None).unwrap();
        let tree_of = |r: &BackupResult| {
            let (index, _) = repo.load_index().unwrap();
            let reader = crate::repo::BlobReader::new(&repo, &index).unwrap();
            let node = crate::find::lookup(&reader, &r.snapshot.tree, src.as_os_str().as_bytes()).unwrap();
            match node.map(|n| n.kind) {
                Some(crate::tree::NodeKind::Dir { subtree }) => subtree,
                other => panic!("{other:?}"),
            }
        };
        // (Compared below the directories above src, whose times the test's own files move.)
        assert_eq!(tree_of(&told), tree_of(&plain));
        assert_ne!(tree_of(&told), tree_of(&third));
    }

    #[test]
    #[allow(clippy::unnecessary_cast)]
    fn auto_reads_memory_file_systems_with_threads_and_disks_with_io_uring() {
        let shm = PathBuf::from("/dev/shm");
        let tmpfs = rustix::fs::statfs("/dev/shm").is_ok_and(|s| s.f_type as i64 == libc::TMPFS_MAGIC as i64);
        let proc_ = PathBuf::from("/proc"); // procfs: not a memory file system of files to read
        assert_eq!(read_mode_for(ReadMode::Auto, std::slice::from_ref(&proc_)), ReadMode::Auto);
        assert_eq!(read_mode_for(ReadMode::Auto, &[]), ReadMode::Auto);
        if tmpfs {
            assert_eq!(read_mode_for(ReadMode::Auto, std::slice::from_ref(&shm)), ReadMode::Pool);
            // Every root must be in memory.
            assert_eq!(read_mode_for(ReadMode::Auto, &[shm.clone(), proc_]), ReadMode::Auto);
            // A forced mode stays.
            assert_eq!(read_mode_for(ReadMode::Uring, &[shm]), ReadMode::Uring);
        }
    }
}
