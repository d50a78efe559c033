//! Repositories on a real S3-compatible server (s3s-fs, started on loopback by the test): every
//! command works, damage is detected, and a server that goes away fails the run cleanly, with
//! the next run reusing what landed. Skipped, with a message, where s3s-fs is not installed
//! (CI installs it and sets BAKARE_REQUIRE_S3, which turns the skip into a failure).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use chaos::argv;
use chaos::testkit::{assert_same_tree, restored_path, Bakare, FakeClock, Rng, S3Server, TestDir, HOUR_NS};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn tree(seed: u64) -> TestDir {
    let mut rng = Rng::new(seed);
    let mut t = TestDir::new();
    for i in 0..60 {
        let n = rng.below(5000) as usize;
        t = t.file(format!("docs/d{i}.txt"), rng.text(n));
    }
    // Above 16 MiB: a multipart upload of its pack.
    t.file("big/blob.bin", rng.bytes(40 << 20)).file("big/notes.txt", rng.text(300_000))
}

#[test]
fn every_command_works_on_s3() {
    let Some(server) = S3Server::start() else { return };
    let mut b = bakare();
    server.configure(&mut b, "repo1");
    let clock = FakeClock::install(&mut b);
    let src = tree(1);
    let init = b.ok(&argv!["--json", "init"]).json();
    assert!(init["path"].as_str().unwrap().starts_with("s3:http://127.0.0.1:"), "{init}");
    assert!(server.object_path("repo1", "config").is_file());
    let first = b.ok(&argv!["--json", "run", src.path()]).json();
    let id = first["snapshot"].as_str().unwrap().to_string();
    assert!(server.object_path("repo1", &format!("snapshots/{id}")).is_file());
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", &id, "--target", t.path()]);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    // Incremental: nothing new.
    let j = b.ok(&argv!["--json", "run", "--no-cache", src.path()]).json();
    assert_eq!(j["new_bytes"], 0, "{j}");
    assert_eq!(b.ok(&argv!["--json", "snapshots"]).json().as_array().unwrap().len(), 2);
    let ls = b.ok(&argv!["ls", "latest", src.path().join("big")]).stdout_str();
    assert!(ls.contains("blob.bin"), "{ls}");
    let f = b.ok(&argv!["--json", "find", "notes"]).json();
    assert!(f.to_string().contains("big/notes.txt"), "{f}");
    let d = b.ok(&argv!["--json", "diff", &id, "latest"]).json();
    assert_eq!(d["changes"].as_array().unwrap().len(), 0, "{d}");
    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    b.ok(&argv!["repair", "index"]);
    b.ok(&argv!["config", "--grace", "2h"]);
    // forget + prune, both phases.
    fs::remove_file(src.path().join("big/blob.bin")).unwrap();
    b.ok(&argv!["run", src.path()]);
    b.ok(&argv!["forget", "--keep-last", "1"]);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["condemned_packs"].as_u64().unwrap() >= 1, "{p}");
    clock.advance(25 * HOUR_NS);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["freed_now"].as_u64().unwrap() >= 40 << 20, "{p}");
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", t.path()]);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);

    // A flipped byte in a pack on the server is found.
    let packs = server.object_path("repo1", "packs");
    let pack = fs::read_dir(&packs)
        .unwrap()
        .flat_map(|sub| fs::read_dir(sub.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut data = fs::read(&pack).unwrap();
    data[100] ^= 1;
    fs::write(&pack, data).unwrap();
    assert_eq!(b.run(&argv!["check", "--read-data"]).code, 3);
}

#[test]
fn a_server_that_goes_away_fails_the_run_cleanly_and_the_next_run_resumes() {
    let Some(mut server) = S3Server::start() else { return };
    let mut b = bakare();
    server.configure(&mut b, "repo2");
    // Short timeouts and retry budget, so the failure comes quickly.
    for (k, v) in [
        ("BAKARE_S3_TIMEOUT_MS", "3000"),
        ("BAKARE_S3_CONNECT_TIMEOUT_MS", "500"),
        ("BAKARE_S3_RETRY_BUDGET_MS", "3000"),
        ("BAKARE_S3_RETRIES", "3"),
    ] {
        b.env.push((k.into(), v.into()));
    }
    b.ok(&argv!["init"]);
    let mut rng = Rng::new(5);
    let mut src = TestDir::new();
    for i in 0..5 {
        src = src.file(format!("part{i}.bin"), rng.bytes(30 << 20));
    }
    // Kill the server once the first pack has landed.
    let child = b
        .command(&argv!["--json", "run", "--workers", "1", src.path()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let packs = server.object_path("repo2", "packs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let landed = fs::read_dir(&packs).map(|d| d.count()).unwrap_or(0);
        if landed > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no pack landed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.stop();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the run fails");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bakare: error:") && stderr.contains("object"), "{stderr}");
    // The repository is valid, and the next run stores only what did not land.
    server.resume();
    assert_eq!(b.ok(&argv!["--json", "snapshots"]).json().as_array().unwrap().len(), 0);
    let c = b.ok(&argv!["--json", "check"]).json();
    assert_eq!(c["ok"], true, "{c}");
    let j = b.ok(&argv!["--json", "run", "--workers", "1", src.path()]).json();
    let total = 150u64 << 20;
    let new = j["new_bytes"].as_u64().unwrap();
    assert!(new < total, "nothing reused: {j}");
    eprintln!("after an interruption the second run stored {} of {} MiB", new >> 20, total >> 20);
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", t.path()]);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
}
