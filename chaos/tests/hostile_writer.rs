//! The hostile-writer suite (docs/security.md, issue #15): what the holder of a stolen
//! backup-only key can write (forged condemnation records, a forged config, forged snapshots,
//! decoy copies of the owner's blobs), built through the engine's own code with only that key.
//! For each: the owner's `check` names it, the owner's `prune` deletes no byte a trusted
//! snapshot needs (every trusted snapshot restores exactly afterwards), and `latest` is not
//! hijacked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use chaos::argv;
use chaos::hostile::{
    decoy, decoy_signed, downgrade, forge_config, forge_gc_record, forge_segments_hiding_blobs,
    forge_snapshot, forge_snapshot_with, Forger, Signed,
};
use chaos::testkit::{assert_same_tree, files_under, random_tree, restored_path, Bakare, FakeClock, HOUR_NS};
use engine::BlobId;

struct Setup {
    b: Bakare,
    /// The backup-only key of writer "laptop": all the attacker holds.
    key: PathBuf,
    /// (snapshot id, the directory it saved), oldest first: one by the owner, one by laptop.
    snaps: Vec<(String, tempfile::TempDir)>,
}

fn snapshot_of(o: &chaos::testkit::Outcome) -> String {
    o.json()["snapshot"].as_str().unwrap().to_string()
}

fn setup() -> Setup {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    b.ok(&argv!["init"]);
    let key = b.home.path().join("laptop.key");
    b.ok(&argv!["key", "export", "--backup-only", &key]);
    let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    random_tree(s1.path(), 1, 30);
    random_tree(s2.path(), 2, 30);
    let id1 = snapshot_of(&b.ok(&argv!["--json", "run", s1.path()]));
    let id2 = snapshot_of(&b.ok(&argv!["--key", &key, "--json", "run", s2.path()]));
    Setup { b, key, snaps: vec![(id1, s1), (id2, s2)] }
}

impl Setup {
    fn packs(&self) -> BTreeSet<PathBuf> {
        files_under(&self.b.repo.join("packs")).into_iter().collect()
    }

    fn pack_ids(&self) -> Vec<[u8; 32]> {
        self.packs()
            .iter()
            .map(|p| hex::decode(p.file_name().unwrap().to_str().unwrap()).unwrap().try_into().unwrap())
            .collect()
    }

    /// Every trusted snapshot restores byte for byte.
    fn all_restore_exactly(&self) {
        for (id, src) in &self.snaps {
            let target = tempfile::tempdir().unwrap();
            self.b.ok(&argv!["restore", id, "--target", target.path()]);
            assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
        }
    }

    fn listed(&self, extra: &[&str]) -> BTreeSet<String> {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--json", "snapshots"]);
        let o = self.b.ok(&args);
        o.json().as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    }

    fn real(&self) -> BTreeSet<String> {
        self.snaps.iter().map(|(id, _)| id.clone()).collect()
    }

    fn forge(&self, how: Signed, time_ns: i64) -> String {
        forge_snapshot(&self.b.repo, &self.key, how, time_ns, |f: &mut Forger| {
            let n = f.file("pwned", b"the attacker's file");
            vec![f.tree(vec![n])]
        })
    }
}

#[test]
fn forged_condemnation_records_condemn_nothing_and_prune_removes_them() {
    let s = setup();
    let before = s.packs();
    let forged: Vec<String> = [Signed::Writer, Signed::Stranger, Signed::Unsigned]
        .into_iter()
        .map(|how| forge_gc_record(&s.b.repo, &s.key, s.pack_ids(), how))
        .collect();
    let o = s.b.run(&argv!["--json", "check"]);
    assert_eq!(o.code, 3, "{}", o.stdout_str());
    let c = o.json();
    for name in &forged {
        let d = c["damage"].as_array().unwrap().iter().find(|d| d["object"] == name.as_str());
        let why = d.unwrap_or_else(|| panic!("{name} not named: {c}"))["why"].as_str().unwrap();
        assert!(why.contains("not signed by the owner") || why.contains("unsigned"), "{why}");
    }
    // Even without waiting for the grace period, nothing the forged records condemn goes.
    let o = s.b.ok(&argv!["--json", "prune", "--unsafe-now"]);
    let after = s.packs();
    assert!(before.is_subset(&after), "prune deleted {:?}", before.difference(&after).collect::<Vec<_>>());
    let remaining: Vec<PathBuf> = files_under(&s.b.repo.join("gc"));
    for name in &forged {
        assert!(
            !remaining.iter().any(|p| name.ends_with(p.file_name().unwrap().to_str().unwrap())),
            "{name} kept"
        );
        assert!(o.stderr.contains(name.as_str()) || o.stdout_str().contains(name.as_str()), "{}", o.stderr);
    }
    s.all_restore_exactly();
    assert_eq!(s.b.ok(&argv!["--json", "check"]).json()["ok"], true);
}

#[test]
fn a_forged_config_is_refused_by_owner_and_writer_alike() {
    let s = setup();
    let config = s.b.repo.join("config");
    let original = fs::read(&config).unwrap();
    let before = s.packs();
    for how in [Signed::Writer, Signed::Stranger, Signed::Unsigned] {
        fs::write(&config, &original).unwrap();
        forge_config(&s.b.repo, &s.key, how);
        let expect =
            if how == Signed::Unsigned { "bakare migrate" } else { "not signed by this repository's owner" };
        for args in [
            argv!["snapshots"].to_vec(),
            argv!["prune"].to_vec(),
            argv!["--key", &s.key, "run", s.snaps[1].1.path()].to_vec(),
        ] {
            let o = s.b.run(&args);
            assert_eq!(o.code, 1, "{args:?} with a config signed {how:?}: {}", o.stderr);
            assert!(o.stderr.contains(expect), "{args:?}: {}", o.stderr);
        }
        assert_eq!(s.packs(), before);
    }
    // migrate never signs a config someone else signed, nor a checksummed one put in place of
    // a signed one (the repository holds a writer's snapshots and the writer registry)
    for (how, why) in [
        (Signed::Stranger, "not signed by this repository's owner"),
        (Signed::Unsigned, "replaced by someone else"),
    ] {
        fs::write(&config, &original).unwrap();
        forge_config(&s.b.repo, &s.key, how);
        let o = s.b.run(&argv!["migrate"]);
        assert_eq!(o.code, 1, "{}", o.stderr);
        assert!(o.stderr.contains(why), "{}", o.stderr);
    }
    fs::write(&config, &original).unwrap();
    s.all_restore_exactly();
}

