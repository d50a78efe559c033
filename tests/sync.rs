//! Relay mode: `bakare sync --from A --to B` copies what B lacks without any key, verified by
//! hash, resumable, safe to interrupt, and B restores like A.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use chaos::argv;
use chaos::testkit::{assert_same_tree, files_under, restored_path, Bakare, Rng, S3Server, TestDir};

fn tree(seed: u64) -> TestDir {
    let mut rng = Rng::new(seed);
    let mut t = TestDir::new();
    for i in 0..30 {
        let n = rng.below(4000) as usize;
        t = t.file(format!("d/{i}.txt"), rng.text(n));
    }
    t.file("big.bin", rng.bytes(3 << 20))
}

fn restore_from(b: &Bakare, repo: &str, src: &Path) {
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["--repo", repo, "restore", "latest", "--target", t.path()]);
    assert_same_tree(src, &restored_path(t.path(), src));
}

#[test]
fn sync_relays_without_a_key_and_resumes() {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
    let src = tree(1);
    b.ok(&argv!["run", src.path()]);
    let dest = b.home.path().join("mirror");
    // The relay holds no key at all: a HOME of its own.
    let relay = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
    let j = relay.ok(&argv!["--json", "sync", "--from", &b.repo, "--to", &dest]).json();
    assert_eq!(j["config_copied"], true);
    assert_eq!(j["snapshots"], 1, "{j}");
    assert!(j["packs"].as_u64().unwrap() >= 1);
    assert!(!relay.home.path().join(".config/bakare").exists(), "the relay needed no key");
    restore_from(&b, dest.to_str().unwrap(), src.path());
    // Nothing to do the second time.
    let j = relay.ok(&argv!["--json", "sync", "--from", &b.repo, "--to", &dest]).json();
    assert_eq!(j["bytes"], 0, "{j}");
    // Backups into the source go on; the next sync copies only what is new.
    fs::write(src.path().join("new.txt"), "new").unwrap();
    b.ok(&argv!["run", src.path()]);
    let j = relay.ok(&argv!["--json", "sync", "--from", &b.repo, "--to", &dest]).json();
    assert_eq!(j["snapshots"], 1, "{j}");
    assert!(j["bytes"].as_u64().unwrap() < 64 << 10, "only the new data: {j}");
    let c = b.ok(&argv!["--repo", &dest, "--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["snapshots"], 2);
    restore_from(&b, dest.to_str().unwrap(), src.path());

    // A damaged object in the source is refused, not copied.
    let dest2 = b.home.path().join("mirror2");
    let packs = b.repo.join("packs");
    let sub = fs::read_dir(&packs).unwrap().next().unwrap().unwrap().path();
    let pack = fs::read_dir(sub).unwrap().next().unwrap().unwrap().path();
    let mut d = fs::read(&pack).unwrap();
    d[50] ^= 1;
    fs::write(&pack, d).unwrap();
    let o = relay.run(&argv!["sync", "--from", &b.repo, "--to", &dest2]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("does not match its name"), "{}", o.stderr);
    assert!(!dest2.join("snapshots").exists() || files_under(&dest2.join("snapshots")).is_empty());
}

#[test]
fn sync_relays_a_local_repository_to_s3() {
    let Some(server) = S3Server::start() else { return };
    let mut b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
    let src = tree(3);
    b.ok(&argv!["run", src.path()]);
    let local = b.repo.clone();
    server.configure(&mut b, "relayed");
    let url = server.url("relayed");
    let j = b.ok(&argv!["--json", "sync", "--from", &local, "--to", &url]).json();
    assert_eq!(j["snapshots"], 1, "{j}");
    restore_from(&b, &url, src.path());
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
    // And back from S3 to a new local directory.
    let back = b.home.path().join("back");
    b.ok(&argv!["sync", "--from", &url, "--to", &back]);
    restore_from(&b, back.to_str().unwrap(), src.path());
}

/// A copy made by `sync` has the repository's id but its own config and records: the owner
/// pruning both, after changing the source's grace period, is never told that an old config
/// was put back (the local prune state is kept per place, not per id).
#[test]
fn pruning_a_repository_and_its_copy_keeps_their_states_apart() {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
    let src = tree(2);
    b.ok(&argv!["run", src.path()]);
    let dest = b.home.path().join("mirror");
    b.ok(&argv!["sync", "--from", &b.repo, "--to", &dest]);
    b.ok(&argv!["config", "--grace", "48h"]);
    for _ in 0..2 {
        for repo in [b.repo.clone(), dest.clone()] {
            let o = b.ok(&argv!["--repo", &repo, "prune"]);
            assert!(!o.stderr.contains("put back"), "{}: {}", repo.display(), o.stderr);
        }
    }
}
