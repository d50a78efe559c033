//! Test support: trees built from literals, the real binary run with its own HOME and
//! repository, peak memory of a child measured by the kernel, and a byte-for-byte, metadata-for-
//! metadata comparison of a source tree and its restored copy.
//!
//! Panicking is how test support reports failure, hence unwrap/expect here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A tree on disk, built from literals.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    pub fn new() -> Self {
        TestDir { dir: tempfile::tempdir().unwrap() }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    fn at(&self, rel: impl AsRef<OsStr>) -> PathBuf {
        let p = self.dir.path().join(rel.as_ref());
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        p
    }
    pub fn file(self, rel: impl AsRef<OsStr>, data: impl AsRef<[u8]>) -> Self {
        fs::write(self.at(rel), data).unwrap();
        self
    }
    pub fn dir(self, rel: impl AsRef<OsStr>) -> Self {
        fs::create_dir_all(self.at(rel)).unwrap();
        self
    }
    pub fn symlink(self, rel: impl AsRef<OsStr>, target: impl AsRef<OsStr>) -> Self {
        std::os::unix::fs::symlink(target.as_ref(), self.at(rel)).unwrap();
        self
    }
    pub fn hardlink(self, rel: impl AsRef<OsStr>, existing: impl AsRef<OsStr>) -> Self {
        fs::hard_link(self.dir.path().join(existing.as_ref()), self.at(rel)).unwrap();
        self
    }
    pub fn fifo(self, rel: impl AsRef<OsStr>) -> Self {
        let p = self.at(rel);
        rustix_mkfifo(&p);
        self
    }
}

fn rustix_mkfifo(p: &Path) {
    let status = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(status.success(), "mkfifo {}", p.display());
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    /// Compressible text-like bytes.
    pub fn text(&mut self, n: usize) -> Vec<u8> {
        const WORDS: &[&str] =
            &["backup", "chunk", "pack", "the", "of", "index", "tree", "snapshot", "data", "restore", "\n"];
        let mut v = Vec::with_capacity(n + 16);
        while v.len() < n {
            v.extend_from_slice(WORDS[self.below(WORDS.len() as u64) as usize].as_bytes());
            v.push(b' ');
        }
        v.truncate(n);
        v
    }
}

/// Writes a random tree under `root`: odd name bytes, empty files, deep nesting, symlinks,
/// hard links, duplicates and near-duplicates, FIFOs.
pub fn random_tree(root: &Path, seed: u64, entries: usize) {
    let mut rng = Rng::new(seed);
    let mut dirs = vec![root.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    for i in 0..entries {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let mut name = format!("e{i}-").into_bytes();
        for _ in 0..rng.below(6) {
            // any byte but '/' and NUL
            let b = (rng.below(254) + 1) as u8;
            name.push(if b == b'/' { b'_' } else { b });
        }
        let path = parent.join(OsString::from_vec(name));
        match rng.below(12) {
            0 | 1 => {
                fs::create_dir(&path).unwrap();
                dirs.push(path);
            }
            2 => fs::write(&path, b"").unwrap(),
            3 if !files.is_empty() => {
                let src = &files[rng.below(files.len() as u64) as usize];
                fs::copy(src, &path).unwrap();
            }
            4 if !files.is_empty() => {
                let src = &files[rng.below(files.len() as u64) as usize];
                let mut data = fs::read(src).unwrap();
                let at = rng.below(data.len() as u64 + 1) as usize;
                data.splice(at..at, rng.bytes(3));
                fs::write(&path, data).unwrap();
            }
            5 if !files.is_empty() => {
                let src = &files[rng.below(files.len() as u64) as usize];
                fs::hard_link(src, &path).unwrap();
            }
            6 => {
                let len = rng.below(20) as usize + 1;
                let raw = rng.bytes(len).into_iter().map(|b| if b == 0 { b'x' } else { b }).collect();
                let target = OsString::from_vec(raw);
                std::os::unix::fs::symlink(target, &path).unwrap();
            }
            7 => rustix_mkfifo(&path),
            8 => {
                let n = rng.below(3 << 20) as usize;
                fs::write(&path, rng.bytes(n)).unwrap();
                files.push(path);
            }
            _ => {
                let n = rng.below(20_000) as usize;
                fs::write(&path, rng.text(n)).unwrap();
                files.push(path);
            }
        }
    }
}

/// What a run of the binary gave back.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Peak resident memory of the child, in bytes: as it reported it (VmHWM), or else its
    /// ru_maxrss, which also counts the test process's own peak (`run_measured`).
    pub peak_rss: u64,
    /// Whether the child reported its peak itself (binaries built with the test hooks).
    pub peak_reported: bool,
}

