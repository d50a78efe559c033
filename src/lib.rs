//! bakare's CLI: argument parsing (clap), output and exit codes. The work is in `engine`.
#![deny(unsafe_code)]

mod commands;
mod copies;
mod copy;
mod diff;
mod dump;
mod find;
mod generate;
mod interrupt;
mod join;
mod maintenance;
mod mount;
mod output;
mod passphrase;
mod peers;
mod progress;
mod retention;
mod rewrite;
mod selection;
mod serve;
mod snapshots;
mod stats;
mod stdin;
mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit codes: 0 success, 1 failure, 3 partial (some files could not be saved or restored, or
/// `find` left out snapshots its --mem-limit could not hold).
pub const EXIT_PARTIAL: u8 = 3;

#[derive(Parser, Debug)]
#[command(name = "bakare", version, about = "Fast, memory-bounded, encrypted, deduplicating backups")]
pub struct Cli {
    /// Repository: a directory, s3:https://host[:port]/bucket[/prefix] or s3:host/bucket[/prefix],
    /// or serve:https://host:port/repo on a `bakare serve` this machine joined (`bakare join`)
    /// [default: $XDG_DATA_HOME/bakare/repo; `run` creates it on first use, any other
    /// repository is created by `bakare init`]
    ///
    /// `run` takes several: it backs up into the first it reaches and copies the snapshot to
    /// the others (`sync`, both ways, so one that was down catches up), e.g. --repo peer:alice
    /// --repo peer:bob
    #[arg(long, global = true, env = "BAKARE_REPO", action = clap::ArgAction::Append)]
    pub repo: Vec<std::ffi::OsString>,
    /// Key file [default: $XDG_CONFIG_HOME/bakare/keys/<repository id>.key]
    #[arg(long, global = true, env = "BAKARE_KEY")]
    pub key: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long, global = true)]
    pub json: bool,
    /// Say more: `run -v` lists new and changed files, `-vv` unchanged ones too; `restore -v`
    /// lists the files it restores
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Print no summaries, notes or progress, only errors and warnings (on stderr); exit codes
    /// are unchanged. `--json` output is still printed
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Show and use every snapshot, also those not signed by the owner or a registered writer
    /// in good standing, or dated in the future (for forensics: they may be forgeries)
    #[arg(long, global = true)]
    pub trust_all: bool,
    /// A command that prints the passphrase of a protected key (otherwise BAKARE_PASSPHRASE,
    /// or a prompt on the terminal)
    #[arg(long, global = true, env = "BAKARE_PASSPHRASE_COMMAND")]
    pub passphrase_command: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository and its keypair
    Init(InitArgs),
    /// Join a `bakare serve` server with the invitation its owner made (`bakare serve
    /// --add-client NAME`); its repositories are then --repo serve:https://HOST:PORT/REPO
    Join(join::JoinArgs),
    /// Back up paths (creates the default repository on first use)
    Run(RunArgs),
    /// List snapshots (all, or those the filters match)
    Snapshots(snapshots::SnapshotsArgs),
    /// List the contents of a snapshot
    Ls(LsArgs),
    /// Restore a snapshot, or parts of it
    Restore(RestoreArgs),
    /// Write a file of a snapshot to stdout, or a directory as a tar stream
    Dump(dump::DumpArgs),
    /// Mount the repository read-only (FUSE) at DIR: snapshots/, latest, hosts/, tags/;
    /// serves until unmounted (`fusermount -u DIR`, Ctrl-C)
    Mount(mount::MountArgs),
    /// Back up paths whenever they change: a daemon that lists only the directories that
    /// changed (inotify), and scans everything when it may have missed a change
    Watch(watch::WatchArgs),
    /// Find files and directories by name across all snapshots (fuzzy, typo-tolerant)
    Find(find::FindArgs),
    /// What changed between two snapshots
    Diff(diff::DiffArgs),
    /// Manage keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Verify the repository; name damaged objects and the files they affect (exit 3)
    Check(CheckArgs),
    /// Rebuild the index, or write snapshots that leave out damaged files
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Remove snapshots by a retention policy (or by id); data goes at the next prune
    Forget(ForgetArgs),
    /// What snapshots hold (files, logical size) and cost (unique blobs, raw and stored bytes)
    Stats(stats::StatsArgs),
    /// Snapshots again without the paths that match --exclude (a huge file, a leaked secret);
    /// tagged `rewritten`; --forget removes the originals (their data goes with prune)
    Rewrite(rewrite::RewriteArgs),
    /// Change snapshots' tags (as the owner: writes a new record, removes the old one)
    Tag(snapshots::TagArgs),
    /// Collect garbage in two phases: condemn what nothing uses, delete it a grace period later
    Prune(PruneArgs),
    /// Show the repository's settings; change the grace period or the compression
    Config(ConfigArgs),
    /// Bring a repository made by an older bakare to the current format (once, with the full key)
    Migrate(MigrateArgs),
    /// Copy snapshots from another repository with its own keys into this one (decrypted
    /// there, stored and deduplicated here); run again to finish an interrupted copy
    Copy(copy::CopyArgs),
    /// Copy the objects another repository location lacks, without any key (relay a NAS to the cloud)
    Sync(SyncArgs),
    /// Serve the repositories under a directory to other machines over HTTPS (S3 protocol);
    /// clients are append-only unless added with --owner
    Serve(serve::ServeArgs),
    /// Friends' servers on the local network (`bakare serve --peers`), and pairing with one:
    /// its repository for this machine is then --repo peer:NAME
    Peers(peers::PeersArgs),
    /// Print a shell completion script to stdout (bash, zsh, fish, elvish, powershell)
    Completions(generate::CompletionsArgs),
    /// Write a man page for every command and subcommand into DIR (bakare.1, bakare-run.1, ...)
    Man(generate::ManArgs),
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Source repository (a directory or s3:...)
    #[arg(long)]
    pub from: std::ffi::OsString,
    /// Destination (created as a copy of the source's config when empty)
    #[arg(long)]
    pub to: std::ffi::OsString,
    /// Objects copied at once
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Snapshots to remove (ids or unique prefixes), instead of a policy
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<usize>,
    /// ... of the last N days
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<usize>,
    /// ... of the last N (ISO) weeks
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<usize>,
    /// ... of the last N months
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<usize>,
    /// ... of the last N years
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<usize>,
    /// Keep every snapshot younger than DURATION before the newest (30d, 12h, 6mo, 1y)
    #[arg(long, value_name = "DURATION", value_parser = engine::forget::parse_span)]
    pub keep_within: Option<jiff::Span>,
    /// Always keep snapshots with these tags (`a,b`: both; repeatable: any of the lists)
    #[arg(long, value_name = "TAGS")]
    pub keep_tag: Vec<String>,
    /// The policy applies to each group separately: any of host, paths, tags (`''`: one group;
    /// snapshots are always grouped by writer too)
    #[arg(long, value_name = "host,paths,tags", default_value = "host,paths")]
    pub group_by: engine::forget::GroupBy,
    /// Only these snapshots count for the policy; the rest are kept
    #[command(flatten)]
    pub filter: snapshots::FilterArgs,
    /// Only list what would be removed, and why
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Run prune afterwards
    #[arg(long)]
    pub prune: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Only report what would be condemned, repacked and deleted
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Rewrite packs with more than this percentage of unused bytes
    #[arg(long, value_name = "PERCENT", default_value_t = 30.0, value_parser = parse_percent)]
    pub repack_threshold: f64,
    /// Delete condemned data now, without the grace period (unsafe while other machines back up)
    #[arg(long)]
    pub unsafe_now: bool,
    /// Where prune remembers when it first saw each condemnation record
    /// [default: $XDG_CACHE_HOME/bakare]
    #[arg(long, env = "BAKARE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Set the grace period prune waits between condemning and deleting (e.g. 24h, 3d)
    #[arg(long, value_name = "DURATION", value_parser = engine::forget::parse_span)]
    pub grace: Option<jiff::Span>,
    /// Set how backups compress data from now on (see `init --compression`); data already
    /// stored stays as it is
    #[arg(long, value_name = "LEVEL", value_parser = engine::config::Compression::parse)]
    pub compression: Option<engine::config::Compression>,
    /// Set the parity appended to new packs from now on (see `init --parity`); packs already
    /// stored keep theirs
    #[arg(long, value_name = "PERCENT", value_parser = parse_parity)]
    pub parity: Option<u8>,
}

