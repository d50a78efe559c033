//! Metadata beyond stat survives a backup and restore: extended attributes in every namespace
//! (file capabilities and POSIX ACLs among them), inode flags (immutable last, after the
//! times), and times outside 1678-2262. Compared entry by entry through the system calls, and
//! with getfattr, getfacl, lsattr and rsync -aHAXn where they are installed (`.ci/run`
//! installs them, and BAKARE_REQUIRE_ROOT makes their absence a failure there).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaos::testkit::{restored_path, root_or_skip, skipped, Bakare, TestDir};
use rustix::fs::{IFlags, XattrFlags};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_bakare")
}

/// Whether `tool` is installed; in CI (BAKARE_REQUIRE_ROOT) it must be.
fn have(tool: &str) -> bool {
    chaos::testkit::tool_or_skip(tool, "BAKARE_REQUIRE_ROOT")
}

fn set(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("{}: setting {name}: {e}", p.display()));
}

fn open(p: &Path) -> std::fs::File {
    std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn flags(p: &Path) -> u32 {
    rustix::fs::ioctl_getflags(open(p).as_fd()).unwrap().bits()
}

fn set_flags(p: &Path, add: IFlags) {
    let f = open(p);
    let now = rustix::fs::ioctl_getflags(f.as_fd()).unwrap();
    rustix::fs::ioctl_setflags(f.as_fd(), now | add)
        .unwrap_or_else(|e| panic!("{}: chattr: {e}", p.display()));
}

/// The extended attributes of `p` (not following a symlink), sorted.
fn xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(p, &mut names[..]).unwrap();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let mut v = vec![0u8; 64 << 10];
            let len = rustix::fs::lgetxattr(p, name, &mut v[..]).unwrap();
            (name.to_vec(), v[..len].to_vec())
        })
        .collect();
    out.sort();
    out
}

