//! compare: bakare head to head with the peer backup tools that are installed (bupstash, restic,
//! rustic, borg) on one corpus, interleaved: every tool does step 1, then every tool step 2, and
//! so on, so a slow drift of the machine (another load, the page cache filling) is spread over all
//! tools instead of landing on whichever ran last. The order rotates by one tool per phase.
//!
//! Steps: init (shown, not compared), initial backup, a re-run with nothing changed, a run after
//! `mutate` changed ~1 % of the files (one mutation of one private copy, shared by all tools), and
//! a full restore of that last snapshot into an empty directory, checked against the mutated copy
//! (names, kinds, contents; not modes or times). A mismatch is reported, not fatal.
//!
//! # Fairness
//!
//! What every tool does here:
//! - **Encryption on for all.** bakare: its keypair, a key file without a passphrase. bupstash: a
//!   key file from `new-key`, no passphrase either. restic, rustic: repository keys sealed by a
//!   passphrase through scrypt, which they run at the start of *every* command (restic calibrates
//!   it at init to ~0.5 s and up to 60 MiB): a fixed cost per step that bakare and bupstash do not
//!   pay, and which shows in short steps and in peak RSS. borg: `repokey-blake2` (AES-CTR with a
//!   BLAKE2b MAC), key sealed by the passphrase with PBKDF2 (100,000 rounds) on every command.
//! - **Compression.** bakare: zstd level 1, skipped for data that does not compress. restic:
//!   repo format 2 with its default `auto` (its Go zstd's default speed, about zstd level 3).
//!   rustic: its default on a new repository (format 2, zstd level 3). borg: `--compression
//!   zstd,3` (its default is lz4; zstd 3 is the level closest to the others). bupstash: its
//!   default, zstd 3. Higher levels cost CPU and save space: the repository-size column is unfair
//!   to bakare, the time columns to the others.
//! - **Threads.** bakare: one worker per core in each CPU stage, files read with io_uring. restic:
//!   all cores (GOMAXPROCS), two file readers. rustic: all cores. bupstash: `--threads` defaults
//!   to the number of cores (one metadata indexer thread). borg 1.x: one thread, so on a
//!   multi-core machine its wall time is unfair to it; compare CPU time.
//! - **Unchanged files.** Every tool skips reading a file that looks unchanged since its last
//!   backup of the same source: bakare with its files cache (size, mtime, ctime, inode, device;
//!   in `$XDG_CACHE_HOME/bakare`), restic and rustic through the previous snapshot of the same
//!   host and path (size, times, inode), borg with its files cache (ctime, size, inode), bupstash
//!   with its send log. All those caches start empty (private XDG_CACHE_HOME) and live outside
//!   the repository, so the no-change and after-mutation rows measure the warm-cache case a
//!   user sees from the second backup on.
//! - **Chunking differs** (bakare FastCDC avg 1 MiB; restic/rustic avg 1 MiB; borg buzhash avg
//!   2 MiB; bupstash its own rolling hash), so near-duplicates dedup differently: repository sizes
//!   differ for that too.
//! - **Page cache: warm for all.** Nothing is dropped from the page cache (dropping it is
//!   machine-wide and needs root); the corpus copy was just written and stays cached, so every
//!   backup reads from memory: these are CPU-bound numbers, not disk-bound ones.
//! - **Durability.** Tools differ in what they fsync (bakare fsyncs every object it writes, and
//!   its restore fsyncs nothing; each peer has its own policy). After every step the harness runs
//!   `sync` and shows its time separately ("sync s"): what a tool left dirty is flushed then, so
//!   it cannot slow the next tool's step, and a tool that skips fsync shows a longer sync instead
//!   of hiding the cost.
//! - **Isolation.** Each tool runs with a cleared environment and its own HOME, XDG cache, config
//!   and data directories and TMPDIR inside the work directory (see `peers.rs`), so no cache of an
//!   earlier run helps it and a rerun starts from the same state. Every step is a separate process
//!   measured by `wait4` (wall, CPU = user + system, peak RSS), start-up and key loading included.
//!   Repository size is the sum of the sizes of the files in the repository directory; the
//!   caches outside it (every tool has one) are not counted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::measure::{self, Usage};
use crate::mutate;
use crate::peers::{self, Kind, Tool};

#[derive(Debug)]
pub struct Options {
    pub corpus: PathBuf,
    /// Tools to run, in this order; those not installed are skipped with a note.
    pub tools: Vec<Kind>,
    pub mutate_percent: f64,
    pub seed: u64,
    /// Where the corpus copy, repositories and restores go [default: the system's temp dir].
    pub workdir: Option<PathBuf>,
    /// bakare binary [default: <workspace>/target/release/bakare].
    pub bakare: Option<PathBuf>,
    pub keep: bool,
    /// A step still running after this is killed and counted as failed.
    pub timeout: Option<Duration>,
}

