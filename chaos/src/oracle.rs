//! The test oracle for damage: opens an intact repository through the engine and says, for each
//! regular file of each snapshot, which repository objects its restore depends on (config, the
//! snapshot record, the packs of every tree above it and of every blob of its content). After
//! one object is damaged, a file that does not depend on it must still restore exactly.
//! Test code: it panics on anything unexpected.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use engine::pack::pack_key;
use engine::repo::BlobReader;
use engine::tree::NodeKind;
use engine::{BlobId, Repository};

#[derive(Clone, Debug)]
pub struct FileDeps {
    /// Snapshot id (64 hex).
    pub snapshot: String,
    /// Absolute path as recorded (e.g. `/tmp/x/src/a.txt`).
    pub path: Vec<u8>,
    pub size: u64,
    /// Repository-relative names of the objects this file's restore reads.
    pub objects: BTreeSet<String>,
    /// Where each content blob lies: (pack name, offset, sealed length).
    pub content: Vec<(String, u64, u64)>,
}

/// The key file `Bakare` keeps in its HOME.
pub fn key_file(home: &Path) -> PathBuf {
    let dir = home.join(".config/bakare/keys");
    let mut keys: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1, "expected one key in {}", dir.display());
    keys.remove(0)
}

pub fn file_deps(repo: &Path, key: &Path) -> Vec<FileDeps> {
    let repo = Repository::open(repo, Some(key)).unwrap();
    let (index, warnings) = repo.load_index().unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let reader = BlobReader::new(&repo, &index).unwrap();
    let pack_of = |id: &BlobId| {
        let loc = index.get(id).unwrap();
        (pack_key(index.pack_id(loc.pack).unwrap()), u64::from(loc.offset), u64::from(loc.len))
    };
    let (snaps, w) = repo.snapshots().unwrap();
    assert!(w.is_empty(), "{w:?}");
    let mut out = Vec::new();
    for engine::repo::SnapshotEntry { id, snapshot: snap, .. } in snaps {
        let base: BTreeSet<String> = ["config".to_string(), format!("snapshots/{id}")].into();
        let mut stack = vec![(Vec::new(), snap.tree.clone(), base)];
        while let Some((path, tree, mut deps)) = stack.pop() {
            for t in &tree {
                deps.insert(pack_of(t).0);
            }
            for n in reader.tree(&tree).unwrap() {
                let mut p = path.clone();
                p.push(b'/');
                p.extend_from_slice(&n.name);
                match &n.kind {
                    NodeKind::Dir { subtree } => stack.push((p, subtree.clone(), deps.clone())),
                    NodeKind::File { content, size } | NodeKind::HardLink { content, size, .. } => {
                        let content: Vec<_> = content.iter().map(pack_of).collect();
                        let mut objects = deps.clone();
                        objects.extend(content.iter().map(|c| c.0.clone()));
                        out.push(FileDeps { snapshot: id.clone(), path: p, size: *size, objects, content });
                    }
                    _ => {}
                }
            }
        }
    }
    out
}
