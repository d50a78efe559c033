//! Snapshot metadata end to end, with the real binary: descriptions and selections recorded and
//! shown, the `--host`/`--tag`/`--path` filters on `snapshots`, `latest` (`ls`, `restore`,
//! `diff`) and `forget`, `forget --keep-tag` and `--group-by`, and `tag`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use chaos::argv;
use chaos::hostile::{forge_snapshot_with, Forger, Signed};
use chaos::testkit::{Bakare, TestDir};
use serde_json::Value;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// Four snapshots, oldest first:
/// s1 A on alpha, tags daily,home, described; s2 B on beta, daily; s3 A (with a file more)
/// on beta, weekly; s4 C on alpha, no tags, run with an exclude.
struct Fixture {
    b: Bakare,
    a: TestDir,
    c: TestDir,
    s: Vec<String>,
}

fn run(b: &Bakare, args: &[OsString]) -> String {
    let mut all = argv!["--json", "run", "--no-cache"].to_vec();
    all.extend_from_slice(args);
    b.ok(&all).json()["snapshot"].as_str().unwrap().to_string()
}

fn fixture() -> Fixture {
    let b = bakare();
    b.ok(&argv!["init"]);
    let a = TestDir::new().file("a-file", "a");
    let bdir = TestDir::new().file("b-file", "b");
    let c = TestDir::new().file("c-file", "c").file("junk.tmp", "tmp");
    let s1 = run(
        &b,
        &argv![
            a.path(),
            "--host",
            "alpha",
            "--tag",
            "daily,home",
            "--description",
            "first line\nsecond line"
        ],
    );
    let s2 = run(&b, &argv![bdir.path(), "--host", "beta", "--tag", "daily"]);
    fs::write(a.path().join("a-second"), "more").unwrap();
    let s3 = run(&b, &argv![a.path(), "--host", "beta", "--tag", "weekly"]);
    let s4 = run(&b, &argv![c.path(), "--host", "alpha", "--exclude", "*.tmp"]);
    Fixture { b, a, c, s: vec![s1, s2, s3, s4] }
}

fn list(b: &Bakare, filters: &[OsString]) -> Vec<Value> {
    let mut all = argv!["--json", "snapshots"].to_vec();
    all.extend_from_slice(filters);
    b.ok(&all).json().as_array().unwrap().clone()
}

fn ids(b: &Bakare, filters: &[OsString]) -> BTreeSet<String> {
    list(b, filters).iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
}

fn names(f: &Fixture, which: &[usize]) -> BTreeSet<String> {
    which.iter().map(|&i| f.s[i - 1].clone()).collect()
}

fn entry<'a>(all: &'a [Value], id: &str) -> &'a Value {
    all.iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("{id} not listed"))
}

#[test]
fn descriptions_and_selections_are_recorded_and_shown() {
    let f = fixture();
    let all = list(&f.b, &[]);
    assert_eq!(all.len(), 4);
    assert_eq!(entry(&all, &f.s[0])["description"], "first line\nsecond line");
    assert_eq!(entry(&all, &f.s[0])["selection"], serde_json::json!([]));
    assert_eq!(entry(&all, &f.s[1])["description"], Value::Null);
    assert_eq!(entry(&all, &f.s[3])["selection"], serde_json::json!(["--exclude=*.tmp"]));
    assert_eq!(entry(&all, &f.s[0])["tags"], serde_json::json!(["daily", "home"]));
    assert_eq!(entry(&all, &f.s[0])["original"], Value::Null);
    let text = f.b.ok(&argv!["snapshots"]).stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.starts_with(&f.s[0][..16])).unwrap();
    assert!(lines[at].contains("daily,home"), "{text}");
    assert_eq!(lines[at + 1], "    first line", "{text}");
    assert_eq!(lines[at + 2], "    second line", "{text}");
    let at = lines.iter().position(|l| l.starts_with(&f.s[3][..16])).unwrap();
    assert_eq!(lines[at + 1], "    selection: '--exclude=*.tmp'", "{text}");
    assert!(text.ends_with("4 snapshots\n"), "{text}");
}

