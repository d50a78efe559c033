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
//! entries (`tree::MAX_DEPTH`, `tree::MAX_SNAPSHOT_NODES`); what breaks a rule is named and
//! refused, and the rest is restored.
mod confine;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crossbeam_channel::bounded;
use stages::{BlobId, BlobKind};

use crate::error::{Error, Result};
use crate::index::Index;
use crate::repo::{BlobReader, Repository, Scratch};
use crate::snapshot::Snapshot;
use crate::tree::{Listing, Node, NodeKind, MAX_DEPTH, MAX_SNAPSHOT_NODES};

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
    /// Files that were in the target and were left there (`Overwrite`).
    pub kept: u64,
    /// What was deliberately left out (not errors): ownership, set-id bits and device nodes
    /// when not running as root, special files with `--no-special`.
    pub notes: Vec<String>,
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

/// Both times of a restored node: its mtime.
fn timestamps(mtime_ns: i64) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::Timestamps { last_access: t, last_modification: t }
}

/// Sets atime and mtime by path without following or opening it (opening a FIFO would block).
/// Files go to the workers in batches (up to this many, or `BATCH_BYTES` of content): one
/// channel handoff per small file cost more than creating it (100,000 files: 115,000
/// `sched_yield`s from waiting workers).
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

/// A restore stops after this many files in a row failed because the target's file system is
/// full, with one message, instead of naming every remaining file.
const FULL_IN_A_ROW: u64 = 8;

/// An open directory inside the target. Its own metadata is applied when the last handle on
/// it is dropped: after the walk has left it and every file in it is written (file jobs and
/// subdirectories hold it).
struct DirHandle<'a> {
    fd: OwnedFd,
    /// For messages.
    path: PathBuf,
    /// Relative to the target (`a/b`), for the hard links made at the end.
    rel: Vec<u8>,
    /// Its entry in the snapshot; None for the target itself and for handles of the last phase.
    node: Option<Node>,
    /// Hard links will be made in it at the end: its metadata waits for them.
    has_links: AtomicBool,
    r: &'a Restorer<'a>,
    _parent: Option<Arc<DirHandle<'a>>>,
}

impl DirHandle<'_> {
    fn child_path(&self, name: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(name))
    }

    fn child_rel(&self, name: &[u8]) -> Vec<u8> {
        let mut rel = self.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        rel
    }
}

impl Drop for DirHandle<'_> {
    fn drop(&mut self) {
        let Some(node) = self.node.take() else { return };
        if self.has_links.load(Relaxed) {
            let rel = std::mem::take(&mut self.rel);
            let path = std::mem::take(&mut self.path);
            lock(&self.r.deferred).push((rel, path, node));
        } else if let Err(e) = self.r.dir_meta(&self.fd, &node) {
            self.r.fail(&self.path, format!("cannot set directory metadata: {e}"));
        }
    }
}

struct FileJob<'a> {
    dir: Arc<DirHandle<'a>>,
    node: Node,
    /// Its directory was created by this restore: nothing can be in the way.
    fresh: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Restorer<'a> {
    reader: &'a BlobReader<'a>,
    target: &'a Path,
    /// Owners and set-id bits are restored (running as root, and asked to).
    owner: bool,
    /// Device nodes may be made (running as root).
    devices: bool,
    special: bool,
    overwrite: Overwrite,
    replaced: AtomicU64,
    kept: AtomicU64,
    errors: Mutex<Vec<(PathBuf, String)>>,
    /// Files that failed in a row with ENOSPC; at `FULL_IN_A_ROW` the restore stops.
    full: AtomicU64,
    stop: AtomicBool,
    /// Restored files that have other names (hard link targets): path relative to the target,
    /// and the inode this restore created there.
    linked: Mutex<HashMap<Vec<u8>, u64>>,
    /// Directories whose metadata waits for their hard links: (relative path, path, entry).
    deferred: Mutex<Vec<(Vec<u8>, PathBuf, Node)>>,
    setid_dropped: AtomicU64,
    owners_skipped: AtomicU64,
    devices_skipped: AtomicU64,
    specials_skipped: AtomicU64,
    euid: u32,
}

