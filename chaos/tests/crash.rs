//! Crash at any instant: backups killed with SIGKILL, at seeded random moments and at every
//! step of the write path (before and after committing a pack, writing the index segment,
//! the pending snapshot, the snapshot; a writer deletes nothing). After every kill: all
//! committed snapshots still restore byte for byte, `check` finds no damage (only leftovers
//! of the killed run), and the next backup succeeds. 50 cases. Also: a sync killed mid-way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::ops::Range;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chaos::argv;
use chaos::testkit::{restored_path, Bakare, Rng};

/// Rounds kept in the source: older round directories are deleted, so the tree stays small.
const KEEP: usize = 4;

fn round_files(round: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(0xC0FFEE ^ (round as u64) << 20);
    let mut v = Vec::new();
    for i in 0..2 {
        let n = rng.below(600_000) as usize;
        v.push((format!("r{i}.bin"), rng.bytes(n)));
    }
    let n = rng.below(300_000) as usize;
    v.push(("t.txt".into(), rng.text(n)));
    let n = rng.below(2000) as usize;
    v.push(("small.txt".into(), rng.text(n)));
    v
}

fn round_dir(round: usize) -> String {
    format!("round-{round:03}")
}

/// Adds round `round` and drops the one that falls out of the window.
fn next_round(src: &Path, round: usize) -> Range<usize> {
    let dir = src.join(round_dir(round));
    fs::create_dir(&dir).unwrap();
    for (name, data) in round_files(round) {
        fs::write(dir.join(name), data).unwrap();
    }
    if round >= KEEP {
        fs::remove_dir_all(src.join(round_dir(round - KEEP))).unwrap();
    }
    round.saturating_sub(KEEP - 1)..round + 1
}

/// `<dir>/src` with the 40 base files every snapshot holds (`verify` compares them).
fn base_tree(dir: &Path, seed: u64) -> std::path::PathBuf {
    let src = dir.join("src");
    fs::create_dir_all(src.join("base")).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..40 {
        let n = rng.below(5000) as usize;
        fs::write(src.join("base").join(format!("b{i}.txt")), rng.text(n)).unwrap();
    }
    src
}

/// Restores `id` and checks it holds exactly the rounds in `rounds` (and the base files).
fn verify(b: &Bakare, src: &Path, id: &str, rounds: &Range<usize>) {
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", id, "--target", target.path()]);
    let root = restored_path(target.path(), src);
    let mut dirs: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("round-"))
        .collect();
    dirs.sort();
    let expected: Vec<String> = rounds.clone().map(round_dir).collect();
    assert_eq!(dirs, expected, "snapshot {id}");
    for r in rounds.clone() {
        for (name, data) in round_files(r) {
            let got = fs::read(root.join(round_dir(r)).join(&name)).unwrap();
            assert!(got == data, "snapshot {id}: {}/{name} differs", round_dir(r));
        }
    }
    for i in 0..40 {
        let got = fs::read(root.join("base").join(format!("b{i}.txt"))).unwrap();
        assert_eq!(got, fs::read(src.join("base").join(format!("b{i}.txt"))).unwrap());
    }
}

