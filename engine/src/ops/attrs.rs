//! attrs: what a file has beyond stat — extended attributes (POSIX ACLs are two of them,
//! `system.posix_acl_access` and `system.posix_acl_default`, kept as the kernel's bytes) and
//! Linux inode flags (`chattr`: immutable, append-only, nodump, noatime, ...) — read at backup
//! and applied at restore, in the order the kernel needs.
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{IFlags, OFlags, XattrFlags};
use serde::{Deserialize, Serialize};
use stages::FileKind;

/// One extended attribute: its full name (`user.x`, `security.capability`, ...) and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Longest attribute name Linux stores (XATTR_NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Largest attribute value Linux stores (XATTR_SIZE_MAX).
pub const MAX_VALUE: usize = ::io::attrs::MAX_VALUE;
/// Most bytes of names and values one entry keeps. ext4 holds one block's worth, XFS and btrfs
/// more; a node is held in memory by every walk that reads its tree blob, so this bounds what
/// a hostile tree can make a reader hold per entry.
pub const MAX_TOTAL: usize = 1 << 20;

/// The namespaces Linux has: an attribute outside them is not one a file system stores.
const NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];

/// The attribute holding a file's capabilities: like set-id bits, restored only with owners.
pub const CAPABILITY: &[u8] = b"security.capability";

/// The inode flags kept: those a user or root sets with `chattr` and restore can set again.
/// Flags the file system manages itself (extents, inline data, encryption, casefold, verity,
/// DAX) are neither kept nor set.
pub const FLAGS: u32 = IFlags::APPEND.bits()
    | IFlags::COMPRESSED.bits()
    | IFlags::DIRSYNC.bits()
    | IFlags::IMMUTABLE.bits()
    | IFlags::JOURNALING.bits()
    | IFlags::NOATIME.bits()
    | IFlags::NOCOW.bits()
    | IFlags::NODUMP.bits()
    | IFlags::NOTAIL.bits()
    | IFlags::PROJECT_INHERIT.bits()
    | IFlags::SECURE_REMOVAL.bits()
    | IFlags::SYNC.bits()
    | IFlags::TOPDIR.bits()
    | IFlags::UNRM.bits();

/// Flags that keep a file from being changed: set after everything else (times included).
pub const LOCKING: u32 = IFlags::IMMUTABLE.bits() | IFlags::APPEND.bits();

/// What an entry has beyond stat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Sorted by name, unique.
    pub xattrs: Vec<Xattr>,
    /// Inode flags, within `FLAGS`.
    pub flags: u32,
}

/// Why a reader must refuse these attributes, if it must: more or larger than Linux stores, a
/// name outside its namespaces, or not sorted and unique.
pub fn problem(xattrs: &[Xattr], flags: u32) -> Option<String> {
    if flags & !FLAGS != 0 {
        return Some(format!("inode flags {flags:#x} beyond those kept"));
    }
    let mut total = 0usize;
    for x in xattrs {
        let named = !x.name.is_empty()
            && x.name.len() <= MAX_NAME
            && !x.name.contains(&0)
            && NAMESPACES.iter().any(|ns| x.name.starts_with(ns) && x.name.len() > ns.len());
        if !named {
            return Some(format!("extended attribute name {:?}", String::from_utf8_lossy(&x.name)));
        }
        if x.value.len() > MAX_VALUE {
            return Some(format!("extended attribute value of {} bytes", x.value.len()));
        }
        total = total.saturating_add(x.name.len() + x.value.len());
    }
    if total > MAX_TOTAL {
        return Some(format!("{total} bytes of extended attributes"));
    }
    if !xattrs.windows(2).all(|w| w[0].name < w[1].name) {
        return Some("extended attributes not sorted or not unique".into());
    }
    None
}

