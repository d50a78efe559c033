//! restore: walks a snapshot's trees, creates directories, links and special files on the
//! calling thread, and restores file contents with a pool of workers (each blob is fetched,
//! authenticated, decompressed and checked against its id before a byte is written).
//! A file that cannot be restored is removed (never left with wrong bytes) and named; the rest
//! goes on. A directory's own metadata is applied once everything in it is restored (when the
//! last handle on it goes), so read-only directories and mtimes survive their contents.
//!
//! Confinement (docs/security.md): below the target, every change goes through an open
//! directory handle and one entry name (`confine`), never a path string, and no symlink is
//! followed. Trees are hostile input: each directory is checked across all its blobs
//! (`tree::Listing`) as it is read, one blob at a time, and walks are bounded in depth and in
//! entries (`tree::MAX_DEPTH`, `tree::Amplification`); what breaks a rule is named and
//! refused, and the rest is restored.
mod confine;
mod entry;
mod spill;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_channel::bounded;
use stages::BlobId;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::repo::{BlobReader, Repository, Scratch};
use crate::snapshot::Snapshot;
use crate::tree::{entries_size, Amplification, Listing, Node, NodeKind, MAX_DEPTH, MAX_HELD, MAX_PATH};
use entry::{lock, DirHandle, FileJob, Restorer};
use spill::Spill;

pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (e.g. `/home/u/docs`); empty = everything.
    pub include: Vec<PathBuf>,
    pub workers: usize,
    /// Restore owners and set-id bits (they take effect only when running as root).
    pub owner: bool,
    /// Restore FIFOs, sockets and device nodes (device nodes only when running as root).
    pub special: bool,
    pub overwrite: Overwrite,
    /// Remove what the target holds and the snapshot does not (below the restored paths only).
    pub delete: bool,
    /// Change nothing: count what would be created, replaced, kept and deleted.
    pub dry_run: bool,
    /// Read every restored file back and compare it with the snapshot's blob ids.
    pub verify: bool,
    /// Leave out entries matching these patterns (as `run --exclude`: without `/`, a name
    /// anywhere; with `/`, the entry's path in the snapshot).
    pub exclude: Vec<String>,
    /// Memory ceiling for the whole process (`--mem-limit`); None: `Memory::DEFAULT`.
    pub mem_limit: Option<u64>,
    /// Told the path of each file restored (or, in a dry run, that would be), from the
    /// restoring threads (`restore -v`).
    pub on_file: Option<OnRestored>,
}

pub type OnRestored = Arc<dyn Fn(&Path) + Send + Sync>;

fn told(opts: &RestoreOptions, path: &Path) {
    if let Some(f) = &opts.on_file {
        f(path);
    }
}

/// How restore spends memory besides the index and the fixed reserve (`--mem-limit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    /// The reader's caches of pack windows and bundles (`BlobReader::with_cache`).
    pub cache: usize,
    /// Bytes of tree entries the walk's open directories may hold (`tree::MAX_HELD` at most).
    pub held: usize,
    /// Workers writing files (each holds a blob, sealed and plain).
    pub workers: usize,
    /// What each of the two lists of hard links keeps in memory before it spills to a
    /// temporary file (`spill`).
    pub spill: usize,
    /// Most files with other names whose restored inode is tracked (~48 bytes each); without
    /// --mem-limit, all of them.
    pub linked: usize,
}

impl Memory {
    /// Without --mem-limit: about 230 MiB at most, and ~48 bytes per file with other names
    /// (every one is tracked, so every hard link is restored as a link), of which a restore of
    /// ordinary trees uses little (the 3 GiB mixed corpus peaks under 100 MiB).
    pub const DEFAULT: Memory =
        Memory { cache: 96 << 20, held: MAX_HELD, workers: 4, spill: 16 << 20, linked: usize::MAX };
    /// The most `within` tracks: what 48 MiB holds.
    const LINKED_MAX: usize = 1 << 20;

