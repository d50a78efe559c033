//! scan: roots -> ScanEvent (tree shape) + ReadJob (files to read). Workers: 1, plus `LISTERS`
//! threads that list directories ahead of it (io::dir: getdents and a stat per entry through
//! the directory's descriptor). Holds one sorted listing per open depth, up to
//! `LISTINGS_AHEAD` listings requested ahead, and the (dev, inode) of files with
//! several links. Depth-first, sorted by name bytes, so the same input gives the same trees.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::dirty::Dirty;
use crate::msg::{Cancel, FileKind, Meta, Progress, ReadJob, Records, ScanEvent, StoredDir, StoredFile};

/// What the scan does with one entry of a directory it walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Take,
    /// Left out (a directory: with everything below it).
    Leave,
    /// A directory recorded without its entries (a mount point under --one-file-system).
    Shallow,
}

/// Decides what the scan leaves out (the selection options of `run`). Asked on the scan
/// thread, in walk order: `root` when a root's walk starts, `enter` when a directory (a root
/// or a taken subdirectory) has been listed and before any of its entries is chosen, `choose`
/// for each entry of the directory entered last and not yet left, and `leave` once per `enter`.
/// So an implementation can keep per-directory state on a stack as deep as the walk. Roots
/// themselves are not chosen: a path named on the command line is always taken.
pub trait Select: Send {
    fn root(&mut self, root: &Path);
    fn enter(&mut self, dir: &Path, entries: &[::io::dir::Entry]);
    fn choose(&mut self, path: &Path, meta: &Meta) -> Choice;
    fn leave(&mut self);
}

/// What an earlier backup of the same source stored. Asked in scan order (so an implementation
/// can walk a sorted cache in step with the scan): for each regular file as the scan reaches
/// it, for each directory as the scan leaves it.
pub trait Known: Send {
    /// The content (blobs and holes, and attributes if known) of a file that has not changed
    /// since, or None.
    fn file(&mut self, path: &Path, meta: &Meta) -> Option<StoredFile>;
    /// The tree of a directory (stat'ed as `meta` when it was entered) that has not changed
    /// since, or None. Its entries may have: the scan reuses the tree only if every entry is
    /// unchanged too, and there are as many.
    fn dir(&mut self, path: &Path, meta: &Meta) -> Option<StoredDir>;
    /// Appends the stored record of the entry `file` or `dir` last found to `out`, as it is
    /// stored: a directory found unchanged passes its entries' records on whole.
    fn record(&mut self, out: &mut Vec<u8>);
    /// Everything stored at and below the directory `path` (stat'ed as `meta`), which a file
    /// watcher saw no change in (`ScanConfig::watched`): its records go to `out` in pieces as
    /// they are read (they come before the directory's own, so they are passed on before it is
    /// known whether it matches), then what it holds.
    fn subtree(&mut self, path: &Path, meta: &Meta, out: &mut dyn FnMut(Vec<u8>) -> bool) -> Subtree {
        let _ = (path, meta, out);
        Subtree::Absent
    }
}

/// What `Known::subtree` found.
#[derive(Debug)]
pub enum Subtree {
    /// Nothing stored at or below it: nothing was passed on, the scan lists it.
    Absent,
    /// Its records were passed on; its tree and what it holds (`dirs` counts itself).
    Found { stored: StoredDir, files: u64, bytes: u64, dirs: u64 },
    /// Records were passed on, but the directory's own record is missing or does not match
    /// what is on disk, or `out` refused them: the watcher missed something, and this run
    /// must not be committed (`ScanEvent::Gap`).
    Gap(String),
}

/// A directory whose events are held back while everything in it is unchanged so far: if it is
/// still unchanged when the scan leaves it, one `ScanEvent::Reused` replaces them all.
struct Held {
    name: OsString,
    /// Its Enter event, then its entries' (a reused subdirectory is one event).
    events: Vec<ScanEvent>,
    /// The cache records of its unchanged files, back to back.
    own: Vec<u8>,
    /// Where each reused subdirectory's records go in `own` (in the order of their events):
    /// they stay in the events until this directory is reused too, and are moved then.
    cuts: Vec<usize>,
    /// Bytes of records the reused subdirectories' events hold.
    child_bytes: usize,
    entries: u64,
    files: u64,
    bytes: u64,
    dirs: u64,
}

/// Events one directory may hold back (beyond, it is passed on as it goes): the tree builder
/// splits larger directories across tree blobs, which it cannot take whole anyway.
const MAX_HELD: usize = 4096;
/// Bytes of cache records one directory may hold back (its own and its reused subdirectories'):
/// a directory high above a large unchanged tree would otherwise hold the records of all of it
/// (~75 bytes per file).
const MAX_HELD_RECORDS: usize = 1 << 20;

impl Held {
    /// Its records and its reused subdirectories', in scan order, for its own `Reused` event
    /// (its events are dropped: that one event stands for them all).
    fn records(&mut self) -> Records {
        let mut out = Records::default();
        let mut cuts = self.cuts.iter();
        let mut at = 0;
        for ev in self.events.drain(..) {
            if let ScanEvent::Reused { records, .. } = ev {
                let cut = cuts.next().copied().unwrap_or(at);
                out.push(self.own.get(at..cut).unwrap_or_default().to_vec());
                out.append(records);
                at = cut;
            }
        }
        out.push(match at {
            0 => std::mem::take(&mut self.own),
            _ => self.own.get(at..).unwrap_or_default().to_vec(),
        });
        out
    }
}

pub struct ScanConfig {
    /// The paths to back up, from `normalize_roots`.
    pub roots: Vec<Root>,
    pub select: Option<Box<dyn Select>>,
    pub known: Option<Box<dyn Known>>,
    pub progress: Arc<Progress>,
    /// Directories the snapshot cannot hold: what readers of it refuse.
    pub limits: Limits,
    /// What a file watcher saw change since the files cache was written: a directory it saw
    /// no change at or below is taken whole from `known` (`Known::subtree`), unlisted.
    pub watched: Option<Arc<Dirty>>,
}

