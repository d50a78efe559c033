//! Writing blobs outside the backup pipeline (repair, and later prune's repacking): frame,
//! seal and pack them on the calling thread, through the same `PackSink` as a backup, then
//! write the session's index segment. The volumes are small (trees), so one thread is enough.
use std::collections::HashSet;
use std::sync::Arc;

use stages::compress::Compressor;
use stages::encrypt::{seal, KeyEpoch};
use stages::hash::blob_id;
use stages::write::BlobSink;
use stages::{BlobId, BlobKind, Sealed};

use crate::error::{Error, Result};
use crate::index::Index;
use crate::pack::PackSink;
use crate::repo::Repository;
use crate::tree::Tree;

pub struct BlobWriter<'a> {
    repo: &'a Repository,
    index: &'a Index,
    sink: PackSink,
    compressor: Compressor,
    epoch: Arc<KeyEpoch>,
    counter: u64,
    written: HashSet<BlobId>,
}

impl<'a> BlobWriter<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index) -> Result<Self> {
        let sink = PackSink::new(
            repo.backend.clone(),
            repo.key.recipient.clone(),
            repo.sealer()?,
            repo.config.pack_size,
            repo.config.parity,
        );
        let compressor =
            Compressor::new(1).map_err(|e| Error::Pipeline(format!("cannot start zstd: {e}")))?;
        Ok(BlobWriter {
            repo,
            index,
            sink,
            compressor,
            epoch: Arc::new(KeyEpoch::new()),
            counter: 0,
            written: HashSet::new(),
        })
    }

    /// Stores `data` as a blob of `kind` unless the repository (or this writer) has it already.
    pub fn put(&mut self, kind: BlobKind, data: &[u8]) -> Result<BlobId> {
        let id = blob_id(self.repo.wk.id_key.as_bytes(), data);
        if self.index.contains_vouched(&id) || !self.written.insert(id) {
            return Ok(id);
        }
        self.store(kind, id, data)?;
        Ok(id)
    }

    /// Stores `data` under an id of the caller's choosing, as a backup-only key's holder could:
    /// the hostile-writer suite builds decoy copies with it. Tests only.
    #[cfg(feature = "test-hooks")]
    pub fn put_claiming(&mut self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<()> {
        self.store(kind, id, data)
    }

    /// Frames, seals and packs `data` as blob `id`.
    fn store(&mut self, kind: BlobKind, id: BlobId, data: &[u8]) -> Result<()> {
        let raw_len =
            u32::try_from(data.len()).map_err(|_| Error::Pipeline("blob larger than 4 GiB".into()))?;
        let mut bytes = self.compressor.frame(data);
        // One data key for the whole writer: when the sink seals a full pack, the next pack
        // wraps the same key again, and the counter keeps every nonce unique under it.
        if !seal(&self.epoch, self.counter, &id, kind, &mut bytes) {
            return Err(Error::Pipeline(format!("cannot seal blob {}", hex::encode(id))));
        }
        self.counter += 1;
        let sealed = Sealed {
            id,
            kind,
            raw_len,
            epoch: self.epoch.clone(),
            bytes,
            members: Vec::new(),
            permits: Vec::new(),
        };
        self.sink.add(sealed).map_err(|e| Error::Pipeline(format!("writing pack: {e}")))
    }

    /// How many blobs this writer has stored (not counting those the repository had).
    pub fn stored(&self) -> u64 {
        self.counter
    }

    pub fn put_tree(&mut self, tree: &Tree) -> Result<BlobId> {
        self.put(BlobKind::Tree, &tree.encode())
    }

    /// Seals the open pack and writes the index segment for everything written (packs first,
    /// then their segment: design.md section 4, rule 1). Returns the number of packs written.
    pub fn finish(mut self) -> Result<usize> {
        self.seal_and_list()?;
        Ok(self.sink.packs.len())
    }

    /// `finish`, returning what its segment lists: what a writer knows of the packs it wrote
    /// (its segment's places are sealed to the owner). Tests only.
    #[cfg(feature = "test-hooks")]
    pub fn finish_listing(mut self) -> Result<crate::index::SegmentBody> {
        self.seal_and_list()?;
        Ok(std::mem::take(&mut self.sink.packs))
    }

    fn seal_and_list(&mut self) -> Result<()> {
        self.sink.finish().map_err(|e| Error::Pipeline(format!("writing pack: {e}")))?;
        if !self.sink.packs.is_empty() {
            let (name, bytes) = self.repo.sealer()?.own(&self.sink.packs)?;
            self.repo.backend.put(&name, &bytes)?;
        }
        Ok(())
    }
}
