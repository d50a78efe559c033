//! Restoring into a target that already holds files: the `--overwrite` modes, what they count,
//! and restores interrupted at any instant (never a truncated file that looks complete under
//! its final name, never an existing file half replaced; the next restore finishes the job).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use chaos::argv;
use chaos::testkit::{assert_same_tree, restored_path, Bakare, Rng, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// A repository holding one backup of `n` random files of `size` bytes, named by `name`.
fn backup_of(n: usize, size: usize, seed: u64, name: impl Fn(usize) -> String) -> (Bakare, TestDir) {
    let b = bakare();
    b.ok(&argv!["init"]);
    let mut rng = Rng::new(seed);
    let mut src = TestDir::new();
    for i in 0..n {
        src = src.file(name(i), rng.bytes(size));
    }
    b.ok(&argv!["run", src.path()]);
    (b, src)
}

/// Writes `data` over `p` and gives it back its mtime: same size and mtime, other content.
fn change_keeping_mtime(p: &Path, data: &[u8]) {
    let mtime = fs::metadata(p).unwrap().modified().unwrap();
    fs::write(p, data).unwrap();
    fs::File::options().write(true).open(p).unwrap().set_modified(mtime).unwrap();
}

fn touch_newer(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap();
    let later = SystemTime::now() + Duration::from_secs(3600);
    fs::File::options().write(true).open(p).unwrap().set_modified(later).unwrap();
}

/// (replaced, kept) as `restore --json` reports them.
fn counts(o: &chaos::testkit::Outcome) -> (u64, u64) {
    let v = o.json();
    (v["replaced"].as_u64().unwrap(), v["kept"].as_u64().unwrap())
}

#[test]
fn each_overwrite_mode_replaces_what_it_says_and_counts_it() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("a", "snapshot a").file("b", "snapshot b").file("c", "snapshot c");
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    let at = restored_path(target.path(), src.path());
    let restore = |mode: &str| {
        let o = b.run(&argv!["--json", "restore", "latest", "--target", target.path(), "--overwrite", mode]);
        assert_eq!(o.code, 0, "{}", o.stderr);
        o
    };
    // A fresh restore replaces nothing.
    assert_eq!(counts(&restore("if-changed")), (0, 0));
    let spoil = || {
        change_keeping_mtime(&at.join("a"), b"changed! a"); // same size and mtime
        touch_newer(&at.join("b"), b"newer b");
        fs::write(at.join("extra"), "not in the snapshot").unwrap();
    };
    spoil();
    assert_eq!(counts(&restore("never")), (0, 3));
    assert_eq!(fs::read(at.join("a")).unwrap(), b"changed! a");
    // if-newer: `b` is newer in the target, `a` and `c` as new: all kept.
    assert_eq!(counts(&restore("if-newer")), (0, 3));
    assert_eq!(fs::read(at.join("b")).unwrap(), b"newer b");
    // ... and a file older in the target than in the snapshot is replaced.
    fs::write(at.join("c"), "older c").unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    fs::File::options().write(true).open(at.join("c")).unwrap().set_modified(old).unwrap();
    assert_eq!(counts(&restore("if-newer")), (1, 2));
    assert_eq!(fs::read(at.join("c")).unwrap(), b"snapshot c");
    // if-changed reads `a` back: same size and mtime, other bytes, so it is replaced.
    assert_eq!(counts(&restore("if-changed")), (2, 1));
    assert_eq!(fs::read(at.join("a")).unwrap(), b"snapshot a");
    assert_eq!(fs::read(at.join("b")).unwrap(), b"snapshot b");
    spoil();
    assert_eq!(counts(&restore("always")), (3, 0));
    assert_eq!(fs::read(at.join("extra")).unwrap(), b"not in the snapshot");
    fs::remove_file(at.join("extra")).unwrap();
    // The default is if-changed, and the text output says what it did.
    change_keeping_mtime(&at.join("c"), b"changed! c");
    let o = b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert!(
        o.stdout_str()
            .contains("already in the target: 1 files (10 B) replaced, 2 kept (--overwrite if-changed)"),
        "{}",
        o.stdout_str()
    );
    assert_same_tree(src.path(), &at);
}

