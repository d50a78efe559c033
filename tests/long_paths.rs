//! Paths longer than PATH_MAX (4096 bytes) through the real binary: a tree nested deeper than
//! one system call can name is backed up and restored byte for byte, with its modes, times,
//! extended attributes and symlinks, and no errors. No std::fs call can reach such a path, so
//! the test builds and compares the trees through directory descriptors (mkdirat, openat).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use chaos::argv;
use chaos::testkit::{restored_path, Bakare, Rng};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Timestamps, XattrFlags};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

const DIR: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

fn mkdir(dir: impl AsFd, name: &str, mode: u32) -> OwnedFd {
    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode)).unwrap();
    rustix::fs::openat(&dir, name, DIR, Mode::empty()).unwrap()
}

fn write(dir: impl AsFd, name: &str, data: &[u8], mode: u32) {
    let how = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, name, how, Mode::from_raw_mode(mode)).unwrap();
    std::fs::File::from(fd).write_all(data).unwrap();
}

/// `/proc/self/fd/N/NAME`: a short name for an entry of a directory held open (the l*xattr
/// calls have no *at form).
fn in_dir(dir: impl AsFd, name: &[u8]) -> PathBuf {
    Path::new("/proc/self/fd").join(dir.as_fd().as_raw_fd().to_string()).join(OsStr::from_bytes(name))
}

fn xattrs(dir: impl AsFd, name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let p = in_dir(dir, name);
    let mut names = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(&p, &mut names[..]).unwrap();
    let mut out: Vec<_> = names[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|x| {
            let mut v = vec![0u8; 64 << 10];
            let len = rustix::fs::lgetxattr(&p, x, &mut v[..]).unwrap();
            (x.to_vec(), v[..len].to_vec())
        })
        .collect();
    out.sort();
    out
}

fn names(dir: impl AsFd) -> Vec<Vec<u8>> {
    let mut d = Dir::read_from(dir).unwrap();
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let name = e.unwrap().file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            out.push(name);
        }
    }
    out.sort();
    out
}

/// Differences between the trees below two open directories, found through descriptors only:
/// names, types, modes, mtimes, content, symlink targets and extended attributes.
fn diff(a: &OwnedFd, b: &OwnedFd, at: &str, out: &mut Vec<String>) {
    let (na, nb) = (names(a), names(b));
    if na != nb {
        out.push(format!("{at}: names differ"));
        return;
    }
    for name in na {
        let show = format!("{at}/{}", String::from_utf8_lossy(&name));
        let sa = rustix::fs::statat(a, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let sb = rustix::fs::statat(b, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let kind = FileType::from_raw_mode(sa.st_mode);
        if sa.st_mode != sb.st_mode && kind != FileType::Symlink {
            out.push(format!("{show}: mode {:o} vs {:o}", sa.st_mode, sb.st_mode));
            continue;
        }
        if kind != FileType::Symlink && (sa.st_mtime, sa.st_mtime_nsec) != (sb.st_mtime, sb.st_mtime_nsec) {
            out.push(format!("{show}: mtime differs"));
        }
        if xattrs(a, &name) != xattrs(b, &name) {
            out.push(format!("{show}: extended attributes differ"));
        }
        match kind {
            FileType::Directory => {
                let da = rustix::fs::openat(a, name.as_slice(), DIR, Mode::empty()).unwrap();
                let db = rustix::fs::openat(b, name.as_slice(), DIR, Mode::empty()).unwrap();
                diff(&da, &db, &show, out);
            }
            FileType::RegularFile => {
                let read = |d: &OwnedFd| {
                    let how = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                    let mut v = Vec::new();
                    let fd = rustix::fs::openat(d, name.as_slice(), how, Mode::empty()).unwrap();
                    std::fs::File::from(fd).read_to_end(&mut v).unwrap();
                    v
                };
                if read(a) != read(b) {
                    out.push(format!("{show}: content differs"));
                }
            }
            FileType::Symlink => {
                let ta = rustix::fs::readlinkat(a, name.as_slice(), Vec::new()).unwrap();
                let tb = rustix::fs::readlinkat(b, name.as_slice(), Vec::new()).unwrap();
                if ta != tb {
                    out.push(format!("{show}: symlink target differs"));
                }
            }
            _ => {}
        }
    }
}

/// Everything below `at`, counted: (directories, files, symlinks).
fn count(at: &OwnedFd) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for name in names(at) {
        let st = rustix::fs::statat(at, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).unwrap();
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let sub = rustix::fs::openat(at, name.as_slice(), DIR, Mode::empty()).unwrap();
                let below = count(&sub);
                c = (c.0 + 1 + below.0, c.1 + below.1, c.2 + below.2);
            }
            FileType::RegularFile => c.1 += 1,
            FileType::Symlink => c.2 += 1,
            _ => {}
        }
    }
    c
}

