//! diff: what changed between two snapshots. Both trees are walked together, depth first in
//! name order; a subdirectory whose tree blob ids are equal on both sides is identical (trees
//! are content-addressed) and is skipped without being read. Changes are streamed to a callback,
//! so a diff of millions of files does not sit in memory.
use stages::BlobId;

use crate::error::{Error, Result};
use crate::repo::{BlobReader, Warnings};
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
    pub mtime_ns: i64,
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
        ) => s1 == s2 && c1 == c2,
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
    a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && (dir || a.mtime_ns == b.mtime_ns)
}

fn subtree(n: Option<&Node>) -> Option<&[BlobId]> {
    match n.map(|n| &n.kind) {
        Some(NodeKind::Dir { subtree }) => Some(subtree),
        _ => None,
    }
}

/// Pairs of entries with the same name, in name order (both lists are sorted by name).
fn merge(a: Vec<Node>, b: Vec<Node>) -> Vec<(Option<Node>, Option<Node>)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.name.cmp(&y.name),
        };
        out.push(match order {
            std::cmp::Ordering::Less => (a.next(), None),
            std::cmp::Ordering::Greater => (None, b.next()),
            std::cmp::Ordering::Equal => (a.next(), b.next()),
        });
    }
}

struct Walk<'r, 'a, F> {
    reader: &'r BlobReader<'a>,
    emit: F,
    sum: Summary,
    warnings: Warnings,
    amplification: crate::tree::Amplification,
}

impl<F: FnMut(Entry)> Walk<'_, '_, F> {
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
            s.added_bytes += new.map_or(0, Node::size);
            s.removed_bytes += old.map_or(0, Node::size);
        }
        (self.emit)(Entry { change, path: path.to_vec(), old: old.map(side), new: new.map(side) });
    }

    fn list(&mut self, path: &[u8], ids: Option<&[BlobId]>) -> Vec<Node> {
        let Some(ids) = ids else { return Vec::new() };
        let listed = self.reader.tree(ids).and_then(|n| {
            let over = self.amplification.visit(ids.first(), n.len());
            over.map(|()| n).map_err(|why| Error::corrupt("tree", String::from_utf8_lossy(path), why))
        });
        match listed {
            Ok(n) => n,
            Err(e) => {
                self.sum.unreadable += 1;
                self.warnings
                    .push(format!("{}: cannot read the directory: {e}", String::from_utf8_lossy(path)));
                Vec::new()
            }
        }
    }

    /// Compares one pair of entries; returns the directories to walk below it (old, new).
    fn entry(&mut self, path: &[u8], a: Option<&Node>, b: Option<&Node>) -> Option<(Vec<Node>, Vec<Node>)> {
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
        Some((self.list(path, sa), self.list(path, sb)))
    }
}

/// Compares the trees `a` and `b` (the root directories of two snapshots, or two directories
/// inside them, both at `base`), calling `emit` for each difference in path order.
pub fn diff(
    reader: &BlobReader,
    base: &[u8],
    a: Option<&Node>,
    b: Option<&Node>,
    emit: impl FnMut(Entry),
) -> Result<(Summary, Warnings)> {
    let mut w = Walk {
        reader,
        emit,
        sum: Summary::default(),
        warnings: Vec::new(),
        amplification: Default::default(),
    };
    // Depth first with an explicit stack of directories, each with the pairs still to compare.
    type Level = (Vec<u8>, std::vec::IntoIter<(Option<Node>, Option<Node>)>);
    let mut stack: Vec<Level> = Vec::new();
    if let Some((x, y)) = w.entry(base, a, b) {
        stack.push((base.to_vec(), merge(x, y).into_iter()));
    }
    while let Some((dir, pairs)) = stack.last_mut() {
        let Some((x, y)) = pairs.next() else {
            stack.pop();
            continue;
        };
        let name = x.as_ref().or(y.as_ref()).map(|n| n.name.clone()).unwrap_or_default();
        let mut path = if dir.as_slice() == b"/" { Vec::new() } else { dir.clone() };
        path.push(b'/');
        path.extend_from_slice(&name);
        if let Some((xs, ys)) = w.entry(&path, x.as_ref(), y.as_ref()) {
            if stack.len() >= crate::tree::MAX_DEPTH {
                w.sum.unreadable += 1;
                let why = format!("deeper than {} levels: not compared", crate::tree::MAX_DEPTH);
                w.warnings.push(format!("{}: {why}", String::from_utf8_lossy(&path)));
                continue;
            }
            stack.push((path, merge(xs, ys).into_iter()));
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

    #[test]
    fn merge_pairs_names() {
        let m = merge(vec![file("a", 1, 1), file("c", 1, 1)], vec![file("b", 1, 1), file("c", 2, 2)]);
        let names: Vec<_> = m
            .iter()
            .map(|(x, y)| (x.as_ref().map(|n| n.name.clone()), y.as_ref().map(|n| n.name.clone())))
            .collect();
        assert_eq!(
            names,
            vec![
                (Some(b"a".to_vec()), None),
                (None, Some(b"b".to_vec())),
                (Some(b"c".to_vec()), Some(b"c".to_vec()))
            ]
        );
    }
}
