//! `dump`, and `restore --target -`: a snapshot's file to stdout, or a directory as a tar stream.
use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use engine::ops::dump::{self, DumpError, Notes, TarDump};
use engine::ops::zipdump::ZipDump;
use engine::repo::BlobReader;
use engine::restore::Memory;
use engine::tree::NodeKind;
use engine::Repository;

use crate::output;

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// Snapshot id (a unique prefix) or `latest`
    pub snapshot: String,
    /// A file of the snapshot (its content is written as it is), or a directory (written as an
    /// archive of it, named by its last component); `/` for the whole snapshot
    pub path: PathBuf,
    /// The archive a directory is written as
    #[arg(long, value_enum, default_value = "tar")]
    pub archive: Archive,
    /// Memory ceiling for the whole process, e.g. 256M, 1G (K/M/G are binary units)
    #[arg(long, value_parser = crate::parse_size_arg)]
    pub mem_limit: Option<u64>,
    /// What `latest` means
    #[command(flatten)]
    pub filter: crate::snapshots::FilterArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Archive {
    /// POSIX tar with GNU and PAX extensions (GNU tar reads the extended attributes with
    /// --xattrs --xattrs-include='*')
    Tar,
    /// Zip (deflated, zip64 past 4 GiB): modes, mtimes (2-second steps, 1980-2107) and
    /// symlinks; no owners, extended attributes, FIFOs or devices; names that are not UTF-8
    /// are left out and counted (exit 3). Its central directory is held until the end
    Zip,
}

/// Bytes the archive names of files with other names may take (hard links past it are
/// stored as copies): 64 bytes for each name `Memory` would track, at most 256 MiB.
fn linked_budget(memory: &Memory) -> usize {
    memory.linked.saturating_mul(64).min(256 << 20)
}

/// Bytes a zip's central directory may take: the reader cache's share of --mem-limit (at
/// least 16 MiB), or 1 GiB without one (about two million entries).
fn zip_budget(memory: &Memory) -> usize {
    if *memory == Memory::DEFAULT {
        1 << 30
    } else {
        memory.cache.max(16 << 20)
    }
}

/// Standard output, unbuffered by lines (a tar stream has no lines), buffered in large writes.
fn stdout() -> Result<BufWriter<File>> {
    let fd = std::io::stdout().as_fd().try_clone_to_owned().context("standard output")?;
    Ok(BufWriter::with_capacity(1 << 20, File::from(fd)))
}

/// The path as names joined by `/`, from the snapshot root, without a leading `/`.
fn snapshot_path(p: &std::path::Path) -> Vec<u8> {
    dump::names(p.as_os_str().as_bytes()).join(&b'/')
}

fn told(notes: &Notes) {
    if output::quiet() {
        return;
    }
    if notes.sockets > 0 {
        eprintln!("note: {} sockets left out (tar has no type for them)", notes.sockets);
    }
    if notes.xattrs > 0 {
        eprintln!("note: {} extended attributes left out: their names are not UTF-8", notes.xattrs);
    }
    if notes.privileged > 0 {
        eprintln!(
            "note: {} privileged extended attributes (trusted.*, security.*) left out (--no-owner)",
            notes.privileged
        );
    }
    if notes.specials > 0 {
        eprintln!("note: {} FIFOs and device nodes left out (--no-special)", notes.specials);
    }
    if notes.link_copies > 0 {
        eprintln!(
            "note: {} hard links stored as copies (their first name is not in the archive, or the archive has no links)",
            notes.link_copies
        );
    }
    if notes.unsupported > 0 {
        eprintln!(
            "note: {} FIFOs, sockets and device nodes left out (zip has no type for them)",
            notes.unsupported
        );
    }
    if notes.names > 0 {
        eprintln!(
            "warning: {} entries left out: their names or link targets are not UTF-8, which zip needs",
            notes.names
        );
    }
}

/// The exit code of a dump that ended: a closed pipe (`| head`) is a quiet success.
fn ended(r: std::result::Result<Notes, DumpError>) -> Result<u8> {
    match r {
        Ok(notes) => {
            told(&notes);
            // Entries left out, not only details of them: the archive is partial.
            Ok(if notes.names > 0 { crate::EXIT_PARTIAL } else { 0 })
        }
        Err(e) if e.is_closed_pipe() => Ok(0),
        Err(e) => Err(e.into()),
    }
}

