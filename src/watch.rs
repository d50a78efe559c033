//! `watch`: a daemon that runs `run` when the watched trees change, listing only the
//! directories that changed (the `watch` crate); every other directory is taken whole from
//! the files cache. Whenever the record of changes may be incomplete, the run scans everything
//! and says why.
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use engine::backup;
use engine::Repository;
use serde_json::json;
use watch::Watcher;

use crate::commands::{execute, prepare};
use crate::RunArgs;

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// A snapshot at most this often, of what changed since the last one (none when nothing
    /// did, unless --always), e.g. 15m, 1h
    #[arg(long, value_parser = parse_duration, default_value = "1h", help_heading = "Watching")]
    pub every: Duration,
    /// A snapshot shortly after each burst of changes settles (see --settle), instead of
    /// one each --every
    #[arg(long, help_heading = "Watching")]
    pub continuous: bool,
    /// With --continuous: how long the trees must stay quiet before a snapshot; a burst that
    /// never settles is saved after 12 times as long (at least 1 minute)
    #[arg(long, value_parser = parse_duration, default_value = "5s", help_heading = "Watching")]
    pub settle: Duration,
    /// A snapshot every run, even when nothing it holds changed (by default a run whose tree
    /// is the last run's writes none), and each --every even when nothing changed
    #[arg(long, help_heading = "Watching")]
    pub always: bool,
    /// Scan everything at least this often, whatever the watcher saw
    #[arg(long, value_parser = parse_duration, default_value = "24h", help_heading = "Watching")]
    pub full_scan_every: Duration,
    /// Print the state of the watcher of these paths (last run, what is changed, whether the
    /// next run scans everything and why) and exit
    #[arg(long, help_heading = "Watching")]
    pub status: bool,
    /// Print a systemd service unit that runs this command (without this option), and exit
    #[arg(long, help_heading = "Watching")]
    pub print_systemd_unit: bool,
    /// Audit the repository (on a `bakare serve` or a friend's, serve: or peer:) this often,
    /// after a run: challenges --audit-sample packs (`bakare peers audit`); the result is in
    /// the status
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", help_heading = "Watching")]
    pub audit_every: Option<Duration>,
    /// Packs each audit challenges
    #[arg(long, default_value_t = 32, value_name = "N", help_heading = "Watching")]
    pub audit_sample: usize,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration =
        s.parse().map_err(|e| format!("{s:?} is not a duration like 30s, 15m or 2h: {e}"))?;
    let d = Duration::try_from(d).map_err(|_| format!("{s:?}: a duration must not be negative"))?;
    // Zero would spin; beyond a year, instants overflow long before anything is due.
    if d < Duration::from_millis(100) || d > Duration::from_secs(366 * 86_400) {
        return Err(format!("{s:?}: between 100ms and 366 days"));
    }
    Ok(d)
}

/// A run is in progress: a signal then ends the process as it would end `run`.
static RUNNING: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

