//! `stats` end to end, with the real binary: two snapshots of a tree (with a hard link and a
//! symlink), the second with a file more and a copy of a file's content under another name.
//! Figures are checked against the source (files, directories, sizes) and against what the
//! repository holds on disk (packs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;
use std::path::Path;

use chaos::argv;
use chaos::testkit::{Bakare, Rng, TestDir};
use serde_json::Value;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn run(b: &Bakare, args: &[OsString]) -> String {
    let mut all = argv!["--json", "run", "--no-cache"].to_vec();
    all.extend_from_slice(args);
    b.ok(&all).json()["snapshot"].as_str().unwrap().to_string()
}

fn stats(b: &Bakare, args: &[OsString]) -> Value {
    let mut all = argv!["--json", "stats"].to_vec();
    all.extend_from_slice(args);
    b.ok(&all).json()
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Files, and their total size, below `dir`, recursively.
fn files_and_bytes(dir: &Path) -> (u64, u64) {
    let mut out = (0, 0);
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            let (f, b) = files_and_bytes(&e.path());
            out = (out.0 + f, out.1 + b);
        } else if m.is_file() {
            out = (out.0 + 1, out.1 + m.len());
        }
    }
    out
}

/// Directories below `dir`, recursively.
fn dirs_below(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::symlink_metadata(p).unwrap().is_dir())
        .map(|p| 1 + dirs_below(&p))
        .sum()
}

/// Snapshot trees hold the path from `/` down: the backed-up directory and each one above it.
fn dirs_of_snapshot(root: &Path) -> u64 {
    let root = fs::canonicalize(root).unwrap();
    root.components().count() as u64 - 1 + dirs_below(&root)
}

struct Fixture {
    b: Bakare,
    src: TestDir,
    s1: String,
    s2: String,
    /// (files, dirs, bytes) of each snapshot, from the source.
    shape: [(u64, u64, u64); 2],
    /// Sizes of the distinct contents, and of the one the second snapshot adds.
    distinct: u64,
    added: u64,
}

fn fixture() -> Fixture {
    let b = bakare();
    b.ok(&argv!["init"]);
    let mut rng = Rng::new(22);
    // Under 256 KiB each, so each file is one blob; the small ones go into bundles.
    let (a, big, c, new) = (rng.bytes(1000), rng.bytes(50_000), rng.bytes(3000), rng.bytes(40_000));
    // A hard link counts as a file of its own, at its size (each path counts).
    let src = TestDir::new()
        .file("a.txt", &a)
        .file("sub/big.bin", &big)
        .file("sub/deeper/c.txt", &c)
        .hardlink("big-link", "sub/big.bin")
        .symlink("to-a", "a.txt");
    let shape1 = {
        let (f, by) = files_and_bytes(src.path());
        (f, dirs_of_snapshot(src.path()), by)
    };
    let s1 = run(&b, &argv![src.path(), "--tag", "one"]);
    fs::write(src.path().join("new.bin"), &new).unwrap();
    fs::write(src.path().join("copy-of-a.txt"), &a).unwrap();
    let shape2 = {
        let (f, by) = files_and_bytes(src.path());
        (f, dirs_of_snapshot(src.path()), by)
    };
    let s2 = run(&b, &argv![src.path(), "--tag", "two"]);
    let distinct = (a.len() + big.len() + c.len() + new.len()) as u64;
    Fixture { b, src, s1, s2, shape: [shape1, shape2], distinct, added: new.len() as u64 }
}

/// Files under the repository's packs/ directory, and their total size.
fn packs_on_disk(repo: &Path) -> (u64, u64) {
    files_and_bytes(&repo.join("packs"))
}

