//! Trees: one directory's entries, sorted by name bytes, stored as blobs of kind Tree (sealed in
//! packs like file data, so names are encrypted). A large directory is split across several
//! tree blobs; its node lists them in order. Plaintext: `version u8 (1) | postcard(Tree)`.
use serde::{Deserialize, Serialize};
use stages::{BlobId, Meta};

use crate::error::{Error, Result};

pub const VERSION: u8 = 1;
/// A tree blob is closed after this many entries (bounds the builder's memory per directory
/// level and keeps tree blobs far below the blob size limit).
pub const MAX_ENTRIES: usize = 4096;

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
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    /// Number of names the file had; a file with several is a hard link target.
    pub nlink: u64,
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
        }
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

    pub fn decode(name: &str, data: &[u8]) -> Result<Tree> {
        match data.split_first() {
            Some((&VERSION, body)) => {
                let t: Tree = postcard::from_bytes(body).map_err(|e| Error::corrupt("tree", name, e))?;
                let valid = t.nodes.iter().all(|n| valid_name(&n.name))
                    && t.nodes.windows(2).all(|w| w[0].name < w[1].name);
                if !valid {
                    return Err(Error::corrupt("tree", name, "invalid or unsorted names"));
                }
                Ok(t)
            }
            Some((v, _)) => Err(Error::corrupt("tree", name, format!("unknown version {v}"))),
            None => Err(Error::corrupt("tree", name, "empty")),
        }
    }
}

/// A name a restore can safely create inside its target: no separators, not `.` or `..`.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
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
        };
        let t = Tree { nodes: vec![n] };
        assert!(Tree::decode("t", &t.encode()).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Tree::decode("t", &g);
        }
    }
}
