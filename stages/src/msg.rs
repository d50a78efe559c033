//! The messages that flow between stages, and the cancellation token they all share.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::budget::Permit;
use crate::encrypt::KeyEpoch;
pub use ::io::sparse::Hole;

/// A blob id: keyed BLAKE3 of the plaintext.
pub type BlobId = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
    /// Small data blobs compressed and sealed together (see compress.rs); never in the index
    /// itself: its members are.
    Bundle = 2,
}

/// The id a bundle is sealed under (its members are checked by their own ids when read).
pub const BUNDLE_ID: BlobId = [0; 32];

/// A small blob inside a bundle: where its bytes sit in the bundle's plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: BlobId,
    pub offset: u32,
    pub len: u32,
}

/// The index entries a blob makes: one per member for a bundle, one otherwise. A pack is sealed
/// at a count of them, and the encrypt stage starts a new key at the same count.
pub fn index_entries(kind: BlobKind, members: &[Member]) -> usize {
    match kind {
        BlobKind::Bundle => members.len(),
        _ => 1,
    }
}

impl BlobKind {
    pub fn from_u8(b: u8) -> Option<BlobKind> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            2 => Some(BlobKind::Bundle),
            _ => None,
        }
    }
}

/// One token cancels everything: sources stop producing, and every stage drains its input
/// without doing work, so the pipeline always finishes.
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters a progress display reads while a backup runs. Writers only add; nothing waits.
#[derive(Default, Debug)]
pub struct Progress {
    /// Found by the scan so far (final once `scan_done`).
    pub files_total: AtomicU64,
    pub bytes_total: AtomicU64,
    pub scan_done: AtomicBool,
    /// Files whose content is known (read and chunked, or unchanged), and their bytes.
    pub files_done: AtomicU64,
    pub bytes_done: AtomicU64,
    /// The last file completed.
    pub current: std::sync::Mutex<PathBuf>,
}

impl Progress {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// What lstat said, in the units the snapshot keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Nanoseconds since the epoch (`io::uring::ns`: any i64 of seconds).
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// 512-byte blocks allocated (fewer than `size` needs: the file may have holes).
    pub blocks: u64,
}

/// A regular file as an earlier backup stored it (`scan::Known::file`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredFile {
    pub content: Vec<BlobId>,
    pub holes: Vec<Hole>,
    /// Its extended attributes and inode flags as the engine encoded them, when they still hold
    /// (they move its ctime when they change); None: read them again.
    pub attrs: Option<Vec<u8>>,
}

/// A directory's tree as an earlier backup stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDir {
    /// Entries in the tree.
    pub entries: u64,
    pub tree: Vec<BlobId>,
}

/// Files cache records carried by a reused directory, in scan order: pieces, so that a
/// directory's records are its subdirectories' pieces moved up the tree, never copied again at
/// each level (copied, a tree three levels deep held its records three times over).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    pieces: Vec<Vec<u8>>,
    len: usize,
}

impl Records {
    /// Bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `piece` (records back to back).
    pub fn push(&mut self, piece: Vec<u8>) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push(piece);
        }
    }

    /// Appends `other`'s pieces, moved.
    pub fn append(&mut self, other: Records) {
        self.len += other.len;
        self.pieces.extend(other.pieces);
    }

    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        self.pieces.iter().map(Vec::as_slice)
    }
}

/// The shape of the tree, in deterministic order (sorted names, depth first).
#[derive(Debug)]
pub enum ScanEvent {
    /// A directory begins; its entries follow until the matching `Leave`.
    Enter {
        name: OsString,
        meta: Meta,
    },
    Leave,
    /// A directory that, with everything in it, is as the last run stored it: its stored tree
    /// is taken whole. Stands for the directory's Enter, entries and Leave. `files`, `bytes`
    /// and `dirs` (itself included) are what it holds; `records` are the files cache's own
    /// records of it and everything in it, to be written again as they are.
    Reused {
        name: OsString,
        meta: Meta,
        stored: StoredDir,
        files: u64,
        bytes: u64,
        dirs: u64,
        records: Records,
    },
    /// A regular file whose content is read; `FileEvent`s with the same `seq` describe it.
    File {
        seq: u64,
        name: OsString,
        meta: Meta,
    },
    /// A regular file known unchanged since an earlier backup: its content is not read again.
    Unchanged {
        seq: u64,
        name: OsString,
        meta: Meta,
        content: Vec<BlobId>,
        holes: Vec<Hole>,
        /// `StoredFile::attrs`.
        attrs: Option<Vec<u8>>,
    },
    /// A further name of a file already seen (hard link) as `File { seq: first }`.
    HardLink {
        first: u64,
        name: OsString,
        meta: Meta,
    },
    Symlink {
        name: OsString,
        meta: Meta,
        target: OsString,
    },
    /// FIFOs, sockets, devices: recorded, never read.
    Special {
        name: OsString,
        meta: Meta,
    },
    /// Something that could not be listed or stat'ed. The run goes on.
    Error {
        path: PathBuf,
        why: String,
    },
    /// Files cache records of a directory taken whole (`scan::Known::subtree`), to be written
    /// again as they are; its `Reused` event follows them.
    Records(Vec<u8>),
    /// A directory the file watcher saw no change in is not what the files cache recorded:
    /// the watcher missed a change, and the run must not be committed. The last event.
    Gap(String),
}

