//! End-to-end tests of `find`, `diff`, and restoring what `find` found, on the real binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chaos::argv;
use chaos::testkit::{restored_path, Bakare, Outcome, TestDir};
use serde_json::Value;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// Backs up `paths` (extra arguments first) and returns the snapshot id.
fn backup(b: &Bakare, args: &[OsString]) -> String {
    let mut a = argv!["--json", "run"].to_vec();
    a.extend_from_slice(args);
    b.ok(&a).json()["snapshot"].as_str().unwrap().to_string()
}

fn set_mtime(p: &Path, date_secs: u64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(date_secs)).unwrap();
}

/// 2026-05-01 00:00:00 UTC
const MAY_1: u64 = 1_777_593_600;
const DAY: u64 = 86_400;

fn project() -> TestDir {
    TestDir::new()
        .file("proj/README.md", "# the project\n")
        .file("proj/src/main.rs", "fn main() {}\n")
        .file("other/readme.txt", "another readme\n")
        .file("notes/recipes.txt", "bread\n")
        .file(OsString::from_vec(b"notes/caf\xe9-latin1.txt".to_vec()), "not utf-8 name")
}

fn find_json(b: &Bakare, args: &[OsString]) -> Vec<Value> {
    let mut a = argv!["--json", "find"].to_vec();
    a.extend_from_slice(args);
    b.ok(&a).json()["hits"].as_array().unwrap().clone()
}

fn hit_paths(hits: &[Value]) -> Vec<String> {
    hits.iter().map(|h| h["path"].as_str().unwrap().to_string()).collect()
}

/// The hit lines of human `find` output: (path bytes, whole line).
fn human_hits(o: &Outcome) -> Vec<(Vec<u8>, String)> {
    o.stdout
        .split(|&c| c == b'\n')
        .filter(|l| l.len() > 35 && !l.starts_with(b"restore with: ") && !l.ends_with(b"(--limit)"))
        .map(|l| {
            // kind, size (11), two spaces, mtime (19), two spaces, path, "  in ..."
            let rest = &l[35..];
            let end = rest.windows(5).rposition(|w| w == b"  in ").unwrap();
            (rest[..end].to_vec(), String::from_utf8_lossy(l).into_owned())
        })
        .collect()
}

fn src_path(src: &TestDir, rel: &str) -> String {
    src.path().join(rel).to_string_lossy().into_owned()
}

#[test]
fn fuzzy_finds_typos_skipped_letters_and_path_fragments() {
    let b = bakare();
    let src = project();
    b.ok(&argv!["init"]);
    backup(&b, &argv![src.path()]);
    let readme = src_path(&src, "proj/README.md");
    // a skipped letter, a swapped pair, a wrong letter: the file is found
    for q in ["rdme", "raedme", "reafme"] {
        let paths = hit_paths(&find_json(&b, &argv![q]));
        assert!(paths.contains(&readme), "{q}: {paths:?}");
    }
    // a path fragment picks the directory
    assert_eq!(hit_paths(&find_json(&b, &argv!["proj/rdme"]))[0], readme);
    assert_eq!(hit_paths(&find_json(&b, &argv!["other/rdme"]))[0], src_path(&src, "other/readme.txt"));
    // nothing like it: no hits, and not an error
    let o = b.ok(&argv!["find", "qqqxxzz"]);
    assert!(human_hits(&o).is_empty(), "{}", o.stdout_str());
    assert!(o.stderr.contains("nothing matches"), "{}", o.stderr);
    // human output: one line, the path, the snapshot, and the command to restore it
    let o = b.ok(&argv!["find", "proj/README.md", "--limit", "1"]);
    let hits = human_hits(&o);
    assert_eq!(hits[0].0, readme.as_bytes());
    assert!(hits[0].1.contains("14 B"), "{}", hits[0].1);
    let text = o.stdout_str();
    assert!(
        text.contains("restore with: bakare restore ") && text.contains(&format!(" -t DIR '{readme}'")),
        "{text}"
    );
}