pub fn dump(repo: &Repository, args: DumpArgs) -> Result<u8> {
    let engine::repo::SnapshotEntry { id, snapshot: snap, .. } =
        repo.find_snapshot_matching(&args.snapshot, &args.filter.filter()?)?;
    let short = &id[..16.min(id.len())];
    let (index, warnings) = repo.load_index()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let memory = Memory::plan(repo, &index, args.mem_limit)?;
    let reader = BlobReader::with_cache(repo, &index, memory.cache)?;
    let path = snapshot_path(&args.path);
    let Some(node) = engine::find::lookup(&reader, &snap.tree, &path)? else {
        bail!("{} is not in snapshot {short}", args.path.display());
    };
    match &node.kind {
        NodeKind::File { .. } | NodeKind::HardLink { .. } => {
            let mut out = stdout()?;
            ended(dump::write_file(&reader, &node, &path, &mut out).map(|()| Notes::default()))
        }
        NodeKind::Dir { subtree } => {
            if std::io::stdout().is_terminal() {
                bail!(
                    "{} is a directory: not writing an archive to a terminal (redirect or pipe it)",
                    args.path.display()
                );
            }
            // Named from the directory's parent, so extracting makes the directory itself.
            let strip = path.iter().rposition(|&c| c == b'/').map_or(0, |slash| slash + 1);
            if let Archive::Zip = args.archive {
                let mut zip = ZipDump::new(&reader, stdout()?, zip_budget(&memory)).held(memory.held);
                let r = match path.is_empty() {
                    true => zip.add_tree(b"", subtree, 0),
                    false => zip.add(&path, &node, strip),
                };
                return ended(r.and_then(|()| zip.finish()));
            }
            let mut tar = TarDump::new(&reader, stdout()?, linked_budget(&memory)).held(memory.held);
            let r = match path.is_empty() {
                true => tar.add_tree(b"", subtree, 0),
                false => tar.add(&path, &node, strip),
            };
            let notes = tar.notes.clone();
            ended(r.and_then(|()| tar.finish()).map(|_| notes))
        }
        _ => bail!(
            "{} is not a file or a directory in snapshot {short} (dump its directory for an archive with it)",
            args.path.display()
        ),
    }
}

/// `restore --target -`: what restore would restore, as a tar stream named from the snapshot
/// root (as restore places it below its target).
pub fn restore_to_stdout(repo: &Repository, args: crate::RestoreArgs) -> Result<u8> {
    for (set, flag) in [
        (args.delete, "--delete"),
        (args.dry_run, "--dry-run"),
        (args.verify, "--verify"),
        (!args.exclude.is_empty(), "--exclude"),
    ] {
        if set {
            bail!("--target - writes a tar stream to standard output: {flag} does not apply");
        }
    }
    if std::io::stdout().is_terminal() {
        bail!("--target - writes a tar stream: not to a terminal (redirect or pipe it)");
    }
    let engine::repo::SnapshotEntry { id, snapshot: snap, .. } =
        repo.find_snapshot_matching(&args.snapshot, &args.filter.filter()?)?;
    let (index, warnings) = repo.load_index()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let include = crate::find::restore_paths(repo, &index, &id, &snap, args.paths, args.glob, &args.include)?;
    let memory = Memory::plan(repo, &index, args.mem_limit)?;
    let reader = BlobReader::with_cache(repo, &index, memory.cache)?;
    let mut paths: Vec<Vec<u8>> = include.iter().map(|p| snapshot_path(p)).collect();
    // In component order (`/` sorts first), a path's descendants follow it at once: one pass
    // drops them (a glob may match a million paths), as each is in the archive with it.
    let component_order = |p: &Vec<u8>| p.iter().map(|&c| if c == b'/' { 0 } else { c }).collect::<Vec<u8>>();
    paths.sort_by_cached_key(component_order);
    paths.dedup();
    let under = |p: &[u8], q: &[u8]| q.is_empty() || (p.starts_with(q) && p.get(q.len()) == Some(&b'/'));
    let mut kept: Vec<&Vec<u8>> = Vec::new();
    for p in &paths {
        if kept.last().is_none_or(|q| !under(p, q)) {
            kept.push(p);
        }
    }
    let mut tar = TarDump::new(&reader, stdout()?, linked_budget(&memory))
        .held(memory.held)
        .owners(!args.no_owner)
        .specials(!args.no_special);
    let walk = || -> std::result::Result<(), DumpError> {
        if kept.is_empty() || kept.iter().any(|p| p.is_empty()) {
            return tar.add_tree(b"", &snap.tree, 0);
        }
        for p in kept {
            let node = engine::find::lookup(&reader, &snap.tree, p).map_err(|source| {
                DumpError::Snapshot { path: format!("/{}", String::from_utf8_lossy(p)), source }
            })?;
            if let Some(node) = node {
                tar.add(p, &node, 0)?;
            }
        }
        Ok(())
    };
    let r = walk();
    let notes = tar.notes.clone();
    ended(r.and_then(|()| tar.finish()).map(|_| notes))
}