/// A parity percent: 0 (off) to 100.
fn parse_parity(s: &str) -> Result<u8, String> {
    match s.trim_end_matches('%').parse::<u8>() {
        Ok(p) if p <= engine::format::parity::MAX_PERCENT => Ok(p),
        _ => Err(format!("{s:?}: expected a percentage from 0 (off) to 100")),
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim_end_matches('%').parse().map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{s:?}: must be between 0 and 100"));
    }
    Ok(v)
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read every pack: check it against its name, decrypt and re-hash every blob
    #[arg(long)]
    pub read_data: bool,
    /// Read only part of the packs: a random percentage (10%) or part n of m (1/5)
    #[arg(long, value_parser = engine::check::Subset::parse, value_name = "10%|n/m")]
    pub read_data_subset: Option<engine::check::Subset>,
    /// With --read-data: read only the packs this writer stored (a name from `key list`), to
    /// find what a compromised writer damaged and which snapshots it affects
    #[arg(long, value_name = "NAME")]
    pub writer: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index segments from the packs (works with a backup-only key)
    Index {
        /// Also read every pack and leave damaged blobs out, so the next backup stores them again
        #[arg(long)]
        read_data: bool,
    },
    /// Write a copy of each damaged snapshot without its damaged files, tagged `repaired`
    Snapshots {
        /// Only these snapshots (ids or unique prefixes) [default: every damaged one]
        snapshots: Vec<String>,
        /// Remove each damaged snapshot once its repaired copy is saved
        #[arg(long)]
        forget: bool,
        /// Only say what would be left out
        #[arg(long, short = 'n')]
        dry_run: bool,
        /// Find damage from the structure alone, without reading every pack
        #[arg(long)]
        no_read_data: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IoMode {
    Auto,
    Uring,
    Pool,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// With several --repo: how many of them must hold the snapshot when the run ends (the
    /// others are named in a warning, and catch up at a later run); 0 means all
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_copies: usize,
    /// Files and directories to back up (besides those --files-from* lists); with
    /// --stdin-from-command, the command and its arguments
    #[arg(required_unless_present_any = ["files_from", "files_from_verbatim", "files_from_raw", "stdin"])]
    pub paths: Vec<PathBuf>,
    /// Back up standard input as one file at the snapshot root (see --stdin-name), instead of paths
    #[arg(
        long,
        help_heading = "Standard input",
        conflicts_with_all = ["paths", "files_from", "files_from_verbatim", "files_from_raw", "stdin_from_command"]
    )]
    pub stdin: bool,
    /// Back up the standard output of the command given as the arguments after `--` (e.g.
    /// `--stdin-from-command -- pg_dump db`); a command that fails fails the run, which then
    /// commits nothing
    #[arg(
        long,
        help_heading = "Standard input",
        requires = "paths",
        conflicts_with_all = ["files_from", "files_from_verbatim", "files_from_raw"]
    )]
    pub stdin_from_command: bool,
    /// The name of the file --stdin or --stdin-from-command stores, at the snapshot root
    /// [default: stdin, as restic]
    #[arg(long, value_name = "NAME", help_heading = "Standard input")]
    pub stdin_name: Option<OsString>,
    /// Memory ceiling for the whole process, e.g. 512M, 2G, 1.5GiB (K/M/G are binary units)
    #[arg(long, value_parser = parse_size_arg)]
    pub mem_limit: Option<u64>,
    /// Leave out matching paths (glob, as restic's: without '/', a name anywhere; starting with
    /// '/', the whole path; otherwise a path ending anywhere; `*` never matches '/', `**` does)
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// Read --exclude patterns from FILE, one a line (blank lines and `#` comments skipped,
    /// $VAR expanded; "-" is standard input)
    #[arg(long, value_name = "FILE", help_heading = "Selection")]
    pub exclude_file: Vec<PathBuf>,
    /// Like --exclude, ignoring case
    #[arg(long, value_name = "PATTERN", help_heading = "Selection")]
    pub iexclude: Vec<String>,
    /// Like --exclude-file, ignoring case
    #[arg(long, value_name = "FILE", help_heading = "Selection")]
    pub iexclude_file: Vec<PathBuf>,
    /// In a directory holding a file NAME (that starts with CONTENT, if given), back up only
    /// that file (restic's rule: the directory and the tag file stay)
    #[arg(long, value_name = "NAME[:CONTENT]", help_heading = "Selection")]
    pub exclude_if_present: Vec<String>,
    /// Leave out the contents of cache directories: those holding a CACHEDIR.TAG with the
    /// signature of https://bford.info/cachedir/
    #[arg(long, help_heading = "Selection")]
    pub exclude_caches: bool,
    /// Leave out files larger than SIZE (e.g. 100M; K/M/G are binary units)
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg, help_heading = "Selection")]
    pub exclude_larger_than: Option<u64>,
    /// Stay on the file system of each path: a mount point below it is saved as an empty
    /// directory, as restic does
    #[arg(long, short = 'x', help_heading = "Selection")]
    pub one_file_system: bool,
    /// Leave out files and directories with the nodump flag (`chattr +d`), as borg's option
    /// of that name does (reading the flag costs an open per file and directory)
    #[arg(long, help_heading = "Selection")]
    pub exclude_nodump: bool,
    /// Apply gitignore-style files of this name (e.g. .gitignore) found in the tree to their
    /// directory and below
    #[arg(long, value_name = "NAME", help_heading = "Selection")]
    pub ignore_file: Vec<OsString>,
    /// Back up the paths listed in FILE, one a line (trimmed; blank lines and `#` comments
    /// skipped; "-" is standard input)
    #[arg(long, value_name = "FILE", help_heading = "Selection")]
    pub files_from: Vec<PathBuf>,
    /// Back up the paths listed in FILE, one a line, exactly as written
    #[arg(long, value_name = "FILE", help_heading = "Selection")]
    pub files_from_verbatim: Vec<PathBuf>,
    /// Back up the paths listed in FILE, each ending with a NUL byte (find -print0)
    #[arg(long, value_name = "FILE", help_heading = "Selection")]
    pub files_from_raw: Vec<PathBuf>,
    /// How files are read: io_uring, a thread pool, or auto (io_uring when the kernel allows,
    /// threads for paths on tmpfs)
    #[arg(long = "io", value_enum, env = "BAKARE_IO", default_value = "auto")]
    pub io_mode: IoMode,
    /// Workers per CPU stage, 1 to 1024 [default: number of CPUs; with --mem-limit, as many as
    /// fit]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Host name recorded in the snapshot [default: this machine's]
    #[arg(long)]
    pub host: Option<String>,
    /// Tags recorded in the snapshot (`a,b` is two; repeatable)
    #[arg(long, value_name = "TAGS")]
    pub tag: Vec<String>,
    /// A description recorded in the snapshot, shown by `snapshots`
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Read every file, ignoring the files cache of earlier runs
    #[arg(long)]
    pub no_cache: bool,
    /// Scan, read and hash as usual and say what would be new, but write nothing: no data,
    /// snapshot or files cache (the repository must exist; nothing is compressed, so sizes
    /// are before compression)
    #[arg(long, short = 'n', conflicts_with_all = ["stdin", "stdin_from_command"])]
    pub dry_run: bool,
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
    /// Memory ceiling for the whole process, e.g. 128M (as restore's: it sizes the reader's
    /// cache and the tree entries the walk may hold; a directory past them is refused, exit 1)
    #[arg(long, value_parser = parse_size_arg)]
    pub mem_limit: Option<u64>,
    /// What `latest` means
    #[command(flatten)]
    pub filter: snapshots::FilterArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (a unique prefix) or `latest`
    pub snapshot: String,
    /// Directory to restore into (paths keep their place below it); `-`: a tar stream of
    /// what would be restored on stdout (as `dump`)
    #[arg(long, short = 't')]
    pub target: PathBuf,
    /// Only these paths of the snapshot (e.g. /home/me/docs, as `find` prints them), or glob
    /// patterns (/home/me/**/*.txt): a PATH with * ? [ { that is not itself in the snapshot
    pub paths: Vec<PathBuf>,
    /// Every PATH is a glob pattern
    #[arg(long)]
    pub glob: bool,
    /// When a file is already in the target: replace it `always`; only `if-changed` (its size,
    /// mtime or content differ from the snapshot's; content is read back and compared); only
    /// `if-newer` (the snapshot's is newer); or `never`
    #[arg(long, value_enum, default_value = "if-changed")]
    pub overwrite: Overwrite,
    /// Remove files and directories in the target that the snapshot does not have (only below
    /// the paths restored; symlinks are removed, never followed)
    #[arg(long)]
    pub delete: bool,
    /// Change nothing: print what would be created, replaced, kept and deleted, with sizes
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Leave out matching entries (glob; without '/', a name anywhere; starting with '/', the
    /// path in the snapshot, as `find` prints it; otherwise a path ending anywhere; `*` never
    /// matches '/')
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// Restore only matching entries, and the directories that lead to them (as restic's:
    /// without '/', a name anywhere; starting with '/', the path in the snapshot; otherwise a
    /// path ending anywhere; a matching directory comes whole). With PATHs: what matches at or
    /// below them
    #[arg(long, short = 'i')]
    pub include: Vec<String>,
    /// Read every restored file back and compare it with the snapshot (a file that differs is
    /// removed and named)
    #[arg(long)]
    pub verify: bool,
    /// Do not restore owners or set-id bits (as root: files belong to root, without set-id
    /// bits). Not running as root, owners and set-id bits are never restored.
    #[arg(long)]
    pub no_owner: bool,
    /// Do not restore FIFOs, sockets or device nodes (device nodes need root in any case)
    #[arg(long)]
    pub no_special: bool,
    /// Memory ceiling for the whole process, e.g. 256M, 1G (K/M/G are binary units); without
    /// it, a restore holds at most ~230 MiB besides the index and 48 bytes per hard-linked file
    #[arg(long, value_parser = parse_size_arg)]
    pub mem_limit: Option<u64>,
    /// What `latest` means
    #[command(flatten)]
    pub filter: snapshots::FilterArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Overwrite {
    Always,
    IfChanged,
    IfNewer,
    Never,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Protect the secret key with a passphrase (asked for on the terminal, or taken from
    /// BAKARE_PASSPHRASE or --passphrase-command); backup-only keys never need one
    #[arg(long)]
    pub passphrase: bool,
    /// Create the repository in a directory that holds other files
    #[arg(long)]
    pub force: bool,
    /// How backups compress data: `auto` (measured default: zstd level 1 for chunks, level 3
    /// for bundles of small files), `off` or `0` (stored uncompressed), `max` (19), or a zstd
    /// level 1..=19 for chunks and bundles alike. `config --compression` changes it later
    #[arg(long, value_name = "LEVEL", default_value = "auto", value_parser = engine::config::Compression::parse)]
    pub compression: engine::config::Compression,
    /// Reed-Solomon parity appended to every pack, as a percent of its size: at 5, any 13
    /// damaged 4 KiB blocks (or a 48 KiB burst) in each full MiB are repaired when read (a
    /// pack's last, partial MiB gets 5 % of its blocks). 0 turns it off; `config --parity`
    /// changes it for new packs (docs/format.md, "Parity")
    #[arg(long, value_name = "PERCENT", default_value_t = engine::format::parity::DEFAULT_PERCENT,
          value_parser = parse_parity)]
    pub parity: u8,
    /// Join the `bakare serve` server of this invitation first (as `bakare join`); --repo must
    /// be serve:https://HOST:PORT/REPO on that server. `bakare join` can read it from
    /// BAKARE_INVITATION instead, keeping its secret out of the shell's history
    #[arg(long, value_name = "INVITATION")]
    pub join: Option<String>,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Say what would change, change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write the key to FILE; with --backup-only, a new key without the secret identity,
    /// registered as a writer whose snapshots the owner trusts
    Export {
        file: PathBuf,
        #[arg(long)]
        backup_only: bool,
        /// The writer's name (backup-only keys) [default: FILE's name without .key]
        #[arg(long)]
        name: Option<String>,
    },
    /// Show the key's fingerprint and kind
    Show,
    /// List the registered writers: name, fingerprint, registered, revoked, last snapshot
    List,
    /// Add, change or remove the passphrase of the secret key file (the new one is asked for
    /// twice on the terminal, or taken from BAKARE_NEW_PASSPHRASE)
    Passwd {
        /// Store the secret key without a passphrase
        #[arg(long)]
        remove: bool,
    },
    /// Revoke a writer: its snapshots are ignored (unless --trust-all) and it cannot add
    /// trusted ones; prune keeps their data until they are forgotten
    Revoke { name: String },
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size like 512M, 2G or 1.5GiB: {e}"))
}

