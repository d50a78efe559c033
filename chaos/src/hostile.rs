//! Hostile repositories: snapshots crafted by the holder of a backup-only key, written through
//! the engine's own writer (`BlobWriter`, sealed and indexed like any backup), with trees no
//! honest backup produces. The hostile suite restores and checks them as the owner.
//! Test code: it panics on anything unexpected.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;

use engine::index::Index;
use engine::snapshot::{Snapshot, Stats, VERSION};
use engine::tree::{Node, NodeKind, Tree};
use engine::writer::BlobWriter;
use engine::{BlobId, Repository};
use stages::BlobKind;

/// An entry with ordinary metadata (mode 0644 or 0755, owned by the test's user).
pub fn node(name: impl AsRef<[u8]>, kind: NodeKind) -> Node {
    let mode = if matches!(kind, NodeKind::Dir { .. }) { 0o755 } else { 0o644 };
    Node {
        name: name.as_ref().to_vec(),
        kind,
        mode,
        uid: crate::testkit::my_uid(),
        gid: 0,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_000,
        ino: 0,
        nlink: 1,
    }
}

pub fn dir(name: impl AsRef<[u8]>, subtree: Vec<BlobId>) -> Node {
    node(name, NodeKind::Dir { subtree })
}

pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Node {
    node(name, NodeKind::Symlink { target: target.as_ref().to_vec() })
}

/// Writes blobs and trees into a repository with whatever key it was opened with.
pub struct Forger<'a> {
    w: BlobWriter<'a>,
}

impl Forger<'_> {
    pub fn data(&mut self, bytes: &[u8]) -> BlobId {
        self.w.put(BlobKind::Data, bytes).unwrap()
    }

    /// A file entry holding `bytes` in one blob.
    pub fn file(&mut self, name: impl AsRef<[u8]>, bytes: &[u8]) -> Node {
        let id = self.data(bytes);
        node(name, NodeKind::File { size: bytes.len() as u64, content: vec![id] })
    }

    /// One tree blob with exactly these entries, in this order (never checked).
    pub fn tree(&mut self, nodes: Vec<Node>) -> BlobId {
        self.w.put_tree(&Tree { nodes }).unwrap()
    }
}

/// Opens `repo` with `key` (a backup-only key, in the suite), lets `build` write blobs and
/// return the root directory's tree blobs, and commits a snapshot of them. Returns its id.
pub fn forge(repo: &Path, key: &Path, build: impl FnOnce(&mut Forger) -> Vec<BlobId>) -> String {
    let r = Repository::open(repo, Some(key)).unwrap();
    let index = Index::default();
    let mut f = Forger { w: BlobWriter::new(&r, &index).unwrap() };
    let tree = build(&mut f);
    f.w.finish().unwrap();
    let snap = Snapshot {
        version: VERSION,
        time_ns: engine::clock::now_ns(),
        host: "hostile".into(),
        user: "mallory".into(),
        paths: vec![b"/".to_vec()],
        tags: vec![],
        tree,
        stats: Stats::default(),
        errors: vec![],
        program: "forged".into(),
    };
    let bytes = snap.encode(&r.key.recipient).unwrap();
    let id = blake3::hash(&bytes).to_hex().to_string();
    r.backend.put(&format!("snapshots/{id}"), &bytes).unwrap();
    id
}
