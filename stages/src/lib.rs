//! stages: the actors of the backup pipeline, in pipeline order, and the messages between them.
//!
//! ```text
//! scan ─► read ─► chunk ─► hash ─► compress ─► encrypt ─► write ─► BlobSink (engine: packs)
//!   └─ ScanEvent ─► (engine: tree builder) ◄─ FileEvent ─┘ (chunk, hash)
//! ```
//! Every queue is a bounded crossbeam channel; every data buffer holds a `Permit` of the one
//! `MemoryBudget`. See docs/pipeline.md.
#![forbid(unsafe_code)]

pub mod batch;
pub mod budget;
pub mod dirty;
pub mod msg;
pub mod pool;

pub mod chunk;
pub mod compress;
pub mod encrypt;
pub mod hash;
pub mod read;
pub mod scan;
pub mod stream;
pub mod write;

pub use batch::{Batcher, Closed};
pub use budget::{MemoryBudget, Permit};
pub use msg::*;

use std::thread::JoinHandle;

/// The threads of one stage. `finish` waits for them: a stage ends when its input closes.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` (at least one) threads named `name-i`, each running `work(i)`.
    pub fn spawn<F>(name: &str, n: usize, work: F) -> std::io::Result<Workers>
    where
        F: Fn(usize) + Send + Clone + 'static,
    {
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let work = work.clone();
            threads.push(std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || work(i))?);
        }
        Ok(Workers { threads })
    }

    pub fn finish(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}