fn set_mtime(p: &Path, t: SystemTime) {
    let d = |t: SystemTime| match t.duration_since(UNIX_EPOCH) {
        Ok(d) => rustix::fs::Timespec { tv_sec: d.as_secs() as i64, tv_nsec: d.subsec_nanos().into() },
        Err(e) => {
            let back = e.duration();
            let (mut s, mut n) = (-(back.as_secs() as i64), -i64::from(back.subsec_nanos()));
            if n < 0 {
                s -= 1;
                n += 1_000_000_000;
            }
            rustix::fs::Timespec { tv_sec: s, tv_nsec: n }
        }
    };
    let ts = rustix::fs::Timestamps { last_access: d(t), last_modification: d(t) };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn mtime(p: &Path) -> (i64, i64) {
    let md = std::fs::symlink_metadata(p).unwrap();
    (md.mtime(), md.mtime_nsec())
}

/// Clears the immutable and append-only flags below the directories it holds when the test
/// ends, so that they can be removed (also when it fails).
struct Unlock(Vec<PathBuf>);

impl Drop for Unlock {
    fn drop(&mut self) {
        let locking = IFlags::IMMUTABLE | IFlags::APPEND;
        // Directories too (an immutable one cannot be removed), without following symlinks.
        let mut stack: Vec<PathBuf> = self.0.clone();
        while let Some(p) = stack.pop() {
            let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
            if !(md.is_file() || md.is_dir()) {
                continue;
            }
            if let Ok(f) = std::fs::File::open(&p) {
                if let Ok(now) = rustix::fs::ioctl_getflags(f.as_fd()) {
                    let _ = rustix::fs::ioctl_setflags(f.as_fd(), now - locking);
                }
            }
            if md.is_dir() {
                stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
            }
        }
    }
}

/// Whether the test directory's file system takes user attributes and inode flags.
fn supported(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    std::fs::write(&probe, b"").unwrap();
    let ok = rustix::fs::setxattr(&probe, "user.probe", b"1", XattrFlags::empty()).is_ok()
        && rustix::fs::ioctl_setflags(open(&probe).as_fd(), IFlags::NODUMP).is_ok();
    std::fs::remove_file(&probe).unwrap();
    if !ok {
        assert!(
            std::env::var_os("BAKARE_REQUIRE_ROOT").is_none(),
            "the test directory's file system takes no user attributes or inode flags"
        );
        skipped("the test directory's file system takes no user attributes or inode flags");
    }
    ok
}

/// Runs `tool args` in `dir` and returns what it printed.
fn listing(dir: &Path, tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn attributes_flags_and_far_times_round_trip_as_root() {
    if !root_or_skip("restoring trusted and security attributes and the immutable flag") {
        return;
    }
    let src = TestDir::new()
        .dir("d")
        .file("d/f", b"with attributes")
        .file("d/locked", b"immutable, dated 2300")
        .file("d/pinned", b"immutable, with two names")
        .hardlink("d/pinned-too", "d/pinned")
        .file("d/appended", b"append-only")
        .file("sealed/inside", b"in an immutable directory")
        .file("old", b"dated 1901")
        .file("before-epoch", b"dated 1969")
        .symlink("d/link", "f")
        .fifo("d/fifo");
    let s = src.path();
    if !supported(s) {
        return;
    }
    let target = TestDir::new();
    let _unlock = Unlock(vec![s.to_path_buf(), target.path().to_path_buf()]);

    let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    set(&s.join("d/f"), "user.big", &big);
    set(&s.join("d/f"), "user.empty", b"");
    set(&s.join("d/f"), "user.\u{e9}t\u{e9}", b"\xff\x00\x01");
    set(&s.join("d/f"), "trusted.t", b"root only");
    // A file capability (VFS_CAP_REVISION_2, effective, CAP_NET_BIND_SERVICE permitted).
    let cap = [[0x01, 0, 0, 0x02], (1u32 << 10).to_le_bytes(), [0; 4], [0; 4], [0; 4]].concat();
    set(&s.join("d/f"), "security.capability", &cap);
    set(&s.join("d"), "user.dir", b"on a directory");
    set(&s.join("d/link"), "trusted.on-a-symlink", b"l");
    set(&s.join("d/fifo"), "trusted.on-a-fifo", b"p");
    if have("setfacl") {
        let acl = |args: &[&str]| {
            let ok = Command::new("setfacl").args(args).status().unwrap();
            assert!(ok.success(), "setfacl {args:?}");
        };
        acl(&["-m", "u:1234:r,g:2345:rw,m::rw", s.join("d/f").to_str().unwrap()]);
        acl(&["-d", "-m", "u:1234:rx,o::-", s.join("d").to_str().unwrap()]);
        acl(&["-m", "u:1234:rwx", s.join("d").to_str().unwrap()]);
    }
    set_flags(&s.join("d/f"), IFlags::NODUMP | IFlags::NOATIME);
    let y2300 = UNIX_EPOCH + Duration::new(10_413_792_000, 123_456_789);
    set_mtime(&s.join("d/locked"), y2300);
    // 1901-12-14: ext4 keeps times from 1901-12-13 20:45:52 (-2^31 s) on.
    set_mtime(&s.join("old"), UNIX_EPOCH - Duration::from_secs(2_147_483_648 - 86_400));
    set_mtime(&s.join("before-epoch"), UNIX_EPOCH - Duration::new(0, 999_999_995));
    set_flags(&s.join("d/locked"), IFlags::IMMUTABLE);
    set_flags(&s.join("d/appended"), IFlags::APPEND);
    set_flags(&s.join("d/pinned"), IFlags::IMMUTABLE);
    set_flags(&s.join("sealed"), IFlags::IMMUTABLE);

    let b = Bakare::new(bin());
    b.ok(&chaos::argv!["run", s]);
    let restore = b.run(&["restore", "latest", "--target", target.path().to_str().unwrap()]);
    assert_eq!(restore.code, 0, "{}", restore.stderr);
    let r = restored_path(target.path(), s);

    for rel in ["d", "d/f", "d/locked", "d/appended", "d/link", "d/fifo", "old", "before-epoch"] {
        let (a, z) = (s.join(rel), r.join(rel));
        assert_eq!(xattrs(&z), xattrs(&a), "{rel}: extended attributes");
        assert_eq!(mtime(&z), mtime(&a), "{rel}: mtime");
    }
    assert!(xattrs(&r.join("d/f")).iter().any(|(n, v)| n == b"security.capability" && *v == cap));
    assert_eq!(mtime(&r.join("d/locked")), (10_413_792_000, 123_456_789));
    assert_eq!(mtime(&r.join("old")), (-2_147_483_648 + 86_400, 0));
    assert_eq!(mtime(&r.join("before-epoch")), (-1, 5));
    let kept = (IFlags::NODUMP | IFlags::NOATIME | IFlags::IMMUTABLE | IFlags::APPEND).bits();
    for rel in ["d/f", "d/locked", "d/appended", "d"] {
        assert_eq!(flags(&r.join(rel)) & kept, flags(&s.join(rel)) & kept, "{rel}: inode flags");
    }
    assert!(flags(&r.join("d/locked")) & IFlags::IMMUTABLE.bits() != 0);

    // The same trees, as other tools see them.
    if have("getfattr") {
        let args = ["-R", "-h", "-d", "-m", "-", "-e", "hex", "."];
        assert_eq!(listing(&r, "getfattr", &args), listing(s, "getfattr", &args));
    }
    if have("getfacl") {
        let args = ["-R", "-P", "-n", "."];
        let acls = listing(&r, "getfacl", &args);
        assert!(acls.contains("user:1234:r--") && acls.contains("default:user:1234:r-x"), "{acls}");
        assert_eq!(acls, listing(s, "getfacl", &args));
    }
    if have("lsattr") {
        let lsattr = |d: &Path| {
            let out = Command::new("lsattr").args(["-R", "-a", "."]).current_dir(d).output().unwrap();
            // Symlinks and FIFOs have no flags: lsattr says so on stderr, alike for both. The
            // file with two names is restored without its immutable flag (checked below).
            // Sorted: lsattr lists in directory order, which is the file system's, not ours.
            // Without `./..`: the parent is not backed up (its I, an htree index, comes with size).
            let text = String::from_utf8(out.stdout).unwrap();
            let kept = |l: &&str| !l.contains("pinned") && !l.ends_with(" ./..");
            let mut lines: Vec<_> = text.lines().filter(kept).collect();
            lines.sort_unstable();
            lines.join("\n")
        };
        assert_eq!(lsattr(&r), lsattr(s));
    }
    if have("rsync") {
        let out = Command::new("rsync")
            .args(["-aHAXn", "--checksum", "--itemize-changes"])
            .arg(format!("{}/", s.display()))
            .arg(format!("{}/", r.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "rsync: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "rsync sees differences");
    }

    // A file with two names keeps both (the kernel refuses to link an immutable file), and
    // the restore says it left the flag off.
    let linked = |p: &str| std::fs::metadata(r.join(p)).unwrap().ino();
    assert_eq!(linked("d/pinned"), linked("d/pinned-too"));
    assert!(
        restore.stdout_str().contains("1 files with several names restored without"),
        "{}",
        restore.stdout_str()
    );

    // Restored again over itself, immutable and append-only files and an immutable directory
    // included: replaced or kept, never stuck.
    for how in ["always", "if-changed"] {
        let again =
            b.run(&["restore", "latest", "--target", target.path().to_str().unwrap(), "--overwrite", how]);
        assert_eq!(again.code, 0, "--overwrite {how}: {}\n{}", again.stderr, again.stdout_str());
        assert!(flags(&r.join("d/locked")) & IFlags::IMMUTABLE.bits() != 0, "--overwrite {how}");
        assert!(flags(&r.join("d/appended")) & IFlags::APPEND.bits() != 0, "--overwrite {how}");
        assert!(flags(&r.join("sealed")) & IFlags::IMMUTABLE.bits() != 0, "--overwrite {how}");
        assert_eq!(xattrs(&r.join("d/f")), xattrs(&s.join("d/f")), "--overwrite {how}");
    }

    // As root with --no-owner: user attributes and ACLs, nothing privileged.
    let plain = TestDir::new();
    let _unlock_plain = Unlock(vec![plain.path().to_path_buf()]);
    let o = b.run(&["restore", "latest", "--no-owner", "--target", plain.path().to_str().unwrap()]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let p = restored_path(plain.path(), s);
    let names = |x: Vec<(Vec<u8>, Vec<u8>)>| {
        x.into_iter().map(|(n, _)| String::from_utf8_lossy(&n).into_owned()).collect::<Vec<_>>()
    };
    let kept = names(xattrs(&p.join("d/f")));
    assert!(kept.iter().all(|n| n.starts_with("user.") || n.starts_with("system.posix_acl_")), "{kept:?}");
    assert!(kept.iter().any(|n| n == "user.big"), "{kept:?}");
    assert!(xattrs(&p.join("d/link")).is_empty());
    assert_eq!(flags(&p.join("d/locked")) & (IFlags::IMMUTABLE | IFlags::APPEND).bits(), 0);
    assert_eq!(flags(&p.join("d/f")) & IFlags::NODUMP.bits(), IFlags::NODUMP.bits());
    assert!(o.stdout_str().contains("without their privileged attributes"), "{}", o.stdout_str());

    // A run that finds nothing changed reuses trees that keep all of it; a changed attribute
    // (which moves the file's ctime) is seen and stored.
    b.ok(&chaos::argv!["run", s]);
    set(&s.join("d/f"), "user.empty", b"not any more");
    b.ok(&chaos::argv!["run", s]);
    let again = TestDir::new();
    let _unlock_again = Unlock(vec![again.path().to_path_buf()]);
    let restore = b.run(&["restore", "latest", "--target", again.path().to_str().unwrap()]);
    assert_eq!(restore.code, 0, "{}", restore.stderr);
    let r2 = restored_path(again.path(), s);
    for rel in ["d", "d/f", "d/locked", "d/link", "d/fifo"] {
        assert_eq!(
            xattrs(&r2.join(rel)),
            xattrs(&s.join(rel)),
            "{rel}: extended attributes after three runs"
        );
    }
    assert!(xattrs(&r2.join("d/f")).contains(&(b"user.empty".to_vec(), b"not any more".to_vec())));
}

#[test]
fn user_attributes_and_acls_round_trip_as_an_unprivileged_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let world = TestDir::new()
        .dir("home")
        .dir("target")
        .dir("src/d")
        .file("src/d/f", b"mine")
        .file("src/g", b"capable");
    let w = world.path();
    if !supported(w) {
        return;
    }
    let s = w.join("src");
    set(&s.join("d/f"), "user.note", b"kept");
    set(&s.join("d"), "user.dir", b"kept too");
    let cap = [[0x01, 0, 0, 0x02], (1u32 << 10).to_le_bytes(), [0; 4], [0; 4], [0; 4]].concat();
    let root = chaos::testkit::is_root();
    let acls = have("setfacl");
    if acls {
        let ok = Command::new("setfacl").args(["-m", "u:1234:r,m::r"]).arg(s.join("d/f")).status().unwrap();
        assert!(ok.success());
        let ok = Command::new("setfacl").args(["-d", "-m", "g:2345:rx"]).arg(s.join("d")).status().unwrap();
        assert!(ok.success());
    }
    // As root (CI), everything runs as `nobody` on files it owns, with a copy of the binary
    // (the built one may sit below a directory only its owner enters).
    let copy = w.join("bakare");
    std::fs::copy(bin(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        for p in chaos::testkit::files_under(w)
            .into_iter()
            .map(|r| w.join(r))
            .chain(["", "home", "target", "src", "src/d"].map(|d| w.join(d)))
        {
            std::os::unix::fs::lchown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        // After the chown, which clears file capabilities.
        set(&s.join("g"), "security.capability", &cap);
        set(&s.join("g"), "trusted.root-only", b"unseen");
    } else {
        skipped("not root: the unprivileged round trip runs as the tests' own user");
    }
    let b = Bakare::new(&copy);
    let as_user = |args: &[std::ffi::OsString]| {
        let mut cmd = b.command_of(&copy, args);
        cmd.env("HOME", w.join("home"));
        if root {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        chaos::testkit::run_measured(cmd)
    };
    let run = as_user(&chaos::argv!["run", &s]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let restore = as_user(&chaos::argv!["restore", "latest", "--target", w.join("target")]);
    assert_eq!(restore.code, 0, "{}", restore.stderr);
    let r = restored_path(&w.join("target"), &s);
    for rel in ["d", "d/f"] {
        assert_eq!(xattrs(&r.join(rel)), xattrs(&s.join(rel)), "{rel}: extended attributes");
    }
    if acls {
        let names: Vec<Vec<u8>> = xattrs(&r.join("d")).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&b"system.posix_acl_default".to_vec()), "{names:?}");
    }
    if root {
        // trusted.* is not listed for an unprivileged user; a file capability is read, but
        // restored only by root with owners: the restore says so.
        assert!(xattrs(&r.join("g")).is_empty(), "{:?}", xattrs(&r.join("g")));
        let out = restore.stdout_str() + &restore.stderr;
        assert!(out.contains("1 entries restored without their privileged attributes"), "{out}");
    }
}

/// The files cache keeps each file's attributes beside its ctime (which a change to them
/// moves): in a directory that changed, a file whose ctime holds keeps its attributes from the
/// cache, and one whose attributes changed gets the new ones (`filescache::FileExtra`).
#[test]
fn attributes_come_from_the_files_cache_while_the_ctime_holds() {
    let src = TestDir::new().file("d/kept", "k").file("d/changed", "c").file("d/plain", "p");
    let s = src.path();
    if !supported(s) {
        return;
    }
    set(&s.join("d/kept"), "user.a", b"1");
    set(&s.join("d/changed"), "user.b", b"1");
    set_flags(&s.join("d/kept"), IFlags::NODUMP);
    // Outside the files cache's one-second window for racy timestamps, so it keeps them.
    let settle = || std::thread::sleep(Duration::from_millis(1100));
    settle();
    let b = Bakare::new(bin());
    b.ok(&chaos::argv!["run", s]);
    std::fs::write(s.join("d/new"), "n").unwrap();
    set(&s.join("d/changed"), "user.b", b"2");
    settle();
    let again = b.ok(&chaos::argv!["--json", "run", s]).json();
    assert_eq!(again["unchanged_files"], 2, "kept and plain: {again}");
    let third = b.ok(&chaos::argv!["--json", "run", s]).json();
    assert_eq!(third["unchanged_files"], 4, "{third}");
    for restore_of in [again["snapshot"].as_str().unwrap(), third["snapshot"].as_str().unwrap()] {
        let t = TestDir::new();
        b.ok(&chaos::argv!["restore", restore_of, "--target", t.path()]);
        let r = restored_path(t.path(), s);
        for f in ["d/kept", "d/changed", "d/plain", "d/new"] {
            assert_eq!(xattrs(&r.join(f)), xattrs(&s.join(f)), "{f} in {restore_of}");
        }
        assert_ne!(flags(&r.join("d/kept")) & IFlags::NODUMP.bits(), 0, "{restore_of}");
    }
}

/// A regular file's attributes are read by the read stage, on the descriptor it reads the
/// content through, with io_uring and with the thread pool alike; an empty file, which the read
/// stage never opens, has its attributes read by path. Either way they are those restored.
#[test]
fn file_attributes_are_read_through_both_read_paths() {
    let src = TestDir::new().file("d/flagged", "content").file("d/empty", "").file("d/plain", "p");
    let s = src.path();
    if !supported(s) {
        return;
    }
    let kept = IFlags::NODUMP | IFlags::NOATIME;
    for f in ["d/flagged", "d/empty"] {
        set(&s.join(f), "user.note", f.as_bytes());
        set_flags(&s.join(f), kept);
    }
    for io in ["uring", "pool"] {
        let b = Bakare::new(bin());
        let run = b.run(&chaos::argv!["--json", "run", "--io", io, s]);
        assert_eq!(run.code, 0, "run --io {io}: {}", run.stderr);
        let t = TestDir::new();
        b.ok(&chaos::argv!["restore", "latest", "--target", t.path()]);
        let r = restored_path(t.path(), s);
        for f in ["d/flagged", "d/empty", "d/plain"] {
            assert_eq!(xattrs(&r.join(f)), xattrs(&s.join(f)), "--io {io}: {f}");
            assert_eq!(flags(&r.join(f)) & kept.bits(), flags(&s.join(f)) & kept.bits(), "--io {io}: {f}");
        }
        assert_eq!(flags(&r.join("d/flagged")) & kept.bits(), kept.bits(), "--io {io}");
    }
}
