//! Parity end to end (issue #18; docs/format.md, "Parity"): with the default 5 %, damage within
//! the bound in a pack (13 flipped bytes, a zeroed 4 KiB block, a 48 KiB burst, a damaged
//! trailer, both parity footers and a table) is repaired on read: restore gives back every file
//! byte for byte and says what it repaired, and `check --read-data` names the pack corrected.
//! Beyond the bound it is damage as without parity. Parity 0 writes packs as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use chaos::argv;
use chaos::oracle::{file_deps, key_file, FileDeps};
use chaos::testkit::{assert_same_tree, restored_path, run_measured, Bakare, Outcome, Rng, TestDir};
use engine::format::parity::{Layout, GROUP, SHARD, TAIL};

const MIB: u64 = (SHARD * GROUP) as u64;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// A few large random files (several MiB each, so packs span several 1 MiB groups) and ~200
/// small ones (bundled).
fn tree(seed: u64, large: usize) -> TestDir {
    let mut rng = Rng::new(seed);
    let mut t = TestDir::new();
    for i in 0..200 {
        let n = 50 + rng.below(3000) as usize;
        t = t.file(format!("small/{}/s{i}.txt", i % 7), rng.text(n));
    }
    for i in 0..large {
        let n = (5 << 20) + rng.below(2 << 20) as usize;
        t = t.file(format!("large/l{i}.bin"), rng.bytes(n));
    }
    t
}

/// `args` run against the repository at `repo` (a copy of `b`'s, with the same key).
fn on(b: &Bakare, repo: &Path, args: &[std::ffi::OsString]) -> Outcome {
    let mut c = b.command(args);
    c.env("BAKARE_REPO", repo);
    run_measured(c)
}

fn copy_repo(from: &Path, to: &Path) {
    let s = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(s.success());
}

/// A pack's size and data length (what comes before its parity).
fn data_len(repo: &Path, pack: &str) -> (u64, u64) {
    let backend = io::LocalBackend::new(repo);
    let size = fs::metadata(repo.join(pack)).unwrap().len();
    let parity = engine::pack::locate_parity(&backend, pack, size).unwrap();
    (size, engine::pack::data_len(parity.as_ref(), size))
}

fn packs(repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for dir in fs::read_dir(repo.join("packs")).unwrap() {
        let dir = dir.unwrap().path();
        for f in fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            out.push(f.strip_prefix(repo).unwrap().to_str().unwrap().to_string());
        }
    }
    out.sort();
    out
}

fn restore_into(b: &Bakare, repo: &Path, snap: &str) -> (Outcome, tempfile::TempDir) {
    let target = tempfile::tempdir().unwrap();
    let o = on(b, repo, &argv!["restore", snap, "--target", target.path()]);
    (o, target)
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut d = fs::read(path).unwrap();
    f(&mut d);
    fs::write(path, d).unwrap();
}

fn corrected_packs(check: &serde_json::Value) -> Vec<String> {
    check["corrected"].as_array().unwrap().iter().map(|c| c["pack"].as_str().unwrap().to_string()).collect()
}