/// The compared steps, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Initial,
    NoChange,
    Mutated,
    Restore,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Initial, Step::NoChange, Step::Mutated, Step::Restore];

    pub fn title(self) -> &'static str {
        match self {
            Step::Initial => "initial backup",
            Step::NoChange => "backup, nothing changed",
            Step::Mutated => "backup after mutation",
            Step::Restore => "full restore of the latest snapshot",
        }
    }

    /// The backup's number (1, 2, 3), or `None` for the restore.
    fn backup_run(self) -> Option<u32> {
        match self {
            Step::Initial => Some(1),
            Step::NoChange => Some(2),
            Step::Mutated => Some(3),
            Step::Restore => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    pub usage: Usage,
    /// The `sync` right after the step: flushing what the step left dirty.
    pub sync: Duration,
    /// Repository size after a backup step.
    pub repo_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
pub enum Cell {
    Done(Measured),
    Failed(String),
    /// Not run, and why (an earlier step of this tool failed).
    Skipped(String),
}

/// One tool's row in one step's table.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub cell: Cell,
    /// For the restore: `Ok` when the restore equals the corpus, else the first difference.
    pub verified: Option<Result<(), String>>,
}

struct Entry {
    tool: Tool,
    init: Cell,
    steps: Vec<Cell>,
    verified: Option<Result<(), String>>,
}

/// What one tool did: its init, a cell per step of `Step::ALL`, and the restore check.
#[derive(Clone, Debug)]
pub struct ToolResult {
    pub kind: Kind,
    pub init: Cell,
    pub steps: Vec<Cell>,
    pub verified: Option<Result<(), String>>,
}

impl Entry {
    /// Why the next step cannot run: an earlier step failed or was skipped.
    fn blocked(&self) -> Option<String> {
        std::iter::once(("init", &self.init))
            .chain(Step::ALL.iter().map(|s| s.title()).zip(&self.steps))
            .find_map(|(name, c)| match c {
                Cell::Done(_) => None,
                Cell::Failed(_) => Some(format!("{name} failed")),
                Cell::Skipped(why) => Some(why.clone()),
            })
    }
}

/// Runs every installed tool of `opts.tools` through the steps, prints a table per step and
/// returns what each tool did.
pub fn compare(opts: &Options) -> Result<Vec<ToolResult>> {
    let corpus = opts.corpus.canonicalize().with_context(|| format!("corpus {}", opts.corpus.display()))?;
    let work = measure::work_dir("bakare-compare-", opts.workdir.as_deref())?;
    // A private copy: the mutation must not touch the caller's corpus. `cp -a` keeps times and
    // modes, so the copy is the corpus as far as every tool can tell.
    let src = work.path().join("corpus");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&corpus)
        .arg(&src)
        .status()
        .context("running cp -a to copy the corpus")?;
    if !status.success() {
        bail!("cp -a {} {} failed ({status})", corpus.display(), src.display());
    }
    sync_all();
    let (files, bytes) = measure::tree_size(&src)?;

    let mut entries = Vec::new();
    let mut notes = Vec::new();
    let mut seen = Vec::new();
    for &kind in &opts.tools {
        if seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        let bin = match kind {
            Kind::Bakare => Some(opts.bakare.clone().unwrap_or_else(crate::harness::default_bakare))
                .filter(|p| p.is_file()),
            _ => peers::find_on_path(kind.name()),
        };
        match bin {
            Some(bin) => {
                let tool = Tool::new(kind, bin, work.path().join(kind.name()))?;
                entries.push(Entry {
                    tool,
                    init: Cell::Skipped("not run".into()),
                    steps: Vec::new(),
                    verified: None,
                });
            }
            None => notes.push(format!(
                "{}: not installed, skipped (install: {})",
                kind.name(),
                kind.install_hint()
            )),
        }
    }
    for n in &notes {
        println!("note: {n}");
    }
    if entries.is_empty() {
        bail!("none of the requested tools is installed");
    }
    println!("corpus {} copied to {}: {files} files, {:.1} MiB", corpus.display(), src.display(), mib(bytes));
    for e in &entries {
        println!("  {:<9} {} ({})", e.tool.name(), e.tool.version, e.tool.bin.display());
    }
    println!("  borg compression {}; restic/rustic/bupstash/bakare their defaults", peers::BORG_COMPRESSION);
    // Other load on the machine shifts every number; say how much there was.
    println!("  load average at start: {}", load_average());

    let n = entries.len();
    for e in &mut entries {
        e.init = run_cmds(&e.tool, e.tool.init(), opts.timeout, false);
        report_progress("init", e.tool.name(), &e.init);
    }
    for (phase, step) in Step::ALL.into_iter().enumerate() {
        if step == Step::Mutated {
            let s = mutate::mutate(&src, opts.mutate_percent, opts.seed)?;
            sync_all();
            println!("mutated the copy ({} %, seed {}): {s}", opts.mutate_percent, opts.seed);
        }
        for i in 0..n {
            let e = &mut entries[(i + phase + 1) % n];
            let cell = match e.blocked() {
                Some(why) => Cell::Skipped(why),
                None => match step.backup_run() {
                    Some(run) => run_cmds(&e.tool, vec![e.tool.backup(&src, run)], opts.timeout, true),
                    None => restore_and_check(e, &src, opts),
                },
            };
            report_progress(step.title(), e.tool.name(), &cell);
            e.steps.push(cell);
        }
    }

    let (files_after, bytes_after) = measure::tree_size(&src)?;
    for step in Step::ALL {
        let (f, b) = if step == Step::Initial || step == Step::NoChange {
            (files, bytes)
        } else {
            (files_after, bytes_after)
        };
        println!();
        println!("== {} ({f} files, {:.1} MiB) ==", step.title(), mib(b));
        let rows: Vec<Row> = entries
            .iter()
            .map(|e| Row {
                name: e.tool.name().into(),
                cell: e.steps.get(step as usize).cloned().unwrap_or(Cell::Skipped("not run".into())),
                verified: if step == Step::Restore { e.verified.clone() } else { None },
            })
            .collect();
        print!("{}", render_table(&rows, step == Step::Restore));
    }
    println!();
    println!("Nx = peer / bakare: above 1 bakare is faster (wall, CPU) or smaller (RSS, repo).");
    let inits: Vec<String> = entries
        .iter()
        .map(|e| match &e.init {
            Cell::Done(m) => format!("{} {:.2} s", e.tool.name(), m.usage.wall.as_secs_f64()),
            _ => format!("{} failed", e.tool.name()),
        })
        .collect();
    println!("init (not compared): {}", inits.join(", "));
    println!("load average at the end: {} (cores: {})", load_average(), cores());
    for n in &notes {
        println!("note: {n}");
    }
    if opts.keep {
        println!("kept {}", work.keep().display());
    }
    Ok(entries
        .into_iter()
        .map(|e| ToolResult { kind: e.tool.kind, init: e.init, steps: e.steps, verified: e.verified })
        .collect())
}

