//! The selection options of `run` on one tree, through the real binary: each option alone, the
//! set of paths the snapshot holds (`ls -r`) against the expected set; the same options given
//! to restic (when it is installed) select the same set; and a tmpfs mounted inside the source
//! is left out with -x (as root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use chaos::argv;
use chaos::testkit::{restored_path, root_or_skip, skipped, Bakare, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# a cache directory tag\n";

/// One tree that every option leaves something out of.
fn tree() -> TestDir {
    TestDir::new()
        .file("keep/a.txt", "a")
        .file("keep/b.log", "b")
        .file("keep/NOTES.TXT", "n")
        .file("cache/CACHEDIR.TAG", CACHEDIR_TAG)
        .file("cache/blob", "c")
        .file("cache/sub/blob", "c")
        .file("fakecache/CACHEDIR.TAG", "Signature: not the one\n")
        .file("fakecache/blob", "f")
        .file("tagged/.nobackup", "")
        .file("tagged/x/y", "y")
        .file("headed/.tag", "KEEP-OUT here")
        .file("headed/z", "z")
        .file("big.bin", vec![7u8; 2 << 20])
        .file("small.bin", vec![7u8; 1 << 20])
        .file("proj/.gitignore", "*.o\nbuild/\n!keep.o\n")
        .file("proj/a.o", "o")
        .file("proj/keep.o", "o")
        .file("proj/build/out", "o")
        .file("proj/src/b.o", "o")
        .file("proj/src/main.c", "c")
        .file("proj/src/.gitignore", "main.c\n")
}

/// Every path of `tree()`, relative to its root.
fn everything() -> BTreeSet<String> {
    [
        "keep",
        "keep/a.txt",
        "keep/b.log",
        "keep/NOTES.TXT",
        "cache",
        "cache/CACHEDIR.TAG",
        "cache/blob",
        "cache/sub",
        "cache/sub/blob",
        "fakecache",
        "fakecache/CACHEDIR.TAG",
        "fakecache/blob",
        "tagged",
        "tagged/.nobackup",
        "tagged/x",
        "tagged/x/y",
        "headed",
        "headed/.tag",
        "headed/z",
        "big.bin",
        "small.bin",
        "proj",
        "proj/.gitignore",
        "proj/a.o",
        "proj/keep.o",
        "proj/build",
        "proj/build/out",
        "proj/src",
        "proj/src/b.o",
        "proj/src/main.c",
        "proj/src/.gitignore",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn without(gone: &[&str]) -> BTreeSet<String> {
    let mut all = everything();
    for g in gone {
        assert!(all.remove(*g), "{g} is not in the tree");
    }
    all
}

/// The paths below `root` in a listing of absolute paths, one a line, relative to `root`.
fn below(listing: &[u8], root: &Path) -> BTreeSet<String> {
    let mut prefix = root.as_os_str().as_bytes().to_vec();
    if !prefix.ends_with(b"/") {
        prefix.push(b'/');
    }
    listing
        .split(|&b| b == b'\n')
        .filter_map(|l| l.strip_prefix(&prefix[..]))
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// Backs `src` up with `opts` into a fresh repository; the paths of the snapshot below `src`.
fn bakare_selects(src: &Path, opts: &[OsString]) -> BTreeSet<String> {
    let b = bakare();
    let mut args = argv!["run"].to_vec();
    args.extend_from_slice(opts);
    args.push(src.into());
    b.ok(&args);
    below(&b.ok(&argv!["ls", "-r", "latest", src]).stdout, src)
}

/// The options of each case, with what they leave out of `tree()`. `files` are written into a
/// directory beside the tree (exclude files), named by `{F}` in the options.
struct Case {
    opts: &'static [&'static str],
    files: &'static [(&'static str, &'static str)],
    gone: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        opts: &["--exclude-file", "{F}/ex"],
        files: &[("ex", "# logs\n\n  *.log  \nsub\n")],
        gone: &["keep/b.log", "cache/sub", "cache/sub/blob"],
    },
    Case { opts: &["--iexclude", "notes.txt"], files: &[], gone: &["keep/NOTES.TXT"] },
    Case {
        opts: &["--iexclude-file", "{F}/iex"],
        files: &[("iex", "*.LOG\nBIG.BIN\n")],
        gone: &["keep/b.log", "big.bin"],
    },
    Case {
        opts: &["--exclude-if-present", ".nobackup"],
        files: &[],
        // restic's rule: the tagged directory and its tag stay, the rest of it goes.
        gone: &["tagged/x", "tagged/x/y"],
    },
    Case { opts: &["--exclude-if-present", ".tag:KEEP-OUT"], files: &[], gone: &["headed/z"] },
    Case { opts: &["--exclude-if-present", ".tag:OTHER"], files: &[], gone: &[] },
    Case { opts: &["--exclude-caches"], files: &[], gone: &["cache/blob", "cache/sub", "cache/sub/blob"] },
    Case { opts: &["--exclude-larger-than", "1M"], files: &[], gone: &["big.bin"] },
    Case { opts: &["--exclude-larger-than", "1023K"], files: &[], gone: &["big.bin", "small.bin"] },
    // `*` stops at `/`: only the blobs one level below the root go.
    Case { opts: &["--exclude", "{S}/*/blob"], files: &[], gone: &["cache/blob", "fakecache/blob"] },
    // A relative pattern with a `/` matches at any depth.
    Case { opts: &["--exclude", "cache/sub"], files: &[], gone: &["cache/sub", "cache/sub/blob"] },
    Case { opts: &["--exclude", "keep/*.log"], files: &[], gone: &["keep/b.log"] },
];

fn case_opts(case: &Case, files: &Path, src: &Path) -> Vec<OsString> {
    for (name, text) in case.files {
        fs::write(files.join(name), text).unwrap();
    }
    let (f, s) = (files.to_str().unwrap(), src.to_str().unwrap());
    case.opts.iter().map(|o| OsString::from(o.replace("{F}", f).replace("{S}", s))).collect()
}

#[test]
fn each_selection_option_leaves_out_exactly_its_paths() {
    let src = tree();
    let files = tempfile::tempdir().unwrap();
    assert_eq!(bakare_selects(src.path(), &[]), everything());
    for case in CASES {
        let opts = case_opts(case, files.path(), src.path());
        assert_eq!(bakare_selects(src.path(), &opts), without(case.gone), "{:?}", case.opts);
    }
}

#[test]
fn ignore_files_apply_to_their_directory_and_below() {
    let src = tree();
    let got = bakare_selects(src.path(), &argv!["--ignore-file", ".gitignore"]);
    // proj/.gitignore: *.o, build/, !keep.o; proj/src/.gitignore: main.c.
    let gone = ["proj/a.o", "proj/build", "proj/build/out", "proj/src/b.o", "proj/src/main.c"];
    assert_eq!(got, without(&gone));
    // A name no directory holds changes nothing; an ignore file that does not parse is named.
    assert_eq!(bakare_selects(src.path(), &argv!["--ignore-file", ".nothing"]), everything());
    fs::write(src.path().join("keep/.bad"), "ok.txt\nbad{\n").unwrap();
    let b = bakare();
    let out = b.ok(&argv!["run", "--ignore-file", ".bad", src.path()]);
    assert!(out.stderr.contains("keep/.bad"), "{}", out.stderr);
}

#[test]
fn files_from_lists_add_to_the_paths_as_bytes() {
    let src = TestDir::new()
        .file("a/one", "1")
        .file("a/two", "2")
        .file(OsString::from_vec(b"caf\xe9".to_vec()), "latin-1 name")
        .file(" lead", "a name with a leading space")
        .file("new\nline", "a name with a newline")
        .file("b/three", "3")
        .file("c/four", "4");
    let p = src.path();
    let lists = tempfile::tempdir().unwrap();
    let l = lists.path();
    let lines = [
        b"# a comment\n\n".to_vec(),
        [b"  ", p.join("a/one").as_os_str().as_bytes(), b"  \r\n"].concat(),
        [p.join("caf").as_os_str().as_bytes(), b"\xe9\n"].concat(),
    ]
    .concat();
    fs::write(l.join("lines"), lines).unwrap();
    fs::write(l.join("verbatim"), [p.join(" lead").as_os_str().as_bytes(), b"\n\n"].concat()).unwrap();
    fs::write(l.join("raw"), [p.join("new\nline").as_os_str().as_bytes(), b"\0"].concat()).unwrap();
    let b = bakare();
    b.ok(&argv![
        "run",
        "--files-from",
        l.join("lines"),
        "--files-from-verbatim",
        l.join("verbatim"),
        "--files-from-raw",
        l.join("raw"),
        p.join("b"),
    ]);
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    let root = restored_path(target.path(), p);
    let mut got: Vec<OsString> = Vec::new();
    for e in walk(&root) {
        got.push(e.strip_prefix(&root).unwrap().as_os_str().to_owned());
    }
    got.sort();
    let mut want: Vec<OsString> = ["a", "a/one", "b", "b/three", " lead", "new\nline"]
        .iter()
        .map(OsString::from)
        .chain([OsString::from_vec(b"caf\xe9".to_vec())])
        .collect();
    want.sort();
    assert_eq!(got, want);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
    }
    out
}

#[test]
fn unreadable_lists_and_bad_patterns_fail_before_anything_is_written() {
    let src = tree();
    let lists = tempfile::tempdir().unwrap();
    let bad = lists.path().join("bad-patterns");
    fs::write(&bad, "*.log\n# fine\nbad[\n").unwrap();
    let empty = lists.path().join("empty");
    fs::write(&empty, "# nothing\n\n").unwrap();
    let missing = lists.path().join("missing");
    let cases: Vec<(Vec<OsString>, String)> = vec![
        (argv!["--exclude-file", &missing, src.path()].to_vec(), missing.display().to_string()),
        (argv!["--iexclude-file", &bad, src.path()].to_vec(), format!("{}:3", bad.display())),
        (argv!["--files-from", &missing].to_vec(), missing.display().to_string()),
        (argv!["--files-from", &empty].to_vec(), "nothing to back up".into()),
        (argv!["--exclude-if-present", ":x", src.path()].to_vec(), "NAME".into()),
    ];
    for (opts, says) in cases {
        let b = bakare();
        let mut args = argv!["run"].to_vec();
        args.extend(opts);
        let out = b.run(&args);
        assert_ne!(out.code, 0, "{args:?}");
        assert!(out.stderr.contains(&says), "{args:?}: {}", out.stderr);
        assert!(!b.repo.exists(), "{args:?}: the default repository was created");
    }
    // Without any path at all, clap says what is missing.
    let out = bakare().run(&argv!["run"]);
    assert_ne!(out.code, 0);
}

/// A tmpfs mounted on a directory, unmounted when dropped (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path) -> Option<Mount> {
        let ok =
            Command::new("mount").args(["-t", "tmpfs", "none"]).arg(at).status().is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The tree with a tmpfs mounted at `mnt` holding `mnt/inside` and `mnt/deep/file`.
fn mounted_tree() -> Option<(TestDir, Mount)> {
    let src = TestDir::new().file("a.txt", "a").dir("mnt");
    let Some(m) = Mount::tmpfs(&src.path().join("mnt")) else {
        assert!(std::env::var_os("BAKARE_REQUIRE_ROOT").is_none(), "mount -t tmpfs failed as root");
        skipped("one_file_system: mount -t tmpfs failed (no CAP_SYS_ADMIN?)");
        return None;
    };
    fs::write(src.path().join("mnt/inside"), "on tmpfs").unwrap();
    fs::create_dir(src.path().join("mnt/deep")).unwrap();
    fs::write(src.path().join("mnt/deep/file"), "on tmpfs").unwrap();
    Some((src, m))
}

#[test]
fn one_file_system_keeps_a_mount_point_empty() {
    if !root_or_skip("one_file_system (mounts a tmpfs)") {
        return;
    }
    let Some((src, _mount)) = mounted_tree() else { return };
    let all: BTreeSet<String> =
        ["a.txt", "mnt", "mnt/inside", "mnt/deep", "mnt/deep/file"].iter().map(|s| s.to_string()).collect();
    assert_eq!(bakare_selects(src.path(), &[]), all);
    let one: BTreeSet<String> = ["a.txt", "mnt"].iter().map(|s| s.to_string()).collect();
    assert_eq!(bakare_selects(src.path(), &argv!["--one-file-system"]), one);
    assert_eq!(bakare_selects(src.path(), &argv!["-x"]), one);
    // The mount point itself as the path to back up: its own file system is the one to stay on.
    let inner = bakare_selects(&src.path().join("mnt"), &argv!["-x"]);
    assert_eq!(inner, ["inside", "deep", "deep/file"].iter().map(|s| s.to_string()).collect());
}

/// restic, when installed; otherwise None, said visibly (BAKARE_REQUIRE_RESTIC=1 fails instead).
fn restic() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("restic"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(std::env::var_os("BAKARE_REQUIRE_RESTIC").is_none(), "restic is not installed");
        skipped("the comparison with restic: restic is not installed (apt-get install restic)");
    }
    found
}

