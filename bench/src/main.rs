//! bakare-bench: make a corpus, change it, and time bakare on it.
//!
//! ```text
//! bakare-bench corpus --kind mixed --size 300M --out /tmp/corpus --seed 1
//! bakare-bench mutate --dir /tmp/corpus --percent 1 --seed 2
//! bakare-bench run --corpus /tmp/corpus [--bakare target/release/bakare] [--mem-limit 512M] [--io pool]
//! bakare-bench compare --corpus /tmp/corpus [--tools bakare,restic,borg] [--mutate-percent 1]
//! ```
#![deny(unsafe_code)]

use std::path::PathBuf;

use anyhow::Result;
use bench::{compare, corpus, harness, mutate, peers};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "bakare-bench", about = "Corpora and end-to-end measurements for bakare")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write a deterministic corpus (same kind, size and seed: byte-identical tree)
    Corpus {
        #[arg(long, value_enum, default_value = "mixed")]
        kind: corpus::Kind,
        /// Total size, in bytes or like 300M, 2G (binary units)
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        /// Directory to create (must be missing or empty)
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Change about PERCENT % of a corpus's files, deterministically
    Mutate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1.0)]
        percent: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Time init, backup, unchanged backup and restore of CORPUS in a fresh repository
    Run {
        #[arg(long)]
        corpus: PathBuf,
        /// bakare binary [default: <workspace>/target/release/bakare]
        #[arg(long)]
        bakare: Option<PathBuf>,
        /// Passed to `bakare run --mem-limit`, e.g. 512M
        #[arg(long)]
        mem_limit: Option<String>,
        #[arg(long, value_enum, default_value = "auto")]
        io: harness::IoMode,
        /// Directory for the temporary repository and restore [default: the system's temp dir]
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Keep the temporary repository and restore instead of deleting them
        #[arg(long)]
        keep: bool,
        /// Kill a step still running after this many seconds (0: never)
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// bakare against the installed peers (bupstash, restic, rustic, borg) on a copy of CORPUS:
    /// initial backup, unchanged re-run, run after a mutation, full restore; interleaved
    Compare {
        #[arg(long)]
        corpus: PathBuf,
        /// Tools to run, comma-separated; those not installed are skipped with a note
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bakare,bupstash,restic,rustic,borg")]
        tools: Vec<peers::Kind>,
        /// Percentage of the files the mutation changes before the third step
        #[arg(long, default_value_t = 1.0)]
        mutate_percent: f64,
        /// Seed of the mutation
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for the corpus copy, repositories and restores [default: the system's temp dir]
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// bakare binary [default: <workspace>/target/release/bakare]
        #[arg(long)]
        bakare: Option<PathBuf>,
        /// Keep the work directory instead of deleting it
        #[arg(long)]
        keep: bool,
        /// Count a step still running after this many seconds as failed, killing it (0: never)
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size like 300M or 2G: {e}"))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Corpus { kind, size, out, seed } => {
            let t = std::time::Instant::now();
            let s = corpus::generate(kind, size, &out, seed)?;
            println!("wrote {} in {:.1} s: {s}", out.display(), t.elapsed().as_secs_f64());
        }
        Cmd::Mutate { dir, percent, seed } => {
            let s = mutate::mutate(&dir, percent, seed)?;
            println!("mutated {}: {s}", dir.display());
        }
        Cmd::Run { corpus, bakare, mem_limit, io, workdir, keep, timeout } => {
            let timeout = (timeout > 0).then(|| std::time::Duration::from_secs(timeout));
            harness::run(&harness::Options { corpus, bakare, mem_limit, io, workdir, keep, timeout })?;
        }
        Cmd::Compare { corpus, tools, mutate_percent, seed, workdir, bakare, keep, timeout } => {
            let timeout = (timeout > 0).then(|| std::time::Duration::from_secs(timeout));
            let opts =
                compare::Options { corpus, tools, mutate_percent, seed, workdir, bakare, keep, timeout };
            compare::compare(&opts)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert_eq!(parse_size_arg("300M").unwrap(), 300 << 20);
        assert_eq!(parse_size_arg("1000").unwrap(), 1000);
        let cli =
            Cli::try_parse_from(["b", "compare", "--corpus", "/c", "--tools", "restic,bakare"]).unwrap();
        match cli.command {
            Cmd::Compare { tools, mutate_percent, .. } => {
                assert_eq!(tools, [peers::Kind::Restic, peers::Kind::Bakare]);
                assert_eq!(mutate_percent, 1.0);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
