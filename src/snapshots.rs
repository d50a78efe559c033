//! `snapshots` and `tag`, and the filters (`--host`, `--tag`, `--path`) that `snapshots`,
//! `forget` and every `latest` (`ls`, `restore`, `diff`, `tag`) take.
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::ops::filter::{self, Filter};
use engine::ops::tag::{self, TagChange};
use engine::Repository;
use serde_json::json;

use crate::output::{self, Out};

#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots of this host (repeatable: any of them)
    #[arg(long = "host", id = "filter_host", value_name = "HOST", help_heading = "Snapshot filters")]
    pub hosts: Vec<String>,
    /// Only snapshots with these tags: `a,b` means a and b; repeated, any of the lists (`''`:
    /// snapshots without tags)
    #[arg(long = "tag", id = "filter_tag", value_name = "TAGS", help_heading = "Snapshot filters")]
    pub tags: Vec<String>,
    /// Only snapshots whose paths include PATH, as `run` was given it (repeatable: all of them)
    #[arg(long = "path", id = "filter_path", value_name = "PATH", help_heading = "Snapshot filters")]
    pub paths: Vec<PathBuf>,
}

impl FilterArgs {
    /// The filter: relative paths are taken from the current directory, as `run` records them.
    pub fn filter(&self) -> Result<Filter> {
        let mut paths = Vec::new();
        for p in &self.paths {
            // One by one: normalize_roots also drops a root inside another.
            let abs = stages::scan::normalize_roots(std::slice::from_ref(p))
                .with_context(|| format!("--path {}: cannot make it absolute", p.display()))?;
            paths.extend(abs.into_iter().map(|a| a.path.into_os_string().into_vec()));
        }
        Ok(Filter {
            hosts: self.hosts.clone(),
            tags: self.tags.iter().map(|t| filter::tag_list(t)).collect(),
            paths,
        })
    }
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Args, Debug)]
pub struct TagArgs {
    /// Snapshots whose tags change (ids, unique prefixes, or `latest`)
    #[arg(required = true)]
    pub snapshots: Vec<String>,
    /// Add these tags (`a,b` is two; repeatable)
    #[arg(long, value_name = "TAGS")]
    pub add: Vec<String>,
    /// Remove these tags (after --add)
    #[arg(long, value_name = "TAGS")]
    pub remove: Vec<String>,
    /// Replace the tags by these (`--set ''` removes them all)
    #[arg(long, value_name = "TAGS", conflicts_with_all = ["add", "remove"])]
    pub set: Vec<String>,
    /// What `latest` means
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// The snapshots of `repo` (its warnings said on stderr, after `label`).
pub(crate) fn listed(repo: &Repository, label: &str) -> Result<Vec<engine::repo::SnapshotEntry>> {
    let (all, warnings) = repo.snapshots()?;
    for w in &warnings {
        eprintln!("warning: {label}{w}");
    }
    Ok(all)
}

/// The snapshots `specs` name (ids, unique prefixes, `latest` as `filter` says), each once, in
/// the order named; when none is named and `every`, each one `filter` selects.
pub(crate) fn chosen<'a>(
    all: &'a [engine::repo::SnapshotEntry],
    specs: &[String],
    filter: &Filter,
    every: bool,
) -> Result<Vec<&'a engine::repo::SnapshotEntry>> {
    let mut chosen: Vec<&engine::repo::SnapshotEntry> = Vec::new();
    if specs.is_empty() && every {
        chosen.extend(all.iter().filter(|e| filter.matches(&e.snapshot)));
    }
    for spec in specs {
        let e = filter::resolve(all, spec, filter)?;
        if !chosen.iter().any(|c| c.id == e.id) {
            chosen.push(e);
        }
    }
    Ok(chosen)
}

fn tags_of(words: &[String]) -> Vec<String> {
    words.iter().flat_map(|w| filter::tag_list(w)).collect()
}

