//! Trees: one directory's entries, sorted by name bytes, stored as blobs of kind Tree (sealed in
//! packs like file data, so names are encrypted). A large directory is split across several
//! tree blobs; its node lists them in order. Plaintext: `version u8 (3) | postcard(Tree)`.
//! Version 3 added the holes of sparse files; version 2 added extended attributes and inode
//! flags (`attrs`) and keeps times as i128 nanoseconds (any i64 of seconds); versions 2 and 1
//! (i64 nanoseconds, no attributes) are still read.
use serde::{Deserialize, Serialize};
use stages::{BlobId, Meta};

use crate::error::{Error, Result};
pub use crate::ops::attrs::Xattr;
use crate::ops::attrs::{self, Attrs};

pub const VERSION: u8 = 3;
const VERSION_2: u8 = 2;
const VERSION_1: u8 = 1;
/// A tree blob is closed after this many entries (bounds the builder's memory per directory
/// level and keeps tree blobs far below the blob size limit).
pub const MAX_ENTRIES: usize = 4096;

// Limits every reader enforces on repository content (docs/security.md): a hostile writer
// controls every byte of a tree, so nothing is walked or allocated because a tree says so.
/// Longest name. NAME_MAX is 255 bytes on most Linux file systems, but NTFS (ntfs-3g, ntfs3)
/// and some FUSE file systems hold 255 UTF-16 units, up to 765 bytes of UTF-8: those are real.
pub const MAX_NAME: usize = 1024;
/// Longest symlink target: PATH_MAX less its NUL, as readlink returns at most.
pub const MAX_LINK_TARGET: usize = 4095;
/// Deepest directory a walk enters. Path-based tools stop near PATH_MAX (2,048 levels of
/// one-byte names); a restore holds one open directory per level.
pub const MAX_DEPTH: usize = 1024;
/// Longest path below a snapshot's root that a walk enters (4 times PATH_MAX): a walk keeps
/// the path of every level it is in, so 1,024 levels of 255-byte names would hold ~130 MiB.
pub const MAX_PATH: usize = 16 << 10;
/// Most entries in one directory (ext4 with large_dir holds ~10 million).
pub const MAX_DIR_ENTRIES: u64 = 1 << 24;
/// Most tree blobs one directory is stored in (its entries fill them up to `MAX_ENTRIES`).
pub const MAX_DIR_BLOBS: usize = (MAX_DIR_ENTRIES as usize).div_ceil(MAX_ENTRIES);
/// Most entries a walk of one snapshot visits: directories that share subtrees can describe
/// exponentially many paths in a few blobs.
pub const MAX_SNAPSHOT_NODES: u64 = 1 << 32;
/// At most this many bytes of tree entries are held by the directories a walk is in (one
/// blob each, up to `MAX_DEPTH` of them): real trees hold well under a MiB per level; a hostile
/// one could otherwise stack 1,024 blobs of 16 MiB.
pub const MAX_HELD: usize = 64 << 20;