#[test]
fn an_interrupted_restore_leaves_no_truncated_file_and_the_next_one_finishes() {
    let (b, src) = backup_of(24, 3 << 20, 7, |i| format!("d{}/f{i:02}.bin", i % 3));
    let mut mid_run = 0;
    for (round, delay_ms) in [5u64, 20, 60, 120, 250].into_iter().enumerate() {
        let target = tempfile::tempdir().unwrap();
        let at = restored_path(target.path(), src.path());
        let mut child = b
            .command(&argv!["restore", "latest", "--target", target.path()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        mid_run += usize::from(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        child.wait().unwrap();
        // Every file under a final name is complete, or does not look it: it lacks the
        // snapshot's mtime, which restore sets last.
        let (mut complete, mut partial) = (0, 0);
        for d in ["d0", "d1", "d2"] {
            let Ok(entries) = fs::read_dir(at.join(d)) else { continue };
            for e in entries {
                let name = e.unwrap().file_name();
                if name.to_string_lossy().starts_with(".bakare-restore-") {
                    continue;
                }
                let rel = Path::new(d).join(&name);
                if fs::read(at.join(&rel)).unwrap() == fs::read(src.path().join(&rel)).unwrap() {
                    complete += 1;
                } else {
                    let mtime = |p: &Path| fs::metadata(p).unwrap().modified().unwrap();
                    assert_ne!(
                        mtime(&at.join(&rel)),
                        mtime(&src.path().join(&rel)),
                        "round {round}: {} looks complete",
                        rel.display()
                    );
                    use std::os::unix::fs::PermissionsExt;
                    let mode = fs::metadata(at.join(&rel)).unwrap().permissions().mode() & 0o7777;
                    assert_eq!(mode, 0, "round {round}: {} is unfinished, so mode 0", rel.display());
                    partial += 1;
                }
            }
        }
        eprintln!(
            "round {round}: killed after {delay_ms} ms: {complete} of 24 files complete, {partial} partial"
        );
        // Even `--overwrite if-newer` takes an unfinished file for older than the snapshot's.
        let mode = if round % 2 == 0 { "if-changed" } else { "if-newer" };
        b.ok(&argv!["restore", "latest", "--target", target.path(), "--overwrite", mode]);
        assert_same_tree(src.path(), &at);
    }
    assert!(mid_run > 0, "no restore was still running when killed");
}

/// A tmpfs of `size` bytes mounted at a new directory for as long as it lives (needs root).
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let d = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs");
        SmallFs(d)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_stops_the_restore_with_one_message_and_a_second_run_finishes() {
    if !chaos::testkit::root_or_skip("mounting a small tmpfs") {
        return;
    }
    let (b, src) = backup_of(200, 64 << 10, 3, |i| format!("f{i:03}"));
    let fs_ = SmallFs::mount("1m");
    let o = b.run(&argv!["--json", "restore", "latest", "--target", fs_.0.path()]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    let errors = o.json()["errors"].as_array().unwrap().clone();
    // A few files named, then the one message, instead of ~185 lines. Usually 7; more when a
    // file fits in the space another's failed write gave back, which resets the count (the
    // workers run in parallel), so the bound is twice that.
    assert!(errors.len() <= 16, "{errors:?}");
    let last = errors.last().unwrap()["error"].as_str().unwrap();
    assert!(last.contains("the file system is full: 8 files in a row"), "{last}");
    // No partial file under a final name.
    let at = restored_path(fs_.0.path(), src.path());
    for e in fs::read_dir(&at).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().starts_with(".bakare-restore-") {
            assert_eq!(fs::read(e.path()).unwrap(), fs::read(src.path().join(e.file_name())).unwrap());
        }
    }
    // With room again, the same restore into the same target finishes the job.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(fs_.0.path())
        .status()
        .unwrap();
    assert!(grown.success());
    b.ok(&argv!["restore", "latest", "--target", fs_.0.path()]);
    assert_same_tree(src.path(), &at);
}

/// Every path below `root` with its type, mode, size, mtime and content hash.
fn state(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let content = if md.is_file() { format!("{:?}", fs::read(&p).unwrap()) } else { String::new() };
        let when = (md.mtime(), md.mtime_nsec(), md.uid(), md.gid());
        out.push(format!("{} {:o} {} {when:?} {content}", p.display(), md.mode(), md.len()));
        if md.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

#[test]
fn delete_removes_what_the_snapshot_lacks_and_never_follows_a_link() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("keep/a", "a").file("keep/sub/b", "bb").file("top", "t");
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), "outside").unwrap();
    let at = restored_path(target.path(), src.path());
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    let litter = || {
        fs::write(at.join("extra.txt"), "12345").unwrap();
        fs::create_dir_all(at.join("keep/old/deeper")).unwrap();
        fs::write(at.join("keep/old/deeper/f"), "123").unwrap();
        std::os::unix::fs::symlink(outside.path(), at.join("keep/sub/link")).unwrap();
        fs::write(at.join("keep/.bakare-restore-0123456789abcdef0123456789abcdef"), "leftover").unwrap();
    };
    litter();
    let before = state(target.path());
    // A dry run counts, and changes nothing.
    let o = b.ok(&argv!["--json", "restore", "latest", "--target", target.path(), "--delete", "--dry-run"]);
    let v = o.json();
    assert_eq!((v["deleted"].as_u64(), v["deleted_bytes"].as_u64()), (Some(5), Some(8)), "{v}");
    assert_eq!(v["dry_run"], true);
    assert_eq!(state(target.path()), before);
    // Partial: only below the path restored.
    let part = at.join("keep/sub");
    let o = b.ok(&argv![
        "--json",
        "restore",
        "latest",
        "--target",
        target.path(),
        "--delete",
        &part.strip_prefix(target.path()).map(|p| Path::new("/").join(p)).unwrap()
    ]);
    assert_eq!(o.json()["deleted"].as_u64(), Some(1));
    assert!(fs::symlink_metadata(at.join("keep/sub/link")).is_err());
    assert!(at.join("extra.txt").exists() && at.join("keep/old").exists());
    // Everything: the tree is the snapshot's again, and what the link named is untouched.
    let o = b.ok(&argv!["restore", "latest", "--target", target.path(), "--delete"]);
    assert!(
        o.stdout_str().contains("not in the snapshot: 4 entries (8 B of files) deleted"),
        "{}",
        o.stdout_str()
    );
    assert_same_tree(src.path(), &at);
    assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"outside");
}

