//! One function per command: open what it needs, call the engine, print, choose the exit code.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use engine::backup::{self, BackupOptions};
use engine::keys::Key;
use engine::repo::Location;
use engine::restore::{self, RestoreOptions};
use engine::tree::{Node, NodeKind};
use engine::{Error, Repository};
use serde_json::json;
use stages::read::ReadMode;

use crate::output::{self, Out};
use crate::{Cli, Command, IoMode, KeyCommand, LsArgs, RestoreArgs, RunArgs, EXIT_PARTIAL};

fn default_repo() -> Result<Location> {
    dirs::data_dir()
        .map(|d| Location::Local(d.join("bakare").join("repo")))
        .context("cannot find a data directory for the default repository (set HOME, or use --repo)")
}

fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

pub fn dispatch(cli: Cli, source: Arc<dyn io::Source>) -> Result<u8> {
    output::set_verbosity(cli.quiet, cli.verbose);
    // Generated from the command line alone: before anything reads a repository location, sets
    // up keys or installs signal handlers.
    match &cli.command {
        Command::Completions(args) => return crate::generate::completions(args),
        Command::Man(args) => return crate::generate::man_pages(args, cli.json),
        // Needs no repository: it names none.
        Command::Join(args) => return crate::join::join_cmd(args, cli.json),
        _ => {}
    }
    if let Command::Peers(args) = cli.command {
        return crate::peers::peers_cmd(args, cli.json, cli.key.as_deref());
    }
    // A server opens no repository of its own and handles its signals itself.
    if let Command::Serve(args) = cli.command {
        return crate::serve::serve_cmd(cli.json, args);
    }
    if cli.repo.len() > 1 && !matches!(cli.command, Command::Run(_)) {
        bail!("only `run` takes several --repo (it stores the snapshot in each); give this command one");
    }
    let repo_path = match cli.repo.first() {
        Some(p) => Location::parse(p)?,
        None => default_repo()?,
    };
    let copies = cli.repo.iter().skip(1).map(|p| Location::parse(p)).collect::<engine::Result<Vec<_>>>()?;
    let labels: Vec<String> = cli.repo.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let default = cli.repo.is_empty();
    let key = cli.key.as_deref();
    let trust_all = cli.trust_all;
    let command = cli.passphrase_command.clone();
    engine::keys::set_passphrase_source(Box::new(move |path| {
        crate::passphrase::existing(command.as_deref(), path)
            .map_err(|e| engine::Error::Key(format!("{e:#}")))
    }));
    let open = || -> Result<Repository> {
        let mut repo = crate::open_repo(&repo_path, key)?;
        repo.trust_all = trust_all;
        Ok(repo)
    };
    match cli.command {
        Command::Run(_) => crate::interrupt::install(crate::interrupt::RUN)?,
        // A mount handles signals itself: it unmounts before it ends.
        Command::Mount(_) => {}
        // A watcher stops between runs by itself, and ends as `run` would during one.
        Command::Watch(_) => {}
        _ => crate::interrupt::install(crate::interrupt::OTHER)?,
    }
    match cli.command {
        Command::Init(args) => init(&repo_path, key, cli.json, args, cli.passphrase_command.as_deref()),
        Command::Run(args) if !copies.is_empty() => {
            let all = std::iter::once(repo_path).chain(copies).zip(labels).map(|(l, n)| (n, l)).collect();
            crate::copies::run(all, key, cli.json, args, source)
        }
        Command::Run(args) => run(&repo_path, default, key, cli.json, args, source),
        Command::Watch(args) => crate::watch::watch(&repo_path, default, key, cli.json, args, source),
        Command::Snapshots(args) => crate::snapshots::snapshots(&open()?, cli.json, args),
        Command::Tag(args) => crate::snapshots::tag_cmd(&open()?, cli.json, args),
        Command::Rewrite(args) => crate::rewrite::rewrite_cmd(&open()?, cli.json, args),
        Command::Copy(args) => crate::copy::copy_cmd(&open()?, cli.json, args),
        Command::Stats(args) => crate::stats::stats_cmd(&open()?, cli.json, args),
        Command::Ls(args) => ls(&open()?, cli.json, args),
        Command::Restore(args) if args.target.as_os_str() == "-" => {
            crate::dump::restore_to_stdout(&open()?, args)
        }
        Command::Restore(args) => restore(&open()?, cli.json, args),
        Command::Dump(args) => crate::dump::dump(&open()?, args),
        Command::Mount(args) => crate::mount::mount(open()?, args),
        Command::Key(cmd) => key_cmd(&open()?, cli.json, cmd),
        Command::Check(args) => crate::maintenance::check_cmd(&open()?, cli.json, args),
        Command::Forget(args) => crate::retention::forget_cmd(&open()?, cli.json, args),
        Command::Prune(args) => crate::retention::prune_cmd(&open()?, cli.json, args),
        Command::Config(args) => crate::retention::config_cmd(&open()?, cli.json, args),
        Command::Repair(cmd) => crate::maintenance::repair_cmd(&open()?, cli.json, cmd),
        Command::Sync(args) => sync(cli.json, args),
        Command::Migrate(args) => crate::maintenance::migrate_cmd(&repo_path, key, cli.json, args),
        Command::Find(args) => crate::find::find(&open()?, cli.json, args),
        Command::Diff(args) => crate::diff::diff(&open()?, cli.json, args),
        // Handled above, before any setup; here for completeness.
        Command::Completions(args) => crate::generate::completions(&args),
        Command::Man(args) => crate::generate::man_pages(&args, cli.json),
        Command::Serve(args) => crate::serve::serve_cmd(cli.json, args),
        Command::Join(args) => crate::join::join_cmd(&args, cli.json),
        Command::Peers(args) => crate::peers::peers_cmd(args, cli.json, key),
    }
}

