//! `dump` and `restore --target -` through the real binary: a file comes out as its bytes (holes
//! as zeros), a directory as a tar stream that the system's GNU tar extracts into the same tree
//! (modes, times, links, a hard link, extended attributes, odd and long names), a closed pipe
//! is a quiet success, and damage stops the stream with an error instead of wrong bytes; and
//! `--archive zip`, read by Python's `zipfile` (.ci/run installs python3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chaos::argv;
use chaos::oracle::{file_deps, key_file};
use chaos::testkit::{assert_same_tree, restored_path, Bakare, Rng, TestDir};
use rustix::fs::XattrFlags;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// A name of more than 100 bytes (the old tar header's limit), and one that is not UTF-8.
const LONG: &str = "a-name-longer-than-the-hundred-bytes-an-old-tar-header-holds-so-it-needs-an-extension-record-of-its-own.txt";
const ODD: &[u8] = b"caf\xe9 \xff.txt";

/// Files big and small, a sparse one, an empty one, a symlink, a hard link, a FIFO, odd and
/// long names, a user.* extended attribute where the file system takes one.
fn tree() -> (TestDir, bool) {
    let mut rng = Rng::new(7);
    let t = TestDir::new()
        .file("docs/notes.txt", "some notes\n")
        .file("docs/empty", "")
        .file("data/random.bin", rng.bytes(3 << 20))
        .file(format!("deep/{LONG}"), "long\n")
        .file(Path::new("deep").join(OsStr::from_bytes(ODD)), "odd\n")
        .symlink("docs/link", "notes.txt")
        .symlink("deep/far", format!("./{LONG}//{LONG}"))
        .hardlink("data/again.txt", "docs/notes.txt")
        .fifo("pipe");
    let sparse = fs::File::create(t.path().join("data/sparse")).unwrap();
    sparse.write_all_at(&rng.bytes(70_000), 1 << 20).unwrap();
    sparse.set_len(3 << 20).unwrap();
    if chaos::testkit::is_root() {
        // An owner other than the one extracting, kept by `tar -x -p --numeric-owner`.
        std::os::unix::fs::lchown(t.path().join("data/random.bin"), Some(1234), Some(4321)).unwrap();
    }
    let xattr =
        rustix::fs::setxattr(t.path().join("docs/notes.txt"), "user.color", b"blue", XattrFlags::empty())
            .is_ok();
    (t, xattr)
}

fn user_color(p: &Path) -> Option<Vec<u8>> {
    let mut v = [0u8; 64];
    let n = rustix::fs::getxattr(p, "user.color", &mut v[..]).ok()?;
    Some(v[..n].to_vec())
}

/// Extracts `archive` with GNU tar into a new directory, as root would keep owners.
fn untar(archive: &[u8]) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("archive.tar");
    fs::write(&file, archive).unwrap();
    let dir = out.path().join("x");
    fs::create_dir(&dir).unwrap();
    let st = Command::new("tar")
        .args(["-x", "--xattrs", "--xattrs-include=*", "-p", "--numeric-owner", "-f"])
        .arg(&file)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "tar -x failed");
    out
}