/// A word as a shell would need it: `*.tmp` becomes `'*.tmp'`.
/// `s` with control characters escaped (`\u{1b}`): what a writer stored in a snapshot never
/// drives the owner's terminal (moving the cursor, erasing lines to hide other snapshots).
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn shell_word(w: &str) -> String {
    let w = &printable(w);
    let plain = !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

pub fn snapshots(repo: &Repository, json: bool, args: SnapshotsArgs) -> Result<u8> {
    let filter = args.filter.filter()?;
    let (all, warnings) = repo.snapshots()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let shown: Vec<_> = all.iter().filter(|e| filter.matches(&e.snapshot)).collect();
    let mut out = Out::new();
    if json {
        let v: Vec<_> = shown
            .iter()
            .map(|e| {
                let (id, s) = (&e.id, &e.snapshot);
                json!({
                    "id": id, "time": output::time(s.time_ns), "time_ns": s.time_ns, "writer": e.writer(),
                    "host": s.host, "user": s.user, "tags": s.tags,
                    "paths": s.paths.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(),
                    "tree": s.tree.iter().map(hex::encode).collect::<Vec<_>>(),
                    "description": s.description, "selection": s.selection, "original": s.original,
                    "files": s.stats.files, "bytes": s.stats.bytes, "errors": s.errors.len(),
                })
            })
            .collect();
        out.line(&serde_json::Value::Array(v).to_string())?;
    } else {
        out.line(&format!(
            "{:<16}  {:<19}  {:<12}  {:<12}  {:<12}  {:>10}  {:>8}  paths",
            "id", "time (UTC)", "host", "writer", "tags", "size", "files"
        ))?;
        for e in &shown {
            let (id, s) = (&e.id, &e.snapshot);
            let paths: Vec<_> = s.paths.iter().map(|p| printable(&String::from_utf8_lossy(p))).collect();
            out.line(&format!(
                "{:<16}  {}  {:<12}  {:<12}  {:<12}  {:>10}  {:>8}  {}",
                &id[..16.min(id.len())],
                output::time(s.time_ns),
                printable(&s.host),
                e.writer(),
                printable(&s.tags.join(",")),
                output::size(s.stats.bytes),
                s.stats.files,
                paths.join(" ")
            ))?;
            if let Some(d) = &s.description {
                // One line per line of the description, indented under its snapshot.
                for line in d.lines() {
                    out.line(&format!("    {}", printable(line)))?;
                }
            }
            if !s.selection.is_empty() {
                let words: Vec<_> = s.selection.iter().map(|w| shell_word(w)).collect();
                out.line(&format!("    selection: {}", words.join(" ")))?;
            }
        }
        let of = if filter.is_empty() { String::new() } else { format!(" (of {})", all.len()) };
        out.line(&format!("{} snapshots{of}", shown.len()))?;
    }
    out.finish()?;
    Ok(0)
}

pub fn tag_cmd(repo: &Repository, json: bool, args: TagArgs) -> Result<u8> {
    let change = TagChange {
        set: if args.set.is_empty() { None } else { Some(tags_of(&args.set)) },
        add: tags_of(&args.add),
        remove: tags_of(&args.remove),
    };
    if change.is_empty() {
        bail!("say what to change: --add, --remove or --set TAGS");
    }
    // Refused before anything is read: only the owner signs the new records.
    repo.key.owner_signer().context("`tag` rewrites snapshots as the owner: it needs the full key")?;
    let filter = args.filter.filter()?;
    let all = listed(repo, "")?;
    let chosen = chosen(&all, &args.snapshots, &filter, false)?;
    let mut out = Out::summary(json);
    let mut done = Vec::new();
    for old in chosen {
        let new = tag::retag(repo, old, &change)
            .with_context(|| format!("changing the tags of snapshot {}", &old.id[..16.min(old.id.len())]))?;
        let tags = new.as_ref().map_or(&old.snapshot.tags, |(_, s)| &s.tags);
        if json {
            done.push(json!({"old": old.id, "new": new.as_ref().map(|(id, _)| id), "tags": tags}));
        } else {
            match &new {
                Some((id, _)) => out.line(&format!(
                    "snapshot {} is now {}, tags: {}",
                    &old.id[..16.min(old.id.len())],
                    &id[..16],
                    tags.join(",")
                ))?,
                None => out.line(&format!(
                    "snapshot {}: tags unchanged ({})",
                    &old.id[..16.min(old.id.len())],
                    tags.join(",")
                ))?,
            }
        }
    }
    if json {
        out.line(&serde_json::Value::Array(done).to_string())?;
    }
    out.finish()?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("--exclude"), "--exclude");
        assert_eq!(shell_word("*.tmp"), "'*.tmp'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
        assert_eq!(printable("a\u{1b}[2Kb\tc"), "a\\u{1b}[2Kb\\tc");
    }
}