fn announce_init(repo: &Repository, json: bool) -> Result<()> {
    if output::quiet() {
        // Even quiet: a new secret key must never go unannounced (a cron job's first run).
        eprintln!(
            "created repository at {}; secret key saved to {}: keep a copy of it somewhere safe",
            repo.location,
            repo.key.path.display()
        );
        return Ok(());
    }
    let msg = format!(
        "created repository {} at {}\nsecret key saved to {} (fingerprint {})\n\
         Keep a copy of that key file somewhere safe: without it these backups cannot be restored.\n\
         For machines that should only back up, export a key without the secret part, one per machine:\n  \
         bakare key export --backup-only --name NAME FILE",
        hex::encode(repo.config.repo_id),
        repo.location,
        repo.key.path.display(),
        repo.key.fingerprint()
    );
    if json {
        eprintln!("{msg}");
    } else {
        println!("{msg}");
    }
    Ok(())
}

fn init(
    path: &Location,
    key: Option<&Path>,
    json: bool,
    args: crate::InitArgs,
    command: Option<&str>,
) -> Result<u8> {
    if let Some(invitation) = &args.join {
        crate::join::join_for(invitation, path, json)?;
    }
    let passphrase = if args.passphrase { Some(crate::passphrase::new(command)?) } else { None };
    let repo = crate::init_repo(path, key, passphrase, args.force, args.compression, args.parity)?;
    announce_init(&repo, json)?;
    if json {
        let v = json!({
            "repository": hex::encode(repo.config.repo_id),
            "compression": repo.config.compression.to_string(),
            "parity": repo.config.parity,
            "path": repo.location.to_string(),
            "key": repo.key.path.display().to_string(),
            "fingerprint": repo.key.fingerprint(),
        });
        println!("{v}");
    }
    Ok(0)
}

/// `default`: `path` is the default repository, which `run` creates on first use. Any other
/// location without a repository is an error: a typo or an unmounted disk must not receive
/// backups, with a new key, while the real repository gets none.
pub(crate) fn run(
    path: &Location,
    default: bool,
    key: Option<&Path>,
    json: bool,
    mut args: RunArgs,
    source: Arc<dyn io::Source>,
) -> Result<u8> {
    let (stream, selection) = prepare(&mut args)?;
    let repo = open_for_run(path, default, key, json, args.dry_run)?;
    Ok(execute(&repo, json, args, (stream, selection), source, None, None)?.code)
}

/// What a run reads from its options before anything else: a stream to back up, or the
/// paths and selection rules.
pub(crate) type Prepared = (Option<crate::stdin::StreamSpec>, crate::selection::Selection);