/// A word quoted for a systemd `ExecStart=` line.
fn unit_word(w: &[u8]) -> String {
    let s = String::from_utf8_lossy(w);
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_./=:,@+".contains(&c)) {
        return s.into_owned();
    }
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '%' => q.push_str("%%"),
            '$' => q.push_str("$$"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A systemd service running this program with the arguments it was given (less
/// `--print-systemd-unit`): a user service (default.target) or a system one
/// (multi-user.target), with `service` lines added to its [Service] section.
pub(crate) fn systemd_unit(name: &str, description: &str, user: bool, service: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the path of this program")?;
    let mut words = vec![unit_word(exe.as_os_str().as_bytes())];
    let args: Vec<_> = std::env::args_os().skip(1).filter(|a| a != "--print-systemd-unit").collect();
    words.extend(args.iter().map(|a| unit_word(a.as_bytes())));
    let header = if user {
        format!(
            "# bakare {name}: a user service (~/.config/systemd/user/bakare-{name}.service):\n\
             #   systemctl --user daemon-reload && systemctl --user enable --now bakare-{name}\n\
             # As a system service (/etc/systemd/system/), WantedBy=multi-user.target.\n"
        )
    } else {
        format!(
            "# bakare {name}: a system service (/etc/systemd/system/bakare-{name}.service):\n\
             #   systemctl daemon-reload && systemctl enable --now bakare-{name}\n"
        )
    };
    let mut lines = String::new();
    for l in service {
        lines.push_str(l);
        lines.push('\n');
    }
    Ok(format!(
        "{header}\
         [Unit]\n\
         Description={description}\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={}\n\
         {lines}\
         \n\
         [Install]\n\
         WantedBy={}\n",
        words.join(" "),
        if user { "default.target" } else { "multi-user.target" }
    ))
}

/// The watcher's state, written after each run and as changes come (`--status`).
struct Status {
    path: PathBuf,
    value: serde_json::Value,
}

impl Status {
    fn write(&self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.path.with_extension("watch.tmp");
        let body = format!("{}\n", self.value);
        // Temporary name, then rename: a reader never sees half a file. Not fsync'ed: it is
        // rewritten often, and a lost one is only stale.
        let written = std::fs::write(&tmp, body).and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            eprintln!("bakare watch: cannot write the status file {}: {e}", self.path.display());
        }
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// What a files cache file is, to tell whether another run rewrote it since.
fn identity(p: &Path) -> Option<(u64, u64, i64, i64)> {
    let md = std::fs::metadata(p).ok()?;
    Some((md.dev(), md.ino(), md.mtime(), md.mtime_nsec()))
}

pub fn watch(
    repo_at: &engine::repo::Location,
    default: bool,
    key: Option<&Path>,
    json: bool,
    args: WatchArgs,
    source: Arc<dyn io::Source>,
) -> Result<u8> {
    if args.print_systemd_unit {
        let service = ["Restart=on-failure", "RestartSec=30", "Nice=10", "IOSchedulingClass=idle"];
        print!("{}", systemd_unit("watch", "bakare watch: continuous backup", true, &service)?);
        return Ok(0);
    }
    let audit = match (args.audit_every, repo_at) {
        (None, _) => None,
        (Some(every), engine::repo::Location::Serve(url)) => Some(Audits {
            every,
            sample: args.audit_sample,
            location: url.clone(),
            key: key.map(Path::to_path_buf),
            last: None,
        }),
        (Some(_), _) => anyhow::bail!(
            "--audit-every audits a repository on a bakare serve (serve:https://HOST:PORT/REPO or peer:NAME)"
        ),
    };
    let mut base = args.run;
    if base.stdin || base.stdin_from_command {
        anyhow::bail!("watch backs up the paths named on its command line, not standard input");
    }
    if !base.files_from.is_empty() || !base.files_from_verbatim.is_empty() || !base.files_from_raw.is_empty()
    {
        anyhow::bail!("watch backs up the paths named on its command line (no --files-from)");
    }
    if base.dry_run {
        anyhow::bail!("watch has no --dry-run: `bakare run --dry-run` shows what a run would save");
    }
    if base.no_cache {
        anyhow::bail!(
            "watch needs the files cache (it takes unchanged directories from it): drop --no-cache"
        );
    }
    let cache_dir = base
        .cache_dir
        .clone()
        .or_else(engine::filescache::default_dir)
        .context("cannot find a cache directory (set HOME or --cache-dir)")?;
    base.cache_dir = Some(cache_dir.clone());
    base.paths = base
        .paths
        .iter()
        .map(|p| std::path::absolute(p).with_context(|| format!("{}: cannot make it absolute", p.display())))
        .collect::<Result<_>>()?;
    let host = base.host.clone().unwrap_or_else(backup::default_host);
    base.host = Some(host.clone());
    let repo = crate::commands::open_for_run(repo_at, default, key, json, false)?;
    let cache = backup::cache_file_of(&repo, &host, &cache_dir, &base.paths)?;
    let mut status_path = cache.clone().into_os_string();
    status_path.push(".watch");
    let status_path = PathBuf::from(status_path);
    if args.status {
        return print_status(&status_path, json);
    }

    let roots = stages::scan::normalize_roots(&base.paths).context("cannot read the paths to watch")?;
    let followed: Vec<&Path> = roots.iter().filter(|r| r.follow).map(|r| r.path.as_path()).collect();
    // bakare's own repository and caches: every run writes them, and none backs them up.
    let ignored: Vec<PathBuf> = [repo.location.local().map(Path::to_path_buf), Some(cache_dir.clone())]
        .into_iter()
        .flatten()
        .filter_map(|p| std::path::absolute(p).ok())
        .collect();
    // What the exclude patterns leave out is not watched: a build directory's churn calls
    // for no run.
    let patterns = {
        let mut probe = base.clone();
        let mut rules = crate::selection::read(&mut probe)?.rules;
        // --exclude itself is added by the run (`BackupOptions::excludes`), as here.
        for p in &base.exclude {
            rules.exclude(p, false, "--exclude")?;
        }
        rules.patterns()?
    };
    let excluded: watch::Excluded = Box::new(move |p| patterns.is_match(Path::new(OsStr::from_bytes(p))));
    let root_paths: Vec<PathBuf> = roots.iter().map(|r| r.path.clone()).collect();
    let mut watcher =
        Watcher::excluding(&root_paths, &ignored, excluded).context("cannot start watching (inotify)")?;
    if let Some(p) = followed.first() {
        watcher.blind(format!("{}/ is followed through a symlink, which is not watched", p.display()));
    }
    eprintln!("bakare watch: watching {} directories under {} paths", watcher.watched(), roots.len());
    let watcher = Arc::new(Mutex::new(watcher));
    let (ping, pings) = mpsc::channel::<()>();

    // Events are taken on a thread of their own, so that the kernel's queue is drained while
    // a run goes on.
    let (fd, mounts) = {
        let w = watcher.lock().unwrap_or_else(|p| p.into_inner());
        (w.fd().try_clone_to_owned()?, w.mounts().map(std::fs::File::try_clone).transpose()?)
    };
    let events = {
        let (watcher, ping) = (watcher.clone(), ping.clone());
        std::thread::Builder::new().name("watch".into()).spawn(move || loop {
            let waited = watch::wait(&fd, mounts.as_ref());
            let mut w = watcher.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(true) = waited {
                w.mounts_changed();
            }
            match waited.and_then(|_| w.drain()) {
                Ok(changed) => {
                    drop(w);
                    if changed && ping.send(()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Nothing is drained from now on: no run can trust the record.
                    w.blind(format!("cannot read file events ({e}); restart the watcher"));
                    drop(w);
                    let _ = ping.send(());
                    return;
                }
            }
        })?
    };
    {
        let ping = ping.clone();
        crate::interrupt::on_signal(move |name| {
            if RUNNING.load(Ordering::SeqCst) {
                eprintln!("\nbakare watch: interrupted by {name} during a run: {}", crate::interrupt::RUN);
                let sig = match name {
                    "SIGINT" => libc::SIGINT,
                    "SIGTERM" => libc::SIGTERM,
                    _ => libc::SIGHUP,
                };
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
            eprintln!("bakare watch: stopped by {name}");
            STOP.store(true, Ordering::SeqCst);
            let _ = ping.send(());
        })?;
    }

    let mut d = Daemon {
        audit,
        repo,
        json,
        base,
        source,
        watcher,
        cache,
        cache_id: None,
        full: Some("the watcher just started: what changed while it was not running is unknown".into()),
        last_full: Instant::now(),
        full_every: args.full_scan_every,
        status: Status { path: status_path, value: json!({}) },
        events,
        backoff: None,
        last_tree: None,
        always: args.always,
        runs: 0,
        roots: roots.iter().map(|r| r.path.as_os_str().as_bytes().to_vec()).collect(),
    };
    d.status("idle", None);
    let max_wait = (args.settle * 12).max(Duration::from_secs(60));
    loop {
        d.run_once();
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        d.audit_if_due();
        if let Some(wait) = d.backoff {
            let until = Instant::now() + wait;
            while !STOP.load(Ordering::SeqCst) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ = pings.recv_timeout(left);
            }
            if STOP.load(Ordering::SeqCst) {
                break;
            }
        }
        let started = Instant::now();
        if args.continuous {
            // Something changed (or a full scan is due), then quiet for --settle.
            loop {
                if d.due() {
                    break;
                }
                match pings.recv_timeout(d.full_every.saturating_sub(d.last_full.elapsed())) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(0),
                }
                if STOP.load(Ordering::SeqCst) {
                    break;
                }
                d.status("idle", None);
            }
            let first = Instant::now();
            while !STOP.load(Ordering::SeqCst) && first.elapsed() < max_wait {
                match pings.recv_timeout(args.settle) {
                    Ok(()) => continue,
                    Err(_) => break,
                }
            }
            // At most one run per --settle.
            let spent = started.elapsed();
            if spent < args.settle && !STOP.load(Ordering::SeqCst) {
                std::thread::sleep(args.settle - spent);
            }
        } else {
            let mut deadline = started + args.every;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if d.due() || args.always {
                        break;
                    }
                    deadline += args.every;
                    continue;
                }
                match pings.recv_timeout(left) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Ok(0),
                }
                if STOP.load(Ordering::SeqCst) {
                    break;
                }
                d.status("idle", None);
            }
        }
        if STOP.load(Ordering::SeqCst) {
            break;
        }
    }
    d.status("stopped", None);
    Ok(0)
}

