//! dirty: the directories a file watcher saw change since the files cache was written
//! (`bakare watch`). A scan given one lists only the directories on a path to a change; every
//! other directory is taken whole from the files cache, unlisted (`scan::Known::subtree`).
use std::collections::BTreeSet;

/// Absolute directory paths (bytes, no trailing `/`, the root is `/`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Directories whose entries changed (added, removed, renamed, written, attributes): each
    /// is listed again, and so is every directory above it.
    dirs: BTreeSet<Vec<u8>>,
    /// Directories that are new where they are (created, or moved in): nothing at or below
    /// them is taken from the cache, whose records at their paths describe what was there
    /// before.
    deep: BTreeSet<Vec<u8>>,
}

/// The key under which a path is kept: no trailing `/` except for the root itself.
fn key(path: &[u8]) -> &[u8] {
    match path {
        [] | [b'/'] => b"/",
        [rest @ .., b'/'] => key(rest),
        p => p,
    }
}

/// `path` and each directory above it, innermost first (`/a/b`, `/a`, `/`).
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let path = key(path);
    let mut end = Some(path.len());
    std::iter::from_fn(move || {
        let e = end?;
        let here = match e {
            0 => &path[..1],
            e => &path[..e],
        };
        end = match here {
            b"/" => None,
            _ => Some(here.iter().rposition(|&c| c == b'/').unwrap_or(0)),
        };
        Some(here)
    })
}

impl Dirty {
    /// The entries of directory `dir` changed.
    pub fn mark(&mut self, dir: &[u8]) {
        self.dirs.insert(key(dir).to_vec());
    }

    /// `dir` is new where it is: everything at and below it is scanned.
    pub fn mark_deep(&mut self, dir: &[u8]) {
        self.dirs.insert(key(dir).to_vec());
        self.deep.insert(key(dir).to_vec());
    }

    /// Everything in `other` too.
    pub fn merge(&mut self, other: Dirty) {
        self.dirs.extend(other.dirs);
        self.deep.extend(other.deep);
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// How many directories are marked.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// The marked directories, sorted.
    pub fn dirs(&self) -> impl Iterator<Item = &[u8]> {
        self.dirs.iter().map(Vec::as_slice)
    }

    /// Whether the watcher saw no change at or below `dir` and nothing above it is new: the
    /// files cache's record of it still holds.
    pub fn untouched(&self, dir: &[u8]) -> bool {
        let dir = key(dir);
        if ancestors(dir).any(|a| self.deep.contains(a)) {
            return false;
        }
        if self.dirs.contains(dir) {
            return false;
        }
        // Anything marked below `dir`: paths from `dir/` up to (not including) `dir0`, the
        // next byte after `/`.
        if dir == b"/" {
            return self.dirs.is_empty();
        }
        let (mut lo, mut hi) = (dir.to_vec(), dir.to_vec());
        lo.push(b'/');
        hi.push(b'/' + 1);
        self.dirs.range(lo..hi).next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_run_from_the_path_to_the_root() {
        let a: Vec<&[u8]> = ancestors(b"/a/bc/d/").collect();
        assert_eq!(a, [&b"/a/bc/d"[..], b"/a/bc", b"/a", b"/"]);
        let r: Vec<&[u8]> = ancestors(b"/").collect();
        assert_eq!(r, [&b"/"[..]]);
    }

    #[test]
    fn a_mark_touches_its_directory_and_those_above_it_only() {
        let mut d = Dirty::default();
        assert!(d.untouched(b"/"));
        d.mark(b"/home/u/docs/");
        for touched in [&b"/"[..], b"/home", b"/home/u", b"/home/u/docs"] {
            assert!(!d.untouched(touched), "{}", String::from_utf8_lossy(touched));
        }
        // Below the mark, beside it, and names that only share a prefix are untouched.
        for clean in
            [&b"/home/u/docs/old"[..], b"/home/u/doc", b"/home/u/docs2", b"/home/u/docs-x", b"/home/v"]
        {
            assert!(d.untouched(clean), "{}", String::from_utf8_lossy(clean));
        }
    }

    #[test]
    fn a_deep_mark_touches_everything_below_it() {
        let mut d = Dirty::default();
        d.mark_deep(b"/data/new");
        assert!(!d.untouched(b"/data/new/a/b/c"));
        assert!(!d.untouched(b"/data"));
        assert!(d.untouched(b"/data/newer"));
        assert!(d.untouched(b"/data/old"));
        let mut e = Dirty::default();
        e.mark(b"/x");
        e.merge(d);
        assert_eq!(e.len(), 2);
        assert!(!e.untouched(b"/data/new/z"));
    }

    #[test]
    fn non_utf8_names_are_bytes() {
        let mut d = Dirty::default();
        d.mark(b"/a/\xff\xfe");
        assert!(!d.untouched(b"/a"));
        assert!(d.untouched(b"/a/\xff"));
        assert!(!d.untouched(b"/a/\xff\xfe"));
    }
}
