//! hash: Chunk -> NewBlob (only blobs that dedup says are new) + FileEvent::ChunkId.
//! Workers: cfg.workers (CPU). Holds nothing beyond the chunk in hand.
//! Blob ids are keyed BLAKE3 of the plaintext: equal data dedups, yet the ids reveal nothing
//! about content to someone without the writer key.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::msg::{BlobId, BlobKind, Cancel, Chunk, Dedup, FileEvent, NewBlob};
use crate::Workers;

pub fn blob_id(key: &[u8; 32], data: &[u8]) -> BlobId {
    *blake3::keyed_hash(key, data).as_bytes()
}

pub fn spawn(
    workers: usize,
    id_key: [u8; 32],
    dedup: Arc<dyn Dedup>,
    input: Receiver<Chunk>,
    out: Sender<NewBlob>,
    events: Sender<FileEvent>,
    cancel: Cancel,
) -> std::io::Result<Workers> {
    Workers::spawn("hash", workers, move |_| {
        for chunk in &input {
            if cancel.is_cancelled() {
                continue;
            }
            let id = blob_id(&id_key, &chunk.data);
            let len = chunk.data.len() as u32;
            if dedup.claim(&id, BlobKind::Data) {
                let blob = NewBlob { id, kind: BlobKind::Data, data: chunk.data, permit: chunk.permit };
                if out.send(blob).is_err() {
                    return;
                }
            }
            let ev = FileEvent::ChunkId { seq: chunk.seq, index: chunk.index, id, len };
            if events.send(ev).is_err() {
                return;
            }
        }
    })
}