#[test]
fn a_dry_run_counts_what_a_restore_would_do_and_changes_nothing() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("a", "snapshot a").file("b", "snapshot b").file("d/c", "cc");
    b.ok(&argv!["run", src.path()]);
    // Into a target that does not exist: not even the target is created.
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("new");
    let v = b.ok(&argv!["--json", "restore", "latest", "--target", &missing, "--dry-run"]).json();
    assert_eq!((v["files"].as_u64(), v["bytes"].as_u64()), (Some(3), Some(22)), "{v}");
    assert!(!missing.exists());
    // `/` as the path to restore is everything.
    let v = b.ok(&argv!["--json", "restore", "latest", "--target", &missing, "--dry-run", "/"]).json();
    assert_eq!(v["files"].as_u64(), Some(3), "{v}");
    // Into a target with one file changed: one replaced, two kept, nothing touched.
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    let at = restored_path(target.path(), src.path());
    change_keeping_mtime(&at.join("a"), b"changed! a");
    let before = state(target.path());
    let o = b.ok(&argv!["restore", "latest", "--target", target.path(), "-n"]);
    let text = o.stdout_str();
    assert!(text.starts_with("would restore 1 files"), "{text}");
    assert!(text.contains("already in the target: 1 files (10 B) would be replaced, 2 kept"), "{text}");
    assert_eq!(state(target.path()), before);
    let v = b.ok(&argv!["--json", "restore", "latest", "--target", target.path(), "-n"]).json();
    assert_eq!(
        (v["replaced"].as_u64(), v["replaced_bytes"].as_u64(), v["kept"].as_u64()),
        (Some(1), Some(10), Some(2))
    );
    assert_eq!(state(target.path()), before);
}

