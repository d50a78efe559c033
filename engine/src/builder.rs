//! The tree builder: takes the scan's events in order and, for each file, waits for that file's
//! chunk ids (FileEvents from the chunk and hash stages, drained continuously so those stages
//! never block on it). Directories become tree blobs that join the data blobs at the compress
//! stage; each file's entry also goes to the next files cache.
use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender};
use stages::{
    BlobId, BlobKind, Cancel, Dedup, FileEvent, FileKind, MemoryBudget, Meta, NewBlob, OpenAttrs, Progress,
    ScanEvent,
};

use crate::error::{Error, Result};
use crate::filescache::{CacheEntry, CacheWriter, DirEntry, FileExtra, Record};
use crate::index::SessionDedup;
use crate::ops::attrs::{self, Attrs};
use crate::snapshot::{FileError, Stats};
use crate::tree::{Hole, Node, NodeKind, Tree, Xattr, MAX_ENTRIES};

/// A tree blob is closed before its entries take more than this (`tree::entries_size`, which
/// is more than they encode to): 4,096 entries with long symlink targets, large files' content
/// lists or extended attributes would otherwise pass the blob size limit, and every reader
/// would refuse the directory.
const MAX_TREE_BYTES: usize = 8 << 20;
/// An entry that alone takes more than this cannot be stored in a tree blob (a file of more
/// than ~480,000 chunks, about 480 GiB at the average chunk size).
const MAX_NODE_BYTES: usize = stages::compress::MAX_BLOB - (1 << 20);

struct Frame {
    name: Vec<u8>,
    meta: Option<Meta>,
    /// Path from the snapshot root, for hard link targets.
    path: Vec<u8>,
    nodes: Vec<Node>,
    blobs: Vec<BlobId>,
    /// The last name added (also across flushed tree blobs): names must strictly increase.
    last: Option<Vec<u8>>,
    /// Entries added.
    count: u64,
    /// Bytes of extended attributes in `nodes`.
    bytes: usize,
    /// Whether every entry so far can be recognised as unchanged by the next run: a file or
    /// directory whose timestamps are safely in the past (a change within the same clock tick
    /// would not move them, and a reused tree would keep the entry's old mode or owner).
    /// Only then is the directory's tree recorded for reuse.
    settled: bool,
}

impl Frame {
    fn new(name: Vec<u8>, meta: Option<Meta>, path: Vec<u8>) -> Frame {
        let (nodes, blobs) = (Vec::new(), Vec::new());
        Frame { name, meta, path, nodes, blobs, last: None, count: 0, bytes: 0, settled: true }
    }
}

/// The first name of a multiply-linked file: (path, content, size, holes).
type Linked = (Vec<u8>, Vec<BlobId>, u64, Vec<Hole>);

#[derive(Default)]
struct PendingFile {
    ids: Vec<Option<BlobId>>,
    got: u32,
    end: Option<(u32, u64)>,
    holes: Vec<Hole>,
    /// Its attributes, as the read stage read them (None: it did not open the file).
    attrs: Option<OpenAttrs>,
    failed: Option<(PathBuf, String)>,
}

/// Where a file's attributes come from.
enum AttrsFrom {
    /// The files cache, which vouches for them (the ctime they move is unchanged).
    Cache(Vec<Xattr>, u32),
    /// The read stage, which read them on the descriptor it read the content through.
    Read(OpenAttrs),
    /// The file's path: a file the read stage did not open (an empty one).
    Path,
}

impl PendingFile {
    fn complete(&self) -> bool {
        self.failed.is_some() || self.end.is_some_and(|(n, _)| n == self.got)
    }
}