#[derive(Debug, Clone)]
pub struct ReadJob {
    pub seq: u64,
    pub path: PathBuf,
    pub meta: Meta,
}

/// read -> chunk. All blocks of one file go to the same chunk worker, in offset order.
#[derive(Debug)]
pub enum Block {
    Data {
        seq: u64,
        /// `buf[start..]` holds the file's bytes at `offset`; `buf[..start]` is headroom the
        /// chunker uses to prepend the previous block's unchunked tail without allocating.
        buf: Vec<u8>,
        start: usize,
        offset: u64,
        last: bool,
        /// For the bytes of this block as they go downstream (and its headroom).
        permit: Permit,
        /// For a buffer from the read pool (`crate::pool`): the permit for its whole capacity,
        /// which goes back to the pool with it.
        pooled: Option<Permit>,
    },
    /// The file's holes (`io::sparse`), sent before its first block when it has any. Its
    /// blocks then hold only its data: their `offset`s count data bytes, holes left out.
    Holes {
        seq: u64,
        holes: Vec<Hole>,
    },
    /// The file's attributes, read on the descriptor its content is read through: sent after
    /// it is opened, before its first block. A file the read stage does not open (an empty
    /// one) has none sent: the builder reads its attributes by path.
    Attrs {
        seq: u64,
        attrs: OpenAttrs,
    },
    Failed {
        seq: u64,
        path: PathBuf,
        why: String,
    },
}

/// What a regular file has beyond stat, read by the read stage on the descriptor it opened
/// (`io::attrs`), so the builder need not open the file again by path to ask. Read before the
/// content, so the check that its ctime held through the read (a change to either moves it)
/// covers them too. The builder keeps what it keeps of them and names the errors.
#[derive(Debug)]
pub struct OpenAttrs {
    /// Extended attributes (name, value), sorted by name and unique.
    pub xattrs: std::io::Result<Vec<::io::attrs::Xattr>>,
    /// Inode flags, all of them (0 on a file system without).
    pub flags: std::io::Result<u32>,
}

impl Block {
    pub fn seq(&self) -> u64 {
        match self {
            Block::Data { seq, .. }
            | Block::Holes { seq, .. }
            | Block::Attrs { seq, .. }
            | Block::Failed { seq, .. } => *seq,
        }
    }
}

/// chunk -> hash: one content-defined chunk of a file.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    pub index: u32,
    pub data: Bytes,
    pub permit: Arc<Permit>,
}

/// A blob that is not yet in the repository (dedup claimed it), on its way to a pack.
#[derive(Debug)]
pub struct NewBlob {
    pub id: BlobId,
    pub kind: BlobKind,
    pub data: Bytes,
    pub permit: Arc<Permit>,
}

/// compress -> encrypt: the framed, padded plaintext with room for the nonce in front.
#[derive(Debug)]
pub struct Framed {
    pub id: BlobId,
    pub kind: BlobKind,
    pub raw_len: u32,
    pub buf: Vec<u8>,
    /// For a bundle: the blobs inside it.
    pub members: Vec<Member>,
    pub permits: Vec<Arc<Permit>>,
}

/// encrypt -> write: a sealed blob and the data key epoch it was sealed under.
#[derive(Debug)]
pub struct Sealed {
    pub id: BlobId,
    pub kind: BlobKind,
    pub raw_len: u32,
    pub epoch: Arc<KeyEpoch>,
    pub bytes: Vec<u8>,
    pub members: Vec<Member>,
    pub permits: Vec<Arc<Permit>>,
}

/// What the chunk and hash stages learn about each file, sent to the tree builder.
#[derive(Debug)]
pub enum FileEvent {
    ChunkId {
        seq: u64,
        index: u32,
        id: BlobId,
        len: u32,
    },
    /// The file's holes, before its `End` (`Block::Holes`).
    Holes {
        seq: u64,
        holes: Vec<Hole>,
    },
    /// The file's attributes, before its `End` (`Block::Attrs`).
    Attrs {
        seq: u64,
        attrs: OpenAttrs,
    },
    /// The file was fully chunked into `chunks` chunks of `size` bytes in all (its data: holes
    /// are not counted).
    End {
        seq: u64,
        chunks: u32,
        size: u64,
    },
    Failed {
        seq: u64,
        path: PathBuf,
        why: String,
    },
}

/// The dedup decision, made once per blob id across all workers.
pub trait Dedup: Send + Sync {
    /// True when the caller must store the blob: it is neither in the repository nor already
    /// claimed by another in-flight chunk.
    fn claim(&self, id: &BlobId, kind: BlobKind) -> bool;
}
