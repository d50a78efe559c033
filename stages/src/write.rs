//! write: Sealed -> BlobSink. Workers: 1 (a pack is an append-only stream; the sink decides how
//! blobs become packs). Holds the blob in hand; the sink holds one open pack per key epoch.
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
    thread: JoinHandle<(S, Result<(), SinkError>)>,
}

impl<S> WriteHandle<S> {
    /// Waits for the input to close and the sink to finish.
    pub fn finish(self) -> Result<S, SinkError> {
        match self.thread.join() {
            Ok((sink, Ok(()))) => Ok(sink),
            Ok((_, Err(e))) => Err(e),
            Err(_) => Err("write stage panicked".into()),
        }
    }
}

pub fn spawn<S: BlobSink + 'static>(
    mut sink: S,
    input: Receiver<Sealed>,
    cancel: Cancel,
) -> std::io::Result<WriteHandle<S>> {
    let thread = std::thread::Builder::new().name("write".into()).spawn(move || {
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
    })?;
    Ok(WriteHandle { thread })
}
