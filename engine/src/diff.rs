//! diff: what changed between two snapshots. Both trees are walked together, depth first in
//! name order; a subdirectory whose tree blob ids are equal on both sides is identical (trees
//! are content-addressed) and is skipped without being read. Changes are streamed to a callback,
//! so a diff of millions of files does not sit in memory.
use stages::BlobId;

use crate::error::Result;
use crate::repo::{BlobReader, Entries, Tally, Warnings};
use crate::tree::{Node, NodeKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `+`: only in the second snapshot.
    Added,
    /// `-`: only in the first.
    Removed,
    /// `M`: other content (file data, symlink target, device number).
    Modified,
    /// `T`: another type (file, directory, symlink...) under the same name.
    TypeChanged,
    /// `U`: same content, other metadata (mode, owner, mtime).
    Metadata,
}

impl Change {
    pub fn symbol(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Modified => 'M',
            Change::TypeChanged => 'T',
            Change::Metadata => 'U',
        }
    }
}

/// One side of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub kind: char,
    pub size: u64,
    pub mtime_ns: i128,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub change: Change,
    /// Full path (`/a/b`).
    pub path: Vec<u8>,
    pub old: Option<Side>,
    pub new: Option<Side>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub type_changed: u64,
    pub metadata: u64,
    /// Bytes of files that appeared, and the new size of files that changed.
    pub added_bytes: u64,
    /// Bytes of files that went away, and the old size of files that changed.
    pub removed_bytes: u64,
    /// Directories that could not be read (named in the warnings).
    pub unreadable: u64,
}

fn side(n: &Node) -> Side {
    Side { kind: n.type_char(), size: n.size(), mtime_ns: n.mtime_ns }
}

/// Files and hard links are one type (a file may gain or lose other names).
fn same_type(a: &Node, b: &Node) -> bool {
    let t = |n: &Node| match n.type_char() {
        'h' => '-',
        c => c,
    };
    t(a) == t(b)
}

fn same_content(a: &Node, b: &Node) -> bool {
    use NodeKind::*;
    match (&a.kind, &b.kind) {
        (
            File { size: s1, content: c1 } | HardLink { size: s1, content: c1, .. },
            File { size: s2, content: c2 } | HardLink { size: s2, content: c2, .. },
        ) => s1 == s2 && c1 == c2 && a.holes == b.holes,
        (Symlink { target: t1 }, Symlink { target: t2 }) => t1 == t2,
        (CharDev { rdev: r1 }, CharDev { rdev: r2 }) | (BlockDev { rdev: r1 }, BlockDev { rdev: r2 }) => {
            r1 == r2
        }
        _ => true,
    }
}

fn same_meta(a: &Node, b: &Node) -> bool {
    // A directory's mtime moves whenever an entry is added or removed: that shows as the entry.
    let dir = matches!(a.kind, NodeKind::Dir { .. });
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && (dir || a.mtime_ns == b.mtime_ns)
        && a.xattrs == b.xattrs
        && a.flags == b.flags
}

fn subtree(n: Option<&Node>) -> Option<&[BlobId]> {
    match n.map(|n| &n.kind) {
        Some(NodeKind::Dir { subtree }) => Some(subtree),
        _ => None,
    }
}

struct Walk<'r, 'a, F> {
    reader: &'r BlobReader<'a>,
    tally: &'r Tally,
    emit: F,
    sum: Summary,
    warnings: Warnings,
}

/// One side of a directory being compared: its entries, read one tree blob at a time, and the
/// next one. A side that cannot be read (or no longer) has no more entries.
struct Stream<'r, 'a> {
    entries: Option<Entries<'r, 'a>>,
    next: Option<Node>,
}

impl Stream<'_, '_> {
    fn peek<F>(&mut self, w: &mut Walk<'_, '_, F>, path: &[u8]) -> Option<&Node> {
        if self.next.is_none() {
            if let Some(entries) = &mut self.entries {
                match entries.next() {
                    Ok(n) => self.next = n,
                    Err(e) => {
                        w.sum.unreadable += 1;
                        let path = String::from_utf8_lossy(if path.is_empty() { b"/" } else { path });
                        w.warnings.push(format!("{path}: cannot read the directory: {e}"));
                    }
                }
                if self.next.is_none() {
                    self.entries = None;
                }
            }
        }
        self.next.as_ref()
    }
}

/// A pair of directories being compared.
struct Level<'r, 'a> {
    path: Vec<u8>,
    old: Stream<'r, 'a>,
    new: Stream<'r, 'a>,
}

impl<'r, 'a, F: FnMut(Entry)> Walk<'r, 'a, F> {
    fn note(&mut self, change: Change, path: &[u8], old: Option<&Node>, new: Option<&Node>) {
        let s = &mut self.sum;
        match change {
            Change::Added => s.added += 1,
            Change::Removed => s.removed += 1,
            Change::Modified => s.modified += 1,
            Change::TypeChanged => s.type_changed += 1,
            Change::Metadata => s.metadata += 1,
        }
        if change != Change::Metadata {
            s.added_bytes = s.added_bytes.saturating_add(new.map_or(0, Node::size));
            s.removed_bytes = s.removed_bytes.saturating_add(old.map_or(0, Node::size));
        }
        (self.emit)(Entry { change, path: path.to_vec(), old: old.map(side), new: new.map(side) });
    }