/// A relay killed mid-sync leaves a valid destination (never a snapshot without its data), and
/// the next sync resumes where it stopped.
#[test]
fn an_interrupted_sync_leaves_a_valid_destination_and_resumes() {
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    let src = chaos::testkit::TestDir::new().file("d/a.txt", "a").file("d/b.txt", "b");
    // Several packs: four workers, and a few backups.
    for i in 0..3 {
        fs::write(src.path().join(format!("round{i}.bin")), Rng::new(i).bytes(2 << 20)).unwrap();
        b.ok(&argv!["run", "--workers", "4", src.path()]);
    }
    let dest = b.home.path().join("mirror");
    // Killed after the third object written to the destination.
    let mut c = b.command(&argv!["sync", "--from", &b.repo, "--to", &dest, "--jobs", "1"]);
    c.env("BAKARE_CRASH", "after:packs:3");
    let o = chaos::testkit::run_measured(c);
    assert_eq!(o.code, 128 + 9, "{}", o.stderr);
    // What is there is a valid repository: no snapshot yet, nothing damaged.
    let c = b.ok(&argv!["--repo", &dest, "--json", "check"]).json();
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["snapshots"], 0);
    let j = b.ok(&argv!["--json", "sync", "--from", &b.repo, "--to", &dest]).json();
    assert!(j["already_present"].as_u64().unwrap() >= 3, "resumed: {j}");
    assert_eq!(j["snapshots"], 3, "{j}");
    let c = b.ok(&argv!["--repo", &dest, "--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["--repo", &dest, "restore", "latest", "--target", t.path()]);
    chaos::testkit::assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    // A different repository is refused.
    let other = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    other.ok(&argv!["init"]);
    let o = b.run(&argv!["sync", "--from", &b.repo, "--to", &other.repo]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("another repository"), "{}", o.stderr);
}

/// The write path's steps, in order, as crash points (see chaos::backend): each run stores
/// new data, so every one of them is reached.
const POINTS: [&str; 8] = [
    "before:packs:1",
    "after:packs:1",
    "before:index:1",
    "after:index:1",
    "before:pending:1",
    "after:pending:1",
    "before:snapshots:1",
    "after:snapshots:1",
];

#[test]
fn killed_backups_never_damage_committed_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let src = base_tree(dir.path(), 0xDEAD);
    let mut rng = Rng::new(0xDEAD);
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    b.ok(&argv!["init"]);
    // (snapshot id, rounds it holds)
    let cases = 50;
    let (mut killed, mut at_points, mut at_random, mut mid_run) = (0, 0, 0, 0);
    // How long a whole run takes here (process start to exit), so that a random moment falls
    // inside one: a first run, then the runs each case makes in full.
    let timed = |b: &Bakare| {
        let t0 = std::time::Instant::now();
        let j = b.ok(&argv!["--json", "run", &src]).json();
        (j["snapshot"].as_str().unwrap().to_string(), t0.elapsed().as_millis() as u64)
    };
    let (first, mut lifetime_ms) = timed(&b);
    let mut committed: Vec<(String, Range<usize>)> = vec![(first, 0..0)];
    for case in 0..cases {
        let rounds = next_round(&src, case);
        let before = committed.len();
        let mut expect_commit = None;
        if case % 5 < 3 {
            // A random moment.
            let mut child = b
                .command(&argv!["--json", "run", &src])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Within the first half of a run's lifetime.
            std::thread::sleep(Duration::from_millis(1 + rng.below(lifetime_ms / 2)));
            at_random += 1;
            // Whether the kill interrupts anything: the run must still be going.
            mid_run += usize::from(child.try_wait().unwrap().is_none());
            let _ = child.kill(); // SIGKILL
            let status = child.wait().unwrap();
            killed += usize::from(!status.success());
        } else {
            // A step of the write path.
            let point = POINTS[at_points % POINTS.len()];
            at_points += 1;
            let mut c = b.command(&argv!["--json", "run", &src]);
            c.env("BAKARE_CRASH", point);
            let o = chaos::testkit::run_measured(c);
            let fired = o.stderr.contains("bakare-faulty:");
            assert!(
                fired && o.code == 128 + libc::SIGKILL,
                "case {case} {point} did not fire: exit {}, {}\n{}",
                o.code,
                o.stdout_str(),
                o.stderr
            );
            killed += 1;
            expect_commit = Some(point == "after:snapshots:1");
        }
        let list = b.ok(&argv!["--json", "snapshots"]).json();
        for s in list.as_array().unwrap() {
            let id = s["id"].as_str().unwrap();
            if !committed.iter().any(|(c, _)| c == id) {
                committed.push((id.to_string(), rounds.clone()));
            }
        }
        assert_eq!(list.as_array().unwrap().len(), committed.len(), "case {case}: a snapshot vanished");
        if let Some(expect) = expect_commit {
            assert_eq!(committed.len() > before, expect, "case {case}");
        }
        // No damage: only leftovers of the killed run (unused packs, a pending snapshot).
        let args = if case % 10 == 9 {
            argv!["--json", "check", "--read-data"].to_vec()
        } else {
            argv!["--json", "check"].to_vec()
        };
        let c = b.ok(&args).json();
        assert_eq!(c["ok"], true, "case {case}: {c}");
        // The newest committed snapshot and one older one restore exactly.
        if let Some((id, r)) = committed.last() {
            verify(&b, &src, id, r);
        }
        if committed.len() > 1 {
            let (id, r) = &committed[rng.below(committed.len() as u64 - 1) as usize];
            verify(&b, &src, id, r);
        }
        // The next backup succeeds.
        if case % 4 == 3 {
            let (id, ms) = timed(&b);
            lifetime_ms = (lifetime_ms + ms) / 2;
            committed.push((id, rounds.clone()));
        }
    }
    let j = b.ok(&argv!["--json", "run", &src]).json();
    let rounds = (cases - KEEP)..cases;
    verify(&b, &src, j["snapshot"].as_str().unwrap(), &rounds);
    for (id, r) in &committed {
        verify(&b, &src, id, r);
    }
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
    eprintln!(
        "{cases} crash cases ({killed} runs killed: {mid_run} of {at_random} at random moments were \
         still running (runs take ~{lifetime_ms} ms), {at_points} at write-path steps): {} snapshots \
         committed, all restore exactly, check clean",
        committed.len() + 1
    );
    assert!(mid_run * 5 >= at_random * 4, "only {mid_run} of {at_random} random kills interrupted a run");
}

