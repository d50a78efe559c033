//! confine: the only file system calls restore makes below its target. Each takes an open
//! directory handle and one validated name (`tree::valid_name`: no `/`, not `.` or `..`), never
//! a path string, and none follows a symlink: a link planted in the target, before or during
//! the restore, is refused or replaced, never written through (docs/security.md).
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;

use crate::ops::attrs::{self, NotApplied, Xattr};

fn err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// A directory that this restore may write into: created here (mode 0700 until its own
/// metadata is applied) or already there as a real directory. Anything else in its place (a
/// symlink, a file) is refused, not followed and not removed.
pub fn child_dir(parent: impl AsFd, name: &[u8]) -> io::Result<(OwnedFd, bool)> {
    let created = match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(err(e)),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok((fd, created)),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(io::Error::other(
            "something that is not a directory (a symlink or a file) is in its place; not followed",
        )),
        Err(e) => Err(err(e)),
    }
}

/// Removes whatever non-directory entry is at `name` (a symlink itself, never what it points
/// to), so that the entry can be created anew.
pub fn clear(dir: impl AsFd, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR | Errno::PERM) => Err(io::Error::other("a directory is in its place")),
        Err(e) => Err(err(e)),
    }
}

/// A new regular file with `mode` until its metadata is applied. Fails if anything exists at
/// `name` (O_EXCL), so a link planted after `clear` is never opened.
pub fn create_file(dir: impl AsFd, name: &[u8], mode: u32) -> io::Result<std::fs::File> {
    // Read too: `--verify` reads it back through the same handle.
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode)).map_err(err)?;
    Ok(std::fs::File::from(fd))
}

/// How the temporary names of files being restored begin.
pub const TEMP_PREFIX: &[u8] = b".bakare-restore-";

/// The temporary name of `name` in its directory.
pub fn temp_name(name: &[u8]) -> Vec<u8> {
    let hash = blake3::hash(name);
    format!("{}{}", String::from_utf8_lossy(TEMP_PREFIX), &hash.to_hex()[..32]).into_bytes()
}

/// A new regular file (mode 0600) under the temporary name of `name` in `dir`, for `rename` to
/// put in place once it is complete: an interrupted restore never leaves a truncated file under
/// a final name. The temporary name is derived from `name`, so the next restore of the same
/// file replaces what an interrupted one left.
pub fn create_temp(dir: impl AsFd, name: &[u8]) -> io::Result<(std::fs::File, Vec<u8>)> {
    let tmp = temp_name(name);
    match create_file(&dir, &tmp, 0o600) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            clear(&dir, &tmp)?;
            create_file(&dir, &tmp, 0o600).map(|f| (f, tmp))
        }
        other => other.map(|f| (f, tmp)),
    }
}

/// Moves `from` to `to` within `dir`, replacing whatever non-directory entry `to` is (a
/// symlink itself, never what it names).
pub fn rename(dir: impl AsFd, from: &[u8], to: &[u8]) -> io::Result<()> {
    match rustix::fs::renameat(&dir, from, &dir, to) {
        Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST) => {
            Err(io::Error::other("a directory is in its place"))
        }
        other => other.map_err(err),
    }
}

/// What is at `name` in `dir` (the entry itself, not what a symlink names), if anything.
pub fn stat(dir: impl AsFd, name: &[u8]) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// The regular file at `name` in `dir`, for reading, never through a symlink.
pub fn open_read(dir: impl AsFd, name: &[u8]) -> io::Result<std::fs::File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    Ok(std::fs::File::from(rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(err)?))
}

pub fn symlink(dir: impl AsFd, name: &[u8], target: &[u8]) -> io::Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(err)
}

/// A FIFO, socket or device node with exactly `mode` (the restore runs under umask 0).
pub fn node(dir: impl AsFd, name: &[u8], kind: FileType, mode: u32, dev: u64) -> io::Result<()> {
    rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(mode), dev).map_err(err)
}

