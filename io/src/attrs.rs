//! attrs: reading what a file has beyond stat — its extended attributes and Linux inode flags —
//! through its path (not following a symlink there), or through a descriptor already open. The
//! read stage reads a regular file's on the descriptor it reads the content through, sparing
//! an open, a close and a path lookup per file; the engine reads everything else's by path
//! (`engine::ops::attrs`, which decides what is kept).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::io::Errno;

/// Largest attribute value Linux stores (XATTR_SIZE_MAX).
pub const MAX_VALUE: usize = 64 << 10;
/// Largest list of attribute names read (XATTR_LIST_MAX is 64 KiB; some file systems list
/// more).
const MAX_LIST: usize = 1 << 20;

/// (name, value) of one extended attribute.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// Where the attributes are read: an entry named by a path one system call takes (the entry
/// itself, never what a symlink there names), or an open descriptor.
#[derive(Clone, Copy)]
pub enum At<'a> {
    Path(&'a Path),
    Fd(BorrowedFd<'a>),
}

impl At<'_> {
    fn list(self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            At::Path(p) => rustix::fs::llistxattr(p, buf),
            At::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        }
    }
    fn list_size(self) -> rustix::io::Result<usize> {
        match self {
            At::Path(p) => rustix::fs::llistxattr_query(p),
            At::Fd(fd) => rustix::fs::flistxattr_query(fd),
        }
    }
    fn get(self, name: &[u8], buf: &mut [u8]) -> rustix::io::Result<usize> {
        match self {
            At::Path(p) => rustix::fs::lgetxattr(p, name, buf),
            At::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
        }
    }
    fn get_size(self, name: &[u8]) -> rustix::io::Result<usize> {
        match self {
            At::Path(p) => rustix::fs::lgetxattr_query(p, name),
            At::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
        }
    }
}

/// A file system (or a kind of file) without extended attributes or inode flags: it has none,
/// which is not an error.
pub fn unsupported(e: Errno) -> bool {
    e == Errno::NOTSUP || e == Errno::OPNOTSUPP || e == Errno::NOTTY || e == Errno::INVAL || e == Errno::NOSYS
}

/// The extended attributes at `at`, sorted by name and unique; none where the file system has
/// none. An attribute removed between the listing and its read is left out.
pub fn xattrs(at: At<'_>) -> io::Result<Vec<Xattr>> {
    xattrs_upto(at, usize::MAX).map(Option::unwrap_or_default)
}

/// `xattrs`, or None as soon as their names and values pass `max` bytes (the read stage holds
/// the attributes of many files at once, outside the byte budget, so it carries only small
/// ones; the builder reads larger ones by path, one file at a time).
pub fn xattrs_upto(at: At<'_>, max: usize) -> io::Result<Option<Vec<Xattr>>> {
    // Most files have none: one call with a small buffer answers, the size is asked only when
    // it is too small (or grew in between).
    let mut list = vec![0u8; 1024];
    let len = loop {
        match at.list(&mut list[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let want = at.list_size()?.max(list.len() * 2).min(MAX_LIST);
                if want <= list.len() {
                    return Err(Errno::TOOBIG.into());
                }
                list.resize(want, 0);
            }
            Err(e) if unsupported(e) => return Ok(Some(Vec::new())),
            Err(e) => return Err(e.into()),
        }
    };
    if len > max {
        return Ok(None);
    }
    let mut total = len;
    let mut out: Vec<Xattr> = Vec::new();
    let mut value = Vec::new();
    for name in list.get(..len).unwrap_or_default().split(|&b| b == 0).filter(|n| !n.is_empty()) {
        value.resize(4096, 0);
        let got = loop {
            match at.get(name, &mut value[..]) {
                Ok(n) => break Some(n),
                Err(Errno::RANGE) => {
                    // Grown past what was asked for, or larger than Linux stores: E2BIG, never
                    // a panic (clamp would, once twice the buffer passes the maximum).
                    let want = at.get_size(name)?.max(value.len() * 2).min(MAX_VALUE);
                    if want <= value.len() {
                        return Err(Errno::TOOBIG.into());
                    }
                    value.resize(want, 0);
                }
                // Removed since it was listed.
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(n) = got {
            total = total.saturating_add(n);
            if total > max {
                return Ok(None);
            }
            out.push((name.to_vec(), value.get(..n).unwrap_or_default().to_vec()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(Some(out))
}

/// The inode flags (FS_IOC_GETFLAGS) of the open regular file or directory `fd`, all of them:
/// 0 where the file system has none.
pub fn flags(fd: impl AsFd) -> io::Result<u32> {
    match rustix::fs::ioctl_getflags(fd) {
        Ok(f) => Ok(f.bits()),
        Err(e) if unsupported(e) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustix::fs::XattrFlags;

    #[test]
    fn a_descriptor_and_the_path_give_the_same_attributes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let set = |n: &str, v: &[u8]| rustix::fs::setxattr(&f, n, v, XattrFlags::empty());
        if let Err(e) = set("user.b", b"") {
            eprintln!("SKIPPED: the temporary directory's file system takes no user attributes ({e})");
            return;
        }
        // More names than the first listing buffer holds, so it is asked again, larger.
        for i in 0..60 {
            set(&format!("user.name-{i:010}"), b"").unwrap();
        }
        set("user.a", &[7u8; 1500]).unwrap();
        let file = std::fs::File::open(&f).unwrap();
        let by_fd = xattrs(At::Fd(file.as_fd())).unwrap();
        assert_eq!(by_fd, xattrs(At::Path(&f)).unwrap());
        let user: Vec<&Xattr> = by_fd.iter().filter(|(n, _)| n.starts_with(b"user.")).collect();
        assert_eq!(user.len(), 62);
        assert_eq!(*user[0], (b"user.a".to_vec(), vec![7u8; 1500]));
        assert_eq!(*user[61], (b"user.name-0000000059".to_vec(), Vec::new()));
        // Past a bound, none are carried: the caller reads them another way.
        let all: usize = by_fd.iter().map(|(n, v)| n.len() + 1 + v.len()).sum();
        assert_eq!(xattrs_upto(At::Fd(file.as_fd()), all).unwrap(), Some(by_fd.clone()));
        assert_eq!(xattrs_upto(At::Fd(file.as_fd()), 1000).unwrap(), None);
    }
}
