//! Many computers, one repository, no locks (design.md section 4; docs/concurrency.md).
//!
//! - Several writers back up different and overlapping trees at the same time, each with its
//!   own cache directory: all succeed, every snapshot restores, check is clean.
//! - A writer is stopped (SIGSTOP, as a closed laptop lid) at each step of the commit protocol
//!   while another process forgets the snapshot it deduplicated against and prunes (phase 1);
//!   the clock moves past the grace period; prune runs phase 2; the writer resumes (SIGCONT,
//!   and its clock too has jumped, as after a suspend). It must complete (exit 0 or 3), its
//!   snapshot restore byte for byte, and check find no damage. Writers delete nothing: the
//!   owner's next prune removes every pending copy, committed or given up by its writer.
//! - A seeded soak mixes writers paused at random steps, forgets, prunes and clock jumps
//!   (BAKARE_SOAK_ROUNDS, default 30, and BAKARE_SOAK_SEED for longer or other runs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use chaos::argv;
use chaos::testkit::{assert_same_tree, copy_tree, restored_path, Bakare, FakeClock, Rng, HOUR_NS};

fn faulty() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"))
}

/// A source tree: files shared by every tree of the same `shared` seed (so writers deduplicate
/// against each other) and files of its own.
fn make_tree(root: &Path, shared: u64, own: u64) -> PathBuf {
    let mut rng = Rng::new(shared);
    fs::create_dir_all(root.join("shared")).unwrap();
    for i in 0..3 {
        let n = 200_000 + rng.below(900_000) as usize;
        fs::write(root.join(format!("shared/s{i}.bin")), rng.bytes(n)).unwrap();
    }
    for i in 0..20 {
        let n = rng.below(3000) as usize;
        fs::write(root.join(format!("shared/t{i}.txt")), rng.text(n)).unwrap();
    }
    let mut rng = Rng::new(own);
    fs::create_dir_all(root.join("own")).unwrap();
    for i in 0..2 {
        let n = 100_000 + rng.below(600_000) as usize;
        fs::write(root.join(format!("own/o{i}.bin")), rng.bytes(n)).unwrap();
    }
    fs::write(root.join("own/note.txt"), rng.text(1500)).unwrap();
    root.to_path_buf()
}

fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Waits until the child stops itself (true) or exits (false).
fn wait_stopped(child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if state(child.id()) == Some('T') {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the writer neither stopped nor exited");
}

fn resume(child: &Child) {
    // SAFETY: kill(2) sends SIGCONT to our own child process; no memory is involved.
    let r = unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    assert_eq!(r, 0);
}

fn spawn_writer(b: &Bakare, src: &Path, point: Option<&str>, cache: &Path) -> Child {
    let mut c = b.command(&argv!["--json", "run", "--workers", "1", src]);
    c.env("BAKARE_CACHE_DIR", cache).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(p) = point {
        c.env("BAKARE_CRASH", format!("{p}:stop"));
    }
    c.spawn().unwrap()
}

/// Waits for a writer: it must succeed; returns its snapshot id.
fn finish_writer(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(code == 0 || code == 3, "{what}: exit {code}: {stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    j["snapshot"].as_str().unwrap().to_string()
}

fn restores_exactly(b: &Bakare, id: &str, src: &Path) {
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", id, "--target", t.path()]);
    assert_same_tree(src, &restored_path(t.path(), src));
}

fn check_clean(b: &Bakare, what: &str) {
    let c = b.run(&argv!["--json", "check", "--read-data"]);
    assert_eq!(c.code, 0, "{what}: {}\n{}", c.stdout_str(), c.stderr);
}

#[test]
fn several_writers_at_once() {
    let b = faulty();
    b.ok(&argv!["init"]);
    let dir = tempfile::tempdir().unwrap();
    // Three computers: two share most of their data, the third has its own.
    let trees: Vec<PathBuf> = [(1, 10), (1, 11), (2, 12), (1, 13)]
        .iter()
        .enumerate()
        .map(|(i, (shared, own))| make_tree(&dir.path().join(format!("host{i}")), *shared, *own))
        .collect();
    let writers: Vec<(Child, &PathBuf)> = trees
        .iter()
        .enumerate()
        .map(|(i, t)| (spawn_writer(&b, t, None, &dir.path().join(format!("cache{i}"))), t))
        .collect();
    let done: Vec<(String, &PathBuf)> =
        writers.into_iter().map(|(c, t)| (finish_writer(c, &t.display().to_string()), t)).collect();
    for (id, t) in &done {
        restores_exactly(&b, id, t);
    }
    check_clean(&b, "after concurrent writers");
    // Writers running at the same time cannot deduplicate against each other's data in
    // flight; afterwards, everything is found: a new computer with the same files stores nothing.
    let j = b.ok(&argv!["--json", "run", "--no-cache", &trees[1]]).json();
    assert_eq!(j["new_bytes"], 0, "{j}");
}

/// The steps of the commit protocol where a writer can be suspended.
const STEPS: [&str; 7] = [
    "after:packs:1",      // its data uploaded, nothing refers to it yet
    "before:index:1",     // about to write its index segment
    "after:index:1",      // segment written, no snapshot yet
    "before:pending:1",   // about to write the pending snapshot
    "after:pending:1",    // pending written, view age not yet checked
    "before:snapshots:1", // checked, about to promote
    "after:snapshots:1",  // promoted (the pending copy stays, for the owner's prune)
];

/// Objects under `dir` of a local repository (none when the directory does not exist).
fn objects(b: &Bakare, dir: &str) -> usize {
    fs::read_dir(b.repo.join(dir)).map(|d| d.count()).unwrap_or(0)
}

/// Writers delete nothing: once every writer has finished, a prune leaves no pending snapshot
/// and no abandonment marker behind.
fn no_leftovers(b: &Bakare, what: &str) {
    assert_eq!(objects(b, "pending"), 0, "{what}: pending snapshots left");
    assert_eq!(objects(b, "abandoned"), 0, "{what}: abandonment markers left");
}

/// One interleaving: the writer is suspended at `step` while another computer forgets the
/// snapshot the writer deduplicated against and runs prune phase 1. With `late`, the writer
/// resumes only after the grace period and phase 2 (its view is stale: it must back up again);
/// otherwise it resumes and commits before them (phase 2 must rescue what it uses). Returns
/// the packs phase 2 rescued and the pending snapshots the next prune removed as abandoned.
fn interleaving(step: &str, late: bool) -> (u64, u64) {
    let mut b = faulty();
    let clock = FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let dir = tempfile::tempdir().unwrap();
    let old = make_tree(&dir.path().join("old"), 1, 100);
    let first = b.ok(&argv!["--json", "run", "--workers", "1", &old]).json()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // The writer's tree shares data with the snapshot that is about to be forgotten.
    let src = make_tree(&dir.path().join("new"), 1, 200);
    let mut w = spawn_writer(&b, &src, Some(step), &dir.path().join("cache-w"));
    assert!(wait_stopped(&mut w), "{step}: the writer did not reach the step");
    b.ok(&argv!["forget", &first]);
    b.ok(&argv!["prune"]);
    let what = format!("{step} ({})", if late { "resumed after phase 2" } else { "resumed before phase 2" });
    let id = if late {
        clock.advance(25 * HOUR_NS);
        let p = b.ok(&argv!["--json", "prune"]).json();
        assert!(!p["deleted"].as_array().unwrap().is_empty(), "{what}: phase 2 ran: {p}");
        resume(&w);
        finish_writer(w, &what)
    } else {
        resume(&w);
        let id = finish_writer(w, &what);
        clock.advance(25 * HOUR_NS);
        id
    };
    let p = b.ok(&argv!["--json", "prune"]).json();
    let rescued =
        p["deleted"].as_array().unwrap().iter().map(|d| d["rescued"].as_u64().unwrap()).sum::<u64>();
    let abandoned = p["abandoned_removed"].as_u64().unwrap();
    no_leftovers(&b, &what);
    restores_exactly(&b, &id, &src);
    check_clean(&b, &what);
    // After another full prune cycle everything the writer committed is still there.
    b.ok(&argv!["prune"]);
    clock.advance(25 * HOUR_NS);
    b.ok(&argv!["prune"]);
    restores_exactly(&b, &id, &src);
    check_clean(&b, &what);
    eprintln!("{what}: writer ok, {rescued} packs rescued, {abandoned} abandoned pending snapshots removed");
    (rescued, abandoned)
}

#[test]
fn a_writer_suspended_at_any_step_survives_forget_and_prune() {
    for (i, step) in STEPS.iter().enumerate() {
        // Resumed after phase 2 at a step before its view-age check (the first five), the
        // writer gives its pending snapshot up, backs up again, and the owner's prune removes
        // the abandoned one; past the check, it promotes what it has.
        let (_, abandoned) = interleaving(step, true);
        assert_eq!(abandoned, u64::from(i < 5), "{step}: abandoned pending snapshots removed");
        let (rescued, abandoned) = interleaving(step, false);
        assert_eq!(abandoned, 0, "{step}: resumed in time, nothing abandoned");
        // Suspended before its pending snapshot existed, the writer used packs that phase 1
        // condemned: phase 2 must have rescued them.
        if i < 4 {
            assert!(rescued >= 1, "{step}: nothing rescued");
        }
    }
}

/// A pending snapshot without its committed copy stays a root of prune unless its writer proved
/// it gave it up: a marker anyone with a backup key could write (one that does not prove it)
/// changes nothing, and the data the pending snapshot references outlives full prune cycles.
#[test]
fn a_pending_snapshot_goes_only_when_committed_or_given_up_by_its_writer() {
    let mut b = faulty();
    let clock = FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let dir = tempfile::tempdir().unwrap();
    let src = make_tree(&dir.path().join("src"), 3, 300);
    // Killed right after its pending snapshot: in flight, as far as anyone can tell.
    let mut c = b.command(&argv!["--json", "run", "--workers", "1", &src]);
    c.env("BAKARE_CRASH", "after:pending:1");
    let o = chaos::testkit::run_measured(c);
    assert_eq!(o.code, 128 + libc::SIGKILL, "{}", o.stderr);
    let names: Vec<String> = fs::read_dir(b.repo.join("pending"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let id = &names[0];
    let markers = b.repo.join("abandoned");
    fs::create_dir_all(&markers).unwrap();
    // The right magic and length, but a proof computed without the snapshot's plaintext.
    let mut forged = b"BKABAND1".to_vec();
    forged.extend_from_slice(&[0x5a; 32]);
    fs::write(markers.join(id), &forged).unwrap();
    // A marker whose pending snapshot is gone goes.
    let orphan = "00".repeat(32);
    fs::write(markers.join(&orphan), &forged).unwrap();
    let o = b.ok(&argv!["--json", "prune"]);
    let p = o.json();
    assert_eq!((p["pending"].as_u64(), p["abandoned_removed"].as_u64()), (Some(1), Some(0)), "{p}");
    assert!(o.stderr.contains(&format!("abandoned/{id}: does not prove")), "{}", o.stderr);
    assert!(b.repo.join("pending").join(id).is_file() && markers.join(id).is_file());
    assert!(!markers.join(&orphan).exists(), "the orphan marker stays");
    let c = b.ok(&argv!["--json", "check"]).json();
    assert!(c.to_string().contains("does not prove that its writer gave it up"), "{c}");
    // Two full prune cycles: nothing the pending snapshot references is deleted (check reads
    // all of its data).
    for _ in 0..2 {
        clock.advance(25 * HOUR_NS);
        b.ok(&argv!["prune"]);
    }
    assert!(b.repo.join("pending").join(id).is_file());
    check_clean(&b, "a pending snapshot with a forged marker, after two prune cycles");
}

/// Compares file contents only (the copy's metadata differs).
fn same_contents(a: &Path, b: &Path) {
    let mut names: Vec<_> = fs::read_dir(a).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    let mut other: Vec<_> = fs::read_dir(b).unwrap().map(|e| e.unwrap().file_name()).collect();
    other.sort();
    assert_eq!(names, other, "{} vs {}", a.display(), b.display());
    for n in names {
        let (x, y) = (a.join(&n), b.join(&n));
        if x.is_dir() {
            same_contents(&x, &y);
        } else {
            assert!(fs::read(&x).unwrap() == fs::read(&y).unwrap(), "{} differs", x.display());
        }
    }
}

/// Every snapshot still in the repository restores exactly what its writer saw (`saved`:
/// snapshot id, a copy of the source taken before the backup); returns how many there are.
fn every_snapshot_restores_what_it_saved(b: &Bakare, saved: &[(String, PathBuf)]) -> usize {
    let list = b.ok(&argv!["--json", "snapshots"]).json();
    let snaps = list.as_array().unwrap();
    assert!(!snaps.is_empty());
    for snap in snaps {
        let id = snap["id"].as_str().unwrap();
        let (_, state) = saved.iter().find(|(i, _)| i == id).expect("a snapshot nobody committed");
        let path = PathBuf::from(snap["paths"][0].as_str().unwrap());
        let t = tempfile::tempdir().unwrap();
        b.ok(&argv!["restore", id, "--target", t.path()]);
        same_contents(state, &restored_path(t.path(), &path));
    }
    snaps.len()
}

#[test]
fn seeded_soak_of_writers_forgets_prunes_and_suspends() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let rounds = env("BAKARE_SOAK_ROUNDS", 30);
    let mut rng = Rng::new(env("BAKARE_SOAK_SEED", 0x50A6));
    let mut b = faulty();
    let clock = FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let dir = tempfile::tempdir().unwrap();
    // Three computers, each backing up its own directory, which changes every round.
    let hosts: Vec<PathBuf> = (0..3).map(|h| dir.path().join(format!("host{h}"))).collect();
    // Snapshot id -> a copy of what it saved.
    let mut saved: Vec<(String, PathBuf)> = Vec::new();
    let mut stopped: Vec<(Child, String, PathBuf)> = Vec::new();
    for round in 0..rounds {
        let h = rng.below(3) as usize;
        // A computer with a suspended backup does not start another one.
        let busy =
            |s: &PathBuf| s.file_name().unwrap().to_string_lossy().starts_with(&format!("state-h{h}-"));
        if stopped.iter().any(|(_, _, s)| busy(s)) {
            continue;
        }
        let src = make_tree(&hosts[h], rng.below(2), 1000 + round);
        let state = dir.path().join(format!("state-h{h}-{round}"));
        copy_tree(&src, &state);
        let point =
            if rng.below(3) == 0 { None } else { Some(STEPS[rng.below(STEPS.len() as u64) as usize]) };
        let mut w = spawn_writer(&b, &src, point, &dir.path().join(format!("cache{h}")));
        let what = format!("round {round}, host {h}, {point:?}");
        if point.is_some() && wait_stopped(&mut w) {
            stopped.push((w, what, state));
        } else {
            saved.push((finish_writer(w, &what), state));
        }
        match rng.below(4) {
            0 => {}
            1 => {
                b.ok(&argv!["forget", "--keep-last", (1 + rng.below(3)).to_string()]);
            }
            _ => {
                b.ok(&argv!["forget", "--keep-last", (1 + rng.below(3)).to_string(), "--prune"]);
            }
        }
        clock.advance([0, 6, 13, 25][rng.below(4) as usize] * HOUR_NS);
        b.ok(&argv!["prune"]);
        while !stopped.is_empty() && rng.below(2) == 0 {
            let (w, what, state) = stopped.remove(rng.below(stopped.len() as u64) as usize);
            resume(&w);
            saved.push((finish_writer(w, &what), state));
        }
    }
    for (w, what, state) in stopped {
        resume(&w);
        saved.push((finish_writer(w, &what), state));
    }
    clock.advance(25 * HOUR_NS);
    b.ok(&argv!["prune"]);
    no_leftovers(&b, "after the soak");
    let left = every_snapshot_restores_what_it_saved(&b, &saved);
    check_clean(&b, "after the soak");
    eprintln!(
        "soak: {rounds} rounds, {} snapshots committed, {left} remain, all restore exactly",
        saved.len(),
    );
}

/// Two writers, two prunes and a forget, all running at once in loops while every clock jumps
/// 4 h every 2 s (a whole grace period in 12 s), so phase 2 runs beside everything else: every
/// prune and forget exits 0 (one that finds an object another deleted goes on; a snapshot
/// committed after its view was loaded is read through a fresh index), every backup commits,
/// every snapshot left restores exactly what its writer saw, and `check --read-data` is clean.
/// BAKARE_SOAK_SECONDS (default 30, 20 on S3) sets how long the loops run.
#[test]
fn writers_prunes_and_forgets_run_at_the_same_time() {
    soak_at_once(faulty(), 30);
}

/// The same on a real S3 server (s3s-fs): listings, NotFound and deletions as object storage
/// gives them.
#[test]
fn writers_prunes_and_forgets_run_at_the_same_time_on_s3() {
    let Some(server) = chaos::testkit::S3Server::start() else { return };
    let mut b = faulty();
    server.configure(&mut b, "soak");
    soak_at_once(b, 20);
}

fn soak_at_once(mut b: Bakare, default_secs: u64) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let secs = std::env::var("BAKARE_SOAK_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_secs);
    let clock = FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let dir = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (prunes, forgets, jumps) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (b, dir) = (&b, dir.path());
    let saved: Vec<(String, PathBuf)> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|h| {
                s.spawn(move || {
                    let mut saved = Vec::new();
                    let mut round = 0;
                    while Instant::now() < deadline {
                        let src = make_tree(&dir.join(format!("host{h}")), round % 3, 100 * h + round);
                        let state = dir.join(format!("state-{h}-{round}"));
                        copy_tree(&src, &state);
                        let w = spawn_writer(b, &src, None, &dir.join(format!("cache{h}")));
                        saved.push((finish_writer(w, &format!("host {h}, round {round}")), state));
                        round += 1;
                    }
                    saved
                })
            })
            .collect();
        for _ in 0..2 {
            s.spawn(|| {
                while Instant::now() < deadline {
                    let o = b.run(&argv!["prune"]);
                    assert_eq!(o.code, 0, "prune beside the others: {}\n{}", o.stdout_str(), o.stderr);
                    prunes.fetch_add(1, Relaxed);
                }
            });
        }
        s.spawn(|| {
            while Instant::now() < deadline {
                let o = b.run(&argv!["forget", "--keep-last", "2"]);
                assert_eq!(o.code, 0, "forget beside the others: {}", o.stderr);
                forgets.fetch_add(1, Relaxed);
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        s.spawn(|| {
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_secs(2));
                clock.advance(4 * HOUR_NS);
                jumps.fetch_add(1, Relaxed);
            }
        });
        writers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    // A full cycle after the loops: everything condemned goes.
    clock.advance(25 * HOUR_NS);
    b.ok(&argv!["prune"]);
    clock.advance(25 * HOUR_NS);
    b.ok(&argv!["prune"]);
    let left = every_snapshot_restores_what_it_saved(b, &saved);
    check_clean(b, "after writers, prunes and forgets at once");
    let (p, f, j) = (prunes.load(Relaxed), forgets.load(Relaxed), jumps.load(Relaxed));
    eprintln!(
        "{} backups, {p} prunes, {f} forgets, {j} clock jumps of 4 h in {secs} s; {left} snapshots left, all restore exactly",
        saved.len(),
    );
    assert!(p >= 4 && j >= 6, "the loops ran too little to test anything: {p} prunes, {j} jumps");
}