pub(crate) fn prepare(args: &mut RunArgs) -> Result<Prepared> {
    let stream = crate::stdin::spec(args)?;
    let selection = match stream {
        // A stream is one file: there is nothing to select.
        Some(_) => {
            crate::selection::Selection { rules: Default::default(), paths: Vec::new(), words: Vec::new() }
        }
        None => crate::selection::read(args)?,
    };
    Ok((stream, selection))
}

/// The repository `run` writes to: the default one is made on first use.
pub(crate) fn open_for_run(
    path: &Location,
    default: bool,
    key: Option<&Path>,
    json: bool,
    dry_run: bool,
) -> Result<Repository> {
    Ok(match crate::open_repo(path, key) {
        Ok(r) => r,
        // As restic's `backup --dry-run`: a dry run needs a repository to compare with, and
        // creates none.
        Err(Error::NoRepository(at)) if dry_run => anyhow::bail!(
            "no repository at {at}: --dry-run compares with an existing repository and creates none \
             (`bakare init` creates one)"
        ),
        Err(Error::NoRepository(_)) if key.is_none() && default => {
            let parity = engine::format::parity::DEFAULT_PERCENT;
            let repo = crate::init_repo(path, None, None, false, engine::config::Compression::Auto, parity)?;
            announce_init(&repo, json)?;
            repo
        }
        Err(Error::NoRepository(at)) if !default => anyhow::bail!(
            "no repository at {at}: `run` creates only the default repository; one named with \
             --repo or BAKARE_REPO is created by `bakare init` (is the path right, the disk mounted?)"
        ),
        Err(e) => return Err(e.into()),
    })
}

/// What `execute` did, for `watch`.
pub(crate) struct Ran {
    pub code: u8,
    /// Empty when none was written (`unless_tree`).
    pub snapshot: String,
    pub tree: Vec<stages::BlobId>,
    /// `BackupResult::unrecorded`.
    pub unrecorded: Option<Vec<Vec<u8>>>,
}