/// `--audit-every`: storage audits between runs.
struct Audits {
    every: Duration,
    sample: usize,
    location: String,
    key: Option<PathBuf>,
    last: Option<Instant>,
}

struct Daemon {
    audit: Option<Audits>,
    repo: Repository,
    json: bool,
    base: RunArgs,
    source: Arc<dyn io::Source>,
    watcher: Arc<Mutex<Watcher>>,
    /// The files cache the runs use, and what it was when the last run left it.
    cache: PathBuf,
    cache_id: Option<(u64, u64, i64, i64)>,
    /// Why the next run scans everything, if it must.
    full: Option<String>,
    last_full: Instant,
    full_every: Duration,
    status: Status,
    /// The thread that takes events: if it ended, nothing is recorded any more.
    events: std::thread::JoinHandle<()>,
    /// How long to wait after a run failed (doubling, up to 30 minutes).
    backoff: Option<Duration>,
    /// The root tree of the last run: a run that makes the same one writes no snapshot.
    last_tree: Option<Vec<stages::BlobId>>,
    /// `--always`: a snapshot every run, changed or not.
    always: bool,
    runs: u64,
    /// The roots' paths, as bytes.
    roots: Vec<Vec<u8>>,
}

impl Daemon {
    fn watcher(&self) -> std::sync::MutexGuard<'_, Watcher> {
        self.watcher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a run is due: something changed, or a full scan is.
    fn due(&self) -> bool {
        self.full.is_some() || self.last_full.elapsed() >= self.full_every || self.watcher().changed()
    }

