//! End-to-end runs of the real `bakare` binary: init, a first backup, a second backup with
//! nothing changed, and a restore that must give back the corpus byte for byte.
//!
//! Fairness: every step is a separate process measured by `wait4`, so start-up (key loading,
//! index loading) is included, as a user would pay it. The corpus was usually just written, so
//! it is in the page cache: these are warm-cache numbers, an upper bound on disk-bound speed.
//! The repository and restore target live on the same filesystem as `--workdir`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::measure::{self, Outcome, Usage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoMode {
    Auto,
    Uring,
    Pool,
}

impl IoMode {
    fn arg(self) -> &'static str {
        match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "uring",
            IoMode::Pool => "pool",
        }
    }
}

#[derive(Debug)]
pub struct Options {
    pub corpus: PathBuf,
    pub bakare: Option<PathBuf>,
    pub mem_limit: Option<String>,
    pub io: IoMode,
    /// Where the temporary repository, home and restore target go [default: the system's].
    pub workdir: Option<PathBuf>,
    pub keep: bool,
    /// A step still running after this is killed and the run fails.
    pub timeout: Option<Duration>,
}

struct Step {
    name: &'static str,
    usage: Usage,
    /// Repository size after the step.
    repo_bytes: u64,
    /// Whether the step processes the whole corpus (for MB/s and files/s).
    moves_corpus: bool,
    json: Option<serde_json::Value>,
}

/// The release binary next to this workspace: `<workspace>/target/release/bakare`.
pub fn default_bakare() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("release").join("bakare")
}

pub fn run(opts: &Options) -> Result<()> {
    let bakare = opts.bakare.clone().unwrap_or_else(default_bakare);
    if !bakare.is_file() {
        bail!(
            "bakare binary not found at {}: build it with cargo build --release (or pass --bakare PATH)",
            bakare.display()
        );
    }
    let corpus = opts.corpus.canonicalize().with_context(|| format!("corpus {}", opts.corpus.display()))?;
    let (files, bytes) = measure::tree_size(&corpus)?;
    let work = measure::work_dir("bakare-bench-", opts.workdir.as_deref())?;
    let (repo, home, target) =
        (work.path().join("repo"), work.path().join("home"), work.path().join("restore"));
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;

    let cmd = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(&bakare);
        c.env("BAKARE_REPO", &repo)
            .env("HOME", &home)
            // Keys and data would follow these instead of HOME.
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("BAKARE_KEY")
            .env_remove("BAKARE_IO")
            .args(args);
        c
    };
    let mut run_args: Vec<std::ffi::OsString> =
        vec!["--json".into(), "run".into(), "--io".into(), opts.io.arg().into()];
    if let Some(m) = &opts.mem_limit {
        run_args.extend(["--mem-limit".into(), m.into()]);
    }
    run_args.push(corpus.clone().into());
    let run_args: Vec<&std::ffi::OsStr> = run_args.iter().map(|a| a.as_os_str()).collect();
    let init_args = ["init".as_ref()];
    let restore_args = ["restore".as_ref(), "latest".as_ref(), "--target".as_ref(), target.as_os_str()];

    println!(
        "corpus {}: {files} files, {:.1} MiB; bakare {}",
        corpus.display(),
        mib(bytes),
        bakare.display()
    );
    let plan: [(&str, &[&std::ffi::OsStr], bool); 4] = [
        ("init", &init_args, false),
        ("run", &run_args, true),
        ("run (no change)", &run_args, true),
        ("restore", &restore_args, true),
    ];
    let mut steps = Vec::new();
    for (name, args, moves_corpus) in plan {
        let out = measure::run(&mut cmd(args), opts.timeout).with_context(|| format!("step {name}"))?;
        check(name, &out)?;
        let json = if name.starts_with("run") { Some(parse_json(name, &out)?) } else { None };
        let (_, repo_bytes) = measure::tree_size(&repo)?;
        steps.push(Step { name, usage: out.usage, repo_bytes, moves_corpus, json });
    }

    let restored = target.join(corpus.strip_prefix("/").unwrap_or(&corpus));
    measure::compare_trees(&corpus, &restored)
        .with_context(|| format!("the restore in {} is not the corpus", restored.display()))?;

    print_table(&steps, files, bytes);
    println!("restore verified: {} is byte-identical to {}", restored.display(), corpus.display());
    if opts.keep {
        println!("kept {}", work.keep().display());
    }
    Ok(())
}

fn check(name: &str, out: &Outcome) -> Result<()> {
    if !out.status.success() {
        bail!("step {name} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn parse_json(name: &str, out: &Outcome) -> Result<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    // The report is the last line; anything before it is not ours to parse.
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    serde_json::from_str(line).with_context(|| format!("step {name} printed no JSON report: {text:?}"))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn print_table(steps: &[Step], files: u64, bytes: u64) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!();
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "step", "wall s", "CPU s", "CPU util", "RSS MiB", "MB/s", "files/s", "repo MiB"
    );
    for s in steps {
        let wall = s.usage.wall.as_secs_f64();
        let cpu = s.usage.cpu().as_secs_f64();
        let (mbs, fps) = if s.moves_corpus && wall > 0.0 {
            (format!("{:.1}", bytes as f64 / 1e6 / wall), format!("{:.0}", files as f64 / wall))
        } else {
            ("-".to_string(), "-".to_string())
        };
        println!(
            "{:<16} {:>8.2} {:>8.2} {:>9} {:>9.1} {:>9} {:>10} {:>10.1}",
            s.name,
            wall,
            cpu,
            format!("{:.2}/{cores}", if wall > 0.0 { cpu / wall } else { 0.0 }),
            s.usage.max_rss_kib as f64 / 1024.0,
            mbs,
            fps,
            mib(s.repo_bytes)
        );
    }
    println!();
    for s in steps {
        if let Some(j) = &s.json {
            let f = |k: &str| j.get(k).map(|v| v.to_string()).unwrap_or_else(|| "?".into());
            println!(
                "{}: bakare reports files={} bytes_read={} new_blobs={} new_bytes={} stored_bytes={} errors={} \
                 read_mode={} budget={} budget_peak={} peak_rss={}",
                s.name,
                f("files"),
                f("bytes_read"),
                f("new_blobs"),
                f("new_bytes"),
                f("stored_bytes"),
                f("errors"),
                f("read_mode"),
                f("budget"),
                f("budget_peak"),
                f("peak_rss")
            );
        }
    }
}