#[test]
fn forged_snapshots_are_ignored_named_by_check_and_never_latest() {
    let s = setup();
    let year_2100 = 4_102_444_800_000_000_000;
    let future = s.forge(Signed::Writer, year_2100);
    let unsigned = s.forge(Signed::Unsigned, engine::clock::now_ns());
    let stranger = s.forge(Signed::Stranger, engine::clock::now_ns());
    assert_eq!(s.listed(&[]), s.real());
    let o = s.b.ok(&argv!["snapshots"]);
    for (id, why) in [
        (&future, "dated in the future"),
        (&unsigned, "unsigned"),
        (&stranger, "signed by an unregistered key"),
    ] {
        assert!(o.stderr.contains(&format!("snapshot {} ignored: {why}", &id[..12])), "{}", o.stderr);
    }
    // latest is the laptop's real snapshot, not the one dated 2100
    let target = tempfile::tempdir().unwrap();
    s.b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(s.snaps[1].1.path(), &restored_path(target.path(), s.snaps[1].1.path()));
    assert!(!target.path().join("pwned").exists());
    // a forged id is not found either, unless asked for
    assert_eq!(s.b.run(&argv!["ls", &stranger]).code, 1);
    assert_eq!(s.b.ok(&argv!["--trust-all", "ls", &stranger]).stdout_str().trim(), "/pwned");
    let all = s.listed(&["--trust-all"]);
    assert_eq!(all.len(), 5, "{all:?}");
    // --exact: fuzzy matching may find "pwned" in a real path (a temporary directory's random
    // name, with a letter skipped), which made this flaky.
    let found = s.b.ok(&argv!["--json", "find", "--exact", "pwned"]).json();
    assert!(found["hits"].as_array().is_none_or(|h| h.is_empty()), "{found}");
    // check: the unsigned and the stranger's are damage; the future one is a note
    let o = s.b.run(&argv!["--json", "check"]);
    assert_eq!(o.code, 3);
    let c = o.json();
    let damaged: BTreeSet<String> = c["damage"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["object"].as_str()?.strip_prefix("snapshots/").map(str::to_string))
        .collect();
    assert_eq!(damaged, [unsigned.clone(), stranger.clone()].into(), "{c}");
    assert!(c["notes"].to_string().contains(&future), "{c}");
    // forgotten by policy: only trusted snapshots count, and forged ones are not removed by it
    s.b.ok(&argv!["forget", "--keep-last", "2"]);
    assert_eq!(s.listed(&["--trust-all"]).len(), 5);
    // migrate adopts nothing on a repository of format 3: an unsigned snapshot was planted
    let m = s.b.ok(&argv!["--json", "migrate"]).json();
    assert!(m["adopted"].as_array().unwrap().is_empty(), "{m}");
    assert_eq!(m["left_unsigned"], serde_json::json!([unsigned.clone()]), "{m}");
    // a copy of a real snapshot under another name does not count
    let copy = "0".repeat(64);
    fs::copy(s.b.repo.join("snapshots").join(&s.snaps[0].0), s.b.repo.join("snapshots").join(&copy)).unwrap();
    assert!(!s.listed(&["--trust-all"]).contains(&copy));
    fs::remove_file(s.b.repo.join("snapshots").join(&copy)).unwrap();
    // an object in snapshots/ that does not decode stops prune (it cannot tell what that
    // snapshot needs) until the owner forgets it by its whole id
    let garbage = b"BKSNAP02 not a snapshot";
    let junk = blake3::hash(garbage).to_hex().to_string();
    fs::write(s.b.repo.join("snapshots").join(&junk), garbage).unwrap();
    let o = s.b.run(&argv!["prune", "--unsafe-now"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains(&junk), "{}", o.stderr);
    s.b.ok(&argv!["forget", &junk]);
    assert!(!s.b.repo.join("snapshots").join(&junk).exists());
    // naming them removes them
    s.b.ok(&argv!["--trust-all", "forget", &future, &unsigned, &stranger]);
    assert_eq!(s.listed(&["--trust-all"]), s.real());
    // and prune then keeps everything the real ones need
    s.b.ok(&argv!["prune", "--unsafe-now"]);
    s.b.ok(&argv!["prune", "--unsafe-now"]);
    s.all_restore_exactly();
}

#[test]
fn a_revoked_writers_snapshots_are_ignored_and_a_new_key_is_trusted() {
    let s = setup();
    let writers = s.b.ok(&argv!["--json", "key", "list"]).json();
    let names: Vec<&str> = writers.as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["owner", "laptop"]);
    assert_eq!(writers[1]["snapshots"], 1);
    assert!(writers[1]["revoked"].is_null());

    s.b.ok(&argv!["key", "revoke", "laptop"]);
    let writers = s.b.ok(&argv!["--json", "key", "list"]).json();
    assert!(writers[1]["revoked"].is_string(), "{writers}");
    assert_eq!(s.listed(&[]), [s.snaps[0].0.clone()].into());
    let o = s.b.ok(&argv!["snapshots"]);
    assert!(o.stderr.contains("signed by revoked writer laptop"), "{}", o.stderr);
    // latest is the owner's now
    let target = tempfile::tempdir().unwrap();
    s.b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(s.snaps[0].1.path(), &restored_path(target.path(), s.snaps[0].1.path()));
    // the revoked key can still write (it holds storage credentials), but nobody trusts it
    let o = s.b.ok(&argv!["--key", &s.key, "--json", "run", s.snaps[1].1.path()]);
    assert!(!s.listed(&[]).contains(&snapshot_of(&o)));
    assert_eq!(s.b.run(&argv!["key", "revoke", "laptop"]).code, 1);
    // a new key of the same name is a new writer
    let key2 = s.b.home.path().join("laptop2.key");
    s.b.ok(&argv!["key", "export", "--backup-only", "--name", "laptop", &key2]);
    assert_eq!(
        s.b.run(&argv!["key", "export", "--backup-only", "--name", "laptop", s.b.home.path().join("x.key")])
            .code,
        1
    );
    let o = s.b.ok(&argv!["--key", &key2, "--json", "run", s.snaps[1].1.path()]);
    assert!(s.listed(&[]).contains(&snapshot_of(&o)));
    // the old snapshot is still there for forensics
    assert!(s.listed(&["--trust-all"]).contains(&s.snaps[1].0));
}