#[test]
fn figures_match_the_source_and_the_repository() {
    let f = fixture();
    let s = stats(&f.b, &[]);
    for key in [
        "snapshots",
        "files",
        "dirs",
        "bytes",
        "blobs",
        "data_blobs",
        "tree_blobs",
        "raw_bytes",
        "data_raw_bytes",
        "stored_bytes",
        "missing_blobs",
        "compression_ratio",
        "repository",
        "per_snapshot",
    ] {
        assert!(s.get(key).is_some(), "{key} missing in {s}");
    }
    assert_eq!(u(&s, "snapshots"), 2);
    let [one, two] = f.shape;
    assert_eq!(u(&s, "files"), one.0 + two.0);
    assert_eq!(u(&s, "dirs"), one.1 + two.1);
    assert_eq!(u(&s, "bytes"), one.2 + two.2);
    // After dedup: the copy and the unchanged files count once.
    assert_eq!(u(&s, "data_raw_bytes"), f.distinct);
    assert_eq!(u(&s, "data_blobs"), 4);
    assert!(u(&s, "raw_bytes") > u(&s, "data_raw_bytes"), "tree blobs count too: {s}");
    assert_eq!(u(&s, "missing_blobs"), 0);

    let repo = &s["repository"];
    let (packs, pack_bytes) = packs_on_disk(&f.b.repo);
    assert_eq!(u(repo, "packs"), packs);
    assert_eq!(u(repo, "pack_bytes"), pack_bytes);
    let stored = u(&s, "stored_bytes");
    assert!(stored > 0 && stored <= pack_bytes, "stored {stored}, packs {pack_bytes}");
    assert!(s["compression_ratio"].as_f64().unwrap() > 0.0);
    // Every blob is some snapshot's: nothing unused when all of them count.
    assert_eq!(u(repo, "blobs"), u(&s, "blobs"));
    assert_eq!(u(repo, "unused_blobs"), 0);

    let per = s["per_snapshot"].as_array().unwrap();
    assert_eq!(per.len(), 2);
    assert_eq!(per[0]["id"], f.s1.as_str());
    assert_eq!(per[1]["id"], f.s2.as_str());
    for (p, shape) in per.iter().zip(f.shape) {
        assert_eq!((u(p, "files"), u(p, "dirs"), u(p, "bytes")), shape);
    }
    // The second snapshot alone holds the added file; the first holds no content of its own.
    assert_eq!(u(&per[1], "unique_data_raw_bytes"), f.added);
    assert_eq!(u(&per[0], "unique_data_raw_bytes"), 0);
    // Their root trees differ (the root directory changed).
    assert!(u(&per[0], "unique_raw_bytes") > 0);
    assert!(u(&per[1], "unique_raw_bytes") > f.added);

    // Only the second: what only the first references is unused by it.
    let latest = stats(&f.b, &argv!["latest"]);
    assert_eq!(u(&latest, "snapshots"), 1);
    assert_eq!(u(&latest, "files"), two.0);
    assert_eq!(u(&latest["repository"], "unused_raw_bytes"), u(&per[0], "unique_raw_bytes"));
    assert_eq!(u(&latest["repository"], "unused_blobs"), u(&per[0], "unique_blobs"));
    assert_eq!(
        u(&latest["repository"], "blobs"),
        u(&latest, "blobs") + u(&latest["repository"], "unused_blobs")
    );
    // Bundles are charged by share: used and unused together never exceed the packs.
    let used_and_not = u(&latest, "stored_bytes") + u(&latest["repository"], "unused_stored_bytes");
    assert!(used_and_not <= pack_bytes && used_and_not >= stored, "{used_and_not} of {pack_bytes}");
    let _ = &f.src;
}

#[test]
fn snapshots_are_chosen_as_other_commands_choose_them() {
    let f = fixture();
    let by_prefix = stats(&f.b, &argv![&f.s1[..10]]);
    assert_eq!(u(&by_prefix, "snapshots"), 1);
    assert_eq!(u(&by_prefix, "files"), f.shape[0].0);
    assert_eq!(by_prefix["per_snapshot"][0]["id"], f.s1.as_str());
    // A set of one: everything it references is its own.
    let p = &by_prefix["per_snapshot"][0];
    assert_eq!(u(p, "unique_raw_bytes"), u(&by_prefix, "raw_bytes"));

    let tagged = stats(&f.b, &argv!["--tag", "two"]);
    assert_eq!(u(&tagged, "snapshots"), 1);
    assert_eq!(tagged["per_snapshot"][0]["id"], f.s2.as_str());
    // `latest` among those the filters match.
    let latest_one = stats(&f.b, &argv!["latest", "--tag", "one"]);
    assert_eq!(latest_one["per_snapshot"][0]["id"], f.s1.as_str());
    // The same snapshot twice counts once.
    let twice = stats(&f.b, &argv![&f.s2, "latest"]);
    assert_eq!(u(&twice, "snapshots"), 1);
    let none = stats(&f.b, &argv!["--host", "no-such-host"]);
    assert_eq!(u(&none, "snapshots"), 0);
    assert_eq!(u(&none, "blobs"), 0);
    assert_eq!(u(&none["repository"], "unused_blobs"), u(&none["repository"], "blobs"));
    let unknown = f.b.run(&argv!["stats", "ffffffffffff"]);
    assert_ne!(unknown.code, 0);

    let text = f.b.ok(&argv!["stats", "--per-snapshot"]).stdout_str();
    for want in
        ["snapshots:", "files:", "logical size:", "after dedup:", "stored:", "compression ratio:", "packs:"]
    {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    assert!(text.contains(&f.s1[..16]) && text.contains(&f.s2[..16]), "{text}");
}

#[test]
fn a_snapshot_whose_trees_are_gone_is_named() {
    let f = fixture();
    // Every pack gone: the index (its segments) still lists the blobs, the trees cannot be read.
    for e in fs::read_dir(f.b.repo.join("packs")).unwrap() {
        fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let o = f.b.run(&argv!["stats", &f.s2]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains(&f.s2) && o.stderr.contains("bakare check"), "{}", o.stderr);
}