    /// The plan for `--mem-limit` (None: `DEFAULT`) besides the index and the fixed reserve,
    /// or an error naming the least limit that works with this repository.
    pub fn plan(repo: &Repository, index: &Index, mem_limit: Option<u64>) -> Result<Memory> {
        let Some(limit) = mem_limit else { return Ok(Memory::DEFAULT) };
        let reserve = crate::backup::FIXED_RESERVE + crate::backup::index_reserve(index.blob_count());
        // A worker holds a blob sealed and plain, and the read of a pack range.
        let worker = 2 * u64::from(repo.chunk_params().max) + (1 << 20);
        let plan = limit.checked_sub(reserve).and_then(|rest| Memory::within(rest, worker));
        plan.ok_or_else(|| {
            Error::Invalid(format!(
                "--mem-limit {} MiB is too small to restore or dump from this repository (needs at least {} MiB)",
                limit >> 20,
                (reserve + Memory::least(worker)).div_ceil(1 << 20)
            ))
        })
    }

    /// A plan within `bytes`, for workers of `worker` bytes each; None when `bytes` cannot
    /// hold one worker and the smallest of everything else (`Memory::least`).
    pub fn within(bytes: u64, worker: u64) -> Option<Memory> {
        if bytes < Memory::least(worker) {
            return None;
        }
        let quarter = bytes / 4;
        let clamp = |v: u64, lo: usize, hi: usize| (v.min(hi as u64) as usize).max(lo);
        Some(Memory {
            workers: clamp(quarter / worker.max(1), 1, Memory::DEFAULT.workers),
            cache: clamp(quarter, 8 << 20, Memory::DEFAULT.cache),
            // A real directory's blob of 4,096 entries holds up to ~16 MiB of content lists
            // (files of ~100 MB each): at least that much.
            held: clamp(bytes / 3, 16 << 20, Memory::DEFAULT.held),
            spill: clamp(bytes / 16, 1 << 20, Memory::DEFAULT.spill),
            linked: clamp(bytes / 16 / 48, 4096, Memory::LINKED_MAX),
        })
    }

    /// The least `within` takes: one worker, a 12 MiB cache, 16 MiB of tree entries and the
    /// lists' parts, each at most its share.
    pub fn least(worker: u64) -> u64 {
        (4 * worker).max(48 << 20)
    }
}

/// What to do with an entry already in the target where restore would create one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace it.
    Always,
    /// Replace it unless it is a file with the snapshot's size, mtime and content (read back
    /// and compared blob by blob); a file kept gets the snapshot's metadata.
    #[default]
    IfChanged,
    /// Replace it only when the snapshot's version is newer (mtime); otherwise leave it as is.
    IfNewer,
    /// Leave it as it is.
    Never,
}

#[derive(Debug, Default)]
pub struct RestoreResult {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub errors: Vec<(PathBuf, String)>,
    /// Files that were in the target and were replaced.
    pub replaced: u64,
    /// The snapshot's bytes of the regular files replaced (included in `bytes`).
    pub replaced_bytes: u64,
    /// Files that were in the target and were left there (`Overwrite`).
    pub kept: u64,
    /// Entries removed by `delete` (everything below a removed directory counts), and the
    /// bytes of the files among them.
    pub deleted: u64,
    pub deleted_bytes: u64,
    /// Files read back and found equal to the snapshot (`verify`).
    pub verified: u64,
    /// Entries left out by `exclude` (a directory counts once).
    pub excluded: u64,
    /// What was deliberately left out (not errors): ownership, set-id bits and device nodes
    /// when not running as root, special files with `--no-special`.
    pub notes: Vec<String>,
    /// Packs whose damage was repaired from their parity while reading, and the 4 KiB blocks
    /// of each rebuilt: what was restored from them is exact.
    pub corrected: Vec<(String, usize)>,
}

fn components(p: &Path) -> Vec<Vec<u8>> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n.as_bytes().to_vec()),
            _ => None,
        })
        .collect()
}

/// Which part of a subtree to restore: everything, or only what leads to the include paths.
#[derive(Clone)]
enum Want {
    All,
    Some(Vec<Vec<Vec<u8>>>),
}

