//! `forget`: which snapshots a retention policy keeps, and why. Forgetting removes snapshot
//! records only; their data goes when `prune` finds nothing else uses it.
//!
//! The rules are restic's, which users know: snapshots are grouped by host and paths (or what
//! `GroupBy` says), and always by writer; in each group, newest first, `last N` keeps the N newest; `hourly/daily/weekly/monthly/yearly N`
//! keep the newest snapshot of each of the N most recent periods that have one; `within D`
//! keeps every snapshot less than D older than the group's newest. A snapshot is kept when any
//! rule keeps it; `keep_tags` keeps every snapshot with one of the tag lists, in any group.
//! Periods are in the local time zone (weeks are ISO weeks).
use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp};

use crate::error::{Error, Result};
use crate::snapshot::Snapshot;

#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub last: Option<usize>,
    pub hourly: Option<usize>,
    pub daily: Option<usize>,
    pub weekly: Option<usize>,
    pub monthly: Option<usize>,
    pub yearly: Option<usize>,
    /// Keep everything this much younger than the newest snapshot of the group.
    pub within: Option<Span>,
    /// Keep every snapshot that has all the tags of one of these lists.
    pub keep_tags: Vec<Vec<String>>,
    pub group_by: GroupBy,
}

/// What the rules apply to separately, besides the writer (which is always part of a group:
/// see `apply_by`). restic's `--group-by`; the default is host and paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    pub host: bool,
    pub paths: bool,
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> GroupBy {
        GroupBy { host: true, paths: true, tags: false }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    /// `host,paths,tags`, any of them (`''`: one group for everything a writer wrote).
    fn from_str(s: &str) -> std::result::Result<GroupBy, String> {
        let mut g = GroupBy { host: false, paths: false, tags: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                _ => return Err(format!("{part:?}: group by host, paths or tags (e.g. host,paths)")),
            }
        }
        Ok(g)
    }
}

impl std::fmt::Display for GroupBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<&str> = [(self.host, "host"), (self.paths, "paths"), (self.tags, "tags")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
            && self.yearly.is_none()
            && self.within.is_none()
            && self.keep_tags.is_empty()
    }
}

/// Parses a duration like `30d`, `12h`, `6mo`, `1y 6mo`, `2w` (jiff's friendly format).
pub fn parse_span(s: &str) -> std::result::Result<Span, String> {
    s.parse::<Span>().map_err(|e| format!("{s:?} is not a duration like 30d, 12h, 6mo or 1y: {e}"))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub keep: bool,
    /// Why it is kept (each rule that keeps it), or why it goes.
    pub reasons: Vec<String>,
}

fn bucket(ts: Timestamp, tz: &TimeZone, rule: &str) -> String {
    let z = ts.to_zoned(tz.clone());
    match rule {
        "hourly" => format!("{:04}-{:02}-{:02} {:02}h", z.year(), z.month(), z.day(), z.hour()),
        "daily" => format!("{:04}-{:02}-{:02}", z.year(), z.month(), z.day()),
        "weekly" => {
            let w = z.date().iso_week_date();
            format!("{:04}-W{:02}", w.year(), w.week())
        }
        "monthly" => format!("{:04}-{:02}", z.year(), z.month()),
        _ => format!("{:04}", z.year()),
    }
}

/// Decides for every snapshot (id, record); the result is in the input's order.
pub fn apply(snapshots: &[(String, Snapshot)], policy: &Policy, tz: &TimeZone) -> Result<Vec<Decision>> {
    apply_by(snapshots, &|_| String::new(), policy, tz)
}