impl Restorer<'_> {
    fn fail(&self, path: &Path, why: impl ToString) {
        lock(&self.errors).push((path.to_path_buf(), why.to_string()));
    }

    /// Counts files that failed in a row because the file system is full, and stops the
    /// restore at `FULL_IN_A_ROW` (a success resets the count).
    fn full(&self, failed: Option<&Error>) -> bool {
        let enospc = |e: &Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
        if !failed.is_some_and(enospc) {
            self.full.store(0, Relaxed);
            return false;
        }
        if self.full.fetch_add(1, Relaxed) + 1 == FULL_IN_A_ROW {
            self.stop.store(true, Relaxed);
            let why = format!(
                "the file system is full: {FULL_IN_A_ROW} files in a row could not be written (ENOSPC); \
                 restore stopped. Free space and run it again: files already in place are kept"
            );
            self.fail(self.target, why);
        }
        true
    }

    /// The owner to set, if any.
    fn owner_of(&self, node: &Node) -> Option<(u32, u32)> {
        if self.owner {
            Some((node.uid, node.gid))
        } else {
            if node.uid != self.euid {
                self.owners_skipped.fetch_add(1, Relaxed);
            }
            None
        }
    }

    /// The permission bits to set: set-id bits only with the owner.
    fn mode_of(&self, node: &Node) -> u32 {
        let mode = node.mode & 0o7777;
        if !self.owner && mode & 0o6000 != 0 {
            self.setid_dropped.fetch_add(1, Relaxed);
            return mode & 0o1777;
        }
        mode
    }

    fn dir_meta(&self, fd: &OwnedFd, node: &Node) -> std::io::Result<()> {
        confine::fd_meta(fd, self.owner_of(node), self.mode_of(node), &timestamps(node.mtime_ns))
    }

    /// Writes a file's content and its metadata under a temporary name, then renames it into
    /// place: an interrupted restore never leaves a truncated file under a final name, and a
    /// file that cannot be restored leaves what was there before. All-zero blobs become holes
    /// (sparse files stay sparse). Returns the bytes written, or the metadata error after a
    /// good write.
    fn write_file(
        &self,
        job: &FileJob,
        content: &[BlobId],
        size: u64,
        scratch: &mut Scratch,
    ) -> Result<(u64, Option<String>)> {
        let (dir, name) = (&job.dir, job.node.name.as_slice());
        let (mut f, tmp) = confine::create_temp(&dir.fd, name).map_err(|e| Error::io(dir.path.clone(), e))?;
        let written = self.fill(&mut f, job, content, size, scratch);
        let placed = written.and_then(|n| {
            let node = &job.node;
            let meta =
                confine::fd_meta(&f, self.owner_of(node), self.mode_of(node), &timestamps(node.mtime_ns));
            confine::rename(&dir.fd, &tmp, name).map_err(|e| Error::io(dir.child_path(name), e))?;
            Ok((n, meta.err().map(|e| e.to_string())))
        });
        match placed {
            Ok(done) => {
                if job.node.nlink > 1 {
                    if let Ok(md) = f.metadata() {
                        use std::os::unix::fs::MetadataExt;
                        lock(&self.linked).insert(dir.child_rel(name), md.ino());
                    }
                }
                Ok(done)
            }
            Err(e) => {
                let _ = confine::clear(&dir.fd, &tmp);
                Err(e)
            }
        }
    }

    /// The content of `job` into `f`, checked against its size.
    fn fill(
        &self,
        f: &mut std::fs::File,
        job: &FileJob,
        content: &[BlobId],
        size: u64,
        scratch: &mut Scratch,
    ) -> Result<u64> {
        let path = || job.dir.child_path(&job.node.name);
        let mut written = 0u64;
        let mut hole_at_end = false;
        for id in content {
            let n = self.reader.read_with(id, BlobKind::Data, scratch, |data| {
                hole_at_end = data.len() >= 4096 && data.iter().all(|&b| b == 0);
                if hole_at_end {
                    f.seek(SeekFrom::Current(data.len() as i64))?;
                } else {
                    f.write_all(data)?;
                }
                Ok::<_, std::io::Error>(data.len() as u64)
            })?;
            written += n.map_err(|e| Error::io(path(), e))?;
        }
        if written != size {
            return Err(Error::corrupt(
                "file",
                path().display().to_string(),
                format!("content is {written} bytes, expected {size}"),
            ));
        }
        // No fsync per file: a restore that is interrupted is simply run again, and syncing
        // every file made restoring many small files several times slower.
        if hole_at_end {
            f.set_len(size).map_err(|e| Error::io(path(), e))?;
        }
        Ok(written)
    }

    /// Whether the entry already at the job's name stays (`Overwrite`); counts what it decides.
    fn keep_existing(&self, job: &FileJob, content: &[BlobId], size: u64) -> std::io::Result<bool> {
        use rustix::fs::FileType;
        let (dir, node) = (&job.dir, &job.node);
        let Some(st) = confine::stat(&dir.fd, &node.name)? else { return Ok(false) };
        let file = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        // st_mtime is i64 here, narrower on some targets.
        #[allow(clippy::unnecessary_cast)]
        let mtime_ns =
            (st.st_mtime as i64).saturating_mul(1_000_000_000).saturating_add(st.st_mtime_nsec as i64);
        let keep = match self.overwrite {
            Overwrite::Always => false,
            Overwrite::Never => true,
            Overwrite::IfNewer => file && mtime_ns >= node.mtime_ns,
            Overwrite::IfChanged => {
                file && st.st_size as u64 == size
                    && mtime_ns == node.mtime_ns
                    && self.same_content(dir, &node.name, content)?
            }
        };
        if keep {
            self.kept.fetch_add(1, Relaxed);
            if self.overwrite == Overwrite::IfChanged {
                let f = confine::open_read(&dir.fd, &node.name)?;
                confine::fd_meta(&f, self.owner_of(node), self.mode_of(node), &timestamps(node.mtime_ns))?;
            }
        } else {
            self.replaced.fetch_add(1, Relaxed);
        }
        Ok(keep)
    }

    /// Whether the regular file `name` in `dir` holds exactly the blobs `content`: read back
    /// blob by blob (lengths from the index) and each hashed against its id.
    fn same_content(&self, dir: &DirHandle, name: &[u8], content: &[BlobId]) -> std::io::Result<bool> {
        use std::io::Read;
        let mut f = confine::open_read(&dir.fd, name)?;
        let mut buf = Vec::new();
        for id in content {
            let Some(len) = self.reader.raw_len(id) else { return Ok(false) };
            buf.resize(len as usize, 0);
            if f.read_exact(&mut buf).is_err() || !self.reader.matches(id, &buf) {
                return Ok(false);
            }
        }
        Ok(f.read(&mut [0u8; 1])? == 0)
    }

    fn file(&self, job: &FileJob, scratch: &mut Scratch) -> Option<u64> {
        let (content, size) = match &job.node.kind {
            NodeKind::File { content, size } | NodeKind::HardLink { content, size, .. } => (content, *size),
            _ => return None,
        };
        let path = || job.dir.child_path(&job.node.name);
        if !job.fresh {
            match self.keep_existing(job, content, size) {
                Ok(true) => return None,
                Ok(false) => {}
                Err(e) => {
                    self.fail(&path(), format!("cannot compare with what is there: {e}"));
                    return None;
                }
            }
        }
        if self.stop.load(Relaxed) {
            return None;
        }
        let written = self.write_file(job, content, size, scratch);
        if self.full(written.as_ref().err()) && self.stop.load(Relaxed) {
            return None;
        }
        match written {
            Ok((n, meta)) => {
                if let Some(e) = meta {
                    self.fail(&path(), format!("restored, but cannot set metadata: {e}"));
                }
                Some(n)
            }
            Err(e) => {
                self.fail(&path(), e);
                None
            }
        }
    }

    /// A symlink, FIFO, socket or device node.
    fn special(&self, dir: &DirHandle, node: &Node, fresh: bool) {
        use rustix::fs::FileType;
        let name = node.name.as_slice();
        let path = || dir.child_path(name);
        let kind = match &node.kind {
            NodeKind::Symlink { .. } => None,
            NodeKind::Fifo => Some((FileType::Fifo, 0)),
            NodeKind::Socket => Some((FileType::Socket, 0)),
            NodeKind::CharDev { rdev } => Some((FileType::CharacterDevice, *rdev)),
            NodeKind::BlockDev { rdev } => Some((FileType::BlockDevice, *rdev)),
            _ => return,
        };
        if kind.is_some() && !self.special {
            self.specials_skipped.fetch_add(1, Relaxed);
            return;
        }
        if matches!(kind, Some((FileType::CharacterDevice | FileType::BlockDevice, _))) && !self.devices {
            self.devices_skipped.fetch_add(1, Relaxed);
            return;
        }
        if !fresh {
            if self.overwrite == Overwrite::Never && matches!(confine::stat(&dir.fd, name), Ok(Some(_))) {
                return;
            }
            if let Err(e) = confine::clear(&dir.fd, name) {
                return self.fail(&path(), e);
            }
        }
        let made = match (&node.kind, kind) {
            (NodeKind::Symlink { target }, _) => confine::symlink(&dir.fd, name, target),
            (_, Some((ft, dev))) => confine::node(&dir.fd, name, ft, self.mode_of(node), dev),
            _ => return,
        };
        if let Err(e) = made {
            return self.fail(&path(), e);
        }
        if let Err(e) = confine::entry_meta(&dir.fd, name, self.owner_of(node), &timestamps(node.mtime_ns)) {
            self.fail(&path(), format!("created, but cannot set metadata: {e}"));
        }
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut say = |n: &AtomicU64, what: &str| {
            let n = n.load(Relaxed);
            if n > 0 {
                notes.push(format!("{n} {what}"));
            }
        };
        say(
            &self.owners_skipped,
            "entries keep the restoring user as owner (owners are restored only as root, without --no-owner)",
        );
        say(
            &self.setid_dropped,
            "set-user-id or set-group-id bits not restored (only as root, without --no-owner)",
        );
        say(&self.devices_skipped, "device nodes not restored (only as root)");
        say(&self.specials_skipped, "FIFOs, sockets or device nodes not restored (--no-special)");
        notes
    }
}

