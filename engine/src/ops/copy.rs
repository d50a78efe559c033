//! copy: snapshots from one repository into another with other keys (restic's `copy`). Blob
//! ids are keyed hashes, so they differ between repositories: every blob a snapshot needs is
//! read and decrypted with the source's key, identified with the destination's id key, and
//! stored there unless the destination has it already (dedup against it); trees are written
//! again with the destination's ids. `sync` stays the keyless mirror of one repository. Both
//! repositories' full keys are needed (the destination's records say what was copied).
//!
//! Resumable by snapshot: each one's packs and index segment are written, then its record,
//! before the next is read; a snapshot already copied (the destination has one whose
//! `original` is its id) is skipped, so a copy killed midway is run again to finish. Memory: the
//! blob being copied, one directory's entries per level of the walk, and a bounded map from
//! source to destination ids.
use std::collections::HashMap;

use stages::{BlobId, BlobKind};

use crate::commit;
use crate::error::{Error, Result};
use crate::repo::{BlobReader, Repository, SnapshotEntry};
use crate::snapshot::{Snapshot, VERSION};
use crate::tree::{NodeKind, Tree};
use crate::writer::BlobWriter;

/// Source -> destination ids remembered at most (~70 bytes each): past it the map starts
/// over, and a blob met again is read and identified again (the destination dedups it).
const MAX_MAPPED: usize = 1 << 20;

#[derive(Debug)]
pub struct Copied {
    pub from: String,
    /// The destination's snapshot: new, or the one an earlier copy made.
    pub to: String,
    pub already: bool,
    /// Blobs the destination did not have, and their bytes before compression.
    pub new_blobs: u64,
    pub new_bytes: u64,
}

struct Walk<'a, 'w> {
    reader: &'w BlobReader<'a>,
    writer: &'w mut BlobWriter<'a>,
    map: &'w mut HashMap<BlobId, BlobId>,
    new_blobs: u64,
    new_bytes: u64,
}

impl Walk<'_, '_> {
    fn map(&mut self, id: &BlobId, kind: BlobKind) -> Result<BlobId> {
        if let Some(b) = self.map.get(id) {
            return Ok(*b);
        }
        let data = self.reader.read(id, kind)?;
        let before = self.writer.stored();
        let b = self.writer.put(kind, &data)?;
        if self.writer.stored() > before {
            self.new_blobs += 1;
            self.new_bytes += data.len() as u64;
        }
        self.remember(*id, b);
        Ok(b)
    }

    fn remember(&mut self, a: BlobId, b: BlobId) {
        if self.map.len() >= MAX_MAPPED {
            self.map.clear();
        }
        self.map.insert(a, b);
    }

    /// The directory stored as `ids` in the source, stored in the destination: its ids there.
    fn dir(&mut self, ids: &[BlobId], depth: usize) -> Result<Vec<BlobId>> {
        if depth > crate::tree::MAX_DEPTH {
            return Err(Error::Invalid("a directory deeper than a snapshot holds".into()));
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(b) = self.map.get(id) {
                out.push(*b);
                continue;
            }
            let mut nodes = self.reader.tree(std::slice::from_ref(id))?;
            for n in &mut nodes {
                match &mut n.kind {
                    NodeKind::File { content, .. } | NodeKind::HardLink { content, .. } => {
                        for c in content.iter_mut() {
                            *c = self.map(c, BlobKind::Data)?;
                        }
                    }
                    NodeKind::Dir { subtree } => *subtree = self.dir(subtree, depth + 1)?,
                    _ => {}
                }
            }
            let before = self.writer.stored();
            let b = self.writer.put_tree(&Tree { nodes })?;
            if self.writer.stored() > before {
                self.new_blobs += 1;
            }
            self.remember(*id, b);
            out.push(b);
        }
        Ok(out)
    }
}

/// Copies `snapshots` of `from` into `to`, oldest first.
pub fn copy(from: &Repository, to: &Repository, snapshots: &[&SnapshotEntry]) -> Result<Vec<Copied>> {
    // Refused before anything is read: the source's trees need its secret key; the
    // destination takes a backup-only key, as a backup does.
    from.key.identity()?;
    // The destination's records are read to find what an earlier copy did: its secret key
    // too.
    to.key.identity()?;
    let signer = to.key.snapshot_signer()?;
    let mut snapshots = snapshots.to_vec();
    snapshots.sort_by_key(|s| s.snapshot.time_ns);
    let (src_index, _) = from.load_index()?;
    let reader = BlobReader::new(from, &src_index)?;
    let mut map = HashMap::new();
    let mut out = Vec::new();
    for s in snapshots {
        // A copy names the very record it copies: a snapshot retagged or rewritten in the
        // source (a secret left out) is another record, copied again.
        let original = s.id.clone();
        let (there, _) = to.snapshots()?;
        let done = there.iter().find(|t| t.snapshot.original.as_deref() == Some(original.as_str()));
        if let Some(t) = done {
            out.push(Copied {
                from: s.id.clone(),
                to: t.id.clone(),
                already: true,
                new_blobs: 0,
                new_bytes: 0,
            });
            continue;
        }
        // The destination as it is now (an earlier snapshot of this copy is in it).
        let (index, _) = to.load_dedup_index()?;
        let mut writer = BlobWriter::new(to, &index)?;
        let mut walk =
            Walk { reader: &reader, writer: &mut writer, map: &mut map, new_blobs: 0, new_bytes: 0 };
        let tree = walk.dir(&s.snapshot.tree, 1)?;
        let (new_blobs, new_bytes) = (walk.new_blobs, walk.new_bytes);
        // Packs and their segment first, then the record that refers to them.
        writer.finish()?;
        let record = Snapshot {
            version: VERSION,
            tree,
            original: Some(original),
            program: format!("bakare {} (copy)", env!("CARGO_PKG_VERSION")),
            ..s.snapshot.clone()
        };
        let bytes = record.encode(&to.key.recipient, &signer, &to.config.repo_id)?;
        let id = commit::write_pending(to, &bytes)?;
        commit::promote(to, &id, &bytes)?;
        out.push(Copied { from: s.id.clone(), to: id, already: false, new_blobs, new_bytes });
    }
    Ok(out)
}