#[test]
fn damage_within_the_bound_is_repaired_on_read_and_beyond_it_stays_local() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let cfg = b.ok(&argv!["--json", "config"]).json();
    assert_eq!(cfg["parity"], 5, "{cfg}");
    assert_eq!(fs::read(b.repo.join("config")).unwrap()[8], 5, "a config with parity is version 5");
    let src = tree(7, 3);
    let snap = b.ok(&argv!["--json", "run", src.path()]).json()["snapshot"].as_str().unwrap().to_string();
    let deps: Vec<FileDeps> = file_deps(&b.repo, &key_file(b.home.path()));

    // The largest pack that holds a large file's data: the one every case damages.
    let mut candidates: Vec<(u64, String)> = deps
        .iter()
        .filter(|f| f.path.windows(6).any(|w| w == b"large/"))
        .flat_map(|f| f.content.iter().map(|(p, _, _)| p.clone()))
        .map(|p| (data_len(&b.repo, &p).1, p))
        .collect();
    candidates.sort();
    let (d, pack) = candidates.pop().unwrap();
    let (size, _) = data_len(&b.repo, &pack);
    assert!(d >= 3 * MIB, "pack of {d} bytes: the cases need several full groups");
    let layout = Layout::new(d, 5).unwrap();
    assert_eq!(layout.total_len(), size);
    let overhead = (size - d) as f64 / d as f64;
    eprintln!("pack {pack}: {d} bytes of data, {size} with parity: {:.2} % overhead", overhead * 100.0);
    let full = d / MIB * MIB; // the full groups: 13 recovery shards each
    let mut rng = Rng::new(99);
    let end_shard = (d - 1) / SHARD as u64 * SHARD as u64;

    type Damage = Box<dyn Fn(&mut Vec<u8>, &mut Rng)>;
    let cases: Vec<(&str, Damage, bool)> = vec![
        (
            "13 random flipped bytes",
            Box::new(move |p, rng| {
                for _ in 0..13 {
                    let at = rng.below(full) as usize;
                    p[at] ^= 1 + rng.below(255) as u8;
                }
            }),
            true,
        ),
        (
            "one aligned 4 KiB block zeroed",
            Box::new(move |p, rng| {
                let at = rng.below(full / SHARD as u64) as usize * SHARD;
                p[at..at + SHARD].fill(0);
            }),
            true,
        ),
        (
            "a 48 KiB burst of zeros",
            Box::new(move |p, rng| {
                let at = rng.below(full - (48 << 10)) as usize;
                p[at..at + (48 << 10)].fill(0);
            }),
            true,
        ),
        (
            "the trailer's end and the footer",
            Box::new(move |p, _| {
                let from = end_shard.max(d - 2048) as usize;
                p[from..d as usize].fill(0x55);
            }),
            false,
        ),
        (
            "both parity footers, a table copy and a data byte",
            Box::new(move |p, rng| {
                let n = p.len();
                p[n - TAIL..].fill(0);
                p[n - TAIL - 100] ^= 0x10;
                let at = rng.below(full) as usize;
                p[at] ^= 0x80;
            }),
            true,
        ),
    ];
    let work = tempfile::tempdir().unwrap();
    for (i, (name, damage, reads_it)) in cases.iter().enumerate() {
        let repo = work.path().join(format!("case{i}"));
        copy_repo(&b.repo, &repo);
        edit(&repo.join(&pack), |p| damage(p, &mut rng));
        assert_ne!(fs::read(repo.join(&pack)).unwrap(), fs::read(b.repo.join(&pack)).unwrap(), "{name}");

        let (o, target) = restore_into(&b, &repo, &snap);
        let said = format!("{}{}", o.stdout_str(), o.stderr);
        assert_eq!(o.code, 0, "{name}: {said}");
        assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
        if *reads_it {
            assert!(said.contains(&format!("note: {pack}: ")), "{name}: {said}");
            assert!(said.contains("repaired from parity"), "{name}: {said}");
        }
        let o = on(&b, &repo, &argv!["--json", "check", "--read-data"]);
        assert_eq!(o.code, 0, "{name}: {}{}", o.stdout_str(), o.stderr);
        let c = o.json();
        assert_eq!(c["ok"], true, "{name}: {c}");
        assert_eq!(corrected_packs(&c), vec![pack.clone()], "{name}: {c}");
        let human = on(&b, &repo, &argv!["check", "--read-data"]).stdout_str();
        assert!(human.contains(&format!("corrected: {pack}: ")), "{name}: {human}");
        eprintln!("{name}: repaired ({})", c["corrected"][0]["blocks"]);
    }

    // Beyond the bound: 200 KiB zeroed inside one MiB, within one chunk of a large file. Only
    // the files whose data was there are lost (here that file), and check says it is damage.
    let (victim, at) = deps
        .iter()
        .filter(|f| f.path.windows(6).any(|w| w == b"large/"))
        .find_map(|f| {
            f.content.iter().filter(|(p, _, _)| *p == pack).find_map(|(_, off, len)| {
                let start = (off + 16).max(off / MIB * MIB);
                let end = (off + len).min((off / MIB + 1) * MIB);
                (end >= start + (200 << 10)).then_some((f, start))
            })
        })
        .expect("a chunk of a large file with 200 KiB inside one MiB");
    let repo = work.path().join("beyond");
    copy_repo(&b.repo, &repo);
    edit(&repo.join(&pack), |p| p[at as usize..at as usize + (200 << 10)].fill(0));
    let o = on(&b, &repo, &argv!["--json", "check", "--read-data"]);
    assert_eq!(o.code, 3, "{}", o.stderr);
    let c = o.json();
    assert_eq!(c["ok"], false);
    assert!(c["damage"].as_array().unwrap().iter().any(|d| d["object"] == pack.as_str()), "{c}");
    assert!(corrected_packs(&c).is_empty(), "{c}");
    let (o, target) = restore_into(&b, &repo, &snap);
    assert_eq!(o.code, 3, "{}", o.stderr);
    let root = restored_path(target.path(), src.path());
    let victim = PathBuf::from(String::from_utf8(victim.path.clone()).unwrap());
    let rel = victim.strip_prefix(src.path()).unwrap();
    assert!(!root.join(rel).exists(), "a damaged file is never left behind");
    for f in deps.iter().map(|f| PathBuf::from(String::from_utf8(f.path.clone()).unwrap())) {
        if f != victim && f.is_file() {
            let r = root.join(f.strip_prefix(src.path()).unwrap());
            assert_eq!(fs::read(&f).unwrap(), fs::read(&r).unwrap(), "{}", f.display());
        }
    }
}