/// Reads the attributes of the entry at `path` (not following a symlink there). What cannot be
/// read is left out and said: the entry is saved with the rest. A file system without extended
/// attributes or inode flags has none, which is not a problem.
pub fn read(path: &Path, kind: FileKind) -> (Attrs, Vec<String>) {
    // A directory is read as `DIR/.`: a directory the snapshot holds under a symlink's name (a
    // path named `LINK/`, an ancestor `LINK` of a path) has the attributes of the directory the
    // link resolves to, as its metadata is; for any other directory, `DIR/.` is `DIR`.
    let dot;
    let path = match kind {
        FileKind::Dir => {
            dot = path.join(".");
            dot.as_path()
        }
        _ => path,
    };
    let mut problems = Vec::new();
    // A path past PATH_MAX is named through its directory's descriptor (/proc/self/fd/N/NAME).
    let xattrs = match ::io::longpath::Short::new(path).and_then(|short| read_xattrs(short.path())) {
        Ok(x) => x,
        Err(e) => {
            problems.push(format!("cannot read extended attributes: {e}"));
            Vec::new()
        }
    };
    // Only regular files and directories are opened: opening a device or a FIFO has effects,
    // and a symlink has no flags of its own.
    let flags = match kind {
        FileKind::File | FileKind::Dir => read_flags(path).unwrap_or_else(|e| {
            problems.push(format!("cannot read inode flags: {e}"));
            0
        }),
        _ => 0,
    };
    (Attrs { xattrs, flags }, problems)
}

fn unsupported(e: rustix::io::Errno) -> bool {
    ::io::attrs::unsupported(e)
}

fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    let got = ::io::attrs::xattrs(::io::attrs::At::Path(path))?;
    Ok(got.into_iter().map(|(name, value)| Xattr { name, value }).collect())
}

/// The attributes of a regular file as the read stage read them, on the descriptor it read the
/// content through (`stages::OpenAttrs`): what `read` gives for it, the same problems named,
/// without opening the file again.
pub fn opened(got: stages::OpenAttrs) -> (Attrs, Vec<String>) {
    let mut problems = Vec::new();
    let xattrs = match got.xattrs {
        Ok(x) => x.into_iter().map(|(name, value)| Xattr { name, value }).collect(),
        Err(e) => {
            problems.push(format!("cannot read extended attributes: {e}"));
            Vec::new()
        }
    };
    let flags = got.flags.map(|f| f & FLAGS).unwrap_or_else(|e| {
        problems.push(format!("cannot read inode flags: {e}"));
        0
    });
    (Attrs { xattrs, flags }, problems)
}

/// The inode flags of a regular file or directory, 0 when they cannot be read (a file that
/// cannot be opened cannot be read either, and that is reported).
pub(crate) fn read_flags(path: &Path) -> io::Result<u32> {
    let how = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
    // A file that cannot be opened is named by its read (or its directory by its listing).
    let Ok(fd) = ::io::longpath::open(path, how) else { return Ok(0) };
    Ok(::io::attrs::flags(&fd)? & FLAGS)
}

/// What applying attributes could not do, counted by kind for the restore's notes.
#[derive(Debug, Default)]
pub struct NotApplied {
    /// Attributes the target's file system does not take (EOPNOTSUPP), or that need
    /// privileges the restore does not have (EPERM: trusted.*, security.*).
    pub xattrs: u64,
    pub flags: u64,
    /// Attributes refused for another reason (a security label another policy does not know,
    /// no space for them): the entry gets the rest of its metadata all the same.
    pub failed: u64,
    /// The first of those, for the note.
    pub first_failure: Option<String>,
}

impl NotApplied {
    fn failure(&mut self, name: &[u8], e: rustix::io::Errno) {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(format!("{}: {e}", String::from_utf8_lossy(name)));
        }
    }
}

/// Whether an attribute is one an unprivileged restore (or `--no-owner`) applies: user
/// attributes and ACLs. The others (`trusted.*`, `security.*` with file capabilities and
/// security labels) are, like set-id bits and owners, restored only by root with owners.
pub fn unprivileged(x: &Xattr) -> bool {
    x.name.starts_with(b"user.") || x.name.starts_with(b"system.posix_acl_")
}

/// Sets `xattrs` on the open file or directory `fd` (after its owner and mode: chown clears
/// `security.capability`, and an access ACL carries the mode's bits). An attribute refused
/// for lack of privilege or support is counted in `skipped`, any other failure too (the first
/// named): one attribute never costs the entry its times or flags.
pub fn set_xattrs(fd: impl AsFd, xattrs: &[Xattr], skipped: &mut NotApplied) -> io::Result<()> {
    for x in xattrs {
        match rustix::fs::fsetxattr(&fd, x.name.as_slice(), &x.value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if refused(e) => skipped.xattrs += 1,
            Err(e) => skipped.failure(&x.name, e),
        }
    }
    Ok(())
}