    /// Why the next run must scan everything, if it must.
    fn full_reason(&self) -> Option<String> {
        if let Some(why) = &self.full {
            return Some(why.clone());
        }
        if self.events.is_finished() {
            return Some("the thread that takes file events ended; restart the watcher".into());
        }
        if let Some(why) = self.watcher().full_scan_reason() {
            return Some(why.to_string());
        }
        if self.last_full.elapsed() >= self.full_every {
            return Some(format!("a full scan is due (--full-scan-every {:?})", self.full_every));
        }
        if identity(&self.cache) != self.cache_id {
            return Some("the files cache was written by another run since the last one".into());
        }
        None
    }

    fn status(&mut self, state: &str, run: Option<serde_json::Value>) {
        let (dirty, watched) = {
            let w = self.watcher();
            (w.dirty_dirs(), w.watched())
        };
        let next = self.full_reason().map_or(serde_json::Value::Null, Into::into);
        let v = &mut self.status.value;
        v["pid"] = std::process::id().into();
        v["runs"] = self.runs.into();
        v["state"] = state.into();
        v["watched_directories"] = watched.into();
        v["changed_directories"] = dirty.into();
        v["next_run_full_scan"] = next;
        v["updated"] = now_rfc3339().into();
        if let Some(run) = run {
            v["last_run"] = run;
        }
        self.status.write();
    }

