//! What a backup finds new: each regular file classified against the files cache of the last
//! run (for `run -v`'s listing and the counts of `run --dry-run`), and the sink that stands in
//! for compress → encrypt → write in a dry run, counting the new blobs instead of storing them.
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::Receiver;
use stages::read::ReadMode;
use stages::scan::{Known, Subtree};
use stages::{BlobId, BlobKind, Hole, Meta, NewBlob, StoredDir, StoredFile};

use crate::backup::{BackupOptions, BackupResult};
use crate::builder::Builder;
use crate::filescache::{self, CacheReader, DirEntry, Record};
use crate::index::Index;

/// How a file compares with the files cache of the last run. The cache, not the last snapshot,
/// is the reference (restic compares with the parent snapshot): it is what decides whether a
/// file is read, and it needs nothing from the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Not in the files cache (or no cache: a first run, `--no-cache`, another host).
    New,
    /// In the cache, but its size, times or inode differ, or its data is no longer in the
    /// repository: it is read again.
    Changed,
    /// As the cache describes it, its data in the repository: not read.
    Unchanged,
}

impl Change {
    pub fn word(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Unchanged => "unchanged",
        }
    }
}

/// Called from the scan thread for each regular file (the second and later names of a hard
/// link are not looked up, so not reported).
pub type OnFile = Arc<dyn Fn(Change, &Path) + Send + Sync>;

/// Files per `Change`.
#[derive(Debug, Default)]
pub struct Counts {
    pub new: AtomicU64,
    pub changed: AtomicU64,
    pub unchanged: AtomicU64,
}

impl Counts {
    pub fn get(&self) -> (u64, u64, u64) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (g(&self.new), g(&self.changed), g(&self.unchanged))
    }
}

/// The scan's `Known`: asks the files cache (if any), classifies, reports.
pub(crate) struct Classify {
    pub inner: Option<CacheLookup>,
    pub counts: Arc<Counts>,
    pub on_file: Option<OnFile>,
}

impl Known for Classify {
    fn file(&mut self, path: &Path, meta: &Meta) -> Option<StoredFile> {
        let (change, content) = match self.inner.as_mut() {
            None => (Change::New, None),
            Some(k) => match k.file(path, meta) {
                Some(content) => (Change::Unchanged, Some(content)),
                // The cache had no record of this path, or an outdated one.
                None => (if k.found { Change::Changed } else { Change::New }, None),
            },
        };
        let counter = match change {
            Change::New => &self.counts.new,
            Change::Changed => &self.counts.changed,
            Change::Unchanged => &self.counts.unchanged,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = &self.on_file {
            f(change, path);
        }
        content
    }

    fn dir(&mut self, path: &Path, meta: &Meta) -> Option<StoredDir> {
        self.inner.as_mut().and_then(|k| k.dir(path, meta))
    }

    fn subtree(&mut self, path: &Path, meta: &Meta, out: &mut dyn FnMut(Vec<u8>) -> bool) -> Subtree {
        let found = match self.inner.as_mut() {
            Some(k) => k.subtree(path, meta, out),
            None => Subtree::Absent,
        };
        if let Subtree::Found { files, .. } = &found {
            self.counts.unchanged.fetch_add(*files, Ordering::Relaxed);
        }
        found
    }

    fn record(&mut self, out: &mut Vec<u8>) {
        if let Some(k) = self.inner.as_mut() {
            k.record(out);
        }
    }
}

/// The previous run's files cache, walked in step with the scan.
pub(crate) struct CacheLookup {
    pub reader: CacheReader,
    pub index: Arc<Index>,
    pub problem: Arc<Mutex<Option<String>>>,
    /// Whether the cache had a record of the last file looked up (however outdated).
    pub found: bool,
}

impl CacheLookup {
    fn keep_problem(&mut self) {
        if let Some(p) = self.reader.problem.take() {
            *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
        }
    }
}

impl Known for CacheLookup {
    fn file(&mut self, path: &Path, meta: &Meta) -> Option<StoredFile> {
        let found = self.reader.lookup(path.as_os_str().as_bytes());
        self.keep_problem();
        // The next file's ids are checked against the index soon: their slots are random
        // places in a table of tens of MiB, so start fetching them while this file is handled.
        for id in self.reader.next_content().unwrap_or_default().iter().take(4) {
            self.index.prefetch(id);
        }
        self.found = found.is_some();
        let (e, extra) = found?;
        let same = e.size == meta.size
            && e.mtime_ns == meta.mtime_ns
            && e.ctime_ns == meta.ctime_ns
            && e.ino == meta.ino
            && e.dev == meta.dev;
        // Cached ids are dedup decisions like any other: each must be in the repository.
        if !same || !e.content.iter().all(|id| self.index.contains(id)) {
            return None;
        }
        let holes = extra.holes.into_iter().map(|h| Hole { offset: h.offset, len: h.len }).collect();
        let attrs = extra.attrs.map(|a| crate::filescache::encode_attrs(&a));
        Some(StoredFile { content: e.content, holes, attrs })
    }

    fn record(&mut self, out: &mut Vec<u8>) {
        self.reader.last_record(out);
    }