impl Outcome {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout_str()))
    }
}

/// The real binary, with a HOME (and so key directory) and repository of its own: the default
/// repository of that HOME, which `run` creates on first use (any other location is set with
/// BAKARE_REPO, and only `init` creates it).
pub struct Bakare {
    pub bin: PathBuf,
    pub home: tempfile::TempDir,
    pub repo: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Bakare {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        let home = tempfile::tempdir().unwrap();
        let repo = Self::default_repo(home.path());
        Bakare { bin: bin.into(), home, repo, env: Vec::new() }
    }

    /// Where the binary puts its default repository, for HOME `home` (no XDG_DATA_HOME).
    pub fn default_repo(home: &Path) -> PathBuf {
        home.join(".local/share/bakare/repo")
    }

    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        self.command_of(&self.bin, args)
    }

    /// `command`, running the binary at `bin` (a copy another user can reach, say).
    pub fn command_of<S: AsRef<OsStr>>(&self, bin: &Path, args: &[S]) -> Command {
        let mut c = Command::new(bin);
        c.args(args).env("HOME", self.home.path());
        if self.repo == Self::default_repo(self.home.path()) {
            c.env_remove("BAKARE_REPO");
        } else {
            c.env("BAKARE_REPO", &self.repo);
        }
        c.env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("BAKARE_CACHE_DIR")
            .env_remove("BAKARE_KEY")
            .env_remove("BAKARE_IO")
            .env_remove("BAKARE_FAULTS")
            .env_remove("BAKARE_CRASH")
            .env_remove("BAKARE_CLOCK_OFFSET_FILE")
            .env_remove("BAKARE_FAKE_NOW_NS")
            .env_remove("BAKARE_PASSPHRASE")
            .env_remove("BAKARE_PASSPHRASE_COMMAND")
            .env_remove("BAKARE_NEW_PASSPHRASE")
            .env_remove("BAKARE_CONFIG_DIR")
            .env_remove("BAKARE_INVITATION");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs to completion and measures the child's peak memory with wait4.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Outcome {
        run_measured(self.command(args))
    }

    /// Runs and asserts the exit code.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> Outcome {
        let o = self.run(args);
        assert_eq!(
            o.code,
            0,
            "bakare {:?} failed: {}\n{}",
            args.iter().map(|a| a.as_ref().to_owned()).collect::<Vec<_>>(),
            o.stderr,
            o.stdout_str()
        );
        o
    }
}

