//! `rewrite`: snapshots again without the paths that match exclude patterns (restic's
//! `rewrite`), e.g. a leaked secret or a huge file; `--forget` removes the originals.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use engine::ops::select::Rules;
use engine::Repository;
use serde_json::json;

use crate::output::Out;
use crate::snapshots::FilterArgs;

#[derive(Args, Debug)]
pub struct RewriteArgs {
    /// Snapshots to rewrite (ids, unique prefixes, or `latest`)
    #[arg(required = true)]
    pub snapshots: Vec<String>,
    /// Leave out matching paths (as `run --exclude`: without '/', a name anywhere; starting
    /// with '/', the whole path; `*` never matches '/', `**` does)
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// Read --exclude patterns from FILE, one a line ("-" is standard input)
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Like --exclude, ignoring case
    #[arg(long, value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// Remove each original once its rewritten copy is committed. What only it used goes once
    /// a prune condemns it and the grace period passes; a small file packed with others stays
    /// until that bundle is repacked

    #[arg(long)]
    pub forget: bool,
    /// List what would be left out; write nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// What `latest` means
    #[command(flatten)]
    pub filter: FilterArgs,
}

pub fn rewrite_cmd(repo: &Repository, json: bool, args: RewriteArgs) -> Result<u8> {
    let mut rules = Rules::default();
    for p in &args.exclude {
        rules.exclude(p, false, "--exclude")?;
    }
    for p in &args.iexclude {
        rules.exclude(p, true, "--iexclude")?;
    }
    for f in &args.exclude_file {
        rules.exclude_file(f, false)?;
    }
    engine::ops::rewrite::patterns(&rules)?;
    repo.key.owner_signer().context("`rewrite` writes snapshots as the owner: it needs the full key")?;
    let filter = args.filter.filter()?;
    let all = crate::snapshots::listed(repo, "")?;
    let chosen = crate::snapshots::chosen(&all, &args.snapshots, &filter, false)?;
    let mut out = Out::summary(json);
    let short = |id: &str| id.get(..16).unwrap_or(id).to_string();
    let mut all_json = Vec::new();
    let mut failed = None;
    // Each snapshot is said as it is done: a failure later leaves a true account above it.
    let ran = engine::ops::rewrite::rewrite(repo, &chosen, &rules, args.forget, args.dry_run, &mut |r| {
        if json {
            all_json.push(json!({"old": r.old, "new": r.new, "forgotten": r.forgotten,
                "removed": r.removed.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>()}));
            return;
        }
        let line = match (&r.new, r.removed.is_empty(), args.dry_run) {
            (_, true, _) => format!("snapshot {}: nothing matches, left as it is", short(&r.old)),
            (_, false, true) => format!(
                "snapshot {}: would leave out {} paths (dry run: nothing written)",
                short(&r.old),
                r.removed.len()
            ),
            (Some(new), false, false) => format!(
                "snapshot {} rewritten as {} without {} paths{}",
                short(&r.old),
                short(new),
                r.removed.len(),
                if r.forgotten { "; the original is forgotten" } else { "" }
            ),
            (None, false, false) => String::new(),
        };
        let mut said = out.line(&line);
        for p in &r.removed {
            said =
                said.and_then(|_| out.bytes(b"  - ")).and_then(|_| out.bytes(p)).and_then(|_| out.line(""));
        }
        if let Err(e) = said {
            failed.get_or_insert(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    if json {
        out.line(&serde_json::Value::Array(all_json).to_string())?;
    }
    ran?;
    out.finish()?;
    Ok(0)
}
