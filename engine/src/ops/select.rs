//! select: the selection options of `run`, with restic's semantics where restic has the option
//! (`restic backup`, 0.14), as the scan's `Select`. `Rules` is what the command line asked for,
//! read and checked before anything is written; `Selection` applies it during one scan and holds
//! per-directory state (ignore files, exclusion tags) on a stack as deep as the walk.
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use stages::scan::{Choice, Select};
use stages::{FileKind, Meta};

use crate::error::{Error, Result};

/// The CACHEDIR.TAG specification (https://bford.info/cachedir/): a directory holding a file of
/// this name that starts with this signature is a cache.
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// FS_NODUMP_FL: "do not dump this file" (`chattr +d`).
const NODUMP: u32 = rustix::fs::IFlags::NODUMP.bits();

/// An exclusion tag (`--exclude-if-present NAME[:HEADER]`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tag {
    name: OsString,
    /// What the tag file must start with (empty: any content).
    header: Vec<u8>,
}

/// What the selection options asked for: compiled, checked, and with every file they name read.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Exclude patterns (--exclude, --exclude-file, --iexclude, --iexclude-file).
    globs: Vec<Glob>,
    /// -x: do not descend into other file systems than the root's.
    pub one_file_system: bool,
    /// Files larger than this are left out.
    pub larger_than: Option<u64>,
    tags: Vec<Tag>,
    /// Names of gitignore-style files that apply to their directory and below.
    ignore_files: Vec<OsString>,
    /// --exclude-nodump: files and directories with the nodump inode flag (`chattr +d`) are
    /// left out, as borg's option of that name does.
    pub exclude_nodump: bool,
}

impl Rules {
    pub(crate) fn globs(&self) -> &[Glob] {
        &self.globs
    }

    /// The exclude patterns alone, compiled (`watch` leaves what they match unwatched).
    pub fn patterns(&self) -> Result<Patterns> {
        Patterns::new(&self.globs)
    }

    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
            && !self.one_file_system
            && self.larger_than.is_none()
            && self.tags.is_empty()
            && self.ignore_files.is_empty()
            && !self.exclude_nodump
    }

    /// One exclude pattern; `origin` names where it came from in an error. As restic matches
    /// them: `*` and `?` never match a `/` (`**` does), and a relative pattern with a `/`
    /// matches at any depth (`keep/*.log` is `**/keep/*.log`).
    pub fn exclude(&mut self, pattern: &str, case_insensitive: bool, origin: &str) -> Result<()> {
        let anywhere = pattern.contains('/') && !pattern.starts_with('/') && !pattern.starts_with("**/");
        let glob = if anywhere { format!("**/{pattern}") } else { pattern.to_string() };
        let g = GlobBuilder::new(&glob)
            .case_insensitive(case_insensitive)
            .literal_separator(true)
            .build()
            .map_err(|e| Error::Invalid(format!("{origin}: exclude pattern {pattern:?}: {e}")))?;
        self.globs.push(g);
        Ok(())
    }

    /// The patterns of an exclude file ("-": standard input), one a line as restic reads them.
    pub fn exclude_file(&mut self, file: &Path, case_insensitive: bool) -> Result<()> {
        let bytes = read_list(file)?;
        for (line, pattern) in pattern_lines(&bytes).map_err(|(n, why)| at(file, n, why))? {
            self.exclude(&pattern, case_insensitive, &format!("{}:{line}", file.display()))?;
        }
        Ok(())
    }

    /// `NAME[:HEADER]`: a directory holding a file NAME (starting with HEADER, if given) keeps
    /// only that file. Restic's rule: the directory itself stays, and so does the tag file.
    pub fn exclude_if_present(&mut self, spec: &str) -> Result<()> {
        let (name, header) = spec.split_once(':').unwrap_or((spec, ""));
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(Error::Invalid(format!(
                "--exclude-if-present {spec:?}: NAME must be a file name (NAME or NAME:CONTENT)"
            )));
        }
        self.add_tag(Tag { name: name.into(), header: header.as_bytes().to_vec() });
        Ok(())
    }

    /// --exclude-caches: a CACHEDIR.TAG with the specification's signature.
    pub fn exclude_caches(&mut self) {
        self.add_tag(Tag { name: CACHEDIR_TAG.into(), header: CACHEDIR_SIGNATURE.to_vec() });
    }

    fn add_tag(&mut self, tag: Tag) {
        if !self.tags.contains(&tag) {
            self.tags.push(tag);
        }
    }

    /// A gitignore-style file name (e.g. `.gitignore`), looked for in every directory walked.
    pub fn ignore_file(&mut self, name: &OsStr) -> Result<()> {
        let b = name.as_bytes();
        if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
            return Err(Error::Invalid(format!("--ignore-file {name:?}: must be a file name, not a path")));
        }
        if !self.ignore_files.iter().any(|n| n == name) {
            self.ignore_files.push(name.to_os_string());
        }
        Ok(())
    }
}