/// The names `tar -t` lists, as bytes.
fn listed(archive: &[u8]) -> Vec<Vec<u8>> {
    let mut child = Command::new("tar")
        .args(["-t", "--quoting-style=literal", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = archive.to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data).unwrap());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

#[test]
fn a_file_is_dumped_as_its_bytes_holes_as_zeros() {
    let (src, _) = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    for rel in ["docs/notes.txt", "docs/empty", "data/random.bin", "data/sparse", "data/again.txt"] {
        let p = src.path().join(rel);
        let o = b.ok(&argv!["dump", "latest", &p]);
        assert_eq!(o.stdout, fs::read(&p).unwrap(), "{rel}");
        assert!(o.stderr.is_empty(), "{rel}: {}", o.stderr);
    }
    let odd = src.path().join("deep").join(OsStr::from_bytes(ODD));
    assert_eq!(b.ok(&argv!["dump", "latest", &odd]).stdout, b"odd\n");
    // Through a small memory ceiling, as restore takes it.
    let big = src.path().join("data/random.bin");
    let o = b.ok(&argv!["dump", "--mem-limit", "128M", "latest", &big]);
    assert_eq!(o.stdout, fs::read(&big).unwrap());
    assert!(o.peak_rss < 128 << 20, "peak RSS {} MiB", o.peak_rss >> 20);
}

#[test]
fn a_directory_is_dumped_as_a_tar_that_recreates_it() {
    let (src, xattr) = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let o = b.ok(&argv!["dump", "latest", src.path()]);
    // Named from the directory's parent: `tar -x` makes the directory itself.
    let name = src.path().file_name().unwrap().as_bytes().to_vec();
    let under = |rel: &[u8]| [&name[..], b"/", rel].concat();
    let mut want: Vec<Vec<u8>> = vec![name.clone()];
    for rel in [
        &b"data"[..],
        b"data/again.txt",
        b"data/random.bin",
        b"data/sparse",
        b"deep",
        b"deep/far",
        LONG.as_bytes(),
        ODD,
        b"docs",
        b"docs/empty",
        b"docs/link",
        b"docs/notes.txt",
        b"pipe",
    ] {
        let rel =
            if rel == LONG.as_bytes() || rel == ODD { [&b"deep/"[..], rel].concat() } else { rel.to_vec() };
        want.push(under(&rel));
    }
    let mut got = listed(&o.stdout);
    got.sort();
    want.sort();
    assert_eq!(
        got.iter().map(|n| String::from_utf8_lossy(n)).collect::<Vec<_>>(),
        want.iter().map(|n| String::from_utf8_lossy(n)).collect::<Vec<_>>()
    );

    let out = untar(&o.stdout);
    let copy = out.path().join("x").join(OsStr::from_bytes(&name));
    assert_same_tree(src.path(), &copy);
    if xattr {
        assert_eq!(user_color(&copy.join("docs/notes.txt")).as_deref(), Some(&b"blue"[..]));
    }

    // The whole snapshot: every path from the root.
    let all = b.ok(&argv!["dump", "latest", "/"]);
    let out = untar(&all.stdout);
    assert_same_tree(src.path(), &restored_path(&out.path().join("x"), src.path()));
}

#[test]
fn a_hard_link_whose_first_name_is_left_out_is_stored_whole() {
    let (src, _) = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    // data/again.txt and docs/notes.txt are one file: whichever directory holds its second
    // name, alone, still has its content.
    let mut notes = 0;
    for (dir, rel) in [("data", "again.txt"), ("docs", "notes.txt")] {
        let o = b.ok(&argv!["dump", "latest", src.path().join(dir)]);
        let out = untar(&o.stdout);
        assert_eq!(fs::read(out.path().join("x").join(dir).join(rel)).unwrap(), b"some notes\n");
        notes += usize::from(o.stderr.contains("1 hard links stored as copies"));
    }
    assert_eq!(notes, 1);
}

#[test]
fn restore_to_a_dash_writes_the_same_tree_as_a_tar_stream() {
    let (src, xattr) = tree();
    // A privileged attribute (as root): in the stream as the owner restores, not with
    // --no-owner, as a restore to a directory.
    let privileged = xattr
        && chaos::testkit::is_root()
        && rustix::fs::lsetxattr(
            src.path().join("docs/notes.txt"),
            "trusted.mark",
            b"t",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok();
    let mark = b"SCHILY.xattr.trusted.mark";
    let has_mark = |tar: &[u8]| tar.windows(mark.len()).any(|w| w == mark);
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let o = b.ok(&argv!["restore", "latest", "--target", "-"]);
    assert_eq!(has_mark(&o.stdout), privileged);
    let out = untar(&o.stdout);
    let copy = restored_path(&out.path().join("x"), src.path());
    assert_same_tree(src.path(), &copy);
    if xattr {
        assert_eq!(user_color(&copy.join("docs/notes.txt")).as_deref(), Some(&b"blue"[..]));
    }
    // Only the paths given, in their place from the root.
    let docs = src.path().join("docs");
    let o = b.ok(&argv!["restore", "latest", "--target", "-", &docs]);
    let out = untar(&o.stdout);
    assert_same_tree(&docs, &restored_path(&out.path().join("x"), &docs));
    assert!(!restored_path(&out.path().join("x"), &src.path().join("data")).exists());
    // --no-special leaves the FIFO out; --no-owner gives every entry to uid and gid 0.
    let o = b.ok(&argv!["restore", "latest", "--target", "-", "--no-special", "--no-owner"]);
    assert!(o.stderr.contains("1 FIFOs and device nodes left out"), "{}", o.stderr);
    assert!(!has_mark(&o.stdout));
    if privileged {
        assert!(
            o.stderr.contains("1 privileged extended attributes (trusted.*, security.*) left out"),
            "{}",
            o.stderr
        );
    }
    let names = listed(&o.stdout);
    assert!(!names.iter().any(|n| n.ends_with(b"/pipe")));
    assert!(names.iter().any(|n| n.ends_with(b"/docs/notes.txt")));
    let mut child = Command::new("tar")
        .args(["-t", "-v", "--numeric-owner", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &o.stdout).unwrap();
    let long = child.wait_with_output().unwrap();
    let long = String::from_utf8_lossy(&long.stdout).into_owned();
    assert!(long.lines().all(|l| l.contains(" 0/0 ")), "{long}");
    // What a tar stream cannot do is refused.
    let o = b.run(&argv!["restore", "latest", "--target", "-", "--delete"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("--delete does not apply"), "{}", o.stderr);
}

#[test]
fn a_path_not_in_the_snapshot_or_not_a_file_is_a_clear_error() {
    let (src, _) = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let missing = src.path().join("docs/missing.txt");
    let o = b.run(&argv!["dump", "latest", &missing]);
    assert_eq!(o.code, 1);
    assert!(o.stdout.is_empty());
    assert!(o.stderr.contains(&format!("{} is not in snapshot", missing.display())), "{}", o.stderr);
    let o = b.run(&argv!["dump", "latest", src.path().join("docs/link")]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("is not a file or a directory"), "{}", o.stderr);
}

#[test]
fn a_closed_pipe_ends_the_dump_quietly() {
    let (src, _) = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    for what in [src.path().join("data/random.bin"), src.path().to_path_buf()] {
        let mut child = b
            .command(&argv!["dump", "latest", &what])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 10];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The reader is gone (`| head -c 10`).
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_damaged_blob_stops_the_dump_without_wrong_bytes() {
    let (src, _) = tree();
    let b = bakare();
    // Without parity, which would repair the flip (tests/parity.rs).
    b.ok(&argv!["init", "--parity", "0"]);
    b.ok(&argv!["run", src.path()]);
    let deps = file_deps(&b.repo, &key_file(b.home.path()));
    let victim = deps.iter().find(|f| f.path.ends_with(b"data/random.bin")).unwrap();
    let (pack, off, len) = victim.content.last().unwrap();
    let pack = b.repo.join(pack);
    let mut d = fs::read(&pack).unwrap();
    d[(off + len / 2) as usize] ^= 0x40;
    fs::write(&pack, d).unwrap();

    let p: PathBuf = src.path().join("data/random.bin");
    let o = b.run(&argv!["dump", "latest", &p]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains(&p.display().to_string()), "{}", o.stderr);
    let whole = fs::read(&p).unwrap();
    assert!(o.stdout.len() < whole.len() && whole.starts_with(&o.stdout), "only intact bytes");
    let o = b.run(&argv!["dump", "latest", src.path()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("data/random.bin"), "{}", o.stderr);
}

/// `python3 -c` reading a zip from stdin: one line per entry, `name mode size` (mode from the
/// unix attributes), then extracting into `dir` (symlinks as links) with `zipfile`.
const ZIP_READER: &str = r#"
import io, os, stat, sys, zipfile
z = zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read()))
out = sys.argv[1]
for i in z.infolist():
    mode = i.external_attr >> 16
    print(i.filename, oct(mode), i.file_size, "%04d-%02d-%02dT%02d:%02d:%02d" % i.date_time)
    dest = os.path.join(out, i.filename)
    if stat.S_ISLNK(mode):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.symlink(z.read(i).decode(), dest)
    elif i.is_dir():
        os.makedirs(dest, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(z.read(i))
"#;

/// Reads a zip with Python's `zipfile` (its own CRC checks included): the listing, and the
/// tree extracted into a temporary directory.
fn unzip(archive: &[u8]) -> (String, tempfile::TempDir) {
    let (listing, out) = zip_reader(archive);
    (listing.unwrap_or_else(|e| panic!("python zipfile: {e}")), out)
}

/// `unzip`, or Python's complaint if it is no valid zip.
fn zip_reader(archive: &[u8]) -> (Result<String, String>, tempfile::TempDir) {
    use std::io::Write;
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new("python3")
        .args(["-c", ZIP_READER])
        .arg(out.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(archive).unwrap();
    let o = child.wait_with_output().unwrap();
    match o.status.success() {
        true => (Ok(String::from_utf8(o.stdout).unwrap()), out),
        false => (Err(String::from_utf8_lossy(&o.stderr).into_owned()), out),
    }
}

#[test]
fn a_directory_is_dumped_as_a_zip_that_python_extracts_byte_for_byte() {
    let (src, _) = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let o = b.run(&argv!["dump", "latest", src.path(), "--archive", "zip"]);
    // The name that is not UTF-8 is left out, counted, and makes the dump partial (exit 3);
    // the FIFO too (zip has no type for it), with a note.
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(
        o.stderr.contains("1 entries left out: their names or link targets are not UTF-8"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("1 FIFOs, sockets and device nodes left out"), "{}", o.stderr);
    let (listing, out) = unzip(&o.stdout);
    let name = src.path().file_name().unwrap().to_str().unwrap();
    let copy = out.path().join(name);
    // Every file's bytes (the hard link a copy, the sparse file's holes as zeros), symlinks.
    for rel in ["docs/notes.txt", "docs/empty", "data/random.bin", "data/sparse", "data/again.txt"] {
        assert!(fs::read(src.path().join(rel)).unwrap() == fs::read(copy.join(rel)).unwrap(), "{rel}");
    }
    assert_eq!(fs::read(copy.join("deep").join(LONG)).unwrap(), b"long\n");
    assert_eq!(fs::read_link(copy.join("docs/link")).unwrap(), Path::new("notes.txt"));
    assert!(!copy.join("pipe").exists());
    // Modes and times as stored (zip's times are in 2-second steps).
    let md = fs::metadata(src.path().join("data/random.bin")).unwrap();
    let mtime = jiff_free_utc(md.modified().unwrap());
    let line = listing.lines().find(|l| l.starts_with(&format!("{name}/data/random.bin "))).unwrap();
    let mode = format!("{:#o}", std::os::unix::fs::MetadataExt::mode(&md));
    assert!(line.contains(&format!(" {mode} ")), "{line} ({mode})");
    assert!(line.ends_with(&mtime), "{line} ({mtime})");
    let dirs = listing.lines().filter(|l| l.starts_with(&format!("{name}/deep/ "))).count();
    assert_eq!(dirs, 1, "{listing}");
    // Under a --mem-limit whose share the central directory passes: a clear error naming tar.
    let mut many = TestDir::new();
    for i in 0..40_000 {
        many = many.file(format!("d{}/f{i:05}", i % 100), "");
    }
    b.ok(&argv!["run", many.path()]);
    let o = b.run(&argv!["dump", "latest", many.path(), "--archive", "zip", "--mem-limit", "90M"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("central directory") && o.stderr.contains("--archive tar"), "{}", o.stderr);
    // ... and what it wrote before it stopped is no valid zip: a cut archive never looks whole.
    assert!(!o.stdout.is_empty());
    assert!(zip_reader(&o.stdout).0.is_err(), "a stopped dump left a zip that reads");
    assert!(!o.stderr.contains("finalize"), "{}", o.stderr);
}

/// `t` as zip's `YYYY-MM-DDTHH:MM:SS` (UTC, seconds rounded down to even).
fn jiff_free_utc(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = rest % 60 / 2 * 2;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{s:02}", rest / 3600, rest % 3600 / 60)
}