/// The attack of issue #15, item 1: prune condemns the packs of a forgotten snapshot; a decoy
/// pack claims their blobs; the owner's next backup deduplicates against the decoy. Phase 2
/// must not delete the condemned packs on the decoy's word: it reads the other copy first.
#[test]
fn prune_keeps_condemned_packs_whose_surviving_copies_are_decoys() {
    let mut b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    let clock = FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let key = b.home.path().join("laptop.key");
    b.ok(&argv!["key", "export", "--backup-only", &key]);
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 3, 20);
    fs::write(src.path().join("big"), chaos::testkit::Rng::new(9).bytes(3 << 20)).unwrap();
    let first = snapshot_of(&b.ok(&argv!["--json", "run", src.path()]));
    b.ok(&argv!["forget", &first]);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["condemned_packs"].as_u64().unwrap() >= 1, "{p}");
    let condemned: BTreeSet<PathBuf> = files_under(&b.repo.join("packs")).into_iter().collect();

    // The attacker claims every data blob of the index, with garbage. (Claiming the trees' ids
    // too makes prune stop without deleting anything: it cannot read the snapshots.) A backup-only
    // key reads only ids now, not which are data (places are sealed to the owner): the owner's
    // key tells them apart here, for an attacker who knows more than that key gives.
    let ids: Vec<BlobId> = {
        let r = engine::Repository::open(&b.repo, Some(&full_key(&b))).unwrap();
        let (index, _) = r.load_index().unwrap();
        index.iter().filter(|(_, loc)| loc.kind == stages::BlobKind::Data).map(|(id, _)| *id).collect()
    };
    decoy(&b.repo, &key, &ids);
    let decoys: Vec<PathBuf> =
        files_under(&b.repo.join("packs")).into_iter().filter(|p| !condemned.contains(p)).collect();
    assert!(!decoys.is_empty());
    let second = snapshot_of(&b.ok(&argv!["--json", "run", src.path()]));

    clock.advance(25 * HOUR_NS);
    let o = b.ok(&argv!["--json", "prune"]);
    let j = o.json();
    assert!(j["deleted"][0]["rescued"].as_u64().unwrap() >= 1, "{j}");
    assert!(o.stderr.contains("does not verify"), "{}", o.stderr);
    let now: BTreeSet<PathBuf> = files_under(&b.repo.join("packs")).into_iter().collect();
    assert!(condemned.iter().any(|p| now.contains(p)), "every condemned pack went: {}", o.stderr);

    // check --read-data names the decoys; once they are removed and the index rebuilt, the
    // snapshot restores exactly: nothing was lost.
    let c = b.run(&argv!["--json", "check", "--read-data"]);
    assert_eq!(c.code, 3);
    let c = c.json();
    for d in &decoys {
        let name = d.file_name().unwrap().to_str().unwrap();
        assert!(c["damage"].to_string().contains(name), "decoy {name} not named: {c}");
        fs::remove_file(b.repo.join("packs").join(d)).unwrap();
    }
    b.ok(&argv!["repair", "index"]);
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", &second, "--target", target.path()]);
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