/// Directories whose absolute path is `path` bytes or longer, or that are `depth` levels deep
/// or deeper, are not entered: each is named as an error instead (a restore would refuse them).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub path: usize,
    pub depth: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { path: usize::MAX, depth: usize::MAX }
    }
}

pub struct ScanStats {
    pub files: u64,
    pub dirs: u64,
    /// Files whose content came from `Known` without reading them.
    pub unchanged: u64,
}

pub fn meta_of(md: &fs::Metadata) -> Meta {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else if ft.is_char_device() {
        FileKind::CharDev
    } else if ft.is_block_device() {
        FileKind::BlockDev
    } else {
        FileKind::File
    };
    Meta {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == FileKind::File { md.size() } else { 0 },
        mtime_ns: ::io::uring::ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ::io::uring::ns(md.ctime(), md.ctime_nsec()),
        ino: md.ino(),
        dev: md.dev(),
        nlink: md.nlink(),
        rdev: md.rdev(),
        blocks: md.blocks(),
    }
}

/// `meta_of` for a stat taken through a directory descriptor (io::dir). The casts are for the
/// architectures where these fields have other widths.
#[allow(clippy::unnecessary_cast)]
pub fn meta_of_stat(st: &rustix::fs::Stat) -> Meta {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        _ => FileKind::File,
    };
    Meta {
        kind,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == FileKind::File { st.st_size as u64 } else { 0 },
        mtime_ns: ::io::uring::ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
        ctime_ns: ::io::uring::ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        ino: st.st_ino,
        dev: st.st_dev,
        nlink: st.st_nlink as u64,
        rdev: st.st_rdev,
        blocks: st.st_blocks as u64,
    }
}

/// A path to back up, absolute and lexically normal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub path: PathBuf,
    /// Named as `PATH/` or `PATH/.`: a symlink there is resolved, and the directory it points
    /// to is backed up under `path` (as `cp -R`, rsync and `find -H` read a trailing slash).
    /// Otherwise a root that is a symlink is stored as the link.
    pub follow: bool,
    /// Why this root is not backed up although it was named: it lies inside another root whose
    /// walk stores a symlink on its way as the link. The scan records it as an error entry.
    pub unreachable: Option<String>,
}

/// Whether a root as the user wrote it names a directory's contents: a trailing '/', a last
/// component '.' (`LINK/.`, `.`).
fn names_contents(p: &Path) -> bool {
    let b = p.as_os_str().as_bytes();
    b.ends_with(b"/") || b.ends_with(b"/.") || b == b"."
}

/// The first path from `root` (itself, unless it is followed) down to the parent of `inner`
/// that is a symlink: the walk of `root` stores it as a link, so it cannot reach `inner`.
fn link_between(root: &Root, inner: &Path) -> Option<PathBuf> {
    let is_link = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if !root.follow && is_link(&root.path) {
        return Some(root.path.clone());
    }
    let rest = inner.strip_prefix(&root.path).ok()?;
    let mut at = root.path.clone();
    let mut comps: Vec<_> = rest.components().collect();
    comps.pop();
    comps.into_iter().find_map(|c| {
        at.push(c);
        is_link(&at).then(|| at.clone())
    })
}

/// Makes roots absolute and lexically normal, drops duplicates and roots inside other roots, and
/// sorts them component-wise (the order the tree builder needs). A root inside another that the
/// other's walk cannot reach (a symlink between them is stored as the link) is kept, marked
/// `unreachable`, so that it is reported rather than silently dropped.
pub fn normalize_roots(roots: &[PathBuf]) -> std::io::Result<Vec<Root>> {
    let mut out: Vec<Root> = Vec::new();
    for r in roots {
        let abs = std::path::absolute(r)?;
        let mut norm = PathBuf::from("/");
        for c in abs.components() {
            match c {
                Component::Normal(p) => norm.push(p),
                Component::ParentDir => {
                    norm.pop();
                }
                _ => {}
            }
        }
        out.push(Root { path: norm, follow: names_contents(r), unreachable: None });
    }
    // A followed root sorts before the same path not followed, which it then covers.
    out.sort_by(|a, b| a.path.components().cmp(b.path.components()).then(b.follow.cmp(&a.follow)));
    out.dedup();
    let mut kept: Vec<Root> = Vec::new();
    for mut r in out {
        let Some(outer) = kept.iter().find(|k| k.unreachable.is_none() && r.path.starts_with(&k.path)) else {
            kept.push(r);
            continue;
        };
        let same = outer.path == r.path;
        let link = match same {
            // `LINK/` and `LINK`: the directory it points to is backed up, the link is not.
            true => (fs::symlink_metadata(&r.path).is_ok_and(|m| m.file_type().is_symlink()))
                .then(|| r.path.clone()),
            false => link_between(outer, &r.path),
        };
        let Some(link) = link else { continue };
        r.unreachable = Some(match same {
            true => "not saved as a symlink: also named with a trailing '/', which backs up the \
                     directory it points to in its place"
                .to_string(),
            false => format!(
                "not saved: {} is a symlink, saved as the link by the path {} (name {}/ to back up \
                 the directory it points to)",
                link.display(),
                outer.path.display(),
                link.display()
            ),
        });
        kept.push(r);
    }
    Ok(kept)
}

/// Threads listing directories ahead of the walk, and how many listings may be requested ahead
/// (each holds one directory's entries until the walk reaches it).
const LISTERS: usize = 2;
const LISTINGS_AHEAD: usize = 8;

type Listing = std::io::Result<Vec<::io::dir::Entry>>;