/// Spawns `cmd`, again if its binary is busy (ETXTBSY): a binary a test has just copied stays
/// open for writing in any child another test thread forked meanwhile, until that child execs.
pub fn spawn_retrying(cmd: &mut Command) -> std::process::Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// The child is reaped by `wait_rusage` (wait4), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn run_measured(mut cmd: Command) -> Outcome {
    // The child's own peak (`engine::hooks::report_peak_rss`); its ru_maxrss counts this
    // process's peak too, and is only the fallback (a binary without the hooks, a crash).
    let peak_file = tempfile::NamedTempFile::new().unwrap();
    cmd.env("BAKARE_TEST_PEAK_RSS_FILE", peak_file.path());
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn_retrying(&mut cmd);
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).unwrap();
        v
    });
    // A hung child (a deadlock is a bug the tests must report, not wait out) is killed after
    // ten minutes. The watchdog stops before the child is reaped, so it never signals a pid
    // that could have been reused.
    let pid = child.id() as i32;
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if stop_rx.recv_timeout(std::time::Duration::from_secs(600)).is_err() {
            kill_hung(pid);
            return true;
        }
        false
    });
    let (code, ru_maxrss) = wait_rusage(pid, move || {
        let _ = stop_tx.send(());
        watchdog.join().unwrap_or(false)
    });
    let reported = std::fs::read_to_string(peak_file.path()).ok().and_then(|s| s.trim().parse().ok());
    let peak_reported = reported.is_some();
    let peak_rss = reported.unwrap_or(ru_maxrss);
    Outcome {
        code,
        stdout: t_out.join().unwrap(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        peak_rss,
        peak_reported,
    }
}

