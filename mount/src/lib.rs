//! mount: a read-only FUSE view of a repository: `snapshots/<time>_<id>/...`, `latest`,
//! `hosts/<host>/<time>_<id>` and `tags/<tag>/<time>_<id>` (symlinks into `snapshots/`).
//!
//! Trees are read when a directory is looked up or opened, one directory at a time; a file's
//! reads fetch only the blobs under them, through a bounded LRU of decoded blobs. Nothing is
//! written to the repository.
#![forbid(unsafe_code)]

mod content;
mod inodes;
mod view;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::repo::BlobReader;
use engine::tree::{Node, NodeKind};
use engine::{BlobId, Repository};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyXattr, Request, SessionACL,
};
use stages::BlobKind;

use content::{Layout, Lru, Piece};
use inodes::{Entry, Table, ROOT};
use view::View;

/// How a mount behaves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The snapshot list is re-read when looked at again this long after it was last read.
    pub refresh: Duration,
    /// Bytes of decoded blobs kept for later reads.
    pub cache: usize,
    /// Most inodes known to the kernel at once (each holds one entry of a tree: its name,
    /// attributes and list of blob ids); past it, lookups fail with ENFILE until the kernel
    /// forgets some.
    pub max_inodes: usize,
    /// Other users may use the mount (FUSE's `allow_other`), each as the stored owners and
    /// modes allow (the kernel checks them). Without it, only the user who mounted.
    pub allow_other: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { refresh: Duration::from_secs(3), cache: 32 << 20, max_inodes: 1 << 20, allow_other: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repository(#[from] engine::Error),
    #[error("cannot mount FUSE at {dir}: {source}")]
    Mount { dir: String, source: std::io::Error },
}

/// Tree entries never change; the top directories do, as snapshots come and go.
const TREE_TTL: Duration = Duration::from_secs(3600);
const TOP_TTL: Duration = Duration::from_secs(1);
/// Locks that keep two threads from decoding the same blob at once (by the id's first byte).
const LOADING_STRIPES: usize = 16;
/// The reader made for one request: its bundle cache serves the small files of one bundle.
const READER_CACHE: usize = 12 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn time(ns: i128) -> SystemTime {
    let d = Duration::from_nanos(ns.unsigned_abs().min(u128::from(u64::MAX)) as u64);
    if ns >= 0 {
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(d).unwrap_or(UNIX_EPOCH)
    }
}

fn kind(node: &Node) -> FileType {
    match node.kind {
        NodeKind::File { .. } | NodeKind::HardLink { .. } => FileType::RegularFile,
        NodeKind::Dir { .. } => FileType::Directory,
        NodeKind::Symlink { .. } => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDev { .. } => FileType::CharDevice,
        NodeKind::BlockDev { .. } => FileType::BlockDevice,
    }
}

fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// An open file: its path (for messages) and layout.
struct Open {
    path: Vec<u8>,
    layout: Layout,
}

type Listing = Arc<Vec<(u64, FileType, Vec<u8>)>>;

struct Fs {
    repo: Repository,
    opts: Options,
    view: Mutex<Arc<View>>,
    refreshing: Mutex<()>,
    table: Mutex<Table>,
    blobs: Mutex<Lru>,
    files: Mutex<HashMap<u64, Arc<Open>>>,
    /// Buffers for reading blobs, one per thread that read at once.
    scratch: Mutex<Vec<engine::repo::Scratch>>,
    /// Held while a blob is decoded, by its first byte (`LOADING_STRIPES` of them).
    loading: Vec<Mutex<()>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
}

impl Fs {
    /// The snapshots; re-read first if `refresh` and they are older than the interval.
    fn view(&self, refresh: bool) -> Arc<View> {
        let cur = lock(&self.view).clone();
        if !refresh || cur.at.elapsed() < self.opts.refresh {
            return cur;
        }
        // One re-read at a time; the others go on with what there is.
        let Ok(_g) = self.refreshing.try_lock() else { return cur };
        let cur = lock(&self.view).clone();
        if cur.at.elapsed() < self.opts.refresh {
            return cur;
        }
        match View::load(&self.repo, Some(&cur)) {
            Ok(v) => {
                let v = Arc::new(v);
                *lock(&self.view) = v.clone();
                v
            }
            Err(e) => {
                eprintln!("bakare mount: cannot re-read the snapshots: {e}");
                cur
            }
        }
    }

    fn reader<'v>(&'v self, view: &'v View) -> Result<BlobReader<'v>, Errno> {
        BlobReader::with_cache(&self.repo, &view.index, READER_CACHE).map_err(|e| {
            eprintln!("bakare mount: {e}");
            Errno::EIO
        })
    }

    fn dir_attr(&self, ino: u64, time_ns: i64) -> FileAttr {
        let t = time(i128::from(time_ns));
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn link_attr(&self, ino: u64, len: usize, time_ns: i64) -> FileAttr {
        let mut a = self.dir_attr(ino, time_ns);
        a.kind = FileType::Symlink;
        a.perm = 0o777;
        a.nlink = 1;
        a.size = len as u64;
        a
    }

    fn latest_target(&self, view: &View) -> Option<Vec<u8>> {
        view.latest().map(|s| [&b"snapshots/"[..], &s.name].concat())
    }

    fn attr(&self, ino: u64, entry: &Entry, view: &View) -> FileAttr {
        let newest = view.latest().map_or(0, |s| s.time_ns);
        match entry {
            Entry::Root | Entry::Snapshots | Entry::Hosts | Entry::Tags | Entry::Group { .. } => {
                self.dir_attr(ino, newest)
            }
            Entry::Latest => self.link_attr(ino, self.latest_target(view).map_or(0, |t| t.len()), newest),
            Entry::Link { target } => self.link_attr(ino, target.len(), newest),
            Entry::Snapshot { time_ns, .. } => self.dir_attr(ino, *time_ns),
            Entry::Node(n) => {
                let size = match &n.kind {
                    NodeKind::Symlink { target } => target.len() as u64,
                    _ => n.size(),
                };
                FileAttr {
                    ino: INodeNo(ino),
                    size,
                    blocks: size.saturating_sub(n.hole_bytes()).div_ceil(512),
                    atime: time(n.mtime_ns),
                    mtime: time(n.mtime_ns),
                    ctime: time(n.ctime_ns),
                    crtime: time(n.mtime_ns),
                    kind: kind(n),
                    perm: (n.mode & 0o7777) as u16,
                    nlink: if matches!(n.kind, NodeKind::Dir { .. }) { 2 } else { 1 },
                    uid: n.uid,
                    gid: n.gid,
                    rdev: match n.kind {
                        NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev } => rdev as u32,
                        _ => 0,
                    },
                    blksize: 4096,
                    flags: 0,
                }
            }
        }
    }

    /// What `name` in `parent` is, if anything.
    fn find(&self, parent: u64, parent_entry: &Entry, name: &[u8]) -> Result<Option<Entry>, Errno> {
        let view = self.view(matches!(parent_entry, Entry::Root | Entry::Snapshots));
        Ok(match parent_entry {
            Entry::Root => match name {
                b"snapshots" | b"hosts" | b"tags" => Some(Entry::Root), // fixed: never allocated
                b"latest" if view.latest().is_some() => Some(Entry::Latest),
                _ => None,
            },
            Entry::Snapshots => {
                view.find(name).map(|s| Entry::Snapshot { tree: s.tree.clone(), time_ns: s.time_ns })
            }
            Entry::Hosts | Entry::Tags => {
                let tags = matches!(parent_entry, Entry::Tags);
                view.groups(tags).contains_key(name).then(|| Entry::Group { tags, name: name.to_vec() })
            }
            Entry::Group { tags, name: group } => {
                let groups = view.groups(*tags);
                groups
                    .get(group)
                    .filter(|names| names.iter().any(|n| n == name))
                    .map(|_| Entry::Link { target: [&b"../../snapshots/"[..], name].concat() })
            }
            Entry::Snapshot { tree, .. } => self.tree_entry(parent, tree, name, &view)?,
            Entry::Node(n) => match &n.kind {
                NodeKind::Dir { subtree } => self.tree_entry(parent, subtree, name, &view)?,
                _ => return Err(Errno::ENOTDIR),
            },
            Entry::Latest | Entry::Link { .. } => return Err(Errno::ENOTDIR),
        })
    }

    fn tree_entry(
        &self,
        parent: u64,
        tree: &[BlobId],
        name: &[u8],
        view: &View,
    ) -> Result<Option<Entry>, Errno> {
        let reader = self.reader(view)?;
        match reader.entry(tree, name) {
            Ok(n) => Ok(n.map(|n| Entry::Node(Box::new(n)))),
            Err(e) => {
                let path = lock(&self.table).path(parent);
                eprintln!("bakare mount: {}: {e}", shown(&path));
                Err(Errno::EIO)
            }
        }
    }

    /// The entries of a directory, without `.` and `..`.
    fn list(&self, ino: u64, entry: &Entry) -> Result<Vec<(FileType, Vec<u8>)>, Errno> {
        let view = self.view(!matches!(entry, Entry::Snapshot { .. } | Entry::Node(_)));
        let dir = |names: Vec<Vec<u8>>| names.into_iter().map(|n| (FileType::Directory, n)).collect();
        let links = |names: Vec<Vec<u8>>| names.into_iter().map(|n| (FileType::Symlink, n)).collect();
        let tree = match entry {
            Entry::Root => {
                let mut v: Vec<(FileType, Vec<u8>)> =
                    dir(vec![b"hosts".to_vec(), b"snapshots".to_vec(), b"tags".to_vec()]);
                if view.latest().is_some() {
                    v.insert(1, (FileType::Symlink, b"latest".to_vec()));
                }
                return Ok(v);
            }
            Entry::Snapshots => return Ok(dir(view.snaps.iter().map(|s| s.name.clone()).collect())),
            Entry::Hosts => return Ok(dir(view.groups(false).into_keys().collect())),
            Entry::Tags => return Ok(dir(view.groups(true).into_keys().collect())),
            Entry::Group { tags, name } => {
                return Ok(links(view.groups(*tags).remove(name).unwrap_or_default()));
            }
            Entry::Snapshot { tree, .. } => tree,
            Entry::Node(n) => match &n.kind {
                NodeKind::Dir { subtree } => subtree,
                _ => return Err(Errno::ENOTDIR),
            },
            Entry::Latest | Entry::Link { .. } => return Err(Errno::ENOTDIR),
        };
        let reader = self.reader(&view)?;
        let tally = engine::repo::Tally::default();
        let mut entries = reader.entries(tree, &tally);
        let mut out = Vec::new();
        loop {
            match entries.next() {
                Ok(Some(n)) => out.push((kind(&n), n.name)),
                Ok(None) => return Ok(out),
                Err(e) => {
                    let path = lock(&self.table).path(ino);
                    eprintln!("bakare mount: {}: {e}", shown(&path));
                    return Err(Errno::EIO);
                }
            }
        }
    }

    fn entry_of(&self, ino: u64) -> Result<Arc<Entry>, Errno> {
        lock(&self.table).get(ino).map(|i| i.entry.clone()).ok_or(Errno::ENOENT)
    }

    /// A decoded blob of `open`'s file: from the LRU, or read (and checked against the length
    /// its offsets were computed from).
    fn blob(&self, reader: &BlobReader, id: &BlobId, len: u64) -> Result<Arc<Vec<u8>>, String> {
        if let Some(b) = lock(&self.blobs).get(id) {
            return Ok(b);
        }
        // One thread decodes a blob; another wanting it at once (the kernel reads ahead in
        // parallel requests) waits and takes it from the LRU instead of decoding it again.
        let _loading = lock(&self.loading[usize::from(id[0]) % LOADING_STRIPES]);
        if let Some(b) = lock(&self.blobs).get(id) {
            return Ok(b);
        }
        // Through reused buffers: fresh ones per blob cost more in page faults (the kernel
        // zeroing new pages) than the rest of a blob's reading (measured with perf: half of a
        // cat's CPU).
        let mut scratch = lock(&self.scratch).pop().unwrap_or_default();
        let b = reader.read_with(id, BlobKind::Data, &mut scratch, <[u8]>::to_vec);
        lock(&self.scratch).push(scratch);
        let b = b.map_err(|e| e.to_string())?;
        if b.len() as u64 != len {
            return Err(format!("holds {} bytes, the index says {len}", b.len()));
        }
        let b = Arc::new(b);
        lock(&self.blobs).insert(*id, b.clone());
        Ok(b)
    }

    fn read_range(&self, open: &Open, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let l = &open.layout;
        let mut out = Vec::with_capacity(size as usize);
        let view = self.view(false);
        let mut reader = None;
        for piece in l.pieces(offset, u64::from(size)) {
            match piece {
                Piece::Zeros(n) => out.resize(out.len() + n as usize, 0),
                Piece::Data { at, len } => {
                    if at.saturating_add(len) > l.data_len() {
                        eprintln!(
                            "bakare mount: {}: its blobs hold {} bytes of data, its size calls for {}",
                            shown(&open.path),
                            l.data_len(),
                            l.wanted()
                        );
                        return Err(Errno::EIO);
                    }
                    let reader = match &reader {
                        Some(r) => r,
                        None => reader.insert(self.reader(&view)?),
                    };
                    for (i, off, n) in l.spans(at, len) {
                        let id = &l.blobs[i];
                        let b = self.blob(reader, id, l.starts[i + 1] - l.starts[i]).map_err(|why| {
                            eprintln!("bakare mount: {}: blob {}: {why}", shown(&open.path), hex::encode(id));
                            Errno::EIO
                        })?;
                        out.extend_from_slice(&b[off..off + n]);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A stand-in inode number for a directory entry not looked up yet (readdir's d_ino).
/// Whether the requester may see the extended attribute `name`: `trusted.*` only root, as on
/// a local file system.
fn visible(req: &Request, name: &[u8]) -> bool {
    !name.starts_with(b"trusted.") || req.uid() == 0
}

/// The most an attribute's value or list may be (XATTR_SIZE_MAX, XATTR_LIST_MAX): past it a
/// caller retrying with a larger buffer would never succeed.
const XATTR_MAX: usize = 1 << 16;

/// `size` 0 asks how large `value` is; otherwise it is sent if it fits (ERANGE if not).
fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    match u32::try_from(value.len()) {
        Ok(_) if value.len() > XATTR_MAX => reply.error(Errno::E2BIG),
        Err(_) => reply.error(Errno::E2BIG),
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len > size => reply.error(Errno::ERANGE),
        Ok(_) => reply.data(value),
    }
}

fn stand_in(parent: u64, name: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (parent, name).hash(&mut h);
    h.finish() | 1 << 63
}

impl Filesystem for Fs {
    /// Stored ACLs are shown (`getfacl`) and, with `default_permissions`, enforced by the
    /// kernel as on the machine that was backed up. A kernel without it shows the modes only.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err() && self.opts.allow_other {
            // Without it the kernel takes the mode's group bits (an ACL's mask) for the
            // group's permission: other users could read more than the stored ACLs allow.
            return Err(std::io::Error::other(
                "this kernel's FUSE cannot enforce stored ACLs: not mounting with --allow-other",
            ));
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (parent, name) = (parent.0, name.as_bytes());
        let r = (|| {
            let pe = self.entry_of(parent)?;
            let found = self.find(parent, &pe, name)?.ok_or(Errno::ENOENT)?;
            let mut t = lock(&self.table);
            let ino = t.lookup(parent, name, || found).map_err(|_| Errno::ENFILE)?;
            let entry = t.get(ino).map(|i| i.entry.clone()).ok_or(Errno::ENOENT)?;
            drop(t);
            let ttl = if matches!(*entry, Entry::Node(_)) { TREE_TTL } else { TOP_TTL };
            Ok((self.attr(ino, &entry, &self.view(false)), ttl))
        })();
        match r {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// A stored extended attribute (ACLs are `system.posix_acl_*` ones), as it was backed up.
    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let entry = match self.entry_of(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let Entry::Node(n) = &*entry else { return reply.error(Errno::NO_XATTR) };
        let shown = |x: &&engine::tree::Xattr| x.name == name.as_bytes() && visible(req, &x.name);
        match n.xattrs.iter().find(shown) {
            None => reply.error(Errno::NO_XATTR),
            Some(x) => xattr_reply(reply, size, &x.value),
        }
    }

    /// The stored extended attributes' names, each ended by a NUL.
    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let entry = match self.entry_of(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        if let Entry::Node(n) = &*entry {
            for x in n.xattrs.iter().filter(|x| visible(req, &x.name)) {
                names.extend_from_slice(&x.name);
                names.push(0);
            }
        }
        xattr_reply(reply, size, &names);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.table).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.entry_of(ino.0) {
            Ok(e) => {
                let ttl = if matches!(*e, Entry::Node(_)) { TREE_TTL } else { TOP_TTL };
                let refresh = matches!(*e, Entry::Snapshots | Entry::Latest);
                reply.attr(&ttl, &self.attr(ino.0, &e, &self.view(refresh)))
            }
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry_of(ino.0).as_deref() {
            Ok(Entry::Latest) => match self.latest_target(&self.view(true)) {
                Some(t) => reply.data(&t),
                None => reply.error(Errno::ENOENT),
            },
            Ok(Entry::Link { target }) => reply.data(target),
            Ok(Entry::Node(n)) => match &n.kind {
                NodeKind::Symlink { target } => reply.data(target),
                _ => reply.error(Errno::EINVAL),
            },
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(*e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let entry = self.entry_of(ino.0)?;
            let Entry::Node(node) = &*entry else { return Err(Errno::EISDIR) };
            let view = self.view(false);
            let path = lock(&self.table).path(ino.0);
            let layout = match Layout::new(node, |id| view.index.get(id).map(|l| l.raw_len)) {
                None => return Err(Errno::EINVAL),
                Some(Ok(l)) => l,
                Some(Err(content::Unknown(id))) => {
                    eprintln!("bakare mount: {}: blob {} is not in the index", shown(&path), hex::encode(id));
                    return Err(Errno::EIO);
                }
            };
            if layout.data_len() != layout.wanted() {
                eprintln!(
                    "bakare mount: {}: damaged: its blobs hold {} bytes of data, its size calls for {}",
                    shown(&path),
                    layout.data_len(),
                    layout.wanted()
                );
            }
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            lock(&self.files).insert(fh, Arc::new(Open { path, layout }));
            Ok(fh)
        })();
        match r {
            // The content never changes: the page cache may keep it across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(open) = lock(&self.files).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        match self.read_range(&open, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.files).remove(&fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let r = (|| {
            let entry = self.entry_of(ino.0)?;
            let parent = lock(&self.table).get(ino.0).map_or(ROOT, |i| i.parent);
            let names = self.list(ino.0, &entry)?;
            let t = lock(&self.table);
            let mut all = vec![
                (ino.0, FileType::Directory, b".".to_vec()),
                (parent, FileType::Directory, b"..".to_vec()),
            ];
            for (k, n) in names {
                let i = t.known(ino.0, &n).unwrap_or_else(|| stand_in(ino.0, &n));
                all.push((i, k, n));
            }
            drop(t);
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            lock(&self.dirs).insert(fh, Arc::new(all));
            Ok(fh)
        })();
        match r {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(list) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }
}

/// A mounted repository, not served yet.
pub struct Mounted(fuser::Session<Fs>);

/// Unmounts a mount from another thread (a signal handler's).
pub struct Unmounter(fuser::SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.0.unmount_callable())
    }

    /// Serves requests until the file system is unmounted (by `Unmounter`, `fusermount -u`
    /// or `umount`).
    pub fn run(self) -> std::io::Result<()> {
        self.0.run()
    }
}

/// Mounts `repo` read-only at `dir` (reading its snapshots and index first).
pub fn mount(repo: Repository, dir: &Path, opts: Options) -> Result<Mounted, Error> {
    let view = View::load(&repo, None)?;
    let allow_other = opts.allow_other;
    let fs = Fs {
        blobs: Mutex::new(Lru::new(opts.cache)),
        table: Mutex::new(Table::new(opts.max_inodes)),
        repo,
        view: Mutex::new(Arc::new(view)),
        refreshing: Mutex::new(()),
        files: Mutex::new(HashMap::new()),
        scratch: Mutex::new(Vec::new()),
        loading: (0..LOADING_STRIPES).map(|_| Mutex::new(())).collect(),
        dirs: Mutex::new(HashMap::new()),
        next_fh: AtomicU64::new(1),
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        opts,
    };
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("bakare".into()),
        MountOption::Subtype("bakare".into()),
        MountOption::DefaultPermissions,
        // A backup's set-id programs and device nodes are data here, not capabilities.
        MountOption::NoSuid,
        MountOption::NoDev,
    ];
    if allow_other {
        cfg.acl = SessionACL::All;
    }
    // Two: a slow blob read does not hold up listings.
    cfg.n_threads = Some(2);
    let session = fuser::Session::new(fs, dir, &cfg)
        .map_err(|source| Error::Mount { dir: dir.display().to_string(), source })?;
    Ok(Mounted(session))
}