#[test]
fn verify_reads_every_file_back_and_removes_one_that_differs() {
    let mut b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("a", "aaaa").file("b", "bbbb").file("big", Rng::new(5).bytes(5 << 20));
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    let at = restored_path(target.path(), src.path());
    let o = b.ok(&argv!["restore", "latest", "--target", target.path(), "--verify"]);
    assert!(o.stdout_str().contains("verified 3 files"), "{}", o.stdout_str());
    // A disk that gives back other bytes than were written (a test hook spoils `b` after it is
    // in place): without --verify nobody notices; with it, `b` is named and removed.
    b.env.push(("BAKARE_TEST_SPOIL_RESTORED".into(), "b".into()));
    let unverified = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", unverified.path()]);
    assert_eq!(fs::read(restored_path(unverified.path(), src.path()).join("b")).unwrap(), b"Bbbb");
    fs::remove_dir_all(target.path()).unwrap();
    let o = b.run(&argv!["--json", "restore", "latest", "--target", target.path(), "--verify"]);
    assert_eq!(o.code, 3);
    let v = o.json();
    assert_eq!(v["verified"].as_u64(), Some(2));
    let err = &v["errors"][0];
    assert!(
        err["path"].as_str().unwrap().ends_with("/b")
            && err["error"].as_str().unwrap().contains("differs from the snapshot"),
        "{v}"
    );
    assert!(!at.join("b").exists());
    assert_eq!(fs::read(at.join("a")).unwrap(), b"aaaa");
}

#[test]
fn exclude_leaves_out_names_and_paths_and_delete_keeps_what_it_left_out() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new()
        .file("keep.txt", "k")
        .file("x.tmp", "t")
        .file("sub/y.tmp", "t")
        .file("sub/z.txt", "z")
        .file("build/out.o", "o");
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    let at = restored_path(target.path(), src.path());
    let build = Path::new("/").join(at.strip_prefix(target.path()).unwrap()).join("build");
    let o = b.ok(&argv![
        "--json",
        "restore",
        "latest",
        "--target",
        target.path(),
        "-e",
        "*.tmp",
        "--exclude",
        &build
    ]);
    assert_eq!(o.json()["excluded"].as_u64(), Some(3));
    assert!(at.join("keep.txt").exists() && at.join("sub/z.txt").exists());
    for gone in ["x.tmp", "sub/y.tmp", "build"] {
        assert!(!at.join(gone).exists(), "{gone}");
    }
    // What the target has where an excluded entry would be, or that matches a pattern, is not
    // the restore's business: --delete leaves it.
    fs::write(at.join("x.tmp"), "mine").unwrap();
    fs::write(at.join("only-here.tmp"), "mine too").unwrap();
    fs::create_dir_all(at.join("build/cache")).unwrap();
    fs::write(at.join("gone.txt"), "not in the snapshot, not excluded").unwrap();
    let o = b.ok(&argv![
        "--json",
        "restore",
        "latest",
        "--target",
        target.path(),
        "-e",
        "*.tmp",
        "-e",
        &build,
        "--delete"
    ]);
    assert_eq!(o.json()["deleted"].as_u64(), Some(1));
    assert_eq!(fs::read(at.join("x.tmp")).unwrap(), b"mine");
    assert_eq!(fs::read(at.join("only-here.tmp")).unwrap(), b"mine too");
    assert!(at.join("build/cache").is_dir() && !at.join("gone.txt").exists());
}

