//! find: ranks the names in a catalog against a query (fuzzy with nucleo, substring, or glob),
//! one hit per distinct version, with the snapshots that hold it; and glob patterns over one
//! snapshot's tree, for restore.
//!
//! Fuzzy scoring: the whole path (`/home/me/proj/README.md`) is scored with nucleo's path
//! settings, so fragments like `proj/rdme` match across directories; a query without `/` is
//! scored against the file name too and the two scores added, so a hit in the name outranks
//! one spread over the directories. nucleo matches subsequences (skipped letters); a typo (a
//! wrong, extra or swapped letter) becomes a subsequence once one letter of the query is
//! dropped, so when the exact subsequences give fewer hits than asked for, the query minus one
//! letter is matched against names, and those hits rank after all the others.
use globset::{GlobBuilder, GlobMatcher};
use nucleo_matcher::pattern::{AtomKind, CaseMatching, Normalization, Pattern};
use nucleo_matcher::{Config, Matcher, Utf32Str};
use stages::BlobId;

use crate::catalog::{Bitmap, Catalog, FullPaths};
use crate::error::{Error, Result};
use crate::repo::BlobReader;
use crate::tree::{Node, NodeKind};

pub enum Matching {
    /// nucleo's fuzzy matching, with fzf's syntax (`'exact`, `^prefix`, `suffix$`, `!not`).
    Fuzzy(String),
    /// A substring of the path; case-insensitive unless the query has capitals.
    Exact(String),
    /// A glob on the full path; without `/`, on the name.
    Glob(String),
}

pub struct Query {
    pub matching: Matching,
    /// Snapshot ids (unique prefixes) or `latest`; empty: all.
    pub snapshots: Vec<String>,
    pub host: Option<String>,
    /// Only these snapshots (full ids), when set: those a filter the catalog does not hold
    /// chose (`find --tag`).
    pub only: Option<Vec<String>>,
    /// Only paths at or below this one (compared by component).
    pub path: Option<Vec<u8>>,
    /// Only versions modified at or after this time.
    pub newer_ns: Option<i64>,
    /// Only versions modified before this time.
    pub older_ns: Option<i64>,
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    pub id: String,
    pub time_ns: i64,
    pub host: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub path: Vec<u8>,
    /// `Node::type_char`: `-` file, `d` directory, `l` symlink...
    pub kind: char,
    pub size: u64,
    pub mtime_ns: i64,
    pub score: u32,
    /// Matched only with one letter of the query left out.
    pub typo: bool,
    /// Indices into `Found::snapshots`, oldest first.
    pub snapshots: Vec<usize>,
}

#[derive(Debug, Default)]
pub struct Found {
    /// Best first, at most `limit`.
    pub hits: Vec<Hit>,
    /// Matching versions before the limit.
    pub total: usize,
    /// The snapshots searched, oldest first.
    pub snapshots: Vec<SnapInfo>,
    /// Length of the shortest unique prefix (at least 8) of every snapshot id.
    pub short_len: usize,
}

/// The shortest prefix length (at least 8) that tells all of `ids` apart.
pub fn short_len<'a>(ids: impl IntoIterator<Item = &'a str>) -> usize {
    let mut ids: Vec<&str> = ids.into_iter().collect();
    ids.sort_unstable();
    let common = |a: &str, b: &str| a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    ids.windows(2).map(|w| common(w[0], w[1]) + 1).max().unwrap_or(0).max(8)
}

/// A glob for paths: `*` stays within a component, `**` crosses them. A pattern without `/`
/// matches a name anywhere (like `--exclude`); otherwise the whole path, with or without its
/// leading `/`.
pub struct PathGlob {
    glob: GlobMatcher,
    name_only: bool,
}

impl PathGlob {
    pub fn new(pattern: &str) -> Result<PathGlob> {
        let name_only = !pattern.contains('/');
        let p = pattern.trim_start_matches('/');
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Invalid(format!("glob {pattern:?}: {e}")))?;
        Ok(PathGlob { glob: glob.compile_matcher(), name_only })
    }

    /// `path` is a full path (`/a/b`); names are bytes, matched as they are.
    pub fn is_match(&self, path: &[u8]) -> bool {
        let target = if self.name_only { name_of(path) } else { path.strip_prefix(b"/").unwrap_or(path) };
        self.glob.is_match(std::path::Path::new(bytes_os(target)))
    }
}

