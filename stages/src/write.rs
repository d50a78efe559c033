//! write: Sealed -> BlobSink. Workers: one per encrypt worker (a pack is an append-only stream
//! written by one thread). Holds the blob in hand; each sink holds one open pack per key epoch.
//! On a sink error the stage cancels the pipeline and drains its input, so every upstream stage
//! can finish; the error is returned by `finish`.
#![forbid(unsafe_code)]

use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::msg::{Cancel, Sealed};

pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where sealed blobs go; engine implements it with its pack format.
pub trait BlobSink: Send {
    fn add(&mut self, blob: Sealed) -> Result<(), SinkError>;
    /// Seals and commits every open pack.
    fn finish(&mut self) -> Result<(), SinkError>;
}

pub struct WriteHandle<S> {
    threads: Vec<JoinHandle<(S, Result<(), SinkError>)>>,
}

impl<S> WriteHandle<S> {
    /// Waits for every input to close and every sink to finish; returns the sinks (their
    /// records of what was written), or the first error.
    pub fn finish(self) -> Result<Vec<S>, SinkError> {
        let mut sinks = Vec::new();
        let mut first_err = None;
        for t in self.threads {
            match t.join() {
                Ok((sink, Ok(()))) => sinks.push(sink),
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| "write stage panicked".into());
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(sinks),
        }
    }
}

/// One writer thread per (sink, input) pair. Each encrypt worker feeds one writer, so a pack
/// (one key epoch) is always written by one thread, and packs are hashed, written and fsynced
/// in parallel: a single writer was measured to be the bottleneck (pack hashing, write(2) and
/// fsync for every byte stored, ~1.7 s of one core per GiB here).
pub fn spawn<S: BlobSink + 'static>(
    sinks: Vec<S>,
    inputs: Vec<Receiver<Sealed>>,
    cancel: Cancel,
) -> std::io::Result<WriteHandle<S>> {
    let mut threads = Vec::new();
    for (i, (mut sink, input)) in sinks.into_iter().zip(inputs).enumerate() {
        let cancel = cancel.clone();
        threads.push(std::thread::Builder::new().name(format!("write-{i}")).spawn(move || {
            let mut result = Ok(());
            for blob in input {
                if result.is_err() || cancel.is_cancelled() {
                    continue; // drain
                }
                if let Err(e) = sink.add(blob) {
                    cancel.cancel();
                    result = Err(e);
                }
            }
            if result.is_ok() && !cancel.is_cancelled() {
                result = sink.finish();
            }
            (sink, result)
        })?);
    }
    Ok(WriteHandle { threads })
}