/// The entry `name` in `dir` as this restore just made it: opened without following it
/// (O_PATH), and refused unless it is still of `kind` with no other name. A local user who can
/// write in `dir` could otherwise swap it, between its creation and a call by name, for a hard
/// link to a file elsewhere, and have that file's owner and times changed.
fn made(dir: impl AsFd, name: &[u8], kind: FileType) -> io::Result<OwnedFd> {
    let fd = rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(err)?;
    let st = rustix::fs::fstat(&fd).map_err(err)?;
    if FileType::from_raw_mode(st.st_mode) != kind || st.st_nlink != 1 {
        return Err(io::Error::other("it was replaced while being restored; left as it is"));
    }
    Ok(fd)
}

/// What restore sets on an entry besides its content.
pub struct EntryMeta<'a> {
    /// None: the owner is left as it is.
    pub owner: Option<(u32, u32)>,
    pub mode: u32,
    pub times: Timestamps,
    pub xattrs: &'a [Xattr],
    /// Inode flags (`attrs::FLAGS`), for regular files and directories.
    pub flags: u32,
    /// The entry was just created in a directory whose flags give it none of `attrs::FLAGS`:
    /// with `flags` 0 there is nothing to read or set (one ioctl less per file).
    pub flags_clear: bool,
}

/// Owner (when given), extended attributes and times of the entry `name` of `kind` that this
/// restore just created, through a handle on it (`made`), never what a symlink names.
pub fn entry_meta(
    dir: impl AsFd,
    name: &[u8],
    kind: FileType,
    meta: &EntryMeta,
    skipped: &mut NotApplied,
) -> io::Result<()> {
    use rustix::fs::{Gid, Uid};
    let fd = made(&dir, name, kind)?;
    if let Some((uid, gid)) = meta.owner {
        let (u, g) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        rustix::fs::chownat(&fd, "", u, g, AtFlags::EMPTY_PATH).map_err(err)?;
    }
    attrs::set_xattrs_opath(&fd, meta.xattrs, skipped)?;
    match rustix::fs::utimensat(&fd, "", &meta.times, AtFlags::EMPTY_PATH) {
        // Kernels before AT_EMPTY_PATH in utimensat: by name (the times alone are at stake).
        Err(Errno::INVAL) => {
            rustix::fs::utimensat(&dir, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW).map_err(err)
        }
        other => other.map_err(err),
    }
}