/// One backup, and its summary on stdout.
pub(crate) fn execute(
    repo: &Repository,
    json: bool,
    args: RunArgs,
    (stream, selection): Prepared,
    source: Arc<dyn io::Source>,
    watched: Option<Arc<stages::dirty::Dirty>>,
    unless_tree: Option<Vec<stages::BlobId>>,
) -> Result<Ran> {
    let read_mode = match args.io_mode {
        IoMode::Auto => ReadMode::Auto,
        IoMode::Uring => ReadMode::Uring,
        IoMode::Pool => ReadMode::Pool,
    };
    let opts = BackupOptions {
        description: args.description,
        paths: selection.paths,
        excludes: args.exclude,
        select: selection.rules,
        selection: selection.words,
        mem_limit: args.mem_limit,
        read_mode,
        workers: args.workers.map_or_else(workers, usize::from),
        source,
        host: args.host.unwrap_or_else(backup::default_host),
        tags: args.tag.iter().flat_map(|t| engine::ops::filter::tag_list(t)).collect(),
        cache_dir: if args.no_cache { None } else { args.cache_dir.or_else(engine::filescache::default_dir) },
        progress: Arc::default(),
        on_file: list_changes(output::verbose(), json),
        dry_run: args.dry_run,
        watched,
        unless_tree,
    };
    let stream = stream.map(crate::stdin::StreamSpec::start).transpose()?;
    let show = !json && !output::quiet() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let display = crate::progress::Display::start(opts.progress.clone(), show);
    let dry_run = opts.dry_run;
    let asked_workers = opts.workers;
    let r = match stream {
        Some(s) => backup::backup_stream(repo, opts, s),
        None => backup::backup(repo, opts),
    };
    if r.is_ok() && !dry_run {
        crate::interrupt::committed();
    }
    display.finish();
    let r = r?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if r.workers < asked_workers && !json && !output::quiet() {
        eprintln!(
            "note: --mem-limit leaves room for {} workers per stage, not {asked_workers} (each takes memory \
             outside the data budget: {} MiB with parity on, {} without, and more at a compression level \
             above the default)",
            r.workers,
            backup::worker_reserve(1) >> 20,
            backup::WORKER_RESERVE >> 20
        );
    }
    let s = &r.snapshot.stats;
    let secs = s.duration_ns as f64 / 1e9;
    let rate = if secs > 0.0 { (s.bytes as f64 / secs) as u64 } else { 0 };
    let read_rate = if secs > 0.0 { (s.read_bytes as f64 / secs) as u64 } else { 0 };
    let mode = match r.read_mode {
        ReadMode::Uring => "io_uring",
        _ => "threads",
    };
    let mut out = Out::summary(json);
    let (new_files, changed_files, _) = r.changes.unwrap_or_default();
    if output::quiet() && !json {
        // The summary is left out, the files that could not be saved are not.
        for e in &r.snapshot.errors {
            output::error_line(&e.path, &e.why);
        }
    }
    if json {
        let errors: Vec<_> = r
            .snapshot
            .errors
            .iter()
            .map(|e| json!({"path": String::from_utf8_lossy(&e.path), "error": e.why}))
            .collect();
        let mut v = json!({
            "dry_run": r.dry_run.is_some(),
            "snapshot": (!r.snapshot_id.is_empty()).then_some(&r.snapshot_id),
            "tree": r.snapshot.tree.iter().map(hex::encode).collect::<Vec<_>>(),
            "files": s.files, "dirs": s.dirs, "bytes": s.bytes, "bytes_read": s.read_bytes,
            "unchanged_files": s.unchanged_files, "reused_dirs": r.reused_dirs,
            "new_blobs": s.new_blobs, "new_bytes": s.new_bytes, "stored_bytes": s.stored_bytes,
            "errors": errors, "seconds": secs, "bytes_per_second": rate,
            "read_mode": mode, "budget": r.budget, "budget_peak": r.budget_peak, "workers": r.workers,
            "peak_rss": output::peak_rss(),
        });
        // Unchanged files are `unchanged_files` above (the same count).
        if let (Some((new, changed, _)), Some(o)) = (r.changes, v.as_object_mut()) {
            o.insert("new_files".into(), new.into());
            o.insert("changed_files".into(), changed.into());
        }
        if let (Some(t), Some(o)) = (r.dry_run, v.as_object_mut()) {
            o.remove("snapshot");
            o.remove("stored_bytes");
            o.insert("new_data_blobs".into(), t.data_blobs.into());
            o.insert("new_data_bytes".into(), t.data_bytes.into());
            o.insert("new_tree_blobs".into(), t.tree_blobs.into());
            o.insert("new_tree_bytes".into(), t.tree_bytes.into());
        }
        out.line(&v.to_string())?;
    } else if let Some(t) = r.dry_run {
        out.line("dry run: nothing was written to the repository or the files cache")?;
        out.line(&format!(
            "  would save {} files ({}), {} directories; scanned in {:.1} s",
            s.files,
            output::size(s.bytes),
            s.dirs,
            secs
        ))?;
        match r.changes {
            Some((new, changed, unchanged)) => out.line(&format!(
                "  files: {new} new, {changed} changed, {unchanged} unchanged since the last run (files cache)"
            ))?,
            None => out.line(&format!("  files: {} unchanged since the last run", s.unchanged_files))?,
        }
        out.line(&format!(
            "  read {} ({mode}); {} files would not be read",
            output::size(s.read_bytes),
            s.unchanged_files
        ))?;
        out.line(&format!(
            "  would add new data: ~{} in {} blobs before compression (plus {} of directory metadata)",
            output::size(t.data_bytes),
            t.data_blobs,
            output::size(t.tree_bytes)
        ))?;
        if !r.snapshot.errors.is_empty() {
            out.line(&format!("  {} could not be read:", r.snapshot.errors.len()))?;
        }
        for e in &r.snapshot.errors {
            out.bytes(b"    ")?;
            out.bytes(&e.path)?;
            out.line(&format!(": {}", e.why))?;
        }
    } else {
        match r.snapshot_id.get(..16) {
            Some(id) => out.line(&format!("snapshot {id} saved"))?,
            None => out.line("nothing changed since the last snapshot: no snapshot saved")?,
        }
        out.line(&format!(
            "  {} files ({}), {} directories in {:.1} s ({}/s)",
            s.files,
            output::size(s.bytes),
            s.dirs,
            secs,
            output::size(rate)
        ))?;
        out.line(&format!(
            "  read {} ({}/s, {mode}); {} files unchanged since the last run, not read; {} directories unchanged",
            output::size(s.read_bytes),
            output::size(read_rate),
            s.unchanged_files,
            r.reused_dirs
        ))?;
        if r.changes.is_some() {
            out.line(&format!("  {new_files} files new, {changed_files} changed since the last run"))?;
        }
        out.line(&format!(
            "  new data: {} in {} blobs, stored as {} after dedup and compression",
            output::size(s.new_bytes),
            s.new_blobs,
            output::size(s.stored_bytes)
        ))?;
        if !r.snapshot.errors.is_empty() {
            out.line(&format!("  {} could not be saved:", r.snapshot.errors.len()))?;
        }
        for e in &r.snapshot.errors {
            out.bytes(b"    ")?;
            out.bytes(&e.path)?;
            out.line(&format!(": {}", e.why))?;
        }
    }
    out.finish()?;
    let code = if r.snapshot.errors.is_empty() { 0 } else { EXIT_PARTIAL };
    Ok(Ran { code, snapshot: r.snapshot_id, tree: r.snapshot.tree, unrecorded: r.unrecorded })
}

