//! Paths longer than PATH_MAX: opened a piece at a time, each piece with openat from the last.
//!
//! The kernel refuses a path of PATH_MAX bytes or more in one call (ENAMETOOLONG), however deep
//! a file system lets directories nest. A path is resolved one component at a time either way,
//! so resolving it in pieces shorter than PATH_MAX, each from the directory the last one
//! reached, gives the same file: symlinks within the path are followed as a whole-path open
//! would follow them, and only the last component is opened with the caller's flags. Errors are
//! the system's, unchanged: callers name the path, and may test the errno (EPERM, ENOENT).
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};

/// Longest path one system call takes, in bytes without its NUL (PATH_MAX counts the NUL).
pub const MAX_ONE_CALL: usize = libc::PATH_MAX as usize - 1;

/// Whether `path` is too long to name in one system call.
pub fn too_long(path: &Path) -> bool {
    path.as_os_str().len() > MAX_ONE_CALL
}

/// Opens `path` with `flags`, however long it is: one open(2) when it fits, else one openat
/// per piece (every piece but the last opened O_PATH | O_DIRECTORY).
pub fn open(path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let (dir, rest) = walk(path.as_os_str().as_bytes())?;
    let rest: &[u8] = if rest.is_empty() { b"." } else { rest };
    let fd = match &dir {
        Some(dir) => rustix::fs::openat(dir, rest, flags | OFlags::CLOEXEC, Mode::empty()),
        None => rustix::fs::openat(CWD, rest, flags | OFlags::CLOEXEC, Mode::empty()),
    };
    Ok(fd?)
}

/// The directory holding the last component of `path` (opened O_PATH) and that component, for
/// the *at calls (`readlinkat`, `statat`) on a path too long to name whole. A path of one
/// component is in the current directory (None).
pub fn parent(path: &Path) -> io::Result<(Option<OwnedFd>, &OsStr)> {
    let bytes = path.as_os_str().as_bytes();
    let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
    let (dir, name) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(0) => (&bytes[..1], &trimmed[1..]),
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => return Ok((None, OsStr::from_bytes(trimmed))),
    };
    let fd = open(Path::new(OsStr::from_bytes(dir)), OFlags::PATH | OFlags::DIRECTORY)?;
    Ok((Some(fd), OsStr::from_bytes(name)))
}

/// The target of the symlink at `path`, however long the path (readlinkat from its directory).
pub fn read_link(path: &Path) -> io::Result<PathBuf> {
    if !too_long(path) {
        return std::fs::read_link(path);
    }
    let (dir, name) = parent(path)?;
    let target = match &dir {
        Some(dir) => rustix::fs::readlinkat(dir, name, Vec::new()),
        None => rustix::fs::readlinkat(CWD, name, Vec::new()),
    }?;
    Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
}

/// A name for `path` that one system call takes, for calls without an *at form (the l*xattr
/// family): the path itself when it fits, else `/proc/self/fd/N/NAME`, N its directory held
/// open as long as this is. The last component is resolved as through the path itself: an
/// l* call does not follow a symlink there.
pub struct Short {
    path: PathBuf,
    _dir: Option<OwnedFd>,
}