fn at(file: &Path, line: usize, why: String) -> Error {
    Error::Invalid(format!("{}:{line}: {why}", file.display()))
}

/// A file the user named for a list (patterns or paths): "-" is standard input.
fn read_list(file: &Path) -> Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut out = Vec::new();
        std::io::stdin().read_to_end(&mut out).map_err(|e| Error::io("standard input", e))?;
        return Ok(out);
    }
    std::fs::read(file).map_err(|e| Error::io(file, e))
}

/// Lines as Go's bufio.Scanner splits them (restic reads its lists with it): on '\n', a '\r'
/// before it dropped, no empty last line.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty = bytes.is_empty();
    bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(move |_| !empty)
}

/// The patterns of an exclude file with their line numbers: trimmed, blank lines and lines
/// starting with '#' skipped, $NAME and ${NAME} replaced by the environment's value (as restic
/// does). Patterns are text (globs match on UTF-8), so a line that is not is an error.
fn pattern_lines(bytes: &[u8]) -> std::result::Result<Vec<(usize, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (n, line) in lines(bytes) {
        let line = std::str::from_utf8(line).map_err(|_| (n, "a pattern must be UTF-8 text".to_string()))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push((n, expand_env(line, |k| std::env::var(k).ok())));
    }
    Ok(out)
}

/// Go's os.Expand as restic calls it: `$NAME` and `${NAME}` become the variable's value (empty
/// when unset), `$$` a '$', and a '$' followed by anything else stays.
fn expand_env(s: &str, get: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, used) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            }
        } else if after.starts_with('$') {
            ("$", 1)
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], end)
        };
        match (name, used) {
            (_, 0) | ("", _) => out.push('$'),
            ("$", _) => out.push('$'),
            (name, _) => out.push_str(&get(name).unwrap_or_default()),
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// How a --files-from* file lists paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListForm {
    /// --files-from: one a line, trimmed; blank lines and lines starting with '#' skipped.
    /// (restic also expands glob patterns here; bakare takes each line as a path.)
    Lines,
    /// --files-from-verbatim: one a line, exactly as written; only empty lines skipped.
    Verbatim,
    /// --files-from-raw: each path ends with a NUL byte (find -print0); an empty one is an error.
    Raw,
}

/// The paths a --files-from* file lists: bytes, never assumed to be UTF-8.
pub fn files_from(file: &Path, form: ListForm) -> Result<Vec<PathBuf>> {
    let bytes = read_list(file)?;
    parse_paths(&bytes, form).map_err(|why| Error::Invalid(format!("{}: {why}", file.display())))
}

fn parse_paths(bytes: &[u8], form: ListForm) -> std::result::Result<Vec<PathBuf>, String> {
    let path = |b: &[u8]| PathBuf::from(OsString::from_vec(b.to_vec()));
    match form {
        ListForm::Lines => Ok(lines(bytes)
            .map(|(_, l)| l.trim_ascii())
            .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
            .map(path)
            .collect()),
        ListForm::Verbatim => Ok(lines(bytes).map(|(_, l)| l).filter(|l| !l.is_empty()).map(path).collect()),
        ListForm::Raw => {
            let Some(body) = bytes.strip_suffix(b"\0") else {
                return match bytes.is_empty() {
                    true => Ok(Vec::new()),
                    false => {
                        Err("the last path does not end with a NUL byte (is it a NUL-separated list?)".into())
                    }
                };
            };
            body.split(|&b| b == 0)
                .enumerate()
                .map(|(i, p)| match p.is_empty() {
                    true => Err(format!("path {} is empty", i + 1)),
                    false => Ok(path(p)),
                })
                .collect()
        }
    }
}