/// What a blob's entries take in memory, roughly: their names, link targets and content lists.
pub fn entries_size(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .map(|n| {
            let extra = match &n.kind {
                NodeKind::File { content, .. } | NodeKind::HardLink { content, .. } => content.len() * 32,
                NodeKind::Dir { subtree } => subtree.len() * 32,
                NodeKind::Symlink { target } => target.len(),
                _ => 0,
            };
            let attrs: usize = n.xattrs.iter().map(|x| 48 + x.name.len() + x.value.len()).sum();
            let holes = n.holes.len() * std::mem::size_of::<Hole>();
            std::mem::size_of::<Node>() + n.name.len() + extra + attrs + holes
        })
        .sum()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    File {
        size: u64,
        content: Vec<BlobId>,
    },
    Dir {
        subtree: Vec<BlobId>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Another name of a file stored earlier in the same snapshot, at `target` (a path relative
    /// to the snapshot root). The content is repeated so a partial restore still has it.
    HardLink {
        target: Vec<u8>,
        size: u64,
        content: Vec<BlobId>,
    },
    Fifo,
    Socket,
    CharDev {
        rdev: u64,
    },
    BlockDev {
        rdev: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: Vec<u8>,
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    /// Number of names the file had; a file with several is a hard link target.
    pub nlink: u64,
    /// Extended attributes, sorted by name (ACLs among them).
    pub xattrs: Vec<Xattr>,
    /// Linux inode flags, within `attrs::FLAGS`.
    pub flags: u32,
    /// A regular file's holes (sparse files), in order: its `content` is its other bytes.
    pub holes: Vec<Hole>,
}

/// `len` bytes at `offset` of a sparse file that hold no data (they read as zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hole {
    pub offset: u64,
    pub len: u64,
}

impl From<stages::Hole> for Hole {
    fn from(h: stages::Hole) -> Hole {
        Hole { offset: h.offset, len: h.len }
    }
}

/// Places a file's data (its content: every byte but its holes) at its offsets in the file.
pub struct Placer<'a> {
    holes: &'a [Hole],
    next: usize,
    pos: u64,
}

impl<'a> Placer<'a> {
    pub fn new(holes: &'a [Hole]) -> Placer<'a> {
        let mut p = Placer { holes, next: 0, pos: 0 };
        p.skip();
        p
    }

    fn skip(&mut self) {
        while let Some(h) = self.holes.get(self.next).filter(|h| h.offset <= self.pos) {
            self.pos = self.pos.max(h.offset.saturating_add(h.len));
            self.next += 1;
        }
    }

    /// Where the next `len` bytes of data go: (offset in the file, how many of them fit there
    /// before the next hole; at least one when `len` is).
    pub fn place(&mut self, len: u64) -> (u64, u64) {
        let room = self.holes.get(self.next).map_or(u64::MAX, |h| h.offset - self.pos);
        let (at, n) = (self.pos, len.min(room));
        self.pos = self.pos.saturating_add(n);
        self.skip();
        (at, n)
    }
}

/// A node as tree version 2 stored it (no holes).
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct NodeV2 {
    name: Vec<u8>,
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    nlink: u64,
    xattrs: Vec<Xattr>,
    flags: u32,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct TreeV2 {
    nodes: Vec<NodeV2>,
}

impl From<NodeV2> for Node {
    fn from(n: NodeV2) -> Node {
        let NodeV2 { name, kind, mode, uid, gid, mtime_ns, ctime_ns, ino, nlink, xattrs, flags } = n;
        Node { name, kind, mode, uid, gid, mtime_ns, ctime_ns, ino, nlink, xattrs, flags, holes: Vec::new() }
    }
}

/// A node as tree version 1 stored it.
#[derive(Deserialize)]
struct NodeV1 {
    name: Vec<u8>,
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    nlink: u64,
}

#[derive(Deserialize)]
struct TreeV1 {
    nodes: Vec<NodeV1>,
}

impl From<NodeV1> for Node {
    fn from(n: NodeV1) -> Node {
        let NodeV1 { name, kind, mode, uid, gid, mtime_ns, ctime_ns, ino, nlink } = n;
        let (mtime_ns, ctime_ns) = (i128::from(mtime_ns), i128::from(ctime_ns));
        let (xattrs, flags, holes) = (Vec::new(), 0, Vec::new());
        Node { name, kind, mode, uid, gid, mtime_ns, ctime_ns, ino, nlink, xattrs, flags, holes }
    }
}

impl Node {
    pub fn new(name: Vec<u8>, kind: NodeKind, meta: &Meta) -> Node {
        Node {
            name,
            kind,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
            ino: meta.ino,
            nlink: meta.nlink,
            xattrs: Vec::new(),
            flags: 0,
            holes: Vec::new(),
        }
    }

    pub fn with_holes(mut self, holes: Vec<Hole>) -> Node {
        self.holes = holes;
        self
    }

    /// Bytes of a file's holes (of a valid node: `problem` checks they fit in its size).
    pub fn hole_bytes(&self) -> u64 {
        self.holes.iter().fold(0u64, |n, h| n.saturating_add(h.len))
    }

    pub fn with_attrs(mut self, attrs: Attrs) -> Node {
        self.xattrs = attrs.xattrs;
        self.flags = attrs.flags;
        self
    }

    /// The mtime as seconds and nanoseconds, if the seconds fit in an i64.
    pub fn mtime(&self) -> Option<(i64, u32)> {
        split_ns(self.mtime_ns)
    }

    /// Why a reader must refuse this entry, if it must: a name a restore cannot create safely
    /// inside its target, a symlink or hard link target no file system stores, or a size its
    /// content cannot hold.
    pub fn problem(&self) -> Option<String> {
        if !valid_name(&self.name) {
            return Some(format!("invalid name {:?}", String::from_utf8_lossy(&self.name)));
        }
        match &self.kind {
            NodeKind::Symlink { target } if target.is_empty() || target.len() > MAX_LINK_TARGET => {
                Some(format!("symlink target of {} bytes", target.len()))
            }
            NodeKind::Symlink { target } if target.contains(&0) => {
                Some("symlink target with a NUL byte".into())
            }
            NodeKind::HardLink { target, .. } if !valid_relative_path(target) => Some(format!(
                "hard link to {:?}, not a path inside the snapshot",
                String::from_utf8_lossy(target)
            )),
            NodeKind::File { .. } | NodeKind::HardLink { .. } if !self.holes.is_empty() => {
                self.holes_problem().or_else(|| self.content_problem())
            }
            NodeKind::File { .. } | NodeKind::HardLink { .. } => self.content_problem(),
            _ if !self.holes.is_empty() => Some("holes in something that is not a file".into()),
            NodeKind::Dir { subtree } if subtree.len() > MAX_DIR_BLOBS => {
                Some(format!("directory stored in {} tree blobs", subtree.len()))
            }
            _ if split_ns(self.mtime_ns).is_none() || split_ns(self.ctime_ns).is_none() => {
                Some("a time beyond what 64 bits of seconds hold".into())
            }
            _ => attrs::problem(&self.xattrs, self.flags),
        }
    }

    /// Holes must be in order, apart, not empty, inside the file, and not too many.
    fn holes_problem(&self) -> Option<String> {
        if self.holes.len() > io::sparse::MAX_HOLES {
            return Some(format!("{} holes", self.holes.len()));
        }
        let mut end = 0u64;
        for h in &self.holes {
            let after = h.offset.checked_add(h.len).filter(|_| h.len > 0 && h.offset >= end);
            match after {
                Some(e) if e <= self.size() => end = e,
                _ => return Some(format!("a hole of {} bytes at {} out of place", h.len, h.offset)),
            }
        }
        None
    }

    /// A file's data (its size less its holes) must fit its blobs, each of which holds at least
    /// one byte and at most `MAX_BLOB`; its times and attributes must be valid.
    fn content_problem(&self) -> Option<String> {
        let (NodeKind::File { size, content } | NodeKind::HardLink { size, content, .. }) = &self.kind else {
            return None;
        };
        // No file system holds a file larger than off_t: with holes, a size is not bounded by
        // the blobs, and readers add sizes up.
        if *size > i64::MAX as u64 {
            return Some(format!("claims {size} bytes, more than a file can hold"));
        }
        let data = size.saturating_sub(self.hole_bytes());
        if data > (content.len() as u64).saturating_mul(stages::compress::MAX_BLOB as u64)
            || content.len() as u64 > data
        {
            return Some(format!("claims {data} bytes of data in {} blobs", content.len()));
        }
        if split_ns(self.mtime_ns).is_none() || split_ns(self.ctime_ns).is_none() {
            return Some("a time beyond what 64 bits of seconds hold".into());
        }
        attrs::problem(&self.xattrs, self.flags)
    }

    pub fn size(&self) -> u64 {
        match &self.kind {
            NodeKind::File { size, .. } | NodeKind::HardLink { size, .. } => *size,
            _ => 0,
        }
    }

    pub fn type_char(&self) -> char {
        match self.kind {
            NodeKind::File { .. } => '-',
            NodeKind::Dir { .. } => 'd',
            NodeKind::Symlink { .. } => 'l',
            NodeKind::HardLink { .. } => 'h',
            NodeKind::Fifo => 'p',
            NodeKind::Socket => 's',
            NodeKind::CharDev { .. } => 'c',
            NodeKind::BlockDev { .. } => 'b',
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Serializing owned plain data into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// The blob's entries, all of them valid (`Node::problem`), or an error naming the first
    /// that is not.
    pub fn decode(name: &str, data: &[u8]) -> Result<Tree> {
        let (nodes, refused) = Tree::decode_entries(name, data)?;
        match refused.into_iter().next() {
            Some(r) => Err(Error::corrupt("tree", name, r.why)),
            None => Ok(Tree { nodes }),
        }
    }

    /// The blob's valid entries, and the others, each with why it is refused: one bad entry
    /// costs only itself. The blob as a whole must decode, hold at most `MAX_ENTRIES` entries,
    /// and list them in strictly increasing name order, or it is refused whole.
    pub fn decode_entries(name: &str, data: &[u8]) -> Result<(Vec<Node>, Vec<Refused>)> {
        let corrupt = |e: postcard::Error| Error::corrupt("tree", name, e);
        let t = match data.split_first() {
            Some((&VERSION, body)) => Some(postcard::from_bytes::<Tree>(body).map_err(corrupt)?),
            Some((&VERSION_2, body)) => {
                let t = postcard::from_bytes::<TreeV2>(body).map_err(corrupt)?;
                Some(Tree { nodes: t.nodes.into_iter().map(Node::from).collect() })
            }
            Some((&VERSION_1, body)) => {
                let t = postcard::from_bytes::<TreeV1>(body).map_err(corrupt)?;
                Some(Tree { nodes: t.nodes.into_iter().map(Node::from).collect() })
            }
            _ => None,
        };
        match (t, data.first()) {
            (Some(t), _) => {
                if t.nodes.len() > MAX_ENTRIES {
                    let why = format!("{} entries in one blob", t.nodes.len());
                    return Err(Error::corrupt("tree", name, why));
                }
                if !t.nodes.windows(2).all(|w| w[0].name < w[1].name) {
                    return Err(Error::corrupt("tree", name, "names not sorted or not unique"));
                }
                let mut refused = Vec::new();
                let nodes = t
                    .nodes
                    .into_iter()
                    .filter_map(|n| match n.problem() {
                        None => Some(n),
                        Some(why) => {
                            refused.push(Refused { name: n.name, why });
                            None
                        }
                    })
                    .collect();
                Ok((nodes, refused))
            }
            (None, Some(v)) => Err(Error::corrupt("tree", name, format!("unknown version {v}"))),
            (None, None) => Err(Error::corrupt("tree", name, "empty")),
        }
    }
}

/// Nanoseconds since the epoch in an i64 (for displays and the name catalog): times outside
/// 1677-2262 are held at those bounds.
pub fn clamp_ns(ns: i128) -> i64 {
    ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Nanoseconds since the epoch as seconds (an i64) and nanoseconds.
pub fn split_ns(ns: i128) -> Option<(i64, u32)> {
    let secs = i64::try_from(ns.div_euclid(1_000_000_000)).ok()?;
    Some((secs, ns.rem_euclid(1_000_000_000) as u32))
}

/// An entry of a tree blob that readers refuse (`Node::problem`), by name (lossy for a name
/// that is itself the problem).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub name: Vec<u8>,
    pub why: String,
}

/// A name a restore can safely create inside its target: no separators, not `.` or `..`, no
/// longer than a Linux file system stores.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

/// A path relative to the snapshot root made of valid names (`a/b/c`): what a hard link names.
pub fn valid_relative_path(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').count() <= MAX_DEPTH + 1 && path.split(|&b| b == b'/').all(valid_name)
}

/// The rules one directory obeys across all the tree blobs it is stored in, checked as its
/// blobs are read one after another (`Tree::decode` checks each blob alone): names strictly
/// increasing across blobs (so unique), and at most `MAX_DIR_ENTRIES` entries.
///
/// One subtree may appear several times, in one directory too: `cp -al` copies and bind mounts
/// of one directory have equal trees. What sharing can multiply is bounded per walk instead
/// (`amplification_limit`).
#[derive(Default)]
pub struct Listing {
    last: Option<Vec<u8>>,
    entries: u64,
}

/// Most entries a walk visits per distinct stored entry. Shared subtrees are real (rsnapshot
/// keeps hundreds of `cp -al` copies of one tree), but a few crafted blobs that each list the
/// next level twice describe 2^depth paths: a walk stops when it has visited more than this
/// many times the entries of the distinct tree blobs it read (and `AMPLIFICATION_SLACK`).
pub const MAX_AMPLIFICATION: u64 = 1024;
pub const AMPLIFICATION_SLACK: u64 = 1 << 14;

/// A walk's count of the entries it visited against those of the distinct tree blobs it read:
/// every walker of snapshot trees (restore, check, the name catalog, `ls -r`, `diff`, glob
/// expansion) stops at `amplification_limit`.
#[derive(Default)]
pub struct Amplification {
    seen: rustc_hash::FxHashSet<u64>,
    distinct: u64,
    visited: u64,
}

impl Amplification {
    /// Counts a tree blob (or a directory stored from `id` on) of `entries` entries; an error
    /// once the walk has visited more than the limit.
    pub fn visit(&mut self, id: Option<&BlobId>, entries: usize) -> std::result::Result<(), String> {
        self.visited += entries as u64;
        if id.is_some_and(|id| self.seen.insert(crate::index::lead(id))) {
            self.distinct += entries as u64;
        }
        if self.visited > amplification_limit(self.distinct) {
            return Err(format!(
                "shared subtrees describe more than {MAX_AMPLIFICATION} entries per stored one ({} for {})",
                self.visited, self.distinct
            ));
        }
        Ok(())
    }
}

/// How many entries a walk that has read tree blobs holding `distinct` entries may visit.
pub fn amplification_limit(distinct: u64) -> u64 {
    distinct.saturating_mul(MAX_AMPLIFICATION).clamp(AMPLIFICATION_SLACK, MAX_SNAPSHOT_NODES)
}

impl Listing {
    /// Admits the next blob's entries, or says why the directory is damaged.
    pub fn admit(&mut self, nodes: &[Node]) -> std::result::Result<(), String> {
        self.entries += nodes.len() as u64;
        if self.entries > MAX_DIR_ENTRIES {
            return Err(format!("more than {MAX_DIR_ENTRIES} entries in one directory"));
        }
        if let (Some(last), Some(first)) = (&self.last, nodes.first()) {
            if *last >= first.name {
                return Err(format!(
                    "name {:?} repeated or out of order across the directory's tree blobs",
                    String::from_utf8_lossy(&first.name)
                ));
            }
        }
        if let Some(n) = nodes.last() {
            self.last = Some(n.name.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_path_traversal() {
        let n = Node {
            name: b"..".to_vec(),
            kind: NodeKind::Fifo,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            nlink: 1,
            xattrs: vec![],
            flags: 0,
            holes: vec![],
        };
        let t = Tree { nodes: vec![n] };
        assert!(Tree::decode("t", &t.encode()).is_err());
    }

    fn named(name: &str, kind: NodeKind) -> Node {
        let (mtime_ns, ctime_ns, xattrs) = (0, 0, vec![]);
        Node {
            name: name.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns,
            ctime_ns,
            ino: 0,
            nlink: 1,
            xattrs,
            flags: 0,
            holes: vec![],
        }
    }

    #[test]
    fn version_1_trees_are_still_read() {
        #[derive(Serialize)]
        struct V1 {
            name: Vec<u8>,
            kind: NodeKind,
            mode: u32,
            uid: u32,
            gid: u32,
            mtime_ns: i64,
            ctime_ns: i64,
            ino: u64,
            nlink: u64,
        }
        let old = V1 {
            name: b"f".to_vec(),
            kind: NodeKind::Fifo,
            mode: 0o644,
            uid: 7,
            gid: 8,
            mtime_ns: -1,
            ctime_ns: i64::MAX,
            ino: 9,
            nlink: 2,
        };
        let mut data = vec![1u8];
        data.extend(postcard::to_allocvec(&vec![old]).unwrap());
        let t = Tree::decode("t", &data).unwrap();
        let mut want = named("f", NodeKind::Fifo);
        (want.mode, want.uid, want.gid, want.ino, want.nlink) = (0o644, 7, 8, 9, 2);
        (want.mtime_ns, want.ctime_ns) = (-1, i128::from(i64::MAX));
        assert_eq!(t.nodes, [want]);
    }

    #[test]
    fn data_is_placed_around_the_holes() {
        let holes = [Hole { offset: 0, len: 10 }, Hole { offset: 15, len: 5 }, Hole { offset: 30, len: 70 }];
        let mut p = Placer::new(&holes);
        assert_eq!(p.place(3), (10, 3));
        assert_eq!(p.place(100), (13, 2), "up to the next hole");
        assert_eq!(p.place(100), (20, 10));
        let mut none = Placer::new(&[]);
        assert_eq!((none.place(7), none.place(1)), ((0, 7), (7, 1)));
    }

    #[test]
    fn version_2_trees_are_still_read() {
        let kind = NodeKind::File { size: 3, content: vec![[1; 32]] };
        let (mode, uid, gid, mtime_ns, ctime_ns, ino, nlink) = (0o644, 1, 2, -5, 7, 3, 1);
        let xattrs = vec![Xattr { name: b"user.a".to_vec(), value: b"v".to_vec() }];
        let name = b"f".to_vec();
        let old = NodeV2 { name, kind, mode, uid, gid, mtime_ns, ctime_ns, ino, nlink, xattrs, flags: 0x10 };
        let mut data = vec![2u8];
        data.extend(postcard::to_allocvec(&TreeV2 { nodes: vec![old] }).unwrap());
        let t = Tree::decode("t", &data).unwrap();
        let n = &t.nodes[0];
        assert_eq!((n.size(), n.mtime_ns, n.flags, n.xattrs.len()), (3, -5, 0x10, 1));
        assert!(n.holes.is_empty());
    }

    #[test]
    fn holes_must_fit_the_file_they_are_in() {
        let file = |size: u64, blobs: usize, holes: &[(u64, u64)]| {
            let holes = holes.iter().map(|&(offset, len)| Hole { offset, len }).collect();
            named("f", NodeKind::File { size, content: vec![[1; 32]; blobs] }).with_holes(holes)
        };
        let sparse = file(10 << 30, 1, &[(0, 5 << 30), ((5 << 30) + 100, (5 << 30) - 100)]);
        assert_eq!(sparse.problem(), None, "100 bytes of data in one blob");
        assert_eq!(sparse.hole_bytes(), (10 << 30) - 100);
        let t = Tree { nodes: vec![sparse.clone()] };
        assert_eq!(Tree::decode("t", &t.encode()).unwrap().nodes, [sparse]);
        assert_eq!(file(100, 0, &[(0, 100)]).problem(), None, "nothing but a hole");
        assert_eq!(file(100, 1, &[(0, 50), (50, 10)]).problem(), None, "holes side by side");
        assert!(file(10 << 30, 1, &[]).problem().is_some(), "10 GiB of data in one blob");
        assert!(file(100, 1, &[(50, 60)]).problem().is_some(), "past the end");
        assert!(file(100, 1, &[(10, 10), (15, 10)]).problem().is_some(), "overlapping");
        assert!(file(100, 1, &[(20, 10), (10, 5)]).problem().is_some(), "out of order");
        assert!(file(100, 1, &[(10, 0)]).problem().is_some(), "empty");
        assert!(file(u64::MAX, 1, &[(u64::MAX - 1, 5)]).problem().is_some(), "past 2^64");
        assert!(file(u64::MAX, 0, &[(0, u64::MAX)]).problem().is_some(), "larger than off_t");
        assert_eq!(file(i64::MAX as u64, 0, &[(0, i64::MAX as u64)]).problem(), None, "as large as off_t");
        assert!(file(100, 1, &[(0, 100)]).problem().is_some(), "a blob, but no data");
        let too_many: Vec<(u64, u64)> = (0..=io::sparse::MAX_HOLES as u64).map(|i| (i * 2, 1)).collect();
        assert!(file(1 << 20, 1000, &too_many).problem().is_some(), "too many holes");
        let dir = named("d", NodeKind::Dir { subtree: vec![] }).with_holes(vec![Hole { offset: 0, len: 1 }]);
        assert!(dir.problem().is_some(), "holes in a directory");
    }

    #[test]
    fn times_and_attributes_round_trip() {
        let mut n = named("f", NodeKind::Fifo);
        // 2300-01-01 and 1901-12-13: beyond an i64 of nanoseconds both ways.
        n.mtime_ns = 10_413_792_000 * 1_000_000_000 + 123;
        n.ctime_ns = -2_147_483_648 * 1_000_000_000 - 1;
        n.xattrs = vec![
            Xattr { name: b"system.posix_acl_access".to_vec(), value: vec![2, 0, 0, 0, 1, 0, 6, 0] },
            Xattr { name: b"user.\xff".to_vec(), value: vec![0xff; 300] },
        ];
        n.flags = crate::ops::attrs::LOCKING;
        let t = Tree { nodes: vec![n.clone()] };
        assert_eq!(Tree::decode("t", &t.encode()).unwrap().nodes, [n.clone()]);
        assert_eq!(n.mtime(), Some((10_413_792_000, 123)));
        assert_eq!(split_ns(n.ctime_ns), Some((-2_147_483_649, 999_999_999)));
        // Seconds beyond an i64 are no time a file system holds.
        n.mtime_ns = i128::from(i64::MAX) * 1_000_000_000 + 1_000_000_000;
        assert!(n.problem().unwrap().contains("64 bits of seconds"));
        n.mtime_ns = 0;
        n.xattrs[1].name = b"nonsense".to_vec();
        assert!(n.problem().unwrap().contains("extended attribute name"));
    }

    #[test]
    fn a_listing_is_ordered_and_unique_across_blobs() {
        let f = |n: &str| named(n, NodeKind::Fifo);
        let mut l = Listing::default();
        l.admit(&[f("a"), f("b")]).unwrap();
        l.admit(&[f("c")]).unwrap();
        l.admit(&[]).unwrap();
        assert!(l.admit(&[f("c")]).unwrap_err().contains("repeated or out of order"));
        let mut l = Listing::default();
        l.admit(&[f("b")]).unwrap();
        assert!(l.admit(&[f("a")]).is_err());
    }

    #[test]
    fn a_listing_admits_a_subtree_twice() {
        // `cp -al` copies: equal subtrees side by side are real.
        let d = |n: &str, s: Vec<BlobId>| named(n, NodeKind::Dir { subtree: s });
        let mut l = Listing::default();
        l.admit(&[d("a", vec![[1; 32]]), d("b", vec![[1; 32]])]).unwrap();
        l.admit(&[d("c", vec![[1; 32]])]).unwrap();
    }

    #[test]
    fn entries_no_file_system_holds_are_refused() {
        let long = named(&"x".repeat(MAX_NAME + 1), NodeKind::Fifo);
        assert!(long.problem().is_some());
        assert!(named(&"x".repeat(MAX_NAME), NodeKind::Fifo).problem().is_none());
        let link = |t: &[u8]| named("l", NodeKind::Symlink { target: t.to_vec() });
        assert!(link(b"").problem().is_some());
        assert!(link(&vec![b'a'; MAX_LINK_TARGET + 1]).problem().is_some());
        assert!(link(b"../anywhere/is/fine").problem().is_none());
        let hard = |t: &[u8]| named("h", NodeKind::HardLink { target: t.to_vec(), size: 0, content: vec![] });
        for bad in [&b"/etc/passwd"[..], b"../x", b"a//b", b"a/./b", b""] {
            assert!(hard(bad).problem().is_some(), "{bad:?}");
        }
        assert!(hard(b"home/u/f").problem().is_none());
        let file = |size: u64, n: usize| named("f", NodeKind::File { size, content: vec![[0; 32]; n] });
        assert!(file(1 << 60, 1).problem().is_some());
        assert!(file(stages::compress::MAX_BLOB as u64, 1).problem().is_none());
        assert!(file(1, 0).problem().is_some());
        assert!(file(0, 1).problem().is_some(), "an empty file has no blobs");
        assert!(file(3, 4).problem().is_some());
        assert!(file(0, 0).problem().is_none());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Tree::decode("t", &g);
        }
    }
}
