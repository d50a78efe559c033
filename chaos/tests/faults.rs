//! Failure is local: files that vanish, fail mid-read (EIO) or change while read are named in the
//! snapshot's error list and the summary, every other file is saved, and the exit code is 3 —
//! on the io_uring path and on the thread-pool path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use chaos::argv;
use chaos::testkit::{restored_path, Bakare, Rng, TestDir};

fn faulty() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"))
}

fn check_mode(io: &str) {
    let mut rng = Rng::new(21);
    let big = rng.bytes(20 << 20);
    let src = TestDir::new()
        .file("ok/one.txt", rng.text(50_000))
        .file("ok/two.bin", rng.bytes(3 << 20))
        .file("ok/big-ok.bin", &big)
        .file("bad/vanishes.txt", "soon gone")
        .file("bad/eio-small.txt", rng.text(10_000))
        .file("bad/eio-late.bin", &big[..18 << 20])
        .file("bad/changes.txt", rng.text(200_000));
    let mut b = faulty();
    b.env.push((
        "BAKARE_FAULTS".into(),
        "vanish:vanishes.txt;eio:eio-small.txt@0;eio:eio-late.bin@17000000;change:changes.txt".into(),
    ));
    b.ok(&argv!["init"]);
    let o = b.run(&argv!["--json", "run", "--io", io, src.path()]);
    assert_eq!(o.code, 3, "io={io}: {}\n{}", o.stderr, o.stdout_str());
    let j = o.json();
    let errors = j["errors"].as_array().unwrap();
    let named = |n: &str| {
        errors
            .iter()
            .find(|e| e["path"].as_str().unwrap().ends_with(n))
            .map(|e| e["error"].as_str().unwrap().to_string())
    };
    assert!(named("vanishes.txt").unwrap().contains("vanished"), "{errors:?}");
    assert!(named("eio-small.txt").unwrap().contains("Input/output error"), "{errors:?}");
    assert!(named("eio-late.bin").unwrap().contains("offset"), "{errors:?}");
    assert!(named("changes.txt").unwrap().contains("changed"), "{errors:?}");
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert_eq!(j["read_mode"].as_str().unwrap(), if io == "pool" { "threads" } else { "io_uring" });

    // The human summary names them too.
    fs::write(src.path().join("bad/vanishes.txt"), "back again").unwrap();
    let human = b.run(&argv!["run", "--io", io, src.path()]);
    assert_eq!(human.code, 3);
    assert!(
        human.stdout_str().contains("could not be saved") && human.stdout_str().contains("eio-late.bin"),
        "{}",
        human.stdout_str()
    );

    // Everything else restores byte for byte; failed files are absent, never half-written.
    let target = tempfile::tempdir().unwrap();
    let ls = b.ok(&argv!["--json", "snapshots"]).json();
    let first = ls[0]["id"].as_str().unwrap().to_string();
    b.ok(&argv!["restore", &first, "--target", target.path()]);
    let root = restored_path(target.path(), src.path());
    for ok in ["ok/one.txt", "ok/two.bin", "ok/big-ok.bin"] {
        assert_eq!(fs::read(root.join(ok)).unwrap(), fs::read(src.path().join(ok)).unwrap(), "{ok}");
    }
    for bad in ["vanishes.txt", "eio-small.txt", "eio-late.bin", "changes.txt"] {
        assert!(!root.join("bad").join(bad).exists(), "{bad} was restored");
    }
}

#[test]
fn faults_are_local_with_io_uring() {
    check_mode("uring");
}

#[test]
fn faults_are_local_with_read_threads() {
    check_mode("pool");
}
