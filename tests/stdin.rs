//! `run --stdin` and `run --stdin-from-command`, with the real binary: standard input stored
//! as one file at the snapshot root and restored byte for byte; a 1 GiB command output under
//! --mem-limit 128M (peak resident memory measured, the restore compared as a stream, never
//! held whole); a command that fails, or is killed, fails the run and commits no snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

use chaos::argv;
use chaos::testkit::{Bakare, Rng};
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn snapshots(b: &Bakare) -> Vec<Value> {
    b.ok(&argv!["--json", "snapshots"]).json().as_array().unwrap().clone()
}

/// Runs bakare with `input` on its standard input: (exit code, stdout, stderr).
fn run_with_stdin(b: &Bakare, args: &[OsString], input: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child =
        b.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = input.to_vec();
    // A run refused before it reads (a bad --stdin-name) closes the pipe: not an error here.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&feed);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn stdin_round_trips_byte_for_byte_under_its_name() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let data = Rng::new(7).bytes(10 << 20);
    let (code, stdout, stderr) =
        run_with_stdin(&b, &argv!["--json", "run", "--stdin", "--stdin-name", "db.sql"], &data);
    assert_eq!(code, 0, "{stderr}");
    let run: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(run["files"], 1, "{run}");
    assert_eq!(run["bytes"], 10 << 20, "{run}");
    let snaps = snapshots(&b);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["paths"], serde_json::json!(["/db.sql"]));

    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    let names: Vec<_> = std::fs::read_dir(target.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![OsString::from("db.sql")]);
    let restored = std::fs::read(target.path().join("db.sql")).unwrap();
    assert!(restored == data, "restored bytes differ ({} against {})", restored.len(), data.len());
    let ls = b.ok(&argv!["ls", "latest"]).stdout_str();
    assert!(ls.contains("db.sql"), "{ls}");

    // The default name is restic's; empty input is an empty file.
    let (code, _, stderr) = run_with_stdin(&b, &argv!["run", "--stdin"], b"");
    assert_eq!(code, 0, "{stderr}");
    let again = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", again.path()]);
    assert_eq!(std::fs::read(again.path().join("stdin")).unwrap(), b"");
}

#[test]
fn stdin_and_paths_are_exclusive_and_the_name_is_one_component() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let both = b.run(&argv!["run", "--stdin", "/etc/hostname"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(both.stderr.contains("cannot be used with"), "{}", both.stderr);
    let long = "n".repeat(256);
    for bad in ["a/b", "..", ".", long.as_str()] {
        let (code, _, stderr) = run_with_stdin(&b, &argv!["run", "--stdin", "--stdin-name", bad], b"x");
        assert_ne!(code, 0, "{bad}");
        assert!(stderr.contains("not a file name"), "{bad}: {stderr}");
    }
    assert!(snapshots(&b).is_empty());
}

/// About 1 GiB of mixed text (decimal numbers: compressible, never repeating, so every chunk
/// is new), the same bytes every time it runs.
const GENERATOR: &str = "seq 1 200000000 | head -c 1073741824";

/// Reads `a` and `b` to their ends in step, a MiB at a time: (bytes, equal).
fn same_stream(mut a: impl Read, mut b: impl Read) -> (u64, bool) {
    let (mut x, mut y) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut total = 0;
    loop {
        let n = read_full(&mut a, &mut x);
        let m = read_full(&mut b, &mut y);
        if n != m || x[..n] != y[..m] {
            return (total + n.min(m) as u64, false);
        }
        if n == 0 {
            return (total, true);
        }
        total += n as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]).unwrap() {
            0 => break,
            n => done += n,
        }
    }
    done
}

#[test]
fn a_gib_from_a_command_streams_under_the_memory_limit() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let run = b.ok(&argv![
        "--json",
        "run",
        "--mem-limit",
        "128M",
        "--stdin-name",
        "numbers.txt",
        "--stdin-from-command",
        "--",
        "sh",
        "-c",
        GENERATOR
    ]);
    let v = run.json();
    assert_eq!(v["bytes"], 1u64 << 30, "{v}");
    assert!(
        run.peak_rss < 128 * MIB,
        "peak RSS {} MiB (reported by the child: {})",
        run.peak_rss / MIB,
        run.peak_reported
    );
    let stored = v["stored_bytes"].as_u64().unwrap();
    assert!(stored < (1 << 30) / 2, "compressed: {stored} bytes stored");

    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    // The repository is not needed any more: its disk space is given back before the compare.
    std::fs::remove_dir_all(&b.repo).unwrap();
    let restored = target.path().join("numbers.txt");
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), 1 << 30);
    let mut generator = Command::new("sh").arg("-c").arg(GENERATOR).stdout(Stdio::piped()).spawn().unwrap();
    let (n, same) = same_stream(std::fs::File::open(&restored).unwrap(), generator.stdout.take().unwrap());
    assert!(generator.wait().unwrap().success());
    assert!(same, "the restored file differs from the generator's output at or after byte {n}");
    assert_eq!(n, 1 << 30);
}

#[test]
fn a_failing_command_commits_nothing_and_names_its_status() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let o = b.run(&argv!["run", "--stdin-from-command", "--", "sh", "-c", "echo partial; exit 3"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("`sh` failed (exit status: 3)"), "{}", o.stderr);
    assert!(o.stderr.contains("nothing was committed"), "{}", o.stderr);
    assert!(snapshots(&b).is_empty());
    // The same command succeeding commits: the failure above was the status, not the output.
    b.ok(&argv!["run", "--stdin-from-command", "--", "sh", "-c", "echo partial"]);
    assert_eq!(snapshots(&b).len(), 1);
}

#[test]
fn a_killed_command_commits_nothing() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let o = b.run(&argv!["run", "--stdin-from-command", "--", "sh", "-c", "echo partial; kill -9 $$"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("signal: 9"), "{}", o.stderr);
    assert!(snapshots(&b).is_empty());
    let missing = b.run(&argv!["run", "--stdin-from-command", "--", "/nonexistent/program"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("cannot run `/nonexistent/program`"), "{}", missing.stderr);
    assert!(snapshots(&b).is_empty());
}
