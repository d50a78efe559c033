//! engine: the repository (formats, keys, index, trees, snapshots) and the operations that wire
//! the pipeline stages together (backup, restore). Formats are specified in docs/format.md.
#![forbid(unsafe_code)]

pub mod backup;
mod builder;
pub mod catalog;
pub mod changes;
pub mod check;
pub mod clock;
pub mod commit;
pub mod crypto;
pub mod diff;
pub mod error;
pub mod filescache;
pub mod find;
pub mod forget;
pub mod format;
pub mod fuzz;
pub mod hooks;
pub mod index;
pub mod keys;
pub mod ops;
pub mod pack;
pub mod prune;
pub mod repair;
pub mod repo;
pub mod sync;
pub mod tree;
pub mod writer;

pub use age::secrecy;
pub use error::{Error, Result};
pub use format::{config, gc, signing, snapshot, writers};
pub use ops::restore;
pub use repo::Repository;
pub use stages::BlobId;

/// Lower-case hex of an id.
pub fn hex_id(id: &[u8]) -> String {
    hex::encode(id)
}