pub(crate) struct Builder {
    stack: Vec<Frame>,
    /// Directories whose tree the last run stored was reused (`ScanEvent::Reused`).
    pub(crate) reused_dirs: u64,
    /// Directories (absolute) this run did not record in the files cache, for a file watcher
    /// to list next time (`BackupResult::unrecorded`); None when there were more than
    /// `MAX_UNRECORDED`.
    pub(crate) unrecorded: Option<Vec<Vec<u8>>>,
    pending: HashMap<u64, PendingFile>,
    /// First names of multiply-linked files, by seq.
    links: HashMap<u64, Linked>,
    fevents: Receiver<Vec<FileEvent>>,
    /// The compress stage's input, for tree blobs; None once the tree is complete.
    pub(crate) trees: Option<Sender<Vec<NewBlob>>>,
    dedup: Arc<SessionDedup>,
    id_key: [u8; 32],
    budget: MemoryBudget,
    cancel: Cancel,
    pub(crate) errors: Vec<FileError>,
    pub(crate) stats: Stats,
    /// The files cache being written for the next run.
    pub(crate) cache: Option<CacheWriter>,
    /// Read each entry's attributes (xattrs, flags) from its path; false when the entries are
    /// not files of this machine (a stream).
    pub(crate) read_attrs: bool,
    progress: Arc<Progress>,
    /// Files modified at or after this instant are not cached: they may change again within the
    /// same timestamp granularity without their mtime moving (the racy-timestamp problem).
    racy_ns: i128,
}

/// Directories a run lists as unrecorded at most: beyond, a watcher's next run is a full scan.
const MAX_UNRECORDED: usize = 1 << 16;

fn join_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// What the builder is connected to.
pub(crate) struct Wiring {
    pub fevents: Receiver<Vec<FileEvent>>,
    pub trees: Sender<Vec<NewBlob>>,
    pub dedup: Arc<SessionDedup>,
    pub id_key: [u8; 32],
    pub budget: MemoryBudget,
    pub cancel: Cancel,
    pub cache: Option<CacheWriter>,
    pub racy_ns: i128,
    pub progress: Arc<Progress>,
}

impl Builder {
    pub(crate) fn new(w: Wiring) -> Builder {
        Builder {
            stack: vec![Frame::new(Vec::new(), None, Vec::new())],
            reused_dirs: 0,
            unrecorded: Some(Vec::new()),
            pending: HashMap::new(),
            links: HashMap::new(),
            fevents: w.fevents,
            trees: Some(w.trees),
            dedup: w.dedup,
            id_key: w.id_key,
            budget: w.budget,
            cancel: w.cancel,
            errors: Vec::new(),
            stats: Stats::default(),
            cache: w.cache,
            read_attrs: true,
            racy_ns: w.racy_ns,
            progress: w.progress,
        }
    }

    fn record(&mut self, evs: Vec<FileEvent>) {
        for ev in evs {
            self.record_one(ev);
        }
    }