/// Runs `args` killed at its first, second, ... operation of kind `what` (before it, then
/// after it) until a run gets through; after every kill, `after` runs. Returns the kills.
fn kill_at_each(b: &Bakare, args: &[&str], what: &str, mut after: impl FnMut(&str)) -> usize {
    let mut kills = 0;
    for n in 1.. {
        for when in ["before", "after"] {
            let point = format!("{when}:{what}:{n}");
            let mut c = b.command(args);
            c.env("BAKARE_CRASH", &point);
            let o = chaos::testkit::run_measured(c);
            if !o.stderr.contains("bakare-faulty:") {
                assert_eq!(o.code, 0, "{args:?} with {point} never reached: {}", o.stderr);
                return kills;
            }
            assert_eq!(o.code, 128 + libc::SIGKILL, "{args:?} {point}: {}", o.stderr);
            kills += 1;
            after(&format!("{args:?} killed {point}"));
        }
    }
    unreachable!()
}

/// Forget, prune (both phases) and `repair index` killed at each object they write or delete:
/// eight backups are forgotten down to three and pruned through a full cycle, every command
/// killed at its first step, then its second, and so on until a run gets through. After every
/// kill `check` finds no damage and the three snapshots kept restore exactly; at the end
/// `check --read-data` is clean and the forgotten data is gone.
#[test]
fn killed_forgets_prunes_and_repairs_never_damage_what_they_keep() {
    let dir = tempfile::tempdir().unwrap();
    let src = base_tree(dir.path(), 0xBEEF);
    let mut b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    let clock = chaos::testkit::FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let mut snaps = Vec::new();
    for round in 0..8 {
        let rounds = next_round(&src, round);
        let j = b.ok(&argv!["--json", "run", &src]).json();
        snaps.push((j["snapshot"].as_str().unwrap().to_string(), rounds));
    }
    let kept = snaps[5..].to_vec();
    let packs_before = chaos::testkit::bytes_under(&b.repo.join("packs"));
    let intact = |what: &str| {
        let c = b.ok(&argv!["--json", "check"]).json();
        assert_eq!(c["ok"], true, "{what}: {c}");
        for (id, rounds) in &kept {
            verify(&b, &src, id, rounds);
        }
    };
    let mut report = Vec::new();
    let mut step = |args: &[&str], what: &str| {
        let kills = kill_at_each(&b, args, what, &intact);
        assert!(kills > 0, "{args:?} never reached a {what} step: nothing was tested");
        report.push(format!("{} {what}: {kills} kills", args.join(" ")));
    };
    step(&["forget", "--keep-last", "3"], "delete");
    let left = b.ok(&argv!["--json", "snapshots"]).json();
    let ids: Vec<&str> = left.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, kept.iter().map(|(i, _)| i.as_str()).collect::<Vec<_>>());
    // Phase 1: new segments and a condemnation record.
    step(&["prune"], "gc");
    step(&["repair", "index"], "index");
    // Phase 2, a grace period later: segments, packs and records deleted.
    clock.advance(25 * chaos::testkit::HOUR_NS);
    step(&["prune"], "delete");
    clock.advance(25 * chaos::testkit::HOUR_NS);
    b.ok(&argv!["prune"]);
    clock.advance(25 * chaos::testkit::HOUR_NS);
    b.ok(&argv!["prune"]);
    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
    intact("after the last prune");
    let packs_after = chaos::testkit::bytes_under(&b.repo.join("packs"));
    assert!(
        packs_after < packs_before,
        "the forgotten data is gone: {packs_before} -> {packs_after} bytes of packs"
    );
    eprintln!("{}", report.join("; "));
}