#[test]
fn parity_zero_writes_packs_as_before_and_config_parity_applies_to_new_packs() {
    let b = bakare();
    b.ok(&argv!["init", "--parity", "0"]);
    assert_eq!(fs::read(b.repo.join("config")).unwrap()[8], 4, "no parity: version 4 as before");
    let first = tree(1, 1);
    let snap1 = b.ok(&argv!["--json", "run", first.path()]).json()["snapshot"].as_str().unwrap().to_string();
    let old = packs(&b.repo);
    assert!(!old.is_empty());
    for p in &old {
        let bytes = fs::read(b.repo.join(p)).unwrap();
        assert_eq!(&bytes[bytes.len() - 8..], b"BKPKEND2", "{p}");
        assert_eq!(data_len(&b.repo, p).1, bytes.len() as u64);
    }
    let human = b.ok(&argv!["config"]).stdout_str();
    assert!(human.contains("parity       off"), "{human}");

    // From now on, new packs get 5 %; the old ones read as they are.
    b.ok(&argv!["config", "--parity", "5"]);
    assert_eq!(b.ok(&argv!["--json", "config"]).json()["parity"], 5);
    assert_eq!(fs::read(b.repo.join("config")).unwrap()[8], 5);
    let second = tree(2, 2);
    let snap2 = b.ok(&argv!["--json", "run", second.path()]).json()["snapshot"].as_str().unwrap().to_string();
    let new: Vec<String> = packs(&b.repo).into_iter().filter(|p| !old.contains(p)).collect();
    assert!(!new.is_empty());
    let mut biggest = (0u64, 0u64);
    for p in &new {
        let (size, d) = data_len(&b.repo, p);
        assert!(d < size, "{p} has parity");
        assert_eq!(Layout::new(d, 5).unwrap().total_len(), size, "{p}");
        biggest = biggest.max((d, size));
    }
    let (d, size) = biggest;
    assert!(d >= 4 * MIB, "a pack of several MiB: {d}");
    let overhead = (size - d) as f64 / d as f64;
    eprintln!("largest new pack: {d} bytes of data, {size} in all: {:.2} % overhead", overhead * 100.0);
    // 13 shards of 4 KiB per MiB (5.08 %), the tables (0.4 %), the partial last group.
    assert!((0.054..0.058).contains(&overhead), "{overhead}");
    for (snap, src) in [(&snap1, &first), (&snap2, &second)] {
        let target = tempfile::tempdir().unwrap();
        b.ok(&argv!["restore", snap, "--target", target.path()]);
        assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    }
    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    assert!(corrected_packs(&c).is_empty());
    // Back to 0: packs with parity are still there, so the config stays version 5 (an older
    // bakare must keep refusing the repository); new packs end in the footer; all restore.
    b.ok(&argv!["config", "--parity", "0"]);
    assert_eq!(fs::read(b.repo.join("config")).unwrap()[8], 5);
    let c = b.ok(&argv!["--json", "config"]).json();
    assert_eq!(c["parity"], 0, "{c}");
    let more = TestDir::new().file("later.bin", Rng::new(77).bytes(3 << 20));
    b.ok(&argv!["run", more.path()]);
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
    assert!(b.run(&argv!["config", "--parity", "101"]).code != 0);
}

/// `sync` carries a config of a newer format version to a mirror made before it: a mirror made
/// without parity (version 4) that receives packs with parity must become version 5 too, or an
/// older bakare would read those packs as damaged.
#[test]
fn sync_carries_the_parity_version_to_an_older_mirror() {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
    b.ok(&argv!["init", "--parity", "0"]);
    let src = TestDir::new().file("a.bin", Rng::new(3).bytes(2 << 20));
    b.ok(&argv!["run", src.path()]);
    let mirror = tempfile::tempdir().unwrap();
    let dest = mirror.path().join("m");
    b.ok(&argv!["sync", "--from", &b.repo, "--to", &dest]);
    assert_eq!(fs::read(dest.join("config")).unwrap()[8], 4);
    b.ok(&argv!["config", "--parity", "5"]);
    let more = TestDir::new().file("b.bin", Rng::new(4).bytes(2 << 20));
    b.ok(&argv!["run", more.path()]);
    b.ok(&argv!["sync", "--from", &b.repo, "--to", &dest]);
    assert_eq!(fs::read(dest.join("config")).unwrap()[8], 5, "the mirror's config is the source's version");
    assert_eq!(fs::read(dest.join("config")).unwrap(), fs::read(b.repo.join("config")).unwrap());
}
