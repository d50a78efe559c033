//! hash: Chunk -> NewBlob (only blobs that dedup says are new) + FileEvent::ChunkId.
//! Workers: cfg.workers (CPU). Holds nothing beyond the chunk in hand.
//! Blob ids are keyed BLAKE3 of the plaintext: equal data dedups, yet the ids reveal nothing
//! about content to someone without the writer key.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::batch::{recv_or_flush, Batcher, BYTES, ITEMS};
use crate::msg::{BlobId, BlobKind, Cancel, Chunk, Dedup, FileEvent, NewBlob};
use crate::Workers;

pub fn blob_id(key: &[u8; 32], data: &[u8]) -> BlobId {
    *blake3::keyed_hash(key, data).as_bytes()
}

pub fn spawn(
    workers: usize,
    id_key: [u8; 32],
    dedup: Arc<dyn Dedup>,
    input: Receiver<Vec<Chunk>>,
    out: Sender<Vec<NewBlob>>,
    events: Sender<Vec<FileEvent>>,
    cancel: Cancel,
) -> std::io::Result<Workers> {
    Workers::spawn("hash", workers, move |_| {
        let mut blobs = Batcher::new(out.clone(), ITEMS, BYTES);
        let mut evs = Batcher::new(events.clone(), ITEMS, usize::MAX);
        while let Some(batch) = recv_or_flush(&input, || blobs.flush().and_then(|()| evs.flush())) {
            for chunk in batch {
                if cancel.is_cancelled() {
                    continue;
                }
                let id = blob_id(&id_key, &chunk.data);
                let len = chunk.data.len() as u32;
                if dedup.claim(&id, BlobKind::Data) {
                    let blob = NewBlob { id, kind: BlobKind::Data, data: chunk.data, permit: chunk.permit };
                    if blobs.push(blob, len as usize).is_err() {
                        return;
                    }
                }
                let ev = FileEvent::ChunkId { seq: chunk.seq, index: chunk.index, id, len };
                if evs.push(ev, 0).is_err() {
                    return;
                }
            }
        }
        let _ = blobs.flush().and_then(|()| evs.flush());
    })
}