fn report_progress(step: &str, tool: &str, cell: &Cell) {
    match cell {
        Cell::Done(m) => println!("  {step}: {tool} {:.2} s", m.usage.wall.as_secs_f64()),
        Cell::Failed(why) => println!("  {step}: {tool} FAILED: {why}"),
        Cell::Skipped(why) => println!("  {step}: {tool} skipped ({why})"),
    }
}

/// Runs `cmds` one after the other as one measured step (wall and CPU add up, RSS is the
/// largest), then `sync`, then sizes the repository if `size_repo`.
fn run_cmds(tool: &Tool, cmds: Vec<Command>, timeout: Option<Duration>, size_repo: bool) -> Cell {
    let mut total = Usage::default();
    for mut c in cmds {
        let out = match measure::run(&mut c, timeout) {
            Ok(o) => o,
            Err(e) => return Cell::Failed(format!("{e:#}")),
        };
        if !tool.succeeded(out.status) {
            return Cell::Failed(format!("{}: {}", out.status, last_line(&out.stderr, &out.stdout)));
        }
        total.wall += out.usage.wall;
        total.user += out.usage.user;
        total.sys += out.usage.sys;
        total.max_rss_kib = total.max_rss_kib.max(out.usage.max_rss_kib);
    }
    let sync = sync_all();
    let repo_bytes = if size_repo {
        match measure::tree_size(&tool.repo()) {
            Ok((_, b)) => Some(b),
            Err(e) => return Cell::Failed(format!("sizing the repository: {e:#}")),
        }
    } else {
        None
    };
    Cell::Done(Measured { usage: total, sync, repo_bytes })
}

/// The backup the restore reads back: the one after the mutation.
const LAST_RUN: u32 = 3;