/// Issue #15's upgrade path: a repository of format 2 and the backup-only keys of before keep
/// working after one owner step (`migrate`, then new backup-only keys), never silently trusted.
#[test]
fn an_old_repository_works_after_one_migrate() {
    let s = setup();
    let full = s.b.home.path().join("full.key");
    s.b.ok(&argv!["key", "export", &full]);
    let before = s.packs();
    let old_ids = downgrade(&s.b.repo, &full, s.pack_ids());
    // A backup-only key of before: no owner key, no writer key.
    let old_key = s.b.home.path().join("old.key");
    let text = fs::read_to_string(&s.key).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("owner: ") && !l.starts_with("name: ") && !l.starts_with("signer: "))
        .filter(|l| !l.starts_with("checksum: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let body: String = kept.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect();
    fs::write(&old_key, format!("{kept}checksum: {}\n", blake3::hash(body.as_bytes()).to_hex())).unwrap();

    for args in [argv!["snapshots"].to_vec(), argv!["prune", "--unsafe-now"].to_vec()] {
        let o = s.b.run(&args);
        assert_eq!(o.code, 1, "{args:?}");
        assert!(o.stderr.contains("run `bakare migrate`"), "{}", o.stderr);
    }
    let dry = s.b.ok(&argv!["--json", "migrate", "--dry-run"]).json();
    assert_eq!(dry["config_from"], 2);
    assert_eq!(dry["adopted"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(dry["records_removed"].as_array().unwrap().len(), 1, "{dry}");
    let segments = files_under(&s.b.repo.join("index"));
    assert_eq!(dry["segments_signed"].as_u64(), Some(segments.len() as u64), "{dry}");
    assert_eq!(s.b.run(&argv!["snapshots"]).code, 1, "a dry run changes nothing");

    assert_eq!(files_under(&s.b.repo.join("index")), segments, "a dry run changes nothing");
    let m = s.b.ok(&argv!["--json", "migrate"]).json();
    // The unsigned segments are the owner's word now: backups deduplicate against them again.
    assert_eq!(m["segments_signed"].as_u64(), Some(segments.len() as u64), "{m}");
    let olds: BTreeSet<String> =
        m["adopted"].as_array().unwrap().iter().map(|a| a["old"].as_str().unwrap().into()).collect();
    assert_eq!(olds, old_ids.iter().cloned().collect());
    // adopted: listed, signed by the owner, restorable; nothing condemned by the old record went
    let listed = s.b.ok(&argv!["--json", "snapshots"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(listed.as_array().unwrap().iter().all(|e| e["writer"] == "owner"), "{listed}");
    s.b.ok(&argv!["prune", "--unsafe-now"]);
    assert!(before.is_subset(&s.packs()));
    assert_eq!(s.b.ok(&argv!["--json", "check"]).json()["ok"], true);
    let again = s.b.ok(&argv!["--json", "migrate"]).json();
    assert_eq!((again["config_from"].as_u64(), again["adopted"].as_array().unwrap().len()), (Some(4), 0));
    assert_eq!(again["segments_signed"], 0, "{again}");
    // the old backup-only key is refused with what to do; a new one works
    let o = s.b.run(&argv!["--key", &old_key, "run", s.snaps[1].1.path()]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("from before writers were registered"), "{}", o.stderr);
    let new_key = s.b.home.path().join("laptop-new.key");
    s.b.ok(&argv!["key", "export", "--backup-only", &new_key]);
    s.b.ok(&argv!["--key", &new_key, "run", s.snaps[1].1.path()]);
    assert_eq!(s.b.ok(&argv!["--json", "snapshots"]).json().as_array().unwrap().len(), 3);
    // (the signed segments at work: the owner's data is not stored again)
    let again = s.b.ok(&argv!["--json", "run", s.snaps[0].1.path()]).json();
    assert_eq!(again["new_bytes"], 0, "{again}");
}

/// Index segments that list the owner's packs with their blobs left out: prune must not take
/// the left-out blobs for unused (segments' entries are merged, and a pack's own trailer is
/// read before it goes).
#[test]
fn segments_hiding_blobs_make_prune_delete_nothing() {
    let s = setup();
    let before = s.packs();
    forge_segments_hiding_blobs(&s.b.repo, &s.key, &full_key(&s.b), 32);
    s.b.ok(&argv!["prune", "--unsafe-now"]);
    s.b.ok(&argv!["prune", "--unsafe-now"]);
    assert!(
        before.is_subset(&s.packs()),
        "prune deleted {:?}",
        before.difference(&s.packs()).collect::<Vec<_>>()
    );
    s.all_restore_exactly();
}

/// A condemnation record the owner signed long ago, put back after prune processed it (anyone
/// who can read and write the storage can): prune waits its grace period again, counted from
/// when it first saw the record, instead of acting on its old date at once.
#[test]
fn a_replayed_condemnation_record_waits_its_grace_period_again() {
    let mut b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    let clock = FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 5, 20);
    let first = snapshot_of(&b.ok(&argv!["--json", "run", src.path()]));
    b.ok(&argv!["forget", &first]);
    let record = b.ok(&argv!["--json", "prune"]).json()["record"].as_str().unwrap().to_string();
    let bytes = fs::read(b.repo.join(&record)).unwrap();
    clock.advance(25 * HOUR_NS);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert_eq!(p["deleted"][0]["record"], record.as_str(), "{p}");
    assert!(!b.repo.join(&record).exists());

    let second = snapshot_of(&b.ok(&argv!["--json", "run", src.path()]));
    fs::write(b.repo.join(&record), &bytes).unwrap();
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["deleted"].as_array().unwrap().is_empty(), "{p}");
    assert_eq!(p["waiting"][0]["record"], record.as_str(), "{p}");
    clock.advance(25 * HOUR_NS);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert_eq!(p["deleted"][0]["record"], record.as_str(), "{p}");
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", &second, "--target", target.path()]);
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

/// A writer chooses the host and paths it records: its snapshots, however many and however
/// recent, never push another machine's out of a retention policy.
#[test]
fn a_writer_cannot_crowd_the_owners_snapshots_out_of_a_policy() {
    let s = setup();
    let owner = s.b.ok(&argv!["--json", "snapshots"]).json()[0].clone();
    assert_eq!(owner["writer"], "owner");
    let host = owner["host"].as_str().unwrap().to_string();
    let paths: Vec<Vec<u8>> =
        owner["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().as_bytes().to_vec()).collect();
    for _ in 0..3 {
        forge_snapshot_with(
            &s.b.repo,
            &s.key,
            Signed::Writer,
            |snap| {
                snap.host = host.clone();
                snap.paths = paths.clone();
            },
            |f: &mut Forger| {
                let n = f.file("pwned", b"x");
                vec![f.tree(vec![n])]
            },
        );
    }
    let f = s.b.ok(&argv!["--json", "forget", "--keep-last", "1", "--dry-run"]).json();
    let removed: Vec<String> = f["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!removed.contains(&s.snaps[0].0), "the owner's snapshot would go: {f}");
    assert_eq!(removed.len(), 2, "{f}");
}

/// What a storage reader without any key learns from a pack: not where its blobs start (each
/// nonce is a keyed hash of the blob's position, not the plain counter that used to stand in
/// front of every blob), and not how many blobs it holds (the trailer is padded: a pack of one
/// file and one of 60 have trailers of one length).
#[test]
fn packs_show_no_blob_boundaries_or_counts_without_a_key() {
    use chaos::testkit::{Rng, TestDir};
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    b.ok(&argv!["init"]);
    let one = TestDir::new().file("only", Rng::new(1).bytes(300_000));
    b.ok(&argv!["run", one.path()]);
    let first: BTreeSet<PathBuf> = files_under(&b.repo.join("packs")).into_iter().collect();
    let mut rng = Rng::new(2);
    let mut many = TestDir::new();
    for i in 0..60 {
        many = many.file(format!("f{i:02}"), rng.bytes(300_000));
    }
    b.ok(&argv!["run", many.path()]);
    let all: BTreeSet<PathBuf> = files_under(&b.repo.join("packs")).into_iter().collect();
    assert!(!first.is_empty() && all.len() > first.len());
    let mut trailers = BTreeSet::new();
    for p in &all {
        let data = fs::read(b.repo.join("packs").join(p)).unwrap();
        // The old framing: a little-endian counter in 8 bytes, then 4 zero bytes.
        let counters: Vec<u64> = (1..=60u64)
            .filter(|k| {
                let mut pattern = k.to_le_bytes().to_vec();
                pattern.extend_from_slice(&[0; 4]);
                data.windows(12).any(|w| w == pattern.as_slice())
            })
            .collect();
        assert!(counters.is_empty(), "{}: counters {counters:?} in the clear", p.display());
        // The footer ends the pack's data, before its parity (docs/format.md, "Parity").
        let backend = io::LocalBackend::new(&b.repo);
        let key = format!("packs/{}", p.display());
        let parity = engine::pack::locate_parity(&backend, &key, data.len() as u64).unwrap();
        let d = engine::pack::data_len(parity.as_ref(), data.len() as u64) as usize;
        let foot = &data[d - 12..d];
        assert_eq!(&foot[4..], b"BKPKEND2");
        trailers.insert(u32::from_le_bytes(foot[..4].try_into().unwrap()));
    }
    // 24 bytes of nonce, 4,096 of padded plaintext, 16 of tag.
    assert_eq!(trailers, BTreeSet::from([4136]), "one trailer length for 1 and for 60 files");
    // And everything still reads back.
    let o = b.ok(&argv!["check", "--read-data"]);
    assert!(o.stdout_str().contains("no damage found"), "{}", o.stdout_str());
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(many.path(), &restored_path(target.path(), many.path()));
}

/// Issue #15, item 4: dedup poisoning is contained. Decoys (garbage under the ids of files the
/// owner is about to back up) are planted three ways. Backups deduplicate only against packs a
/// writer in good standing vouches for: the decoys listed by a stranger's segment and by an
/// unsigned one poison nothing; the one a registered writer vouches for does (the residual
/// risk) until the writer is revoked. `check --writer NAME --read-data` reads that writer's
/// packs and names the snapshots its garbage damaged; after `key revoke`, the owner's next
/// backup stores the data again, and then every snapshot restores exactly, the damaged one too
/// (a vouched-for copy is read before others). Another writer learns of the revocation from
/// the roster and stops deduplicating against the revoked writer too, while still
/// deduplicating against the owner's data.
#[test]
fn poisoned_ids_are_stored_again_once_their_writer_is_revoked() {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    b.ok(&argv!["init"]);
    let laptop = b.home.path().join("laptop.key");
    b.ok(&argv!["key", "export", "--backup-only", "--name", "laptop", &laptop]);
    let desktop = b.home.path().join("desktop.key");
    b.ok(&argv!["key", "export", "--backup-only", "--name", "desktop", &desktop]);
    let src = tempfile::tempdir().unwrap();
    random_tree(src.path(), 5, 10);
    let mut rng = chaos::testkit::Rng::new(11);
    // Under the minimum chunk size: one blob each, whose id the attacker can compute.
    let files: Vec<(&str, Vec<u8>)> = ["f", "g", "h"].iter().map(|n| (*n, rng.bytes(100_000))).collect();
    for (n, data) in &files {
        fs::write(src.path().join(n), data).unwrap();
    }
    let id_key = *engine::Repository::open(&b.repo, Some(&laptop)).unwrap().wk.id_key.as_bytes();
    let id = |i: usize| stages::hash::blob_id(&id_key, &files[i].1);
    let laptop_decoy = decoy_signed(&b.repo, &laptop, &[id(0)], Signed::Writer);
    decoy_signed(&b.repo, &laptop, &[id(1)], Signed::Stranger);
    decoy_signed(&b.repo, &laptop, &[id(2)], Signed::Unsigned);

    let first = b.ok(&argv!["--json", "run", src.path()]);
    let first_id = snapshot_of(&first);
    assert!(first.stderr.contains("listed only by unsigned index segments"), "{}", first.stderr);
    // g and h were stored; f was taken from laptop's decoy.
    let target = tempfile::tempdir().unwrap();
    let o = b.run(&argv!["restore", &first_id, "--target", target.path()]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    let restored = restored_path(target.path(), src.path());
    assert_eq!(fs::read(restored.join("g")).unwrap(), files[1].1);
    assert_eq!(fs::read(restored.join("h")).unwrap(), files[2].1);
    assert!(fs::read(restored.join("f")).map_or(true, |d| d != files[0].1));

    // What laptop stored, read back: its decoy, and the owner's snapshot that needs it.
    let c = b.run(&argv!["--json", "check", "--read-data", "--writer", "laptop"]);
    assert_eq!(c.code, 3, "{}", c.stderr);
    let c = c.json();
    assert_eq!(c["packs_read"], 1, "{c}");
    assert!(c["damage"].to_string().contains(&laptop_decoy), "{c}");
    let affected = c["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 1, "{c}");
    assert_eq!(affected[0]["snapshot"], format!("snapshots/{first_id}"));
    assert!(affected[0]["path"].as_str().unwrap().ends_with("/f"), "{c}");
    assert_eq!(b.run(&argv!["check", "--read-data", "--writer", "nobody-such"]).code, 1);
    assert_ne!(b.run(&argv!["check", "--writer", "laptop"]).code, 0);

    // Writers deduplicate against each other's data: desktop finds laptop on the roster.
    let lp = tempfile::tempdir().unwrap();
    let l = rng.bytes(100_000);
    fs::write(lp.path().join("l"), &l).unwrap();
    b.ok(&argv!["--key", &laptop, "run", lp.path()]);
    let d = b.ok(&argv!["--key", &desktop, "--json", "run", lp.path()]).json();
    assert_eq!(d["new_bytes"], 0, "{d}");

    // Prune and `repair index` rewrite the index, signed by the owner: each pack keeps its
    // writer's word (were laptop's packs relayed as the owner's, revoking laptop would not
    // stop the poisoning below).
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["segments_written"].as_u64().unwrap() >= 2, "{p}");
    b.ok(&argv!["repair", "index"]);
    b.ok(&argv!["key", "revoke", "laptop"]);
    let second = b.ok(&argv!["--json", "run", src.path()]);
    // (new_bytes counts file data: trees of the parent directories change with /tmp's mtime)
    assert_eq!(second.json()["new_bytes"], 100_000, "f's blob is stored again: {}", second.json());
    for snap in [snapshot_of(&second), first_id.clone()] {
        let target = tempfile::tempdir().unwrap();
        b.ok(&argv!["restore", &snap, "--target", target.path()]);
        assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    }
    let c = b.ok(&argv!["--json", "check"]).json();
    assert!(c["notes"].to_string().contains("vouched for by no writer in good standing"), "{c}");

    // desktop reads the revocation from the roster: it stores laptop's data again, and a decoy
    // laptop plants now poisons nothing, while the owner's data still deduplicates.
    let more = tempfile::tempdir().unwrap();
    let k = rng.bytes(100_000);
    fs::write(more.path().join("k"), &k).unwrap();
    decoy_signed(&b.repo, &laptop, &[stages::hash::blob_id(&id_key, &k)], Signed::Writer);
    let d = b.ok(&argv!["--key", &desktop, "--json", "run", src.path(), lp.path(), more.path()]).json();
    assert_eq!(d["new_bytes"], 200_000, "l and k are stored, src deduplicates: {d}");
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_eq!(fs::read(restored_path(target.path(), more.path()).join("k")).unwrap(), k);
    assert_eq!(fs::read(restored_path(target.path(), lp.path()).join("l")).unwrap(), l);
}

/// Issue #15, item 5: a backup-only key learns which blob ids the repository holds (it
/// deduplicates against them), never where they are, how large or of what kind: every index
/// segment's places are sealed to the owner. The writer's second backup of the same data, and
/// the owner's, still store nothing new; the owner reads every segment whole.
#[test]
fn a_backup_only_key_reads_blob_ids_but_no_sizes() {
    use chaos::testkit::Rng;
    let (b, laptop) = owner_and_laptop();
    let src = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    for i in 0..20 {
        fs::write(src.path().join(format!("f{i}")), rng.bytes(70_000 + 1_000 * i)).unwrap();
    }
    let run = |key: Option<&PathBuf>| {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(k) = key {
            args.extend(["--key".into(), k.clone().into_os_string()]);
        }
        args.extend(["--json".into(), "run".into(), src.path().into()]);
        b.ok(&args).json()["new_bytes"].as_u64().unwrap()
    };
    assert!(run(Some(&laptop)) > 1_000_000);
    assert_eq!(run(Some(&laptop)), 0, "the writer deduplicates against its own ids");
    assert_eq!(run(None), 0, "the owner deduplicates against the writer's");
    let full = b.home.path().join("full.key");
    b.ok(&argv!["key", "export", &full]);
    let owner = engine::Repository::open(&b.repo, Some(&full)).unwrap();
    let writer = engine::Repository::open(&b.repo, Some(&laptop)).unwrap();
    let segments = owner.backend.list("index").unwrap();
    assert!(!segments.is_empty());
    let (mut ids, mut sizes) = (0, BTreeSet::new());
    for name in &segments {
        let data = owner.backend.get(name).unwrap();
        let (_, body) = engine::index::decode_segment(owner.segment_keys(), name, data.clone()).unwrap();
        for e in body.iter().flat_map(|(_, es)| es) {
            sizes.extend([e.raw_len, e.len, e.offset].into_iter().filter(|&n| n >= 65_536));
        }
        let err = engine::index::decode_segment(writer.segment_keys(), name, data.clone()).unwrap_err();
        assert!(err.to_string().contains("sealed to the repository owner"), "{name}: {err}");
        let detail = engine::index::Detail::Ids;
        let mut readable: Vec<[u8; 32]> = Vec::new();
        engine::index::for_each_pack(writer.segment_keys(), name, data.clone(), detail, |_, pack, es| {
            ids += es.len();
            readable.push(pack);
            readable.extend(es.iter().map(|e| e.id));
        })
        .unwrap();
        // What the writer's catalog key opens holds none of the sizes or offsets. The ids it
        // may read are blanked first: random bytes, they hold any three-byte varint by chance
        // (one segment in about a hundred did, a flake seen in CI).
        let mut opened = data.clone();
        let plain = engine::crypto::open_catalog_in_place(
            &writer.wk.catalog_key,
            engine::index::MAGIC,
            &mut opened,
            8,
        )
        .unwrap();
        let mut plain = plain.to_vec();
        for id in &readable {
            let mut at = 0;
            while let Some(i) = plain[at..].windows(32).position(|w| w == id) {
                plain[at + i..at + i + 32].fill(0);
                at += i + 32;
            }
        }
        for n in &sizes {
            let varint = postcard::to_allocvec(n).unwrap();
            assert!(!plain.windows(varint.len()).any(|w| w == varint.as_slice()), "{name}: {n} readable");
            assert!(!plain.windows(4).any(|w| w == n.to_le_bytes()), "{name}: {n} readable");
        }
    }
    assert!(ids >= 20 && sizes.len() >= 20, "{ids} ids, {} sizes", sizes.len());
    let o = b.ok(&argv!["check", "--read-data"]);
    assert!(o.stdout_str().contains("no damage found"), "{}", o.stdout_str());
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

/// A repository whose segments predate sealed places (`BKINDEX2`, readable whole with a
/// backup-only key): one `migrate` seals them all to the owner, each keeping its voucher, so
/// backups of the owner and of the writer still deduplicate against everything.
#[test]
fn migrate_seals_the_places_of_segments_of_before() {
    let s = setup();
    let full = s.b.home.path().join("full.key");
    s.b.ok(&argv!["key", "export", &full]);
    let owner = engine::Repository::open(&s.b.repo, Some(&full)).unwrap();
    let before = chaos::hostile::unseal_places(&owner);
    assert!(before >= 2, "{before} segments");
    // And its config of format 3, as the owner signed it then (format 3 had no parity).
    let signer = owner.key.owner_signer().unwrap();
    let config = engine::config::Config { parity: 0, ..owner.config.clone() }.encode(&signer);
    let mut body = config[..config.len() - 96].to_vec();
    body[8] = 3;
    let v3 = engine::signing::seal(&signer, engine::signing::Purpose::Config, &owner.config.repo_id, body);
    owner.backend.replace("config", &v3).unwrap();
    let writer = engine::Repository::open(&s.b.repo, Some(&s.key)).unwrap();
    let readable = |r: &engine::Repository| {
        r.backend
            .list("index")
            .unwrap()
            .iter()
            .filter(|n| engine::index::decode_segment(r.segment_keys(), n, r.backend.get(n).unwrap()).is_ok())
            .count()
    };
    assert_eq!(readable(&writer), before, "the writer reads the old segments whole");
    let dry = s.b.ok(&argv!["--json", "migrate", "--dry-run"]).json();
    assert_eq!(dry["segments_sealed"].as_u64(), Some(before as u64), "{dry}");
    assert_eq!(dry["config_from"], 3, "{dry}");
    let m = s.b.ok(&argv!["--json", "migrate"]).json();
    assert_eq!(m["segments_sealed"].as_u64(), Some(before as u64), "{m}");
    // Signed again as format 4, so that a bakare of before refuses the repository rather than
    // misread (and, in `repair index`, delete) what it cannot decode.
    assert_eq!(owner.backend.get("config").unwrap()[8], engine::config::VERSION);
    assert_eq!(engine::config::VERSION, 4);
    assert_eq!(s.b.ok(&argv!["--json", "migrate"]).json()["segments_sealed"], 0);
    assert_eq!(readable(&writer), 0, "no segment's places are readable with the backup-only key");
    assert_eq!(readable(&owner), owner.backend.list("index").unwrap().len());
    // Every voucher kept: both writers still deduplicate against both snapshots' data.
    for (key, (_, src)) in [(None, &s.snaps[1]), (Some(&s.key), &s.snaps[0])] {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(k) = key {
            args.extend(["--key".into(), k.clone().into_os_string()]);
        }
        args.extend(["--json".into(), "run".into(), src.path().into()]);
        assert_eq!(s.b.ok(&args).json()["new_bytes"], 0, "{key:?}");
    }
    let o = s.b.ok(&argv!["check", "--read-data"]);
    assert!(o.stdout_str().contains("no damage found"), "{}", o.stdout_str());
    s.all_restore_exactly();
}

/// The owner and a registered writer "laptop", with the id of `data` as the attacker computes it.
fn owner_and_laptop() -> (Bakare, PathBuf) {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    b.ok(&argv!["init"]);
    let laptop = b.home.path().join("laptop.key");
    b.ok(&argv!["key", "export", "--backup-only", "--name", "laptop", &laptop]);
    (b, laptop)
}

/// The owner's full key, exported to a file.
fn full_key(b: &Bakare) -> PathBuf {
    let full = b.home.path().join("owner-full.key");
    if !full.exists() {
        b.ok(&argv!["key", "export", &full]);
    }
    full
}

/// A backup-only key cannot read the trailer of a pack written since 2026-12, its own pack's
/// included (where its blobs are and how large is for the owner only), and is told so rather
/// than that the pack is damaged; the owner reads it. Backups with that key still work, and
/// deduplicate against the owner's data through the index segments.
#[test]
fn new_pack_trailers_are_sealed_to_the_owner() {
    let (b, laptop) = owner_and_laptop();
    let mut rng = chaos::testkit::Rng::new(8);
    let f = rng.bytes(100_000);
    assert_eq!(new_bytes_backing_up(&b, &f), 100_000);
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), &f).unwrap();
    fs::write(d.path().join("g"), rng.bytes(50_000)).unwrap();
    let o = b.ok(&argv!["--key", &laptop, "--json", "run", d.path()]);
    assert_eq!(o.json()["new_bytes"].as_u64().unwrap(), 50_000, "{}", o.stdout_str());
    assert!(!o.stderr.contains("sealed to"), "{}", o.stderr);
    let writer = engine::Repository::open(&b.repo, Some(&laptop)).unwrap();
    let owner = engine::Repository::open(&b.repo, Some(&full_key(&b))).unwrap();
    let packs = writer.backend.list("packs").unwrap();
    // The owner's pack and the laptop's (trees and data may go to packs of their own).
    assert!(packs.len() >= 2, "{packs:?}");
    for key in &packs {
        match engine::pack::read_trailer(writer.backend.as_ref(), writer.trailer_keys(), key) {
            Err(e @ engine::Error::SealedToOwner(_)) => {
                assert!(e.to_string().contains("sealed to the repository owner"), "{e}")
            }
            other => panic!("{key}: {other:?}"),
        }
        let entries = engine::pack::read_trailer(owner.backend.as_ref(), owner.trailer_keys(), key).unwrap();
        assert!(!entries.is_empty());
    }
    // Packs no segment lists (the segments lost): the writer says so once, not once a pack.
    for s in writer.backend.list("index").unwrap() {
        writer.backend.delete(&s).unwrap();
    }
    let o = b.ok(&argv!["--key", &laptop, "run", d.path()]);
    assert_eq!(o.stderr.matches("sealed to the owner").count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains(&format!("{} packs", packs.len())), "{}", o.stderr);
}

fn blob_id_of(b: &Bakare, key: &std::path::Path, data: &[u8]) -> BlobId {
    let r = engine::Repository::open(&b.repo, Some(key)).unwrap();
    stages::hash::blob_id(r.wk.id_key.as_bytes(), data)
}

/// Backs up a directory holding only `data` (as "f"); returns what it stored anew.
fn new_bytes_backing_up(b: &Bakare, data: &[u8]) -> u64 {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), data).unwrap();
    b.ok(&argv!["--json", "run", d.path()]).json()["new_bytes"].as_u64().unwrap()
}

/// A stranger's segment lists one of the owner's packs with an extra, forged entry (the id of
/// a file the owner will back up, at the offset of a real blob). Prune rewrites the index as
/// the owner, but keeps each segment's word apart: the forged entry stays the stranger's, so
/// the owner's next backup stores the file rather than reference garbage.
#[test]
fn prune_keeps_each_segments_word_apart() {
    let (b, laptop) = owner_and_laptop();
    let mut rng = chaos::testkit::Rng::new(3);
    assert_eq!(new_bytes_backing_up(&b, &rng.bytes(100_000)), 100_000);
    let f = rng.bytes(100_000);
    let x = blob_id_of(&b, &laptop, &f);
    let r = engine::Repository::open(&b.repo, Some(&laptop)).unwrap();
    // Where the blob is, as the owner reads it (an attacker who learned it anyhow).
    let owner = engine::Repository::open(&b.repo, Some(&full_key(&b))).unwrap();
    let mut body = Vec::new();
    for key in r.backend.list("packs").unwrap() {
        let mut entries = engine::pack::read_trailer(r.backend.as_ref(), owner.trailer_keys(), &key).unwrap();
        if let Some(y) = entries.iter().find(|e| e.raw_len == 100_000).cloned() {
            entries.push(engine::pack::BlobEntry { id: x, ..y });
            body.push((engine::pack::parse_pack_key(&key).unwrap(), entries));
        }
    }
    assert_eq!(body.len(), 1);
    for signer in [engine::signing::SigningKey::generate(), r.key.snapshot_signer().unwrap()] {
        let sealer = engine::index::SegmentSealer { signer, ..r.sealer().unwrap() };
        let (name, bytes) = sealer.own(&body).unwrap();
        r.backend.put(&name, &bytes).unwrap();
    }
    b.ok(&argv!["key", "revoke", "laptop"]);
    // A second segment of the owner's, so that prune has segments to merge.
    assert_eq!(new_bytes_backing_up(&b, &rng.bytes(50_000)), 50_000);
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["segments_written"].as_u64().unwrap() >= 1, "{p}");
    assert_eq!(new_bytes_backing_up(&b, &f), 100_000);
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    let found = chaos::testkit::files_under(target.path())
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "f"))
        .unwrap();
    assert_eq!(fs::read(target.path().join(found)).unwrap(), f);
}

/// A decoy pack whose trailer is damaged, listed by an unsigned segment: `repair index
/// --read-data` cannot read its blobs, so it must not vouch for it as the owner.
#[test]
fn repair_vouches_only_for_what_it_read() {
    let (b, laptop) = owner_and_laptop();
    // Without parity, which would repair the damaged trailer.
    b.ok(&argv!["config", "--parity", "0"]);
    let f = chaos::testkit::Rng::new(4).bytes(100_000);
    let x = blob_id_of(&b, &laptop, &f);
    let r = engine::Repository::open(&b.repo, Some(&laptop)).unwrap();
    let name = decoy_signed(&b.repo, &laptop, &[x], Signed::Unsigned);
    let key = format!("packs/{}/{name}", &name[..2]);
    // The decoy's writer knows what it holds; read back, that takes the owner's key.
    let owner = engine::Repository::open(&b.repo, Some(&full_key(&b))).unwrap();
    let entries = engine::pack::read_trailer(r.backend.as_ref(), owner.trailer_keys(), &key).unwrap();
    let mut data = r.backend.get(&key).unwrap();
    let n = data.len();
    data[n - 8 - 4 - 5] ^= 1; // inside the sealed trailer
    let id: [u8; 32] = *blake3::hash(&data).as_bytes();
    for s in r.backend.list("index").unwrap() {
        r.backend.delete(&s).unwrap();
    }
    r.backend.delete(&key).unwrap();
    r.backend.put(&engine::pack::pack_key(&id), &data).unwrap();
    let m = engine::index::MAGIC_V1;
    let bytes = engine::crypto::seal_catalog_value(&r.wk.catalog_key, m, m, &vec![(id, entries)]).unwrap();
    r.backend.put(&format!("index/{}", blake3::hash(&bytes).to_hex()), &bytes).unwrap();
    let o = b.run(&argv!["--json", "repair", "index", "--read-data"]);
    assert!(o.stdout_str().contains("listed from the old index instead"), "{}", o.stdout_str());
    assert_eq!(new_bytes_backing_up(&b, &f), 100_000);
    // and migrate, after it, does not vouch for what repair could not read
    assert_eq!(b.ok(&argv!["--json", "migrate"]).json()["segments_signed"], 0);
    assert_eq!(new_bytes_backing_up(&b, &f), 0, "stored once above");
}

/// `migrate` vouches for unsigned segments once, for a repository from before signed
/// segments. In a repository made since (or migrated already), an unsigned segment was planted:
/// migrate leaves it unvouched and says so, and backups store the data it claims.
#[test]
fn migrate_vouches_for_unsigned_segments_once() {
    let (b, laptop) = owner_and_laptop();
    let f = chaos::testkit::Rng::new(5).bytes(100_000);
    decoy_signed(&b.repo, &laptop, &[blob_id_of(&b, &laptop, &f)], Signed::Unsigned);
    b.ok(&argv!["key", "revoke", "laptop"]);
    let o = b.ok(&argv!["--json", "migrate"]);
    let m = o.json();
    assert_eq!(
        (m["segments_signed"].as_u64(), m["segments_left_unsigned"].as_u64()),
        (Some(0), Some(1)),
        "{m}"
    );
    assert!(o.stderr.contains("appeared after the owner signed the index"), "{}", o.stderr);
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("f"), &f).unwrap();
    let o = b.ok(&argv!["--json", "run", d.path()]);
    assert!(o.stderr.contains("planted?"), "{}", o.stderr);
    assert_eq!(o.json()["new_bytes"], 100_000);
    // A mark that is not the owner's (whoever can delete and write put it there) counts as
    // signed: it can keep old data from being deduplicated against, never make migrate vouch.
    fs::write(b.repo.join(engine::index::MARK), b"BKIXMARK not the owner's").unwrap();
    let o = b.ok(&argv!["--json", "migrate"]);
    assert_eq!(o.json()["segments_signed"], 0);
    assert!(o.stderr.contains("is not the owner's mark"), "{}", o.stderr);
    // And with no mark at all, a revoked writer's unsigned segments are not vouched for either.
    fs::remove_file(b.repo.join(engine::index::MARK)).unwrap();
    let o = b.ok(&argv!["--json", "migrate"]);
    assert_eq!(o.json()["segments_signed"], 0, "{}", o.stderr);
    assert!(o.stderr.contains("may include a revoked writer's"), "{}", o.stderr);
}

