//! chaos: fault injection that wraps bakare's real parts, and the test kit its suites (and the
//! CLI's end-to-end tests) use to build trees, run the real binary and compare restored bytes,
//! and a LAN of network namespaces ([`lan::Lan`]) for tests of nodes that find each other.
pub mod backend;
pub mod hostile;
pub mod lan;
pub mod oracle;
pub mod proxy;
pub mod source;
pub mod testkit;

pub use source::FaultySource;
