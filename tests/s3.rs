//! Repositories on a real S3-compatible server (s3s-fs, started on loopback by the test): every
//! command works, damage is detected, and a server that goes away fails the run cleanly, with
//! the next run reusing what landed. Skipped, with a message, where s3s-fs is not installed
//! (CI installs it and sets BAKARE_REQUIRE_S3, which turns the skip into a failure). Also:
//! backups with credentials that cannot delete (docs/remote.md, "Put-only credentials").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;

use chaos::argv;
use chaos::proxy::{Proxy, ProxyConfig};
use chaos::testkit::{
    assert_same_tree, restored_path, Bakare, FakeClock, Rng, S3Server, TestDir, HOUR_NS, S3_ACCESS_KEY,
};

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

    // A flipped byte in a pack on the server is found, and repaired from its parity (on by
    // default): check names the pack corrected, restore gives back every file.
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
    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    let name = pack.strip_prefix(&packs).unwrap().to_str().unwrap().to_string();
    let corrected = c["corrected"].as_array().unwrap();
    assert!(corrected.len() == 1 && corrected[0]["pack"].as_str().unwrap().ends_with(&name), "{c}");
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", t.path()]);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
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
        // A segment after every pack (a minute by default): packs no segment lists are
        // vouched for by nobody, and not reused.
        ("BAKARE_TEST_SEGMENT_AGE_MS", "0"),
    ] {
        b.env.push((k.into(), v.into()));
    }
    b.ok(&argv!["init"]);
    let mut rng = Rng::new(5);
    let mut src = TestDir::new();
    for i in 0..5 {
        src = src.file(format!("part{i}.bin"), rng.bytes(30 << 20));
    }
    // Kill the server once the first pack has landed, and the segment that lists it.
    let child = b
        .command(&argv!["--json", "run", "--workers", "1", src.path()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let index = server.object_path("repo2", "index");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let landed = fs::read_dir(&index).map(|d| d.count()).unwrap_or(0);
        if landed > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no segment landed");
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

/// Objects the server holds under `dir` of repository `prefix`.
fn objects(server: &S3Server, prefix: &str, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(server.object_path(prefix, dir))
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Put-only credentials (docs/remote.md): a backup machine whose every DELETE is refused with
/// 403 AccessDenied (the chaos proxy playing a bucket policy that denies s3:DeleteObject), with
/// a backup-only key, backs up twice without sending a single DELETE; both snapshots restore
/// exactly, also read through the same proxy. The owner's prune, straight to the server,
/// removes the pending copies the backups leave. Through the proxy, prune fails at its first
/// DELETE with the HTTP status and the S3 error code, and not the reply body, which names the
/// access key id.
#[test]
fn backups_need_no_delete_permission() {
    let Some(server) = S3Server::start() else { return };
    let mut cfg = ProxyConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], server.port)), 0, 0);
    cfg.deny_method = Some("DELETE".into());
    let proxy = Proxy::start(cfg).unwrap();
    let denied = || proxy.stats.denied.load(std::sync::atomic::Ordering::Relaxed);
    let put_only = server.url_via(proxy.port, "putonly");

    // The owner, with full credentials, straight to the server.
    let mut owner = bakare();
    server.configure(&mut owner, "putonly");
    owner.ok(&argv!["init"]);
    let key = owner.home.path().join("backup.key");
    owner.ok(&argv!["key", "export", "--backup-only", &key]);
    // The backup machine: another home, the backup-only key, deletes refused.
    let mut machine = bakare();
    server.configure(&mut machine, "putonly");
    machine.env.push(("BAKARE_REPO".into(), put_only.clone()));
    machine.env.push(("BAKARE_KEY".into(), key.display().to_string()));

    let mut rng = Rng::new(9);
    let src = TestDir::new().file("a.txt", rng.text(20_000)).file("b.bin", rng.bytes(3 << 20));
    let first = machine.ok(&argv!["--json", "run", src.path()]);
    assert!(first.stderr.contains("is plain http"), "{}", first.stderr);
    assert_eq!(first.stderr.matches("is plain http").count(), 1, "{}", first.stderr);
    let first = first.json()["snapshot"].as_str().unwrap().to_string();
    let first_a = fs::read(src.path().join("a.txt")).unwrap();
    fs::write(src.path().join("a.txt"), rng.text(30_000)).unwrap();
    let second =
        machine.ok(&argv!["--json", "run", src.path()]).json()["snapshot"].as_str().unwrap().to_string();
    assert_eq!(denied(), 0, "a backup sent a DELETE: {}", proxy.stats.summary());
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(objects(&server, "putonly", "snapshots"), both);
    assert_eq!(objects(&server, "putonly", "pending"), both, "the pending copies stay");

    // Reading needs no DELETE either: both restore exactly through the proxy.
    let restore_via_proxy = |id: &str| {
        let t = tempfile::tempdir().unwrap();
        let mut c = owner.command(&argv!["restore", id, "--target", t.path()]);
        c.env("BAKARE_REPO", &put_only);
        let o = chaos::testkit::run_measured(c);
        assert_eq!(o.code, 0, "{}", o.stderr);
        t
    };
    let t = restore_via_proxy(&first);
    let restored = restored_path(t.path(), src.path());
    assert!(fs::read(restored.join("a.txt")).unwrap() == first_a, "a.txt of the first snapshot differs");
    assert!(fs::read(restored.join("b.bin")).unwrap() == fs::read(src.path().join("b.bin")).unwrap());
    let t = restore_via_proxy(&second);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));

    // The owner's prune through the proxy fails at its first DELETE, saying why but not
    // repeating the body.
    let mut c = owner.command(&argv!["prune"]);
    c.env("BAKARE_REPO", &put_only);
    let o = chaos::testkit::run_measured(c);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert_eq!(denied(), 1, "{}", proxy.stats.summary());
    assert!(o.stderr.contains("HTTP 403, S3 error code AccessDenied"), "{}", o.stderr);
    for secret in [S3_ACCESS_KEY, "AWSAccessKeyId", "<"] {
        assert!(!o.stderr.contains(secret), "{secret} in: {}", o.stderr);
    }

    // Straight to the server, it removes them; the snapshots stay, whole.
    let p = owner.ok(&argv!["--json", "prune"]).json();
    assert_eq!(p["pending_removed"], 2, "{p}");
    assert_eq!(objects(&server, "putonly", "pending"), Vec::<String>::new());
    assert_eq!(objects(&server, "putonly", "snapshots"), both);
    let t = tempfile::tempdir().unwrap();
    owner.ok(&argv!["restore", &second, "--target", t.path()]);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    assert_eq!(owner.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
}