/// Everything `meta` says, through an open handle of a regular file or directory, in the order
/// the kernel needs: chown first (it clears set-id bits and file capabilities), then the mode,
/// the extended attributes (an access ACL carries the mode's bits), the times, and the inode
/// flags last (an immutable or append-only file takes no new times) — but not immutable and
/// append-only themselves: `lock` sets those once the entry is in its place (a file so marked
/// can be neither renamed nor linked).
pub fn fd_meta(fd: impl AsFd, meta: &EntryMeta, skipped: &mut NotApplied) -> io::Result<()> {
    use rustix::fs::{Gid, Uid};
    if let Some((uid, gid)) = meta.owner {
        rustix::fs::fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(err)?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(err)?;
    attrs::set_xattrs(&fd, meta.xattrs, skipped)?;
    rustix::fs::futimens(&fd, &meta.times).map_err(err)?;
    if meta.flags_clear && meta.flags & !attrs::LOCKING == 0 {
        return Ok(());
    }
    attrs::set_flags(&fd, meta.flags & !attrs::LOCKING, skipped)
}

/// Whether what is created in `dir` now inherits none of `attrs::FLAGS` from it (a file
/// system without inode flags: none).
pub fn passes_no_flags(dir: impl AsFd) -> bool {
    rustix::fs::ioctl_getflags(&dir).map_or(true, |f| f.bits() & attrs::FLAGS == 0)
}

/// Sets all of `flags`, immutable and append-only included, on an entry `fd_meta` did the rest
/// for, now in its place. Nothing when neither is asked.
pub fn lock(fd: impl AsFd, flags: u32, skipped: &mut NotApplied) -> io::Result<()> {
    if flags & attrs::LOCKING == 0 {
        return Ok(());
    }
    attrs::set_flags(&fd, flags, skipped)
}

/// Clears immutable and append-only on the regular file `f` (left so by an earlier restore)
/// before this restore replaces or updates it. An error when they cannot be cleared.
pub fn unlock(f: impl AsFd) -> io::Result<()> {
    use rustix::fs::IFlags;
    let Ok(now) = rustix::fs::ioctl_getflags(&f) else { return Ok(()) };
    if now.bits() & attrs::LOCKING == 0 {
        return Ok(());
    }
    rustix::fs::ioctl_setflags(&f, IFlags::from_bits_retain(now.bits() & !attrs::LOCKING)).map_err(|e| {
        io::Error::other(format!("it is immutable or append-only, and that cannot be cleared: {e}"))
    })
}

/// The directory at `rel` (`a/b/c`, valid names) below `root`, resolved without following any
/// symlink or leaving `root`: openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS where the
/// kernel has it (5.6+) and the path fits in one call, else one `openat(O_NOFOLLOW |
/// O_DIRECTORY)` per component.
pub fn open_beneath(root: impl AsFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(&root, rel, flags, Mode::empty(), resolve) {
        // An old kernel, or a seccomp filter; or a path too long for one call (past PATH_MAX),
        // which one openat per component resolves.
        Err(Errno::NOSYS | Errno::PERM | Errno::NAMETOOLONG) => {}
        other => return other.map_err(err),
    }
    let mut fd = rustix::fs::openat(&root, ".", flags, Mode::empty()).map_err(err)?;
    for name in rel.split(|&b| b == b'/').filter(|n| !n.is_empty() && *n != b".") {
        if !crate::tree::valid_name(name) {
            return Err(io::Error::other("not a path of names"));
        }
        fd = rustix::fs::openat(&fd, name, flags, Mode::empty()).map_err(err)?;
    }
    Ok(fd)
}

/// A new name `name` in `dir` for the regular file `from_name` in `from`, only if that is
/// still the file (`dev`, `ino`) that this restore created: it is opened (O_PATH, not
/// followed) and checked, and the link made from that handle where the kernel allows it
/// (AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH: root), so it cannot be swapped in between.
pub fn link(
    from: impl AsFd,
    from_name: &[u8],
    dev: u64,
    ino: u64,
    dir: impl AsFd,
    name: &[u8],
) -> io::Result<()> {
    let fd = rustix::fs::openat(
        &from,
        from_name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(err)?;
    let st = rustix::fs::fstat(&fd).map_err(err)?;
    #[allow(clippy::unnecessary_cast)] // st_dev's width differs across targets
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_ino != ino
        || st.st_dev as u64 != dev
    {
        return Err(io::Error::other("the first name is no longer the file restored there"));
    }
    match rustix::fs::linkat(&fd, "", &dir, name, AtFlags::EMPTY_PATH) {
        Err(Errno::NOENT | Errno::PERM) => {
            rustix::fs::linkat(from, from_name, dir, name, AtFlags::empty()).map_err(err)
        }
        other => other.map_err(err),
    }
}

/// The names in `dir` (without `.` and `..`), sorted.
pub fn names(dir: impl AsFd) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(&dir).map_err(err)? {
        let e = e.map_err(err)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What removing an entry (and everything below it) takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub entries: u64,
    /// Bytes of the regular files among them.
    pub bytes: u64,
}

/// Removes `name` in `dir` and, for a directory, everything in it (or, with `dry`, only counts
/// it). Never follows a symlink: a link is removed itself. Never enters another file system (a
/// disk mounted below is an error, not emptied). Stops below `tree::MAX_DEPTH` levels. What was
/// removed is counted even when it stops on an error.
pub fn remove_tree(dir: impl AsFd, name: &[u8], dry: bool) -> (Removed, io::Result<()>) {
    let mut n = Removed::default();
    let dev = rustix::fs::fstat(&dir).map(|st| st.st_dev);
    let done = dev.map_err(err).and_then(|dev| remove_at(dir.as_fd(), name, dry, dev, 0, &mut n));
    (n, done)
}

fn remove_at(
    dir: std::os::fd::BorrowedFd,
    name: &[u8],
    dry: bool,
    dev: u64,
    depth: usize,
    n: &mut Removed,
) -> io::Result<()> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(err)?;
    #[allow(clippy::unnecessary_cast)] // st_dev's width differs across targets
    if st.st_dev as u64 != dev {
        return Err(io::Error::other("another file system is mounted there; not entered"));
    }
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => {
            if depth >= crate::tree::MAX_DEPTH {
                return Err(io::Error::other(format!("deeper than {} levels", crate::tree::MAX_DEPTH)));
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(err)?;
            for child in names(&sub)? {
                remove_at(sub.as_fd(), &child, dry, dev, depth + 1, n)?;
            }
            if !dry {
                rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(err)?;
            }
        }
        kind => {
            if kind == FileType::RegularFile {
                n.bytes += st.st_size as u64;
            }
            if !dry {
                rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(err)?;
            }
        }
    }
    n.entries += 1;
    Ok(())
}

/// The real directory at `name` in `parent`, opened, if there is one; None if nothing is
/// there; an error if something else is (as `child_dir` would refuse it).
pub fn existing_dir(parent: impl AsFd, name: &[u8]) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(io::Error::other(
            "something that is not a directory (a symlink or a file) is in its place; not followed",
        )),
        Err(e) => Err(err(e)),
    }
}

