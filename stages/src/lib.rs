//! stages: the actors of the backup pipeline, in pipeline order, and the messages between them.
//!
//! ```text
//! scan ─► read ─► chunk ─► hash ─► compress ─► encrypt ─► write ─► BlobSink (engine: packs)
//!   └─ ScanEvent ─► (engine: tree builder) ◄─ FileEvent ─┘ (chunk, hash)
//! ```
//! Every queue is a bounded crossbeam channel; every data buffer holds a `Permit` of the one
//! `MemoryBudget`. See docs/pipeline.md.
#![forbid(unsafe_code)]

pub mod budget;
pub mod msg;

pub mod chunk;
pub mod compress;
pub mod encrypt;
pub mod hash;
pub mod read;
pub mod scan;
pub mod write;

pub use budget::{MemoryBudget, Permit};
pub use msg::*;