/// `mi_option_arena_eager_commit` in mimalloc.h (the same value in mimalloc v2 and v3).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// `mi_option_purge_delay` in mimalloc.h (the same value in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// `mi_option_allow_thp` in mimalloc v3's mimalloc.h.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Whether the environment sets `name` (a NUL-terminated byte string). Uses libc alone: this
/// runs before `main`, where the standard library's services are not promised.
#[allow(unsafe_code)]
fn env_is_set(name: &'static [u8]) -> bool {
    debug_assert_eq!(name.last(), Some(&0));
    // SAFETY: `name` is NUL-terminated; getenv only reads the environment, which nothing
    // changes before main.
    !unsafe { libc::getenv(name.as_ptr().cast()) }.is_null()
}

/// Makes mimalloc return freed pages to the OS at once, commit its arenas as they are used, and
/// keep the process off transparent huge pages. The binary calls this from a constructor that
/// runs before `main` (and before the runtime's first allocation): mimalloc reserves its first
/// arena at that allocation, and options set later do not apply to it.
///
/// Purging: the byte budget bounds live data; the RSS ceiling also needs freed buffers to leave.
/// With mimalloc's default 10 ms delay (or the 100 ms tried here) freed multi-MiB buffers of
/// many sizes linger: on a 300 MiB mixed tree with --mem-limit 128M, peak RSS was 130 MiB
/// (10 ms) and 159 MiB (100 ms), against 84 MiB with no delay. The price is page faults on new
/// buffers: ~20 % slower on 1 GiB of random data (1.65-1.9 s against 1.3 s), no measurable cost
/// on the mixed tree. MIMALLOC_PURGE_DELAY overrides it.
///
/// Huge pages: mimalloc v3 asks for them (MADV_HUGEPAGE) on its arenas, so the first touch of
/// each thread's fresh memory commits and zeroes 2 MiB at a time. Without them, peak RSS of a
/// no-change run over 100,000 files fell from 47-49 to 22 MiB and of a first backup of the mixed
/// tree from 106-111 to 60-61 MiB, at the same speed (tmpfs, 3-4 runs each). Set after main,
/// the first arena's first 2 MiB were still one huge page. MIMALLOC_ALLOW_THP overrides it.
///
/// Eager commit: an arena committed up front costs ~2.5 MiB of RSS on a no-change run for no
/// measured speed. MIMALLOC_ARENA_EAGER_COMMIT overrides it.
#[allow(unsafe_code)]
pub fn configure_allocator() {
    if !env_is_set(b"MIMALLOC_PURGE_DELAY\0") {
        // SAFETY: mi_option_set stores one integer in mimalloc's option table; it has no memory
        // effects on the caller and is valid to call at any time, from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    if !env_is_set(b"MIMALLOC_ARENA_EAGER_COMMIT\0") {
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
    // SAFETY: mi_version only reads a constant.
    let v3 = unsafe { libmimalloc_sys::mi_version() } >= 300;
    if v3 && !env_is_set(b"MIMALLOC_ALLOW_THP\0") {
        // SAFETY: as above, one integer in the option table (v3 has this option).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        // PR_SET_THP_DISABLE keeps the whole process off huge pages, memory reserved before
        // this call included (as mimalloc itself does when the option comes from the
        // environment). A refusal only costs memory.
        // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments and touches no memory.
        let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// Wraps the repository's storage (fault injection in the chaos suites).
pub type BackendWrap = fn(Arc<dyn io::Backend>) -> Arc<dyn io::Backend>;

static BACKEND_WRAP: std::sync::OnceLock<BackendWrap> = std::sync::OnceLock::new();

/// A storage location, wrapped like a repository's (for sync, which opens no repository).
pub(crate) fn open_backend(at: &engine::repo::Location) -> engine::Result<Arc<dyn io::Backend>> {
    let b = audited(at, at.backend()?);
    Ok(match BACKEND_WRAP.get() {
        Some(wrap) => wrap(b),
        None => b,
    })
}

/// A `bakare serve` repository's storage records audit challenges for every pack written to
/// it (peers::audit), for `bakare peers audit` to send later.
fn audited(at: &engine::repo::Location, b: Arc<dyn io::Backend>) -> Arc<dyn io::Backend> {
    let engine::repo::Location::Serve(url) = at else { return b };
    match ::peers::audit::Store::for_location(url) {
        Ok(store) => Arc::new(::peers::audit::Recording::new(b, store)),
        Err(e) => {
            eprintln!(
                "warning: no place to keep audit challenges for {url} ({e}): its packs cannot be audited"
            );
            b
        }
    }
}

pub(crate) fn wrapped(mut repo: engine::Repository) -> engine::Repository {
    repo.backend = audited(&repo.location, repo.backend.clone());
    if let Some(wrap) = BACKEND_WRAP.get() {
        repo.backend = wrap(repo.backend.clone());
    }
    repo
}

pub(crate) fn open_repo(
    at: &engine::repo::Location,
    key: Option<&std::path::Path>,
) -> engine::Result<engine::Repository> {
    engine::Repository::open(at.clone(), key).map(wrapped)
}

pub(crate) fn init_repo(
    at: &engine::repo::Location,
    key: Option<&std::path::Path>,
    passphrase: Option<engine::secrecy::SecretString>,
    force: bool,
    compression: engine::config::Compression,
    parity: u8,
) -> engine::Result<engine::Repository> {
    engine::Repository::init_with(at.clone(), key, passphrase, force, compression, parity).map(wrapped)
}

/// Runs the CLI reading files through `source`, with every repository's storage wrapped by
/// `wrap` (the chaos suites' crash and pause points).
pub fn main_with_backend(source: Arc<dyn io::Source>, wrap: BackendWrap) -> ExitCode {
    let _ = BACKEND_WRAP.set(wrap);
    main_with(source)
}

/// Runs the CLI reading files through `source`.
pub fn main_with(source: Arc<dyn io::Source>) -> ExitCode {
    let cli = Cli::parse();
    let done = commands::dispatch(cli, source);
    engine::hooks::report_peak_rss();
    match done {
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
