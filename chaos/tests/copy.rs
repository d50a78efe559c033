//! `copy` between repositories with different keys, through the real binary (with crash
//! points): every snapshot restores from the destination exactly as from the source; data the
//! destination has is not stored again; a copy killed while committing its second snapshot
//! leaves a valid destination with the first, and run again it finishes, copying nothing twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use chaos::argv;
use chaos::testkit::{assert_same_tree, restored_path, Bakare, Rng, TestDir};

#[test]
fn copy_between_keys_restores_exactly_dedups_and_resumes() {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    let src = TestDir::new().file("d/a.txt", "a").file("d/big.bin", Rng::new(1).bytes(3 << 20));
    let a = b.home.path().join("source-repo");
    b.ok(&argv!["--repo", &a, "init"]);
    b.ok(&argv!["--repo", &a, "run", src.path()]);
    fs::write(src.path().join("d/new.bin"), Rng::new(2).bytes(1 << 20)).unwrap();
    b.ok(&argv!["--repo", &a, "run", src.path()]);
    // The destination (another key) already holds the first version's data.
    b.ok(&argv!["init"]);
    fs::rename(src.path().join("d/new.bin"), b.home.path().join("aside")).unwrap();
    b.ok(&argv!["run", "--no-cache", src.path()]);
    fs::rename(b.home.path().join("aside"), src.path().join("d/new.bin")).unwrap();

    // Killed before writing its second snapshot record (its packs and index are written): the
    // first is committed, the second is not.
    let mut c = b.command(&argv!["--json", "copy", "--from", &a]);
    c.env("BAKARE_CRASH", "before:pending:2");
    let o = chaos::testkit::run_measured(c);
    assert_eq!(o.code, 128 + 9, "{}", o.stderr);
    let c = b.ok(&argv!["--json", "check"]).json();
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["snapshots"], 2, "the destination's own and the first copy");

    let done = b.ok(&argv!["--json", "copy", "--from", &a]).json();
    let done = done.as_array().unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(done[0]["already"], true, "{done:?}");
    assert_eq!(done[1]["already"], false);
    // Only the second version's new file is new data (1 MiB); its other data was stored by
    // the killed copy or the destination's own backup.
    assert!(done[1]["new_bytes"].as_u64().unwrap() <= (1 << 20) + (64 << 10), "{done:?}");
    let again = b.ok(&argv!["--json", "copy", "--from", &a]).json();
    assert!(again.as_array().unwrap().iter().all(|c| c["already"] == true), "{again}");

    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    // Each copy restores exactly as its source snapshot does.
    for c in done {
        let (from, to) = (c["from"].as_str().unwrap(), c["to"].as_str().unwrap());
        let (x, y) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        b.ok(&argv!["--repo", &a, "restore", from, "--target", x.path()]);
        b.ok(&argv!["restore", to, "--target", y.path()]);
        assert_same_tree(&restored_path(x.path(), src.path()), &restored_path(y.path(), src.path()));
    }
    let first = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", done[0]["to"].as_str().unwrap(), "--target", first.path()]);
    assert!(!restored_path(first.path(), src.path()).join("d/new.bin").exists());
    let big = fs::read(restored_path(first.path(), src.path()).join("d/big.bin")).unwrap();
    assert_eq!(big, Rng::new(1).bytes(3 << 20));

    // A snapshot rewritten in the source (a file left out) is another record: copied again.
    b.ok(&argv!["--repo", &a, "rewrite", "latest", "--exclude", "big.bin"]);
    let third = b.ok(&argv!["--json", "copy", "--from", &a]).json();
    let fresh: Vec<_> = third.as_array().unwrap().iter().filter(|c| c["already"] == false).collect();
    assert_eq!(fresh.len(), 1, "{third}");
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", fresh[0]["to"].as_str().unwrap(), "--target", t.path()]);
    assert!(!restored_path(t.path(), src.path()).join("d/big.bin").exists());

    // The source is not the destination.
    let o = b.run(&argv!["copy", "--from", &b.repo]);
    assert_ne!(o.code, 0);
}