/// `apply`, with snapshots grouped by `writer(i)` too: a writer chooses the host and paths
/// it records, so without this a writer could fill another machine's group with snapshots of
/// its own and push that machine's real ones out of `--keep-last`.
pub fn apply_by(
    snapshots: &[(String, Snapshot)],
    writer: &dyn Fn(usize) -> String,
    policy: &Policy,
    tz: &TimeZone,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no retention rule given (e.g. --keep-last 7 --keep-daily 14); refusing to forget everything"
                .into(),
        ));
    }
    /// (writer, host, sorted paths, sorted tags), the parts `group_by` leaves out empty
    type Group = (String, String, Vec<Vec<u8>>, Vec<String>);
    let by = policy.group_by;
    let mut groups: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
    for (i, (_, s)) in snapshots.iter().enumerate() {
        let host = if by.host { s.host.clone() } else { String::new() };
        let mut paths = if by.paths { s.paths.clone() } else { Vec::new() };
        paths.sort();
        paths.dedup();
        let mut tags = if by.tags { s.tags.clone() } else { Vec::new() };
        tags.sort();
        tags.dedup();
        groups.entry((writer(i), host, paths, tags)).or_default().push(i);
    }
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); snapshots.len()];
    for (i, (_, s)) in snapshots.iter().enumerate() {
        if let Some(list) = policy.keep_tags.iter().find(|l| crate::ops::filter::has_tags(s, l)) {
            reasons[i].push(format!(
                "tagged {}",
                if list.is_empty() { "(no tags)".into() } else { list.join(",") }
            ));
        }
    }
    for members in groups.values() {
        let mut order = members.clone();
        // Newest first; at equal times a repaired or rewritten copy before its original (the
        // copy is what a policy keeps), then by id, for a stable answer.
        let copy = |s: &crate::snapshot::Snapshot| s.tags.iter().any(|t| t == "repaired" || t == "rewritten");
        order.sort_by(|&a, &b| {
            (snapshots[b].1.time_ns, copy(&snapshots[b].1), &snapshots[b].0).cmp(&(
                snapshots[a].1.time_ns,
                copy(&snapshots[a].1),
                &snapshots[a].0,
            ))
        });
        if let Some(n) = policy.last {
            for (rank, &i) in order.iter().take(n).enumerate() {
                reasons[i].push(format!("last {}", rank + 1));
            }
        }
        let rules = [
            ("hourly", policy.hourly),
            ("daily", policy.daily),
            ("weekly", policy.weekly),
            ("monthly", policy.monthly),
            ("yearly", policy.yearly),
        ];
        for (rule, n) in rules {
            let Some(n) = n else { continue };
            let mut last_bucket = None;
            let mut kept = 0;
            for &i in &order {
                if kept == n {
                    break;
                }
                let ts = Timestamp::from_nanosecond(i128::from(snapshots[i].1.time_ns)).map_err(|e| {
                    Error::Invalid(format!("snapshot {}: time out of range: {e}", snapshots[i].0))
                })?;
                let b = bucket(ts, tz, rule);
                if last_bucket.as_ref() != Some(&b) {
                    reasons[i].push(format!("{rule} {b}"));
                    last_bucket = Some(b);
                    kept += 1;
                }
            }
        }
        if let (Some(span), Some(&newest)) = (policy.within, order.first()) {
            let newest_ts = Timestamp::from_nanosecond(i128::from(snapshots[newest].1.time_ns))
                .map_err(|e| Error::Invalid(format!("snapshot time out of range: {e}")))?;
            let cutoff = newest_ts
                .to_zoned(tz.clone())
                .checked_sub(span)
                .map_err(|e| Error::Invalid(format!("--keep-within {span}: {e}")))?
                .timestamp();
            for &i in &order {
                if i128::from(snapshots[i].1.time_ns) >= cutoff.as_nanosecond() {
                    reasons[i].push(format!("within {span:#} of the newest"));
                }
            }
        }
    }
    Ok(snapshots
        .iter()
        .zip(reasons)
        .map(|((id, _), r)| {
            let keep = !r.is_empty();
            let reasons = if keep { r } else { vec!["no rule keeps it".into()] };
            Decision { id: id.clone(), keep, reasons }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000_000;

    fn snap(host: &str, hours: i64) -> Snapshot {
        Snapshot {
            version: crate::snapshot::VERSION,
            time_ns: 1_767_225_600_000_000_000 + hours * H, // 2026-01-01T00:00Z
            host: host.into(),
            user: String::new(),
            paths: vec![b"/data".to_vec()],
            tags: Vec::new(),
            tree: Vec::new(),
            stats: Default::default(),
            errors: Vec::new(),
            program: String::new(),
            description: None,
            selection: Vec::new(),
            original: None,
        }
    }

    fn kept(snaps: &[(String, Snapshot)], p: &Policy) -> Vec<String> {
        apply(snaps, p, &TimeZone::UTC).unwrap().into_iter().filter(|d| d.keep).map(|d| d.id).collect()
    }

    /// One snapshot every 6 hours for 60 days.
    fn history() -> Vec<(String, Snapshot)> {
        (0..240).map(|i| (format!("s{i:03}"), snap("a", i * 6))).collect()
    }

    #[test]
    fn last_and_periods() {
        let s = history();
        let p = Policy { last: Some(3), ..Default::default() };
        assert_eq!(kept(&s, &p), vec!["s237", "s238", "s239"]);
        // Daily 5: the newest of each of the last 5 days (one at 18:00 each day).
        let p = Policy { daily: Some(5), ..Default::default() };
        assert_eq!(kept(&s, &p), vec!["s223", "s227", "s231", "s235", "s239"]);
        // Weekly 2 and monthly 2: newest of the last two ISO weeks and months.
        let p = Policy { weekly: Some(2), monthly: Some(2), ..Default::default() };
        // 2026-03-01 is a Sunday: weeks end on the 1st and Feb 22; months on Mar 1 and Feb 28.
        assert_eq!(kept(&s, &p), vec!["s211", "s235", "s239"]);
        let p = Policy { yearly: Some(10), ..Default::default() };
        assert_eq!(kept(&s, &p), vec!["s239"]);
    }

    #[test]
    fn within_and_reasons() {
        let s = history();
        let p = Policy { within: Some(parse_span("2d").unwrap()), ..Default::default() };
        // The newest and every snapshot at most 48 h older: 9 of them.
        assert_eq!(kept(&s, &p).len(), 9);
        let d = apply(&s, &Policy { last: Some(1), daily: Some(1), ..Default::default() }, &TimeZone::UTC)
            .unwrap();
        let newest = d.iter().find(|d| d.id == "s239").unwrap();
        assert_eq!(newest.reasons, vec!["last 1".to_string(), "daily 2026-03-01".to_string()]);
        assert_eq!(d[0].reasons, vec!["no rule keeps it".to_string()]);
        assert!(parse_span("6mo").is_ok() && parse_span("1y 2mo").is_ok() && parse_span("lots").is_err());
    }

    #[test]
    fn groups_by_host_and_paths_and_refuses_no_policy() {
        let mut s = history();
        s.push(("other".into(), snap("b", 0)));
        let p = Policy { last: Some(1), ..Default::default() };
        assert_eq!(kept(&s, &p), vec!["s239", "other"]);
        assert!(apply(&s, &Policy::default(), &TimeZone::UTC).is_err());
    }

    #[test]
    fn keep_tag_keeps_in_every_group_and_group_by_chooses_the_groups() {
        let tagged = |id: &str, host: &str, hours: i64, tags: &[&str], path: &str| {
            let mut s = snap(host, hours);
            s.tags = tags.iter().map(|t| t.to_string()).collect();
            s.paths = vec![path.as_bytes().to_vec()];
            (id.to_string(), s)
        };
        let s = vec![
            tagged("a1", "a", 1, &["keep", "x"], "/d"),
            tagged("a2", "a", 2, &["x"], "/d"),
            tagged("a3", "a", 3, &[], "/e"),
            tagged("b4", "b", 4, &["x"], "/d"),
            tagged("b5", "b", 5, &[], "/d"),
        ];
        let p = |last: Option<usize>, keep_tags: &[&str], group_by: &str| Policy {
            last,
            keep_tags: keep_tags.iter().map(|t| crate::ops::filter::tag_list(t)).collect(),
            group_by: group_by.parse().unwrap(),
            ..Default::default()
        };
        // default: host and paths
        assert_eq!(kept(&s, &p(Some(1), &[], "host,paths")), vec!["a2", "a3", "b5"]);
        assert_eq!(p(None, &[], "host,paths").group_by, GroupBy::default());
        assert_eq!(kept(&s, &p(Some(1), &[], "host")), vec!["a3", "b5"]);
        assert_eq!(kept(&s, &p(Some(1), &[], "")), vec!["b5"]);
        // tags: {keep, x} a1; {x} a2, b4; {} a3, b5
        assert_eq!(kept(&s, &p(Some(1), &[], "tags")), vec!["a1", "b4", "b5"]);
        // keep-tag keeps whatever the other rules say, alone too
        assert_eq!(kept(&s, &p(Some(1), &["keep"], "")), vec!["a1", "b5"]);
        assert_eq!(kept(&s, &p(None, &["keep"], "")), vec!["a1"]);
        assert_eq!(kept(&s, &p(None, &["x,keep", "nothing"], "")), vec!["a1"]);
        let d = apply(&s, &p(None, &["x"], ""), &TimeZone::UTC).unwrap();
        assert_eq!(d[1].reasons, vec!["tagged x".to_string()]);
        assert!("host,nope".parse::<GroupBy>().is_err());
        assert_eq!("tags, host".parse::<GroupBy>().unwrap().to_string(), "host,tags");
    }
}