    /// One run: of the changed directories, or of everything when the record may be
    /// incomplete. A run that finds the watcher missed a change is followed by a full scan.
    /// Audits the repository when `--audit-every` has passed since the last audit (the first
    /// comes after the first run); the outcome goes into the status as `last_audit`.
    fn audit_if_due(&mut self) {
        let Some(a) = &mut self.audit else { return };
        if a.last.is_some_and(|t| t.elapsed() < a.every) {
            return;
        }
        a.last = Some(Instant::now());
        let (location, sample, key) = (a.location.clone(), a.sample, a.key.clone());
        self.status("auditing", None);
        let mut v = match crate::peers::audit_at(&location, sample, key.as_deref()) {
            Ok(r) => {
                eprintln!("bakare watch: {}", r.summary(&location));
                for (p, w) in &r.failed {
                    eprintln!("bakare watch: audit FAILED {p}: {w}");
                }
                for (id, n) in &r.at_risk {
                    eprintln!("bakare watch: at risk on {location}: snapshot {id} ({n} paths)");
                }
                r.json(&location)
            }
            Err(e) => {
                eprintln!("bakare watch: audit of {location}: {e:#}");
                serde_json::json!({ "repo": location, "error": format!("{e:#}") })
            }
        };
        v["time"] = now_rfc3339().into();
        self.status.value["last_audit"] = v;
        self.status("idle", None);
    }

    fn run_once(&mut self) {
        loop {
            if STOP.load(Ordering::SeqCst) {
                return;
            }
            // Events already queued belong to this run: a change made just before it starts
            // is in it.
            let drained = self.watcher().drain();
            if let Err(e) = drained {
                self.watcher().blind(format!("cannot read file events ({e}); restart the watcher"));
            }
            let reason = self.full_reason();
            let taken = self.watcher().take();
            let (watched, reason) = match (reason, taken) {
                (Some(why), _) | (None, Err(why)) => (None, Some(why)),
                (None, Ok(dirty)) => (Some(Arc::new(dirty)), None),
            };
            match (&reason, &watched) {
                (Some(why), _) => {
                    eprintln!("bakare watch: run {}: scanning everything: {why}", self.runs + 1)
                }
                (None, Some(d)) => {
                    eprintln!("bakare watch: run {}: listing {} changed directories", self.runs + 1, d.len())
                }
                (None, None) => {}
            }
            self.status("running", None);
            let started = now_rfc3339();
            let mut args = self.base.clone();
            let unless = self.last_tree.clone().filter(|_| !self.always);
            let ran = prepare(&mut args).and_then(|prepared| {
                RUNNING.store(true, Ordering::SeqCst);
                let r = execute(
                    &self.repo,
                    self.json,
                    args,
                    prepared,
                    self.source.clone(),
                    watched.clone(),
                    unless,
                );
                RUNNING.store(false, Ordering::SeqCst);
                r
            });
            self.runs += 1;
            let kind = if reason.is_some() { "full" } else { "watched" };
            match ran {
                Ok(ran) => {
                    // Directories above the roots are never taken whole (the scan stats them
                    // on its way), and others' changes in them are not ours.
                    if let Some(dirs) = &ran.unrecorded {
                        let roots = self.roots.clone();
                        let mut w = self.watcher();
                        for d in dirs.iter().filter(|d| roots.iter().any(|r| watch::under(d, r))) {
                            w.relist(d);
                        }
                    }
                    if reason.is_some() {
                        self.full = None;
                        self.last_full = Instant::now();
                    }
                    if ran.unrecorded.is_none() {
                        self.full = Some("too many directories were not recorded in the files cache".into());
                    }
                    let now = identity(&self.cache);
                    // Every run that ends well commits a new cache file: the same file means
                    // this one was not saved (a full disk, say), and the next run cannot take
                    // anything from it.
                    if now.is_none() || now == self.cache_id {
                        self.full = Some("the last run could not save the files cache".into());
                    }
                    self.cache_id = now;
                    self.backoff = None;
                    self.last_tree = Some(ran.tree.clone());
                    // No snapshot when nothing it holds changed (a change in an excluded
                    // directory, a file written back as it was), unless --always.
                    let snapshot = (!ran.snapshot.is_empty()).then_some(ran.snapshot);
                    let tree: Vec<String> = ran.tree.iter().map(hex::encode).collect();
                    let run = json!({"started": started, "ended": now_rfc3339(), "kind": kind,
                        "snapshot": snapshot, "tree": tree, "exit": ran.code, "full_scan_reason": reason});
                    self.status("idle", Some(run));
                    return;
                }
                Err(e) => {
                    let gap = e
                        .downcast_ref::<engine::Error>()
                        .is_some_and(|e| matches!(e, engine::Error::WatchGap(_)));
                    eprintln!("bakare watch: run {} failed: {e:#}", self.runs);
                    match watched {
                        Some(d) => self.watcher().restore(Arc::unwrap_or_clone(d)),
                        None => self.full = reason.clone(),
                    }
                    let run = json!({"started": started, "ended": now_rfc3339(), "kind": kind,
                        "error": format!("{e:#}"), "full_scan_reason": reason});
                    if gap {
                        // Whatever made the watcher miss it may still be in place.
                        self.watcher().rebuild(format!("{e:#}"));
                        self.full = Some(format!("{e:#}"));
                        self.status("idle", Some(run));
                        if STOP.load(Ordering::SeqCst) {
                            return;
                        }
                        continue;
                    }
                    let wait = self
                        .backoff
                        .map_or(Duration::from_secs(30), |b| (b * 2).min(Duration::from_secs(1800)));
                    self.backoff = Some(wait);
                    eprintln!("bakare watch: the next run in {} s at the earliest", wait.as_secs());
                    self.status("idle", Some(run));
                    return;
                }
            }
        }
    }
}

