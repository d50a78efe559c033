//! bakare's benchmark tooling: deterministic corpora, edits to them, and an end-to-end harness
//! that runs the real `bakare` binary and measures each step. The per-stage criterion
//! benchmarks are in `benches/stages.rs`; the command line is `bakare-bench` (src/main.rs).
#![deny(unsafe_code)]

pub mod corpus;
pub mod gen;
pub mod harness;
pub mod measure;
pub mod mutate;