/// `run -v`: `new PATH` and `changed PATH` lines on stdout (stderr with `--json`, whose
/// stdout is one document) as the scan finds them; `-vv` also `unchanged PATH`. Paths are
/// written as bytes.
fn list_changes(verbose: u8, json: bool) -> Option<engine::changes::OnFile> {
    use engine::changes::Change;
    if verbose == 0 {
        return None;
    }
    Some(Arc::new(move |change: Change, path: &Path| {
        if change == Change::Unchanged && verbose < 2 {
            return;
        }
        let mut line = Vec::with_capacity(path.as_os_str().len() + 12);
        line.extend_from_slice(change.word().as_bytes());
        line.push(b' ');
        line.extend_from_slice(path.as_os_str().as_bytes());
        line.push(b'\n');
        listed(json, &line);
    }))
}

/// One line of a `-v` listing, written whole (so lines from several threads never interleave)
/// to stdout, or to stderr beside `--json`; a closed pipe is not an error.
fn listed(json: bool, line: &[u8]) {
    let _ = match json {
        true => std::io::Write::write_all(&mut std::io::stderr().lock(), line),
        false => std::io::Write::write_all(&mut std::io::stdout().lock(), line),
    };
}

fn rel_components(p: &Path) -> Vec<&OsStr> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect()
}

fn ls(repo: &Repository, json: bool, args: LsArgs) -> Result<u8> {
    let filter = args.filter.filter()?;
    let engine::repo::SnapshotEntry { id, snapshot: snap, .. } =
        repo.find_snapshot_matching(&args.snapshot, &filter)?;
    let (index, warnings) = repo.load_index()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let memory = engine::restore::Memory::plan(repo, &index, args.mem_limit)?;
    let reader = engine::repo::BlobReader::with_cache(repo, &index, memory.cache)?;
    let tally = engine::repo::Tally::with_limit(memory.held);
    // Find the directory to list.
    let mut tree = snap.tree.clone();
    let mut base = PathBuf::from("/");
    if let Some(p) = &args.path {
        for comp in rel_components(p) {
            match reader.entry(&tree, comp.as_bytes())?.map(|n| n.kind) {
                Some(NodeKind::Dir { subtree }) => tree = subtree,
                Some(_) => bail!("{} is not a directory in snapshot {}", p.display(), &id[..16]),
                None => bail!("{} is not in snapshot {}", p.display(), &id[..16]),
            }
            base.push(comp);
        }
    }
    // Depth first, each entry before what it holds (as `find`), one tree blob held per level:
    // a directory of millions of entries is listed in the memory of one blob.
    let mut out = Out::new();
    if json {
        out.bytes(b"[")?;
    }
    let mut first = true;
    let mut stack = vec![(base, reader.entries(&tree, &tally))];
    let mut walk = || -> Result<()> {
        while let Some((dir, entries)) = stack.last_mut() {
            let n = match entries.next() {
                Ok(Some(n)) => n,
                Ok(None) => {
                    stack.pop();
                    continue;
                }
                Err(e) => bail!("{}: {e} (a damaged snapshot)", dir.display()),
            };
            let path = dir.join(OsStr::from_bytes(&n.name));
            if json {
                if !first {
                    out.bytes(b",")?;
                }
                out.bytes(node_json(&path, &n).to_string().as_bytes())?;
            } else if args.long {
                out.bytes(long_prefix(&n).as_bytes())?;
                out.path_line("", &path)?;
            } else {
                out.path_line("", &path)?;
            }
            first = false;
            if let (true, NodeKind::Dir { subtree }) = (args.recursive, &n.kind) {
                if stack.len() >= engine::tree::MAX_DEPTH {
                    let max = engine::tree::MAX_DEPTH;
                    bail!("{}: deeper than {max} levels (a damaged snapshot)", path.display());
                }
                let entries = reader.entries(subtree, &tally);
                stack.push((path, entries));
            }
        }
        Ok(())
    };
    let walked = walk();
    // Closed whatever happened: what was listed stays valid JSON.
    if json {
        out.line("]")?;
    }
    out.finish()?;
    walked?;
    Ok(0)
}

