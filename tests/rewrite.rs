//! `rewrite` through the real binary: the rewritten snapshot restores exactly the source
//! without the matched paths (a hard link whose first name went becomes a file of its own),
//! the original still restores the secret until `--forget`, a dry run writes nothing, and a
//! pattern that matches nothing writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use chaos::testkit::{restored_path, tree_diff, Bakare, Rng, TestDir};
use serde_json::Value;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn snapshots(b: &Bakare) -> Vec<Value> {
    b.ok(&["--json", "snapshots"]).json().as_array().unwrap().clone()
}

fn set_mtime(p: &Path, t: std::time::SystemTime) {
    fs::File::open(p).unwrap().set_modified(t).unwrap();
}

#[test]
fn rewrite_leaves_out_exactly_the_matched_paths() {
    let b = bakare();
    let t = TestDir::new()
        .file("docs/a.txt", "kept")
        .file("docs/secret.txt", "hunter2")
        .file("big/huge.bin", Rng::new(5).bytes(200_000))
        .file("keep/x", "x")
        .hardlink("zz/again", "docs/secret.txt");
    let src = t.path();
    let id = b.ok(&["--json".as_ref(), "run".as_ref(), src.as_os_str()]).json()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let big = src.join("big");
    let big = big.to_str().unwrap();

    let o = b.ok(&["rewrite", "latest", "--exclude", "secret.txt", "--exclude", big, "--dry-run"]);
    assert!(o.stdout_str().contains("would leave out 2 paths"), "{}", o.stdout_str());
    assert_eq!(snapshots(&b).len(), 1, "a dry run writes nothing");

    let o = b.ok(&["--json", "rewrite", "latest", "--exclude", "secret.txt", "--exclude", big]);
    let r = &o.json()[0];
    let new = r["new"].as_str().unwrap().to_string();
    let removed: Vec<&str> = r["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(removed, [big.to_string(), src.join("docs/secret.txt").display().to_string()]);
    let all = snapshots(&b);
    assert_eq!(all.len(), 2);
    let tags = &all.iter().find(|s| s["id"] == new.as_str()).unwrap()["tags"];
    assert_eq!(tags, &serde_json::json!(["rewritten"]));
    // Same time as its original: `latest` is the copy.
    let secret = src.join("docs/secret.txt");
    let o = b.run(&["dump".as_ref(), "latest".as_ref(), secret.as_os_str()]);
    assert_ne!(o.code, 0, "latest is the rewritten snapshot, without the secret");
    let o = b.ok(&["--json", "forget", "--keep-last", "1", "--dry-run"]).json();
    let kept: Vec<&str> = o["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [new.as_str()], "keep-last 1 keeps the rewritten copy: {o}");

    // The source made into what the rewritten snapshot should hold (directory times put back).
    let times: Vec<_> = [src.to_path_buf(), src.join("docs")]
        .into_iter()
        .map(|d| (d.clone(), fs::metadata(&d).unwrap().modified().unwrap()))
        .collect();
    fs::remove_file(src.join("docs/secret.txt")).unwrap();
    fs::remove_dir_all(src.join("big")).unwrap();
    for (d, when) in times {
        set_mtime(&d, when);
    }
    let target = tempfile::tempdir().unwrap();
    b.ok(&["restore".as_ref(), new.as_ref(), "--target".as_ref(), target.path().as_os_str()]);
    let restored = restored_path(target.path(), src);
    assert_eq!(tree_diff(src, &restored), Vec::<String>::new());
    assert_eq!(fs::read(restored.join("zz/again")).unwrap(), b"hunter2", "the link is a file of its own now");

    // The original is still there, secret and all.
    let old = tempfile::tempdir().unwrap();
    b.ok(&["restore".as_ref(), id.as_ref(), "--target".as_ref(), old.path().as_os_str()]);
    assert_eq!(fs::read(restored_path(old.path(), src).join("docs/secret.txt")).unwrap(), b"hunter2");

    // Nothing matching: nothing written.
    let o = b.ok(&["rewrite", &new, "--exclude", "no-such-name"]);
    assert!(o.stdout_str().contains("nothing matches"), "{}", o.stdout_str());
    assert_eq!(snapshots(&b).len(), 2);

    // --forget: the original goes once its copy is committed. keep/ loses its only entry: an
    // empty directory, as a backup of one stores it.
    let o = b.ok(&["--json", "rewrite", &id, "--exclude", "keep/x", "--forget"]);
    let r = &o.json()[0];
    assert_eq!(r["forgotten"], true);
    let ids: Vec<String> = snapshots(&b).iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    assert!(!ids.contains(&id) && ids.contains(&r["new"].as_str().unwrap().to_string()), "{ids:?}");
    b.ok(&["check", "--read-data"]);
    let emptied = tempfile::tempdir().unwrap();
    b.ok(&[
        "restore".as_ref(),
        r["new"].as_str().unwrap().as_ref(),
        "--target".as_ref(),
        emptied.path().as_os_str(),
    ]);
    let keep = restored_path(emptied.path(), src).join("keep");
    assert!(keep.is_dir() && fs::read_dir(&keep).unwrap().next().is_none());

    // No pattern: refused before anything is read.
    let o = b.run(&["rewrite", "latest"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("--exclude"), "{}", o.stderr);
}
