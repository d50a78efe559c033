//! `copy`: snapshots from another repository, with its own keys, into this one (restic's
//! `copy`): decrypted with the source's key, stored with this one's, deduplicated here.
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use engine::repo::Location;
use engine::Repository;
use serde_json::json;

use crate::output::{self, Out};
use crate::snapshots::FilterArgs;

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The repository to copy from (a directory or s3:...); the destination is --repo
    #[arg(long)]
    pub from: OsString,
    /// The source's key file (default: the one stored for its repository id)
    #[arg(long, value_name = "FILE")]
    pub from_key: Option<PathBuf>,
    /// Snapshots to copy (ids, unique prefixes, or `latest`); none: every one the filters
    /// select
    pub snapshots: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

pub fn copy_cmd(to: &Repository, json: bool, args: CopyArgs) -> Result<u8> {
    let at = Location::parse(&args.from)?;
    if at == to.location {
        anyhow::bail!("--from is the repository being copied into");
    }
    let from = crate::open_repo(&at, args.from_key.as_deref()).with_context(|| format!("opening {at}"))?;
    let filter = args.filter.filter()?;
    let all = crate::snapshots::listed(&from, &format!("{at}: "))?;
    let chosen = crate::snapshots::chosen(&all, &args.snapshots, &filter, true)?;
    let done = engine::ops::copy::copy(&from, to, &chosen)?;
    let mut out = Out::summary(json);
    let short = |id: &str| id.get(..16).unwrap_or(id).to_string();
    if json {
        let v: Vec<_> = done
            .iter()
            .map(|c| json!({"from": c.from, "to": c.to, "already": c.already, "new_blobs": c.new_blobs, "new_bytes": c.new_bytes}))
            .collect();
        out.line(&serde_json::Value::Array(v).to_string())?;
    } else {
        for c in &done {
            match c.already {
                true => {
                    out.line(&format!("snapshot {}: copied already, as {}", short(&c.from), short(&c.to)))?
                }
                false => out.line(&format!(
                    "snapshot {} copied as {}: {} new blobs ({})",
                    short(&c.from),
                    short(&c.to),
                    c.new_blobs,
                    output::size(c.new_bytes)
                ))?,
            }
        }
    }
    out.finish()?;
    Ok(0)
}