    fn subtree(&mut self, path: &Path, meta: &Meta, out: &mut dyn FnMut(Vec<u8>) -> bool) -> Subtree {
        /// Records go out in pieces of about this much: a directory high above a large tree
        /// holds ~75 bytes per file in it, never all at once.
        const PIECE: usize = 1 << 20;
        let (mut piece, mut files, mut bytes, mut dirs) = (Vec::new(), 0u64, 0u64, 0u64);
        let (mut missing, mut refused) = (None, false);
        let index = self.index.clone();
        let end = self.reader.subtree(path.as_os_str().as_bytes(), &mut |r, raw| {
            let ids = match r {
                Record::File(e) | Record::Full(e, _) => {
                    files += 1;
                    bytes = bytes.saturating_add(e.size);
                    &e.content
                }
                Record::Dir(d) => {
                    dirs += 1;
                    &d.tree
                }
            };
            // Cached ids are dedup decisions like any other: each must be in the repository.
            if missing.is_none() && !ids.iter().all(|id| index.contains(id)) {
                missing = Some(String::from_utf8_lossy(r.path()).into_owned());
            }
            piece.extend_from_slice(raw);
            if piece.len() >= PIECE && !refused {
                refused = !out(std::mem::take(&mut piece));
            }
        });
        self.keep_problem();
        if !piece.is_empty() && !refused {
            refused = !out(piece);
        }
        let own = match end {
            filescache::Subtree::Absent => return Subtree::Absent,
            filescache::Subtree::NoOwn => return Subtree::Gap("the files cache has no record of it".into()),
            filescache::Subtree::Own(d) => d,
        };
        if refused {
            return Subtree::Gap("the pipeline stopped".into());
        }
        if let Some(path) = missing {
            return Subtree::Gap(format!(
                "the files cache names blobs of {path} the repository does not hold"
            ));
        }
        let DirEntry { mtime_ns, ctime_ns, ino, dev, entries, tree, .. } = own;
        if !(mtime_ns == meta.mtime_ns && ctime_ns == meta.ctime_ns && ino == meta.ino && dev == meta.dev) {
            return Subtree::Gap("it changed since the files cache recorded it".into());
        }
        Subtree::Found { stored: StoredDir { entries, tree }, files, bytes, dirs }
    }

    fn dir(&mut self, path: &Path, meta: &Meta) -> Option<StoredDir> {
        let found = self.reader.dir(path.as_os_str().as_bytes());
        self.keep_problem();
        let DirEntry { mtime_ns, ctime_ns, ino, dev, entries, tree, .. } = found?;
        // Any entry added, removed or renamed moves the directory's mtime and ctime.
        let same =
            mtime_ns == meta.mtime_ns && ctime_ns == meta.ctime_ns && ino == meta.ino && dev == meta.dev;
        (same && tree.iter().all(|id| self.index.contains(id))).then_some(StoredDir { entries, tree })
    }
}

/// What a dry run would have stored: blobs and their plaintext bytes, per kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub data_blobs: u64,
    pub data_bytes: u64,
    pub tree_blobs: u64,
    pub tree_bytes: u64,
}

/// Drains the blobs dedup found new, counting them; each is dropped at once, which releases its
/// memory permit, so a dry run holds no more than a real one.
pub(crate) fn count(input: Receiver<Vec<NewBlob>>) -> std::io::Result<std::thread::JoinHandle<Tally>> {
    std::thread::Builder::new().name("dry-run".into()).spawn(move || {
        let mut t = Tally::default();
        for blob in input.iter().flatten() {
            let n = blob.data.len() as u64;
            match blob.kind {
                BlobKind::Tree => {
                    t.tree_blobs += 1;
                    t.tree_bytes += n;
                }
                _ => {
                    t.data_blobs += 1;
                    t.data_bytes += n;
                }
            }
        }
        t
    })
}

/// What a dry run found, besides the builder's counts.
pub(crate) struct Summary {
    pub paths: Vec<PathBuf>,
    pub time_ns: i64,
    pub started: Instant,
    pub warnings: Vec<String>,
    pub read_mode: ReadMode,
    pub budget_bytes: u64,
    pub budget_peak: u64,
    pub workers: usize,
    pub changes: Option<(u64, u64, u64)>,
}

/// The result of a dry run: an unsaved snapshot record whose stats count what would be new
/// (plaintext bytes: nothing was compressed, so `stored_bytes` is 0).
pub(crate) fn dry_result(
    mut builder: Builder,
    root: Vec<BlobId>,
    tally: Tally,
    opts: &BackupOptions,
    s: Summary,
) -> BackupResult {
    let mut stats = builder.stats;
    // As a real run counts them (`PackSink`): blobs of both kinds, bytes of data only.
    stats.new_blobs = tally.data_blobs + tally.tree_blobs;
    stats.new_bytes = tally.data_bytes;
    stats.stored_bytes = 0;
    stats.errors = builder.errors.len() as u64;
    stats.duration_ns = s.started.elapsed().as_nanos() as u64;
    let errors = std::mem::take(&mut builder.errors);
    let snapshot = crate::backup::new_snapshot(opts, s.time_ns, &s.paths, root, stats, errors);
    BackupResult {
        snapshot_id: String::new(),
        snapshot,
        warnings: s.warnings,
        read_mode: s.read_mode,
        budget: s.budget_bytes,
        budget_peak: s.budget_peak,
        workers: s.workers,
        reused_dirs: builder.reused_dirs,
        unrecorded: builder.unrecorded.take(),
        changes: s.changes,
        dry_run: Some(tally),
    }
}
