//! What is stored: the repository's small objects and how they are authenticated
//! (docs/format.md). Packs, index segments and trees still live beside the engine's modules.
pub mod config;
pub mod gc;
pub mod parity;
pub mod seen;
pub mod signing;
pub mod snapshot;
pub mod writers;
