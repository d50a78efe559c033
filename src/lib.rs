//! bakare's CLI: argument parsing (clap), output and exit codes. The work is in `engine`.
#![deny(unsafe_code)]

mod commands;
mod diff;
mod find;
mod output;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes: 0 success, 1 failure, 3 partial (some files could not be saved or restored).
pub const EXIT_PARTIAL: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "bakare", version, about = "Fast, memory-bounded, encrypted, deduplicating backups")]
pub struct Cli {
    /// Repository directory [default: $XDG_DATA_HOME/bakare/repo]
    #[arg(long, global = true, env = "BAKARE_REPO")]
    pub repo: Option<PathBuf>,
    /// Key file [default: $XDG_CONFIG_HOME/bakare/keys/<repository id>.key]
    #[arg(long, global = true, env = "BAKARE_KEY")]
    pub key: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository and its keypair
    Init,
    /// Back up paths (creates the default repository on first use)
    Run(RunArgs),
    /// List snapshots
    Snapshots,
    /// List the contents of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot, or parts of it
    Restore(RestoreArgs),
    /// Find files and directories by name across all snapshots (fuzzy, typo-tolerant)
    Find(find::FindArgs),
    /// What changed between two snapshots
    Diff(diff::DiffArgs),
    /// Manage keys
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IoMode {
    Auto,
    Uring,
    Pool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Files and directories to back up
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Memory ceiling for the whole process, e.g. 512M, 2G, 1.5GiB (K/M/G are binary units)
    #[arg(long, value_parser = parse_size_arg)]
    pub mem_limit: Option<u64>,
    /// Leave out matching paths (glob; without '/', matches a name anywhere)
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// How files are read: io_uring, a thread pool, or auto (io_uring when the kernel allows)
    #[arg(long = "io", value_enum, env = "BAKARE_IO", default_value = "auto")]
    pub io_mode: IoMode,
    /// Workers per CPU stage [default: number of CPUs]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Host name recorded in the snapshot [default: this machine's]
    #[arg(long)]
    pub host: Option<String>,
    /// Tags recorded in the snapshot
    #[arg(long)]
    pub tag: Vec<String>,
    /// Read every file, ignoring the files cache of earlier runs
    #[arg(long)]
    pub no_cache: bool,
    /// Directory of the files caches [default: $XDG_CACHE_HOME/bakare]
    #[arg(long, env = "BAKARE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Snapshot id (a unique prefix) or `latest`
    pub snapshot: String,
    /// Directory inside the snapshot [default: its root]
    pub path: Option<PathBuf>,
    /// Long format: type, mode, size, mtime
    #[arg(long, short = 'l')]
    pub long: bool,
    /// List subdirectories too
    #[arg(long, short = 'r')]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (a unique prefix) or `latest`
    pub snapshot: String,
    /// Directory to restore into (paths keep their place below it)
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Only these paths of the snapshot (e.g. /home/me/docs, as `find` prints them), or glob
    /// patterns (/home/me/**/*.txt): a PATH with * ? [ { that is not itself in the snapshot
    pub paths: Vec<PathBuf>,
    /// Every PATH is a glob pattern
    #[arg(long)]
    pub glob: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write the key to FILE; with --backup-only, without the secret identity
    Export {
        file: PathBuf,
        #[arg(long)]
        backup_only: bool,
    },
    /// Show the key's fingerprint and kind
    Show,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size like 512M, 2G or 1.5GiB: {e}"))
}

/// `mi_option_purge_delay` in mimalloc.h (the same value in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc return freed pages to the OS at once. The byte budget bounds live data; the
/// RSS ceiling also needs freed buffers to leave. With mimalloc's default 10 ms delay (or the
/// 100 ms tried here) freed multi-MiB buffers of many sizes linger: on a 300 MiB mixed tree with
/// --mem-limit 128M, peak RSS was 130 MiB (10 ms) and 159 MiB (100 ms), against 84 MiB with no
/// delay. The price is page faults on new buffers: ~20 % slower on 1 GiB of random data (1.65-1.9
/// s against 1.3 s), no measurable cost on the mixed tree. Reusing block buffers (a pool) would
/// remove that cost; until then, the ceiling wins. MIMALLOC_PURGE_DELAY overrides it.
#[allow(unsafe_code)]
pub fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return; // the user's own setting wins
    }
    // SAFETY: mi_option_set stores one integer in mimalloc's option table; it has no memory
    // effects on the caller and is valid to call at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Runs the CLI reading files through `source`.
pub fn main_with(source: Arc<dyn io::Source>) -> ExitCode {
    let cli = Cli::parse();
    match commands::dispatch(cli, source) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut msg = format!("bakare: error: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            eprintln!("{msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_arg("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size_arg("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size_arg("1.5GiB").unwrap(), 3 << 29);
        assert!(parse_size_arg("lots").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