    fn record_one(&mut self, ev: FileEvent) {
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
            FileEvent::Holes { seq, holes } => {
                self.pending.entry(seq).or_default().holes = holes.into_iter().map(Hole::from).collect()
            }
            FileEvent::Attrs { seq, attrs } => self.pending.entry(seq).or_default().attrs = Some(attrs),
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
        let size = crate::tree::entries_size(std::slice::from_ref(&node));
        if self.stack.last().is_some_and(|f| !f.nodes.is_empty() && f.bytes + size > MAX_TREE_BYTES) {
            self.flush_top()?;
        }
        let full = {
            let Some(frame) = self.stack.last_mut() else {
                return Err(Error::Pipeline("unbalanced scan events".into()));
            };
            // A tree that a reader would refuse is never written: an entry out of order (a
            // scan bug) is named as an error instead of spoiling its directory.
            let problem = if frame.last.as_ref().is_some_and(|l| *l >= node.name) {
                Some("entry out of order in its directory".to_string())
            } else if size > MAX_NODE_BYTES {
                Some(format!("its entry takes {size} bytes, more than one tree blob holds"))
            } else {
                node.problem()
            };
            if let Some(why) = problem {
                frame.settled = false;
                let mut path = b"/".to_vec();
                path.extend_from_slice(&join_path(&frame.path, &node.name));
                self.errors.push(FileError { path, why: format!("{why}; not saved") });
                return Ok(());
            }
            frame.last = Some(node.name.clone());
            frame.count += 1;
            frame.bytes += size;
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
        frame.bytes = 0;
        let tree = Tree { nodes: std::mem::take(&mut frame.nodes) };
        let data = tree.encode();
        let id = stages::hash::blob_id(&self.id_key, &data);
        frame.blobs.push(id);
        if self.dedup.claim(&id, BlobKind::Tree) {
            let permit = self.acquire(2 * data.len() as u64)?;
            let blob =
                NewBlob { id, kind: BlobKind::Tree, data: Bytes::from(data), permit: Arc::new(permit) };
            let sent = self.trees.as_ref().map(|t| t.send(vec![blob]).is_ok());
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

    /// Writes to the next files cache; a cache that cannot be written is simply not kept.
    fn cache_write(&mut self, write: impl FnOnce(&mut CacheWriter) -> std::io::Result<()>) {
        if let Some(Err(_)) = self.cache.as_mut().map(write) {
            self.cache = None;
        }
    }

    /// A file whose content is known: its node, its hard-link record, its files-cache entry.
    #[allow(clippy::too_many_arguments)]
    fn file_done(
        &mut self,
        seq: u64,
        name: Vec<u8>,
        meta: Meta,
        size: u64,
        content: Vec<BlobId>,
        holes: Vec<Hole>,
        attrs_from: AttrsFrom,
    ) -> Result<()> {
        self.stats.files += 1;
        self.stats.bytes += size;
        Progress::add(&self.progress.files_done, 1);
        if self.stats.files % 64 == 1 || size > 1 << 20 {
            let p = PathBuf::from(std::ffi::OsString::from_vec(self.abs_path(&name)));
            *self.progress.current.lock().unwrap_or_else(|p| p.into_inner()) = p;
        }
        if meta.nlink > 1 {
            // A write through another of its names is seen in that name's directory only (a
            // file watcher's view): a directory holding such a file is never taken whole.
            self.uncached();
            let top = self.stack.last().map(|f| f.path.as_slice()).unwrap_or_default();
            self.links.insert(seq, (join_path(top, &name), content.clone(), size, holes.clone()));
        }
        if !self.settled(&meta) {
            if let Some(f) = self.stack.last_mut() {
                f.settled = false;
            }
        }
        let path = self.abs_path(&name);
        let cached = (meta.mtime_ns < self.racy_ns).then(|| content.clone());
        let node = Node::new(name, NodeKind::File { size, content }, &meta).with_holes(holes.clone());
        // Attributes the files cache vouches for are not read again, nor those the read stage
        // read already.
        let (node, attrs_read) = match attrs_from {
            AttrsFrom::Cache(xattrs, flags) => (node.with_attrs(Attrs { xattrs, flags }), true),
            AttrsFrom::Read(_) if !self.read_attrs => (node, false),
            AttrsFrom::Read(got) => self.attributed_with(node, path.clone(), attrs::opened(got)),
            AttrsFrom::Path => self.attributed_checked(node, path.clone(), FileKind::File),
        };
        if let Some(content) = cached {
            let (mtime_ns, ctime_ns, ino, dev) = (meta.mtime_ns, meta.ctime_ns, meta.ino, meta.dev);
            let entry = CacheEntry { path, size, mtime_ns, ctime_ns, ino, dev, content };
            let attrs = (attrs_read && self.read_attrs && ctime_ns < self.racy_ns)
                .then(|| (node.xattrs.clone(), node.flags));
            let record = match holes.is_empty() && attrs.is_none() {
                true => Record::File(entry),
                false => Record::Full(entry, FileExtra { holes, attrs }),
            };
            self.cache_write(|c| c.add(&record));
        }
        self.push(node)
    }

    /// `node` with the attributes of the entry at `path` (absolute) of `kind`. What cannot be
    /// read is named as an error, the entry is kept without it, and its directory is not
    /// reused by the next run (which tries again).
    fn attributed(&mut self, node: Node, path: Vec<u8>, kind: FileKind) -> Node {
        self.attributed_checked(node, path, kind).0
    }

    /// `attributed`, and whether every attribute was read and kept.
    fn attributed_checked(&mut self, node: Node, path: Vec<u8>, kind: FileKind) -> (Node, bool) {
        if !self.read_attrs {
            return (node, false);
        }
        let read = attrs::read(std::path::Path::new(std::ffi::OsStr::from_bytes(&path)), kind);
        self.attributed_with(node, path, read)
    }

    /// `node` with the attributes `read` (and what could not be read of them) of the entry at
    /// `path`, and whether every attribute was read and kept.
    fn attributed_with(&mut self, node: Node, path: Vec<u8>, read: (Attrs, Vec<String>)) -> (Node, bool) {
        let (mut attrs, problems) = read;
        let mut whole = problems.is_empty();
        for why in problems {
            self.error(path.clone(), why);
        }
        if let Some(why) = attrs::problem(&attrs.xattrs, attrs.flags) {
            // More than a reader accepts (`attrs::MAX_TOTAL`): the entry is kept without them.
            attrs.xattrs.clear();
            whole = false;
            self.error(path, format!("extended attributes not saved: {why}"));
        }
        (node.with_attrs(attrs), whole)
    }

    fn error(&mut self, path: Vec<u8>, why: String) {
        self.uncached();
        self.errors.push(FileError { path, why });
    }

    /// The current directory has an entry the files cache does not describe (a symlink, a
    /// special file, a hard link, an error): its tree is not recorded for reuse.
    fn uncached(&mut self) {
        if let Some(f) = self.stack.last_mut() {
            f.settled = false;
        }
    }

    fn settled(&self, meta: &Meta) -> bool {
        meta.mtime_ns < self.racy_ns && meta.ctime_ns < self.racy_ns
    }

    fn scan_event(&mut self, ev: ScanEvent) -> Result<()> {
        match ev {
            ScanEvent::Enter { name, meta } => {
                self.stats.dirs += 1;
                let name = name.as_bytes().to_vec();
                let parent = self.stack.last().map(|f| f.path.clone()).unwrap_or_default();
                let path = join_path(&parent, &name);
                self.stack.push(Frame::new(name, Some(meta), path));
            }
            ScanEvent::Leave => {
                self.flush_top()?;
                if self.stack.len() < 2 {
                    return Err(Error::Pipeline("unbalanced scan events".into()));
                }
                let Some(frame) = self.stack.pop() else { return Ok(()) };
                let Some(meta) = frame.meta else { return Ok(()) };
                // Recorded for the next run's reuse (`ScanEvent::Reused`) only when it and
                // everything in it are settled.
                if frame.settled && self.settled(&meta) {
                    let mut path = b"/".to_vec();
                    path.extend_from_slice(&frame.path);
                    let (mtime_ns, ctime_ns, ino, dev) = (meta.mtime_ns, meta.ctime_ns, meta.ino, meta.dev);
                    let tree = frame.blobs.clone();
                    let dir = DirEntry { path, mtime_ns, ctime_ns, ino, dev, entries: frame.count, tree };
                    self.cache_write(|c| c.add(&Record::Dir(dir)));
                } else {
                    self.uncached();
                    let mut path = b"/".to_vec();
                    path.extend_from_slice(&frame.path);
                    if let Some(u) = self.unrecorded.as_mut() {
                        u.push(path);
                        if u.len() > MAX_UNRECORDED {
                            self.unrecorded = None;
                        }
                    }
                }
                let mut path = b"/".to_vec();
                path.extend_from_slice(&frame.path);
                let node = Node::new(frame.name, NodeKind::Dir { subtree: frame.blobs }, &meta);
                let node = self.attributed(node, path, FileKind::Dir);
                self.push(node)?;
            }
            ScanEvent::Reused { name, meta, stored, files, bytes, dirs, records } => {
                // Everything in it is as the last run stored it: its tree, its counts, and
                // its files cache records, written again as they are.
                self.stats.dirs += dirs;
                self.stats.files += files;
                self.stats.unchanged_files += files;
                self.stats.bytes += bytes;
                self.reused_dirs += dirs;
                Progress::add(&self.progress.files_done, files);
                Progress::add(&self.progress.bytes_done, bytes);
                self.cache_write(|c| records.pieces().try_for_each(|p| c.add_raw(p)));
                let name = name.as_bytes().to_vec();
                let path = self.abs_path(&name);
                let node = Node::new(name, NodeKind::Dir { subtree: stored.tree }, &meta);
                let node = self.attributed(node, path, FileKind::Dir);
                self.push(node)?;
            }
            ScanEvent::File { seq, name, meta } => {
                let done = self.wait_file(seq)?;
                let name = name.as_bytes().to_vec();
                if let Some((path, why)) = done.failed {
                    self.error(path.as_os_str().as_bytes().to_vec(), why);
                    return Ok(());
                }
                let (_, data) = done.end.unwrap_or((0, 0));
                let content: Vec<BlobId> = done.ids.into_iter().flatten().collect();
                self.stats.read_bytes += data;
                let holes = done.holes;
                let size = holes.iter().fold(data, |n, h| n.saturating_add(h.len));
                let from = done.attrs.map_or(AttrsFrom::Path, AttrsFrom::Read);
                self.file_done(seq, name, meta, size, content, holes, from)?;
            }
            ScanEvent::Unchanged { seq, name, meta, content, holes, attrs } => {
                self.stats.unchanged_files += 1;
                if meta.nlink > 1 {
                    self.uncached(); // its other names are stored as links to the first one seen
                }
                Progress::add(&self.progress.bytes_done, meta.size);
                let size = meta.size;
                let holes = holes.into_iter().map(Hole::from).collect();
                let from = match attrs.and_then(|a| crate::filescache::decode_attrs(&a)) {
                    Some((xattrs, flags)) => AttrsFrom::Cache(xattrs, flags),
                    None => AttrsFrom::Path,
                };
                self.file_done(seq, name.as_bytes().to_vec(), meta, size, content, holes, from)?;
            }

            ScanEvent::HardLink { first, name, meta } => {
                self.uncached();
                let name = name.as_bytes().to_vec();
                match self.links.get(&first) {
                    Some((target, content, size, holes)) => {
                        let kind = NodeKind::HardLink {
                            target: target.clone(),
                            size: *size,
                            content: content.clone(),
                        };
                        let node = Node::new(name, kind, &meta).with_holes(holes.clone());
                        self.stats.files += 1;
                        self.push(node)?;
                    }
                    None => {
                        let p = self.abs_path(&name);
                        self.error(p, "hard link to a file that could not be saved".into());
                    }
                }
            }
            ScanEvent::Symlink { name, meta, target } => {
                self.uncached();
                let kind = NodeKind::Symlink { target: target.as_bytes().to_vec() };
                let name = name.as_bytes().to_vec();
                let path = self.abs_path(&name);
                let node = self.attributed(Node::new(name, kind, &meta), path, FileKind::Symlink);
                self.push(node)?;
            }
            ScanEvent::Special { name, meta } => {
                self.uncached();
                let kind = match meta.kind {
                    stages::FileKind::Fifo => NodeKind::Fifo,
                    stages::FileKind::Socket => NodeKind::Socket,
                    stages::FileKind::CharDev => NodeKind::CharDev { rdev: meta.rdev },
                    _ => NodeKind::BlockDev { rdev: meta.rdev },
                };
                let name = name.as_bytes().to_vec();
                let path = self.abs_path(&name);
                let node = self.attributed(Node::new(name, kind, &meta), path, meta.kind);
                self.push(node)?;
            }
            ScanEvent::Error { path, why } => self.error(path.as_os_str().as_bytes().to_vec(), why),
            ScanEvent::Records(records) => self.cache_write(|c| c.add_raw(&records)),
            ScanEvent::Gap(why) => return Err(Error::WatchGap(why)),
        }
        Ok(())
    }

    pub(crate) fn run(&mut self, events: &Receiver<Vec<ScanEvent>>) -> Result<Vec<BlobId>> {
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
                Ok(batch) => {
                    for ev in batch {
                        self.scan_event(ev)?;
                    }
                }
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