impl Short {
    pub fn new(path: &Path) -> io::Result<Short> {
        if !too_long(path) {
            return Ok(Short { path: path.to_path_buf(), _dir: None });
        }
        let (dir, name) = parent(path)?;
        let Some(dir) = dir else { return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)) };
        let path = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
        Ok(Short { path, _dir: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens every whole piece of `path` but the last (none when it fits in one call) and returns
/// the directory reached with what is left to resolve from it.
fn walk(path: &[u8]) -> io::Result<(Option<OwnedFd>, &[u8])> {
    let mut dir: Option<OwnedFd> = None;
    let mut rest = path;
    while rest.len() > MAX_ONE_CALL {
        // The longest prefix that ends before a '/' and fits; a component is at most NAME_MAX
        // bytes, so there is one unless the path has a component no file system allows.
        let cut = rest[..=MAX_ONE_CALL].iter().rposition(|&b| b == b'/');
        let Some(cut) = cut else { return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG)) };
        let piece: &[u8] = if cut == 0 { b"/" } else { &rest[..cut] };
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let next = match &dir {
            Some(d) => rustix::fs::openat(d, piece, flags, Mode::empty()),
            None => rustix::fs::openat(CWD, piece, flags, Mode::empty()),
        };
        dir = Some(next?);
        rest = &rest[cut..];
        while let Some(r) = rest.strip_prefix(b"/") {
            rest = r;
        }
    }
    Ok((dir, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn raw(e: io::Error) -> Option<i32> {
        e.raw_os_error()
    }

    /// `depth` directories of 200-byte names below `root`, made one mkdirat at a time (no single
    /// call could name the deepest): the deepest, open, and its path.
    fn deep(root: &Path, depth: usize) -> (OwnedFd, PathBuf) {
        let how = OFlags::PATH | OFlags::DIRECTORY;
        let mut dir = rustix::fs::open(root, how, Mode::empty()).unwrap();
        let mut path = root.to_path_buf();
        for i in 0..depth {
            let name = format!("{i:0>200}");
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = rustix::fs::openat(&dir, name.as_str(), how, Mode::empty()).unwrap();
            path.push(name);
        }
        (dir, path)
    }

    fn path_in_proc(dir: &OwnedFd, name: &str) -> PathBuf {
        Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name)
    }

    #[test]
    fn opens_a_path_longer_than_path_max_piece_by_piece() {
        let t = tempfile::tempdir().unwrap();
        let (dir, path) = deep(t.path(), 30);
        assert!(path.as_os_str().len() > 6000);
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        let f = rustix::fs::openat(&dir, "f", create, Mode::from_raw_mode(0o644)).unwrap();
        std::fs::File::from(f).write_all(b"deep content").unwrap();
        rustix::fs::symlinkat("f", &dir, "link").unwrap();
        assert_eq!(raw(std::fs::read(path.join("f")).unwrap_err()), Some(libc::ENAMETOOLONG));

        let read = |p: &Path, flags: OFlags| -> io::Result<String> {
            let mut s = String::new();
            std::fs::File::from(open(p, flags)?).read_to_string(&mut s)?;
            Ok(s)
        };
        let nofollow = OFlags::RDONLY | OFlags::NOFOLLOW;
        assert_eq!(read(&path.join("f"), nofollow).unwrap(), "deep content");
        // The caller's flags are for the last component: O_NOFOLLOW refuses the link there.
        assert_eq!(raw(read(&path.join("link"), nofollow).unwrap_err()), Some(libc::ELOOP));
        assert_eq!(read(&path.join("link"), OFlags::RDONLY).unwrap(), "deep content");
        // Within the path a symlink is followed, as a whole-path open follows it.
        let first = path.strip_prefix(t.path()).unwrap().components().next().unwrap();
        std::os::unix::fs::symlink(first, t.path().join("alias")).unwrap();
        let rest: PathBuf = path.strip_prefix(t.path()).unwrap().components().skip(1).collect();
        assert_eq!(read(&t.path().join("alias").join(&rest).join("f"), nofollow).unwrap(), "deep content");
        // A directory named with a trailing `.` or `/` is the directory.
        assert!(open(&path.join("."), OFlags::RDONLY | OFlags::DIRECTORY).is_ok());
        let mut slashed = path.clone().into_os_string();
        slashed.push("/");
        assert!(open(Path::new(&slashed), OFlags::RDONLY | OFlags::DIRECTORY).is_ok());

        let link = path.join("link");
        let (at, name) = parent(&link).unwrap();
        assert_eq!(name, "link");
        assert_eq!(rustix::fs::readlinkat(at.unwrap(), name, Vec::new()).unwrap().as_bytes(), b"f");
        assert_eq!(read_link(&path.join("link")).unwrap(), Path::new("f"));
        let name: &[u8] = b"user.deep";
        rustix::fs::lsetxattr(path_in_proc(&dir, "f"), name, b"v", rustix::fs::XattrFlags::empty()).unwrap();
        let short = Short::new(&path.join("f")).unwrap();
        let mut value = [0u8; 8];
        let n = rustix::fs::lgetxattr(short.path(), name, &mut value).unwrap();
        assert_eq!(&value[..n], b"v");
        // Through a link's short name, l* calls see the link (which has no user.* of its own).
        let short = Short::new(&path.join("link")).unwrap();
        assert!(rustix::fs::lgetxattr(short.path(), name, &mut value).is_err());
        assert_eq!(rustix::fs::getxattr(short.path(), name, &mut value).unwrap(), 1);
        let short = Short::new(Path::new("plain")).unwrap();
        assert_eq!(short.path(), Path::new("plain"));
        let (at, name) = parent(Path::new("plain")).unwrap();
        assert!(at.is_none() && name == "plain");

        // Missing in the middle is missing; a component no file system allows is too long.
        let missing = t.path().join("nope").join(&rest).join("f");
        assert_eq!(read(&missing, nofollow).unwrap_err().kind(), io::ErrorKind::NotFound);
        let huge = t.path().join("x".repeat(5000));
        assert_eq!(raw(open(&huge, OFlags::RDONLY).unwrap_err()), Some(libc::ENAMETOOLONG));
        // A short path is one open, as before.
        assert_eq!(read(&t.path().join("alias"), nofollow).map_err(raw).unwrap_err(), Some(libc::ELOOP));
    }
}