/// Backs `src` up with restic and `opts`; the paths of the snapshot below `src`.
fn restic_selects(restic: &Path, src: &Path, opts: &[OsString]) -> BTreeSet<String> {
    let mut args = opts.to_vec();
    args.push(src.into());
    below(&restic_backup(restic, &args), src)
}

/// Runs `restic backup ARGS` into a fresh repository; `restic ls latest`.
fn restic_backup(restic: &Path, backup_args: &[OsString]) -> Vec<u8> {
    let repo = tempfile::tempdir().unwrap();
    let run = |args: &[OsString]| {
        let out = Command::new(restic)
            .arg("--repo")
            .arg(repo.path())
            .arg("--no-cache")
            .arg("--quiet")
            .args(args)
            .env("RESTIC_PASSWORD", "test")
            .env_remove("RESTIC_REPOSITORY")
            .output()
            .unwrap();
        assert!(out.status.success(), "restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    run(&argv!["init"]);
    let mut args = argv!["backup"].to_vec();
    args.extend_from_slice(backup_args);
    run(&args);
    run(&argv!["ls", "latest"])
}

#[test]
fn the_same_options_select_the_same_paths_as_restic() {
    let Some(restic) = restic() else { return };
    let src = tree();
    let files = tempfile::tempdir().unwrap();
    let all_at_once: Vec<OsString> = CASES
        .iter()
        .filter(|c| !c.opts.contains(&".tag:OTHER") && !c.opts.contains(&"1023K"))
        .flat_map(|c| case_opts(c, files.path(), src.path()))
        .collect();
    for opts in CASES.iter().map(|c| case_opts(c, files.path(), src.path())).chain([all_at_once]) {
        let theirs = restic_selects(&restic, src.path(), &opts);
        assert_eq!(bakare_selects(src.path(), &opts), theirs, "{opts:?}");
    }
    let list = files.path().join("list");
    let listed = [src.path().join("keep"), src.path().join("proj/src")];
    fs::write(&list, listed.iter().map(|p| format!("{}\n", p.display())).collect::<String>()).unwrap();
    let theirs = below(&restic_backup(&restic, &argv!["--files-from", &list]), Path::new("/"));
    let b = bakare();
    b.ok(&argv!["run", "--files-from", &list]);
    assert_eq!(below(&b.ok(&argv!["ls", "-r", "latest"]).stdout, Path::new("/")), theirs);
}

#[test]
fn one_file_system_is_restics() {
    if !root_or_skip("one_file_system against restic (mounts a tmpfs)") {
        return;
    }
    let Some(restic) = restic() else { return };
    let Some((src, _mount)) = mounted_tree() else { return };
    let opts = argv!["--one-file-system"];
    assert_eq!(bakare_selects(src.path(), &opts), restic_selects(&restic, src.path(), &opts));
}

/// `chattr +d`: adds the nodump flag; false when the file system does not take it.
fn set_nodump(p: &Path) -> bool {
    use std::os::fd::AsFd;
    let f = fs::File::open(p).unwrap();
    let now = rustix::fs::ioctl_getflags(f.as_fd()).unwrap_or(rustix::fs::IFlags::empty());
    rustix::fs::ioctl_setflags(f.as_fd(), now | rustix::fs::IFlags::NODUMP).is_ok()
}

#[test]
fn exclude_nodump_leaves_out_flagged_files_and_directories() {
    let src = TestDir::new()
        .file("keep/a", "a")
        .file("keep/dumpless", "d")
        .file("gone/inner", "i")
        .file("gone/deeper/x", "x")
        .fifo("keep/fifo")
        .symlink("keep/link", "dumpless");
    let p = src.path();
    if !(set_nodump(&p.join("keep/dumpless")) && set_nodump(&p.join("gone"))) {
        assert!(
            std::env::var_os("BAKARE_REQUIRE_ROOT").is_none(),
            "the test directory's file system takes no nodump flag"
        );
        skipped("exclude_nodump: the test directory's file system takes no nodump flag");
        return;
    }
    let all: BTreeSet<String> = [
        "keep",
        "keep/a",
        "keep/dumpless",
        "keep/fifo",
        "keep/link",
        "gone",
        "gone/inner",
        "gone/deeper",
        "gone/deeper/x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(bakare_selects(p, &[]), all, "without the option, the flag changes nothing");
    // The FIFO is not opened (that would block), the symlink not followed to its flagged file.
    let kept: BTreeSet<String> =
        ["keep", "keep/a", "keep/fifo", "keep/link"].iter().map(|s| s.to_string()).collect();
    assert_eq!(bakare_selects(p, &argv!["--exclude-nodump"]), kept);
    let b = bakare();
    b.ok(&argv!["run", "--exclude-nodump", p]);
    let snaps = b.ok(&argv!["snapshots"]).stdout_str();
    assert!(snaps.contains("    selection: --exclude-nodump"), "recorded in the selection words: {snaps}");
}
