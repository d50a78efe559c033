//! Measuring a child process (wall time, CPU time, peak RSS) and comparing directory trees.
//!
//! CPU and peak RSS come from `wait4`, which reports the rusage of exactly the child it reaps:
//! `getrusage(RUSAGE_CHILDREN)` would mix every child this process ever waited for, and `ru_maxrss`
//! there is the maximum over all of them, so later steps could not be told apart.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub wall: Duration,
    pub user: Duration,
    pub sys: Duration,
    pub max_rss_kib: u64,
}

impl Usage {
    pub fn cpu(&self) -> Duration {
        self.user + self.sys
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub usage: Usage,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `cmd` to completion, capturing its output, and measures it. With a `timeout`, a child
/// still running after it is killed (and this returns an error).
pub fn run(cmd: &mut Command, timeout: Option<Duration>) -> Result<Outcome> {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut err_pipe = child.stderr.take().context("child stderr was not piped")?;
    let mut out_pipe = child.stdout.take().context("child stdout was not piped")?;
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        err_pipe.read_to_end(&mut v).map(|_| v)
    });
    // The watchdog may kill the child only while it cannot have been reaped: it is joined before
    // wait4 below, so its pid cannot have been reused by another process.
    let (done, stop) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || match timeout.map(|t| stop.recv_timeout(t)) {
        Some(Err(mpsc::RecvTimeoutError::Timeout)) => child.kill().is_ok(),
        _ => false,
    });
    let mut stdout = Vec::new();
    let read = out_pipe.read_to_end(&mut stdout);
    // The pipes reach EOF when the child exits (it starts no daemons holding them).
    let stderr = err_reader.join();
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    // The child is reaped here, never through `child.wait()`: std would reap it without rusage.
    let (raw, ru) = wait4(pid).with_context(|| format!("waiting for {what}"))?;
    let wall = start.elapsed();
    if timed_out {
        bail!("{what} was still running after {:.0} s: killed", wall.as_secs_f64());
    }
    read.with_context(|| format!("reading the output of {what}"))?;
    let stderr = match stderr {
        Ok(r) => r.with_context(|| format!("reading the errors of {what}"))?,
        Err(_) => bail!("the thread reading the errors of {what} panicked"),
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    let usage = Usage {
        wall,
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    };
    Ok(Outcome { status: ExitStatus::from_raw(raw), usage, stdout, stderr })
}

/// Reaps the child `pid`, returning its raw wait status and its resource usage.
#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, libc::rusage)> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `rusage` is a plain C struct of integers, for which all-zero bytes are a valid
        // value; `status` and `ru` are live, exclusively borrowed locals that wait4 only writes
        // to for the duration of the call, and `pid` is a child of ours that nothing else reaps
        // (its `Child` handle is never waited on).
        let (r, ru) = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            let r = libc::wait4(pid, &mut status, 0, &mut ru);
            (r, ru)
        };
        if r == pid {
            return Ok((status, ru));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Number of regular files and the sum of their sizes below `dir`.
pub fn tree_size(dir: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for e in walkdir::WalkDir::new(dir) {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if e.file_type().is_file() {
            files += 1;
            bytes += e.metadata().with_context(|| format!("stat {}", e.path().display()))?.len();
        }
    }
    Ok((files, bytes))
}

/// Fails unless `a` and `b` hold the same names, kinds and file contents (symlink targets too).
/// Metadata (modes, times) is not compared: this checks data, not attributes.
pub fn compare_trees(a: &Path, b: &Path) -> Result<()> {
    let walk = |d: &Path| walkdir::WalkDir::new(d).sort_by_file_name().min_depth(1).into_iter();
    let (mut wa, mut wb) = (walk(a), walk(b));
    loop {
        let (ea, eb) = match (wa.next(), wb.next()) {
            (None, None) => return Ok(()),
            (Some(x), None) => bail!("{} is missing from {}", x?.path().display(), b.display()),
            (None, Some(y)) => bail!("{} is not in {}", y?.path().display(), a.display()),
            (Some(x), Some(y)) => (x?, y?),
        };
        let (ra, rb) = (ea.path().strip_prefix(a)?, eb.path().strip_prefix(b)?);
        if ra != rb {
            bail!("trees differ at {} vs {}", ea.path().display(), eb.path().display());
        }
        let (ta, tb) = (ea.file_type(), eb.file_type());
        if ta.is_dir() != tb.is_dir() || ta.is_file() != tb.is_file() || ta.is_symlink() != tb.is_symlink() {
            bail!("{} and {} are of different kinds", ea.path().display(), eb.path().display());
        }
        if ta.is_symlink() {
            if std::fs::read_link(ea.path())? != std::fs::read_link(eb.path())? {
                bail!("symlinks {} and {} differ", ea.path().display(), eb.path().display());
            }
        } else if ta.is_file() {
            same_contents(ea.path(), eb.path())?;
        }
    }
}

fn same_contents(a: &Path, b: &Path) -> Result<()> {
    let open = |p: &Path| File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if la != lb {
        bail!("{} has {la} bytes, {} has {lb}", a.display(), b.display());
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let m = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if ba[..n] != bb[..m] {
            let at = ba[..n].iter().zip(&bb[..m]).position(|(x, y)| x != y).unwrap_or(n.min(m));
            bail!("{} and {} differ at byte {}", a.display(), b.display(), offset + at as u64);
        }
        if n == 0 {
            return Ok(());
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A temporary work directory named `prefix…`, in `dir` or the system's temporary directory.
pub fn work_dir(prefix: &str, dir: Option<&std::path::Path>) -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    let tmp = builder.prefix(prefix);
    let made = match dir {
        Some(d) => tmp.tempdir_in(d),
        None => tmp.tempdir(),
    };
    anyhow::Context::context(made, "creating the work directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_a_child() {
        let o = run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), None).unwrap();
        assert_eq!(o.status.code(), Some(3));
        assert_eq!(o.stdout, b"out\n");
        assert_eq!(o.stderr, b"err\n");
        assert!(o.usage.max_rss_kib > 0);
    }

    #[test]
    fn kills_a_child_that_overstays() {
        let t = Instant::now();
        let e = run(Command::new("sleep").arg("30"), Some(Duration::from_millis(200))).unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let o = run(&mut Command::new("true"), Some(Duration::from_secs(30))).unwrap();
        assert!(o.status.success());
    }

    #[test]
    fn compares_trees() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for root in [&a, &b] {
            std::fs::create_dir_all(root.join("x/y")).unwrap();
            std::fs::write(root.join("x/y/f"), b"hello").unwrap();
        }
        compare_trees(&a, &b).unwrap();
        std::fs::write(b.join("x/y/f"), b"hellO").unwrap();
        let e = compare_trees(&a, &b).unwrap_err().to_string();
        assert!(e.contains("differ at byte 4"), "{e}");
        std::fs::write(b.join("x/y/f"), b"hello").unwrap();
        std::fs::write(b.join("x/g"), b"").unwrap();
        assert!(compare_trees(&a, &b).is_err());
        assert_eq!(tree_size(&a).unwrap(), (1, 5));
    }
}
