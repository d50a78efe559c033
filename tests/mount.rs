//! `mount` through the real binary: a snapshot's files read through FUSE equal the source
//! (contents, random ranges of a large file, holes, names that are not UTF-8, modes, sizes,
//! times, symlinks, a hard link and a FIFO), `latest` and `hosts/` resolve, a backup made while mounted appears, and
//! a damaged blob is EIO on the reads under it (never other bytes) while the rest serves; and
//! both `fusermount -u` and SIGTERM unmount and end the command with exit code 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos::argv;
use chaos::oracle::{file_deps, key_file};
use chaos::testkit::{skipped, Bakare, Rng, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

const ODD: &[u8] = b"caf\xe9 \xff.bin";
const BIG: usize = 20 << 20;

fn tree() -> TestDir {
    let mut rng = Rng::new(22);
    let t = TestDir::new()
        .file("docs/notes.txt", "some notes\n")
        .file("docs/empty", "")
        .file("big/random.bin", rng.bytes(BIG))
        .file(Path::new("deep/a/b").join(OsStr::from_bytes(ODD)), rng.bytes(100_000))
        .symlink("docs/link", "notes.txt")
        .hardlink("docs/again.txt", "docs/notes.txt")
        .fifo("pipe");
    let sparse = fs::File::create(t.path().join("docs/sparse")).unwrap();
    sparse.write_all_at(&rng.bytes(70_000), 1 << 20).unwrap();
    sparse.set_len(3 << 20).unwrap();
    t
}

fn fusermount() -> Option<&'static str> {
    ["fusermount3", "fusermount"]
        .into_iter()
        .find(|b| Command::new(b).arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok())
}

/// Says why FUSE cannot be used here and returns, or fails with BAKARE_REQUIRE_FUSE set.
fn cannot_mount(why: &str) {
    assert!(std::env::var_os("BAKARE_REQUIRE_FUSE").is_none(), "cannot mount FUSE here: {why}");
    skipped(&format!("cannot mount FUSE here: {why}"));
}