#[test]
fn an_interrupted_restore_over_existing_files_never_leaves_them_half_replaced() {
    let (b, src) = backup_of(12, 4 << 20, 9, |i| format!("f{i:02}.bin"));
    let target = tempfile::tempdir().unwrap();
    let at = restored_path(target.path(), src.path());
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    // Other versions in place: each file is either that old version or the snapshot's, whole.
    let old = |i: usize| format!("old version {i}").into_bytes();
    let mut mid_run = 0;
    for delay_ms in [5u64, 15, 30, 60] {
        for i in 0..12 {
            fs::write(at.join(format!("f{i:02}.bin")), old(i)).unwrap();
        }
        let mut child = b
            .command(&argv!["restore", "latest", "--target", target.path(), "--overwrite", "always"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        mid_run += usize::from(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        child.wait().unwrap();
        let replaced = (0..12)
            .filter(|&i| {
                let name = format!("f{i:02}.bin");
                let now = fs::read(at.join(&name)).unwrap();
                let new = now == fs::read(src.path().join(&name)).unwrap();
                assert!(new || now == old(i), "{name} is half replaced");
                new
            })
            .count();
        eprintln!("killed after {delay_ms} ms: {replaced} of 12 files replaced");
    }
    assert!(mid_run > 0, "no restore was still running when killed");
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(src.path(), &at);
}

#[test]
fn if_newer_keeps_newer_links_and_specials_in_the_target() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("a", "snapshot").hardlink("b", "a").symlink("cfg", "a");
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    let at = restored_path(target.path(), src.path());
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    // The target's `b` is now a file of its own, newer; `cfg` a newer regular file.
    fs::remove_file(at.join("b")).unwrap();
    touch_newer(&at.join("b"), b"my newer b");
    fs::remove_file(at.join("cfg")).unwrap();
    touch_newer(&at.join("cfg"), b"my newer cfg");
    let o = b.ok(&argv!["--json", "restore", "latest", "--target", target.path(), "--overwrite", "if-newer"]);
    assert_eq!(fs::read(at.join("b")).unwrap(), b"my newer b");
    assert_eq!(fs::read(at.join("cfg")).unwrap(), b"my newer cfg");
    assert_eq!(counts(&o), (0, 3), "{}", o.stdout_str());
    // if-changed puts both back as the snapshot has them: a link and a symlink.
    let o = b.ok(&argv!["--json", "restore", "latest", "--target", target.path()]);
    assert_eq!(counts(&o), (2, 1));
    assert_same_tree(src.path(), &at);
}

#[test]
fn delete_never_enters_another_file_system() {
    if !chaos::testkit::root_or_skip("mounting a tmpfs below a target") {
        return;
    }
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("a", "a");
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    let at = restored_path(target.path(), src.path());
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    let disk = at.join("usb");
    fs::create_dir(&disk).unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&disk).status().unwrap();
    assert!(mounted.success());
    fs::write(disk.join("photos.jpg"), "precious").unwrap();
    let o = b.run(&argv!["restore", "latest", "--target", target.path(), "--delete"]);
    let kept = fs::read(disk.join("photos.jpg"));
    let _ = std::process::Command::new("umount").arg(&disk).status();
    assert_eq!(o.code, 3, "{}", o.stdout_str());
    assert!(o.stdout_str().contains("another file system is mounted there"), "{}", o.stdout_str());
    assert_eq!(kept.unwrap(), b"precious");
}

/// `--mem-limit`: a limit too small for the repository is refused before the target is made,
/// naming what it needs. Within a small one, 30,000 hard links in 30,000 directories (more
/// than the lists of links and of directories waiting for them keep in memory at that limit,
/// so both go through a temporary file) come back with every link a link to its file and
/// every directory's mode and mtime set after its link, and the restore's peak RSS stays
/// under the limit.
#[test]
fn a_restore_holds_to_its_mem_limit_and_spills_its_hard_links() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("tree");
    fs::create_dir(&root).unwrap();
    for k in 0..10 {
        fs::write(root.join(format!("f{k}")), format!("file {k}")).unwrap();
    }
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for d in 0..30_000 {
        let dir = root.join(format!("d{d:05}"));
        fs::create_dir(&dir).unwrap();
        fs::hard_link(root.join(format!("f{}", d % 10)), dir.join("l")).unwrap();
        fs::File::open(&dir).unwrap().set_modified(when).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
    }
    b.ok(&argv!["run", &root]);

    let target = tempfile::tempdir().unwrap();
    let t = target.path().join("t");
    let o = b.run(&argv!["restore", "latest", "--target", &t, "--mem-limit", "20M"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("--mem-limit 20 MiB is too small to restore"), "{}", o.stderr);
    // 40 MiB fixed, 48 MiB for the least plan (restore::Memory::least), a few KiB of index.
    assert!(o.stderr.contains("needs at least 89 MiB"), "{}", o.stderr);
    assert!(!t.exists(), "nothing is made when the limit is refused");

    let limit = 96u64 << 20;
    let o = b.ok(&argv!["restore", "latest", "--target", &t, "--mem-limit", "96M"]);
    assert!(o.peak_rss < limit, "restore peaked at {} MiB", o.peak_rss >> 20);
    let back = restored_path(&t, &root);
    let inos: Vec<u64> = (0..10).map(|k| fs::metadata(back.join(format!("f{k}"))).unwrap().ino()).collect();
    for d in 0..30_000 {
        let dir = back.join(format!("d{d:05}"));
        let md = fs::metadata(&dir).unwrap();
        assert_eq!((md.mode() & 0o7777, md.modified().unwrap()), (0o750, when), "{}", dir.display());
        let l = fs::metadata(dir.join("l")).unwrap();
        assert_eq!(l.ino(), inos[d % 10], "{} is a link to f{}", dir.display(), d % 10);
    }
    assert_eq!(fs::read(back.join("d00003/l")).unwrap(), b"file 3");
    assert_eq!(fs::metadata(back.join("f3")).unwrap().nlink(), 3_001);
}

#[test]
fn include_restores_only_what_matches_and_the_directories_leading_to_it() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new()
        .file("docs/a.txt", "a")
        .file("docs/deep/b.txt", "b")
        .file("docs/c.md", "c")
        .file("notes/d.txt", "d")
        .file("keep/all/e.bin", "e")
        .file("keep/all/f.md", "f")
        .file("top.md", "t");
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    // A name anywhere, and a relative path ending anywhere (a directory comes whole).
    b.ok(&argv!["restore", "latest", "-t", target.path(), "--include", "*.txt", "-i", "keep/all"]);
    let at = restored_path(target.path(), src.path());
    let mut got: Vec<String> =
        chaos::testkit::files_under(&at).iter().map(|p| p.display().to_string()).collect();
    got.sort();
    assert_eq!(got, ["docs/a.txt", "docs/deep/b.txt", "keep/all/e.bin", "keep/all/f.md", "notes/d.txt"]);
    assert_eq!(fs::read(at.join("docs/deep/b.txt")).unwrap(), b"b");
    // With a PATH, only what matches at or below it (an anchored pattern too).
    let t3 = tempfile::tempdir().unwrap();
    let docs = src.path().join("docs");
    b.ok(&argv!["restore", "latest", "-t", t3.path(), &docs, "-i", "*.txt"]);
    let at3 = restored_path(t3.path(), src.path());
    let mut got: Vec<String> =
        chaos::testkit::files_under(&at3).iter().map(|p| p.display().to_string()).collect();
    got.sort();
    assert_eq!(got, ["docs/a.txt", "docs/deep/b.txt"]);
    let anchored = format!("{}/notes/d.txt", src.path().display());
    let t4 = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "-t", t4.path(), "-i", &anchored]);
    let got = chaos::testkit::files_under(&restored_path(t4.path(), src.path()));
    assert_eq!(got, [Path::new("notes/d.txt")]);
    let o = b.run(&argv!["restore", "latest", "-t", t4.path(), &docs, "-i", "d.txt"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("matches nothing below the PATHs given"), "{}", o.stderr);
    // A pattern that matches nothing restores nothing and says so.
    let t2 = tempfile::tempdir().unwrap();
    let o = b.run(&argv!["restore", "latest", "-t", t2.path(), "--include", "*.nothing"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("matches nothing"), "{}", o.stderr);
    assert_eq!(fs::read_dir(t2.path()).unwrap().count(), 0);
}
