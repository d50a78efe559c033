//! `stats`: what snapshots hold and what they cost in the repository (engine::ops::stats).
use anyhow::Result;
use clap::Args;
use engine::ops::stats::{self, Stats};
use engine::Repository;
use serde_json::json;

use crate::output::{self, Out};
use crate::snapshots::FilterArgs;

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Snapshots to count (ids, unique prefixes, or `latest`) [default: every snapshot the
    /// filters match]
    pub snapshots: Vec<String>,
    /// Also show each snapshot's figures: what it holds, and the raw bytes only it references
    /// (what forgetting it would free, before prune's repacking). `--json` always has them
    #[arg(long)]
    pub per_snapshot: bool,
    /// Which snapshots count (and what `latest` means)
    #[command(flatten)]
    pub filter: FilterArgs,
}

fn short(id: &str) -> &str {
    &id[..16.min(id.len())]
}

pub fn stats_cmd(repo: &Repository, json: bool, args: StatsArgs) -> Result<u8> {
    let filter = args.filter.filter()?;
    let all = crate::snapshots::listed(repo, "")?;
    let chosen = crate::snapshots::chosen(&all, &args.snapshots, &filter, true)?;
    let (s, warnings) = stats::stats(repo, &chosen)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let mut out = Out::new();
    if json {
        out.line(&to_json(&s).to_string())?;
    } else {
        print(&mut out, &s, args.per_snapshot)?;
    }
    out.finish()?;
    Ok(0)
}

fn to_json(s: &Stats) -> serde_json::Value {
    json!({
        "snapshots": s.snapshots.len(),
        "files": s.files, "dirs": s.dirs, "bytes": s.bytes,
        "blobs": s.data_blobs + s.tree_blobs, "data_blobs": s.data_blobs, "tree_blobs": s.tree_blobs,
        "raw_bytes": s.raw, "data_raw_bytes": s.data_raw, "stored_bytes": s.stored, "missing_blobs": s.missing,
        "compression_ratio": s.ratio(),
        "repository": {
            "packs": s.packs, "pack_bytes": s.pack_bytes, "blobs": s.index_blobs,
            "unused_blobs": s.unused_blobs, "unused_raw_bytes": s.unused_raw,
            "unused_stored_bytes": s.unused_stored,
        },
        "per_snapshot": s.snapshots.iter().map(|p| json!({
            "id": p.id, "files": p.files, "dirs": p.dirs, "bytes": p.bytes,
            "unique_blobs": p.unique_blobs, "unique_raw_bytes": p.unique_raw,
            "unique_data_raw_bytes": p.unique_data_raw,
        })).collect::<Vec<_>>(),
    })
}

fn print(out: &mut Out, s: &Stats, per_snapshot: bool) -> std::io::Result<()> {
    let size = |n: u64| format!("{} ({n} bytes)", output::size(n));
    out.line(&format!("snapshots:         {}", s.snapshots.len()))?;
    out.line(&format!("files:             {}", s.files))?;
    out.line(&format!("directories:       {}", s.dirs))?;
    out.line(&format!("logical size:      {}", size(s.bytes)))?;
    out.line(&format!(
        "after dedup:       {} in {} blobs ({} data, {} tree)",
        size(s.raw),
        s.data_blobs + s.tree_blobs,
        s.data_blobs,
        s.tree_blobs
    ))?;
    out.line(&format!("stored:            {} (after compression and encryption)", size(s.stored)))?;
    out.line(&format!("compression ratio: {:.2}", s.ratio()))?;
    if s.missing > 0 {
        out.line(&format!(
            "missing:           {} referenced blobs are in no pack (see `bakare check`)",
            s.missing
        ))?;
    }
    out.line("repository:")?;
    out.line(&format!("  packs:           {}, {}", s.packs, size(s.pack_bytes)))?;
    out.line(&format!("  blobs:           {}", s.index_blobs))?;
    out.line(&format!(
        "  unused by these snapshots: {} blobs, {} raw, {} stored",
        s.unused_blobs,
        output::size(s.unused_raw),
        output::size(s.unused_stored)
    ))?;
    if per_snapshot {
        out.line(&format!("{:<16}  {:>8}  {:>8}  {:>12}  {:>12}", "id", "files", "dirs", "size", "unique"))?;
        for p in &s.snapshots {
            out.line(&format!(
                "{:<16}  {:>8}  {:>8}  {:>12}  {:>12}",
                short(&p.id),
                p.files,
                p.dirs,
                output::size(p.bytes),
                output::size(p.unique_raw)
            ))?;
        }
    }
    Ok(())
}
