//! forget and prune end to end: retention decisions, the two phases and the grace period,
//! repacking, the grace period setting, and that a backup key is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use chaos::argv;
use chaos::testkit::{
    assert_same_tree, bytes_under, restored_path, Bakare, FakeClock, Rng, TestDir, HOUR_NS,
};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn repo_bytes(repo: &Path, dir: &str) -> u64 {
    bytes_under(&repo.join(dir))
}

fn snapshot_ids(b: &Bakare) -> Vec<String> {
    b.ok(&argv!["--json", "snapshots"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn restore_same(b: &Bakare, id: &str, src: &Path) {
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", id, "--target", t.path()]);
    assert_same_tree(src, &restored_path(t.path(), src));
}

#[test]
fn forget_keeps_by_policy_and_says_why() {
    let mut b = bakare();
    let clock = FakeClock::install(&mut b);
    let src = TestDir::new().file("a.txt", "hello");
    // Five snapshots, a day apart.
    for i in 0..5 {
        fs::write(src.path().join("a.txt"), format!("version {i}")).unwrap();
        b.ok(&argv!["run", src.path()]);
        clock.advance(24 * HOUR_NS);
    }
    let ids = snapshot_ids(&b);
    assert_eq!(ids.len(), 5);
    let o = b.run(&argv!["forget"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("no retention rule"), "{}", o.stderr);
    let d = b.ok(&argv!["--json", "forget", "--keep-last", "1", "--keep-daily", "3", "--dry-run"]).json();
    assert_eq!(d["removed"], 2);
    assert_eq!(snapshot_ids(&b).len(), 5, "a dry run removes nothing");
    let human = b.ok(&argv!["forget", "--keep-last", "1", "--keep-daily", "3", "--dry-run"]).stdout_str();
    assert!(
        human.contains("would remove") && human.contains("no rule keeps it") && human.contains("last 1"),
        "{human}"
    );
    b.ok(&argv!["forget", "--keep-within", "2d 1h"]);
    // The newest and those at most 49 h older: 3 of 5.
    assert_eq!(snapshot_ids(&b), ids[2..].to_vec());
    b.ok(&argv!["forget", &ids[2][..12]]);
    assert_eq!(snapshot_ids(&b), ids[3..].to_vec());
    let o = b.run(&argv!["forget", "--keep-last", "1", &ids[3]]);
    assert!(o.stderr.contains("not both"), "{}", o.stderr);
}

#[test]
fn prune_condemns_then_deletes_after_the_grace_period() {
    let mut b = bakare();
    let clock = FakeClock::install(&mut b);
    let mut rng = Rng::new(7);
    let src = TestDir::new().file("keep.bin", rng.bytes(3 << 20)).file("old.bin", rng.bytes(4 << 20));
    // One worker: one pack per backup.
    let first = b.ok(&argv!["--json", "run", "--workers", "1", src.path()]).json()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_file(src.path().join("old.bin")).unwrap();
    fs::write(src.path().join("new.bin"), rng.bytes(2 << 20)).unwrap();
    b.ok(&argv!["run", "--workers", "1", src.path()]);
    b.ok(&argv!["forget", &first]);
    let before = repo_bytes(&b.repo, "packs");

    // A dry run says the same and changes nothing.
    let dry = b.ok(&argv!["--json", "prune", "--dry-run"]).json();
    assert_eq!(dry["condemned_packs"], 1, "{dry}");
    assert_eq!(repo_bytes(&b.repo, "packs"), before);
    assert_eq!(fs::read_dir(b.repo.join("gc")).unwrap().count(), 0);

    // Phase 1: the pack holding old.bin (and keep.bin) is mostly garbage: keep.bin is copied
    // to a new pack, the old pack is condemned, nothing is deleted.
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert_eq!(p["condemned_packs"], 1, "{p}");
    assert_eq!(p["repacked_packs"], 1, "{p}");
    assert_eq!(p["freed_now"], 0);
    assert!(p["freed_later"].as_u64().unwrap() >= 7 << 20, "{p}");
    assert!(repo_bytes(&b.repo, "packs") > before, "nothing deleted yet, a new pack written");
    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    restore_same(&b, "latest", src.path());

    // Within the grace period (24 h) a prune deletes nothing.
    clock.advance(23 * HOUR_NS);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert_eq!(p["freed_now"], 0, "{p}");
    assert_eq!(p["waiting"].as_array().unwrap().len(), 1);

    // After it, phase 2 deletes the condemned pack and segments.
    clock.advance(2 * HOUR_NS);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert_eq!(p["deleted"][0]["deleted_packs"], 1, "{p}");
    assert_eq!(p["deleted"][0]["rescued"], 0);
    assert!(p["freed_now"].as_u64().unwrap() >= 7 << 20, "{p}");
    let after = repo_bytes(&b.repo, "packs");
    assert!(after < before, "{after} >= {before}");
    assert!(after < 6 << 20, "only keep.bin and new.bin remain: {after}");
    assert_eq!(fs::read_dir(b.repo.join("gc")).unwrap().count(), 0);
    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["notes"].as_array().unwrap().len(), 0, "{c}");
    restore_same(&b, "latest", src.path());
    // A backup after prune deduplicates against what survived.
    let j = b.ok(&argv!["--json", "run", "--no-cache", src.path()]).json();
    assert_eq!(j["new_bytes"], 0, "{j}");
}

#[test]
fn backups_never_dedup_against_condemned_packs() {
    let mut b = bakare();
    let _clock = FakeClock::install(&mut b);
    let mut rng = Rng::new(8);
    let data = rng.bytes(2 << 20);
    let src = TestDir::new().file("x.bin", &data);
    let first = b.ok(&argv!["--json", "run", "--workers", "1", src.path()]).json()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    b.ok(&argv!["forget", &first]);
    b.ok(&argv!["prune"]);
    // x.bin's only pack is condemned: the next backup stores it again instead of referring to it.
    let j = b.ok(&argv!["--json", "run", "--no-cache", src.path()]).json();
    assert_eq!(j["new_bytes"].as_u64().unwrap(), data.len() as u64, "{j}");
    // So phase 2 can delete the condemned pack without any rescue, and the snapshot lives on.
    let p = b.ok(&argv!["--json", "prune", "--unsafe-now"]);
    assert!(p.stderr.contains("unsafe"), "{}", p.stderr);
    let p = p.json();
    assert_eq!(p["deleted"][0]["rescued"], 0, "{p}");
    assert_eq!(p["deleted"][0]["deleted_packs"], 1, "{p}");
    restore_same(&b, "latest", src.path());
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
}

#[test]
fn the_grace_period_is_a_setting_and_shortening_it_waits_for_the_old_one() {
    let mut b = bakare();
    let clock = FakeClock::install(&mut b);
    let src = TestDir::new().file("a", "a");
    let first = b.ok(&argv!["--json", "run", src.path()]).json()["snapshot"].as_str().unwrap().to_string();
    assert_eq!(b.ok(&argv!["--json", "config"]).json()["grace_seconds"], 86400);
    let o = b.ok(&argv!["config", "--grace", "1h"]);
    assert!(o.stderr.contains("keeps waiting the old grace period"), "{}", o.stderr);
    let c = b.ok(&argv!["--json", "config"]).json();
    assert_eq!(c["grace_seconds"], 3600);
    assert_eq!(c["prune_waits_seconds"], 86400, "{c}");
    b.ok(&argv!["forget", &first]);
    b.ok(&argv!["prune"]);
    // 2 h later: past the new period but not the old one, which other machines may still use.
    clock.advance(2 * HOUR_NS);
    assert_eq!(b.ok(&argv!["--json", "prune"]).json()["freed_now"], 0);
    clock.advance(23 * HOUR_NS);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["freed_now"].as_u64().unwrap() > 0, "{p}");
    assert_eq!(b.ok(&argv!["--json", "config"]).json()["prune_waits_seconds"], 3600);
    let o = b.run(&argv!["config", "--grace", "0s"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
}

#[test]
fn forget_and_prune_need_the_secret_key() {
    let b = bakare();
    let src = TestDir::new().file("a", "a");
    b.ok(&argv!["run", src.path()]);
    let bk = b.home.path().join("backup.key");
    b.ok(&argv!["key", "export", "--backup-only", &bk]);
    for args in
        [argv!["--key", &bk, "forget", "--keep-last", "1"].to_vec(), argv!["--key", &bk, "prune"].to_vec()]
    {
        let o = b.run(&args);
        assert_eq!(o.code, 1);
        assert!(o.stderr.contains("backup-only key"), "{}", o.stderr);
    }
    // Backing up with it still works.
    b.ok(&argv!["--key", &bk, "run", src.path()]);
}

/// An old owner-signed config put back (with a shorter grace period than the one writers may
/// be counting on): a prune on a machine that saw the newer one deletes nothing and says why,
/// until the owner writes a new config; then it deletes again.
#[test]
fn an_old_config_put_back_stops_deletions_until_the_owner_writes_a_new_one() {
    let mut b = bakare();
    let clock = FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    // A 1 h config (in force alone once the old 24 h have passed since the change)...
    b.ok(&argv!["config", "--grace", "1h"]);
    let old = fs::read(b.repo.join("config")).unwrap();
    // ...replaced by a 30 h one, which writers now count on.
    clock.advance(HOUR_NS);
    b.ok(&argv!["config", "--grace", "30h"]);
    let src = TestDir::new().file("a.bin", Rng::new(3).bytes(1 << 20));
    let first = b.ok(&argv!["--json", "run", src.path()]).json()["snapshot"].as_str().unwrap().to_string();
    b.ok(&argv!["forget", &first]);
    // Phase 1 condemns the pack; this machine now knows the 30 h config.
    b.ok(&argv!["prune"]);
    let packs = repo_bytes(&b.repo, "packs");
    assert!(packs > 0);
    // Someone with storage credentials puts the 1 h config back; 25 h later it alone would
    // let prune delete (its change is over 24 h old), 5 h before the 30 h are up.
    fs::write(b.repo.join("config"), &old).unwrap();
    clock.advance(25 * HOUR_NS);
    let o = b.ok(&argv!["--json", "prune"]);
    assert_eq!(o.json()["freed_now"], 0, "{}", o.stdout_str());
    assert!(o.stderr.contains("an old config was put back"), "{}", o.stderr);
    // Held back, the record is listed as waiting: what it would free is counted for later.
    assert_eq!(o.json()["waiting"].as_array().unwrap().len(), 1, "{}", o.stdout_str());
    assert!(o.json()["freed_later"].as_u64().unwrap() > 0, "{}", o.stdout_str());
    assert_eq!(repo_bytes(&b.repo, "packs"), packs);
    // The owner writes a new config: prune deletes again.
    b.ok(&argv!["config", "--grace", "1h"]);
    clock.advance(2 * HOUR_NS);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["freed_now"].as_u64().unwrap() > 0, "{p}");
    assert!(repo_bytes(&b.repo, "packs") < packs);
}