fn restore_and_check(e: &mut Entry, src: &Path, opts: &Options) -> Cell {
    let cell = run_cmds(&e.tool, vec![e.tool.restore(LAST_RUN)], opts.timeout, false);
    if let Cell::Done(_) = cell {
        let root = e.tool.restored_root(src);
        e.verified = Some(
            measure::compare_trees(src, &root)
                .map_err(|err| format!("{} differs from the corpus: {err:#}", root.display())),
        );
        if !opts.keep {
            // Unmeasured: keeps the disk use of a run at one restore at a time.
            let _ = std::fs::remove_dir_all(e.tool.restore_target());
        }
    }
    cell
}

/// The last non-empty line a failed command printed (errors come last), shortened.
fn last_line(stderr: &[u8], stdout: &[u8]) -> String {
    let pick =
        |b: &[u8]| String::from_utf8_lossy(b).lines().rev().find(|l| !l.trim().is_empty()).map(String::from);
    let line = pick(stderr).or_else(|| pick(stdout)).unwrap_or_else(|| "no output".into());
    line.trim().chars().take(300).collect()
}

/// Flushes every dirty page to disk and returns how long that took.
fn sync_all() -> Duration {
    let t = Instant::now();
    // A failing `sync` leaves only the next measurement noisier; nothing to report.
    let _ = Command::new("sync").status();
    t.elapsed()
}

/// The 1, 5 and 15 minute load averages, or "?" off Linux.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// `peer / bakare` as "2.31x", or "-" when either side is missing or zero.
pub fn ratio(peer: Option<f64>, bakare: Option<f64>) -> String {
    match (peer, bakare) {
        (Some(p), Some(b)) if p > 0.0 && b > 0.0 => format!("{:.2}x", p / b),
        _ => "-".into(),
    }
}

