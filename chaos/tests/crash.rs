//! Crash at any instant: a backup killed with SIGKILL at seeded random moments leaves a
//! repository whose committed snapshots all restore byte for byte, and the next backup succeeds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chaos::argv;
use chaos::testkit::{assert_same_tree, restored_path, Bakare, Rng};

fn add_round(src: &Path, rng: &mut Rng, round: usize) {
    let dir = src.join(format!("round-{round:03}"));
    fs::create_dir(&dir).unwrap();
    for i in 0..20 {
        let n = rng.below(4 << 20) as usize;
        let data = if i % 2 == 0 { rng.bytes(n) } else { rng.text(n) };
        fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
}

/// Checks that snapshot `id` holds exactly the rounds that existed when it was taken.
fn check_snapshot(b: &Bakare, src: &Path, id: &str, rounds: usize) {
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", id, "--target", target.path()]);
    let root = restored_path(target.path(), src);
    for r in 0..rounds {
        let name = format!("round-{r:03}");
        assert_same_tree(&src.join(&name), &root.join(&name));
    }
}

#[test]
fn killed_backups_never_damage_committed_snapshots() {
    let src = tempfile::tempdir().unwrap();
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
    b.ok(&argv!["init"]);
    let mut rng = Rng::new(0xC0FFEE);
    // (snapshot id, rounds it holds)
    let mut committed: Vec<(String, usize)> = Vec::new();
    let mut rounds = 0;
    let cases = 10;
    for case in 0..cases {
        add_round(src.path(), &mut rng, rounds);
        rounds += 1;
        let mut child = b
            .command(&argv!["--json", "run", src.path()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.below(600));
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            committed.push((j["snapshot"].as_str().unwrap().to_string(), rounds));
        }
        // A run killed after its commit but before printing has committed a complete snapshot.
        let list = b.ok(&argv!["--json", "snapshots"]).json();
        for s in list.as_array().unwrap() {
            let id = s["id"].as_str().unwrap();
            if !committed.iter().any(|(c, _)| c == id) {
                committed.push((id.to_string(), rounds));
            }
        }
        assert_eq!(list.as_array().unwrap().len(), committed.len(), "case {case}");
        // Every snapshot committed so far still restores exactly.
        for (id, r) in &committed {
            check_snapshot(&b, src.path(), id, *r);
        }
        // And the next backup succeeds.
        if case % 3 == 2 {
            let j = b.ok(&argv!["--json", "run", src.path()]).json();
            committed.push((j["snapshot"].as_str().unwrap().to_string(), rounds));
        }
    }
    let j = b.ok(&argv!["--json", "run", src.path()]).json();
    check_snapshot(&b, src.path(), j["snapshot"].as_str().unwrap(), rounds);
    eprintln!("{cases} kill cases, {} snapshots committed and verified", committed.len() + 1);
}
