//! inodes: what each inode number the kernel holds stands for. Numbers are handed out on
//! lookup, never reused, and dropped when the kernel forgets them; at most `limit` at once.
use std::collections::HashMap;
use std::sync::Arc;

use engine::tree::Node;
use engine::BlobId;

pub const ROOT: u64 = 1;
pub const SNAPSHOTS: u64 = 2;
pub const HOSTS: u64 = 3;
pub const TAGS: u64 = 4;
pub const LATEST: u64 = 5;
const FIRST_FREE: u64 = 6;

#[derive(Clone)]
pub enum Entry {
    Root,
    Snapshots,
    Hosts,
    Tags,
    /// The symlink `latest`: its target is the newest snapshot at the time it is read.
    Latest,
    /// `hosts/<host>` or `tags/<tag>`.
    Group {
        tags: bool,
        name: Vec<u8>,
    },
    /// A symlink below `hosts/<host>` or `tags/<tag>`.
    Link {
        target: Vec<u8>,
    },
    /// A snapshot's root directory.
    Snapshot {
        tree: Vec<BlobId>,
        time_ns: i64,
    },
    /// An entry of a snapshot's tree.
    Node(Box<Node>),
}

pub struct Inode {
    pub parent: u64,
    pub name: Vec<u8>,
    /// Shared: a request takes it out of the table without copying a file's list of blobs.
    pub entry: Arc<Entry>,
    lookups: u64,
}

pub struct Table {
    inodes: HashMap<u64, Inode>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    next: u64,
    limit: usize,
}

/// The table holds `limit` inodes already.
#[derive(Debug)]
pub struct Full;

impl Table {
    pub fn new(limit: usize) -> Table {
        let mut t = Table { inodes: HashMap::new(), by_name: HashMap::new(), next: FIRST_FREE, limit };
        for (ino, parent, name, entry) in [
            (ROOT, ROOT, &b""[..], Entry::Root),
            (SNAPSHOTS, ROOT, b"snapshots", Entry::Snapshots),
            (HOSTS, ROOT, b"hosts", Entry::Hosts),
            (TAGS, ROOT, b"tags", Entry::Tags),
            (LATEST, ROOT, b"latest", Entry::Latest),
        ] {
            t.inodes.insert(ino, Inode { parent, name: name.to_vec(), entry: Arc::new(entry), lookups: 0 });
            if ino != ROOT {
                t.by_name.insert((ROOT, name.to_vec()), ino);
            }
        }
        t
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// The number of `name` in `parent`, if the kernel holds it.
    pub fn known(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.by_name.get(&(parent, name.to_vec())).copied()
    }

    /// A lookup of `name` in `parent` that found `entry`: its number, counted once more. An
    /// entry already known keeps its number (and what it stands for: snapshots do not change).
    pub fn lookup(&mut self, parent: u64, name: &[u8], entry: impl FnOnce() -> Entry) -> Result<u64, Full> {
        let ino = match self.known(parent, name) {
            Some(ino) => ino,
            None => {
                if self.inodes.len() >= self.limit {
                    return Err(Full);
                }
                let ino = self.next;
                self.next += 1;
                self.inodes
                    .insert(ino, Inode { parent, name: name.to_vec(), entry: Arc::new(entry()), lookups: 0 });
                self.by_name.insert((parent, name.to_vec()), ino);
                ino
            }
        };
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.lookups += 1;
        }
        Ok(ino)
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(i) = self.inodes.get_mut(&ino) else { return };
        i.lookups = i.lookups.saturating_sub(n);
        if i.lookups == 0 && ino >= FIRST_FREE {
            if let Some(i) = self.inodes.remove(&ino) {
                self.by_name.remove(&(i.parent, i.name));
            }
        }
    }

    /// The path of `ino` from the mount's root, for messages.
    pub fn path(&self, mut ino: u64) -> Vec<u8> {
        let mut names = Vec::new();
        while ino != ROOT && names.len() < engine::tree::MAX_DEPTH + 3 {
            let Some(i) = self.inodes.get(&ino) else { break };
            names.push(i.name.as_slice());
            ino = i.parent;
        }
        names.reverse();
        names.join(&b'/')
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_kept_while_known_and_bounded() {
        let mut t = Table::new(7);
        let a = t.lookup(SNAPSHOTS, b"a", || Entry::Root).unwrap();
        assert_eq!(t.lookup(SNAPSHOTS, b"a", || Entry::Root).unwrap(), a);
        let b = t.lookup(a, b"b", || Entry::Root).unwrap();
        assert_eq!(t.path(b), b"snapshots/a/b");
        assert!(t.lookup(a, b"c", || Entry::Root).is_err());
        t.forget(b, 1);
        assert!(t.get(b).is_none());
        let c = t.lookup(a, b"c", || Entry::Root).unwrap();
        assert!(c > b, "numbers are never reused");
        t.forget(a, 1);
        assert!(t.get(a).is_some(), "looked up twice");
        assert_eq!(t.len(), 7);
    }
}