/// Lists directories on other threads: the scan asks for the directories it will enter next
/// while it handles the entries before them, so the stat calls of several directories run at
/// once, and the output keeps the walk's order.
struct Lister {
    jobs: Option<crossbeam_channel::Sender<(PathBuf, Sender<Listing>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Lister {
    fn start(n: usize) -> std::io::Result<Lister> {
        let (tx, rx) = crossbeam_channel::unbounded::<(PathBuf, Sender<Listing>)>();
        let mut threads = Vec::new();
        for i in 0..n {
            let rx = rx.clone();
            threads.push(std::thread::Builder::new().name(format!("list-{i}")).spawn(move || {
                for (path, reply) in rx {
                    let _ = reply.send(::io::dir::list(&path));
                }
            })?);
        }
        Ok(Lister { jobs: Some(tx), threads })
    }

    fn request(&self, path: PathBuf) -> Option<crossbeam_channel::Receiver<Listing>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.jobs.as_ref()?.send((path, tx)).ok()?;
        Some(rx)
    }
}

impl Drop for Lister {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A subdirectory still to enter: its name, whether to list it (not for `Choice::Shallow`),
/// and its listing when requested ahead.
struct Subdir {
    name: OsString,
    list: bool,
    /// A file watcher saw no change at or below it: it is taken from the files cache, and
    /// listed only if the cache has no record of it.
    untouched: bool,
    listing: Option<crossbeam_channel::Receiver<Listing>>,
}

/// One directory being walked: its remaining entries, and its remaining subdirectories (not
/// excluded) with their listings when requested ahead.
struct Frame {
    path: PathBuf,
    entries: std::vec::IntoIter<::io::dir::Entry>,
    subdirs: std::collections::VecDeque<Subdir>,
    /// How many of `subdirs` (from the front) have been requested.
    submitted: usize,
    /// Its metadata when an Enter event was emitted for it (not for the file system root).
    entered: Option<Meta>,
    held: Option<Held>,
}

impl Frame {
    /// A directory just listed. Its subdirectories are chosen now (so that their listings can be
    /// requested ahead), after `select` has been told that the walk enters it.
    fn new(
        path: PathBuf,
        entries: Vec<::io::dir::Entry>,
        entered: Option<Meta>,
        mut select: Option<&mut (dyn Select + 'static)>,
        watched: Option<&Dirty>,
    ) -> Frame {
        if let Some(s) = select.as_deref_mut() {
            s.enter(&path, &entries);
        }
        let subdirs = entries
            .iter()
            .filter_map(|e| {
                let st = e.stat.as_ref().ok().filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)?;
                let choice = match select.as_deref_mut() {
                    Some(s) => s.choose(&path.join(&e.name), &meta_of_stat(st)),
                    None => Choice::Take,
                };
                let list = match choice {
                    Choice::Take => true,
                    Choice::Shallow => false,
                    Choice::Leave => return None,
                };
                let untouched =
                    list && watched.is_some_and(|w| w.untouched(path.join(&e.name).as_os_str().as_bytes()));
                Some(Subdir { name: e.name.clone(), list: list && !untouched, untouched, listing: None })
            })
            .collect();
        Frame { path, entries: entries.into_iter(), subdirs, submitted: 0, entered, held: None }
    }
}

/// Requests listings in the order the walk will need them: the deepest directory's remaining
/// subdirectories first, then its parent's, and so on, up to `LISTINGS_AHEAD` at once.
#[derive(Default)]
struct Ahead {
    outstanding: usize,
}

impl Ahead {
    fn top_up(&mut self, frames: &mut [Frame], lister: &Lister) {
        for f in frames.iter_mut().rev() {
            while self.outstanding < LISTINGS_AHEAD && f.submitted < f.subdirs.len() {
                let sub = &mut f.subdirs[f.submitted];
                if sub.list {
                    sub.listing = lister.request(f.path.join(&sub.name));
                    if sub.listing.is_some() {
                        self.outstanding += 1;
                    }
                }
                f.submitted += 1;
            }
            if self.outstanding >= LISTINGS_AHEAD {
                return;
            }
        }
    }
}

/// Events travel to the tree builder in batches: one channel handoff per event (and a wakeup
/// of the builder for most of them) was the largest single cost of a no-change run over many
/// small files (11 % of its time in context switches).
const BATCH: usize = 256;

struct Scanner {
    known: Option<Box<dyn Known>>,
    select: Option<Box<dyn Select>>,
    progress: Arc<Progress>,
    events: Sender<Vec<ScanEvent>>,
    batch: Vec<ScanEvent>,
    jobs: Sender<ReadJob>,
    cancel: Cancel,
    next_seq: u64,
    links: HashMap<(u64, u64), u64>,
    stats: ScanStats,
    limits: Limits,
    watched: Option<Arc<Dirty>>,
}

/// The receiver went away: the pipeline is shutting down.
struct Closed;

impl Scanner {
    fn emit(&mut self, ev: ScanEvent) -> Result<(), Closed> {
        // A reused directory carries its files cache records (~75 bytes per file): batched like
        // the others, a no-change run held all of them at once (+7 MiB on 100,000 files).
        let heavy = match &ev {
            ScanEvent::Reused { records, .. } => records.len() > 4096,
            // Up to 1 MiB each (`Known::subtree`): never many in one batch.
            ScanEvent::Records(_) => true,
            _ => false,
        };
        self.batch.push(ev);
        if self.batch.len() >= BATCH || heavy {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Closed> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.events.send(batch).map_err(|_| Closed)
    }

    /// The event for one entry (a file to read is sent to the read stage first).
    fn entry(&mut self, path: &Path, name: OsString, meta: Meta) -> Result<ScanEvent, Closed> {
        Ok(match meta.kind {
            FileKind::Dir => {
                self.stats.dirs += 1;
                ScanEvent::Enter { name, meta }
            }
            FileKind::File => {
                self.stats.files += 1;
                Progress::add(&self.progress.files_total, 1);
                Progress::add(&self.progress.bytes_total, meta.size);
                if meta.nlink > 1 {
                    if let Some(&first) = self.links.get(&(meta.dev, meta.ino)) {
                        return Ok(ScanEvent::HardLink { first, name, meta });
                    }
                    self.links.insert((meta.dev, meta.ino), self.next_seq);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(stored) = self.known.as_mut().and_then(|k| k.file(path, &meta)) {
                    self.stats.unchanged += 1;
                    let StoredFile { content, holes, attrs } = stored;
                    return Ok(ScanEvent::Unchanged { seq, name, meta, content, holes, attrs });
                }
                // The job goes first: the tree builder may wait for this file's content, which
                // must already be on its way.
                let job = ReadJob { seq, path: path.to_path_buf(), meta: meta.clone() };
                self.jobs.send(job).map_err(|_| Closed)?;
                ScanEvent::File { seq, name, meta }
            }
            FileKind::Symlink => match ::io::longpath::read_link(path) {
                Ok(target) => ScanEvent::Symlink { name, meta, target: target.into_os_string() },
                Err(e) => {
                    ScanEvent::Error { path: path.to_path_buf(), why: format!("cannot read symlink: {e}") }
                }
            },
            _ => ScanEvent::Special { name, meta },
        })
    }

    /// Passes an event on, or holds it back in the innermost directory while everything there
    /// is unchanged. Anything else releases every held directory (none of them can be reused
    /// now), outermost first, which keeps the events in order.
    fn place(&mut self, frames: &mut [Frame], ev: ScanEvent) -> Result<(), Closed> {
        let Some(h) = frames.last_mut().and_then(|f| f.held.as_mut()) else { return self.emit(ev) };
        let (files, bytes, dirs) = match &ev {
            ScanEvent::Unchanged { meta, .. } if meta.nlink <= 1 => (1, meta.size, 0),
            ScanEvent::Reused { files, bytes, dirs, .. } => (*files, *bytes, *dirs),
            _ => {
                self.release(frames)?;
                return self.emit(ev);
            }
        };
        if let (ScanEvent::Unchanged { .. }, Some(k)) = (&ev, self.known.as_mut()) {
            k.record(&mut h.own);
        }
        if let ScanEvent::Reused { records, .. } = &ev {
            h.cuts.push(h.own.len());
            h.child_bytes += records.len();
        }
        h.entries += 1;
        h.files += files;
        h.bytes += bytes;
        h.dirs += dirs;
        h.events.push(ev);
        if h.events.len() > MAX_HELD || h.own.len() + h.child_bytes > MAX_HELD_RECORDS {
            self.release(frames)?;
        }
        Ok(())
    }

    fn release(&mut self, frames: &mut [Frame]) -> Result<(), Closed> {
        for f in frames.iter_mut() {
            if let Some(h) = f.held.take() {
                for ev in h.events {
                    self.emit(ev)?;
                }
            }
        }
        Ok(())
    }

    /// Enters a directory whose Enter event is `ev`: with a files cache, the directory holds
    /// its events back (starting with the Enter) until it is known whether it changed.
    fn enter(&mut self, frames: &mut Vec<Frame>, mut frame: Frame, ev: ScanEvent) -> Result<(), Closed> {
        match (&ev, self.known.is_some()) {
            (ScanEvent::Enter { name, .. }, true) => {
                let name = name.clone();
                let (own, cuts, child_bytes, entries, files, bytes, dirs) =
                    (Vec::new(), Vec::new(), 0, 0, 0, 0, 0);
                let events = vec![ev];
                frame.held = Some(Held { name, events, own, cuts, child_bytes, entries, files, bytes, dirs });
            }
            _ => self.place(frames, ev)?,
        }
        frames.push(frame);
        Ok(())
    }

    /// Leaves the innermost directory: one `Reused` event if it and everything in it are
    /// unchanged, else its held events (and all others) and a Leave.
    fn leave(&mut self, frames: &mut Vec<Frame>) -> Result<(), Closed> {
        let Some(top) = frames.last_mut() else { return Ok(()) };
        let Some(meta) = top.entered.clone() else {
            self.pop(frames);
            return Ok(());
        };
        let path = std::mem::take(&mut top.path);
        let stored = match &top.held {
            Some(_) => self.known.as_mut().and_then(|k| k.dir(&path, &meta)),
            None => None,
        };
        let held = match (&stored, &top.held) {
            (Some(s), Some(h)) if s.entries == h.entries => top.held.take(),
            _ => None,
        };
        match (held, stored) {
            (Some(mut h), Some(stored)) => {
                self.pop(frames);
                if let Some(k) = self.known.as_mut() {
                    k.record(&mut h.own);
                }
                let records = h.records();
                let (files, bytes, dirs) = (h.files, h.bytes, h.dirs + 1);
                let ev = ScanEvent::Reused { name: h.name, meta, stored, files, bytes, dirs, records };
                self.place(frames, ev)
            }
            (held, _) => {
                if let Some(top) = frames.last_mut() {
                    top.held = held.or(top.held.take());
                }
                self.release(frames)?;
                self.pop(frames);
                self.place(frames, ScanEvent::Leave)
            }
        }
    }

    /// Drops the innermost directory (every frame was made by `Frame::new`, which told `select`).
    fn pop(&mut self, frames: &mut Vec<Frame>) {
        if frames.pop().is_some() {
            if let Some(s) = self.select.as_mut() {
                s.leave();
            }
        }
    }

    fn error(&mut self, path: &Path, why: String) -> Result<(), Closed> {
        self.emit(ScanEvent::Error { path: path.to_path_buf(), why })
    }

    fn walk(&mut self, root: &Root, lister: &Lister) -> Result<(), Closed> {
        let (follow, root) = (root.follow, root.path.as_path());
        let mut frames: Vec<Frame> = Vec::new();
        if let Some(s) = self.select.as_mut() {
            s.root(root);
        }
        if root.parent().is_none() {
            // The file system root: its entries go straight into the snapshot's root.
            match ::io::dir::list(root) {
                Ok(entries) => frames.push(Frame::new(
                    root.to_path_buf(),
                    entries,
                    None,
                    self.select.as_deref_mut(),
                    self.watched.as_deref(),
                )),
                Err(e) => return self.error(root, format!("cannot list: {e}")),
            }
        } else {
            // A root that is a symlink is saved as the symlink, not followed, unless it was
            // named `LINK/`: then the directory it points to is saved under its name.
            let meta = match follow {
                true => fs::metadata(root),
                false => fs::symlink_metadata(root),
            };
            let meta = match meta {
                Ok(md) if follow && !md.is_dir() => return self.error(root, "not a directory".into()),
                Ok(md) => meta_of(&md),
                Err(e) => return self.error(root, format!("cannot stat: {e}")),
            };
            let name = root.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            let is_dir = meta.kind == FileKind::Dir;
            if is_dir && self.watched.as_ref().is_some_and(|w| w.untouched(root.as_os_str().as_bytes())) {
                let name = name.clone();
                if self.take_whole(&mut frames, root, name, &meta)? {
                    return Ok(());
                }
            }
            let ev = self.entry(root, name, meta.clone())?;
            if !is_dir {
                return self.emit(ev);
            }
            // Listed as `ROOT/.`: io::dir::list does not follow a symlink in the last component.
            let listed = match follow {
                true => ::io::dir::list(&root.join(".")),
                false => ::io::dir::list(root),
            };
            match listed {
                Ok(entries) => {
                    let frame = Frame::new(
                        root.to_path_buf(),
                        entries,
                        Some(meta),
                        self.select.as_deref_mut(),
                        self.watched.as_deref(),
                    );
                    self.enter(&mut frames, frame, ev)?;
                }
                Err(e) => {
                    // The directory was entered: it stays, empty.
                    self.emit(ev)?;
                    self.error(root, format!("cannot list: {e}"))?;
                    return self.emit(ScanEvent::Leave);
                }
            }
        }
        let mut ahead = Ahead::default();
        while let Some(top) = frames.last_mut() {
            if self.cancel.is_cancelled() {
                return Err(Closed);
            }
            let Some(entry) = top.entries.next() else {
                self.leave(&mut frames)?;
                continue;
            };
            let path = top.path.join(&entry.name);
            let meta = match entry.stat {
                Ok(st) => meta_of_stat(&st),
                Err(e) => {
                    let why = format!("cannot stat: {e}");
                    self.place(&mut frames, ScanEvent::Error { path, why })?;
                    continue;
                }
            };
            let is_dir = meta.kind == FileKind::Dir;
            if !is_dir && self.select.as_mut().is_some_and(|s| s.choose(&path, &meta) == Choice::Leave) {
                continue;
            }
            if is_dir && top.subdirs.front().map(|s| &s.name) != Some(&entry.name) {
                continue; // excluded when its parent was listed
            }
            let listing = match is_dir.then(|| top.subdirs.pop_front()).flatten() {
                Some(sub) => {
                    if sub.listing.is_some() {
                        ahead.outstanding -= 1;
                    }
                    top.submitted = top.submitted.saturating_sub(1);
                    if sub.untouched {
                        if self.take_whole(&mut frames, &path, entry.name.clone(), &meta)? {
                            ahead.top_up(&mut frames, lister);
                            continue;
                        }
                        // Not in the cache: listed and walked like any other.
                        if let Some(why) = self.beyond_limits(&path) {
                            self.place(&mut frames, ScanEvent::Error { path, why })?;
                            ahead.top_up(&mut frames, lister);
                            continue;
                        }
                        let ev = self.entry(&path, entry.name, meta.clone())?;
                        match ::io::dir::list(&path) {
                            Ok(entries) => {
                                let frame = Frame::new(
                                    path,
                                    entries,
                                    Some(meta),
                                    self.select.as_deref_mut(),
                                    self.watched.as_deref(),
                                );
                                self.enter(&mut frames, frame, ev)?
                            }
                            Err(e) => {
                                self.place(&mut frames, ev)?;
                                let why = format!("cannot list: {e}");
                                self.place(&mut frames, ScanEvent::Error { path, why })?;
                                self.place(&mut frames, ScanEvent::Leave)?;
                            }
                        }
                        ahead.top_up(&mut frames, lister);
                        continue;
                    }
                    Some(match (sub.list, sub.listing) {
                        (false, _) => Ok(Vec::new()),
                        (true, None) => ::io::dir::list(&path),
                        (true, Some(rx)) => rx.recv().unwrap_or_else(|_| ::io::dir::list(&path)),
                    })
                }
                None => None,
            };
            if let Some(why) = is_dir.then(|| self.beyond_limits(&path)).flatten() {
                self.place(&mut frames, ScanEvent::Error { path, why })?;
                ahead.top_up(&mut frames, lister);
                continue;
            }
            let dir_meta = is_dir.then(|| meta.clone());
            let ev = self.entry(&path, entry.name, meta)?;
            match listing {
                Some(Ok(entries)) => {
                    let frame = Frame::new(
                        path,
                        entries,
                        dir_meta,
                        self.select.as_deref_mut(),
                        self.watched.as_deref(),
                    );
                    self.enter(&mut frames, frame, ev)?
                }
                Some(Err(e)) => {
                    self.place(&mut frames, ev)?;
                    let why = format!("cannot list: {e}");
                    self.place(&mut frames, ScanEvent::Error { path, why })?;
                    self.place(&mut frames, ScanEvent::Leave)?;
                }
                None => self.place(&mut frames, ev)?,
            }
            ahead.top_up(&mut frames, lister);
        }
        Ok(())
    }

    /// Takes the directory at `path`, which the watcher saw no change in, whole from the files
    /// cache: its records, then one `Reused` event. False when the cache has no record of it
    /// (nothing was emitted: the caller walks it). A gap ends the scan after a `Gap` event.
    fn take_whole(
        &mut self,
        frames: &mut [Frame],
        path: &Path,
        name: OsString,
        meta: &Meta,
    ) -> Result<bool, Closed> {
        let Some(mut known) = self.known.take() else { return Ok(false) };
        // Records go out as they are read: nothing held back may come before them.
        let released = self.release(frames);
        let mut refused = false;
        let found = match released {
            Ok(()) => known.subtree(path, meta, &mut |piece| {
                refused = refused || self.emit(ScanEvent::Records(piece)).is_err();
                !refused
            }),
            Err(Closed) => Subtree::Gap("the pipeline stopped".into()),
        };
        self.known = Some(known);
        match found {
            Subtree::Absent => Ok(false),
            Subtree::Found { stored, files, bytes, dirs } => {
                self.stats.files += files;
                self.stats.unchanged += files;
                self.stats.dirs += dirs;
                Progress::add(&self.progress.files_total, files);
                Progress::add(&self.progress.bytes_total, bytes);
                let records = Records::default();
                let ev = ScanEvent::Reused { name, meta: meta.clone(), stored, files, bytes, dirs, records };
                self.place(frames, ev)?;
                Ok(true)
            }
            Subtree::Gap(why) => {
                let why = format!("{}: {why}", path.display());
                self.emit(ScanEvent::Gap(why))?;
                self.flush()?;
                Err(Closed)
            }
        }
    }

    /// Why the directory at `path` is not entered, if it is not (`Limits`).
    fn beyond_limits(&self, path: &Path) -> Option<String> {
        let len = path.as_os_str().len();
        if len >= self.limits.path {
            return Some(format!(
                "not saved: its path is {len} bytes, and a snapshot holds directories up to {} bytes",
                self.limits.path - 1
            ));
        }
        let depth = path.components().filter(|c| matches!(c, std::path::Component::Normal(_))).count();
        if depth >= self.limits.depth {
            let max = self.limits.depth - 1;
            return Some(format!("not saved: it is {depth} levels deep, and a snapshot holds {max}"));
        }
        None
    }

    fn run(&mut self, mut cfg: ScanConfig) -> Result<(), Closed> {
        self.known = cfg.known.take();
        self.select = cfg.select.take();
        self.watched = cfg.watched.take();
        self.progress = cfg.progress.clone();
        let lister = Lister::start(LISTERS).map_err(|_| Closed)?;
        // Ancestors of the roots are entered so that the snapshot keeps absolute paths:
        // /home/u/docs is restored as TARGET/home/u/docs. Each with the metadata of the directory
        // it is on disk, symlinks resolved (restic's statDir): an ancestor that is a symlink to a
        // directory is recorded as that directory, never as a directory with the link's mode.
        let mut open: Vec<OsString> = Vec::new();
        for root in &cfg.roots {
            if let Some(why) = &root.unreachable {
                self.error(&root.path, why.clone())?;
                continue;
            }
            let comps: Vec<OsString> = root
                .path
                .components()
                .filter_map(|c| match c {
                    Component::Normal(p) => Some(p.to_os_string()),
                    _ => None,
                })
                .collect();
            let parents = &comps[..comps.len().saturating_sub(1)];
            let common = open.iter().zip(parents).take_while(|(a, b)| a == b).count();
            while open.len() > common {
                open.pop();
                self.emit(ScanEvent::Leave)?;
            }
            for (i, name) in parents.iter().enumerate().skip(common) {
                let dir: PathBuf =
                    std::iter::once(OsString::from("/")).chain(parents[..=i].iter().cloned()).collect();
                match fs::metadata(&dir) {
                    Ok(md) if md.is_dir() => {
                        self.emit(ScanEvent::Enter { name: name.clone(), meta: meta_of(&md) })?
                    }
                    Ok(_) => {
                        self.error(&dir, "not a directory".into())?;
                        break;
                    }
                    Err(e) => {
                        self.error(&dir, format!("cannot stat: {e}"))?;
                        break;
                    }
                }
                open.push(name.clone());
            }
            if open.len() < parents.len() {
                continue; // an ancestor failed; the error is recorded
            }
            self.walk(root, &lister)?;
        }
        for _ in open {
            self.emit(ScanEvent::Leave)?;
        }
        Ok(())
    }
}

pub struct ScanHandle {
    thread: JoinHandle<ScanStats>,
}

impl ScanHandle {
    /// Waits for the scan to end. A panic in the scanner is reported as no files scanned.
    pub fn finish(self) -> ScanStats {
        self.thread.join().unwrap_or(ScanStats { files: 0, dirs: 0, unchanged: 0 })
    }
}

pub fn spawn(
    cfg: ScanConfig,
    events: Sender<Vec<ScanEvent>>,
    jobs: Sender<ReadJob>,
    cancel: Cancel,
) -> std::io::Result<ScanHandle> {
    let thread = std::thread::Builder::new().name("scan".into()).spawn(move || {
        let mut s = Scanner {
            known: None,
            select: None,
            progress: Arc::default(),
            events,
            batch: Vec::with_capacity(BATCH),
            jobs,
            cancel,
            next_seq: 0,
            links: HashMap::new(),
            stats: ScanStats { files: 0, dirs: 0, unchanged: 0 },
            limits: cfg.limits,
            watched: None,
        };
        let progress = cfg.progress.clone();
        if s.run(cfg).is_ok() {
            let _ = s.flush();
        }
        progress.scan_done.store(true, std::sync::atomic::Ordering::Relaxed);
        s.stats
    })?;
    Ok(ScanHandle { thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(evs: &[ScanEvent]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                ScanEvent::Enter { name, .. } => format!("+{}", name.to_string_lossy()),
                ScanEvent::Leave => "-".into(),
                ScanEvent::File { name, .. } | ScanEvent::Unchanged { name, .. } => {
                    name.to_string_lossy().into()
                }
                ScanEvent::HardLink { name, .. } => format!("={}", name.to_string_lossy()),
                ScanEvent::Symlink { name, .. } => format!("@{}", name.to_string_lossy()),
                ScanEvent::Special { name, .. } => format!("!{}", name.to_string_lossy()),
                ScanEvent::Error { .. } => "E".into(),
                ScanEvent::Records(r) => format!("#{}", String::from_utf8_lossy(r)),
                ScanEvent::Gap(why) => format!("GAP {why}"),
                ScanEvent::Reused { name, files, dirs, records, .. } => {
                    let records: Vec<u8> = records.pieces().flatten().copied().collect();
                    format!(
                        "*{}:{files}:{dirs}:{}",
                        name.to_string_lossy(),
                        String::from_utf8_lossy(&records)
                    )
                }
            })
            .collect()
    }

    /// Every file is unchanged except those named `changed*`; every directory has its stored
    /// tree with as many entries as it has now, except those named `grown*` (one fewer). A
    /// record is the entry's name and a ';'.
    struct FakeCache {
        last: Vec<u8>,
    }

    impl Known for FakeCache {
        fn file(&mut self, path: &Path, _: &Meta) -> Option<StoredFile> {
            let name = path.file_name()?.to_string_lossy().into_owned();
            self.last = format!("{name};").into_bytes();
            (!name.starts_with("changed")).then(Default::default)
        }
        fn dir(&mut self, path: &Path, _: &Meta) -> Option<StoredDir> {
            let name = path.file_name()?.to_string_lossy().into_owned();
            self.last = format!("{name}/;").into_bytes();
            let n = fs::read_dir(path).ok()?.count() as u64;
            Some(StoredDir {
                entries: if name.starts_with("grown") { n - 1 } else { n },
                tree: vec![[1; 32]],
            })
        }
        fn record(&mut self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.last);
        }
    }

    #[test]
    fn directories_beyond_the_limits_are_errors_and_not_entered() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("src");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/b/c/f"), "x").unwrap();
        fs::write(root.join("a/g"), "y").unwrap();
        let depth = root.components().filter(|c| matches!(c, std::path::Component::Normal(_))).count();
        let by_path = Limits { path: root.join("a/b").as_os_str().len(), depth: usize::MAX };
        for limits in [Limits { path: usize::MAX, depth: depth + 2 }, by_path] {
            let (etx, erx) = crossbeam_channel::unbounded();
            let (jtx, _jrx) = crossbeam_channel::unbounded();
            let roots = normalize_roots(std::slice::from_ref(&root)).unwrap();
            let cfg = ScanConfig {
                roots,
                select: None,
                known: None,
                progress: Arc::default(),
                limits,
                watched: None,
            };
            spawn(cfg, etx, jtx, Cancel::default()).unwrap().finish();
            let evs: Vec<_> = erx.iter().flatten().collect();
            let errors: Vec<_> = evs
                .iter()
                .filter_map(|e| match e {
                    ScanEvent::Error { path, why } => Some((path.clone(), why.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(errors.len(), 1, "{limits:?}: {errors:?}");
            assert_eq!(errors[0].0, root.join("a/b"));
            assert!(errors[0].1.starts_with("not saved: "), "{}", errors[0].1);
            let files: Vec<_> = evs
                .iter()
                .filter_map(|e| match e {
                    ScanEvent::File { name, .. } => Some(name.to_string_lossy().into_owned()),
                    _ => None,
                })
                .collect();
            assert_eq!(files, ["g"], "{limits:?}: nothing below a/b is read");
        }
    }

    #[test]
    fn unchanged_directories_become_one_event_and_changed_ones_release_theirs_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        for d in ["a/b", "c", "grown", "d/e/f"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in ["a/1", "a/b/2", "a/b/3", "c/4", "c/changed", "grown/5", "d/6", "d/e/7", "d/e/f/8", "d/e/z"]
        {
            fs::write(root.join(f), f).unwrap();
        }
        let (etx, erx) = crossbeam_channel::unbounded();
        let (jtx, jrx) = crossbeam_channel::unbounded();
        let cfg = ScanConfig {
            roots: normalize_roots(std::slice::from_ref(&root)).unwrap(),
            select: None,
            known: Some(Box::new(FakeCache { last: Vec::new() })),
            progress: Arc::default(),
            limits: Limits::default(),
            watched: None,
        };
        spawn(cfg, etx, jtx, Cancel::default()).unwrap().finish();
        let n = names(&erx.iter().flatten().collect::<Vec<_>>());
        let start = n.iter().position(|e| e == "+src").unwrap();
        let expected = [
            "+src",
            // a and a/b are unchanged: one event carrying every record, innermost first.
            "*a:3:2:1;2;3;b/;a/;",
            // c holds a changed file: its held events come out in order, then the rest.
            "+c",
            "4",
            "changed",
            "-",
            // d, with d/e and d/e/f in it, is unchanged: one event for all three.
            "*d:4:3:6;7;8;f/;z;e/;d/;",
            // grown has one entry more than its stored tree: passed on as it is.
            "+grown",
            "5",
            "-",
            "-",
        ];
        assert_eq!(&n[start..start + expected.len()], &expected);
        assert_eq!(jrx.iter().count(), 1, "only the changed file is read");
    }

    #[test]
    fn sorted_depth_first_with_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        fs::create_dir_all(root.join("b/inner")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("b/z"), "z").unwrap();
        fs::write(root.join("a/x"), "x").unwrap();
        fs::hard_link(root.join("a/x"), root.join("b/x2")).unwrap();
        std::os::unix::fs::symlink("a/x", root.join("c")).unwrap();
        let (etx, erx) = crossbeam_channel::unbounded();
        let (jtx, jrx) = crossbeam_channel::unbounded();
        let cfg = ScanConfig {
            roots: normalize_roots(std::slice::from_ref(&root)).unwrap(),
            select: None,
            known: None,
            progress: Arc::default(),
            limits: Limits::default(),
            watched: None,
        };
        spawn(cfg, etx, jtx, Cancel::default()).unwrap().finish();
        let evs: Vec<_> = erx.iter().flatten().collect();
        let n = names(&evs);
        let depth = root.components().count() - 2; // ancestors entered, excluding "/" and "src"
        assert_eq!(n.len(), depth * 2 + 12);
        assert_eq!(
            &n[depth..depth + 12],
            &["+src", "+a", "x", "-", "+b", "+inner", "-", "=x2", "z", "-", "@c", "-"]
        );
        assert_eq!(jrx.iter().count(), 2);
    }

    /// The reference order: depth first, names sorted bytewise, excluded directories left out.
    fn reference(dir: &Path, skip: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
        for n in names {
            let p = dir.join(&n);
            if p == skip {
                continue;
            }
            if p.is_dir() {
                out.push(format!("+{}", n.to_string_lossy()));
                reference(&p, skip, out);
                out.push("-".into());
            } else {
                out.push(n.to_string_lossy().into());
            }
        }
    }

    /// Leaves out one path, and checks that `enter` and `leave` pair up.
    struct SkipOne {
        path: PathBuf,
        depth: usize,
    }

    impl Select for SkipOne {
        fn root(&mut self, _: &Path) {
            assert_eq!(self.depth, 0);
        }
        fn enter(&mut self, _: &Path, _: &[::io::dir::Entry]) {
            self.depth += 1;
        }
        fn choose(&mut self, path: &Path, _: &Meta) -> Choice {
            assert!(self.depth > 0);
            if path == self.path {
                Choice::Leave
            } else {
                Choice::Take
            }
        }
        fn leave(&mut self) {
            self.depth -= 1;
        }
    }

    /// Directories named `mnt*` are recorded without their entries; files named `skip*` left out.
    struct Shallow;

    impl Select for Shallow {
        fn root(&mut self, _: &Path) {}
        fn enter(&mut self, _: &Path, _: &[::io::dir::Entry]) {}
        fn choose(&mut self, path: &Path, _: &Meta) -> Choice {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            match name {
                n if n.starts_with("mnt") => Choice::Shallow,
                n if n.starts_with("skip") => Choice::Leave,
                _ => Choice::Take,
            }
        }
        fn leave(&mut self) {}
    }

    #[test]
    fn a_shallow_directory_is_entered_and_left_without_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        fs::create_dir_all(root.join("a/mnt/deep")).unwrap();
        fs::write(root.join("a/mnt/f"), "f").unwrap();
        fs::write(root.join("a/skip-me"), "s").unwrap();
        fs::write(root.join("a/z"), "z").unwrap();
        let (etx, erx) = crossbeam_channel::unbounded();
        let (jtx, jrx) = crossbeam_channel::unbounded();
        let cfg = ScanConfig {
            roots: normalize_roots(std::slice::from_ref(&root)).unwrap(),
            select: Some(Box::new(Shallow)),
            known: None,
            progress: Arc::default(),
            limits: Limits::default(),
            watched: None,
        };
        spawn(cfg, etx, jtx, Cancel::default()).unwrap().finish();
        let n = names(&erx.iter().flatten().collect::<Vec<_>>());
        let start = n.iter().position(|e| e == "+src").unwrap();
        assert_eq!(&n[start..start + 7], &["+src", "+a", "+mnt", "-", "z", "-", "-"]);
        assert_eq!(jrx.iter().count(), 1);
    }

    #[test]
    fn listing_ahead_keeps_the_walk_order_on_a_wide_deep_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        let mut x = 7u64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        // ~300 directories up to 4 deep, more than LISTINGS_AHEAD at every level.
        let mut dirs = vec![root.clone()];
        fs::create_dir_all(&root).unwrap();
        for i in 0..300 {
            let parent = dirs[next(dirs.len() as u64) as usize].clone();
            if parent.components().count() - root.components().count() >= 4 {
                continue;
            }
            let d = parent.join(format!("d{}", next(1000)));
            if fs::create_dir(&d).is_ok() {
                fs::write(d.join(format!("f{i}")), b"x").unwrap();
                dirs.push(d);
            }
        }
        let skip = dirs[dirs.len() / 2].clone();
        let mut want = Vec::new();
        reference(&root, &skip, &mut want);
        let (etx, erx) = crossbeam_channel::unbounded();
        let (jtx, jrx) = crossbeam_channel::unbounded();
        let skip2 = skip.clone();
        let cfg = ScanConfig {
            roots: normalize_roots(std::slice::from_ref(&root)).unwrap(),
            select: Some(Box::new(SkipOne { path: skip2, depth: 0 })),
            known: None,
            progress: Arc::default(),
            limits: Limits::default(),
            watched: None,
        };
        let stats = spawn(cfg, etx, jtx, Cancel::default()).unwrap().finish();
        let n = names(&erx.iter().flatten().collect::<Vec<_>>());
        let depth = root.components().count() - 2;
        assert_eq!(&n[depth + 1..n.len() - depth - 1], &want[..]);
        assert_eq!(jrx.iter().count() as u64, stats.files);
        assert!(!n.iter().any(|e| e == "E"), "no errors");
    }

    #[test]
    fn nested_roots_are_dropped() {
        let r = normalize_roots(&["/a/b".into(), "/a".into(), "/a/../c".into(), "/d/".into()]).unwrap();
        let paths: Vec<_> = r.iter().map(|r| (r.path.clone(), r.follow)).collect();
        assert_eq!(paths, [("/a".into(), false), ("/c".into(), false), ("/d".into(), true)]);
        assert!(r.iter().all(|r| r.unreachable.is_none()));
    }

    #[test]
    fn a_root_behind_a_symlink_another_root_stores_is_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("real/sub")).unwrap();
        std::os::unix::fs::symlink("real", d.join("link")).unwrap();
        std::os::unix::fs::symlink("sub", d.join("real/inner")).unwrap();
        let roots = |ps: &[&str]| {
            let ps: Vec<PathBuf> = ps.iter().map(|p| PathBuf::from(format!("{}/{p}", d.display()))).collect();
            normalize_roots(&ps)
                .unwrap()
                .into_iter()
                .map(|r| {
                    (r.path.strip_prefix(d).unwrap().display().to_string(), r.follow, r.unreachable.is_some())
                })
                .collect::<Vec<_>>()
        };
        // The link stored as a link cannot hold link/f; link/ holds it; a symlink inside a root too.
        assert_eq!(
            roots(&["link", "link/f"]),
            [("link".into(), false, false), ("link/f".into(), false, true)]
        );
        assert_eq!(roots(&["link/", "link/f"]), [("link".into(), true, false)]);
        assert_eq!(roots(&["link/.", "link"]), [("link".into(), true, false), ("link".into(), false, true)]);
        assert_eq!(roots(&["real/", "real"]), [("real".into(), true, false)]);
        assert_eq!(roots(&["real", "real/sub/x"]), [("real".into(), false, false)]);
        assert_eq!(
            roots(&["real", "real/inner/x"]),
            [("real".into(), false, false), ("real/inner/x".into(), false, true)]
        );
    }
}