/// `deep/` below `root` (at `path`), and in it 30 directories of 200-byte names, one in the
/// other: the deepest, open, and its path (more than 6,000 bytes). The 21st is mode 0750; the
/// 20th, just below PATH_MAX, holds a file `shallow` beside the directory that crosses it.
fn deep(root: &OwnedFd, path: &Path) -> (OwnedFd, PathBuf) {
    let mut dir = mkdir(root, "deep", 0o755);
    let mut deepest = path.join("deep");
    for i in 0..30 {
        let name = format!("{i:02}{}", "d".repeat(198));
        let mode = if i == 20 { 0o750 } else { 0o755 };
        dir = mkdir(&dir, &name, mode);
        deepest.push(&name);
        if i == 19 {
            write(&dir, "shallow", b"near the limit", 0o644);
        }
    }
    assert!(deepest.as_os_str().len() > 6000);
    (dir, deepest)
}

/// The directory at `rel` below `dir`, opened one component at a time.
fn open_below(dir: OwnedFd, rel: &Path) -> OwnedFd {
    rel.components().fold(dir, |d, c| rustix::fs::openat(&d, c.as_os_str(), DIR, Mode::empty()).unwrap())
}

#[test]
fn a_path_longer_than_path_max_backs_up_and_restores() {
    let src = tempfile::tempdir().unwrap();
    let root = rustix::fs::open(src.path(), DIR, Mode::empty()).unwrap();
    let (dir, deepest) = deep(&root, src.path());
    let mut rng = Rng::new(17);
    let content = rng.bytes(300 << 10); // more than one read segment
    write(&dir, "file", &content, 0o640);
    rustix::fs::lsetxattr(in_dir(&dir, b"file"), "user.deep", b"value", XattrFlags::empty()).unwrap();
    rustix::fs::symlinkat("file", &dir, "link").unwrap();
    // A second name: hard links are made, and their directory's metadata set, after the walk,
    // from the restore target down.
    rustix::fs::linkat(&dir, "file", &dir, "same", AtFlags::empty()).unwrap();
    let sub = mkdir(&dir, "sub", 0o700);
    rustix::fs::lsetxattr(in_dir(&dir, b"sub"), "user.dir", b"x", XattrFlags::empty()).unwrap();
    write(&sub, "empty", b"", 0o600);
    // Old times, so that the files cache and the restore of times are both exercised.
    let old = rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 123 };
    let times = Timestamps { last_access: old, last_modification: old };
    rustix::fs::utimensat(&dir, "file", &times, AtFlags::empty()).unwrap();
    let too_long = std::fs::symlink_metadata(deepest.join("file")).unwrap_err();
    assert_eq!(too_long.raw_os_error(), Some(libc::ENAMETOOLONG), "beyond what one call can name");

    // Both ways of reading, each into a repository (and files cache) of its own: the ring
    // leaves a path it cannot take to the read stage's own open.
    for io in ["uring", "pool"] {
        let b = bakare();
        let run = b.run(&argv!["--json", "run", "--io", io, src.path()]);
        assert_eq!(run.code, 0, "run --io {io}: {}\n{}", run.stderr, run.stdout_str());
        let errors = &run.json()["errors"];
        assert!(errors.as_array().is_none_or(|e| e.is_empty()), "{errors}");

        let target = tempfile::tempdir().unwrap();
        let restore = b.run(&argv!["--json", "restore", "latest", "--target", target.path()]);
        assert_eq!(restore.code, 0, "restore: {}\n{}", restore.stderr, restore.stdout_str());
        let errors = &restore.json()["errors"];
        assert!(errors.as_array().is_none_or(|e| e.is_empty()), "{errors}");

        let restored =
            rustix::fs::open(restored_path(target.path(), src.path()), DIR, Mode::empty()).unwrap();
        let mut diffs = Vec::new();
        diff(&root, &restored, "", &mut diffs);
        assert!(diffs.is_empty(), "restored tree (--io {io}) differs:\n{}", diffs.join("\n"));
        assert_eq!(count(&restored), (32, 4, 1), "every entry, the deepest included");
        let bottom = open_below(restored, deepest.strip_prefix(src.path()).unwrap());
        let ino = |name: &str| rustix::fs::statat(&bottom, name, AtFlags::SYMLINK_NOFOLLOW).unwrap().st_ino;
        assert_eq!(ino("file"), ino("same"), "still one file with two names");
    }
}