/// One step's table: a row per tool, and the ratios of each peer to bakare's row.
pub fn render_table(rows: &[Row], restore: bool) -> String {
    use std::fmt::Write;
    let done = |r: &Row| match r.cell {
        Cell::Done(m) => Some(m),
        _ => None,
    };
    let wall = |m: &Measured| m.usage.wall.as_secs_f64();
    let cpu = |m: &Measured| m.usage.cpu().as_secs_f64();
    let rss = |m: &Measured| m.usage.max_rss_kib as f64 / 1024.0;
    let repo = |m: &Measured| m.repo_bytes.map(mib);
    let base = rows.iter().find(|r| r.name == Kind::Bakare.name()).and_then(done);
    let mut s = String::new();
    let last = if restore { "restore check" } else { "repo x" };
    let _ = writeln!(
        s,
        "{:<9} {:>8} {:>8} {:>8} {:>9} {:>7} | {:>11} {:>7} {:>7} {:>8}",
        "tool", "wall s", "CPU s", "RSS MiB", "repo MiB", "sync s", "bakare = Nx", "CPU x", "RSS x", last
    );
    for r in rows {
        let m = match &r.cell {
            Cell::Done(m) => m,
            Cell::Failed(why) => {
                let _ = writeln!(s, "{:<9} FAILED: {why}", r.name);
                continue;
            }
            Cell::Skipped(why) => {
                let _ = writeln!(s, "{:<9} skipped: {why}", r.name);
                continue;
            }
        };
        let peer = base.filter(|_| r.name != Kind::Bakare.name());
        let last = if restore {
            match &r.verified {
                Some(Ok(())) => "identical".to_string(),
                Some(Err(why)) => format!("MISMATCH: {why}"),
                None => "-".to_string(),
            }
        } else {
            ratio(repo(m), peer.as_ref().and_then(repo))
        };
        let _ = writeln!(
            s,
            "{:<9} {:>8.2} {:>8.2} {:>8.1} {:>9} {:>7.2} | {:>11} {:>7} {:>7} {:>8}",
            r.name,
            wall(m),
            cpu(m),
            rss(m),
            repo(m).map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            m.sync.as_secs_f64(),
            ratio(Some(wall(m)), peer.as_ref().map(wall)),
            ratio(Some(cpu(m)), peer.as_ref().map(cpu)),
            ratio(Some(rss(m)), peer.as_ref().map(rss)),
            last
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(wall_ms: u64, cpu_ms: u64, rss_mib: u64, repo_mib: Option<u64>) -> Cell {
        let usage = Usage {
            wall: Duration::from_millis(wall_ms),
            user: Duration::from_millis(cpu_ms),
            sys: Duration::ZERO,
            max_rss_kib: rss_mib * 1024,
        };
        Cell::Done(Measured { usage, sync: Duration::from_millis(10), repo_bytes: repo_mib.map(|m| m << 20) })
    }

    fn row(name: &str, cell: Cell) -> Row {
        Row { name: name.into(), cell, verified: None }
    }

    #[test]
    fn ratios_are_peer_over_bakare() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), "2.00x");
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25x");
        assert_eq!(ratio(Some(1.0), None), "-");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
    }

    #[test]
    fn table_has_a_row_per_tool_and_ratios_to_bakare() {
        let rows = vec![
            row("bakare", done(1000, 1500, 80, Some(100))),
            row("restic", done(3000, 6000, 160, Some(90))),
            row("borg", Cell::Failed("exit status: 2: boom".into())),
            row("rustic", Cell::Skipped("initial backup failed".into())),
        ];
        let t = render_table(&rows, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].contains("bakare = Nx"), "{t}");
        let restic = lines[2];
        assert!(restic.starts_with("restic"), "{t}");
        for want in ["3.00x", "4.00x", "2.00x", "0.90x"] {
            assert!(restic.contains(want), "{want} missing from {restic}");
        }
        let own = lines[1].split('|').nth(1).unwrap();
        assert!(own.split_whitespace().all(|w| w == "-"), "bakare has no ratio to itself: {t}");
        assert!(lines[3].contains("FAILED: exit status: 2: boom"), "{t}");
        assert!(lines[4].contains("skipped"), "{t}");
    }

    #[test]
    fn restore_table_shows_the_check() {
        let mut ok = row("bakare", done(1000, 1000, 50, None));
        ok.verified = Some(Ok(()));
        let mut bad = row("restic", done(2000, 1000, 50, None));
        bad.verified = Some(Err("x differs at byte 4".into()));
        let t = render_table(&[ok, bad], true);
        assert!(t.contains("identical"), "{t}");
        assert!(t.contains("MISMATCH: x differs at byte 4"), "{t}");
        assert!(t.contains("2.00x"), "{t}");
    }

    #[test]
    fn last_line_prefers_stderr() {
        assert_eq!(last_line(b"a\nerror: bad\n\n", b"out"), "error: bad");
        assert_eq!(last_line(b"", b"x\ny\n"), "y");
        assert_eq!(last_line(b"", b""), "no output");
    }

    #[test]
    fn runs_a_fake_tool_through_every_step() {
        // A bakare stand-in (a shell script that copies trees) checks the wiring of the phases,
        // the mutation, the restore layout and the check, without any real backup tool.
        let d = tempfile::tempdir().unwrap();
        let corpus = d.path().join("c");
        crate::corpus::generate(crate::corpus::Kind::Manyfiles, 64 << 10, &corpus, 1).unwrap();
        let work = d.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let mut opts = Options {
            corpus: corpus.clone(),
            tools: vec![Kind::Bakare],
            mutate_percent: 10.0,
            seed: 3,
            workdir: Some(work.clone()),
            bakare: Some(d.path().join("missing")),
            keep: false,
            timeout: Some(Duration::from_secs(60)),
        };
        let e = compare(&opts).unwrap_err().to_string();
        assert!(e.contains("none of the requested tools"), "{e}");

        // `run SRC` keeps a copy of SRC; `restore latest --target T` puts it back at T/SRC.
        let fake = d.path().join("fake-bakare");
        std::fs::write(
            &fake,
            "#!/bin/sh\nset -e\nr=\"$BAKARE_REPO\"\ncase \"$1\" in\n\
             init) mkdir -p \"$r\" ;;\n\
             run) rm -rf \"$r/last\"; cp -a \"$2\" \"$r/last\"; echo \"$2\" > \"$r/path\" ;;\n\
             restore) p=$(cat \"$r/path\"); mkdir -p \"$4$p\"; cp -a \"$r/last/.\" \"$4$p\" ;;\n\
             esac\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        opts.bakare = Some(fake);
        let results = compare(&opts).unwrap();
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert!(matches!(r.init, Cell::Done(_)), "{r:?}");
        assert_eq!(r.steps.len(), 4, "{r:?}");
        for (step, cell) in Step::ALL.iter().zip(&r.steps) {
            let Cell::Done(m) = cell else { panic!("{step:?}: {cell:?}") };
            assert_eq!(m.repo_bytes.is_some(), *step != Step::Restore, "{step:?}");
        }
        assert_eq!(r.verified, Some(Ok(())), "the restore of the mutated copy matches it");
        // The caller's corpus was not mutated: a fresh one with the same seed is identical.
        let fresh = d.path().join("fresh");
        crate::corpus::generate(crate::corpus::Kind::Manyfiles, 64 << 10, &fresh, 1).unwrap();
        measure::compare_trees(&corpus, &fresh).unwrap();
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0, "the work directory is removed");
    }
}