/// SIGKILL for a child that hung; called only before the child has been reaped.
#[allow(unsafe_code)]
fn kill_hung(pid: i32) {
    // SAFETY: kill(2) takes plain integers; `pid` is our own unreaped child, so it cannot name
    // another process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Waits for `pid` and returns (exit code or 128+signal, ru_maxrss in bytes). `before_reap`
/// runs once the child has exited but before its pid is released; it returns whether the
/// child was killed for hanging.
#[allow(unsafe_code)]
fn wait_rusage(pid: i32, before_reap: impl FnOnce() -> bool) -> (i32, u64) {
    // WNOWAIT: wait for the exit without reaping, so the pid stays ours meanwhile.
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`, a live local of the right type.
    let w = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
    assert_eq!(w, 0, "waitid failed: {}", std::io::Error::last_os_error());
    let hung = before_reap();
    assert!(!hung, "the child process hung for ten minutes and was killed (a deadlock?)");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 writes only into the two out-pointers, which point to live locals of the
    // right types; `pid` is our own child, exited and not yet reaped.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    (code, ru.ru_maxrss as u64 * 1024)
}

/// Where a source path lands below a restore target (absolute paths are kept).
pub fn restored_path(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap_or(source))
}

fn entries(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<OsString> =
            fs::read_dir(root.join(&rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            if fs::symlink_metadata(root.join(&r)).unwrap().is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    out
}

/// The regular files below `root`, relative to it, sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    entries(root).into_iter().filter(|r| fs::symlink_metadata(root.join(r)).unwrap().is_file()).collect()
}

/// Total size of the regular files below `root`.
pub fn bytes_under(root: &Path) -> u64 {
    files_under(root).iter().map(|r| fs::metadata(root.join(r)).unwrap().len()).sum()
}

/// Copies the directories and regular files below `from` to `to` (contents only).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for r in entries(from) {
        if fs::symlink_metadata(from.join(&r)).unwrap().is_dir() {
            fs::create_dir_all(to.join(&r)).unwrap();
        } else {
            fs::copy(from.join(&r), to.join(&r)).unwrap();
        }
    }
}

/// Differences between two trees: names, types, bytes, symlink targets, modes, mtimes (ns),
/// owners, and which names are hard links of each other. Empty when identical.
pub fn tree_diff(src: &Path, dst: &Path) -> Vec<String> {
    let mut diffs = Vec::new();
    let (a, b) = (entries(src), entries(dst));
    if a != b {
        let only_a: Vec<_> = a.iter().filter(|p| !b.contains(p)).collect();
        let only_b: Vec<_> = b.iter().filter(|p| !a.contains(p)).collect();
        diffs.push(format!("names differ: only in source {only_a:?}, only in restore {only_b:?}"));
        return diffs;
    }
    let mut links: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    for rel in std::iter::once(PathBuf::new()).chain(a) {
        let (pa, pb) = (src.join(&rel), dst.join(&rel));
        let (ma, mb) = (fs::symlink_metadata(&pa).unwrap(), fs::symlink_metadata(&pb).unwrap());
        let show = rel.display();
        let (fa, fb) = (ma.file_type(), mb.file_type());
        let kind = |f: fs::FileType| {
            (
                f.is_dir(),
                f.is_file(),
                f.is_symlink(),
                f.is_fifo(),
                f.is_socket(),
                f.is_char_device(),
                f.is_block_device(),
            )
        };
        if kind(fa) != kind(fb) {
            diffs.push(format!("{show}: type differs"));
            continue;
        }
        if !fa.is_symlink() && ma.mode() != mb.mode() {
            diffs.push(format!("{show}: mode {:o} vs {:o}", ma.mode(), mb.mode()));
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            diffs.push(format!(
                "{show}: mtime {}.{} vs {}.{}",
                ma.mtime(),
                ma.mtime_nsec(),
                mb.mtime(),
                mb.mtime_nsec()
            ));
        }
        if (fa.is_char_device() || fa.is_block_device()) && ma.rdev() != mb.rdev() {
            diffs.push(format!("{show}: device number differs"));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            diffs.push(format!("{show}: owner differs"));
        }
        if fa.is_file() {
            if fs::read(&pa).unwrap() != fs::read(&pb).unwrap() {
                diffs.push(format!("{show}: content differs"));
            }
            if ma.nlink() > 1 {
                let key = (ma.dev(), ma.ino());
                let got = (mb.dev(), mb.ino());
                if let Some(prev) = links.insert(key, got) {
                    if prev != got {
                        diffs.push(format!("{show}: should be a hard link of an earlier name"));
                    }
                }
            }
        }
        if fa.is_symlink() && fs::read_link(&pa).unwrap() != fs::read_link(&pb).unwrap() {
            diffs.push(format!("{show}: symlink target differs"));
        }
    }
    diffs
}

pub fn assert_same_tree(src: &Path, dst: &Path) {
    let d = tree_diff(src, dst);
    assert!(d.is_empty(), "restored tree differs from {}:\n{}", src.display(), d.join("\n"));
}

/// Arguments of mixed types (`&str`, `&Path`, `OsString`...) as one array of `OsString`.
#[macro_export]
macro_rules! argv {
    ($($a:expr),* $(,)?) => { [$(std::ffi::OsString::from($a)),*] };
}

/// Whether tests run as root (then ownership is restored and compared too).
pub fn is_root() -> bool {
    my_uid() == 0
}

/// Says that a test skipped, and why, where the test runner shows it: written straight to
/// the process's stderr, which libtest does not capture (it captures `eprintln!`, and shows
/// what a passing test printed only with --nocapture). Every skip goes through here, and
/// each has a variable that turns it into a failure in CI (`.ci/run`).
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}

/// Whether the command `tool` is installed. If not, says so visibly, and fails when `require`
/// (the variable `.ci/run` sets where it installs the tool) is set.
pub fn tool_or_skip(tool: &str, require: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os(require).is_none(), "{tool} is not installed (.ci/run installs it)");
        skipped(&format!("{tool} is not installed: its comparison is left out"));
    }
    found
}

/// Whether a test that needs root can run. Without root it says visibly that it skipped,
/// unless BAKARE_REQUIRE_ROOT is set (CI runs as root and sets it), which makes that a failure.
pub fn root_or_skip(what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var_os("BAKARE_REQUIRE_ROOT").is_none(),
        "{what} needs root, and BAKARE_REQUIRE_ROOT is set"
    );
    skipped(&format!("{what} needs root"));
    false
}

/// The user the tests run as.
pub fn my_uid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// A directory whose ancestors nobody else touches while a test runs, for tests that compare
/// snapshot tree ids: a snapshot records its sources' ancestors too, and /tmp's mtime moves
/// whenever any other test creates a file there. Directly under `/` when permitted (root, as in
/// CI); otherwise under the system's temporary directory.
/// Tests in one process take turns holding it, so none creates or removes an entry of `/` while
/// another compares trees.
pub fn quiet_dir() -> QuietDir {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::Builder::new()
        .prefix("bakare-test-")
        .tempdir_in("/")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    QuietDir { dir, _turn: guard }
}

/// A quiet directory and this test's turn; the directory is removed before the turn passes on.
pub struct QuietDir {
    dir: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl QuietDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Time that tests move for every process they start (see engine::clock): a file holding an
/// offset in nanoseconds, named by BAKARE_CLOCK_OFFSET_FILE.
pub struct FakeClock {
    pub path: PathBuf,
}

pub const HOUR_NS: i64 = 3_600_000_000_000;

impl FakeClock {
    /// Starts at offset 0 and makes `b`'s processes use it.
    pub fn install(b: &mut Bakare) -> FakeClock {
        let path = b.home.path().join("clock-offset");
        fs::write(&path, "0").unwrap();
        b.env.push(("BAKARE_CLOCK_OFFSET_FILE".into(), path.display().to_string()));
        FakeClock { path }
    }

    /// Moves every clock forward (written atomically: a reader sees the old or new offset).
    pub fn advance(&self, ns: i64) {
        let now: i64 = fs::read_to_string(&self.path).unwrap().trim().parse().unwrap();
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, (now + ns).to_string()).unwrap();
        fs::rename(&tmp, &self.path).unwrap();
    }
}

/// A real S3-compatible server (s3s-fs, from crates.io) on a loopback port, storing objects as
/// plain files under `data` (tests can damage them). Stopped when dropped.
pub struct S3Server {
    child: Option<std::process::Child>,
    bin: PathBuf,
    pub data: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
}

pub const S3_ACCESS_KEY: &str = "bakare-test";
pub const S3_SECRET_KEY: &str = "bakare-test-secret";

/// The s3s-fs binary: $BAKARE_S3S_FS, else `s3s-fs` on PATH or in ~/.cargo/bin.
pub fn s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BAKARE_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

impl S3Server {
    /// Starts a server, or returns None (after saying why) when s3s-fs is not installed,
    /// unless BAKARE_REQUIRE_S3 is set (CI), which makes that a failure.
    pub fn start() -> Option<S3Server> {
        let Some(bin) = s3s_fs() else {
            assert!(
                std::env::var_os("BAKARE_REQUIRE_S3").is_none(),
                "s3s-fs is not installed (cargo install s3s-fs --version 0.14.1 --locked --features binary)"
            );
            skipped(
                "s3s-fs is not installed; install it with \
                 `cargo install s3s-fs --version 0.14.1 --locked --features binary` to run the S3 tests",
            );
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        let bucket = "bakare".to_string();
        fs::create_dir(data.path().join(&bucket)).unwrap();
        let mut s = S3Server { child: None, bin, data, port: 0, bucket };
        // A port found free by binding port 0 is free only until something else binds it, and
        // tests run in parallel, each starting servers and proxies. A server that cannot bind
        // its port exits: then another port is tried. (Without this check, a server that lost
        // its port was taken for started whenever the port answered, and a test once spent its
        // whole retry budget on a port that was not its server's.)
        for _ in 0..5 {
            s.port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if s.try_resume() {
                return Some(s);
            }
        }
        panic!("s3s-fs could not start on any of five free ports");
    }

    /// (Re)starts the server process on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.try_resume(), "s3s-fs did not start on port {} (or exited)", self.port);
    }

    /// Starts the server on `self.port`; false if it exited (the port was taken) or never
    /// answered. It counts as started once the port answers and the process is still running
    /// a moment later: one that failed to bind has exited by then.
    fn try_resume(&mut self) -> bool {
        use std::time::{Duration, Instant};
        let mut child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        loop {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                std::thread::sleep(Duration::from_millis(200).saturating_sub(started.elapsed()));
                if matches!(child.try_wait(), Ok(None)) {
                    self.child = Some(child);
                    return true;
                }
                return false;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The repository URL for `prefix` in the test bucket, through `port` (a proxy's, or ours).
    pub fn url_via(&self, port: u16, prefix: &str) -> String {
        format!("s3:http://127.0.0.1:{port}/{}/{prefix}", self.bucket)
    }

    pub fn url(&self, prefix: &str) -> String {
        self.url_via(self.port, prefix)
    }

    /// Where the server keeps the object `key` of repository `prefix`.
    pub fn object_path(&self, prefix: &str, key: &str) -> PathBuf {
        self.data.path().join(&self.bucket).join(prefix).join(key)
    }

    /// Makes `b` use this server with credentials, for the repository `prefix`.
    pub fn configure(&self, b: &mut Bakare, prefix: &str) {
        b.env.push(("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()));
        b.env.push(("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()));
        b.env.push(("BAKARE_REPO".into(), self.url(prefix)));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `bakare serve` (the binary under test) on a loopback port, storing repositories in a
/// temporary directory; its log lines are kept for tests to read. Stopped (SIGTERM) when dropped.
pub struct Served {
    child: Option<std::process::Child>,
    bin: PathBuf,
    pub storage: tempfile::TempDir,
    pub port: u16,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Served {
    /// Starts a server on a port the kernel picks.
    pub fn start(bin: impl Into<PathBuf>) -> Served {
        Self::start_with(bin, &[], &[])
    }

    /// `start`, with more arguments to `bakare serve` and variables in its environment.
    pub fn start_with(bin: impl Into<PathBuf>, args: &[String], env: &[(String, String)]) -> Served {
        let mut s = Served {
            child: None,
            bin: bin.into(),
            storage: tempfile::tempdir().unwrap(),
            port: 0,
            log: Default::default(),
            args: args.to_vec(),
            env: env.to_vec(),
        };
        s.resume();
        s
    }

    /// (Re)starts the server on `self.port` (0: any) over the same storage; returns once it
    /// listens.
    pub fn resume(&mut self) {
        use std::io::BufRead;
        let mut child = Command::new(&self.bin)
            .args(["serve", "--storage"])
            .arg(self.storage.path())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on https://127.0.0.1:").nth(1) {
                    let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = tx.send(port.parse::<u16>().unwrap());
                }
                eprintln!("[serve] {line}");
                log.lock().unwrap().push(line);
            }
        });
        self.port = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("bakare serve did not start: {:?}", self.log.lock().unwrap()));
        self.child = Some(child);
    }

    /// Ends the server with `signal` (SIGTERM: gracefully; SIGKILL: at once) and waits for it.
    pub fn stop_with(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        send_signal(c.id(), signal);
        c.wait().ok()
    }

    /// Adds a client and returns its invitation.
    pub fn add_client(&self, name: &str, extra: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .args(["serve", "--storage"])
            .arg(self.storage.path())
            .args(["--add-client", name, "--address", &format!("127.0.0.1:{}", self.port)])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "--add-client {name}: {}", String::from_utf8_lossy(&out.stderr));
        let inv = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(inv.starts_with("bakare-join:https://"), "{inv}");
        inv
    }

    /// `--repo` for the repository `name` on this server.
    pub fn repo(&self, name: &str) -> String {
        format!("serve:https://127.0.0.1:{}/{name}", self.port)
    }

    /// Where the server keeps the object `key` of repository `name`.
    pub fn object_path(&self, name: &str, key: &str) -> PathBuf {
        self.storage.path().join(name).join(key)
    }

    /// `bakare serve --status --json` of this server.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(&self.bin)
            .args(["--json", "serve", "--status", "--storage"])
            .arg(self.storage.path())
            .output()
            .unwrap();
        if !out.status.success() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Whether a log line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

fn send_signal(pid: u32, signal: i32) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop_with(9);
    }
}