#[test]
fn one_line_per_version_with_the_snapshots_that_hold_it() {
    let b = bakare();
    let src = project();
    let readme = src.path().join("proj/README.md");
    set_mtime(&readme, MAY_1);
    b.ok(&argv!["init"]);
    let s1 = backup(&b, &argv![src.path()]);
    fs::write(&readme, "# the project, version two\n").unwrap();
    set_mtime(&readme, MAY_1 + 10 * DAY);
    let s2 = backup(&b, &argv![src.path()]);
    let s3 = backup(&b, &argv![src.path()]);
    let hits = find_json(&b, &argv!["proj/README.md"]);
    let versions: Vec<&Value> =
        hits.iter().filter(|h| h["path"] == readme.to_string_lossy().as_ref()).collect();
    assert_eq!(versions.len(), 2, "{hits:?}");
    let snaps = |h: &Value| {
        h["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // newest version first
    assert_eq!(versions[0]["size"], 27);
    assert_eq!(versions[0]["mtime"], "2026-05-11 00:00:00");
    assert_eq!(snaps(versions[0]), vec![s2.clone(), s3.clone()]);
    assert_eq!(versions[1]["size"], 14);
    assert_eq!(snaps(versions[1]), vec![s1.clone()]);
    // an unchanged file is one version in all three
    let main = find_json(&b, &argv!["main.rs"]);
    let main: Vec<&Value> =
        main.iter().filter(|h| h["path"].as_str().unwrap().ends_with("proj/src/main.rs")).collect();
    assert_eq!(main.len(), 1);
    assert_eq!(snaps(main[0]), vec![s1.clone(), s2.clone(), s3.clone()]);
    // in human output too: two lines, each naming its snapshots
    let o = b.ok(&argv!["find", "proj/README.md"]);
    let lines: Vec<String> = human_hits(&o)
        .into_iter()
        .filter(|(p, _)| p == readme.as_os_str().as_bytes())
        .map(|(_, l)| l)
        .collect();
    assert_eq!(lines.len(), 2, "{}", o.stdout_str());
    assert!(
        lines[0].contains(&s2[..8]) && lines[0].contains(&s3[..8]) && !lines[0].contains(&s1[..8]),
        "{}",
        lines[0]
    );
    assert!(lines[1].contains(&s1[..8]) && !lines[1].contains(&s2[..8]), "{}", lines[1]);
    // the hint restores the newest version from the latest snapshot holding it
    assert!(
        o.stdout_str().contains(&format!("restore with: bakare restore {} -t DIR", &s3[..8])),
        "{}",
        o.stdout_str()
    );
}

#[test]
fn filters_and_modes() {
    let b = bakare();
    let src = project();
    let (readme, other) = (src.path().join("proj/README.md"), src.path().join("other/readme.txt"));
    set_mtime(&readme, MAY_1);
    set_mtime(&other, MAY_1 + 20 * DAY);
    b.ok(&argv!["init"]);
    let s1 = backup(&b, &argv!["--host", "laptop", src.path()]);
    fs::write(src.path().join("proj/later.md"), "later").unwrap();
    let s2 = backup(&b, &argv!["--host", "server", src.path()]);
    let q = |extra: &[OsString]| {
        let mut a = argv!["readme"].to_vec();
        a.extend_from_slice(extra);
        hit_paths(&find_json(&b, &a))
    };
    let (readme_s, other_s) = (readme.to_string_lossy().into_owned(), other.to_string_lossy().into_owned());
    let both = q(&[]);
    assert!(both.contains(&readme_s) && both.contains(&other_s), "{both:?}");
    // --path: whole components
    assert_eq!(q(&argv!["--path", src.path().join("other")]), vec![other_s.clone()]);
    assert!(q(&argv!["--path", src.path().join("oth")]).is_empty());
    // --newer / --older: the version's mtime
    assert_eq!(q(&argv!["--newer", "2026-05-10"]), vec![other_s.clone()]);
    assert_eq!(q(&argv!["--older", "2026-05-10T12:00:00", "--path", src.path()]), vec![readme_s.clone()]);
    assert!(b.run(&argv!["find", "x", "--newer", "last week"]).stderr.contains("2026-05-01"));
    // --host, --snapshot: later.md is only in the second snapshot
    let later = |extra: &[OsString]| {
        let mut a = argv!["later.md", "--exact"].to_vec();
        a.extend_from_slice(extra);
        find_json(&b, &a).len()
    };
    assert_eq!(later(&[]), 1);
    assert_eq!(later(&argv!["--host", "laptop"]), 0);
    assert_eq!(later(&argv!["--host", "server"]), 1);
    assert_eq!(later(&argv!["--snapshot", &s1[..10]]), 0);
    assert_eq!(later(&argv!["--snapshot", &s1[..10], "--snapshot", &s2[..10]]), 1);
    assert_eq!(later(&argv!["-s", "latest"]), 1);
    let o = b.run(&argv!["find", "x", "--snapshot", "ffffffff"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("no snapshot matches"), "{}", o.stderr);
    // --limit, with the count of what was left out
    let o = b.ok(&argv!["find", "e", "--limit", "2"]);
    assert_eq!(human_hits(&o).len(), 2);
    assert!(o.stdout_str().contains("2 of "), "{}", o.stdout_str());
    // --exact: a substring, so no skipped letters
    assert!(find_json(&b, &argv!["--exact", "rdme"]).is_empty());
    let exact = hit_paths(&find_json(&b, &argv!["--exact", "README"]));
    assert_eq!(exact, vec![readme_s.clone()], "capitals: case-sensitive");
    // --glob: on the name without '/', on the path with it
    let txt = hit_paths(&find_json(&b, &argv!["--glob", "*.txt"]));
    assert_eq!(txt.len(), 3, "{txt:?}");
    assert!(txt.iter().all(|p| p.ends_with(".txt")));
    let glob = format!("{}/*/*.md", src.path().display());
    assert_eq!(
        hit_paths(&find_json(&b, &argv!["--glob", &glob])),
        vec![src_path(&src, "proj/README.md"), src_path(&src, "proj/later.md")]
    );
    assert!(find_json(&b, &argv!["--glob", "**/proj/**/*.rs"]).len() == 1);
    assert_ne!(b.run(&argv!["find", "--glob", "--exact", "x"]).code, 0, "one mode at a time");
}

#[test]
fn non_utf8_names_are_found_printed_as_bytes_and_restored() {
    let b = bakare();
    let src = project();
    b.ok(&argv!["init"]);
    backup(&b, &argv![src.path()]);
    let name = src.path().join(OsString::from_vec(b"notes/caf\xe9-latin1.txt".to_vec()));
    let hits = find_json(&b, &argv!["latin1"]);
    assert_eq!(hits[0]["path_hex"], hex(name.as_os_str().as_bytes()));
    let o = b.ok(&argv!["find", "latin1"]);
    let found = human_hits(&o);
    assert_eq!(found[0].0, name.as_os_str().as_bytes(), "raw bytes, not a lossy copy");
    // the path as printed is accepted by restore as it is
    let target = tempfile::tempdir().unwrap();
    let printed = PathBuf::from(OsString::from_vec(found[0].0.clone()));
    b.ok(&argv!["restore", "latest", "-t", target.path(), &printed]);
    assert_eq!(fs::read(restored_path(target.path(), &name)).unwrap(), b"not utf-8 name");
    // and so is the hint, pasted into a shell
    let target2 = tempfile::tempdir().unwrap();
    run_hint(&b, &o, target2.path());
    assert_eq!(fs::read(restored_path(target2.path(), &name)).unwrap(), b"not utf-8 name");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the `restore with:` line of `find` output in bash, with DIR as `target`.
fn run_hint(b: &Bakare, o: &Outcome, target: &Path) {
    let line = o.stdout.split(|&c| c == b'\n').find(|l| l.starts_with(b"restore with: bakare ")).unwrap();
    let cmd = String::from_utf8(line[b"restore with: ".len()..].to_vec()).unwrap();
    let cmd = cmd.replacen("bakare", env!("CARGO_BIN_EXE_bakare"), 1).replacen(
        " DIR ",
        &format!(" {} ", target.display()),
        1,
    );
    let c = b.command(&argv!["-c", &cmd]);
    let mut bash = std::process::Command::new("bash");
    bash.args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => bash.env(k, v),
            None => bash.env_remove(k),
        };
    }
    let out = bash.output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

fn catalog_file(b: &Bakare) -> PathBuf {
    let root = b.home.path().join(".cache/bakare");
    let repo = fs::read_dir(&root).unwrap().next().unwrap().unwrap().path();
    repo.join("catalog-v1")
}

#[test]
fn the_catalog_is_rebuilt_when_damaged_and_follows_new_and_removed_snapshots() {
    let b = bakare();
    let src = project();
    b.ok(&argv!["init"]);
    let s1 = backup(&b, &argv![src.path()]);
    let first = b.ok(&argv!["--json", "find", "readme"]).json();
    assert!(!first["hits"].as_array().unwrap().is_empty());
    let file = catalog_file(&b);
    let sealed = fs::read(&file).unwrap();
    for needle in [&b"README"[..], b"readme", b"recipes", b"latin1"] {
        assert!(!sealed.windows(needle.len()).any(|w| w == needle), "the catalog leaks names");
    }
    // warm: nothing is added, the same answer
    let warm = b.ok(&argv!["--json", "find", "readme"]);
    assert!(!warm.stderr.contains("added"), "{}", warm.stderr);
    assert_eq!(warm.json(), first);
    // garbage in the catalog: a warning, a rebuild, the same answer
    fs::write(&file, b"garbage, not a catalog at all").unwrap();
    let o = b.ok(&argv!["--json", "find", "readme"]);
    assert!(o.stderr.contains("name catalog") && o.stderr.contains("rebuilding"), "{}", o.stderr);
    assert_eq!(o.json(), first);
    // a flipped byte too
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len() - 20;
    bytes[n] ^= 0x40;
    fs::write(&file, &bytes).unwrap();
    let o = b.ok(&argv!["--json", "find", "readme"]);
    assert!(o.stderr.contains("rebuilding"), "{}", o.stderr);
    assert_eq!(o.json(), first);
    // a snapshot made after the catalog: its new file is found
    fs::write(src.path().join("proj/ROADMAP.md"), "next").unwrap();
    let s2 = backup(&b, &argv![src.path()]);
    let o = b.ok(&argv!["--json", "find", "roadmap"]);
    assert!(o.stderr.contains("1 snapshot(s) added"), "{}", o.stderr);
    let hits = o.json()["hits"].as_array().unwrap().clone();
    assert_eq!(hit_paths(&hits)[0], src_path(&src, "proj/ROADMAP.md"));
    assert_eq!(hits[0]["snapshots"][0]["id"], s2.as_str());
    // a snapshot that is gone is gone from the answers too
    fs::remove_file(b.repo.join("snapshots").join(&s2)).unwrap();
    let hits = find_json(&b, &argv!["--exact", "ROADMAP"]);
    assert!(hits.is_empty(), "{hits:?}");
    let hits = find_json(&b, &argv!["proj/README.md"]);
    assert_eq!(hits[0]["snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(hits[0]["snapshots"][0]["id"], s1.as_str());
    // --cache-dir puts it elsewhere
    let elsewhere = b.home.path().join("other-cache");
    b.ok(&argv!["find", "readme", "--cache-dir", &elsewhere]);
    assert!(fs::read_dir(&elsewhere).unwrap().next().unwrap().unwrap().path().join("catalog-v1").exists());
}

#[test]
fn diff_lists_what_changed_with_the_bytes() {
    let b = bakare();
    let src = TestDir::new()
        .file("same/a.txt", "unchanged")
        .file("edit.txt", "0123456789")
        .file("gone.txt", "12345")
        .file("becomes-dir", "was a file")
        .file("olddir/x.txt", "xx")
        .file("chmod.txt", "mode");
    set_mtime(&src.path().join("edit.txt"), MAY_1);
    set_mtime(&src.path().join("chmod.txt"), MAY_1);
    b.ok(&argv!["init"]);
    let a = backup(&b, &argv![src.path()]);
    let p = src.path();
    fs::write(p.join("edit.txt"), "0123456789abcdefghij").unwrap();
    fs::remove_file(p.join("gone.txt")).unwrap();
    fs::write(p.join("new.txt"), "brand new!").unwrap();
    fs::remove_file(p.join("becomes-dir")).unwrap();
    fs::create_dir(p.join("becomes-dir")).unwrap();
    fs::write(p.join("becomes-dir/inner.txt"), "inside").unwrap();
    fs::remove_dir_all(p.join("olddir")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p.join("chmod.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let bb = backup(&b, &argv![src.path()]);
    let o = b.ok(&argv!["diff", &a[..12], &bb[..12]]);
    let text = o.stdout_str();
    let at = |rel: &str| p.join(rel).display().to_string();
    for line in [
        format!("M {}  (10 B -> 20 B)", at("edit.txt")),
        format!("- {}  (5 B)", at("gone.txt")),
        format!("+ {}  (10 B)", at("new.txt")),
        format!("T {}  (file -> directory)", at("becomes-dir")),
        format!("+ {}  (6 B)", at("becomes-dir/inner.txt")),
        format!("- {}/", at("olddir")),
        format!("- {}  (2 B)", at("olddir/x.txt")),
        format!("U {}  (mode, owner or mtime)", at("chmod.txt")),
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }
    assert!(!text.contains("same/"), "an unchanged directory is skipped: {text}");
    assert!(
        text.contains("2 added, 3 removed, 1 modified, 1 type changed, 1 metadata only; +36 B -27 B"),
        "{text}"
    );
    // in order: a directory's entries right after it
    let lines: Vec<&str> = text.lines().collect();
    let olddir = lines.iter().position(|l| l.starts_with("- ") && l.ends_with("olddir/")).unwrap();
    assert!(lines[olddir + 1].contains("olddir/x.txt"), "{text}");
    // JSON
    let j = b.ok(&argv!["--json", "diff", &a, &bb]).json();
    let s = &j["summary"];
    assert_eq!(
        (s["added"].as_u64(), s["removed"].as_u64(), s["modified"].as_u64()),
        (Some(2), Some(3), Some(1))
    );
    assert_eq!((s["added_bytes"].as_u64(), s["removed_bytes"].as_u64()), (Some(36), Some(27)));
    let changes = j["changes"].as_array().unwrap();
    let edit = changes.iter().find(|c| c["path"] == at("edit.txt").as_str()).unwrap();
    assert_eq!(
        (edit["change"].as_str(), edit["old"]["size"].as_u64(), edit["new"]["size"].as_u64()),
        (Some("M"), Some(10), Some(20))
    );
    // a PATH narrows it; the same snapshot twice has no changes
    let o = b.ok(&argv!["diff", &a, &bb, p.join("olddir")]);
    assert_eq!(o.stdout_str().lines().filter(|l| l.starts_with("- ")).count(), 2, "{}", o.stdout_str());
    let o = b.ok(&argv!["diff", &a, &a]);
    assert!(o.stdout_str().starts_with("0 added, 0 removed, 0 modified"), "{}", o.stdout_str());
    let o = b.run(&argv!["diff", &a, &bb, "/no/such/path"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("in neither snapshot"), "{}", o.stderr);
}

#[test]
fn find_it_restore_it_by_path_or_by_glob() {
    let b = bakare();
    let src =
        project().file("proj/docs/a.txt", "a").file("proj/docs/b.md", "b").file("sp ace/it's.txt", "quoted");
    b.ok(&argv!["init"]);
    backup(&b, &argv![src.path()]);
    // the path printed by find, as it is
    let o = b.ok(&argv!["find", "proj/rdme"]);
    let path = PathBuf::from(OsString::from_vec(human_hits(&o)[0].0.clone()));
    assert_eq!(path, src.path().join("proj/README.md"));
    let t = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "-t", t.path(), &path]);
    assert_eq!(fs::read(restored_path(t.path(), &path)).unwrap(), b"# the project\n");
    assert!(!restored_path(t.path(), &src.path().join("proj/src")).exists(), "only what was asked for");
    // the hint, pasted, with a quote in the name
    let o = b.ok(&argv!["find", "it's"]);
    let t = tempfile::tempdir().unwrap();
    run_hint(&b, &o, t.path());
    assert_eq!(fs::read(restored_path(t.path(), &src.path().join("sp ace/it's.txt"))).unwrap(), b"quoted");
    // a glob pattern selects the matching paths
    let t = tempfile::tempdir().unwrap();
    let pattern = format!("{}/proj/**/*.txt", src.path().display());
    let r = b.ok(&argv!["--json", "restore", "latest", "-t", t.path(), &pattern]).json();
    assert_eq!(r["files"], 1);
    let root = restored_path(t.path(), src.path());
    assert_eq!(fs::read(root.join("proj/docs/a.txt")).unwrap(), b"a");
    assert!(!root.join("proj/docs/b.md").exists() && !root.join("other").exists());
    // --glob: a name pattern anywhere
    let t = tempfile::tempdir().unwrap();
    let r = b.ok(&argv!["--json", "restore", "latest", "-t", t.path(), "--glob", "*.md"]).json();
    assert_eq!(r["files"], 2);
    let root = restored_path(t.path(), src.path());
    assert!(root.join("proj/README.md").exists() && root.join("proj/docs/b.md").exists());
    // a path or pattern that selects nothing is an error
    for missing in
        [src.path().join("nope.txt").display().to_string(), format!("{}/*.nope", src.path().display())]
    {
        let o = b.run(&argv!["restore", "latest", "-t", t.path(), &missing]);
        assert_eq!(o.code, 1, "{missing}");
        assert!(o.stderr.contains("not in snapshot") || o.stderr.contains("matches nothing"), "{}", o.stderr);
    }
}

#[test]
fn a_backup_key_cannot_find_or_diff() {
    let b = bakare();
    let src = project();
    b.ok(&argv!["init"]);
    let id = backup(&b, &argv![src.path()]);
    let key = b.home.path().join("backup.key");
    b.ok(&argv!["key", "export", "--backup-only", &key]);
    for args in
        [argv!["--key", &key, "find", "readme"].to_vec(), argv!["--key", &key, "diff", &id, &id].to_vec()]
    {
        let o = b.run(&args);
        assert_eq!(o.code, 1);
        assert!(o.stderr.contains("backup-only key"), "{}", o.stderr);
        assert!(o.stdout.is_empty());
    }
    assert!(
        !b.home.path().join(".cache/bakare").exists()
            || fs::read_dir(b.home.path().join(".cache/bakare")).unwrap().all(|d| !d
                .unwrap()
                .path()
                .join("catalog-v1")
                .exists())
    );
}

#[test]
fn ls_long_and_recursive() {
    let b = bakare();
    let src = project();
    b.ok(&argv!["init"]);
    backup(&b, &argv![src.path()]);
    let flat = b.ok(&argv!["ls", "latest", src.path()]).stdout_str();
    assert!(flat.contains(&src_path(&src, "proj\n")) && !flat.contains("main.rs"), "{flat}");
    let deep = b.ok(&argv!["ls", "-l", "-r", "latest", src.path()]).stdout_str();
    let main = deep.lines().find(|l| l.ends_with("proj/src/main.rs")).unwrap();
    assert!(main.starts_with("-0") && main.contains(" 13 "), "type, mode and size: {main}");
    let dir = deep.lines().find(|l| l.ends_with("/proj/src")).unwrap();
    assert!(dir.starts_with('d'), "{dir}");
}

/// `find --mem-limit`: a snapshot the name catalog cannot hold within the limit is not searched,
/// named in a warning, and find exits 3 (partial); nothing of it is saved, so with room it is
/// walked and found. 113 MiB leaves the catalog under 1 MiB while it is built (40 MiB fixed,
/// 64 MiB of tree entries a walk may hold, an 8 MiB reader cache, the index); 20,000 paths need
/// several.
#[test]
fn find_leaves_out_a_snapshot_its_mem_limit_cannot_hold_and_exits_3() {
    let b = bakare();
    b.ok(&argv!["init"]);
    let src = tempfile::tempdir().unwrap();
    for d in 0..100 {
        let dir = src.path().join(format!("dir-{d:03}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..200 {
            fs::write(dir.join(format!("file-{f:03}.txt")), format!("{d} {f}")).unwrap();
        }
    }
    fs::write(src.path().join("dir-042/needle-in-the-haystack.txt"), "found").unwrap();
    let id = backup(&b, &argv![src.path()]);

    let limit = 113u64 << 20;
    for _ in 0..2 {
        let o = b.run(&argv!["find", "--mem-limit", "113M", "needle"]);
        assert_eq!(o.code, 3, "{}", o.stderr);
        let warning = format!("snapshot {} not searched: the name catalog would need more than --mem-limit 113 MiB allows (raise --mem-limit)", &id[..16]);
        assert!(o.stderr.contains(&warning), "{}", o.stderr);
        assert!(!String::from_utf8_lossy(&o.stdout).contains("needle"), "not searched, not found");
        assert!(o.peak_rss < limit, "find peaked at {} MiB", o.peak_rss >> 20);
    }

    // Without --mem-limit (1 GiB): the snapshot is walked, the file found.
    let o = b.run(&argv!["find", "needle"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(String::from_utf8_lossy(&o.stdout).contains("/dir-042/needle-in-the-haystack.txt"), "{o:?}");
    eprintln!("find building a catalog of 20,101 files: peak RSS {} MiB", o.peak_rss >> 20);
    // The saved catalog is read at 113M: a query holds less than a build (no index, no walk).
    let o = b.run(&argv!["--json", "find", "--mem-limit", "113M", "needle"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.json()["total"], 1);
}