fn bytes_os(b: &[u8]) -> &std::ffi::OsStr {
    std::os::unix::ffi::OsStrExt::from_bytes(b)
}

fn name_of(path: &[u8]) -> &[u8] {
    path.rsplit(|&c| c == b'/').next().unwrap_or(path)
}

fn components(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    p.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".")
}

/// The node at `path` in the tree `root` (`/` is the root itself, as a directory node).
pub fn lookup(reader: &BlobReader, root: &[BlobId], path: &[u8]) -> Result<Option<Node>> {
    let mut node = crate::diff::root_node(root);
    for comp in components(path) {
        let NodeKind::Dir { subtree } = &node.kind else { return Ok(None) };
        match reader.entry(subtree, comp)? {
            Some(n) => node = n,
            None => return Ok(None),
        }
    }
    Ok(Some(node))
}

/// Whether `s` has glob syntax in it.
pub fn has_glob_chars(s: &[u8]) -> bool {
    s.iter().any(|c| b"*?[{".contains(c))
}

/// Whether `path` is `prefix` or below it, comparing components (`/a/b` is below `a`).
fn under(path: &[u8], prefix: &[u8]) -> bool {
    let mut p = components(path);
    components(prefix).all(|c| p.next() == Some(c))
}

/// Resolves `latest` or a unique id prefix among the catalog's snapshots.
fn resolve(cat: &Catalog, by_time: &[usize], spec: &str) -> Result<usize> {
    if spec == "latest" {
        return by_time.last().copied().ok_or_else(|| Error::NoSnapshot(spec.into()));
    }
    let mut hits = cat.snapshots.iter().enumerate().filter(|(_, s)| s.id.starts_with(spec));
    match (hits.next(), hits.next()) {
        (Some((i, _)), None) => Ok(i),
        (None, _) => Err(Error::NoSnapshot(spec.into())),
        (Some(_), Some(_)) => Err(Error::AmbiguousSnapshot(spec.into())),
    }
}

/// Scores every candidate path, on a few threads (each with its own ~135 KB matcher).
fn score_all<F>(paths: &FullPaths, cands: &[u32], score: F) -> Vec<(u32, u32)>
where
    F: Fn(&mut Matcher, &mut Vec<char>, &[u8]) -> Option<u32> + Sync,
{
    let run = |part: &[u32]| {
        let mut m = Matcher::new(Config::DEFAULT.match_paths());
        let mut buf = Vec::new();
        part.iter().filter_map(|&p| score(&mut m, &mut buf, paths.get(p)).map(|s| (p, s))).collect::<Vec<_>>()
    };
    /// Below this many paths one thread is quicker than starting others.
    const PER_THREAD: usize = 20_000;
    let threads =
        std::thread::available_parallelism().map_or(1, |n| n.get()).min(cands.len() / PER_THREAD).max(1);
    if threads == 1 {
        return run(cands);
    }
    let chunk = cands.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = cands.chunks(chunk).map(|part| s.spawn(move || run(part))).collect();
        parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

fn fuzzy_score(
    p: &Pattern,
    m: &mut Matcher,
    buf: &mut Vec<char>,
    path: &[u8],
    name_too: bool,
) -> Option<u32> {
    let text = String::from_utf8_lossy(path);
    let whole = p.score(Utf32Str::new(&text, buf), m)?;
    if !name_too {
        return Some(whole);
    }
    let name = text.rsplit('/').next().unwrap_or_default();
    Some(whole + p.score(Utf32Str::new(name, buf), m).unwrap_or(0))
}

/// The query with one letter left out, each way (for typos); none for short or special queries.
fn typo_variants(q: &str) -> Vec<String> {
    let chars: Vec<char> = q.chars().collect();
    if chars.len() < 5 || chars.iter().any(|c| c.is_whitespace() || "^$!'\\".contains(*c)) {
        return Vec::new();
    }
    let mut out: Vec<String> = (0..chars.len())
        .map(|i| chars.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, c)| c).collect())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The versions on one path's chain (see `find`).