/// Sets the process umask for as long as it lives, then puts the old one back.
pub struct Umask(Mode);

impl Umask {
    /// Umask 0: every mode restore creates is explicit (0600 files and 0700 directories until
    /// their own modes are applied; special files exactly as stored).
    pub fn clear() -> Umask {
        Umask(rustix::process::umask(Mode::empty()))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}

/// A restore holds one open directory per level it is in (`tree::MAX_DEPTH`), plus those with
/// files in flight: raise the soft limit on open files to the hard one.
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink as ln;

    fn open(p: &std::path::Path) -> OwnedFd {
        rustix::fs::open(p, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn a_symlink_in_a_directorys_place_is_refused_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        ln(outside.path(), t.path().join("d")).unwrap();
        let e = child_dir(open(t.path()), b"d").unwrap_err();
        assert!(e.to_string().contains("not followed"), "{e}");
        // A real directory already there is used.
        std::fs::create_dir(t.path().join("e")).unwrap();
        assert!(!child_dir(open(t.path()), b"e").unwrap().1);
        assert!(child_dir(open(t.path()), b"f").unwrap().1);
    }

    #[test]
    fn files_are_never_opened_through_a_link() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x"), b"keep").unwrap();
        ln(outside.path().join("x"), t.path().join("x")).unwrap();
        assert!(create_file(open(t.path()), b"x", 0o600).is_err());
        clear(open(t.path()), b"x").unwrap();
        create_file(open(t.path()), b"x", 0o600).unwrap();
        assert_eq!(std::fs::read(outside.path().join("x")).unwrap(), b"keep");
    }

    #[test]
    fn remove_tree_removes_links_not_what_they_name() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"keep").unwrap();
        std::fs::create_dir_all(t.path().join("x/y")).unwrap();
        std::fs::write(t.path().join("x/y/f"), b"12345").unwrap();
        ln(outside.path(), t.path().join("x/link")).unwrap();
        let counted = remove_tree(open(t.path()), b"x", true);
        assert_eq!(counted.0, Removed { entries: 4, bytes: 5 });
        assert!(counted.1.is_ok());
        assert!(t.path().join("x/y/f").exists(), "a dry run removes nothing");
        assert_eq!(remove_tree(open(t.path()), b"x", false).0, counted.0);
        assert!(!t.path().join("x").exists());
        assert_eq!(std::fs::read(outside.path().join("keep")).unwrap(), b"keep");
    }

    #[test]
    fn open_beneath_refuses_links_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        ln(outside.path(), t.path().join("a/l")).unwrap();
        let root = open(t.path());
        assert!(open_beneath(&root, b"a/b").is_ok());
        assert!(open_beneath(&root, b"").is_ok());
        assert!(open_beneath(&root, b"a/l").is_err());
        assert!(open_beneath(&root, b"a/../..").is_err());
    }
}