/// One directory being walked: its handle, and its tree blobs read one at a time.
struct Frame<'a> {
    dir: Arc<DirHandle<'a>>,
    blobs: std::vec::IntoIter<BlobId>,
    nodes: std::vec::IntoIter<Node>,
    listing: Listing,
    want: Want,
    fresh: bool,
}

impl<'a> Frame<'a> {
    fn new(dir: Arc<DirHandle<'a>>, blobs: Vec<BlobId>, want: Want, fresh: bool) -> Self {
        Frame {
            dir,
            blobs: blobs.into_iter(),
            nodes: Vec::new().into_iter(),
            listing: Listing::default(),
            want,
            fresh,
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
    let reader = BlobReader::new(repo, index)?;
    std::fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    // The target itself is the user's choice: it may be a link.
    let root = rustix::fs::open(
        &opts.target,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io(&opts.target, e.into()))?;
    confine::raise_fd_limit();
    let _umask = confine::Umask::clear();
    let as_root = rustix::process::geteuid().is_root();
    let want = if opts.include.is_empty() {
        Want::All
    } else {
        Want::Some(opts.include.iter().map(|p| components(p)).collect())
    };
    let r = Restorer {
        reader: &reader,
        target: &opts.target,
        owner: as_root && opts.owner,
        devices: as_root,
        special: opts.special,
        overwrite: opts.overwrite,
        replaced: AtomicU64::new(0),
        kept: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
        full: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        linked: Mutex::new(HashMap::new()),
        deferred: Mutex::new(Vec::new()),
        setid_dropped: AtomicU64::new(0),
        owners_skipped: AtomicU64::new(0),
        devices_skipped: AtomicU64::new(0),
        specials_skipped: AtomicU64::new(0),
        euid: rustix::process::geteuid().as_raw(),
    };
    let mut result = RestoreResult::default();
    let mut links: Vec<(Vec<u8>, PathBuf, Node)> = Vec::new();
    let totals = Mutex::new((0u64, 0u64));
    let walk = std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = bounded::<Vec<FileJob>>(8);
        for _ in 0..opts.workers.max(1) {
            let rx = rx.clone();
            let (r, totals) = (&r, &totals);
            s.spawn(move || {
                let mut scratch = Scratch::default();
                let (mut files, mut bytes) = (0, 0);
                for job in rx.iter().flatten() {
                    if let Some(n) = r.file(&job, &mut scratch) {
                        files += 1;
                        bytes += n;
                    }
                }
                let mut t = lock(totals);
                t.0 += files;
                t.1 += bytes;
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
        };
        // Depth first, one frame per level: memory grows with depth (one tree blob each), not
        // with the size of the snapshot.
        let mut stack = vec![Frame::new(Arc::new(top), snapshot.tree.clone(), want, false)];
        let mut batch: Vec<FileJob> = Vec::new();
        let mut batch_bytes = 0u64;
        let mut visited = 0u64;
        loop {
            let depth = stack.len();
            let Some(frame) = stack.last_mut() else { break };
            let Some(mut node) = frame.nodes.next() else {
                match frame.blobs.next() {
                    Some(id) => match reader.tree_blob(&id, &mut frame.listing) {
                        Ok(nodes) => frame.nodes = nodes.into_iter(),
                        Err(e) => {
                            r.fail(&frame.dir.path, format!("directory contents refused or lost: {e}"));
                            stack.pop();
                        }
                    },
                    None => {
                        stack.pop();
                    }
                }
                continue;
            };
            if r.stop.load(Relaxed) {
                break;
            }
            visited += 1;
            if visited > MAX_SNAPSHOT_NODES {
                r.fail(
                    &opts.target,
                    format!("the snapshot has more than {MAX_SNAPSHOT_NODES} entries: the rest is refused"),
                );
                break;
            }
            let Some(child_want) = frame.want.child(&node.name) else { continue };
            let dir = &frame.dir;
            match &mut node.kind {
                NodeKind::Dir { subtree } => {
                    let path = dir.child_path(&node.name);
                    if depth >= MAX_DEPTH {
                        r.fail(&path, format!("deeper than {MAX_DEPTH} levels: refused"));
                        continue;
                    }
                    let (fd, created) = match confine::child_dir(&dir.fd, &node.name) {
                        Ok(d) => d,
                        Err(e) => {
                            r.fail(&path, e);
                            continue;
                        }
                    };
                    let subtree = std::mem::take(subtree);
                    let child = DirHandle {
                        fd,
                        rel: dir.child_rel(&node.name),
                        path,
                        node: Some(node),
                        has_links: AtomicBool::new(false),
                        r: &r,
                        _parent: Some(dir.clone()),
                    };
                    result.dirs += 1;
                    stack.push(Frame::new(Arc::new(child), subtree, child_want, created));
                }
                NodeKind::File { size, .. } => {
                    batch_bytes += *size;
                    batch.push(FileJob { dir: dir.clone(), node, fresh: frame.fresh });
                    if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
                        batch_bytes = 0;
                        if tx.send(std::mem::take(&mut batch)).is_err() {
                            return Err(Error::Pipeline("restore workers ended".into()));
                        }
                    }
                }
                NodeKind::HardLink { .. } => {
                    dir.has_links.store(true, Relaxed);
                    links.push((dir.rel.clone(), dir.child_path(&node.name), node));
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
    hard_links(&r, &root, links, &mut result);
    // Deepest first: a read-only parent must not stop its children's metadata.
    let mut deferred = std::mem::take(&mut *lock(&r.deferred));
    deferred.sort_by_key(|(rel, _, _)| std::cmp::Reverse(rel.iter().filter(|&&b| b == b'/').count()));
    for (rel, path, node) in deferred {
        let applied = confine::open_beneath(&root, &rel).and_then(|fd| r.dir_meta(&fd, &node));
        if let Err(e) = applied {
            r.fail(&path, format!("cannot set directory metadata: {e}"));
        }
    }
    result.replaced = r.replaced.load(Relaxed);
    result.kept = r.kept.load(Relaxed);
    result.notes = r.notes();
    result.errors = r.errors.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(result)
}

/// Each hard link becomes a link to its first name when this restore created that file (and
/// it is still the same file); otherwise its content is restored.
fn hard_links<'a>(
    r: &'a Restorer<'a>,
    root: &OwnedFd,
    links: Vec<(Vec<u8>, PathBuf, Node)>,
    result: &mut RestoreResult,
) {
    let linked = std::mem::take(&mut *lock(&r.linked));
    let mut scratch = Scratch::default();
    let mut parent: Option<(Vec<u8>, Arc<DirHandle>)> = None;
    for (rel, path, node) in links {
        let NodeKind::HardLink { target, .. } = &node.kind else { continue };
        if parent.as_ref().is_none_or(|(p, _)| *p != rel) {
            let opened = confine::open_beneath(root, &rel).map(|fd| DirHandle {
                fd,
                path: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                rel: rel.clone(),
                node: None,
                has_links: AtomicBool::new(false),
                r,
                _parent: None,
            });
            match opened {
                Ok(h) => parent = Some((rel, Arc::new(h))),
                Err(e) => {
                    r.fail(&path, format!("cannot open its directory: {e}"));
                    continue;
                }
            }
        }
        let Some((_, dir)) = &parent else { continue };
        if r.overwrite == Overwrite::Never && matches!(confine::stat(&dir.fd, &node.name), Ok(Some(_))) {
            r.kept.fetch_add(1, Relaxed);
            continue;
        }
        if let Some(&ino) = linked.get(target.as_slice()) {
            let (from_dir, from_name) = match target.iter().rposition(|&b| b == b'/') {
                Some(i) => (&target[..i], &target[i + 1..]),
                None => (&target[..0], &target[..]),
            };
            let made = confine::clear(&dir.fd, &node.name)
                .and_then(|()| confine::open_beneath(root, from_dir))
                .and_then(|from| confine::link(&from, from_name, ino, &dir.fd, &node.name));
            if made.is_ok() {
                result.files += 1;
                continue;
            }
        }
        let job = FileJob { dir: dir.clone(), node, fresh: false };
        if let Some(n) = r.file(&job, &mut scratch) {
            result.files += 1;
            result.bytes += n;
        }
    }
}
