//! io: the operating system underneath bakare. Durable writes, storage backends, the source that
//! files are read from, and the io_uring ring (with `cpu`, the only modules here with `unsafe`).
pub mod attrs;
pub mod cpu;
pub mod dir;
pub mod durable;
pub mod joined;
pub mod longpath;
pub mod pinned;
pub mod s3;
pub mod source;
pub mod sparse;
pub mod storage;
pub mod uncached;
pub mod uring;

pub use joined::{Joined, JoinedError, ServedUrl};
pub use s3::{S3Backend, S3Tuning, S3Url};
pub use source::{LocalSource, Source};
pub use storage::{Backend, Leftover, LocalBackend, Staged, StorageError};
