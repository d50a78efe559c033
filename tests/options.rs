//! `run --dry-run`, the global `-q`/`-v`, and the repository's compression setting, through the
//! real binary: what a dry run leaves behind is compared byte for byte, what is restored is the
//! bytes that were saved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use chaos::argv;
use chaos::testkit::{assert_same_tree, restored_path, Bakare, Rng, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// Every name under `root` (directories too, with their mode) and every file's bytes:
/// what a run that writes nothing must leave exactly as it was.
fn state(root: &Path) -> Vec<(PathBuf, String, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    if !root.exists() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if md.is_dir() {
                out.push((rel, format!("dir {:o}", md.mode()), Vec::new()));
                stack.push(p);
            } else {
                out.push((rel, format!("file {:o}", md.mode()), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Older than the run's second, so that the files cache keeps them.
fn set_old_mtimes(root: &Path, files: &[&str]) {
    let old = std::process::Command::new("touch")
        .args(["-d", "2020-01-01"])
        .args(files)
        .current_dir(root)
        .status()
        .unwrap();
    assert!(old.success());
}

fn json(b: &Bakare, args: &[OsString]) -> serde_json::Value {
    let mut a = argv!["--json"].to_vec();
    a.extend_from_slice(args);
    b.ok(&a).json()
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn dry_run_counts_what_is_new_and_writes_nothing() {
    let b = bakare();
    let mut rng = Rng::new(11);
    let src = TestDir::new()
        .file("big.bin", rng.bytes(3 << 20))
        .file("notes/a.txt", rng.text(200_000))
        .file("notes/b.txt", "small file\n")
        .file("keep.txt", rng.text(50_000));
    set_old_mtimes(src.path(), &["big.bin", "notes/a.txt", "notes/b.txt", "keep.txt"]);

    // As restic's: no repository, no dry run; and none is created.
    let o = b.run(&argv!["run", "--dry-run", src.path()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("--dry-run") && o.stderr.contains("no repository"), "{}", o.stderr);
    assert!(!b.repo.exists(), "a dry run created the default repository");

    b.ok(&argv!["init"]);
    let cache = b.home.path().join(".cache/bakare");
    let (repo0, cache0) = (state(&b.repo), state(&cache));
    let first = json(&b, &argv!["run", "-n", src.path()]);
    assert_eq!(first["dry_run"], true, "{first}");
    assert!(first.get("snapshot").is_none(), "{first}");
    assert_eq!(n(&first, "files"), 4);
    let total = (3 << 20) + 200_000 + 11 + 50_000;
    assert_eq!(n(&first, "bytes_read"), total, "every file is read: {first}");
    assert_eq!(n(&first, "new_data_bytes"), total, "all of it is new: {first}");
    assert_eq!(n(&first, "new_files"), 4, "{first}");
    assert_eq!(state(&b.repo), repo0, "a dry run changed the repository");
    assert_eq!(state(&cache), cache0, "a dry run changed the files cache");
    let list = json(&b, &argv!["snapshots"]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // What the dry run promised is what the run stores.
    let saved = json(&b, &argv!["run", src.path()]);
    assert_eq!(saved["dry_run"], false);
    assert_eq!(n(&saved, "new_bytes"), n(&first, "new_bytes"), "dry {first}\nreal {saved}");

    // One file changes, one is added: only they are read, listed with -v, counted as new data.
    fs::write(src.path().join("notes/a.txt"), rng.text(200_000)).unwrap();
    fs::write(src.path().join("added.bin"), rng.bytes(100_000)).unwrap();
    let (repo1, cache1) = (state(&b.repo), state(&cache));
    assert!(!cache1.is_empty(), "the real run kept a files cache");
    let o = b.ok(&argv!["run", "--dry-run", "-v", src.path()]);
    let text = o.stdout_str();
    let line = |what: &str, rel: &str| format!("{what} {}\n", src.path().join(rel).display());
    assert!(text.contains(&line("changed", "notes/a.txt")), "{text}");
    assert!(text.contains(&line("new", "added.bin")), "{text}");
    assert!(
        !text.contains("keep.txt") && !text.contains("big.bin"),
        "unchanged files listed with one -v: {text}"
    );
    assert!(text.contains("would add new data: ~"), "{text}");
    assert!(text.contains("1 new, 1 changed, 3 unchanged"), "{text}");
    let vv = b.ok(&argv!["run", "-n", "-vv", src.path()]).stdout_str();
    assert!(
        vv.contains(&line("unchanged", "keep.txt")) && vv.contains(&line("unchanged", "big.bin")),
        "{vv}"
    );
    let second = json(&b, &argv!["run", "-n", src.path()]);
    assert_eq!(n(&second, "bytes_read"), 300_000, "{second}");
    assert_eq!((n(&second, "new_files"), n(&second, "changed_files")), (1, 1), "{second}");
    assert!(n(&second, "new_data_bytes") <= 300_000 && n(&second, "new_data_bytes") >= 100_000, "{second}");
    assert_eq!(state(&b.repo), repo1, "a dry run changed the repository");
    assert_eq!(state(&cache), cache1, "a dry run changed the files cache");

    // The next real run stores what the dry run said, and restores byte for byte.
    let third = json(&b, &argv!["run", src.path()]);
    assert_eq!(n(&third, "new_bytes"), n(&second, "new_bytes"), "dry {second}\nreal {third}");
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

#[test]
fn quiet_prints_only_problems_and_verbose_lists_files() {
    let b = bakare();
    let src = TestDir::new().file("a.txt", "alpha\n").file("d/b.txt", "beta\n");
    set_old_mtimes(src.path(), &["a.txt", "d/b.txt"]);
    // The first run makes the default repository: even quiet, it says where the new secret key
    // is (a cron job's first run must not create a key nobody knows about), on stderr.
    let o = b.ok(&argv!["-q", "run", src.path()]);
    assert!(o.stdout.is_empty(), "{}", o.stdout_str());
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("secret key saved to ") && o.stderr.contains("keep a copy"), "{}", o.stderr);
    // After the command name too, as any global option.
    let o = b.ok(&argv!["run", "--quiet", src.path()]);
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}{}", o.stdout_str(), o.stderr);
    // Beside --json, a listing goes to stderr: stdout stays one JSON document.
    let o = b.ok(&argv!["run", "--json", "-vv", src.path()]);
    assert!(o.json()["snapshot"].is_string());
    assert!(o.stderr.contains("unchanged "), "{}", o.stderr);
    let o = b.ok(&argv!["run", "-v", src.path()]);
    // The files cache says nothing changed: one -v lists nothing, the summary stays.
    assert!(!o.stdout_str().contains("a.txt"), "{}", o.stdout_str());
    assert!(o.stdout_str().contains("snapshot "), "{}", o.stdout_str());
    // A listing is what `snapshots` is for: -q keeps it.
    let list = b.ok(&argv!["snapshots", "-q"]).stdout_str();
    assert!(list.contains("4 snapshots"), "{list}");

    let target = tempfile::tempdir().unwrap();
    let o = b.ok(&argv!["restore", "latest", "-q", "--target", target.path()]);
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}{}", o.stdout_str(), o.stderr);
    let target = tempfile::tempdir().unwrap();
    let o = b.ok(&argv!["-v", "restore", "latest", "--target", target.path()]);
    let text = o.stdout_str();
    for rel in ["a.txt", "d/b.txt"] {
        let p = restored_path(target.path(), &src.path().join(rel));
        assert!(text.contains(&format!("restored {}\n", p.display())), "{text}");
    }
    assert!(text.contains("restored 2 files"), "{text}");
    let elsewhere = tempfile::tempdir().unwrap();
    let o = b.ok(&argv!["restore", "latest", "-n", "-v", "--target", elsewhere.path()]);
    let p = restored_path(elsewhere.path(), &src.path().join("d/b.txt"));
    assert!(o.stdout_str().contains(&format!("would restore {}\n", p.display())), "{}", o.stdout_str());
    assert!(fs::read_dir(elsewhere.path()).unwrap().next().is_none(), "a dry run restored something");
    // A file where the snapshot has a directory: restore names it (exit 3), -q too, on stderr.
    let blocked = tempfile::tempdir().unwrap();
    let d = restored_path(blocked.path(), &src.path().join("d"));
    fs::create_dir_all(d.parent().unwrap()).unwrap();
    fs::write(&d, "in the way").unwrap();
    let o = b.run(&argv!["-q", "restore", "latest", "--target", blocked.path()]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stdout.is_empty(), "{}", o.stdout_str());
    assert!(o.stderr.contains(&format!("error: {}", d.display())), "{}", o.stderr);
    // --json is still printed with -q: a script asked for it.
    let j = b.ok(&argv!["-q", "--json", "run", src.path()]).json();
    assert_eq!(n(&j, "files"), 2);

    // Every command takes them; warnings still show with -q, and exit codes are unchanged.
    for args in [
        argv!["-q", "check"].to_vec(),
        argv!["-q", "prune", "-n"].to_vec(),
        argv!["-q", "forget", "--keep-last", "1"].to_vec(),
        argv!["-q", "config"].to_vec(),
        argv!["-v", "key", "show"].to_vec(),
        argv!["-vv", "ls", "latest"].to_vec(),
        argv!["-q", "diff", "latest", "latest"].to_vec(),
    ] {
        let o = b.run(&args);
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    }
    let o = b.ok(&argv!["-q", "forget", "--keep-last", "1"]);
    assert!(o.stdout.is_empty(), "{}", o.stdout_str());
    let pages = b.home.path().join("man");
    let o = b.ok(&argv!["man", "-q", &pages]);
    assert!(o.stdout.is_empty() && fs::read_dir(&pages).unwrap().count() > 10, "{}", o.stdout_str());
    let o = b.ok(&argv!["-q", "find", "b.txt"]);
    assert!(o.stderr.is_empty(), "{}", o.stderr);
    assert!(o.stdout_str().contains("b.txt"), "find's results are what it is for: {}", o.stdout_str());
    let o = b.run(&argv!["-q", "-v", "snapshots"]);
    assert_eq!(o.code, 2, "-q and -v together: {}", o.stderr);
    let o = b.run(&argv!["-q", "restore", "nosuchsnapshot", "--target", target.path()]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("error"), "errors still show: {}", o.stderr);
}

#[test]
fn compression_level_is_a_repository_setting() {
    let text = Rng::new(3).text(4 << 20);
    let src = TestDir::new().file("log.txt", &text);
    let mut stored = Vec::new();
    for level in ["1", "19", "off"] {
        let mut b = bakare();
        b.repo = b.home.path().join("repo");
        let init = b.ok(&argv!["--json", "init", "--compression", level]).json();
        assert_eq!(init["compression"], level);
        let shown = b.ok(&argv!["config"]).stdout_str();
        let want = if level == "off" {
            "compression  off".to_string()
        } else {
            format!("compression  zstd {level}")
        };
        assert!(shown.contains(&want), "{shown}");
        let j = json(&b, &argv!["run", src.path()]);
        stored.push(n(&j, "stored_bytes"));
        let target = tempfile::tempdir().unwrap();
        b.ok(&argv!["restore", "latest", "--target", target.path()]);
        let back = fs::read(restored_path(target.path(), &src.path().join("log.txt"))).unwrap();
        assert!(back == text, "level {level}: restored bytes differ");
    }
    let (one, nineteen, off) = (stored[0], stored[1], stored[2]);
    assert!(nineteen < one, "level 19 stored {nineteen} bytes, level 1 {one}");
    assert!(off >= text.len() as u64, "off stored {off} of {} bytes", text.len());

    // Changed later by the owner: new data takes the new setting, old data still reads.
    let b = bakare();
    b.ok(&argv!["init"]);
    assert!(b.ok(&argv!["config"]).stdout_str().contains("compression  auto (zstd 1"));
    let first = json(&b, &argv!["run", src.path()]);
    let o = b.ok(&argv!["config", "--compression", "max"]);
    assert!(o.stdout_str().contains("compression  zstd 19"), "{}", o.stdout_str());
    assert_eq!(json(&b, &argv!["config"])["compression"], "19");
    let more = TestDir::new().file("log2.txt", Rng::new(4).text(4 << 20));
    let second = json(&b, &argv!["run", more.path()]);
    assert!(n(&second, "stored_bytes") < n(&first, "stored_bytes"), "{first}\n{second}");
    for bad in ["20", "-1", "fast"] {
        let o = b.run(&argv!["config", format!("--compression={bad}")]);
        assert_eq!(o.code, 2, "{bad}: {}", o.stderr);
        assert!(o.stderr.contains("zstd level from 1 to 19"), "{}", o.stderr);
    }
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(more.path(), &restored_path(target.path(), more.path()));
}

/// A dry run drops each new blob as soon as it is counted: the smallest --mem-limit holds as it
/// does for a backup (tests/memory.rs), on a file larger than the limit.
#[test]
fn a_dry_run_stays_within_the_memory_limit() {
    use std::io::Write;
    let src = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(21);
    let mut f = std::io::BufWriter::new(fs::File::create(src.path().join("big.bin")).unwrap());
    for i in 0..160u32 {
        let block = if i % 2 == 0 { rng.bytes(1 << 20) } else { rng.text(1 << 20) };
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let b = bakare();
    b.ok(&argv!["init"]);
    let o = b.ok(&argv!["--json", "run", "-n", "--mem-limit", "88M", src.path()]);
    assert!(o.peak_reported, "the child's own peak");
    let j = o.json();
    assert_eq!(n(&j, "new_data_bytes"), 160 << 20, "{j}");
    eprintln!("dry run, --mem-limit 88M: peak RSS {} MiB", o.peak_rss >> 20);
    assert!(o.peak_rss < 88 << 20, "peak RSS {} MiB", o.peak_rss >> 20);
}

/// zstd's contexts grow with the level (level 19 holds ~80 MiB more per worker than level 1):
/// `--mem-limit` counts them, refusing a limit they do not fit in and staying under one they
/// do.
#[test]
fn a_high_compression_level_counts_in_the_memory_limit() {
    let b = bakare();
    b.ok(&argv!["init", "--compression", "19"]);
    let src = TestDir::new().file("text", Rng::new(5).text(16 << 20));
    let small = b.run(&argv!["run", "--workers", "2", "--mem-limit", "128M", src.path()]);
    assert_ne!(small.code, 0, "{}", small.stderr);
    assert!(small.stderr.contains("--mem-limit 128 MiB is too small"), "{}", small.stderr);
    let o = b.ok(&argv!["run", "--workers", "2", "--mem-limit", "320M", src.path()]);
    eprintln!("level 19, --mem-limit 320M: peak RSS {} MiB", o.peak_rss >> 20);
    assert!(o.peak_rss < 320 << 20, "peak RSS {} MiB", o.peak_rss >> 20);
}
