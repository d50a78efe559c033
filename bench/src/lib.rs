//! bakare's benchmark tooling: deterministic corpora, edits to them, and an end-to-end harness
//! that runs the real `bakare` binary and measures each step, and a head-to-head comparison
//! with peer backup tools (`compare`, whose commands per tool are in `peers`). The per-stage criterion
//! benchmarks are in `benches/stages.rs`; the command line is `bakare-bench` (src/main.rs).
#![deny(unsafe_code)]

pub mod compare;
pub mod corpus;
pub mod gen;
pub mod harness;
pub mod measure;
pub mod mutate;
pub mod peers;