fn node_json(path: &Path, n: &Node) -> serde_json::Value {
    json!({
        "path": path.to_string_lossy(),
        "type": n.type_char().to_string(),
        "mode": format!("{:o}", n.mode & 0o7777),
        "size": n.size(),
        "mtime": output::time(n.mtime_ns),
        "uid": n.uid, "gid": n.gid,
    })
}

fn long_prefix(n: &Node) -> String {
    format!(
        "{}{:04o} {:>6} {:>6} {:>12} {}  ",
        n.type_char(),
        n.mode & 0o7777,
        n.uid,
        n.gid,
        n.size(),
        output::time(n.mtime_ns)
    )
}

fn restore(repo: &Repository, json: bool, args: RestoreArgs) -> Result<u8> {
    let found = repo.find_snapshot_matching(&args.snapshot, &args.filter.filter()?)?;
    if !json && !output::quiet() {
        eprintln!(
            "restoring snapshot {} of {} from {}, written by {}",
            &found.id[..16.min(found.id.len())],
            output::time(found.snapshot.time_ns),
            found.snapshot.host,
            found.writer()
        );
    }
    let engine::repo::SnapshotEntry { id, snapshot: snap, .. } = found;
    let (index, warnings) = repo.load_index()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let include = crate::find::restore_paths(repo, &index, &id, &snap, args.paths, args.glob, &args.include)?;
    let opts = RestoreOptions {
        target: args.target.clone(),
        include,
        workers: 4,
        owner: !args.no_owner,
        special: !args.no_special,
        delete: args.delete,
        dry_run: args.dry_run,
        verify: args.verify,
        exclude: args.exclude.clone(),
        mem_limit: args.mem_limit,
        on_file: (output::verbose() > 0).then(|| {
            let word: &'static [u8] = if args.dry_run { b"would restore " } else { b"restored " };
            let f: restore::OnRestored = Arc::new(move |path: &Path| {
                let mut line = word.to_vec();
                line.extend_from_slice(path.as_os_str().as_bytes());
                line.push(b'\n');
                listed(json, &line);
            });
            f
        }),
        overwrite: match args.overwrite {
            crate::Overwrite::Always => restore::Overwrite::Always,
            crate::Overwrite::IfChanged => restore::Overwrite::IfChanged,
            crate::Overwrite::IfNewer => restore::Overwrite::IfNewer,
            crate::Overwrite::Never => restore::Overwrite::Never,
        },
    };
    let started = std::time::Instant::now();
    let r = restore::restore(repo, &index, &snap, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    let mut out = Out::summary(json);
    if output::quiet() && !json {
        for (p, why) in &r.errors {
            output::error_line(p.as_os_str().as_bytes(), why);
        }
        // Notes are warnings (attributes the target would not take, links made as copies).
        for note in &r.notes {
            eprintln!("warning: {note}");
        }
        for (pack, blocks) in &r.corrected {
            eprintln!("note: {}", corrected_line(pack, *blocks));
        }
    }
    if json {
        let corrected: Vec<_> =
            r.corrected.iter().map(|(pack, blocks)| json!({"pack": pack, "blocks": blocks})).collect();
        let errors: Vec<_> =
            r.errors.iter().map(|(p, why)| json!({"path": p.to_string_lossy(), "error": why})).collect();
        let v = json!({
            "snapshot": id, "dry_run": args.dry_run, "files": r.files, "dirs": r.dirs,
            "bytes": r.bytes, "seconds": secs, "errors": errors, "notes": r.notes,
            "replaced": r.replaced, "replaced_bytes": r.replaced_bytes, "kept": r.kept, "deleted": r.deleted,
            "deleted_bytes": r.deleted_bytes, "verified": r.verified, "excluded": r.excluded,
            "corrected_packs": r.corrected.len(), "corrected": corrected,
        });
        out.line(&v.to_string())?;
    } else {
        let (done, would) = if args.dry_run { ("would restore", "would be ") } else { ("restored", "") };
        out.line(&format!(
            "{done} {} files, {} directories, {} from snapshot {} to {} in {:.1} s",
            r.files,
            r.dirs,
            output::size(r.bytes),
            &id[..16],
            args.target.display(),
            secs
        ))?;
        if r.replaced > 0 || r.kept > 0 {
            out.line(&format!(
                "  already in the target: {} files ({}) {would}replaced, {} kept (--overwrite {})",
                r.replaced,
                output::size(r.replaced_bytes),
                r.kept,
                clap::ValueEnum::to_possible_value(&args.overwrite)
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
            ))?;
        }
        if r.excluded > 0 {
            out.line(&format!("  {} entries left out by --exclude", r.excluded))?;
        }
        if args.verify {
            out.line(&format!("  verified {} files: read back, equal to the snapshot", r.verified))?;
        }
        if args.delete {
            let (n, size) = (r.deleted, output::size(r.deleted_bytes));
            out.line(&format!("  not in the snapshot: {n} entries ({size} of files) {would}deleted"))?;
        }
        for note in &r.notes {
            out.line(&format!("  note: {note}"))?;
        }
        for (pack, blocks) in &r.corrected {
            out.line(&format!("  note: {}", corrected_line(pack, *blocks)))?;
        }
        if !r.errors.is_empty() {
            out.line(&format!("  {} could not be restored:", r.errors.len()))?;
        }
        for (p, why) in &r.errors {
            out.path_line("    ", p)?;
            out.line(&format!("      {why}"))?;
        }
    }
    out.finish()?;
    Ok(if r.errors.is_empty() { 0 } else { EXIT_PARTIAL })
}

/// What a reader repaired in a pack from its parity, for notes.
pub(crate) fn corrected_line(pack: &str, blocks: usize) -> String {
    let s = if blocks == 1 { "" } else { "s" };
    format!("{pack}: {blocks} damaged 4 KiB block{s} repaired from parity")
}

fn key_cmd(repo: &Repository, json: bool, cmd: KeyCommand) -> Result<u8> {
    use engine::ops::writers;
    match cmd {
        KeyCommand::Export { file, backup_only: true, name } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(|n| n.strip_suffix(".key").unwrap_or(n).to_string())
                    .filter(|n| engine::keys::valid_writer_name(n))
                    .context("give the writer a name with --name (letters, digits, '.', '_', '-', '@')")?,
            };
            if file.exists() {
                bail!("{} exists: not replacing it", file.display());
            }
            let k = writers::export_backup_key(repo, &name)?;
            k.save(&file).with_context(|| format!("writing {}", file.display()))?;
            output::say(format_args!(
                "wrote backup-only key for writer {name} (fingerprint {}) to {}: it can back up, not restore",
                engine::signing::fingerprint(&k.snapshot_signer()?.public()),
                file.display()
            ));
        }
        KeyCommand::Export { file, backup_only: false, name } => {
            if name.is_some() {
                bail!("--name names a backup-only key's writer: add --backup-only");
            }
            let k = Key::load(&repo.key.path)?;
            k.identity()?;
            k.save(&file).with_context(|| format!("writing {}", file.display()))?;
            output::say(format_args!("wrote full key to {}", file.display()));
        }
        KeyCommand::Show => {
            let kind = match (&repo.key.identity, &repo.key.name) {
                (Some(_), _) => "full (can restore)".to_string(),
                (None, Some(n)) => format!("backup-only, writer {n}"),
                (None, None) => "backup-only".to_string(),
            };
            println!("key {}: {kind}, fingerprint {}", repo.key.path.display(), repo.key.fingerprint());
        }
        KeyCommand::List => {
            let (all, warnings) = writers::list(repo)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let mut out = Out::new();
            let time = |t: Option<i64>| t.map(output::time).unwrap_or_else(|| "-".into());
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|l| {
                        json!({
                            "name": l.writer.name, "fingerprint": engine::signing::fingerprint(&l.writer.key),
                            "registered": output::time(l.writer.registered_ns),
                            "revoked": l.writer.revoked_ns.map(output::time),
                            "snapshots": l.snapshots, "last_snapshot": l.last_snapshot_ns.map(output::time),
                        })
                    })
                    .collect();
                out.line(&serde_json::Value::Array(v).to_string())?;
            } else {
                out.line(&format!(
                    "{:<20}  {:<19}  {:<19}  {:<19}  {:>9}  last snapshot",
                    "writer", "fingerprint", "registered (UTC)", "revoked", "snapshots"
                ))?;
                for l in &all {
                    out.line(&format!(
                        "{:<20}  {:<19}  {}  {:<19}  {:>9}  {}",
                        l.writer.name,
                        engine::signing::fingerprint(&l.writer.key),
                        output::time(l.writer.registered_ns),
                        time(l.writer.revoked_ns),
                        l.snapshots,
                        time(l.last_snapshot_ns)
                    ))?;
                }
            }
            out.finish()?;
        }
        KeyCommand::Passwd { remove } => {
            let mut k = Key::load(&repo.key.path)?;
            k.identity()?;
            k.passphrase =
                if remove { None } else { Some(crate::passphrase::new_from("BAKARE_NEW_PASSPHRASE", None)?) };
            k.rewrite().with_context(|| format!("rewriting {}", k.path.display()))?;
            let what = if remove { "no passphrase now" } else { "protected by the new passphrase" };
            output::say(format_args!("{}: {what}", k.path.display()));
        }
        KeyCommand::Revoke { name } => {
            let gone = writers::revoke(repo, &name)?;
            for w in gone {
                output::say(format_args!(
                    "revoked writer {} ({}): its snapshots are ignored unless --trust-all; forget them when you are sure",
                    w.name,
                    engine::signing::fingerprint(&w.key)
                ));
            }
        }
    }
    Ok(0)
}