#[test]
fn filters_choose_exactly_the_matching_snapshots() {
    let f = fixture();
    let (b, a) = (&f.b, f.a.path());
    let cases: Vec<(Vec<OsString>, Vec<usize>)> = vec![
        (argv!["--host", "alpha"].to_vec(), vec![1, 4]),
        (argv!["--host", "alpha", "--host", "beta"].to_vec(), vec![1, 2, 3, 4]),
        (argv!["--tag", "daily"].to_vec(), vec![1, 2]),
        (argv!["--tag", "daily,home"].to_vec(), vec![1]),
        (argv!["--tag", "home", "--tag", "weekly"].to_vec(), vec![1, 3]),
        (argv!["--tag", ""].to_vec(), vec![4]),
        (argv!["--tag", "nothing"].to_vec(), vec![]),
        (argv!["--path", a].to_vec(), vec![1, 3]),
        (argv!["--path", a.join("")].to_vec(), vec![1, 3]),
        (argv!["--path", a, "--host", "beta"].to_vec(), vec![3]),
        (argv!["--path", a, "--path", f.c.path()].to_vec(), vec![]),
        (argv!["--path", a.parent().unwrap()].to_vec(), vec![]),
    ];
    for (filters, want) in cases {
        assert_eq!(ids(b, &filters), names(&f, &want), "{filters:?}");
    }
    let text = b.ok(&argv!["snapshots", "--tag", "daily"]).stdout_str();
    assert!(text.ends_with("2 snapshots (of 4)\n"), "{text}");

    // `latest` is the newest snapshot the filters match
    let ls = |filters: &[OsString]| {
        let mut all = argv!["ls", "-r", "latest"].to_vec();
        all.extend_from_slice(filters);
        let out = b.ok(&all).stdout_str();
        let mut found: Vec<&str> =
            ["a-file", "a-second", "b-file", "c-file"].into_iter().filter(|n| out.contains(*n)).collect();
        found.sort();
        found.join(" ")
    };
    assert_eq!(ls(&[]), "c-file");
    assert_eq!(ls(&argv!["--host", "beta"]), "a-file a-second");
    assert_eq!(ls(&argv!["--tag", "daily"]), "b-file");
    assert_eq!(ls(&argv!["--tag", "home"]), "a-file");
    assert_eq!(ls(&argv!["--path", a]), "a-file a-second");
    let o = b.run(&argv!["ls", "latest", "--tag", "nothing"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("no snapshot matches") && o.stderr.contains("with these filters"),
        "{}",
        o.stderr
    );
    // an id names its snapshot whatever the filters say
    let out = b.ok(&argv!["ls", "-r", &f.s[1][..12], "--tag", "weekly"]).stdout_str();
    assert!(out.contains("b-file"), "{out}");

    let restored = |filters: &[OsString]| {
        let t = tempfile::tempdir().unwrap();
        let mut all = argv!["restore", "latest", "--target", t.path()].to_vec();
        all.extend_from_slice(filters);
        b.ok(&all);
        let mut found: Vec<String> = chaos::testkit::files_under(t.path())
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        found.sort();
        found.join(" ")
    };
    assert_eq!(restored(&argv!["--tag", "home"]), "a-file");
    assert_eq!(restored(&argv!["--host", "beta", "--tag", "daily"]), "b-file");
    assert_eq!(restored(&argv!["--host", "alpha"]), "c-file");

    // diff: `latest` on A is s3, which has a file more than s1
    let d = b.ok(&argv!["--json", "diff", &f.s[0][..12], "latest", "--path", a]).stdout_str();
    assert!(d.contains("a-second") && !d.contains("c-file"), "{d}");
}

fn forget(b: &Bakare, args: &[OsString]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = argv!["--json", "forget"].to_vec();
    all.extend_from_slice(args);
    let v = b.ok(&all).json();
    let mut kept = BTreeSet::new();
    let mut gone = BTreeSet::new();
    for d in v["decisions"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap().to_string();
        if d["keep"].as_bool().unwrap() {
            kept.insert(id);
        } else {
            gone.insert(id);
        }
    }
    (kept, gone)
}

#[test]
fn forget_groups_as_asked_and_keeps_tagged_snapshots() {
    let f = fixture();
    let b = &f.b;
    let n = |w: &[usize]| names(&f, w);
    // host and paths: four groups of one
    assert_eq!(forget(b, &argv!["-n", "--keep-last", "1"]), (n(&[1, 2, 3, 4]), n(&[])));
    assert_eq!(forget(b, &argv!["-n", "--keep-last", "1", "--group-by", "host"]), (n(&[3, 4]), n(&[1, 2])));
    assert_eq!(forget(b, &argv!["-n", "--keep-last", "1", "--group-by", "paths"]), (n(&[2, 3, 4]), n(&[1])));
    assert_eq!(forget(b, &argv!["-n", "--keep-last", "1", "--group-by", "tags"]), (n(&[1, 2, 3, 4]), n(&[])));
    assert_eq!(forget(b, &argv!["-n", "--keep-last", "1", "--group-by", ""]), (n(&[4]), n(&[1, 2, 3])));
    assert_eq!(
        forget(b, &argv!["-n", "--keep-last", "1", "--group-by", "", "--keep-tag", "daily"]),
        (n(&[1, 2, 4]), n(&[3]))
    );
    assert_eq!(
        forget(
            b,
            &argv![
                "-n",
                "--keep-last",
                "1",
                "--group-by",
                "",
                "--keep-tag",
                "daily,home",
                "--keep-tag",
                "weekly"
            ]
        ),
        (n(&[1, 3, 4]), n(&[2]))
    );
    // --keep-tag alone is a policy: it keeps only what it names
    assert_eq!(forget(b, &argv!["-n", "--keep-tag", "home"]), (n(&[1]), n(&[2, 3, 4])));
    // the filters choose what the policy applies to; the rest is not even considered
    assert_eq!(
        forget(b, &argv!["-n", "--keep-last", "1", "--group-by", "", "--host", "beta"]),
        (n(&[3]), n(&[2]))
    );
    assert_eq!(
        forget(b, &argv!["-n", "--keep-last", "1", "--group-by", "", "--tag", "daily"]),
        (n(&[2]), n(&[1]))
    );
    assert_eq!(
        forget(b, &argv!["-n", "--keep-last", "1", "--group-by", "", "--path", f.a.path()]),
        (n(&[3]), n(&[1]))
    );
    // nothing was removed by the dry runs; now for real
    assert_eq!(ids(b, &[]), n(&[1, 2, 3, 4]));
    assert_eq!(
        forget(b, &argv!["--keep-last", "1", "--group-by", "", "--keep-tag", "home"]),
        (n(&[1, 4]), n(&[2, 3]))
    );
    assert_eq!(ids(b, &[]), n(&[1, 4]));
    let o = b.run(&argv!["forget", "--group-by", "host,colour", "--keep-last", "1"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("colour"), "{}", o.stderr);
    let o = b.run(&argv!["forget", &f.s[0][..12], "--tag", "home"]);
    assert_eq!(o.code, 1);
    assert_eq!(ids(b, &[]), n(&[1, 4]));
}

/// Every field but tags and original, as `snapshots --json` shows them.
fn same_but_tags(a: &Value, b: &Value) {
    for k in
        ["time_ns", "host", "user", "paths", "tree", "description", "selection", "files", "bytes", "errors"]
    {
        assert_eq!(a[k], b[k], "{k}");
    }
}

fn snapshot_files(repo: &Path) -> BTreeSet<PathBuf> {
    ["snapshots", "pending"]
        .iter()
        .flat_map(|d| fs::read_dir(repo.join(d)).unwrap().map(|e| e.unwrap().path()))
        .collect()
}

#[test]
fn tag_changes_only_the_tags_and_replaces_the_record() {
    let f = fixture();
    let b = &f.b;
    let before = list(b, &[]);
    let tag = |args: &[OsString]| {
        let mut all = argv!["--json", "tag"].to_vec();
        all.extend_from_slice(args);
        b.ok(&all).json()
    };
    // one new record, the old one gone, everything else the same
    let step = |before: &[Value], old: &str, args: &[OsString], tags: &[&str]| -> String {
        let mut all = vec![OsString::from(&old[..10])];
        all.extend_from_slice(args);
        let out = tag(&all);
        let after = list(b, &[]);
        let was: BTreeSet<_> = before.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
        let now: BTreeSet<_> = after.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
        let new: Vec<_> = now.difference(&was).cloned().collect();
        assert_eq!(new.len(), 1, "{out}");
        assert_eq!(was.difference(&now).cloned().collect::<Vec<_>>(), vec![old.to_string()]);
        assert_eq!(out[0]["old"], old);
        assert_eq!(out[0]["new"], new[0]);
        let (o, n) = (entry(before, old), entry(&after, &new[0]));
        same_but_tags(o, n);
        assert_eq!(n["tags"], serde_json::json!(tags));
        assert_eq!(n["writer"], "owner");
        new[0].clone()
    };
    let t1 = step(&before, &f.s[1], &argv!["--add", "extra,more"], &["daily", "extra", "more"]);
    assert_eq!(entry(&list(b, &[]), &t1)["original"], f.s[1]);
    let t2 = step(&list(b, &[]), &t1, &argv!["--remove", "daily", "--remove", "more"], &["extra"]);
    // the original is the first of the chain
    assert_eq!(entry(&list(b, &[]), &t2)["original"], f.s[1]);
    let t3 = step(&list(b, &[]), &t2, &argv!["--set", "only"], &["only"]);
    // the described one keeps its description
    let t4 = step(&list(b, &[]), &f.s[0], &argv!["--set", ""], &[]);
    assert_eq!(entry(&list(b, &[]), &t4)["description"], "first line\nsecond line");
    // no change: nothing written, nothing removed
    let files = snapshot_files(&b.repo);
    let out = tag(&argv![&t3[..10], "--add", "only"]);
    assert_eq!(out[0]["new"], Value::Null);
    let text = b.ok(&argv!["tag", &t3[..10], "--remove", "absent"]).stdout_str();
    assert!(text.contains("tags unchanged"), "{text}");
    assert_eq!(snapshot_files(&b.repo), files);
    // the new record restores what the old one did
    let out = b.ok(&argv!["ls", "-r", &t3]).stdout_str();
    assert!(out.contains("b-file"), "{out}");
    // `latest` with a filter, and several at once
    let t = tag(&argv!["latest", "--tag", "weekly", "--add", "kept"]);
    assert_eq!(t[0]["old"], f.s[2]);
    assert_eq!(ids(b, &argv!["--tag", "kept"]).len(), 1);
    let t = tag(&argv![&t3[..10], &f.s[3][..10], "--add", "x"]);
    assert_eq!(t.as_array().unwrap().len(), 2);
    assert_eq!(ids(b, &argv!["--tag", "x"]).len(), 2);
    assert_eq!(list(b, &[]).len(), 4);
    // refused: --set with --add, and no change at all
    assert_ne!(b.run(&argv!["tag", "latest", "--set", "a", "--add", "b"]).code, 0);
    assert_ne!(b.run(&argv!["tag", "latest"]).code, 0);
    assert_eq!(list(b, &[]).len(), 4);
}

#[test]
fn tag_with_a_backup_only_key_is_refused_and_changes_nothing() {
    let f = fixture();
    let b = &f.b;
    let key = b.home.path().join("laptop.key");
    b.ok(&argv!["key", "export", "--backup-only", "--name", "laptop", &key]);
    let files = snapshot_files(&b.repo);
    for args in [
        argv!["--key", &key, "tag", "latest", "--add", "x"].to_vec(),
        argv!["--key", &key, "tag", &f.s[0][..10], "--set", "x"].to_vec(),
    ] {
        let o = b.run(&args);
        assert_eq!(o.code, 1, "{}", o.stdout_str());
        assert!(o.stderr.contains("backup-only key"), "{}", o.stderr);
    }
    assert_eq!(snapshot_files(&b.repo), files);
}

#[test]
fn version_1_writer_snapshots_are_read_and_not_retagged() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let key = b.home.path().join("laptop.key");
    b.ok(&argv!["key", "export", "--backup-only", "--name", "laptop", &key]);
    // as a writer of before wrote it: layout 1, which has no description or selection
    let old = forge_snapshot_with(
        &b.repo,
        &key,
        Signed::Writer,
        |s| {
            s.version = engine::snapshot::VERSION_1;
            s.host = "old".into();
            s.tags = vec!["v1".into()];
        },
        |f: &mut Forger| {
            let n = f.file("old-file", b"from before");
            vec![f.tree(vec![n])]
        },
    );
    let all = list(&b, &[]);
    assert_eq!(all.len(), 1);
    let e = entry(&all, &old);
    assert_eq!(
        (&e["host"], &e["writer"], &e["tags"]),
        (&Value::from("old"), &Value::from("laptop"), &serde_json::json!(["v1"]))
    );
    assert_eq!((&e["description"], &e["selection"]), (&Value::Null, &serde_json::json!([])));
    assert!(b.ok(&argv!["ls", "latest", "--tag", "v1"]).stdout_str().contains("old-file"));
    // A writer's record is not retagged: signed anew by the owner, it would leave the writer's
    // forget group and escape its revocation.
    let files = snapshot_files(&b.repo);
    let o = b.run(&argv!["tag", "latest", "--add", "v2"]);
    assert_eq!(o.code, 1, "{}", o.stdout_str());
    assert!(o.stderr.contains("written by laptop, not the owner"), "{}", o.stderr);
    assert_eq!(snapshot_files(&b.repo), files);
    assert_eq!(entry(&list(&b, &[]), &old)["tags"], serde_json::json!(["v1"]));
}

#[test]
fn find_takes_the_tag_filter() {
    let f = fixture();
    let found = |args: &[OsString]| {
        let mut all = argv!["find", "--exact"].to_vec();
        all.extend_from_slice(args);
        let o = f.b.run(&all);
        assert!(o.code == 0 || o.code == 1, "{}", o.stderr);
        o.stdout_str()
    };
    assert!(found(&argv!["b-file", "--tag", "daily"]).contains("b-file"));
    assert!(!found(&argv!["b-file", "--tag", "weekly"]).contains("b-file"), "b-file is only in s2 (daily)");
    assert!(found(&argv!["a-second", "--tag", "weekly"]).contains("a-second"));
    // a-file is in s1 (daily,home) and s3 (weekly): `--tag daily,home` finds it in s1 only.
    let out = found(&argv!["a-file", "--tag", "daily,home"]);
    assert!(out.contains(&f.s[0][..8]) && !out.contains(&f.s[2][..8]), "{out}");
    let out = found(&argv!["a-file", "--tag", "weekly", "--tag", "daily,home"]);
    assert!(out.contains(&f.s[0][..8]) && out.contains(&f.s[2][..8]), "{out}");
    assert!(!found(&argv!["c-file", "--tag", "daily"]).contains("c-file"), "s4 has no tags");
    assert!(found(&argv!["c-file", "--tag", ""]).contains("c-file"), "`--tag ''`: untagged");
}