fn chain<'a>(heads: &'a [u32], next: &'a [u32], path: u32) -> impl Iterator<Item = u32> + 'a {
    let first = heads.get(path as usize).copied().filter(|&v| v != u32::MAX);
    std::iter::successors(first, move |&v| next.get(v as usize).copied().filter(|&n| n != u32::MAX))
}

pub fn find(cat: &Catalog, q: &Query) -> Result<Found> {
    // The snapshots searched (entry indices, oldest first).
    let by_time = cat.by_time();
    let mut sel: Vec<usize> = if q.snapshots.is_empty() {
        by_time.clone()
    } else {
        let wanted = q.snapshots.iter().map(|s| resolve(cat, &by_time, s)).collect::<Result<Vec<_>>>()?;
        by_time.iter().copied().filter(|i| wanted.contains(i)).collect()
    };
    if let Some(h) = &q.host {
        sel.retain(|&i| cat.snapshots[i].host == *h);
    }
    if let Some(ids) = &q.only {
        sel.retain(|&i| ids.contains(&cat.snapshots[i].id));
    }
    // Position of each selected entry in `sel`.
    let mut pos = vec![usize::MAX; cat.snapshots.len()];
    for (k, &i) in sel.iter().enumerate() {
        pos[i] = k;
    }
    let mut any = Bitmap::default();
    cat.for_each_set(|i, set| {
        if pos[i] != usize::MAX {
            any.union_with(set);
        }
    });
    // Chains of candidate versions per path (heads[path] -> next[version] -> ...).
    let nv = cat.versions.len();
    let mut heads = vec![u32::MAX; cat.path_count()];
    let mut next = vec![u32::MAX; nv];
    for (v, ver) in cat.versions.iter().enumerate() {
        let time_ok =
            q.newer_ns.is_none_or(|t| ver.mtime_ns >= t) && q.older_ns.is_none_or(|t| ver.mtime_ns < t);
        if time_ok && any.contains(v as u32) {
            next[v] = heads[ver.path as usize];
            heads[ver.path as usize] = v as u32;
        }
    }
    let paths = cat.full_paths();
    let cands: Vec<u32> = (0..heads.len() as u32)
        .filter(|&p| heads[p as usize] != u32::MAX)
        .filter(|&p| q.path.as_deref().is_none_or(|prefix| under(paths.get(p), prefix)))
        .collect();

    // (path, score, typo)
    let mut scored: Vec<(u32, u32, bool)> = match &q.matching {
        Matching::Fuzzy(query) => {
            let pattern = Pattern::parse(query, CaseMatching::Smart, Normalization::Smart);
            let name_too = !query.contains('/');
            let strict =
                score_all(&paths, &cands, |m, buf, path| fuzzy_score(&pattern, m, buf, path, name_too));
            let mut out: Vec<(u32, u32, bool)> = strict.iter().map(|&(p, s)| (p, s, false)).collect();
            let strict_hits: usize = strict.iter().map(|&(p, _)| chain(&heads, &next, p).count()).sum();
            let variants = typo_variants(query);
            if strict_hits < q.limit && !variants.is_empty() {
                let seen: std::collections::HashSet<u32> = strict.iter().map(|&(p, _)| p).collect();
                let rest: Vec<u32> = cands.iter().copied().filter(|p| !seen.contains(p)).collect();
                let patterns: Vec<Pattern> = variants
                    .iter()
                    .map(|v| Pattern::new(v, CaseMatching::Smart, Normalization::Smart, AtomKind::Fuzzy))
                    .collect();
                let typo = score_all(&paths, &rest, |m, buf, path| {
                    let target = if name_too { name_of(path) } else { path };
                    patterns.iter().filter_map(|p| fuzzy_score(p, m, buf, target, false)).max()
                });
                out.extend(typo.into_iter().map(|(p, s)| (p, s, true)));
            }
            out
        }
        Matching::Exact(query) => {
            let fold = !query.chars().any(char::is_uppercase);
            let needle = if fold { query.to_lowercase().into_bytes() } else { query.as_bytes().to_vec() };
            cands
                .iter()
                .filter_map(|&p| {
                    let path = paths.get(p);
                    let folded;
                    let hay = if fold {
                        folded = String::from_utf8_lossy(path).to_lowercase().into_bytes();
                        &folded[..]
                    } else {
                        path
                    };
                    if contains(name_of(hay), &needle) {
                        Some((p, 2, false))
                    } else {
                        contains(hay, &needle).then_some((p, 1, false))
                    }
                })
                .collect()
        }
        Matching::Glob(pattern) => {
            let g = PathGlob::new(pattern)?;
            cands.iter().filter(|&&p| g.is_match(paths.get(p))).map(|&p| (p, 0, false)).collect()
        }
    };

    // One hit per version: best first, then by path, newest version first.
    let order = |a: &(u32, u32, bool, u32), b: &(u32, u32, bool, u32)| {
        (a.2, std::cmp::Reverse(a.1))
            .cmp(&(b.2, std::cmp::Reverse(b.1)))
            .then_with(|| paths.get(a.0).cmp(paths.get(b.0)))
            .then_with(|| cat.versions[b.3 as usize].mtime_ns.cmp(&cat.versions[a.3 as usize].mtime_ns))
            .then(a.3.cmp(&b.3))
    };
    let mut hits: Vec<(u32, u32, bool, u32)> = Vec::new();
    for (p, s, typo) in scored.drain(..) {
        hits.extend(chain(&heads, &next, p).map(|v| (p, s, typo, v)));
    }
    let total = hits.len();
    if hits.len() > q.limit && q.limit > 0 {
        hits.select_nth_unstable_by(q.limit - 1, order);
    }
    hits.truncate(q.limit);
    hits.sort_unstable_by(order);

    // Which selected snapshots hold each hit.
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); hits.len()];
    cat.for_each_set(|i, set| {
        if pos[i] != usize::MAX {
            for (k, h) in hits.iter().enumerate() {
                if set.contains(h.3) {
                    held[k].push(pos[i]);
                }
            }
        }
    });
    let snapshots: Vec<SnapInfo> = sel
        .iter()
        .map(|&i| {
            let s = &cat.snapshots[i];
            SnapInfo { id: s.id.clone(), time_ns: s.time_ns, host: s.host.clone() }
        })
        .collect();
    let hits = hits
        .into_iter()
        .zip(held)
        .map(|((p, score, typo, v), mut snapshots)| {
            snapshots.sort_unstable();
            let ver = &cat.versions[v as usize];
            Hit {
                path: paths.get(p).to_vec(),
                kind: char::from(ver.kind),
                size: ver.size,
                mtime_ns: ver.mtime_ns,
                score,
                typo,
                snapshots,
            }
        })
        .collect();
    Ok(Found { hits, total, short_len: short_len(cat.snapshots.iter().map(|s| s.id.as_str())), snapshots })
}

