//! End-to-end tests of the real `bakare` binary on generated trees: what is restored must be
//! the same bytes and metadata that were saved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chaos::argv;
use chaos::testkit::{assert_same_tree, is_root, restored_path, Bakare, Rng, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn odd_tree() -> TestDir {
    TestDir::new()
        .file("docs/readme.txt", "hello\n".repeat(1000))
        .file(OsString::from_vec(b"docs/caf\xe9-latin1.txt".to_vec()), "not utf-8 name")
        .file(OsString::from_vec(b"bin\x01\xff\xfe".to_vec()), [0u8, 1, 2, 255])
        .file("empty-file", "")
        .dir("empty-dir")
        .dir("a/b/c/d/e/f/g/h")
        .file("a/b/c/d/e/f/g/h/deep.txt", "deep")
        .symlink("link-to-readme", "docs/readme.txt")
        .symlink("dangling", "/nonexistent/target")
        .hardlink("docs/hard-readme", "docs/readme.txt")
        .fifo("a/pipe")
        .file("sp ace/tab\tname", "x")
}

fn restore_all(b: &Bakare, snapshot: &str) -> tempfile::TempDir {
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", snapshot, "--target", target.path()]);
    target
}

#[test]
fn round_trip_preserves_bytes_and_metadata() {
    let b = bakare();
    let src = odd_tree();
    let p = src.path();
    fs::set_permissions(p.join("docs/readme.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(p.join("a/b"), fs::Permissions::from_mode(0o500)).unwrap();
    let touch = std::process::Command::new("touch")
        .args(["-h", "-d", "2001-02-03 04:05:06.123456789"])
        .arg(p.join("empty-file"))
        .arg(p.join("link-to-readme"))
        .status()
        .unwrap();
    assert!(touch.success());
    if is_root() {
        // device files are recorded, never read, and restored as devices
        let mknod = std::process::Command::new("mknod")
            .arg(p.join("a/null-dev"))
            .args(["c", "1", "3"])
            .status()
            .unwrap();
        assert!(mknod.success());
        std::os::unix::fs::lchown(p.join("empty-file"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(p.join("dangling"), Some(42), Some(43)).unwrap();
    }
    b.ok(&argv!["init"]);
    let out = b.ok(&argv!["run", p]);
    assert!(out.stdout_str().contains("snapshot "), "{}", out.stdout_str());
    let target = restore_all(&b, "latest");
    assert_same_tree(p, &restored_path(target.path(), p));
}

#[test]
fn first_run_creates_the_default_repository_and_prints_a_summary() {
    // The default repository: neither --repo nor BAKARE_REPO.
    let b = bakare();
    let src = odd_tree();
    let out = b.ok(&argv!["run", src.path()]);
    let text = out.stdout_str();
    assert!(text.contains("created repository"), "{text}");
    assert!(text.contains("secret key saved to"), "{text}");
    assert!(text.contains("files") && text.contains("stored as"), "{text}");
    assert!(b.repo.join("config").exists());
    let keys = b.home.path().join(".config/bakare/keys");
    let key = fs::read_dir(&keys).unwrap().next().unwrap().unwrap().path();
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let list = b.ok(&argv!["snapshots"]).stdout_str();
    assert!(list.contains("1 snapshots"), "{list}");
}

fn json_run(b: &Bakare, args: &[OsString]) -> serde_json::Value {
    let mut a = argv!["--json", "run"].to_vec();
    a.extend_from_slice(args);
    b.ok(&a).json()
}

#[test]
fn dedup_second_run_and_insertion_in_the_middle() {
    let b = bakare();
    let src = TestDir::new();
    let mut rng = Rng::new(7);
    let big = rng.bytes(96 << 20);
    fs::write(src.path().join("big.bin"), &big).unwrap();
    fs::write(src.path().join("copy.bin"), &big).unwrap();
    b.ok(&argv!["init"]);
    let first = json_run(&b, &argv![src.path()]);
    let stored = first["new_bytes"].as_u64().unwrap();
    // the copy deduplicates completely
    assert!(stored < (96 << 20) + (1 << 20), "stored {stored}");
    let second = json_run(&b, &argv![src.path()]);
    assert!(second["new_bytes"].as_u64().unwrap() == 0, "{second}");
    // a few bytes inserted in the middle of the big file cost only the chunks around them
    let mut edited = big.clone();
    edited.splice(50 << 20..50 << 20, *b"INSERTED!");
    fs::write(src.path().join("big.bin"), &edited).unwrap();
    let third = json_run(&b, &argv![src.path()]);
    let new = third["new_bytes"].as_u64().unwrap();
    assert!(new > 0 && new <= 10 << 20, "insertion stored {new} new bytes");
    let target = restore_all(&b, "latest");
    assert_eq!(fs::read(restored_path(target.path(), &src.path().join("big.bin"))).unwrap(), edited);
}

#[test]
fn compressible_data_is_compressed() {
    let b = bakare();
    let src = TestDir::new().file("log.txt", Rng::new(3).text(8 << 20));
    b.ok(&argv!["init"]);
    let j = json_run(&b, &argv![src.path()]);
    let stored = j["stored_bytes"].as_u64().unwrap();
    assert!(stored < (8 << 20) / 3, "8 MiB of text stored as {stored} bytes");
}

#[test]
fn backup_key_backs_up_but_cannot_read() {
    let b = bakare();
    let src = odd_tree();
    b.ok(&argv!["init"]);
    let key = b.home.path().join("backup.key");
    b.ok(&argv!["key", "export", "--backup-only", &key]);
    let text = fs::read_to_string(&key).unwrap();
    assert!(!text.contains("AGE-SECRET-KEY"), "backup key holds the secret identity");
    let run = b.run(&argv!["--key", &key, "run", src.path()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for args in [
        argv!["--key", &key, "snapshots"].to_vec(),
        argv!["--key", &key, "restore", "latest", "--target", b.home.path().join("r")].to_vec(),
    ] {
        let o = b.run(&args);
        assert_eq!(o.code, 1);
        assert!(o.stderr.contains("backup-only key"), "{}", o.stderr);
    }
    // the full key still restores what the backup key saved
    let target = restore_all(&b, "latest");
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

/// Every file of the repository, with its bytes.
fn repo_files(repo: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

#[test]
fn repository_reveals_no_names_or_content() {
    let b = bakare();
    let src = TestDir::new()
        .file("secret-name-zebra.txt", "the password is swordfish ".repeat(100))
        .file("plain.txt", "swordfish");
    b.ok(&argv!["init"]);
    b.ok(&argv!["run", src.path()]);
    for (path, bytes) in repo_files(&b.repo) {
        for needle in [&b"zebra"[..], b"swordfish", b"secret-name", b"plain.txt"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn tampering_is_detected_and_never_restores_wrong_bytes() {
    let b = bakare();
    let mut rng = Rng::new(11);
    let src = TestDir::new().file("a.bin", rng.bytes(3 << 20)).file("b.txt", rng.text(100_000));
    // Without parity, which would repair the flip (tests/parity.rs).
    b.ok(&argv!["init", "--parity", "0"]);
    b.ok(&argv!["run", src.path()]);
    let packs: Vec<_> =
        repo_files(&b.repo).into_iter().filter(|(p, _)| p.to_string_lossy().contains("/packs/")).collect();
    let (pack, bytes) = packs.iter().max_by_key(|(_, b)| b.len()).unwrap();
    // flip one byte in the middle of the data of the largest pack
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x01;
    fs::set_permissions(pack, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(pack, &damaged).unwrap();
    let target = tempfile::tempdir().unwrap();
    let o = b.run(&argv!["restore", "latest", "--target", target.path()]);
    assert_eq!(o.code, 3, "stdout {} stderr {}", o.stdout_str(), o.stderr);
    assert!(o.stdout_str().contains("failed authentication"), "{}", o.stdout_str());
    // whatever was restored is exactly right
    for name in ["a.bin", "b.txt"] {
        let p = restored_path(target.path(), &src.path().join(name));
        if let Ok(got) = fs::read(&p) {
            assert_eq!(got, fs::read(src.path().join(name)).unwrap(), "{name} restored with wrong bytes");
        }
    }
}

#[test]
fn parallel_equals_sequential_and_io_modes_agree() {
    let b = bakare();
    let src = TempTree::random(5);
    b.ok(&argv!["init"]);
    let trees: Vec<serde_json::Value> = [
        argv!["--workers", "1", "--io", "pool"],
        argv!["--workers", "4", "--io", "uring"],
        argv!["--workers", "3", "--io", "auto"],
    ]
    .into_iter()
    .map(|a| {
        let mut a = a.to_vec();
        a.push(src.path().into());
        json_run(&b, &a)["tree"].clone()
    })
    .collect();
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[1], trees[2]);
    assert!(!trees[0].as_array().unwrap().is_empty());
}

struct TempTree(chaos::testkit::QuietDir);

impl TempTree {
    fn random(seed: u64) -> Self {
        let d = chaos::testkit::quiet_dir();
        chaos::testkit::random_tree(d.path(), seed, 300);
        TempTree(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

#[test]
fn excludes_and_partial_restore() {
    let b = bakare();
    let src = TestDir::new()
        .file("keep/a.txt", "a")
        .file("keep/b.log", "b")
        .file("cache/big.bin", "c")
        .file("other/c.txt", "c");
    b.ok(&argv!["init"]);
    b.ok(&argv!["run", "--exclude", "*.log", "--exclude", "cache", src.path()]);
    let listing = b.ok(&argv!["ls", "latest", src.path(), "--recursive"]).stdout_str();
    assert!(listing.contains("keep/a.txt") && listing.contains("other/c.txt"), "{listing}");
    assert!(!listing.contains("b.log") && !listing.contains("cache"), "{listing}");
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path(), src.path().join("keep")]);
    let root = restored_path(target.path(), src.path());
    assert_eq!(fs::read(root.join("keep/a.txt")).unwrap(), b"a");
    assert!(!root.join("other").exists());
}

#[test]
fn snapshot_selection_and_clear_errors() {
    let b = bakare();
    let src = odd_tree();
    let o = b.run(&argv!["snapshots"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("no repository"), "{}", o.stderr);
    b.ok(&argv!["init"]);
    let again = b.run(&argv!["init"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    let id = json_run(&b, &argv![src.path()])["snapshot"].as_str().unwrap().to_string();
    json_run(&b, &argv![src.path()]);
    let list = b.ok(&argv!["--json", "snapshots"]).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // a unique prefix works, a missing one is named
    let target = restore_all(&b, &id[..8]);
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    let o = b.run(&argv!["ls", "ffffffffff"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("no snapshot matches"), "{}", o.stderr);
    let o = b.run(&argv!["run", "/definitely/not/here"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("/definitely/not/here"), "{}", o.stderr);
    let o = b.run(&argv!["run", "--mem-limit", "lots", src.path()]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("512M"), "{}", o.stderr);
}

#[test]
fn ls_output_is_closed_pipe_safe() {
    let b = bakare();
    let src = TempTree::random(9);
    b.ok(&argv!["init"]);
    b.ok(&argv!["run", src.path()]);
    let mut child = b
        .command(&argv!["ls", "-l", "-r", "latest"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // reader goes away at once
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn set_old_mtimes(root: &Path) {
    let status = std::process::Command::new("find")
        .arg(root)
        .args(["-exec", "touch", "-h", "-d", "2020-01-02 03:04:05", "{}", "+"])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn unchanged_files_are_not_read_again() {
    let b = bakare();
    let src = TempTree::random(17);
    let mut rng = Rng::new(5);
    fs::write(src.path().join("big.bin"), rng.bytes(12 << 20)).unwrap();
    set_old_mtimes(src.path());
    b.ok(&argv!["init"]);
    let first = json_run(&b, &argv![src.path()]);
    let files = first["files"].as_u64().unwrap();
    assert_eq!(first["unchanged_files"].as_u64().unwrap(), 0);
    assert!(first["bytes_read"].as_u64().unwrap() > 12 << 20);

    // Nothing changed: no file is read, the snapshot is the same.
    let second = json_run(&b, &argv![src.path()]);
    assert_eq!(second["bytes_read"].as_u64().unwrap(), 0, "{second}");
    assert_eq!(second["tree"], first["tree"]);
    let linked = second["files"].as_u64().unwrap() - second["unchanged_files"].as_u64().unwrap();
    assert!(linked < files / 4, "only hard-link names are not looked up: {second}");

    // One file changes: only it is read.
    fs::write(src.path().join("big.bin"), rng.bytes(12 << 20)).unwrap();
    let third = json_run(&b, &argv![src.path()]);
    assert_eq!(third["bytes_read"].as_u64().unwrap(), 12 << 20, "{third}");

    // A damaged cache costs a re-read, says so, and the snapshot is still right.
    let cache_root = b.home.path().join(".cache/bakare");
    let mut caches = Vec::new();
    let mut stack = vec![cache_root];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p)
            } else {
                caches.push(p)
            }
        }
    }
    assert_eq!(caches.len(), 1, "{caches:?}");
    let mut bytes = fs::read(&caches[0]).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&caches[0], &bytes).unwrap();
    let o = b.ok(&argv!["--json", "run", src.path()]);
    assert!(o.stderr.contains("files cache damaged"), "{}", o.stderr);
    let fourth = o.json();
    assert!(fourth["bytes_read"].as_u64().unwrap() > 0);
    assert_eq!(fourth["new_bytes"].as_u64().unwrap(), 0, "dedup still avoids re-upload");
    let target = restore_all(&b, "latest");
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

#[test]
fn unchanged_directories_reuse_their_trees_and_changed_ones_do_not() {
    let b = bakare();
    // Tree ids are compared: the source's ancestors must not change meanwhile.
    let src = chaos::testkit::quiet_dir();
    let files = [("a/1.txt", "one"), ("a/b/2.txt", "two"), ("a/b/3.txt", "three")];
    let files = files.into_iter().chain([("c/4.txt", "four"), ("c/5.txt", "five"), ("d/6.txt", "six")]);
    for (rel, data) in files {
        let p = src.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    std::os::unix::fs::symlink("../c/4.txt", src.path().join("d/link")).unwrap();
    set_old_mtimes(src.path());
    // touch moved every ctime to now: a tree is only recorded for reuse once its entries'
    // timestamps are safely in the past (here: over a second before the backup starts).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    b.ok(&argv!["init"]);
    let first = json_run(&b, &argv![src.path()]);
    assert_eq!(first["reused_dirs"], 0);
    // a/b, a and c are reused; d holds a symlink (not in the files cache), and the root
    // holds d.
    let second = json_run(&b, &argv![src.path()]);
    assert_eq!(second["reused_dirs"], 3, "{second}");
    assert_eq!(second["tree"], first["tree"]);

    // A changed file: its directory and theirs up to the root are encoded again, c is reused.
    fs::write(src.path().join("a/b/2.txt"), "two, changed").unwrap();
    let third = json_run(&b, &argv![src.path()]);
    assert_eq!(third["reused_dirs"], 1, "{third}");
    assert_ne!(third["tree"], first["tree"]);
    // A removed file, with its directory's mtime put back: its ctime still moved.
    fs::remove_file(src.path().join("c/5.txt")).unwrap();
    let touch = std::process::Command::new("touch")
        .args(["-d", "2020-01-02 03:04:05"])
        .arg(src.path().join("c"))
        .status()
        .unwrap();
    assert!(touch.success());
    let fourth = json_run(&b, &argv![src.path()]);
    assert_eq!(fourth["reused_dirs"], 0, "{fourth}");
    let target = restore_all(&b, "latest");
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    // The run after a full re-encode reuses what is now settled again, and stores the same tree.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let fifth = json_run(&b, &argv![src.path()]);
    let sixth = json_run(&b, &argv![src.path()]);
    assert_eq!(sixth["reused_dirs"], 3, "{sixth}");
    assert_eq!(sixth["tree"], fifth["tree"]);
    assert_eq!(fifth["tree"], fourth["tree"]);
}

#[test]
fn files_modified_during_the_backup_second_are_read_again() {
    let b = bakare();
    let src = TestDir::new().file("fresh.txt", "written just now");
    b.ok(&argv!["init"]);
    json_run(&b, &argv![src.path()]);
    // Its mtime is within the second the first backup started: it may have changed again
    // without its mtime moving, so it is not trusted from the cache.
    let again = json_run(&b, &argv![src.path()]);
    assert_eq!(again["bytes_read"].as_u64().unwrap(), 16, "{again}");
    assert_eq!(again["unchanged_files"].as_u64().unwrap(), 0);
}

#[test]
fn the_repository_and_caches_are_never_backed_up_into_themselves() {
    let b = bakare();
    fs::write(b.home.path().join("notes.txt"), "mine").unwrap();
    b.ok(&argv!["init"]);
    b.ok(&argv!["run", b.home.path()]);
    let o = b.ok(&argv!["--json", "run", b.home.path()]);
    assert!(o.json()["errors"].as_array().unwrap().is_empty(), "{}", o.stdout_str());
    let listing = b.ok(&argv!["ls", "-r", "latest", b.home.path()]).stdout_str();
    assert!(listing.contains("notes.txt"), "{listing}");
    assert!(!listing.contains("/repo/") && !listing.contains(".cache/bakare/"), "{listing}");
}

#[test]
fn progress_shows_on_a_terminal_and_stays_quiet_otherwise() {
    let b = bakare();
    let src = TestDir::new().file("big.bin", Rng::new(1).bytes(64 << 20));
    b.ok(&argv!["init"]);
    let quiet = b.ok(&argv!["run", src.path()]);
    // the progress line is "<done>/<total> files  <bytes>/<bytes>  <rate>/s ...", the summary is not
    assert!(!quiet.stderr.contains("files  ") && !quiet.stdout_str().contains("files  "), "{}", quiet.stderr);
    // `script` gives the command a terminal.
    let cmdline = format!("{} run --no-cache {}", env!("CARGO_BIN_EXE_bakare"), src.path().display());
    let mut c = b.command(&argv!["-qec", &cmdline, "/dev/null"]);
    c.env("BAKARE_IO", "pool");
    let c = {
        let mut s = std::process::Command::new("script");
        s.args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => s.env(k, v),
                None => s.env_remove(k),
            };
        }
        s
    };
    let tty = chaos::testkit::run_measured(c);
    let screen = tty.stdout_str();
    assert_eq!(tty.code, 0, "{screen}");
    assert!(screen.contains(" files  ") && screen.contains("\x1b[2K"), "no progress line in {screen:?}");
}

#[test]
fn sparse_files_restore_with_their_holes() {
    use std::os::unix::fs::MetadataExt;
    let b = bakare();
    let src = TestDir::new();
    let path = src.path().join("sparse.img");
    let f = fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap(); // 64 MiB, all hole
    drop(f);
    std::io::Write::write_all(&mut fs::OpenOptions::new().append(true).open(&path).unwrap(), b"tail")
        .unwrap();
    b.ok(&argv!["init"]);
    b.ok(&argv!["run", src.path()]);
    let target = restore_all(&b, "latest");
    let restored = restored_path(target.path(), &path);
    assert_eq!(fs::read(&restored).unwrap(), fs::read(&path).unwrap());
    let blocks = fs::metadata(&restored).unwrap().blocks() * 512;
    assert!(blocks < 8 << 20, "restored sparse file allocates {blocks} bytes");
}

#[test]
fn small_files_compress_together_and_stay_individually_restorable() {
    let b = bakare();
    let src = TestDir::new();
    let mut rng = Rng::new(8);
    let mut total = 0;
    for i in 0..3000 {
        let n = 200 + rng.below(3000) as usize;
        let text = rng.text(n);
        total += text.len();
        fs::write(src.path().join(format!("note-{i:04}.txt")), text).unwrap();
    }
    b.ok(&argv!["init"]);
    let j = json_run(&b, &argv![src.path()]);
    let stored = j["stored_bytes"].as_u64().unwrap() as usize;
    // one file at a time, zstd gets ~1.6x on these; in bundles several times more
    assert!(stored * 4 < total, "{total} bytes of small files stored as {stored}");
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path(), src.path().join("note-1234.txt")]);
    let one = restored_path(target.path(), &src.path().join("note-1234.txt"));
    assert_eq!(fs::read(one).unwrap(), fs::read(src.path().join("note-1234.txt")).unwrap());
    let all = restore_all(&b, "latest");
    assert_same_tree(src.path(), &restored_path(all.path(), src.path()));
}

#[test]
fn roots_can_be_files_and_symlinks() {
    let b = bakare();
    let src = TestDir::new().file("d/f.txt", "hi").file("d/g.txt", "there").symlink("link", "d");
    b.ok(&argv!["init"]);
    // a file inside another root, a symlink to a directory (saved as the symlink), a dir
    b.ok(&argv!["run", src.path().join("d/f.txt"), src.path().join("link"), src.path().join("d")]);
    let target = restore_all(&b, "latest");
    let root = restored_path(target.path(), src.path());
    assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new("d"));
    assert_eq!(fs::read(root.join("d/g.txt")).unwrap(), b"there");
    assert_same_tree(&src.path().join("d"), &root.join("d"));
    // only a file
    let one = bakare();
    one.ok(&argv!["init"]);
    one.ok(&argv!["run", src.path().join("d/g.txt")]);
    let t = restore_all(&one, "latest");
    assert_eq!(fs::read(restored_path(t.path(), &src.path().join("d/g.txt"))).unwrap(), b"there");
}

/// Every directory and file under `root`, with its permission bits.
fn modes_under(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), md.mode() & 0o777));
        if md.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

#[test]
fn local_state_is_private_and_key_export_leaves_existing_directories_alone() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("a/b.txt", "x");
    b.ok(&argv!["run", src.path()]);
    b.ok(&argv!["find", "b.txt"]); // builds the name catalog
    for root in [b.home.path().join(".config/bakare"), b.home.path().join(".cache/bakare")] {
        let modes = modes_under(&root);
        assert!(modes.len() > 2, "{modes:?}");
        for (p, mode) in modes {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{}", p.display());
        }
    }
    // An existing directory keeps its mode.
    let shared = tempfile::tempdir().unwrap();
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o755)).unwrap();
    b.ok(&argv!["key", "export", "--backup-only", shared.path().join("backup.key")]);
    assert_eq!(fs::metadata(shared.path()).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(fs::metadata(shared.path().join("backup.key")).unwrap().permissions().mode() & 0o777, 0o600);
    // A secret key readable by others is used, with a warning.
    let key = chaos::oracle::key_file(b.home.path());
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let o = b.ok(&argv!["snapshots"]);
    assert!(o.stderr.contains("holds a secret key but is readable by others (mode 644)"), "{}", o.stderr);
}

#[test]
fn cp_al_copies_with_equal_trees_restore_in_full() {
    // `cp -al photos photos.1 && cp -al photos photos.2`: the copies' trees are equal (same
    // inodes, hard links to the same first name). Each must come back.
    let b = bakare();
    b.ok(&argv!["init"]);
    let mut src = TestDir::new().file("photos/a.jpg", "a").file("photos/b.jpg", "bb").file("zz.txt", "z");
    for copy in ["photos.1", "photos.2"] {
        src = src
            .hardlink(format!("{copy}/a.jpg"), "photos/a.jpg")
            .hardlink(format!("{copy}/b.jpg"), "photos/b.jpg");
    }
    b.ok(&argv!["run", src.path()]);
    let check = b.run(&argv!["check"]);
    assert_eq!(check.code, 0, "{}", check.stdout_str());
    let target = restore_all(&b, "latest");
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

/// `init --passphrase`, `key passwd`, `--passphrase-command`: the secret key file holds no
/// clear identity, every owner command needs the passphrase (and names what to do without
/// one), and a backup-only key needs none.
#[test]
fn a_passphrase_protects_the_secret_key_and_backup_only_keys_need_none() {
    let mut b = bakare();
    let src = TestDir::new().file("a", b"alpha").file("d/b", vec![7u8; 100_000]);
    b.env.push(("BAKARE_PASSPHRASE".into(), "correct horse".into()));
    let init = b.ok(&argv!["--json", "init", "--passphrase"]).json();
    let key = PathBuf::from(init["key"].as_str().unwrap());
    let text = fs::read_to_string(&key).unwrap();
    assert!(!text.contains("AGE-SECRET-KEY") && text.contains("identity-sealed: "), "{text}");
    b.ok(&argv!["run", src.path()]);
    let backup_key = b.home.path().join("laptop.key");
    b.ok(&argv!["key", "export", "--backup-only", &backup_key]);
    b.env.clear();

    let o = b.run(&argv!["snapshots"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("protected by a passphrase: set BAKARE_PASSPHRASE"), "{}", o.stderr);
    let mut wrong = b.command(&argv!["snapshots"]);
    wrong.env("BAKARE_PASSPHRASE", "battery staple");
    let o = chaos::testkit::run_measured(wrong);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("wrong passphrase"), "{}", o.stderr);
    b.ok(&argv!["--passphrase-command", "printf 'correct horse\\n'", "snapshots"]);
    // the backup-only key backs up unattended
    b.ok(&argv!["--key", &backup_key, "run", src.path()]);

    // change it, then remove it
    let mut passwd = b.command(&argv!["key", "passwd"]);
    passwd.env("BAKARE_PASSPHRASE", "correct horse").env("BAKARE_NEW_PASSPHRASE", "new one");
    assert_eq!(chaos::testkit::run_measured(passwd).code, 0);
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(b.run(&argv!["--passphrase-command", "echo correct horse", "snapshots"]).code, 1);
    let mut remove = b.command(&argv!["key", "passwd", "--remove"]);
    remove.env("BAKARE_PASSPHRASE", "new one");
    assert_eq!(chaos::testkit::run_measured(remove).code, 0);
    assert!(fs::read_to_string(&key).unwrap().contains("identity: AGE-SECRET-KEY"));
    let target = b.home.path().join("r");
    b.ok(&argv!["restore", "latest", "--target", &target]);
    assert_same_tree(src.path(), &restored_path(&target, src.path()));
}

/// Issue #17: `run` creates only the default repository. Any other location that holds none (a
/// typo, an unmounted disk, a directory of someone's files, an existing repository's `packs/`)
/// is an error naming `bakare init`, and nothing is created there; `init` refuses a non-empty
/// directory unless `--force`. Unknown schemes are refused (nothing on disk) with what is
/// supported; `./name:...` is a directory.
#[test]
fn repositories_are_created_only_when_asked() {
    let mut b = bakare();
    b.repo = b.home.path().join("repo"); // given with BAKARE_REPO
    let src = odd_tree();
    let o = b.run(&argv!["run", src.path()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("bakare init"), "{}", o.stderr);
    assert!(!b.repo.exists());
    let unmounted = b.home.path().join("mnt/nas-not-mounted/bakare");
    let o = b.run(&argv!["--repo", &unmounted, "run", src.path()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(!b.home.path().join("mnt").exists());

    let docs = b.home.path().join("docs");
    fs::create_dir(&docs).unwrap();
    fs::write(docs.join("letter.txt"), "dear").unwrap();
    assert_eq!(b.run(&argv!["--repo", &docs, "run", src.path()]).code, 1);
    let o = b.run(&argv!["--repo", &docs, "init"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("not empty") && o.stderr.contains("--force"), "{}", o.stderr);
    assert_eq!(fs::read_dir(&docs).unwrap().count(), 1);
    b.ok(&argv!["--repo", &docs, "init", "--force"]);
    b.ok(&argv!["--repo", &docs, "run", src.path()]);

    b.ok(&argv!["init"]);
    let packs = b.repo.join("packs");
    let before = fs::read_dir(&packs).unwrap().count();
    assert_eq!(b.run(&argv!["--repo", &packs, "run", src.path()]).code, 1);
    assert_eq!(fs::read_dir(&packs).unwrap().count(), before);
    assert_eq!(b.ok(&argv!["--json", "check"]).json()["ok"], true);

    let cwd = tempfile::tempdir().unwrap();
    for url in [
        "sftp:user@host:/p",
        "rest:http://host:8000/",
        "rclone:remote:path",
        "b2:bucket:p",
        "azure:c:/",
        "gs:b:/",
        "swift:c:/",
        "backup:2024",
    ] {
        for cmd in [argv!["init"].to_vec(), argv!["run", src.path()].to_vec()] {
            let mut c = b.command(&[argv!["--repo", url].to_vec(), cmd].concat());
            c.current_dir(cwd.path());
            let o = chaos::testkit::run_measured(c);
            assert_eq!(o.code, 1, "{url}: {}", o.stderr);
            assert!(o.stderr.contains("not a kind of repository bakare supports"), "{url}: {}", o.stderr);
            assert!(o.stderr.contains(&format!("./{url}")), "{url}: {}", o.stderr);
        }
    }
    assert_eq!(fs::read_dir(cwd.path()).unwrap().count(), 0, "nothing created");
    let mut c = b.command(&argv!["--repo", "./backup:2024", "init"]);
    c.current_dir(cwd.path());
    assert_eq!(chaos::testkit::run_measured(c).code, 0);
    assert!(cwd.path().join("backup:2024/config").exists());
}

/// A repository location bakare cannot even parse: a command that touched the repository
/// setup would fail on it.
const UNPARSABLE_REPO: &str = "sftp:user@host:/p";

/// Issue #17: `completions SHELL` prints a script naming the commands and their flags, for
/// every shell clap_complete supports, and bash's parses (`bash -n`). It is generated from the
/// command line alone: no repository is opened or created (even one that cannot be parsed),
/// HOME is left untouched. An unknown shell is a usage error (exit 2).
#[test]
fn completions_for_every_shell_need_no_repository() {
    let b = bakare();
    // fish names long flags without their dashes
    let shells = [
        ("bash", "--mem-limit"),
        ("zsh", "--mem-limit"),
        ("fish", "-l mem-limit"),
        ("elvish", "--mem-limit"),
        ("powershell", "--mem-limit"),
    ];
    for (shell, flag) in shells {
        let script = b.ok(&argv!["--repo", UNPARSABLE_REPO, "completions", shell]).stdout_str();
        assert!(!script.is_empty(), "{shell}: empty script");
        assert!(script.contains("restore"), "{shell}: no `restore` in {} bytes", script.len());
        assert!(script.contains(flag), "{shell}: no `{flag}` in {} bytes", script.len());
    }
    bash_parses(&b.ok(&argv!["completions", "bash"]).stdout);

    let o = b.run(&argv!["completions", "tcsh"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("possible values"), "{}", o.stderr);
    assert!(!Bakare::default_repo(b.home.path()).exists());
    assert_eq!(fs::read_dir(b.home.path()).unwrap().count(), 0, "HOME untouched");
}

/// `bash -n`: the script parses (skipped, visibly, without bash).
fn bash_parses(script: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bakare.bash");
    fs::write(&file, script).unwrap();
    match std::process::Command::new("bash").arg("-n").arg(&file).output() {
        Ok(o) => assert!(o.status.success(), "bash -n: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => chaos::testkit::skipped(&format!("bash -n on the completion script: no bash ({e})")),
    }
}

/// Issue #17: `man DIR` writes one page per command and subcommand (bakare.1, bakare-run.1,
/// bakare-key-export.1...), creating DIR, and replaces them when run again; it refuses a DIR
/// that is a file and leaves it alone. Like `completions`, it needs no repository and leaves
/// HOME untouched.
#[test]
fn man_writes_a_page_per_command_and_needs_no_repository() {
    let b = bakare();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("share/man/man1");
    b.ok(&argv!["--repo", UNPARSABLE_REPO, "man", &dir]);
    for name in ["bakare.1", "bakare-run.1", "bakare-restore.1", "bakare-key-export.1"] {
        let page = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(page.starts_with(".TH") || page.starts_with(".ie"), "{name}: {page}");
    }
    // roff escapes hyphens: --mem-limit is written \-\-mem\-limit
    let run = fs::read_to_string(dir.join("bakare-run.1")).unwrap();
    assert!(run.contains(r"\-\-mem\-limit"), "{run}");
    assert!(!dir.join("bakare-help.1").exists(), "the pages are the help");

    let again = b.ok(&argv!["--json", "man", &dir]).json();
    let pages = again["pages"].as_array().unwrap();
    assert!(pages.iter().any(|p| p == "bakare-repair-snapshots.1"), "{again}");
    assert_eq!(pages.len(), fs::read_dir(&dir).unwrap().count(), "{again}");

    let file = out.path().join("not-a-dir");
    fs::write(&file, "mine").unwrap();
    let o = b.run(&argv!["man", &file]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("is not a directory"), "{}", o.stderr);
    assert_eq!(fs::read_to_string(&file).unwrap(), "mine");
    assert!(!Bakare::default_repo(b.home.path()).exists());
    assert_eq!(fs::read_dir(b.home.path()).unwrap().count(), 0, "HOME untouched");
}