fn sync(json: bool, args: crate::SyncArgs) -> Result<u8> {
    let (from, to) = (Location::parse(&args.from)?, Location::parse(&args.to)?);
    if from == to {
        bail!("--from and --to are the same place");
    }
    let (a, b) = (crate::open_backend(&from)?, crate::open_backend(&to)?);
    let started = std::time::Instant::now();
    let r = engine::sync::sync(a.as_ref(), b.as_ref(), args.jobs.max(1))?;
    let secs = started.elapsed().as_secs_f64();
    for v in &r.vanished {
        eprintln!("warning: {v} vanished from {from} during the sync (pruned there); not copied");
    }
    let mut out = Out::summary(json);
    let bytes = r.packs.bytes + r.segments.bytes + r.snapshots.bytes;
    if json {
        let v = json!({
            "from": from.to_string(), "to": to.to_string(), "config_copied": r.config_copied,
            "packs": r.packs.objects, "segments": r.segments.objects, "snapshots": r.snapshots.objects,
            "bytes": bytes, "already_present": r.present, "vanished": r.vanished, "seconds": secs,
        });
        out.line(&v.to_string())?;
    } else {
        out.line(&format!(
            "copied {} packs, {} index segments, {} snapshots ({}) from {from} to {to} in {secs:.1} s; {} objects were there already",
            r.packs.objects,
            r.segments.objects,
            r.snapshots.objects,
            output::size(bytes),
            r.present
        ))?;
    }
    out.finish()?;
    Ok(0)
}