/// `set_xattrs` for an entry that cannot be opened for reading (a symlink, FIFO, socket or
/// device node), through an `O_PATH` descriptor of it: /proc/self/fd/N leads to that very
/// entry (a symlink's own inode, not what it names), never to anything by name.
pub fn set_xattrs_opath(fd: impl AsFd, xattrs: &[Xattr], skipped: &mut NotApplied) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if xattrs.is_empty() {
        return Ok(());
    }
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    for x in xattrs {
        match rustix::fs::setxattr(path.as_str(), x.name.as_slice(), &x.value, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e) if refused(e) => skipped.xattrs += 1,
            Err(e) => skipped.failure(&x.name, e),
        }
    }
    Ok(())
}

/// Sets the inode flags `flags` (within `FLAGS`) on the open file or directory `fd`, keeping
/// the flags the file system manages. Nothing is done when none are kept and none are set.
pub fn set_flags(fd: impl AsFd, flags: u32, skipped: &mut NotApplied) -> io::Result<()> {
    let now = match rustix::fs::ioctl_getflags(&fd) {
        Ok(f) => f.bits(),
        Err(e) if flags == 0 || unsupported(e) => {
            skipped.flags += u64::from(flags != 0);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let want = (now & !FLAGS) | (flags & FLAGS);
    if want == now {
        return Ok(());
    }
    match rustix::fs::ioctl_setflags(&fd, IFlags::from_bits_retain(want)) {
        Ok(()) => Ok(()),
        Err(e) if refused(e) || unsupported(e) => {
            skipped.flags += 1;
            Ok(())
        }
        Err(e) => Err(io::Error::other(format!("cannot set inode flags {flags:#x}: {e}"))),
    }
}

/// Refused for lack of privilege or support, not a failure of the restore itself.
fn refused(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    e == Errno::PERM || e == Errno::ACCESS || e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(name: &str, value: &[u8]) -> Xattr {
        Xattr { name: name.into(), value: value.to_vec() }
    }

    #[test]
    fn attributes_no_linux_file_system_holds_are_refused() {
        assert!(problem(&[x("user.a", b"1"), x("user.b", b"")], 0).is_none());
        assert!(problem(&[], FLAGS).is_none());
        assert!(problem(&[], 0x80000).is_some(), "the extents flag is the file system's own");
        for bad in ["", "user.", "other.x", "user\u{0}.x"] {
            assert!(problem(&[x(bad, b"")], 0).is_some(), "{bad:?}");
        }
        assert!(problem(&[x(&format!("user.{}", "n".repeat(MAX_NAME)), b"")], 0).is_some());
        assert!(problem(&[x("user.a", &vec![0; MAX_VALUE + 1])], 0).is_some());
        assert!(problem(&[x("user.b", b""), x("user.a", b"")], 0).is_some(), "unsorted");
        assert!(problem(&[x("user.a", b""), x("user.a", b"")], 0).is_some(), "repeated");
        let many: Vec<Xattr> = (0..17).map(|i| x(&format!("user.{i:02}"), &vec![0; MAX_VALUE])).collect();
        assert!(problem(&many, 0).unwrap().contains("bytes of extended attributes"));
    }

    #[test]
    fn user_attributes_are_read_back_as_set() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let big = vec![7u8; 3000];
        let set = |n: &str, v: &[u8]| rustix::fs::setxattr(&f, n, v, XattrFlags::empty());
        if let Err(e) = set("user.b", b"two") {
            eprintln!("SKIPPED: the temporary directory's file system takes no user attributes ({e})");
            return;
        }
        set("user.a", &big).unwrap();
        set("user.c", b"").unwrap();
        let (attrs, problems) = read(&f, FileKind::File);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&[u8]> = attrs.xattrs.iter().map(|x| x.name.as_slice()).collect();
        assert_eq!(names, [&b"user.a"[..], b"user.b", b"user.c"]);
        assert_eq!(attrs.xattrs[0].value, big);
        assert_eq!(attrs.xattrs[1].value, b"two");
        assert!(problem(&attrs.xattrs, attrs.flags).is_none());
    }
}
