//! The corruption suite: on a repository of three snapshots, damage one random repository file
//! per case (flip a byte, truncate, zero a 4 KiB block, delete), seeded. For every case:
//! `check --read-data` detects it (deleting a snapshot record is indistinguishable from
//! `forget`, and deleting the pending copy that a backup leaves beside its committed snapshot
//! loses nothing: both are counted apart); no restore ever yields a file whose bytes differ from the
//! source; every file whose restore does not depend on the damaged object restores; every
//! lost file is named by `check`, and every file below a path `check` names did fail to
//! restore (nothing is named that is not lost). A damage that changes nothing (zeroing zeros)
//! is counted apart, not as detected. A failed case keeps its damaged repository and a copy of
//! the key and says how to look at them: the seed alone cannot rebuild the repository (keys and
//! age's encryption draw fresh randomness). 200 cases by default; BAKARE_CORRUPTION_CASES=N for
//! more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chaos::argv;
use chaos::oracle::{file_deps, key_file, FileDeps};
use chaos::testkit::{copy_tree, files_under, Bakare, Rng};

fn write_state(root: &Path, rng: &mut Rng, round: usize) {
    for d in ["docs/notes", "media", "code/src/deep"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let small = if round == 0 { 0..30 } else { 0..3 };
    for i in small {
        let i = if round == 0 { i } else { rng.below(30) as usize };
        let n = 50 + rng.below(6000) as usize;
        let dir = ["docs/notes", "code/src", "code/src/deep"][i % 3];
        fs::write(root.join(dir).join(format!("s{i}.txt")), rng.text(n)).unwrap();
    }
    for i in 0..if round == 0 { 5 } else { 1 } {
        let i = if round == 0 { i } else { rng.below(5) as usize };
        let n = 40_000 + rng.below(150_000) as usize;
        fs::write(root.join("media").join(format!("m{i}.bin")), rng.bytes(n)).unwrap();
    }
    let big = root.join("media/big.bin");
    let mut data = fs::read(&big).unwrap_or_default();
    data.extend(rng.bytes(if round == 0 { 1_500_000 } else { 300_000 }));
    fs::write(&big, data).unwrap();
    fs::create_dir_all(root.join(format!("round{round}"))).unwrap();
    fs::write(root.join(format!("round{round}/new.txt")), rng.text(4000)).unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Flip,
    Truncate,
    Zero4k,
    Delete,
}

/// Applies the damage; false when it changed nothing (zeroing bytes that were zero).
fn apply(path: &Path, damage: Damage, rng: &mut Rng) -> bool {
    let mut data = fs::read(path).unwrap();
    match damage {
        Damage::Delete => {
            fs::remove_file(path).unwrap();
            return true;
        }
        Damage::Flip => {
            let at = rng.below(data.len() as u64) as usize;
            data[at] ^= 1 << rng.below(8);
        }
        Damage::Truncate => data.truncate(rng.below(data.len() as u64) as usize),
        Damage::Zero4k => {
            let at = rng.below(data.len() as u64) as usize;
            let end = (at + 4096).min(data.len());
            if data[at..end].iter().all(|&b| b == 0) {
                return false;
            }
            data[at..end].fill(0);
        }
    }
    fs::write(path, data).unwrap();
    true
}

#[derive(Default)]
struct Counts {
    cases: AtomicU64,
    detected: AtomicU64,
    snapshot_deleted: AtomicU64,
    copy_deleted: AtomicU64,
    no_op: AtomicU64,
    restored: AtomicU64,
    lost: AtomicU64,
    wrong: AtomicU64,
}

struct World {
    b: Bakare,
    src: PathBuf,
    /// Source as it was at each snapshot, and the snapshot's id.
    states: Vec<(String, PathBuf)>,
    deps: Vec<FileDeps>,
    objects: Vec<PathBuf>,
    _dir: tempfile::TempDir,
}

fn build() -> World {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    // Without parity: its cases are damage as such (with parity most are repaired on read:
    // tests/parity.rs).
    b.ok(&argv!["init", "--parity", "0"]);
    let mut rng = Rng::new(0xBAD5EED);
    let mut states = Vec::new();
    for round in 0..3 {
        write_state(&src, &mut rng, round);
        let j = b.ok(&argv!["--json", "run", "--workers", "2", &src]).json();
        let state = dir.path().join(format!("state{round}"));
        copy_tree(&src, &state);
        states.push((j["snapshot"].as_str().unwrap().to_string(), state));
    }
    let deps = file_deps(&b.repo, &key_file(b.home.path()));
    let mut objects = files_under(&b.repo);
    objects.retain(|p| !p.starts_with("tmp"));
    objects.sort();
    World { b, src, states, deps, objects, _dir: dir }
}

fn run_case(w: &World, seed: u64, counts: &Counts, failures: &Mutex<Vec<String>>) {
    let mut rng = Rng::new(seed);
    let object = &w.objects[rng.below(w.objects.len() as u64) as usize];
    let name = object.to_string_lossy().into_owned();
    let damage = match rng.below(20) {
        0..=9 => Damage::Flip,
        10..=12 => Damage::Truncate,
        13..=15 => Damage::Zero4k,
        _ => Damage::Delete,
    };
    let case_dir = tempfile::tempdir().unwrap();
    let repo = case_dir.path().join("repo");
    copy_tree(&w.b.repo, &repo);
    counts.cases.fetch_add(1, Ordering::Relaxed);
    if !apply(&repo.join(object), damage, &mut rng) {
        counts.no_op.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let fail =
        |msg: String| failures.lock().unwrap().push(format!("case {seed:#x} ({damage:?} {name}): {msg}"));
    let run = |args: &[std::ffi::OsString]| {
        let mut c = w.b.command(args);
        c.env("BAKARE_REPO", &repo);
        chaos::testkit::run_measured(c)
    };
    let check = run(&argv!["--json", "check", "--read-data"]);
    let deleted_snapshot = matches!(damage, Damage::Delete) && name.starts_with("snapshots/");
    // The pending copy of a committed snapshot is redundant (prune removes it): losing it
    // loses nothing, so there is nothing to detect. Every file must still restore.
    let deleted_copy = matches!(damage, Damage::Delete)
        && name.strip_prefix("pending/").is_some_and(|id| w.states.iter().any(|(s, _)| s == id));
    if check.code == 0 {
        if deleted_snapshot {
            counts.snapshot_deleted.fetch_add(1, Ordering::Relaxed);
        } else if deleted_copy {
            counts.copy_deleted.fetch_add(1, Ordering::Relaxed);
        } else {
            fail(format!("check --read-data found nothing: {}", check.stdout_str()));
        }
    } else {
        counts.detected.fetch_add(1, Ordering::Relaxed);
    }
    if check.code == 1 && !name.starts_with("config") {
        fail(format!("check failed instead of reporting: {}", check.stderr));
    }
    // Paths check names, per snapshot.
    let named: Vec<(String, String)> = if check.code == 3 {
        check.json()["affected"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["snapshot"].as_str().unwrap().to_string(), a["path"].as_str().unwrap().to_string()))
            .collect()
    } else {
        Vec::new()
    };
    // What really failed to restore: (snapshot object, path).
    let mut lost: BTreeSet<(String, String)> = BTreeSet::new();
    for (snap, state) in &w.states {
        let target = case_dir.path().join(format!("restore-{}", &snap[..8]));
        let r = run(&argv!["restore", snap, "--target", &target]);
        if ![0, 3].contains(&r.code) && !name.starts_with("config") && name != format!("snapshots/{snap}") {
            fail(format!("restore of {snap} failed: {}", r.stderr));
        }
        for f in w.deps.iter().filter(|f| f.snapshot == *snap) {
            let p = String::from_utf8(f.path.clone()).unwrap();
            let rel = Path::new(&p).strip_prefix(&w.src).unwrap();
            match fs::read(target.join(p.trim_start_matches('/'))) {
                Ok(bytes) => {
                    counts.restored.fetch_add(1, Ordering::Relaxed);
                    if bytes != fs::read(state.join(rel)).unwrap() {
                        counts.wrong.fetch_add(1, Ordering::Relaxed);
                        fail(format!("{p} restored with wrong bytes"));
                    }
                }
                Err(_) => {
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                    lost.insert((format!("snapshots/{snap}"), p.clone()));
                    if !f.objects.contains(&name) {
                        fail(format!("{p} does not depend on {name} but was not restored"));
                    }
                    let snap_obj = format!("snapshots/{snap}");
                    let covers = |(s, a): &(String, String)| {
                        *s == snap_obj && (p == *a || a == "/" || p.starts_with(&format!("{a}/")))
                    };
                    let whole = name.starts_with("config") || deleted_snapshot;
                    if !whole && !named.iter().any(covers) {
                        fail(format!("{p} was lost but check did not name it"));
                    }
                }
            }
        }
    }
    // And the other way: every file below a path check names as lost did fail to restore
    // (naming `/` for one lost file would pass the check above and mislead its reader).
    for (snap_obj, a) in &named {
        let below = |p: &str| p == a || a == "/" || p.starts_with(&format!("{a}/"));
        for f in w.deps.iter().filter(|f| format!("snapshots/{}", f.snapshot) == *snap_obj) {
            let p = String::from_utf8(f.path.clone()).unwrap();
            if below(&p) && !lost.contains(&(snap_obj.clone(), p.clone())) {
                fail(format!("check named {a} in {snap_obj} as lost, but {p} restored"));
            }
        }
    }
    // A failed case leaves its damaged repository for a look (the seed alone cannot rebuild
    // it: keys, pack keys and age's encryption draw fresh randomness every run).
    if failures.lock().unwrap().iter().any(|f| f.starts_with(&format!("case {seed:#x} "))) {
        let kept = case_dir.keep();
        let key = kept.join("bakare.key");
        fs::copy(key_file(w.b.home.path()), &key).unwrap();
        fail(format!(
            "its damaged repository is kept: bakare --repo {} --key {} check --read-data",
            kept.join("repo").display(),
            key.display()
        ));
    }
}

#[test]
fn random_damage_is_detected_and_never_restores_wrong_bytes() {
    let cases: u64 =
        std::env::var("BAKARE_CORRUPTION_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let w = build();
    assert!(w.objects.len() >= 8, "{:?}", w.objects);
    let counts = Counts::default();
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (w, counts, failures) = (&w, &counts, &failures);
            s.spawn(move || {
                for i in (t..cases).step_by(2) {
                    run_case(w, 0x5EED_0000 + i, counts, failures);
                }
            });
        }
    });
    let kinds: BTreeSet<_> =
        w.objects.iter().map(|o| o.iter().next().unwrap().to_string_lossy().into_owned()).collect();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "corruption suite: {} cases over {} objects ({kinds:?}): {} detected, {} snapshot deletions (undetectable, like forget), \
         {} deletions of a committed snapshot's pending copy (harmless), {} changed nothing; files restored {}, lost {}, \
         wrong bytes {}",
        c(&counts.cases),
        w.objects.len(),
        c(&counts.detected),
        c(&counts.snapshot_deleted),
        c(&counts.copy_deleted),
        c(&counts.no_op),
        c(&counts.restored),
        c(&counts.lost),
        c(&counts.wrong)
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(c(&counts.wrong), 0);
    assert_eq!(c(&counts.cases), cases);
    assert!(c(&counts.lost) > 0 && c(&counts.restored) > 0);
}