#[test]
fn ignore_files_and_exclusion_tags_past_path_max_apply() {
    const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n";
    let src = tempfile::tempdir().unwrap();
    let root = rustix::fs::open(src.path(), DIR, Mode::empty()).unwrap();
    let (dir, deepest) = deep(&root, src.path());
    write(&dir, ".ignore", b"*.log\n", 0o644);
    write(&dir, "keep.txt", b"kept", 0o644);
    write(&dir, "skip.log", b"left out", 0o644);
    let cache = mkdir(&dir, "cache", 0o755);
    write(&cache, "CACHEDIR.TAG", CACHEDIR_TAG.as_bytes(), 0o644);
    write(&cache, "blob", b"left out", 0o644);

    let b = bakare();
    let run = b.run(&argv!["run", "--ignore-file", ".ignore", "--exclude-caches", src.path()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    let restored = rustix::fs::open(restored_path(target.path(), src.path()), DIR, Mode::empty()).unwrap();
    let bottom = open_below(restored, deepest.strip_prefix(src.path()).unwrap());
    assert_eq!(names(&bottom), [&b".ignore"[..], b"cache", b"keep.txt"]);
    let cache = rustix::fs::openat(&bottom, "cache", DIR, Mode::empty()).unwrap();
    assert_eq!(names(&cache), [b"CACHEDIR.TAG"]);
}

/// A directory a snapshot cannot hold (1,024 levels deep or more; restore and check refuse
/// deeper ones) is not saved but named: `run` exits 3 with an error entry for it, `check` finds
/// no damage, and a restore of everything else exits 0.
#[test]
fn a_directory_deeper_than_a_snapshot_holds_is_an_error_entry() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let mut at = src.clone();
    for _ in 0..1030 {
        at.push("d");
    }
    std::fs::create_dir_all(&at).unwrap();
    std::fs::write(at.join("bottom"), "too deep").unwrap();
    std::fs::write(src.join("d/top"), "kept").unwrap();
    let b = bakare();
    let out = b.run(&argv!["run", "--json", &src]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let v = out.json();
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    let why = errors[0]["error"].as_str().unwrap();
    assert!(why.starts_with("not saved: it is 1024 levels deep"), "{why}");
    let depth = src.components().count() - 1;
    let mut first = src.clone();
    for _ in 0..(1024 - depth) {
        first.push("d");
    }
    assert_eq!(errors[0]["path"], first.to_string_lossy().as_ref());
    b.ok(&argv!["check", "--read-data"]);
    let r = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", r.path()]);
    let back = restored_path(r.path(), &src);
    assert_eq!(std::fs::read(back.join("d/top")).unwrap(), b"kept");
}