fn print_status(path: &Path, json: bool) -> Result<u8> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no watcher has run for these paths (no status file {})", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not a status file", path.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{v}")?;
        return Ok(0);
    }
    let s = |k: &str| v[k].as_str().map(str::to_string).unwrap_or_else(|| v[k].to_string());
    // A watcher killed outright leaves its last word: say so when its process is gone.
    let alive = v["pid"].as_u64().is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "bakare")
    });
    let state = match (s("state").as_str(), alive) {
        ("stopped", _) => "stopped".to_string(),
        (st, false) => format!("not running (it ended without saying so; it was {st})"),
        (st, true) => st.to_string(),
    };
    writeln!(out, "state: {state} (pid {}, as of {})", s("pid"), s("updated"))?;
    writeln!(out, "watched directories: {}", s("watched_directories"))?;
    writeln!(out, "changed directories since the last run: {}", s("changed_directories"))?;
    match v["next_run_full_scan"].as_str() {
        Some(why) => writeln!(out, "next run: scans everything: {why}")?,
        None => writeln!(out, "next run: lists the changed directories only")?,
    }
    let r = &v["last_run"];
    if r.is_object() {
        let f = |k: &str| r[k].as_str().map(str::to_string).unwrap_or_else(|| r[k].to_string());
        match r["error"].as_str() {
            Some(e) => writeln!(out, "last run: {} ({}), failed: {e}", f("ended"), f("kind"))?,
            None => match r["snapshot"].as_str() {
                Some(id) => writeln!(
                    out,
                    "last run: {} ({}), snapshot {}, exit {}",
                    f("ended"),
                    f("kind"),
                    id.get(..16).unwrap_or_default(),
                    f("exit")
                )?,
                None => writeln!(
                    out,
                    "last run: {} ({}), nothing changed: no snapshot, exit {}",
                    f("ended"),
                    f("kind"),
                    f("exit")
                )?,
            },
        }
    }
    Ok(0)
}