/// `bakare mount` running at `dir`; unmounted (lazily) and killed if a test fails.
struct Mounted {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    tmp: tempfile::TempDir,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(bin) = fusermount() {
            let _ = Command::new(bin).arg("-u").arg("-z").arg(&self.dir).stderr(Stdio::null()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mounted {
    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the command to end; its exit code.
    fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(start.elapsed() < limit, "bakare mount did not end: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_mounted(&self) -> bool {
        let dir = fs::canonicalize(&self.tmp).unwrap().join("mnt");
        fs::read("/proc/self/mounts")
            .unwrap()
            .split(|&c| c == b'\n')
            .any(|l| l.split(|&c| c == b' ').nth(1) == Some(dir.as_os_str().as_bytes()))
    }
}

/// Mounts `b`'s repository; None (having said why) if FUSE cannot be used here.
fn mount(b: &Bakare) -> Option<Mounted> {
    mount_with(b, &[])
}

/// `mount` with more arguments.
fn mount_with(b: &Bakare, extra: &[&str]) -> Option<Mounted> {
    if !Path::new("/dev/fuse").exists() {
        cannot_mount("no /dev/fuse");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnt");
    fs::create_dir(&dir).unwrap();
    let log = tmp.path().join("stderr");
    let mut args = argv!["mount", "--refresh", "1", &dir].to_vec();
    args.extend(extra.iter().map(Into::into));
    let child =
        b.command(&args).stdout(Stdio::null()).stderr(fs::File::create(&log).unwrap()).spawn().unwrap();
    let mut m = Mounted { child, dir, log, tmp };
    let start = Instant::now();
    while !m.dir.join("snapshots").exists() {
        if let Some(st) = m.child.try_wait().unwrap() {
            cannot_mount(&format!("bakare mount ended ({st}): {}", m.stderr().trim()));
            return None;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "not mounted in a minute: {}", m.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(m)
}

/// Every entry below `src` is below `mnt` with the same type, mode, owner, size, mtime and
/// content (files' bytes, symlinks' targets, directories' names).
fn assert_same(src: &Path, mnt: &Path) {
    let (a, b) = (fs::symlink_metadata(src).unwrap(), fs::symlink_metadata(mnt).unwrap());
    let at = src.display();
    assert_eq!(a.mode(), b.mode(), "{at}: mode");
    assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{at}: owner");
    assert_eq!((a.mtime(), a.mtime_nsec()), (b.mtime(), b.mtime_nsec()), "{at}: mtime");
    if a.is_file() {
        assert_eq!(a.len(), b.len(), "{at}: size");
        assert!(fs::read(src).unwrap() == fs::read(mnt).unwrap(), "{at}: content");
    } else if a.is_symlink() {
        assert_eq!(fs::read_link(src).unwrap(), fs::read_link(mnt).unwrap(), "{at}: target");
    } else if a.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        let (na, nb) = (names(src), names(mnt));
        assert_eq!(na, nb, "{at}: listing");
        for n in na {
            assert_same(&src.join(&n), &mnt.join(&n));
        }
    }
}

fn snapshots(mnt: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(mnt.join("snapshots")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn a_mounted_snapshot_reads_as_its_source_and_new_snapshots_appear() {
    let src = tree();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let Some(mut m) = mount(&b) else { return };
    let mnt = m.dir.clone();
    let rel = src.path().strip_prefix("/").unwrap();

    let latest = fs::read_link(mnt.join("latest")).unwrap();
    assert!(latest.starts_with("snapshots"), "{}", latest.display());
    assert_eq!(snapshots(&mnt), vec![mnt.join(&latest)]);
    let root = mnt.join("latest").join(rel);
    assert_same(src.path(), &root);

    // Random ranges of the large file: only the blobs under them are read.
    let want = fs::read(src.path().join("big/random.bin")).unwrap();
    let f = fs::File::open(root.join("big/random.bin")).unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..100 {
        let at = rng.below(BIG as u64 + 10) as usize;
        let len = rng.below(300_000) as usize + 1;
        let mut got = vec![0u8; len];
        let mut n = 0;
        while n < len {
            match f.read_at(&mut got[n..], (at + n) as u64).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        let end = (at + len).min(BIG);
        assert_eq!(n, end.saturating_sub(at), "read at {at}+{len}");
        assert!(got[..n] == want[at.min(BIG)..end], "bytes at {at}+{len}");
    }
    drop(f); // an open file keeps the mount busy

    // hosts/<host>/<snapshot> leads to the same snapshot.
    let hosts: Vec<_> = fs::read_dir(mnt.join("hosts")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(hosts.len(), 1);
    let by_host: Vec<_> = fs::read_dir(&hosts[0]).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(by_host.len(), 1);
    assert!(fs::read(by_host[0].join(rel).join("docs/notes.txt")).unwrap() == b"some notes\n");

    // A backup made while mounted shows up after the refresh interval (1 s here).
    fs::write(src.path().join("docs/new.txt"), "new\n").unwrap();
    b.ok(&argv!["run", "--tag", "second", src.path()]);
    let start = Instant::now();
    while snapshots(&mnt).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "the second snapshot did not appear");
        std::thread::sleep(Duration::from_millis(200));
    }
    let start = Instant::now();
    while !fs::read_link(mnt.join("latest")).is_ok_and(|l| l != latest) {
        assert!(start.elapsed() < Duration::from_secs(30), "latest did not move");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_same(src.path(), &mnt.join("latest").join(rel));
    assert!(fs::read(mnt.join("tags/second")).is_err(), "tags/second is a directory");
    assert_eq!(fs::read_dir(mnt.join("tags/second")).unwrap().count(), 1);

    let st = Command::new(fusermount().unwrap()).arg("-u").arg(&mnt).status().unwrap();
    assert!(st.success());
    assert_eq!(m.wait(Duration::from_secs(30)), 0, "{}", m.stderr());
    assert!(!m.is_mounted());
}

#[test]
fn sigterm_unmounts_and_ends() {
    let src = TestDir::new().file("f", "x\n");
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let Some(mut m) = mount(&b) else { return };
    assert_eq!(snapshots(&m.dir).len(), 1);
    let st = Command::new("kill").arg("-TERM").arg(m.child.id().to_string()).status().unwrap();
    assert!(st.success());
    assert_eq!(m.wait(Duration::from_secs(30)), 0, "{}", m.stderr());
    assert!(!m.is_mounted(), "still mounted after SIGTERM");
    assert!(m.stderr().contains("SIGTERM"), "{}", m.stderr());
}

#[test]
fn a_damaged_blob_is_eio_and_the_mount_goes_on() {
    let mut rng = Rng::new(9);
    let src = TestDir::new().file("big.bin", rng.bytes(8 << 20)).file("small.txt", "small\n");
    let b = bakare();
    // Without parity, which would repair the flip (tests/parity.rs).
    b.ok(&argv!["init", "--parity", "0"]);
    b.ok(&argv!["run", src.path()]);
    let deps = file_deps(&b.repo, &key_file(b.home.path()));
    let victim = deps.iter().find(|f| f.path.ends_with(b"big.bin")).unwrap();
    assert!(victim.content.len() > 1, "several blobs");
    let (pack, off, len) = victim.content.last().unwrap();
    let pack = b.repo.join(pack);
    let mut d = fs::read(&pack).unwrap();
    d[(off + len / 2) as usize] ^= 0x40;
    fs::write(&pack, d).unwrap();

    let Some(m) = mount(&b) else { return };
    let root = m.dir.join("latest").join(src.path().strip_prefix("/").unwrap());
    let want = fs::read(src.path().join("big.bin")).unwrap();
    let f = fs::File::open(root.join("big.bin")).unwrap();
    let mut head = vec![0u8; 64 << 10];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head == want[..64 << 10], "the intact start reads as it was");
    let e = fs::read(root.join("big.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc_eio()), "{e}");
    let log = m.stderr();
    assert!(log.contains("big.bin") && log.contains("blob"), "{log}");
    assert!(fs::read(root.join("small.txt")).unwrap() == b"small\n", "still serving");
}

/// EIO (5 on Linux).
fn libc_eio() -> i32 {
    5
}

/// Whether `tool` is installed; if not it says so, and fails where CI installs it.
fn have(tool: &str) -> bool {
    chaos::testkit::tool_or_skip(tool, "BAKARE_REQUIRE_FUSE")
}

/// `tool args path`'s output without its `# file:` line.
fn dumped(tool: &str, args: &[&str], path: &Path) -> String {
    let out = Command::new(tool).args(args).arg(path).output().unwrap();
    assert!(out.status.success(), "{tool} {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("# file:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `cat path` as user `nobody`: its output, or None if refused.
fn cat_as_nobody(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::process::CommandExt;
    let out = Command::new("cat").arg(path).uid(65534).gid(65534).output().unwrap();
    out.status.success().then_some(out.stdout)
}

/// Extended attributes and ACLs read through the mount as they were stored (`getfattr`,
/// `getfacl`), and the kernel enforces the stored modes and ACLs for other users, who get in
/// at all only with `--allow-other`.
#[test]
fn xattrs_and_acls_read_as_stored_and_allow_other_lets_other_users_in_as_stored() {
    use std::os::unix::fs::PermissionsExt;
    let src = TestDir::new()
        .file("pub/readme", "for everyone\n")
        .file("pub/shared", "nobody may read this one\n")
        .file("pub/secret", "owner only\n");
    let mode =
        |p: &str, m: u32| fs::set_permissions(src.path().join(p), fs::Permissions::from_mode(m)).unwrap();
    mode("", 0o755);
    mode("pub", 0o755);
    mode("pub/readme", 0o644);
    mode("pub/shared", 0o600);
    mode("pub/secret", 0o600);
    let (fattr, facl) = (have("setfattr") && have("getfattr"), have("setfacl") && have("getfacl"));
    if fattr {
        let path = src.path().join("pub/readme");
        assert!(
            Command::new("setfattr").args(["-n", "user.note", "-v", "hello"]).arg(path).status_ok(),
            "setfattr"
        );
    }
    if facl {
        let path = src.path().join("pub/shared");
        assert!(Command::new("setfacl").args(["-m", "u:nobody:r"]).arg(path).status_ok(), "setfacl");
    }
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let Some(mut m) = mount_with(&b, &["--allow-other"]) else { return };
    let root = m.dir.join("latest").join(src.path().strip_prefix("/").unwrap());
    for f in ["pub/readme", "pub/shared", "pub/secret"] {
        if fattr {
            let args = ["-d", "-m", "-", "-e", "hex", "--absolute-names"];
            let want = dumped("getfattr", &args, &src.path().join(f));
            assert_eq!(dumped("getfattr", &args, &root.join(f)), want, "{f}: extended attributes");
            if f == "pub/readme" {
                assert!(want.contains("user.note=0x68656c6c6f"), "{want}");
            }
        }
        if facl {
            let args = ["-p"];
            assert_eq!(
                dumped("getfacl", &args, &root.join(f)),
                dumped("getfacl", &args, &src.path().join(f)),
                "{f}: ACL"
            );
        }
    }
    if !chaos::testkit::root_or_skip("reading a mount as another user") {
        return;
    }
    // The mount's own directory must let `nobody` through to it.
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(cat_as_nobody(&root.join("pub/readme")).as_deref(), Some(&b"for everyone\n"[..]));
    assert_eq!(cat_as_nobody(&root.join("pub/secret")), None, "mode 0600 lets nobody else in");
    if facl {
        let got = cat_as_nobody(&root.join("pub/shared"));
        assert_eq!(got.as_deref(), Some(&b"nobody may read this one\n"[..]), "the stored ACL grants it");
    }
    // Without --allow-other, another user gets nothing, not even what its mode allows.
    let dir = m.dir.clone();
    let bin = fusermount().unwrap();
    assert!(Command::new(bin).arg("-u").arg(&dir).status().unwrap().success());
    assert_eq!(m.wait(Duration::from_secs(30)), 0, "{}", m.stderr());
    let Some(m) = mount(&b) else { return };
    fs::set_permissions(m.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let root = m.dir.join("latest").join(src.path().strip_prefix("/").unwrap());
    assert!(root.join("pub/readme").exists());
    assert_eq!(cat_as_nobody(&root.join("pub/readme")), None, "without --allow-other");
}

trait StatusOk {
    fn status_ok(&mut self) -> bool;
}

impl StatusOk for Command {
    fn status_ok(&mut self) -> bool {
        self.status().is_ok_and(|s| s.success())
    }
}

/// The mount's peak resident memory so far (VmHWM of its process), in bytes.
fn peak_rss(m: &Mounted) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", m.child.id())).unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// `cat` of a 2 GiB file through a mount under `--mem-limit 128M` gives the source's bytes, so
/// do 1,000 reads at random offsets across it, and the mount's peak RSS stays under the limit
/// (its blob cache is a quarter of it; nothing holds a file whole).
#[test]
fn a_two_gib_file_reads_through_the_mount_within_its_memory_limit() {
    use std::io::{Read, Write};
    const SIZE: u64 = 2 << 30;
    const LIMIT: u64 = 128 << 20;
    let src = TestDir::new();
    let path = src.path().join("huge.bin");
    let mut rng = Rng::new(41);
    let mut out = std::io::BufWriter::new(fs::File::create(&path).unwrap());
    for _ in 0..SIZE / (8 << 20) {
        out.write_all(&rng.bytes(8 << 20)).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    let b = bakare();
    b.ok(&argv!["run", src.path()]);
    let Some(m) = mount_with(&b, &["--mem-limit", "128M"]) else { return };
    let mounted = m.dir.join("latest").join(path.strip_prefix("/").unwrap());
    let (mut want, mut got) = (fs::File::open(&path).unwrap(), fs::File::open(&mounted).unwrap());
    let (mut a, mut c) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut read = 0u64;
    loop {
        let n = want.read(&mut a).unwrap();
        if n == 0 {
            assert_eq!(got.read(&mut c).unwrap(), 0, "the mounted file is longer");
            break;
        }
        got.read_exact(&mut c[..n]).unwrap();
        assert!(a[..n] == c[..n], "bytes at {read}");
        read += n as u64;
    }
    assert_eq!(read, SIZE);
    let mut rng = Rng::new(42);
    for _ in 0..1000 {
        let at = rng.below(SIZE);
        let len = (rng.below(256 << 10) + 1).min(SIZE - at) as usize;
        want.read_exact_at(&mut a[..len.min(1 << 20)], at).unwrap();
        got.read_exact_at(&mut c[..len.min(1 << 20)], at).unwrap();
        assert!(a[..len] == c[..len], "bytes at {at}+{len}");
    }
    let peak = peak_rss(&m);
    eprintln!("mount peak RSS after reading 2 GiB: {} MiB", peak >> 20);
    assert!(peak < LIMIT, "the mount peaked at {} MiB under --mem-limit 128M", peak >> 20);
}

/// A repository on an S3 server (s3s-fs, as in `tests/s3.rs`) mounts the same: every entry
/// reads as its source, random ranges of the large file included.
#[test]
fn a_repository_on_s3_mounts_and_reads_as_its_source() {
    let Some(server) = chaos::testkit::S3Server::start() else { return };
    let src = tree();
    let mut b = bakare();
    server.configure(&mut b, "mounted");
    b.ok(&argv!["init"]);
    b.ok(&argv!["run", src.path()]);
    let Some(m) = mount(&b) else { return };
    let root = m.dir.join("latest").join(src.path().strip_prefix("/").unwrap());
    assert_same(src.path(), &root);
    let want = fs::read(src.path().join("big/random.bin")).unwrap();
    let f = fs::File::open(root.join("big/random.bin")).unwrap();
    let mut rng = Rng::new(6);
    for _ in 0..50 {
        let at = rng.below(BIG as u64) as usize;
        let len = (rng.below(300_000) as usize + 1).min(BIG - at);
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, at as u64).unwrap();
        assert!(got == want[at..at + len], "bytes at {at}+{len}");
    }
}