    fn stream(&self, ids: Option<&[BlobId]>) -> Stream<'r, 'a> {
        Stream { entries: ids.map(|ids| self.reader.entries(ids, self.tally)), next: None }
    }

    /// Compares one pair of entries; returns the directories to walk below it.
    fn entry(&mut self, path: &[u8], a: Option<&Node>, b: Option<&Node>) -> Option<Level<'r, 'a>> {
        let (sa, sb) = (subtree(a), subtree(b));
        match (a, b) {
            (None, None) => return None,
            (Some(_), None) => self.note(Change::Removed, path, a, None),
            (None, Some(_)) => self.note(Change::Added, path, None, b),
            (Some(x), Some(y)) if !same_type(x, y) => self.note(Change::TypeChanged, path, a, b),
            (Some(x), Some(y)) if !same_content(x, y) => self.note(Change::Modified, path, a, b),
            (Some(x), Some(y)) if !same_meta(x, y) => self.note(Change::Metadata, path, a, b),
            _ => {}
        }
        if sa.is_none() && sb.is_none() || sa == sb {
            return None; // not directories, or identical trees: nothing below to compare
        }
        Some(Level { path: path.to_vec(), old: self.stream(sa), new: self.stream(sb) })
    }
}

/// Compares the trees `a` and `b` (the root directories of two snapshots, or two directories
/// inside them, both at `base`), calling `emit` for each difference in path order.
/// `tally` bounds the tree entries held (`Tally::with_limit`).
pub fn diff(
    reader: &BlobReader,
    tally: &Tally,
    base: &[u8],
    a: Option<&Node>,
    b: Option<&Node>,
    emit: impl FnMut(Entry),
) -> Result<(Summary, Warnings)> {
    let mut w = Walk { reader, tally, emit, sum: Summary::default(), warnings: Vec::new() };
    // Depth first with an explicit stack of directory pairs, each holding one tree blob a side.
    let mut stack: Vec<Level> = Vec::new();
    if let Some(mut level) = w.entry(base, a, b) {
        level.path = base.to_vec();
        stack.push(level);
    }
    while let Some(level) = stack.last_mut() {
        let x = level.old.peek(&mut w, &level.path).map(|n| n.name.clone());
        let order = match (x, level.new.peek(&mut w, &level.path)) {
            (None, None) => {
                stack.pop();
                continue;
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.cmp(&y.name),
        };
        let (x, y) = match order {
            std::cmp::Ordering::Less => (level.old.next.take(), None),
            std::cmp::Ordering::Greater => (None, level.new.next.take()),
            std::cmp::Ordering::Equal => (level.old.next.take(), level.new.next.take()),
        };
        let name = x.as_ref().or(y.as_ref()).map(|n| n.name.as_slice()).unwrap_or_default();
        let mut path = if level.path.as_slice() == b"/" { Vec::new() } else { level.path.clone() };
        path.push(b'/');
        path.extend_from_slice(name);
        if let Some(below) = w.entry(&path, x.as_ref(), y.as_ref()) {
            if stack.len() >= crate::tree::MAX_DEPTH {
                w.sum.unreadable += 1;
                let why = format!("deeper than {} levels: not compared", crate::tree::MAX_DEPTH);
                w.warnings.push(format!("{}: {why}", String::from_utf8_lossy(&path)));
                continue;
            }
            stack.push(below);
        }
    }
    Ok((w.sum, w.warnings))
}

/// A directory node standing for a snapshot's root tree.
pub fn root_node(tree: &[BlobId]) -> Node {
    Node {
        name: b"/".to_vec(),
        kind: NodeKind::Dir { subtree: tree.to_vec() },
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        ino: 0,
        nlink: 1,
        xattrs: Vec::new(),
        flags: 0,
        holes: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kind: NodeKind) -> Node {
        Node {
            name: name.into(),
            kind,
            mode: 0o644,
            uid: 1,
            gid: 1,
            mtime_ns: 5,
            ctime_ns: 5,
            ino: 1,
            nlink: 1,
            xattrs: Vec::new(),
            flags: 0,
            holes: vec![],
        }
    }

    fn file(name: &str, size: u64, id: u8) -> Node {
        node(name, NodeKind::File { size, content: vec![[id; 32]] })
    }

    #[test]
    fn entries_compare_by_type_content_then_metadata() {
        assert!(same_type(
            &file("a", 1, 1),
            &node("a", NodeKind::HardLink { target: vec![], size: 1, content: vec![] })
        ));
        assert!(!same_type(&file("a", 1, 1), &node("a", NodeKind::Dir { subtree: vec![] })));
        assert!(!same_content(&file("a", 1, 1), &file("a", 1, 2)));
        assert!(same_content(&file("a", 1, 1), &file("a", 1, 1)));
        let mut b = file("a", 1, 1);
        b.mode = 0o600;
        assert!(!same_meta(&file("a", 1, 1), &b));
        let (mut d1, mut d2) =
            (node("d", NodeKind::Dir { subtree: vec![] }), node("d", NodeKind::Dir { subtree: vec![] }));
        d1.mtime_ns = 1;
        d2.mtime_ns = 2;
        assert!(same_meta(&d1, &d2), "a directory's mtime is not a change of its own");
    }
}
