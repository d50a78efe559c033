//! hash: Chunk -> NewBlob (only blobs that dedup says are new) + FileEvent::ChunkId.
//! Workers: cfg.workers (CPU). Holds nothing beyond the chunk in hand.
//! Blob ids are keyed BLAKE3 of the plaintext: equal data dedups, yet the ids reveal nothing
//! about content to someone without the writer key.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::msg::{BlobId, BlobKind, Cancel, Chunk, Dedup, FileEvent, NewBlob};

pub fn blob_id(key: &[u8; 32], data: &[u8]) -> BlobId {
    *blake3::keyed_hash(key, data).as_bytes()
}

pub struct HashHandle {
    threads: Vec<JoinHandle<()>>,
}

impl HashHandle {
    pub fn finish(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub fn spawn(
    workers: usize,
    id_key: [u8; 32],
    dedup: Arc<dyn Dedup>,
    input: Receiver<Chunk>,
    out: Sender<NewBlob>,
    events: Sender<FileEvent>,
    cancel: Cancel,
) -> std::io::Result<HashHandle> {
    let mut threads = Vec::new();
    for i in 0..workers.max(1) {
        let (input, out, events) = (input.clone(), out.clone(), events.clone());
        let (dedup, cancel) = (dedup.clone(), cancel.clone());
        threads.push(std::thread::Builder::new().name(format!("hash-{i}")).spawn(move || {
            for chunk in input {
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
        })?);
    }
    Ok(HashHandle { threads })
}
