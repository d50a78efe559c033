//! restore: walks a snapshot's trees, creates directories, links and special files on the
//! calling thread, and restores file contents with a pool of workers (each blob is fetched,
//! authenticated, decompressed and checked against its id before a byte is written).
//! A file that cannot be restored is removed (never left with wrong bytes) and named; the rest
//! goes on. Directory metadata is applied last, deepest first, so read-only directories and
//! mtimes survive the restoring of their contents.
use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crossbeam_channel::bounded;
use stages::{BlobId, BlobKind};

use crate::error::{Error, Result};
use crate::index::Index;
use crate::repo::{BlobReader, Repository, Scratch};
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};

pub struct RestoreOptions {
    pub target: PathBuf,
    /// Paths inside the snapshot to restore (e.g. `/home/u/docs`); empty = everything.
    pub include: Vec<PathBuf>,
    pub workers: usize,
}

#[derive(Debug, Default)]
pub struct RestoreResult {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub errors: Vec<(PathBuf, String)>,
}

struct FileJob {
    path: PathBuf,
    node: Node,
    /// Its directory was created by this restore: nothing can be in the way.
    fresh: bool,
}

/// Files go to the workers in batches (up to this many, or `BATCH_BYTES` of content): one
/// channel handoff per small file cost more than creating it (100,000 files: 115,000
/// `sched_yield`s from waiting workers).
const BATCH_FILES: usize = 64;
const BATCH_BYTES: u64 = 4 << 20;

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
fn set_times(path: &Path, mtime_ns: i64) -> std::io::Result<()> {
    use rustix::fs::{utimensat, AtFlags, CWD};
    utimensat(CWD, path, &timestamps(mtime_ns), AtFlags::SYMLINK_NOFOLLOW).map_err(std::io::Error::from)
}

/// `apply_meta` through an open file: no path lookups.
fn apply_meta_fd(f: &fs::File, node: &Node, as_root: bool) -> std::io::Result<()> {
    use rustix::fs::{fchown, futimens, Gid, Uid};
    if as_root {
        fchown(f, Some(Uid::from_raw(node.uid)), Some(Gid::from_raw(node.gid)))?;
    }
    f.set_permissions(fs::Permissions::from_mode(node.mode & 0o7777))?;
    futimens(f, &timestamps(node.mtime_ns))?;
    Ok(())
}

/// Ownership (when running as root), mode, and mtime, in that order (chown clears set-id bits).
fn apply_meta(path: &Path, node: &Node, as_root: bool) -> std::io::Result<()> {
    let symlink = matches!(node.kind, NodeKind::Symlink { .. });
    if as_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))?;
    }
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(node.mode & 0o7777))?;
    }
    set_times(path, node.mtime_ns)
}

fn remove_existing(path: &Path) {
    if let Ok(md) = fs::symlink_metadata(path) {
        if !md.is_dir() {
            let _ = fs::remove_file(path);
        }
    }
}

struct Restorer<'a> {
    reader: &'a BlobReader<'a>,
    target: PathBuf,
    as_root: bool,
    errors: Mutex<Vec<(PathBuf, String)>>,
    /// Restored files that have other names (hard link targets), relative to the target.
    linked: Mutex<HashSet<Vec<u8>>>,
}

impl Restorer<'_> {
    fn fail(&self, path: &Path, why: impl ToString) {
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).push((path.to_path_buf(), why.to_string()));
    }

    /// Writes a file's content and its metadata; all-zero blobs become holes (sparse files
    /// stay sparse). Returns the bytes written, or the metadata error after a good write.
    fn write_file(
        &self,
        job: &FileJob,
        content: &[BlobId],
        size: u64,
        scratch: &mut Scratch,
    ) -> Result<(u64, Option<String>)> {
        let path = &job.path;
        let mut open = OpenOptions::new();
        open.write(true);
        if job.fresh {
            open.create_new(true);
        } else {
            remove_existing(path);
            open.create(true).truncate(true);
        }
        let mut f = open.open(path).map_err(|e| Error::io(path, e))?;
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
            written += n.map_err(|e| Error::io(path, e))?;
        }
        if written != size {
            return Err(Error::corrupt(
                "file",
                path.display().to_string(),
                format!("content is {written} bytes, expected {size}"),
            ));
        }
        // No fsync per file: a restore that is interrupted is simply run again, and syncing
        // every file made restoring many small files several times slower.
        if hole_at_end {
            f.set_len(size).map_err(|e| Error::io(path, e))?;
        }
        let meta = apply_meta_fd(&f, &job.node, self.as_root).err().map(|e| e.to_string());
        Ok((written, meta))
    }

    fn file(&self, job: &FileJob, scratch: &mut Scratch) -> Option<u64> {
        let (content, size) = match &job.node.kind {
            NodeKind::File { content, size } | NodeKind::HardLink { content, size, .. } => (content, *size),
            _ => return None,
        };
        match self.write_file(job, content, size, scratch) {
            Ok((n, meta)) => {
                if let Some(e) = meta {
                    self.fail(&job.path, format!("restored, but cannot set metadata: {e}"));
                }
                if job.node.nlink > 1 {
                    if let Ok(rel) = job.path.strip_prefix(&self.target) {
                        self.linked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(rel.as_os_str().as_bytes().to_vec());
                    }
                }
                Some(n)
            }
            Err(e) => {
                let _ = fs::remove_file(&job.path);
                self.fail(&job.path, e);
                None
            }
        }
    }
}