/// Exclude patterns, restic's rule: a pattern without '/' matches a name anywhere, one with '/'
/// the whole path.
#[derive(Clone)]
pub struct Patterns {
    names: GlobSet,
    paths: GlobSet,
}

impl Patterns {
    pub(crate) fn new<'a>(globs: impl IntoIterator<Item = &'a Glob>) -> Result<Patterns> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for g in globs {
            match g.glob().contains('/') {
                true => paths.add(g.clone()),
                false => names.add(g.clone()),
            };
        }
        let build = |b: GlobSetBuilder| b.build().map_err(|e| Error::Invalid(e.to_string()));
        Ok(Patterns { names: build(names)?, paths: build(paths)? })
    }

    /// Empty sets are not consulted at all: this runs for every entry.
    pub fn is_match(&self, path: &Path) -> bool {
        (!self.paths.is_empty() && self.paths.is_match(path))
            || (!self.names.is_empty() && path.file_name().is_some_and(|n| self.names.is_match(n)))
    }
}

/// What a directory that is open in the walk adds: only directories that hold an ignore file or
/// an exclusion tag get one.
struct Layer {
    depth: usize,
    ignore: Option<Gitignore>,
    /// The names of the exclusion tags found in it: every other entry is left out.
    tags: Vec<OsString>,
}

/// Warnings for the backup's result (an ignore file that could not be parsed, a tag file that
/// could not be read), gathered on the scan thread.
pub type Warnings = Arc<Mutex<Vec<String>>>;

/// `Rules` applied to one scan.
pub struct Selection {
    patterns: Patterns,
    /// Paths always left out (bakare's own repository and cache), as bytes.
    always: Vec<Vec<u8>>,
    one_file_system: bool,
    larger_than: Option<u64>,
    tags: Vec<Tag>,
    ignore_files: Vec<OsString>,
    exclude_nodump: bool,
    /// The device of the root being walked, with --one-file-system.
    root_dev: Option<u64>,
    depth: usize,
    layers: Vec<Layer>,
    warnings: Warnings,
}

impl Selection {
    /// The rules plus `excludes` (--exclude patterns) and paths always left out; None when
    /// there is nothing to leave out (the scan then asks nothing at all).
    pub fn new(rules: &Rules, excludes: &[String], always: Vec<PathBuf>) -> Result<Option<Selection>> {
        let mut rules = rules.clone();
        for p in excludes {
            rules.exclude(p, false, "--exclude")?;
        }
        if rules.is_empty() && always.is_empty() {
            return Ok(None);
        }
        let always =
            always.iter().map(|a| a.components().collect::<PathBuf>().into_os_string().into_vec()).collect();
        Ok(Some(Selection {
            patterns: Patterns::new(&rules.globs)?,
            always,
            one_file_system: rules.one_file_system,
            larger_than: rules.larger_than,
            tags: rules.tags,
            ignore_files: rules.ignore_files,
            exclude_nodump: rules.exclude_nodump,
            root_dev: None,
            depth: 0,
            layers: Vec::new(),
            warnings: Warnings::default(),
        }))
    }

    pub fn warnings(&self) -> Warnings {
        self.warnings.clone()
    }

    fn warn(&self, w: String) {
        if let Ok(mut ws) = self.warnings.lock() {
            ws.push(w);
        }
    }

    /// Whether `dir` holds the tag: restic's check (present; if a header is given, the file
    /// starts with it, otherwise a warning says why the tag does not count).
    fn tagged(&self, dir: &Path, tag: &Tag) -> bool {
        if tag.header.is_empty() {
            return true;
        }
        let file = dir.join(&tag.name);
        let mut start = vec![0u8; tag.header.len()];
        // Only a regular file is a tag: a FIFO of that name would block the run, a symlink
        // could name a device.
        let read = {
            use rustix::fs::OFlags;
            // At any depth: a path past PATH_MAX is opened a piece at a time.
            ::io::longpath::open(&file, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK)
                .map(std::fs::File::from)
                .and_then(|mut f| match f.metadata()?.is_file() {
                    true => f.read_exact(&mut start),
                    false => Err(std::io::Error::other("not a regular file")),
                })
        };
        match read {
            Ok(()) if start == tag.header => true,
            Ok(()) => {
                self.warn(format!(
                    "{}: not an exclusion tag (it does not start with the header)",
                    file.display()
                ));
                false
            }
            Err(e) => {
                self.warn(format!("{}: cannot read the exclusion tag: {e}", file.display()));
                false
            }
        }
    }

