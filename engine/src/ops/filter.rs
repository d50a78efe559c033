//! filter: which snapshots a command looks at, by restic's filters. `--host H` (repeatable:
//! any of them), `--tag a,b` (a tag list: the snapshot has a and b; repeated: any of the
//! lists; an empty list matches snapshots without tags), `--path P` (repeatable: the
//! snapshot's paths include every P). `latest` is the newest snapshot that matches.
use crate::error::{Error, Result};
use crate::repo::SnapshotEntry;
use crate::snapshot::Snapshot;

/// Tags as the user writes them: `a,b` is two tags. Empty pieces are dropped.
pub fn tag_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

/// Whether `s` has every tag of `list` (restic: an empty list matches only snapshots without
/// tags, so `--tag ''` finds the untagged ones).
pub fn has_tags(s: &Snapshot, list: &[String]) -> bool {
    if list.is_empty() {
        return s.tags.is_empty();
    }
    list.iter().all(|t| s.tags.contains(t))
}

/// The components of a path, so `/a/b/`, `/a//b` and `/a/./b` are the same path.
fn components(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".")
}

fn same_path(a: &[u8], b: &[u8]) -> bool {
    a.starts_with(b"/") == b.starts_with(b"/") && components(a).eq(components(b))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Any of these hosts (none: every host).
    pub hosts: Vec<String>,
    /// Any of these tag lists (none: every snapshot).
    pub tags: Vec<Vec<String>>,
    /// Every one of these among the snapshot's paths.
    pub paths: Vec<Vec<u8>>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.paths.is_empty()
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&s.host))
            && (self.tags.is_empty() || self.tags.iter().any(|l| has_tags(s, l)))
            && self.paths.iter().all(|p| s.paths.iter().any(|q| same_path(p, q)))
    }
}

/// `latest` (the newest snapshot `filter` matches), or a unique prefix of a snapshot id, among
/// `all` (oldest first, as `Repository::snapshots` lists them). An id names its snapshot
/// whatever the filter says: the filters choose what `latest` means.
pub fn resolve<'a>(all: &'a [SnapshotEntry], spec: &str, filter: &Filter) -> Result<&'a SnapshotEntry> {
    if spec == "latest" {
        return all.iter().rev().find(|e| filter.matches(&e.snapshot)).ok_or_else(|| {
            let what =
                if filter.is_empty() { spec.to_string() } else { format!("{spec} (with these filters)") };
            Error::NoSnapshot(what)
        });
    }
    let mut hits = all.iter().filter(|e| e.id.starts_with(spec));
    match (hits.next(), hits.next()) {
        (Some(e), None) => Ok(e),
        (None, _) => Err(Error::NoSnapshot(spec.into())),
        _ => Err(Error::AmbiguousSnapshot(spec.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Signer, Stats, VERSION};
    use crate::writers::Standing;

    fn snap(host: &str, tags: &[&str], paths: &[&str]) -> Snapshot {
        Snapshot {
            version: VERSION,
            time_ns: 0,
            host: host.into(),
            user: String::new(),
            paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            tree: vec![],
            stats: Stats::default(),
            errors: vec![],
            program: String::new(),
            description: None,
            selection: vec![],
            original: None,
        }
    }

    #[test]
    fn tag_lists_are_and_and_repeats_are_or() {
        let s = snap("h", &["a", "b"], &["/x"]);
        let f =
            |tags: &[&str]| Filter { tags: tags.iter().map(|t| tag_list(t)).collect(), ..Filter::default() };
        assert!(f(&[]).matches(&s));
        assert!(f(&["a"]).matches(&s));
        assert!(f(&["a,b"]).matches(&s));
        assert!(f(&["b, a"]).matches(&s));
        assert!(!f(&["a,c"]).matches(&s));
        assert!(f(&["a,c", "b"]).matches(&s));
        assert!(!f(&["c", "d"]).matches(&s));
        // `--tag ''`: the untagged ones
        assert!(!f(&[""]).matches(&s));
        assert!(f(&[""]).matches(&snap("h", &[], &["/x"])));
    }

    #[test]
    fn hosts_are_any_and_paths_all() {
        let s = snap("h", &[], &["/x/y", "/z"]);
        let hosts =
            |h: &[&str]| Filter { hosts: h.iter().map(|h| h.to_string()).collect(), ..Filter::default() };
        assert!(hosts(&["g", "h"]).matches(&s));
        assert!(!hosts(&["g"]).matches(&s));
        let paths = |p: &[&str]| Filter {
            paths: p.iter().map(|p| p.as_bytes().to_vec()).collect(),
            ..Filter::default()
        };
        assert!(paths(&["/x/y/", "//z"]).matches(&s));
        assert!(paths(&["/x/./y"]).matches(&s));
        assert!(!paths(&["/x"]).matches(&s), "a parent of a path is not the path");
        assert!(!paths(&["x/y"]).matches(&s), "relative is not absolute");
        assert!(!paths(&["/z", "/w"]).matches(&s));
    }

    #[test]
    fn latest_is_the_newest_that_matches_and_ids_ignore_filters() {
        let e = |id: &str, host: &str| SnapshotEntry {
            id: id.into(),
            snapshot: snap(host, &[], &["/"]),
            signer: Signer::Nobody,
            standing: Standing::Owner,
        };
        let all = vec![e("aa1", "a"), e("ab2", "b"), e("bb3", "a")];
        let host = |h: &str| Filter { hosts: vec![h.into()], ..Filter::default() };
        assert_eq!(resolve(&all, "latest", &Filter::default()).unwrap().id, "bb3");
        assert_eq!(resolve(&all, "latest", &host("b")).unwrap().id, "ab2");
        assert!(matches!(resolve(&all, "latest", &host("c")), Err(Error::NoSnapshot(_))));
        assert_eq!(resolve(&all, "aa", &host("b")).unwrap().id, "aa1");
        assert!(matches!(resolve(&all, "a", &Filter::default()), Err(Error::AmbiguousSnapshot(_))));
        assert!(matches!(resolve(&all, "c", &Filter::default()), Err(Error::NoSnapshot(_))));
        assert!(matches!(resolve(&[], "latest", &Filter::default()), Err(Error::NoSnapshot(_))));
    }
}