impl Want {
    /// The wish for the child `name`, or None when it is not wanted at all.
    fn child(&self, name: &[u8]) -> Option<Want> {
        match self {
            Want::All => Some(Want::All),
            Want::Some(paths) => {
                let mut rest = Vec::new();
                for p in paths {
                    if p.first().map(Vec::as_slice) == Some(name) {
                        if p.len() == 1 {
                            return Some(Want::All);
                        }
                        rest.push(p[1..].to_vec());
                    }
                }
                (!rest.is_empty()).then_some(Want::Some(rest))
            }
        }
    }
}

/// Files go to the workers in batches (up to this many, or `BATCH_BYTES` of content): one
/// channel handoff per small file cost more than creating it (100,000 files: 115,000
/// `sched_yield`s from waiting workers).
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

/// One directory being walked: its handle, and its tree blobs read one at a time.
struct Frame<'a> {
    dir: Arc<DirHandle<'a>>,
    blobs: std::vec::IntoIter<BlobId>,
    nodes: std::vec::IntoIter<Node>,
    listing: Listing,
    want: Want,
    fresh: bool,
    /// Estimated bytes of the current blob's entries (`entries_size`).
    held: usize,
    /// Names of this directory's entries that were refused (`--delete` spares them).
    refused: Vec<Vec<u8>>,
    /// With `delete`: the target's names in this directory not yet matched by the snapshot's.
    extra: Option<std::iter::Peekable<std::vec::IntoIter<Vec<u8>>>>,
}

impl<'a> Frame<'a> {
    fn new(r: &Restorer, dir: Arc<DirHandle<'a>>, blobs: Vec<BlobId>, want: Want, fresh: bool) -> Self {
        // Only where everything is restored: a partial restore deletes nothing beside its paths.
        let extra =
            (r.opts.delete && !fresh && matches!(want, Want::All)).then(|| r.existing_names(&dir)).flatten();
        Frame {
            dir,
            blobs: blobs.into_iter(),
            nodes: Vec::new().into_iter(),
            listing: Listing::default(),
            want,
            fresh,
            held: 0,
            refused: Vec::new(),
            extra: extra.map(|v| v.into_iter().peekable()),
        }
    }

    /// Removes the target's entries that sort before `name` (all that remain, for None), and
    /// steps over `name` itself. Spared: what `keep` says (excluded names: what the restore
    /// leaves out, it leaves alone) and the names of entries the snapshot has but that were
    /// refused.
    fn delete_until(&mut self, r: &Restorer, name: Option<&[u8]>, keep: &dyn Fn(&[u8]) -> bool) {
        let Some(extra) = &mut self.extra else { return };
        while let Some(n) = extra.next_if(|n| name.is_none_or(|name| n.as_slice() < name)) {
            if !keep(&n) && !self.refused.contains(&n) {
                r.delete(&self.dir, &n);
            }
        }
        if let Some(name) = name {
            extra.next_if(|n| n.as_slice() == name);
        }
    }
}