    fn gitignore(&self, dir: &Path, names: &[&OsString]) -> Option<Gitignore> {
        let mut b = GitignoreBuilder::new(dir);
        for n in names {
            let file = dir.join(n);
            let added = match ::io::longpath::too_long(&file) {
                false => b.add(&file),
                true => add_long(&mut b, &file),
            };
            if let Some(e) = added {
                self.warn(format!("ignore file {}: {e} (its other lines apply)", dir.join(n).display()));
            }
        }
        match b.build() {
            Ok(g) => Some(g),
            Err(e) => {
                let names: Vec<_> = names.iter().map(|n| dir.join(n).display().to_string()).collect();
                self.warn(format!("ignore file {}: {e} (not applied)", names.join(", ")));
                None
            }
        }
    }
}

/// `GitignoreBuilder::add` for an ignore file past PATH_MAX, which it cannot open: its lines,
/// read here, are added as `add` adds them (a UTF-8 BOM dropped; errors with the file and line).
fn add_long(b: &mut GitignoreBuilder, file: &Path) -> Option<ignore::Error> {
    use std::io::BufRead;
    let at = |line: usize, err: ignore::Error| ignore::Error::WithPath {
        path: file.to_path_buf(),
        err: Box::new(ignore::Error::WithLineNumber { line: line as u64, err: Box::new(err) }),
    };
    let f = match ::io::longpath::open(file, rustix::fs::OFlags::RDONLY) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return Some(ignore::Error::WithPath { path: file.to_path_buf(), err: Box::new(e.into()) }),
    };
    let mut errs = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                let invalid = e.kind() == std::io::ErrorKind::InvalidData;
                errs.push(at(i + 1, e.into()));
                match invalid {
                    true => continue,
                    false => break,
                }
            }
        };
        let line = if i == 0 { line.trim_start_matches('\u{feff}') } else { &line };
        if let Err(e) = b.add_line(Some(file.to_path_buf()), line) {
            errs.push(at(i + 1, e));
        }
    }
    match errs.len() {
        0 => None,
        1 => errs.pop(),
        _ => Some(ignore::Error::Partial(errs)),
    }
}

fn find<'a>(entries: &'a [::io::dir::Entry], name: &OsStr) -> Option<&'a ::io::dir::Entry> {
    // Listings are sorted by name bytes (io::dir::list).
    let i = entries.binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes())).ok()?;
    entries.get(i)
}

impl Select for Selection {
    fn root(&mut self, root: &Path) {
        self.depth = 0;
        self.layers.clear();
        // Like restic, the device of each root: a second root on another file system is walked.
        self.root_dev = match self.one_file_system {
            // Followed: a root named `LINK/` is walked on the file system of its directory.
            true => std::fs::metadata(root).ok().map(|m| std::os::unix::fs::MetadataExt::dev(&m)),
            false => None,
        };
    }