pub fn restore(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
) -> Result<RestoreResult> {
    let reader = BlobReader::new(repo, index)?;
    fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let want = if opts.include.is_empty() {
        Want::All
    } else {
        Want::Some(opts.include.iter().map(|p| components(p)).collect())
    };
    let r = Restorer {
        reader: &reader,
        target: opts.target.clone(),
        as_root: rustix::process::geteuid().is_root(),
        errors: Mutex::new(Vec::new()),
        linked: Mutex::new(HashSet::new()),
    };
    let mut result = RestoreResult::default();
    let mut dirs: Vec<(PathBuf, Node)> = Vec::new();
    let mut links: Vec<(PathBuf, Node)> = Vec::new();
    let (tx, rx) = bounded::<Vec<FileJob>>(8);
    let totals = Mutex::new((0u64, 0u64));
    let walk: Result<()> = std::thread::scope(|s| {
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
                let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                t.0 += files;
                t.1 += bytes;
            });
        }
        drop(rx);
        // Depth first with an explicit stack: memory grows with depth, not with width.
        let mut stack: Vec<(PathBuf, Vec<BlobId>, Want, bool)> =
            vec![(opts.target.clone(), snapshot.tree.clone(), want, false)];
        let mut batch: Vec<FileJob> = Vec::new();
        let mut batch_bytes = 0u64;
        while let Some((dir, tree, want, fresh)) = stack.pop() {
            let nodes = match reader.tree(&tree) {
                Ok(n) => n,
                Err(e) => {
                    r.fail(&dir, format!("directory contents lost: {e}"));
                    continue;
                }
            };
            for node in nodes.into_iter().rev() {
                let Some(child_want) = want.child(&node.name) else { continue };
                let path = dir.join(OsStr::from_bytes(&node.name));
                match &node.kind {
                    NodeKind::Dir { subtree } => {
                        let created = match fs::create_dir(&path) {
                            Ok(()) => true,
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                            Err(e) => {
                                r.fail(&path, e);
                                continue;
                            }
                        };
                        stack.push((path.clone(), subtree.clone(), child_want, created));
                        dirs.push((path, node));
                    }
                    NodeKind::File { size, .. } => {
                        batch_bytes += size;
                        batch.push(FileJob { path, node, fresh });
                        if batch.len() >= BATCH_FILES || batch_bytes >= BATCH_BYTES {
                            batch_bytes = 0;
                            if tx.send(std::mem::take(&mut batch)).is_err() {
                                return Err(Error::Pipeline("restore workers ended".into()));
                            }
                        }
                    }
                    NodeKind::HardLink { .. } => links.push((path, node)),
                    _ => special(&r, &path, &node),
                }
            }
        }
        if !batch.is_empty() && tx.send(batch).is_err() {
            return Err(Error::Pipeline("restore workers ended".into()));
        }
        drop(tx);
        Ok(())
    });
    walk?;
    let (files, bytes) = *totals.lock().unwrap_or_else(|p| p.into_inner());
    result.files = files;
    result.bytes = bytes;
    // Hard links: link to the first name when it was restored here, else restore the content.
    let linked = std::mem::take(&mut *r.linked.lock().unwrap_or_else(|p| p.into_inner()));
    for (path, node) in links {
        let NodeKind::HardLink { target, .. } = &node.kind else { continue };
        let first = opts.target.join(OsStr::from_bytes(target));
        remove_existing(&path);
        if linked.contains(target.as_slice()) && fs::hard_link(&first, &path).is_ok() {
            result.files += 1;
            continue;
        }
        if let Some(n) = r.file(&FileJob { path, node, fresh: false }, &mut Scratch::default()) {
            result.files += 1;
            result.bytes += n;
        }
    }
    for (path, node) in dirs.iter().rev() {
        result.dirs += 1;
        if let Err(e) = apply_meta(path, node, r.as_root) {
            r.fail(path, format!("cannot set directory metadata: {e}"));
        }
    }
    result.errors = r.errors.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(result)
}

fn special(r: &Restorer, path: &Path, node: &Node) {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    remove_existing(path);
    let made = match &node.kind {
        NodeKind::Symlink { target } => std::os::unix::fs::symlink(OsStr::from_bytes(target), path),
        kind => {
            let (ft, dev) = match kind {
                NodeKind::Fifo => (FileType::Fifo, 0),
                NodeKind::Socket => (FileType::Socket, 0),
                NodeKind::CharDev { rdev } => (FileType::CharacterDevice, *rdev),
                NodeKind::BlockDev { rdev } => (FileType::BlockDevice, *rdev),
                _ => return,
            };
            let mode = Mode::from_raw_mode(node.mode & 0o7777);
            mknodat(CWD, path, ft, mode, dev).map_err(std::io::Error::from)
        }
    };
    match made {
        Ok(()) => {
            if let Err(e) = apply_meta(path, node, r.as_root) {
                r.fail(path, format!("created, but cannot set metadata: {e}"));
            }
        }
        Err(e) => r.fail(path, e),
    }
}