/// Restores `snapshot` (or its `include` paths) below `opts.target`. Sets the process umask
/// to 0 while it runs (every mode it creates is explicit).
pub fn restore(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
) -> Result<RestoreResult> {
    let memory = Memory::plan(repo, index, opts.mem_limit)?;
    let reader = BlobReader::with_cache(repo, index, memory.cache)?;
    let exclude = crate::backup::build_exclude(&opts.exclude, Vec::new())?;
    // A dry run into a target that does not exist yet: everything would be created, and no
    // handle is ever used (the root frame is fresh).
    let missing = opts.dry_run && !opts.target.is_dir();
    if !opts.dry_run {
        // 0700 where it creates the target: nobody else enters it while it fills.
        ::io::durable::create_private_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    }
    // The target itself is the user's choice: it may be a link.
    let root = rustix::fs::open(
        if missing { Path::new("/") } else { &opts.target },
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io(&opts.target, e.into()))?;
    confine::raise_fd_limit();
    let _umask = confine::Umask::clear();
    let as_root = rustix::process::geteuid().is_root();
    // No paths, or the root among them (`restore ID -t T /`): everything.
    let want = if opts.include.is_empty() || opts.include.iter().any(|p| components(p).is_empty()) {
        Want::All
    } else {
        Want::Some(opts.include.iter().map(|p| components(p)).collect())
    };
    let r = Restorer {
        reader: &reader,
        opts,
        owner: as_root && opts.owner,
        devices: as_root,
        verified: AtomicU64::new(0),
        deleted: AtomicU64::new(0),
        deleted_bytes: AtomicU64::new(0),
        replaced: AtomicU64::new(0),
        replaced_bytes: AtomicU64::new(0),
        kept: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        unlisted: AtomicU64::new(0),
        full: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        linked: Mutex::new(entry::Linked::new(memory.linked)),
        deferred: Mutex::new(Spill::new(memory.spill)),
        setid_dropped: AtomicU64::new(0),
        owners_skipped: AtomicU64::new(0),
        devices_skipped: AtomicU64::new(0),
        privileged_dropped: AtomicU64::new(0),
        locking_linked: AtomicU64::new(0),
        attrs_failed: AtomicU64::new(0),
        first_attr_failure: Mutex::new(None),
        xattrs_skipped: AtomicU64::new(0),
        flags_skipped: AtomicU64::new(0),
        specials_skipped: AtomicU64::new(0),
        euid: rustix::process::geteuid().as_raw(),
    };
    let mut result = RestoreResult::default();
    // Hard links, made once every file is restored: (their directory relative to the
    // target, entry).
    let mut links: Spill<(Vec<u8>, Node)> = Spill::new(memory.spill);
    let totals = Mutex::new((0u64, 0u64));
    let walk = std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = bounded::<Vec<FileJob>>(8);
        for _ in 0..opts.workers.clamp(1, memory.workers) {
            let rx = rx.clone();
            let (r, totals) = (&r, &totals);
            s.spawn(move || {
                let mut scratch = Scratch::default();
                let (mut files, mut bytes) = (0, 0);
                for job in rx.iter().flatten() {
                    if let Some(n) = r.file(&job, &mut scratch) {
                        files += 1;
                        bytes = u64::saturating_add(bytes, n);
                        if r.opts.on_file.is_some() {
                            told(r.opts, &job.dir.child_path(&job.node.name));
                        }
                    }
                }
                let mut t = lock(totals);
                t.0 += files;
                t.1 = t.1.saturating_add(bytes);
            });
        }
        drop(rx);
        let top = DirHandle {
            fd: root.try_clone().map_err(|e| Error::io(&opts.target, e))?,
            path: opts.target.clone(),
            rel: Vec::new(),
            node: None,
            has_links: AtomicBool::new(false),
            r: &r,
            _parent: None,
            no_flags: std::sync::OnceLock::new(),
        };
        // Depth first, one frame per level: memory grows with depth (one tree blob each), not
        // with the size of the snapshot.
        let mut stack = vec![Frame::new(&r, Arc::new(top), snapshot.tree.clone(), want, missing)];
        let mut batch: Vec<FileJob> = Vec::new();
        let mut batch_bytes = 0u64;
        let mut amplification = Amplification::default();
        // Whether the entry `name` of `dir` matches an exclude pattern (its path as in the
        // snapshot, the same below the target).
        let excluded = |dir: &DirHandle, name: &[u8]| {
            exclude.as_ref().is_some_and(|ex| {
                let mut path = b"/".to_vec();
                path.extend_from_slice(&dir.child_rel(name));
                ex(Path::new(OsStr::from_bytes(&path)), false)
            })
        };
        // Bytes of tree entries the frames hold (each its current blob's), at most `MAX_HELD`.
        let mut held = 0usize;
        loop {
            let depth = stack.len();
            let Some(frame) = stack.last_mut() else { break };
            let Some(mut node) = frame.nodes.next() else {
                match frame.blobs.next() {
                    Some(id) => match reader.tree_blob(&id, &mut frame.listing) {
                        Ok((nodes, refused)) => {
                            for bad in refused {
                                let name = String::from_utf8_lossy(&bad.name);
                                let why =
                                    format!("entry {name:?} refused: {} (tree {})", bad.why, hex::encode(id));
                                r.fail(&frame.dir.path, why);
                                if frame.extra.is_some() {
                                    frame.refused.push(bad.name);
                                }
                            }
                            if let Err(why) = amplification.visit(Some(&id), nodes.len()) {
                                r.fail(&opts.target, format!("{why}: the rest is refused"));
                                break;
                            }
                            held = held - frame.held + entries_size(&nodes);
                            frame.held = entries_size(&nodes);
                            frame.nodes = nodes.into_iter();
                            if held > memory.held {
                                let more = if opts.mem_limit.is_some() {
                                    " (a larger --mem-limit allows more)"
                                } else {
                                    ""
                                };
                                let why = format!(
                                    "its entries and those of the directories above it take more than \
                                     {} MiB: refused{more}",
                                    memory.held >> 20
                                );
                                r.fail(&frame.dir.path, why);
                                held -= frame.held;
                                stack.pop();
                            }
                        }
                        Err(e) => {
                            r.fail(&frame.dir.path, format!("directory contents refused or lost: {e}"));
                            held -= frame.held;
                            stack.pop();
                        }
                    },
                    None => {
                        if !r.stop.load(Relaxed) {
                            let dir = frame.dir.clone();
                            frame.delete_until(&r, None, &|n| excluded(&dir, n));
                        }
                        held -= frame.held;
                        stack.pop();
                    }
                }
                continue;
            };
            if r.stop.load(Relaxed) {
                break;
            }
            if frame.extra.is_some() {
                let dir = frame.dir.clone();
                frame.delete_until(&r, Some(&node.name), &|n| excluded(&dir, n));
            }
            let Some(child_want) = frame.want.child(&node.name) else { continue };
            let dir = &frame.dir;
            if excluded(dir, &node.name) {
                result.excluded += 1;
                continue;
            }
            match &mut node.kind {
                NodeKind::Dir { subtree } => {
                    let path = dir.child_path(&node.name);
                    if depth >= MAX_DEPTH {
                        r.fail(&path, format!("deeper than {MAX_DEPTH} levels: refused"));
                        continue;
                    }
                    if dir.rel.len() + node.name.len() >= MAX_PATH {
                        r.fail(&path, format!("its path is longer than {MAX_PATH} bytes: refused"));
                        continue;
                    }
                    let (fd, created) = match r.child_dir(dir, &node.name, frame.fresh) {
                        Ok(d) => d,
                        Err(e) => {
                            r.fail(&path, e);
                            continue;
                        }
                    };
                    if !created && !r.opts.dry_run {
                        // An earlier restore may have made it immutable or append-only: cleared
                        // while its entries are written, set again with its metadata when it is
                        // left (a failure to clear shows as the entries that cannot be written).
                        let _ = confine::unlock(&fd);
                    }
                    let subtree = std::mem::take(subtree);
                    let child = DirHandle {
                        fd,
                        rel: dir.child_rel(&node.name),
                        path,
                        node: (!r.opts.dry_run).then_some(node),
                        has_links: AtomicBool::new(false),
                        r: &r,
                        _parent: Some(dir.clone()),
                        no_flags: std::sync::OnceLock::new(),
                    };
                    result.dirs += 1;
                    stack.push(Frame::new(&r, Arc::new(child), subtree, child_want, created));
                }
                NodeKind::File { size, content } => {
                    // A job holds its content list too (a hostile one can be megabytes long).
                    // Sizes are what a restore writes (a sparse file's holes count: they are
                    // what a file system may fill), each hole entry 16 bytes.
                    let held = (content.len() as u64 * 32).saturating_add(node.holes.len() as u64 * 16);
                    batch_bytes = batch_bytes.saturating_add(size.saturating_add(held));
                    batch.push(FileJob { dir: dir.clone(), node, fresh: frame.fresh });
                    if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
                        batch_bytes = 0;
                        if tx.send(std::mem::take(&mut batch)).is_err() {
                            return Err(Error::Pipeline("restore workers ended".into()));
                        }
                    }
                }
                NodeKind::HardLink { .. } => {
                    dir.mark_links();
                    let size = std::mem::size_of::<Node>()
                        + dir.rel.len()
                        + entries_size(std::slice::from_ref(&node));
                    links.push((dir.rel.clone(), node), size);
                }
                _ => r.special(dir, &node, frame.fresh),
            }
        }
        drop(stack);
        if !batch.is_empty() && tx.send(batch).is_err() {
            return Err(Error::Pipeline("restore workers ended".into()));
        }
        Ok(())
    });
    walk?;
    let (files, bytes) = *lock(&totals);
    result.files = files;
    result.bytes = bytes;
    let mut spill_failed: Vec<String> = links.failed.iter().map(|e| format!("hard links: {e}")).collect();
    match links.drain() {
        Ok(links) => hard_links(&r, &root, links, &mut result),
        Err(e) => r.fail(&opts.target, format!("cannot read back the list of hard links: {e}")),
    }
    // In the order the walk left them, each directory after those below it: a read-only
    // parent must not stop its children's metadata.
    let deferred = std::mem::replace(&mut *lock(&r.deferred), Spill::new(0));
    spill_failed.extend(deferred.failed.iter().map(|e| format!("directories waiting for them: {e}")));
    match deferred.drain() {
        Ok(deferred) => {
            for item in deferred {
                let (rel, node) = match item {
                    Ok(item) => item,
                    Err(e) => {
                        r.fail(&opts.target, format!("cannot read back directories' metadata: {e}"));
                        break;
                    }
                };
                let applied = confine::open_beneath(&root, &rel).and_then(|fd| r.dir_meta(&fd, &node));
                if let Err(e) = applied {
                    r.fail(&target_path(&opts.target, &rel), format!("cannot set directory metadata: {e}"));
                }
            }
        }
        Err(e) => r.fail(&opts.target, format!("cannot read back directories' metadata: {e}")),
    }
    result.deleted = r.deleted.load(Relaxed);
    result.verified = r.verified.load(Relaxed);
    result.deleted_bytes = r.deleted_bytes.load(Relaxed);
    result.replaced = r.replaced.load(Relaxed);
    result.replaced_bytes = r.replaced_bytes.load(Relaxed);
    result.kept = r.kept.load(Relaxed);
    result.notes = r.notes();
    result.corrected = reader.corrected();
    for why in spill_failed {
        result.notes.push(format!(
            "a list could not go to a temporary file and was kept in memory, past the memory limit \
             ({why})"
        ));
    }
    let unlisted = r.unlisted.load(Relaxed);
    result.errors = r.errors.into_inner().unwrap_or_else(|p| p.into_inner());
    if unlisted > 0 {
        result.errors.push((opts.target.clone(), format!("and {unlisted} more failures, not listed")));
    }
    Ok(result)
}