    fn enter(&mut self, dir: &Path, entries: &[::io::dir::Entry]) {
        self.depth += 1;
        if self.tags.is_empty() && self.ignore_files.is_empty() {
            return;
        }
        // Looked up in the listing: no system call unless a tag with a header is there.
        let tags: Vec<OsString> = self
            .tags
            .iter()
            .filter(|t| find(entries, &t.name).is_some() && self.tagged(dir, t))
            .map(|t| t.name.clone())
            .collect();
        let regular =
            |e: &&::io::dir::Entry| e.stat.as_ref().is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFREG);
        let present: Vec<&OsString> =
            self.ignore_files.iter().filter(|n| find(entries, n).filter(regular).is_some()).collect();
        let ignore = match present.is_empty() {
            true => None,
            false => self.gitignore(dir, &present),
        };
        if ignore.is_some() || !tags.is_empty() {
            self.layers.push(Layer { depth: self.depth, ignore, tags });
        }
    }

    fn choose(&mut self, path: &Path, meta: &Meta) -> Choice {
        let bytes = path.as_os_str().as_bytes();
        if self.always.iter().any(|a| *a == bytes) || self.patterns.is_match(path) {
            return Choice::Leave;
        }
        if meta.kind == FileKind::File && self.larger_than.is_some_and(|max| meta.size > max) {
            return Choice::Leave;
        }
        let is_dir = meta.kind == FileKind::Dir;
        if let Some(top) = self.layers.last().filter(|l| l.depth == self.depth && !l.tags.is_empty()) {
            let name = path.file_name().unwrap_or_default();
            if top.tags.iter().any(|t| t != name) {
                return Choice::Leave;
            }
        }
        // The innermost ignore file that has a say decides (a later `!pattern` re-includes).
        for g in self.layers.iter().rev().filter_map(|l| l.ignore.as_ref()) {
            match g.matched(path, is_dir) {
                ignore::Match::None => continue,
                ignore::Match::Ignore(_) => return Choice::Leave,
                ignore::Match::Whitelist(_) => break,
            }
        }
        // Last: the flag costs an open and an ioctl, and only regular files and directories are
        // opened (a FIFO or a device must not be; attrs::read_flags opens without following,
        // blocking or taking a terminal). Flags that cannot be read keep the entry: reading its
        // attributes names the failure.
        if self.exclude_nodump
            && (is_dir || meta.kind == FileKind::File)
            && crate::ops::attrs::read_flags(path).unwrap_or(0) & NODUMP != 0
        {
            return Choice::Leave;
        }
        match self.root_dev {
            // restic keeps a mount point (its parent is on the root's device, or the walk
            // would not be here) as an empty directory, and leaves anything else out.
            Some(dev) if dev != meta.dev => match is_dir {
                true => Choice::Shallow,
                false => Choice::Leave,
            },
            _ => Choice::Take,
        }
    }

    fn leave(&mut self) {
        if self.layers.last().is_some_and(|l| l.depth == self.depth) {
            self.layers.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn exclude_file_lines_are_trimmed_with_comments_and_blanks_skipped() {
        let text = b"# a comment\n\n  *.tmp  \r\n/abs/path/*\n\t\n#x\nname\n";
        let got = pattern_lines(text).unwrap();
        assert_eq!(got, vec![(3, "*.tmp".into()), (4, "/abs/path/*".into()), (7, "name".into())]);
        assert_eq!(pattern_lines(b"ok\n\xff\n").unwrap_err().0, 2);
    }

    #[test]
    fn env_expansion_is_gos() {
        let get = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        assert_eq!(expand_env("$HOME/.cache", get), "/home/u/.cache");
        assert_eq!(expand_env("${HOME}x", get), "/home/ux");
        assert_eq!(expand_env("a$$b", get), "a$b");
        assert_eq!(expand_env("$UNSET/x", get), "/x");
        assert_eq!(expand_env("cost$", get), "cost$");
        assert_eq!(expand_env("$/x", get), "$/x");
    }

    #[test]
    fn a_bad_pattern_names_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ex");
        std::fs::write(&f, "ok\n# c\nbad[\n").unwrap();
        let e = Rules::default().exclude_file(&f, false).unwrap_err().to_string();
        assert!(e.contains(&format!("{}:3", f.display())) && e.contains("bad["), "{e}");
        let missing = Rules::default().exclude_file(&dir.path().join("nope"), true).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
    }

    #[test]
    fn files_from_forms_keep_bytes() {
        let list = b"# comment\n  /a/b  \n\n/caf\xe9\r\n/x y\n";
        let got = parse_paths(list, ListForm::Lines).unwrap();
        let want: Vec<PathBuf> = [&b"/a/b"[..], b"/caf\xe9", b"/x y"]
            .iter()
            .map(|b| OsString::from_vec(b.to_vec()).into())
            .collect();
        assert_eq!(got, want);
        let verbatim = parse_paths(b"# not a comment\n  spaced \n\n", ListForm::Verbatim).unwrap();
        assert_eq!(verbatim, vec![PathBuf::from("# not a comment"), PathBuf::from("  spaced ")]);
        let raw = parse_paths(b"/a\nb\0/\xff\0", ListForm::Raw).unwrap();
        assert_eq!(raw, vec![PathBuf::from("/a\nb"), PathBuf::from(OsString::from_vec(b"/\xff".to_vec()))]);
        assert!(parse_paths(b"/a\0/b", ListForm::Raw).is_err());
        assert!(parse_paths(b"/a\0\0", ListForm::Raw).is_err());
        assert!(parse_paths(b"", ListForm::Raw).unwrap().is_empty());
    }

    #[test]
    fn exclude_if_present_specs() {
        let mut r = Rules::default();
        r.exclude_if_present(".nobackup").unwrap();
        r.exclude_if_present("TAG:head:er").unwrap();
        assert_eq!(r.tags[1], Tag { name: "TAG".into(), header: b"head:er".to_vec() });
        assert!(r.exclude_if_present(":x").is_err());
        assert!(r.exclude_if_present("a/b").is_err());
    }

    fn selection(rules: &Rules) -> Selection {
        Selection::new(rules, &[], Vec::new()).unwrap().unwrap()
    }

    fn file_meta() -> Meta {
        Meta {
            kind: FileKind::File,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            size: 10,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 1,
            dev: 1,
            nlink: 1,
            rdev: 0,
            blocks: 0,
        }
    }

    #[test]
    fn cachedir_tag_counts_only_with_its_signature() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad, short) = (dir.path().join("good"), dir.path().join("bad"), dir.path().join("short"));
        for d in [&good, &bad, &short] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("data"), "x").unwrap();
        }
        let mut sig = CACHEDIR_SIGNATURE.to_vec();
        sig.extend_from_slice(b"\n# This file is a cache directory tag.\n");
        std::fs::write(good.join(CACHEDIR_TAG), &sig).unwrap();
        std::fs::write(bad.join(CACHEDIR_TAG), b"Signature: 0000000000000000000000000000000000").unwrap();
        std::fs::write(short.join(CACHEDIR_TAG), b"Signature").unwrap();
        let mut rules = Rules::default();
        rules.exclude_caches();
        let mut s = selection(&rules);
        s.root(dir.path());
        let mut kept = Vec::new();
        for d in [&good, &bad, &short] {
            s.enter(d, &::io::dir::list(d).unwrap());
            for n in ["data", CACHEDIR_TAG] {
                if s.choose(&d.join(n), &file_meta()) == Choice::Take {
                    kept.push(format!("{}/{n}", d.file_name().unwrap().to_string_lossy()));
                }
            }
            s.leave();
        }
        assert_eq!(
            kept,
            ["good/CACHEDIR.TAG", "bad/data", "bad/CACHEDIR.TAG", "short/data", "short/CACHEDIR.TAG"]
        );
        assert_eq!(s.warnings().lock().unwrap().len(), 2, "the bad and the short tag are named");
    }

    #[test]
    fn ignore_files_apply_below_their_directory_until_it_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("a/b"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join(".ignore"), "*.log\n!keep.log\n").unwrap();
        std::fs::write(b.join(".ignore"), "keep.log\n").unwrap();
        let mut rules = Rules::default();
        rules.ignore_file(OsStr::new(".ignore")).unwrap();
        let mut s = selection(&rules);
        s.root(dir.path());
        s.enter(dir.path(), &::io::dir::list(dir.path()).unwrap());
        s.enter(&a, &::io::dir::list(&a).unwrap());
        assert_eq!(s.choose(&a.join("x.log"), &file_meta()), Choice::Leave);
        assert_eq!(s.choose(&a.join("keep.log"), &file_meta()), Choice::Take);
        s.enter(&b, &::io::dir::list(&b).unwrap());
        assert_eq!(s.choose(&b.join("keep.log"), &file_meta()), Choice::Leave, "the inner file decides");
        assert_eq!(s.choose(&b.join("y.log"), &file_meta()), Choice::Leave, "the outer one still applies");
        s.leave();
        s.leave();
        assert_eq!(s.choose(&dir.path().join("x.log"), &file_meta()), Choice::Take, "a's file is left");
        assert!(s.layers.is_empty());
    }
}
