//! `watch` through the real binary. After each kind of change (create, modify, truncate,
//! rename within and across directories, delete a file and a whole subtree, replace a
//! directory by a file, hard links, a write that puts the mtime back, chmod), the watcher's
//! last snapshot has the same root tree id as a full scan of the same files made right after,
//! and that run was one that listed only changed directories (`"kind": "watched"`; a new
//! hard link to an existing file makes it a full scan, as it must). Events
//! lost to a queue overflow make the next run a full scan that says so; SIGTERM between runs
//! ends the watcher with exit code 0 and its status says "stopped". What the exclude patterns
//! leave out is not watched, and its churn calls for no run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos::testkit::{quiet_dir, Bakare};
use serde_json::Value;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// A watcher running on `src`; killed if the test fails.
struct Watching {
    child: Child,
    home: PathBuf,
    log: PathBuf,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watching {
    fn start(b: &Bakare, src: &Path) -> Watching {
        Self::start_with(b, src, &[])
    }

    fn start_with(b: &Bakare, src: &Path, extra: &[&str]) -> Watching {
        let log = b.home.path().join("watch.log");
        let out = fs::File::create(b.home.path().join("watch.out")).unwrap();
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--json".as_ref(),
            "watch".as_ref(),
            "--continuous".as_ref(),
            "--settle".as_ref(),
            "300ms".as_ref(),
            src.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        let mut cmd: Command = b.command(&args);
        cmd.stdout(Stdio::from(out)).stderr(Stdio::from(fs::File::create(&log).unwrap()));
        let child = cmd.spawn().unwrap();
        Watching { child, home: b.home.path().to_path_buf(), log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status_file(&self) -> Option<PathBuf> {
        let cache = self.home.join(".cache/bakare");
        let mut stack = vec![cache];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).ok()?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "watch") {
                    return Some(p);
                }
            }
        }
        None
    }

    fn status(&self) -> Value {
        self.status_file()
            .and_then(|p| fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until a run after run `after` has ended and the watcher has nothing more to do
    /// (idle, nothing changed, no full scan due) for a second; its status then.
    fn quiet_after(&self, after: u64, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut stable: Option<(u64, Instant)> = None;
        loop {
            assert!(
                Instant::now() < deadline,
                "{what}: the watcher did not settle: {}\nits log:\n{}",
                self.status(),
                self.log()
            );
            let s = self.status();
            let runs = s["runs"].as_u64().unwrap_or(0);
            let idle =
                s["state"] == "idle" && s["changed_directories"] == 0 && s["next_run_full_scan"].is_null();
            if idle && runs > after {
                match stable {
                    Some((r, since)) if r == runs && since.elapsed() > Duration::from_millis(1200) => {
                        return s
                    }
                    Some((r, _)) if r == runs => {}
                    _ => stable = Some((runs, Instant::now())),
                }
            } else {
                stable = None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn snapshot_tree(b: &Bakare, id: &str) -> Value {
    let list = b.ok(&["--json", "snapshots"]).json();
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no snapshot {id}: {list}"));
    s["tree"].clone()
}

/// The watcher's last snapshot equals a full scan made now, and its last run was a watched one.
fn same_as_full_scan(b: &Bakare, w: &Watching, src: &Path, after: u64, what: &str) -> u64 {
    let s = w.quiet_after(after, what);
    let last = &s["last_run"];
    // A new name of a file that has others is the one change a directory watch cannot place.
    let kind = if what == "make a hard link" { "full" } else { "watched" };
    assert_eq!(last["kind"], kind, "{what}: {s}\n{}", w.log());
    if kind == "full" {
        assert!(last["full_scan_reason"].as_str().unwrap().contains("is a hard link"), "{s}");
    }
    assert_eq!(last["exit"], 0, "{what}: {s}");
    // The tree of the watcher's last run, which is its last snapshot's (a run that made the same
    // tree as the one before writes none).
    let watched = &last["tree"];
    if let Some(id) = last["snapshot"].as_str() {
        assert_eq!(&snapshot_tree(b, id), watched);
    }
    let full = b.ok(&["--json".as_ref(), "run".as_ref(), "--no-cache".as_ref(), src.as_os_str()]).json();
    assert_eq!(
        watched,
        &full["tree"],
        "{what}: the watcher's snapshot differs from a full scan\n{}",
        w.log()
    );
    s["runs"].as_u64().unwrap()
}

#[test]
fn watched_runs_equal_full_scans_after_every_kind_of_change() {
    let b = bakare();
    let q = quiet_dir();
    let src = q.path().join("src");
    for (p, data) in
        [("a/x", "x"), ("a/sub/y", "y"), ("b/deep/f", "0123456789"), ("c/z", "z"), ("d/e/f/g", "g")]
    {
        fs::create_dir_all(src.join(p).parent().unwrap()).unwrap();
        fs::write(src.join(p), data).unwrap();
    }
    fs::create_dir_all(src.join("e/inner")).unwrap();
    b.ok(&["init"]);
    let w = Watching::start(&b, &src);
    let s = w.quiet_after(0, "the first run");
    assert!(w.log().contains("scanning everything: the watcher just started"), "{}", w.log());
    let mut runs = s["runs"].as_u64().unwrap();

    type Change = Box<dyn Fn(&Path)>;
    let steps: Vec<(&str, Change)> = vec![
        ("create", Box::new(|s: &Path| fs::write(s.join("a/new"), "new").unwrap())),
        ("modify", Box::new(|s: &Path| fs::write(s.join("b/deep/f"), "0123456789abc").unwrap())),
        (
            "truncate",
            Box::new(|s: &Path| {
                fs::File::options().write(true).open(s.join("b/deep/f")).unwrap().set_len(3).unwrap()
            }),
        ),
        (
            "rename within a directory",
            Box::new(|s: &Path| fs::rename(s.join("a/x"), s.join("a/x2")).unwrap()),
        ),
        (
            "rename a directory across directories",
            Box::new(|s: &Path| fs::rename(s.join("a/sub"), s.join("c/sub")).unwrap()),
        ),
        (
            "write in a moved directory",
            Box::new(|s: &Path| fs::write(s.join("c/sub/y"), "moved and written").unwrap()),
        ),
        ("delete a file", Box::new(|s: &Path| fs::remove_file(s.join("c/z")).unwrap())),
        ("delete a subtree", Box::new(|s: &Path| fs::remove_dir_all(s.join("d/e")).unwrap())),
        (
            "replace a directory by a file",
            Box::new(|s: &Path| {
                fs::remove_dir_all(s.join("e")).unwrap();
                fs::write(s.join("e"), "now a file").unwrap();
            }),
        ),
        (
            "make a hard link",
            Box::new(|s: &Path| fs::hard_link(s.join("a/new"), s.join("c/linked")).unwrap()),
        ),
        (
            "write through the other name",
            Box::new(|s: &Path| fs::write(s.join("c/linked"), "through c").unwrap()),
        ),
        (
            "write that puts the mtime back",
            Box::new(|s: &Path| {
                let f = s.join("b/deep/f");
                let before = fs::metadata(&f).unwrap().modified().unwrap();
                fs::write(&f, "XYZ").unwrap();
                fs::File::options().write(true).open(&f).unwrap().set_modified(before).unwrap();
            }),
        ),
        (
            "chmod a directory",
            Box::new(|s: &Path| fs::set_permissions(s.join("c"), fs::Permissions::from_mode(0o700)).unwrap()),
        ),
        (
            "make a new tree",
            Box::new(|s: &Path| {
                fs::create_dir_all(s.join("n/m/o")).unwrap();
                fs::write(s.join("n/m/o/p"), "deep and new").unwrap();
            }),
        ),
    ];
    for (what, change) in steps {
        change(&src);
        runs = same_as_full_scan(&b, &w, &src, runs, what);
    }
}

#[test]
fn an_overflowed_queue_makes_the_next_run_a_full_scan_and_sigterm_stops_cleanly() {
    let b = bakare();
    let q = quiet_dir();
    let src = q.path().join("src");
    fs::create_dir_all(src.join("many")).unwrap();
    fs::write(src.join("one"), "1").unwrap();
    b.ok(&["init"]);
    let mut w = Watching::start(&b, &src);
    let runs = w.quiet_after(0, "the first run")["runs"].as_u64().unwrap();
    let max: usize =
        fs::read_to_string("/proc/sys/fs/inotify/max_queued_events").unwrap().trim().parse().unwrap();
    // Stopped, the watcher reads no events: more than the queue holds are lost.
    let pid = w.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    for i in 0..max + 100 {
        fs::write(src.join("many").join(i.to_string()), "").unwrap();
    }
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(90);
    let s = loop {
        let s = w.status();
        let reason = s["last_run"]["full_scan_reason"].as_str().unwrap_or_default().to_string();
        if s["runs"].as_u64().unwrap_or(0) > runs && reason.contains("overflowed") {
            break s;
        }
        assert!(Instant::now() < deadline, "no full scan after the overflow: {s}\n{}", w.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        w.log().contains("scanning everything: the kernel's queue of file events overflowed"),
        "{}",
        w.log()
    );
    let runs = s["runs"].as_u64().unwrap();
    let s = w.quiet_after(runs - 1, "after the overflow");
    let full = b.ok(&["--json".as_ref(), "run".as_ref(), "--no-cache".as_ref(), src.as_os_str()]).json();
    assert_eq!(s["last_run"]["tree"], full["tree"]);

    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = w.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", w.log());
    assert_eq!(w.status()["state"], "stopped");
    assert!(w.log().contains("stopped by SIGTERM"), "{}", w.log());
}

#[test]
fn watch_refuses_what_it_cannot_do_and_prints_a_unit() {
    let b = bakare();
    let t = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["watch", "--no-cache", "."], "needs the files cache"),
        (vec!["watch", "--dry-run", "."], "has no --dry-run"),
        (vec!["watch", "--every", "soon", "."], "is not a duration"),
    ] {
        let o = b.run(&args);
        assert_ne!(o.code, 0, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains(says), "{args:?}: {}", o.stderr);
    }
    let o = b.ok(&[
        "watch".as_ref(),
        "--print-systemd-unit".as_ref(),
        "--every".as_ref(),
        "15m".as_ref(),
        t.path().as_os_str(),
    ]);
    let unit = o.stdout_str();
    assert!(unit.contains("[Service]") && unit.contains("Restart=on-failure"), "{unit}");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(exec.contains(" watch --every 15m ") && !exec.contains("--print-systemd-unit"), "{exec}");
    let o = b.run(&["watch".as_ref(), "--status".as_ref(), t.path().as_os_str()]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("no watcher has run for these paths"), "{}", o.stderr);
}

/// Waits until the watcher's status says a run is going on.
fn wait_running(w: &Watching) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.status()["state"] != "running" {
        assert!(Instant::now() < deadline, "no run started: {}\n{}", w.status(), w.log());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_watcher_killed_mid_run_loses_nothing_and_a_change_during_a_run_is_in_the_next() {
    let b = bakare();
    let q = quiet_dir();
    let src = q.path().join("src");
    let mut rng = chaos::testkit::Rng::new(19);
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/small"), "small").unwrap();
    b.ok(&["init"]);
    let mut w = Watching::start(&b, &src);
    w.quiet_after(0, "the first run");

    // Killed while a run reads a large new file: nothing half-committed, and the restarted
    // watcher's first run is a full scan that finds what changed while it was down.
    fs::write(src.join("d/big"), rng.bytes(96 << 20)).unwrap();
    wait_running(&w);
    w.child.kill().unwrap();
    w.child.wait().unwrap();
    fs::write(src.join("while-down"), "made while no watcher ran").unwrap();
    let o = b.ok(&["watch".as_ref(), "--status".as_ref(), src.as_os_str()]);
    assert!(
        o.stdout_str().contains("state: not running (it ended without saying so; it was running)"),
        "{}",
        o.stdout_str()
    );
    let w = Watching::start(&b, &src);
    let s = w.quiet_after(0, "the restart");
    assert!(w.log().contains("run 1: scanning everything: the watcher just started"), "{}", w.log());
    let full = b.ok(&["--json".as_ref(), "run".as_ref(), "--no-cache".as_ref(), src.as_os_str()]).json();
    assert_eq!(s["last_run"]["tree"], full["tree"], "{}", w.log());
    b.ok(&["check"]);

    // A change made while a run goes on is in a later snapshot.
    let runs = s["runs"].as_u64().unwrap();
    fs::write(src.join("d/big2"), rng.bytes(96 << 20)).unwrap();
    wait_running(&w);
    fs::write(src.join("d/during"), "written during a run").unwrap();
    let after = w.status()["runs"].as_u64().unwrap().max(runs);
    same_as_full_scan(&b, &w, &src, after, "a change during a run");
}

#[test]
fn excluded_directories_are_not_watched_and_their_churn_calls_for_no_run() {
    let b = bakare();
    let q = quiet_dir();
    let src = q.path().join("src");
    fs::create_dir_all(src.join("build/deep")).unwrap();
    fs::create_dir_all(src.join("kept")).unwrap();
    fs::write(src.join("kept/file"), "kept").unwrap();
    fs::write(src.join("kept/x.o"), "object").unwrap();
    b.ok(&["init"]);
    let w = Watching::start_with(&b, &src, &["--exclude", "build", "--exclude", "*.o"]);
    let s = w.quiet_after(0, "the first run");
    assert_eq!(s["watched_directories"], 2, "src and kept; not build or build/deep: {s}");
    let count = |b: &Bakare| b.ok(&["--json", "snapshots"]).json().as_array().unwrap().len();
    let (before, runs) = (count(&b), s["runs"].as_u64().unwrap());
    // Churn in an excluded directory, and writes to an excluded file: no run.
    for i in 0..20 {
        fs::write(src.join("build/deep/out.bin"), format!("build {i}")).unwrap();
        fs::write(src.join("kept/x.o"), format!("object {i}")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let s = w.status();
    assert_eq!(s["runs"].as_u64().unwrap(), runs, "{s}\n{}", w.log());
    assert_eq!(s["changed_directories"], 0, "{s}");
    assert_eq!(count(&b), before);
    // A change the snapshot holds is saved, and equals a full scan with the same excludes.
    fs::write(src.join("kept/file"), "changed").unwrap();
    let s = w.quiet_after(runs, "a change");
    assert!(s["last_run"]["snapshot"].is_string(), "{s}");
    let full = b
        .ok(&[
            "--json".as_ref(),
            "run".as_ref(),
            "--no-cache".as_ref(),
            "--exclude".as_ref(),
            "build".as_ref(),
            "--exclude".as_ref(),
            "*.o".as_ref(),
            src.as_os_str(),
        ])
        .json();
    assert_eq!(s["last_run"]["tree"], full["tree"]);
}
