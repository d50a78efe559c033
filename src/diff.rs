//! `bakare diff A B [PATH]`: what was added, removed and changed between two snapshots.
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use engine::diff::{self, Entry, Side};
use engine::repo::BlobReader;
use engine::Repository;
use serde_json::json;

use crate::output::{self, Out};

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot (id prefix or `latest`)
    pub a: String,
    /// The newer snapshot (id prefix or `latest`)
    pub b: String,
    /// Only at or below this path (e.g. /home/me/src)
    pub path: Option<PathBuf>,
    /// Memory ceiling for the whole process, e.g. 128M (as restore's: it sizes the reader's
    /// cache and the tree entries the walk may hold on each side; a directory past them is
    /// not compared, and named)
    #[arg(long, value_parser = crate::parse_size_arg)]
    pub mem_limit: Option<u64>,
    /// What `latest` means
    #[command(flatten)]
    pub filter: crate::snapshots::FilterArgs,
}

fn kind_name(c: char) -> &'static str {
    match c {
        '-' | 'h' => "file",
        'd' => "directory",
        'l' => "symlink",
        'p' => "fifo",
        's' => "socket",
        'c' => "char device",
        'b' => "block device",
        _ => "?",
    }
}

fn side_json(s: &Option<Side>) -> serde_json::Value {
    match s {
        Some(s) => json!({"type": s.kind.to_string(), "size": s.size, "mtime": output::time(s.mtime_ns)}),
        None => serde_json::Value::Null,
    }
}

/// `(1.2 KiB)`, `(1.0 KiB -> 1.2 KiB)`, `(file -> directory)`: what the change was.
fn detail(e: &Entry) -> String {
    let size = |s: &Side| matches!(s.kind, '-' | 'h').then(|| output::size(s.size));
    match (e.change, &e.old, &e.new) {
        (diff::Change::TypeChanged, Some(a), Some(b)) => {
            format!("  ({} -> {})", kind_name(a.kind), kind_name(b.kind))
        }
        (diff::Change::Modified, Some(a), Some(b)) => match (size(a), size(b)) {
            (Some(x), Some(y)) => format!("  ({x} -> {y})"),
            _ => String::new(),
        },
        (diff::Change::Metadata, _, _) => "  (mode, owner or mtime)".into(),
        (_, a, b) => b.as_ref().or(a.as_ref()).and_then(size).map(|s| format!("  ({s})")).unwrap_or_default(),
    }
}

pub fn diff(repo: &Repository, json: bool, args: DiffArgs) -> Result<u8> {
    let filter = args.filter.filter()?;
    let engine::repo::SnapshotEntry { id: ida, snapshot: a, .. } =
        repo.find_snapshot_matching(&args.a, &filter)?;
    let engine::repo::SnapshotEntry { id: idb, snapshot: b, .. } =
        repo.find_snapshot_matching(&args.b, &filter)?;
    let (index, warnings) = repo.load_index()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let memory = engine::restore::Memory::plan(repo, &index, args.mem_limit)?;
    let reader = BlobReader::with_cache(repo, &index, memory.cache)?;
    // Both sides' open directories share one bound.
    let tally = engine::repo::Tally::with_limit(memory.held);
    let base: Vec<u8> = match &args.path {
        Some(p) => {
            let mut b = Vec::new();
            for c in p.as_os_str().as_bytes().split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".") {
                b.push(b'/');
                b.extend_from_slice(c);
            }
            if b.is_empty() {
                b.push(b'/');
            }
            b
        }
        None => b"/".to_vec(),
    };
    let na = engine::find::lookup(&reader, &a.tree, &base)?;
    let nb = engine::find::lookup(&reader, &b.tree, &base)?;
    if na.is_none() && nb.is_none() {
        bail!("{} is in neither snapshot", String::from_utf8_lossy(&base));
    }
    let mut out = Out::new();
    // JSON is written as it comes too: one object, its changes streamed into their array.
    if json {
        let head = json!({"a": ida, "b": idb}).to_string();
        out.bytes(format!("{},\"changes\":[", head.trim_end_matches('}')).as_bytes())?;
    }
    let mut first = true;
    let mut failed: Option<std::io::Error> = None;
    let (sum, warnings) = diff::diff(&reader, &tally, &base, na.as_ref(), nb.as_ref(), |e| {
        if json {
            let change = json!({
                "change": e.change.symbol().to_string(), "path": String::from_utf8_lossy(&e.path),
                "old": side_json(&e.old), "new": side_json(&e.new),
            });
            let sep = if std::mem::take(&mut first) { "" } else { "," };
            if let Err(err) = out.bytes(format!("{sep}{change}").as_bytes()) {
                failed.get_or_insert(err);
            }
            return;
        }
        let dir = e.new.as_ref().or(e.old.as_ref()).is_some_and(|s| s.kind == 'd');
        let line = [
            format!("{} ", e.change.symbol()).into_bytes(),
            e.path.clone(),
            if dir && e.change != diff::Change::TypeChanged { b"/".to_vec() } else { Vec::new() },
            detail(&e).into_bytes(),
            b"\n".to_vec(),
        ]
        .concat();
        if let Err(err) = out.bytes(&line) {
            failed.get_or_insert(err);
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let summary = json!({
        "added": sum.added, "removed": sum.removed, "modified": sum.modified,
        "type_changed": sum.type_changed, "metadata_only": sum.metadata,
        "added_bytes": sum.added_bytes, "removed_bytes": sum.removed_bytes,
        "unreadable_directories": sum.unreadable,
    });
    if json {
        out.line(&format!("],\"summary\":{summary}}}"))?;
    } else {
        out.line(&format!(
            "{} added, {} removed, {} modified, {} type changed, {} metadata only; +{} -{} (snapshots {} -> {})",
            sum.added,
            sum.removed,
            sum.modified,
            sum.type_changed,
            sum.metadata,
            output::size(sum.added_bytes),
            output::size(sum.removed_bytes),
            &ida[..16],
            &idb[..16]
        ))?;
    }
    out.finish()?;
    Ok(if sum.unreadable > 0 { crate::EXIT_PARTIAL } else { 0 })
}