/// Issue #17: an interrupted run says so, and the next run resumes. The run stops itself after
/// committing its second pack (as a laptop lid would), gets SIGINT, and is resumed: it prints
/// one line and ends by SIGINT. Its first pack was listed by an index segment at once (the
/// segment age is 0 here, a minute by default), so the next run stores at most what the
/// interrupted one did not list; the snapshot restores exactly.
#[test]
fn an_interrupted_run_says_so_and_the_next_run_resumes() {
    use std::os::unix::process::ExitStatusExt;
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    b.ok(&argv!["init"]);
    let src = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(17);
    for i in 0..3 {
        fs::write(src.path().join(format!("big-{i}")), rng.bytes(40 << 20)).unwrap();
    }
    let total = 120u64 << 20;
    let mut c = b.command(&argv!["--json", "run", "--workers", "1", src.path()]);
    c.env("BAKARE_CRASH", "after:packs:2:stop")
        .env("BAKARE_TEST_SEGMENT_AGE_MS", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let stopped = || {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')').next().and_then(|s| s.trim_start().chars().next()) == Some('T')
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !stopped() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its second pack");
        assert!(std::time::Instant::now() < deadline, "the run never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child; no memory is involved.
    unsafe {
        assert_eq!(libc::kill(pid, libc::SIGINT), 0);
        assert_eq!(libc::kill(pid, libc::SIGCONT), 0);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGINT), "{stderr}");
    assert!(stderr.contains("interrupted by SIGINT"), "{stderr}");
    assert!(stderr.contains("the next run of the same paths resumes"), "{stderr}");
    assert!(b.ok(&argv!["--json", "snapshots"]).json().as_array().unwrap().is_empty());

    let j = b.ok(&argv!["--json", "run", "--workers", "1", src.path()]).json();
    let new = j["new_bytes"].as_u64().unwrap();
    assert!(new <= total - (30 << 20), "stored {new} of {total} bytes again: {j}");
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    chaos::testkit::assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}

fn temp_files(repo: &Path) -> Vec<std::path::PathBuf> {
    chaos::testkit::files_under(repo)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp-"))
        .collect()
}

/// Issue #17: the temporary files a killed run leaves (a whole pack in `tmp/`, a half-written
/// object beside its destination) are named by `check` and removed by `prune` once older than
/// the grace period; younger ones are kept, since a writer suspended mid-write may still
/// commit them.
#[test]
fn prune_removes_temporary_files_of_killed_runs_after_the_grace_period() {
    let mut b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    let clock = chaos::testkit::FakeClock::install(&mut b);
    b.ok(&argv!["init"]);
    let src = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(23);
    for i in 0..2 {
        fs::write(src.path().join(format!("f{i}")), rng.bytes(1 << 20)).unwrap();
    }
    let mut c = b.command(&argv!["run", src.path()]);
    c.env("BAKARE_CRASH", "before:packs:1");
    assert_ne!(chaos::testkit::run_measured(c).code, 0);
    fs::write(b.repo.join("index/.tmp-0123456789abcdef01234567"), b"half a segment").unwrap();
    // Not ours, and never touched: a name `durable::temp_path` does not make, one in a
    // directory of the user's (a repository made with `init --force`), and a link to a file
    // outside the repository.
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), b"mine").unwrap();
    let theirs = [
        b.repo.join("index/.tmp-notours"),
        b.repo.join("photos/.tmp-0123456789abcdef01234567"),
        b.repo.join("tmp/.tmp-aaaaaaaaaaaaaaaaaaaaaaaa"),
    ];
    fs::create_dir(b.repo.join("photos")).unwrap();
    fs::write(&theirs[0], b"x").unwrap();
    fs::write(&theirs[1], b"x").unwrap();
    std::os::unix::fs::symlink(outside.path().join("precious"), &theirs[2]).unwrap();
    // (each writer thread stages its own pack in tmp/)
    let ours = || -> Vec<std::path::PathBuf> {
        temp_files(&b.repo)
            .into_iter()
            .filter(|p| !theirs.iter().any(|t| t.ends_with(p)) && !p.starts_with("photos"))
            .collect()
    };
    let left = ours();
    let n = left.len() as u64;
    assert!(n >= 2 && left.iter().any(|p| p.starts_with("tmp")), "{left:?}");

    let c = b.run(&argv!["--json", "check"]).json();
    assert!(c["notes"].to_string().contains(&format!("{n} temporary files of interrupted writes")), "{c}");
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert_eq!((p["temp_removed"].as_u64(), p["temp_kept"].as_u64()), (Some(0), Some(n)), "{p}");
    assert_eq!(ours(), left);
    let p = b.ok(&argv!["--json", "prune", "--dry-run"]).json();
    assert_eq!(p["temp_removed"], 0, "{p}");

    clock.advance(25 * chaos::testkit::HOUR_NS);
    let p = b.ok(&argv!["--json", "prune", "--dry-run"]).json();
    assert_eq!(p["temp_removed"], n, "{p}");
    assert_eq!(ours(), left, "a dry run removes nothing");
    let p = b.ok(&argv!["--json", "prune"]).json();
    assert_eq!(p["temp_removed"], n, "{p}");
    assert!(p["temp_bytes"].as_u64().unwrap() > 1 << 20, "{p}");
    assert!(left.iter().all(|p| !b.repo.join(p).exists()));
    for t in &theirs {
        assert!(t.symlink_metadata().is_ok(), "{} was removed", t.display());
    }
    assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"mine");
    for t in &theirs {
        fs::remove_file(t).unwrap();
    }
    let c = b.ok(&argv!["--json", "check"]).json();
    assert!(!c["notes"].to_string().contains("temporary files"), "{c}");
    b.ok(&argv!["run", src.path()]);
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    chaos::testkit::assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
}