/// The paths of one snapshot that `pattern` (a [`PathGlob`]) selects, for restore. A matching
/// directory is taken whole (its contents are not listed again). The walk starts at the longest
/// literal prefix of the pattern.
pub fn expand_glob(reader: &BlobReader, root: &[BlobId], pattern: &str) -> Result<Vec<Vec<u8>>> {
    let g = PathGlob::new(pattern)?;
    let tally = crate::repo::Tally::default();
    let mut base = Vec::new();
    let mut tree = root.to_vec();
    if !g.name_only {
        let all: Vec<&[u8]> = components(pattern.as_bytes()).collect();
        let literal = all.iter().take_while(|c| !has_glob_chars(c)).count();
        // A pattern without glob characters names one path: walk its parent to match it.
        let descend = if literal == all.len() { literal.saturating_sub(1) } else { literal };
        for comp in &all[..descend] {
            match reader.entry(&tree, comp)?.map(|n| n.kind) {
                Some(NodeKind::Dir { subtree }) => tree = subtree,
                _ => return Ok(Vec::new()),
            }
            base.push(b'/');
            base.extend_from_slice(comp);
        }
    }
    // Depth first, one tree blob held per level (`Entries`).
    let mut out = Vec::new();
    let mut stack = vec![(base, reader.entries(&tree, &tally))];
    while let Some((dir, entries)) = stack.last_mut() {
        let Some(n) = entries.next()? else {
            stack.pop();
            continue;
        };
        let mut path = dir.clone();
        path.push(b'/');
        path.extend_from_slice(&n.name);
        if g.is_match(&path) {
            out.push(path);
        } else if let NodeKind::Dir { subtree } = n.kind {
            if stack.len() >= crate::tree::MAX_DEPTH {
                let why = format!("deeper than {} levels", crate::tree::MAX_DEPTH);
                return Err(Error::corrupt("tree", String::from_utf8_lossy(&path), why));
            }
            let entries = reader.entries(&subtree, &tally);
            stack.push((path, entries));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{test_catalog, TestFile};

    const DAY: i64 = 86_400_000_000_000;

    fn fuzzy(q: &str) -> Query {
        Query {
            matching: Matching::Fuzzy(q.into()),
            snapshots: vec![],
            host: None,
            only: None,
            path: None,
            newer_ns: None,
            older_ns: None,
            limit: 50,
        }
    }

    /// Three snapshots: README changes between the first and the second.
    fn cat() -> Catalog {
        let first: &[TestFile] = &[
            (b"/home/me/proj/README.md", 100, DAY),
            (b"/home/me/proj/src/main.rs", 5, DAY),
            (b"/home/me/other/readme.txt", 7, DAY),
            (b"/home/me/caf\xe9.txt", 1, DAY),
        ];
        let later: &[TestFile] = &[
            (b"/home/me/proj/README.md", 120, 3 * DAY),
            (b"/home/me/proj/src/main.rs", 5, DAY),
            (b"/home/me/other/readme.txt", 7, DAY),
            (b"/home/me/caf\xe9.txt", 1, DAY),
        ];
        test_catalog(&[("laptop", 10, first), ("laptop", 20, later), ("server", 30, later)])
    }

    fn paths(f: &Found) -> Vec<String> {
        f.hits.iter().map(|h| String::from_utf8_lossy(&h.path).into_owned()).collect()
    }

    #[test]
    fn typos_and_skipped_letters_find_the_file() {
        let c = cat();
        for q in ["readme", "rdme", "raedme", "reqdme", "README"] {
            let f = find(&c, &fuzzy(q)).unwrap();
            let p = paths(&f);
            assert!(p.iter().any(|p| p == "/home/me/proj/README.md"), "{q}: {p:?}");
        }
        let exact = find(&c, &fuzzy("readme")).unwrap();
        assert!(exact.hits.iter().all(|h| !h.typo), "no typo pass when the query matches");
        let typo = find(&c, &fuzzy("raedme")).unwrap();
        assert!(typo.hits.iter().all(|h| h.typo));
        assert!(find(&c, &fuzzy("zzzzqqq")).unwrap().hits.is_empty());
    }

    #[test]
    fn path_fragments_rank_the_right_directory_first() {
        let f = find(&cat(), &fuzzy("proj/rdme")).unwrap();
        assert_eq!(paths(&f)[0], "/home/me/proj/README.md");
        let f = find(&cat(), &fuzzy("other/rdme")).unwrap();
        assert_eq!(paths(&f)[0], "/home/me/other/readme.txt");
        // the name weighs more than the directories: main.rs before the proj directory's files
        let f = find(&cat(), &fuzzy("main")).unwrap();
        assert_eq!(paths(&f)[0], "/home/me/proj/src/main.rs");
    }

    #[test]
    fn one_line_per_version_with_its_snapshots() {
        let f = find(&cat(), &fuzzy("proj/README.md")).unwrap();
        let readme: Vec<&Hit> = f.hits.iter().filter(|h| h.path == b"/home/me/proj/README.md").collect();
        assert_eq!(readme.len(), 2, "{:?}", f.hits);
        assert_eq!((readme[0].size, readme[0].snapshots.clone()), (120, vec![1, 2]), "newest first");
        assert_eq!((readme[1].size, readme[1].snapshots.clone()), (100, vec![0]));
        let main: Vec<Hit> = find(&cat(), &fuzzy("main.rs"))
            .unwrap()
            .hits
            .into_iter()
            .filter(|h| h.path.ends_with(b"main.rs"))
            .collect();
        assert_eq!(main.len(), 1);
        assert_eq!(main[0].snapshots, vec![0, 1, 2]);
    }

    #[test]
    fn filters() {
        let c = cat();
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = fuzzy("readme");
            f(&mut q);
            find(&c, &q).unwrap()
        };
        let f = q(&|q| q.host = Some("server".into()));
        assert_eq!(f.snapshots.len(), 1);
        assert!(f.hits.iter().all(|h| h.size != 100), "the old version is not on the server");
        let f = q(&|q| q.snapshots = vec![c.snapshots[0].id[..10].to_string()]);
        assert!(f.hits.iter().any(|h| h.size == 100) && !f.hits.iter().any(|h| h.size == 120));
        let f = q(&|q| q.snapshots = vec!["latest".into()]);
        assert_eq!(f.snapshots[0].host, "server");
        assert!(find(&c, &Query { snapshots: vec!["zz".into()], ..fuzzy("x") }).is_err());
        let f = q(&|q| q.path = Some(b"home/me/other".to_vec()));
        assert_eq!(paths(&f), vec!["/home/me/other/readme.txt"]);
        let f = q(&|q| q.path = Some(b"/home/me/oth".to_vec()));
        assert!(f.hits.is_empty(), "prefixes are whole components");
        let f = q(&|q| q.newer_ns = Some(2 * DAY));
        assert_eq!(f.hits.len(), 1);
        assert_eq!(f.hits[0].size, 120);
        let f = q(&|q| q.older_ns = Some(2 * DAY));
        assert!(f.hits.iter().all(|h| h.mtime_ns == DAY) && !f.hits.is_empty());
        let f = q(&|q| q.limit = 1);
        assert_eq!((f.hits.len(), f.total > 1), (1, true));
    }

    #[test]
    fn exact_and_glob_modes() {
        let c = cat();
        let f = find(&c, &Query { matching: Matching::Exact("readme".into()), ..fuzzy("") }).unwrap();
        assert_eq!(f.hits.len(), 3, "case-insensitive: both versions of README.md and readme.txt");
        let f = find(&c, &Query { matching: Matching::Exact("README".into()), ..fuzzy("") }).unwrap();
        assert_eq!(f.hits.len(), 2, "capitals: case-sensitive");
        let f = find(&c, &Query { matching: Matching::Exact("rdme".into()), ..fuzzy("") }).unwrap();
        assert!(f.hits.is_empty());
        let f = find(&c, &Query { matching: Matching::Glob("*.txt".into()), ..fuzzy("") }).unwrap();
        assert_eq!(paths(&f), vec!["/home/me/caf\u{FFFD}.txt", "/home/me/other/readme.txt"]);
        let f = find(&c, &Query { matching: Matching::Glob("/home/*/proj/**".into()), ..fuzzy("") }).unwrap();
        assert_eq!(f.hits.len(), 4, "{:?}", paths(&f)); // src, main.rs and README.md twice
        let f = find(&c, &Query { matching: Matching::Glob("home/*.txt".into()), ..fuzzy("") }).unwrap();
        assert!(f.hits.is_empty(), "* stays within a component");
        assert!(find(&c, &Query { matching: Matching::Glob("a[".into()), ..fuzzy("") }).is_err());
    }

    #[test]
    fn non_utf8_names_match_and_come_back_as_bytes() {
        let f = find(&cat(), &fuzzy("caf.txt")).unwrap();
        assert_eq!(f.hits[0].path, b"/home/me/caf\xe9.txt");
    }

    #[test]
    fn short_ids() {
        assert_eq!(short_len(["aaaaaaaaaaaa", "bbbbbbbbbbbb"]), 8);
        assert_eq!(short_len(["aaaaaaaaaa11", "aaaaaaaaaa22"]), 11);
        assert_eq!(short_len([]), 8);
    }

    #[test]
    fn typo_variants_leave_one_letter_out() {
        assert_eq!(typo_variants("abcde"), vec!["abcd", "abce", "abde", "acde", "bcde"]);
        assert_eq!(typo_variants("aabbc"), vec!["aabb", "aabc", "abbc"]);
        assert!(typo_variants("main").is_empty(), "three letters match too much");
        assert!(typo_variants("^abcde").is_empty());
    }
}
