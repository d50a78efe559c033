//! Paths to back up that are, or pass through, symlinks, through the real binary: what the
//! snapshot holds (`ls -l -r`: types and modes), and that a restore makes no world-writable
//! directory that was not world-writable in the source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chaos::argv;
use chaos::testkit::{restored_path, Bakare, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// `real/` (mode 0750) with a file and a subdirectory, and `link -> real`.
fn tree() -> TestDir {
    let t = TestDir::new().file("real/file", "f").file("real/sub/g", "g").symlink("link", "real");
    for (p, mode) in [("real", 0o750), ("real/sub", 0o755), ("real/file", 0o644), ("real/sub/g", 0o644)] {
        fs::set_permissions(t.path().join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    t
}

/// `ls -l -r latest` below `src`: relative path -> (type char, mode).
fn listing(b: &Bakare, src: &Path) -> BTreeMap<String, (char, u32)> {
    let out = b.ok(&argv!["ls", "-l", "-r", "latest"]).stdout_str();
    let prefix = format!("{}/", src.display());
    out.lines()
        .filter_map(|l| {
            let (head, path) = l.split_once("  /")?;
            let rel = format!("/{path}").strip_prefix(&prefix)?.to_string();
            let kind = head.chars().next()?;
            let mode = u32::from_str_radix(head.get(1..5)?, 8).ok()?;
            Some((rel, (kind, mode)))
        })
        .collect()
}

fn want(entries: &[(&str, char, u32)]) -> BTreeMap<String, (char, u32)> {
    entries.iter().map(|(p, k, m)| (p.to_string(), (*k, *m))).collect()
}

/// Restores the latest snapshot; checks every restored directory against the source path it
/// came from: world-writable only if that was. Returns where `src` landed.
fn restore_checked(b: &Bakare, src: &Path, target: &Path) -> PathBuf {
    b.ok(&argv!["restore", "latest", "--target", target]);
    let mut stack = vec![target.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if !md.is_dir() {
                continue;
            }
            let source = Path::new("/").join(p.strip_prefix(target).unwrap());
            let was = fs::metadata(&source).map(|m| m.permissions().mode() & 0o002 != 0).unwrap_or(false);
            assert!(
                md.permissions().mode() & 0o002 == 0 || was,
                "{} was restored world-writable ({:o}); {} is not",
                p.display(),
                md.permissions().mode(),
                source.display()
            );
            stack.push(p);
        }
    }
    restored_path(target, src)
}

#[test]
fn a_root_that_is_a_symlink_is_stored_as_the_link() {
    let src = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path().join("link")]);
    assert_eq!(listing(&b, src.path()), want(&[("link", 'l', 0o777)]));
    let target = tempfile::tempdir().unwrap();
    let at = restore_checked(&b, src.path(), target.path());
    assert_eq!(fs::read_link(at.join("link")).unwrap(), Path::new("real"));
}

#[test]
fn a_root_named_with_a_trailing_slash_stores_the_directory_it_points_to() {
    for given in ["link/", "link/."] {
        let src = tree();
        let b = bakare();
        b.ok(&argv!["run", format!("{}/{given}", src.path().display())]);
        assert_eq!(
            listing(&b, src.path()),
            want(&[
                ("link", 'd', 0o750),
                ("link/file", '-', 0o644),
                ("link/sub", 'd', 0o755),
                ("link/sub/g", '-', 0o644)
            ]),
            "{given}"
        );
        // The snapshot records the path as given, without the slash.
        let snaps = b.ok(&argv!["snapshots", "--path", src.path().join("link")]).stdout_str();
        assert!(snaps.contains(&src.path().join("link").display().to_string()), "{given}: {snaps}");
        let target = tempfile::tempdir().unwrap();
        let at = restore_checked(&b, src.path(), target.path());
        let link = fs::symlink_metadata(at.join("link")).unwrap();
        assert!(link.is_dir(), "{given}: restored as a directory");
        assert_eq!(link.permissions().mode() & 0o7777, 0o750, "{given}");
        assert_eq!(fs::read(at.join("link/sub/g")).unwrap(), b"g");
    }
}

#[test]
fn an_ancestor_that_is_a_symlink_is_recorded_as_the_directory_it_points_to() {
    let src = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path().join("link/file")]);
    // Not a directory with the link's mode 0777: the directory it resolves to, as restic does.
    assert_eq!(listing(&b, src.path()), want(&[("link", 'd', 0o750), ("link/file", '-', 0o644)]));
    let target = tempfile::tempdir().unwrap();
    let at = restore_checked(&b, src.path(), target.path());
    assert_eq!(fs::symlink_metadata(at.join("link")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(fs::read(at.join("link/file")).unwrap(), b"f");
}

#[test]
fn a_root_below_a_root_stored_as_a_link_is_an_error_entry() {
    let src = tree();
    let b = bakare();
    let out = b.run(&argv!["run", src.path().join("link"), src.path().join("link/file")]);
    assert_eq!(out.code, 3, "a partial backup: {}", out.stderr);
    let said = format!("{}{}", out.stdout_str(), out.stderr);
    assert!(said.contains(&src.path().join("link/file").display().to_string()), "{said}");
    assert_eq!(listing(&b, src.path()), want(&[("link", 'l', 0o777)]));
    // The same path named both ways: the directory is stored, and the link named as not saved.
    let b = bakare();
    let out = b.run(&argv!["run", src.path().join("link"), format!("{}/link/", src.path().display())]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(listing(&b, src.path()).get("link"), Some(&('d', 0o750)));
    // Named through the link's slash, the file is inside the walked root: no error.
    let b = bakare();
    b.ok(&argv!["run", format!("{}/link/", src.path().display()), src.path().join("link/file")]);
    assert_eq!(listing(&b, src.path()).len(), 4);
    let target = tempfile::tempdir().unwrap();
    restore_checked(&b, src.path(), target.path());
}
