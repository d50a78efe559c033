//! `bakare find`: search names across snapshots (through the local name catalog), print one line
//! per distinct version and a restore command to copy; and the paths-or-patterns of `restore`.
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use engine::catalog::{Budget, Catalog};
use engine::find::{self, Found, Hit, Matching, Query};
use engine::index::Index;
use engine::repo::BlobReader;
use engine::snapshot::Snapshot;
use engine::Repository;
use serde_json::json;

use crate::output::{self, Out};

#[derive(Args, Debug)]
pub struct FindArgs {
    /// What to look for. Fuzzy by default: letters may be skipped or one mistyped, and a path
    /// fragment like `proj/rdme` matches across directories (fzf syntax: 'exact ^start end$ !not)
    pub query: String,
    /// Only in this snapshot (id prefix or `latest`); repeatable
    #[arg(long = "snapshot", short = 's')]
    pub snapshots: Vec<String>,
    /// Only in snapshots taken on this host
    #[arg(long)]
    pub host: Option<String>,
    /// Only in snapshots with these tags: `a,b` means a and b; repeated, any of the lists (`''`:
    /// snapshots without tags)
    #[arg(long = "tag", value_name = "TAGS")]
    pub tags: Vec<String>,
    /// Only at or below this path (e.g. /home/me/src)
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Only versions modified at or after DATE (UTC: 2026-05-01 or 2026-05-01T12:00:00)
    #[arg(long, value_parser = parse_date)]
    pub newer: Option<i64>,
    /// Only versions modified before DATE (UTC: 2026-05-01 or 2026-05-01T12:00:00)
    #[arg(long, value_parser = parse_date)]
    pub older: Option<i64>,
    /// At most N lines (0: all)
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,
    /// QUERY is a substring of the path (case-insensitive unless it has capitals)
    #[arg(long, conflicts_with = "glob")]
    pub exact: bool,
    /// QUERY is a glob on the full path (`**/src/*.rs`); without `/`, on the name (`*.txt`)
    #[arg(long)]
    pub glob: bool,
    /// Directory of the name catalog [default: $XDG_CACHE_HOME/bakare]
    #[arg(long, env = "BAKARE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Memory ceiling for the whole process, e.g. 512M, 2G, 1.5GiB (K/M/G are binary units);
    /// without it, 1 GiB. Snapshots the name catalog cannot hold within it are not searched
    /// (a warning names each, and find exits 3)
    #[arg(long, value_parser = crate::parse_size_arg)]
    pub mem_limit: Option<u64>,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-05-01`, `2026-05-01T12:00`, `2026-05-01T12:00:00` (or a space for the T), in UTC, to
/// nanoseconds since the epoch.
pub fn parse_date(s: &str) -> std::result::Result<i64, String> {
    let bad = || format!("{s:?} is not a date like 2026-05-01 or 2026-05-01T12:00:00 (UTC)");
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, t),
        None => (s, "00:00:00"),
    };
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse::<u32>().ok()).flatten()
    };
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    let (y, mo, day) = match d[..] {
        [y, m, d] => (num(y, 4).ok_or_else(bad)?, num(m, 2).ok_or_else(bad)?, num(d, 2).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    let (h, mi, sec) = match t[..] {
        [h, m] => (num(h, 2).ok_or_else(bad)?, num(m, 2).ok_or_else(bad)?, 0),
        [h, m, s] => (num(h, 2).ok_or_else(bad)?, num(m, 2).ok_or_else(bad)?, num(s, 2).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo)
        || day == 0
        || day > month_days[mo as usize - 1]
        || h > 23
        || mi > 59
        || sec > 59
    {
        return Err(bad());
    }
    let secs = days_from_civil(i64::from(y), mo, day) * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
    Ok(secs * 1_000_000_000)
}

/// Quotes a path for a POSIX shell (bash's `$'...'` when it has bytes that are not printable
/// UTF-8), so the restore hint can be pasted as it is.
pub fn shell_quote(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) if !s.chars().any(char::is_control) => format!("'{}'", s.replace('\'', r"'\''")),
        _ => {
            let mut q = String::from("$'");
            for &b in path {
                match b {
                    b'\'' => q.push_str(r"\'"),
                    b'\\' => q.push_str(r"\\"),
                    0x20..=0x7e => q.push(char::from(b)),
                    _ => q.push_str(&format!("\\x{b:02x}")),
                }
            }
            q.push('\'');
            q
        }
    }
}

/// `YYYY-MM-DD HH:MM`
fn minute(ns: i64) -> String {
    let mut t = output::time(ns);
    t.truncate(16);
    t
}

fn snapshots_text(found: &Found, hit: &Hit) -> String {
    let one = |i: &usize| {
        let s = &found.snapshots[*i];
        format!("{} ({})", &s.id[..found.short_len.min(s.id.len())], minute(s.time_ns))
    };
    match &hit.snapshots[..] {
        [] => String::new(),
        few @ ([_] | [_, _] | [_, _, _]) => {
            format!("in {}", few.iter().map(one).collect::<Vec<_>>().join(", "))
        }
        [first, .., last] => format!("in {} snapshots: {} … {}", hit.snapshots.len(), one(first), one(last)),
    }
}

pub fn find(repo: &Repository, json: bool, args: FindArgs) -> Result<u8> {
    let cache_dir = args.cache_dir.clone().or_else(engine::filescache::default_dir);
    let (cat, opened) = Catalog::open(repo, cache_dir.as_deref(), Budget::new(args.mem_limit))?;
    // Some snapshots were not searched: the answer is partial.
    let code = if opened.skipped > 0 { crate::EXIT_PARTIAL } else { 0 };
    for w in &opened.warnings {
        eprintln!("warning: {w}");
    }
    if opened.added > 0 && !crate::output::quiet() {
        eprintln!(
            "name catalog: {} snapshot(s) added ({} directories read){}; {} versions of {} paths",
            opened.added,
            opened.decoded_dirs,
            if opened.dropped > 0 { format!(", {} dropped", opened.dropped) } else { String::new() },
            cat.versions.len(),
            cat.path_count() - 1
        );
    }
    let matching = if args.glob {
        Matching::Glob(args.query.clone())
    } else if args.exact {
        Matching::Exact(args.query.clone())
    } else {
        Matching::Fuzzy(args.query.clone())
    };
    // Tags are not in the name catalog: the snapshots they choose are looked up.
    let only = match args.tags.is_empty() {
        true => None,
        false => {
            let tags = args.tags.iter().map(|t| engine::ops::filter::tag_list(t)).collect();
            let filter = engine::ops::filter::Filter { tags, ..Default::default() };
            let (all, _) = repo.snapshots()?;
            Some(all.into_iter().filter(|e| filter.matches(&e.snapshot)).map(|e| e.id).collect())
        }
    };
    let q = Query {
        matching,
        snapshots: args.snapshots,
        host: args.host,
        only,
        path: args.path.map(|p| p.as_os_str().as_bytes().to_vec()),
        newer_ns: args.newer,
        older_ns: args.older,
        limit: if args.limit == 0 { usize::MAX } else { args.limit },
    };
    let found = find::find(&cat, &q)?;
    let mut out = Out::new();
    if json {
        // Streamed hit by hit: with --limit 0 there may be hundreds of thousands.
        let snaps: Vec<String> = found
            .snapshots
            .iter()
            .map(|s| json!({"id": s.id, "time": output::time(s.time_ns), "host": s.host}).to_string())
            .collect();
        out.bytes(b"{\"hits\":[")?;
        for (n, h) in found.hits.iter().enumerate() {
            let mut v = json!({
                "path": String::from_utf8_lossy(&h.path), "type": h.kind.to_string(),
                "size": h.size, "mtime": output::time(h.mtime_ns), "mtime_ns": h.mtime_ns,
                "score": h.score, "typo": h.typo,
            });
            if std::str::from_utf8(&h.path).is_err() {
                v["path_hex"] = json!(hex::encode(&h.path));
            }
            let mut text = v.to_string();
            text.pop(); // the closing brace: the snapshots follow
            let list: Vec<&str> = h.snapshots.iter().map(|&i| snaps[i].as_str()).collect();
            text.push_str(&format!(",\"snapshots\":[{}]}}", list.join(",")));
            out.bytes(if n == 0 { b"" } else { b"," })?;
            out.bytes(text.as_bytes())?;
        }
        out.line(&format!("],\"total\":{}}}", found.total))?;
        out.finish()?;
        return Ok(code);
    }
    if found.hits.first().is_some_and(|h| h.typo) && !crate::output::quiet() {
        eprintln!("note: no name has all of {:?} in order; these are one letter off", args.query);
    }
    for h in &found.hits {
        let size = if matches!(h.kind, '-' | 'h') { output::size(h.size) } else { String::new() };
        out.bytes(format!("{}{:>11}  {}  ", h.kind, size, output::time(h.mtime_ns)).as_bytes())?;
        out.bytes(&h.path)?;
        out.line(&format!("  {}", snapshots_text(&found, h)))?;
    }
    if found.total > found.hits.len() {
        out.line(&format!("{} of {} matches shown (--limit)", found.hits.len(), found.total))?;
    }
    match found.hits.first().and_then(|h| h.snapshots.last().map(|&s| (h, &found.snapshots[s]))) {
        Some((h, s)) => out.line(&format!(
            "restore with: bakare restore {} -t DIR {}",
            &s.id[..found.short_len.min(s.id.len())],
            shell_quote(&h.path)
        ))?,
        None => eprintln!("nothing matches {:?} in {} snapshot(s)", args.query, found.snapshots.len()),
    }
    out.finish()?;
    Ok(code)
}

/// What `restore` restores: each PATH as it is, except patterns (all of them with `--glob`;
/// otherwise a PATH with `*?[{` that is not itself in the snapshot), which become the paths
/// they match. A PATH or pattern that selects nothing is an error, not a silent no-op.
pub fn restore_paths(
    repo: &Repository,
    index: &Index,
    id: &str,
    snap: &Snapshot,
    paths: Vec<PathBuf>,
    glob: bool,
    includes: &[String],
) -> Result<Vec<PathBuf>> {
    if paths.is_empty() && includes.is_empty() {
        return Ok(paths);
    }
    let reader = BlobReader::new(repo, index)?;
    let short = &id[..16.min(id.len())];
    let mut out = Vec::new();
    for p in paths {
        let bytes = p.as_os_str().as_bytes();
        let literal = !glob && find::lookup(&reader, &snap.tree, bytes)?.is_some();
        if literal {
            out.push(p);
            continue;
        }
        if !glob && !find::has_glob_chars(bytes) {
            bail!("{} is not in snapshot {short}", p.display());
        }
        let pattern =
            std::str::from_utf8(bytes).with_context(|| format!("pattern {} is not UTF-8", p.display()))?;
        let found = find::expand_glob(&reader, &snap.tree, pattern)?;
        if found.is_empty() {
            bail!("{pattern} matches nothing in snapshot {short}");
        }
        out.extend(found.into_iter().map(|b| PathBuf::from(OsStr::from_bytes(&b))));
    }
    if includes.is_empty() {
        return Ok(out);
    }
    // restic's --include: a pattern without '/' matches a name at any depth, one starting
    // with '/' the path in the snapshot, any other a path ending anywhere. A directory that
    // matches comes whole. With PATHs, only what is at or below one of them.
    let mut included = Vec::new();
    for pattern in includes {
        let glob = if pattern.contains('/') && !pattern.starts_with('/') {
            format!("**/{pattern}")
        } else {
            pattern.clone()
        };
        let found = find::expand_glob(&reader, &snap.tree, &glob)?
            .into_iter()
            .map(|b| PathBuf::from(OsStr::from_bytes(&b)));
        included.extend(found.filter(|f| out.is_empty() || out.iter().any(|p| under(f, p))));
    }
    if included.is_empty() {
        let within = if out.is_empty() { String::new() } else { " below the PATHs given".to_string() };
        bail!("--include {} matches nothing{within} in snapshot {short}", includes.join(", --include "));
    }
    Ok(included)
}

/// Whether the snapshot path `p` is `dir` or below it (by whole names).
fn under(p: &Path, dir: &Path) -> bool {
    let names = |x: &Path| -> Vec<Vec<u8>> {
        x.as_os_str()
            .as_bytes()
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(<[u8]>::to_vec)
            .collect()
    };
    names(p).starts_with(&names(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc() {
        assert_eq!(parse_date("1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("2026-11-29T14:26:12").unwrap(), 1_795_962_372_000_000_000);
        assert_eq!(parse_date("2026-11-29 14:26:12").unwrap(), 1_795_962_372_000_000_000);
        assert_eq!(parse_date("2000-02-29T00:00").unwrap(), 951_782_400_000_000_000);
        for bad in ["2026-02-30", "2026-13-01", "26-01-01", "2026-01-01T25:00", "yesterday", "2026-1-1", ""] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
        // the inverse of the display format
        let ns = parse_date("2024-12-31T23:59:59").unwrap();
        assert_eq!(output::time(ns), "2024-12-31 23:59:59");
    }

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(shell_quote(b"/a b/c.txt"), "'/a b/c.txt'");
        assert_eq!(shell_quote(b"/it's"), r"'/it'\''s'");
        assert_eq!(shell_quote("/café".as_bytes()), "'/café'");
        assert_eq!(shell_quote(b"/caf\xe9\t'\\"), r"$'/caf\xe9\x09\'\\'");
        for path in [&b"/a b/it's"[..], b"/caf\xe9\x01\n$x `y` \\ \"q\""] {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(path)))
                .output()
                .unwrap();
            assert_eq!(out.stdout, path);
        }
    }
}
