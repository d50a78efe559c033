//! ops: what commands do, one module each, on top of the repository model.
pub mod attrs;
pub mod copy;
pub mod dump;
pub mod filter;
pub mod migrate;
pub mod restore;
pub mod rewrite;
pub mod select;
pub mod stats;
pub mod tag;
pub mod writers;
pub mod zipdump;