/// Where `rel` (relative to the target, possibly empty) is, for messages.
fn target_path(target: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        target.to_path_buf()
    } else {
        target.join(OsStr::from_bytes(rel))
    }
}

/// Each hard link becomes a link to its first name when this restore created that file (and
/// it is still the same file); otherwise its content is restored.
fn hard_links<'a>(
    r: &'a Restorer<'a>,
    root: &OwnedFd,
    links: spill::Drain<(Vec<u8>, Node)>,
    result: &mut RestoreResult,
) {
    let linked = std::mem::replace(&mut *lock(&r.linked), entry::Linked::new(0));
    lock(&r.linked).untracked = linked.untracked; // for the notes
    let mut scratch = Scratch::default();
    let mut parent: Option<(Vec<u8>, Arc<DirHandle>)> = None;
    for item in links {
        let (rel, node) = match item {
            Ok(item) => item,
            Err(e) => {
                r.fail(&r.opts.target, format!("cannot read back the list of hard links: {e}"));
                break;
            }
        };
        if r.stop.load(Relaxed) {
            break;
        }
        let path = target_path(&r.opts.target, &rel).join(OsStr::from_bytes(&node.name));
        let NodeKind::HardLink { target, content, size } = &node.kind else { continue };
        let (target, content, size) = (target.clone(), content.clone(), *size);
        if parent.as_ref().is_none_or(|(p, _)| *p != rel) {
            let opened = confine::open_beneath(root, &rel).map(|fd| DirHandle {
                fd,
                path: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                rel: rel.clone(),
                node: None,
                has_links: AtomicBool::new(false),
                r,
                _parent: None,
                no_flags: std::sync::OnceLock::new(),
            });
            match opened {
                Ok(h) => parent = Some((rel, Arc::new(h))),
                // A dry run's directory that would be created: the link would be new.
                Err(_) if r.opts.dry_run => {
                    result.files += 1;
                    told(r.opts, &path);
                    continue;
                }
                Err(e) => {
                    r.fail(&path, format!("cannot open its directory: {e}"));
                    continue;
                }
            }
        }
        let Some((_, dir)) = &parent else { continue };
        let job = FileJob { dir: dir.clone(), node, fresh: false };
        match r.keep_existing(&job, size, linked.get(&target)) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                r.fail(&path, format!("cannot compare with what is there: {e}"));
                continue;
            }
        }
        if r.opts.dry_run {
            result.files += 1;
            told(r.opts, &path);
            continue;
        }
        if let Some((dev, ino)) = linked.get(&target) {
            let (from_dir, from_name) = match target.iter().rposition(|&b| b == b'/') {
                Some(i) => (&target[..i], &target[i + 1..]),
                None => (&target[..0], &target[..]),
            };
            // Linked under a temporary name, then renamed over what is there: what was there
            // stays until the link is made.
            let name = job.node.name.as_slice();
            let tmp = confine::temp_name(name);
            let made = confine::clear(&dir.fd, &tmp)
                .and_then(|()| confine::open_beneath(root, from_dir))
                .and_then(|from| confine::link(&from, from_name, dev, ino, &dir.fd, &tmp))
                .and_then(|()| confine::rename(&dir.fd, &tmp, name));
            if made.is_ok() {
                result.files += 1;
                told(r.opts, &path);
                continue;
            }
            let _ = confine::clear(&dir.fd, &tmp);
        }
        // Not linkable: its own copy of the content.
        if let Some(n) = r.write_new(&job, &content, size, &mut scratch) {
            result.files += 1;
            result.bytes = result.bytes.saturating_add(n);
            told(r.opts, &path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_plans_fit_their_limit_and_a_gigabyte_is_the_default() {
        let worker = 9 << 20;
        assert_eq!(Memory::least(worker), 48 << 20);
        assert_eq!(Memory::within((48 << 20) - 1, worker), None);
        let m = Memory::within(48 << 20, worker).unwrap();
        assert_eq!((m.workers, m.cache, m.held), (1, 12 << 20, 16 << 20));
        let total = |m: Memory| m.cache + m.held + m.workers * worker as usize + 2 * m.spill + m.linked * 48;
        for mib in [48u64, 64, 100, 200, 300, 1024] {
            let m = Memory::within(mib << 20, worker).unwrap();
            assert!(total(m) as u64 <= mib << 20, "{mib} MiB: {m:?} takes {}", total(m));
        }
        // A gigabyte is the default, except that the default tracks every hard-linked file.
        let gib = Memory::within(1 << 30, worker).unwrap();
        assert_eq!(Memory { linked: usize::MAX, ..gib }, Memory::DEFAULT);
    }

    #[test]
    fn hard_link_targets_past_the_cap_are_counted_not_tracked() {
        let mut l = entry::Linked::new(2);
        l.insert(b"a", 9, 1);
        l.insert(b"b", 9, 2);
        l.insert(b"c", 9, 3);
        l.insert(b"a", 8, 4); // already tracked: updated
        assert_eq!((l.get(b"a"), l.get(b"b"), l.get(b"c")), (Some((8, 4)), Some((9, 2)), None));
        assert_eq!(l.untracked, 1);
    }
}