/// A repository from before signed segments, pruned before the owner migrates: prune relays
/// the unsigned segments' packs as unsigned (not as nobody's), so `migrate` still vouches for
/// them and backups deduplicate against the old data again.
#[test]
fn prune_before_migrate_keeps_unsigned_packs_for_migrate() {
    let (b, _) = owner_and_laptop();
    let mut rng = chaos::testkit::Rng::new(6);
    let a = tempfile::tempdir().unwrap();
    fs::write(a.path().join("a"), rng.bytes(100_000)).unwrap();
    b.ok(&argv!["run", a.path()]);
    fs::write(a.path().join("b"), rng.bytes(100_000)).unwrap();
    b.ok(&argv!["run", a.path()]);
    let full = b.home.path().join("full.key");
    b.ok(&argv!["key", "export", &full]);
    chaos::hostile::unsign_index(&engine::Repository::open(&b.repo, Some(&full)).unwrap());
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert!(p["segments_written"].as_u64().unwrap() >= 1, "{p}");
    b.ok(&argv!["prune", "--unsafe-now"]);
    let m = b.ok(&argv!["--json", "migrate"]).json();
    assert!(m["segments_signed"].as_u64().unwrap() >= 1, "{m}");
    let o = b.ok(&argv!["--json", "run", "--no-cache", a.path()]);
    assert_eq!(o.json()["new_bytes"], 0, "{}", o.stderr);
}

/// Once compacted, the index stays: prunes with nothing to do write no segments (one set per
/// voucher is as compact as it gets).
#[test]
fn prune_with_nothing_to_do_writes_nothing() {
    let (b, laptop) = owner_and_laptop();
    let mut rng = chaos::testkit::Rng::new(7);
    for key in [None, Some(&laptop)] {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), rng.bytes(100_000)).unwrap();
        let mut args = argv!["run", d.path()].to_vec();
        if let Some(k) = key {
            args.splice(0..0, argv!["--key", k]);
        }
        b.ok(&args);
        b.ok(&args);
    }
    let first = b.ok(&argv!["--json", "prune"]).json();
    assert!(first["segments_written"].as_u64().unwrap() >= 2, "{first}");
    for _ in 0..2 {
        let p = b.ok(&argv!["--json", "prune"]).json();
        assert_eq!(
            (p["segments_written"].as_u64(), p["segments_condemned"].as_u64()),
            (Some(0), Some(0)),
            "{p}"
        );
    }
}
