//! Printing: human sizes and times, raw path bytes, and a stdout that treats a closed pipe
//! (`bakare ls latest | head`) as the end of output, not as an error.
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, Ordering};

/// 0 with `-q`, 1 by default, 2 with `-v`, 3 with `-vv`. Set once, from the command line.
static VERBOSITY: AtomicU8 = AtomicU8::new(1);

pub fn set_verbosity(quiet: bool, verbose: u8) {
    let v = if quiet { 0 } else { verbose.saturating_add(1) };
    VERBOSITY.store(v, Ordering::Relaxed);
}

/// `-q`: no summaries, notes or progress; errors and warnings still go to stderr.
pub fn quiet() -> bool {
    VERBOSITY.load(Ordering::Relaxed) == 0
}

/// A line on stdout telling what a command did, unless `-q`.
pub fn say(msg: std::fmt::Arguments<'_>) {
    if !quiet() {
        let _ = writeln!(io::stdout().lock(), "{msg}");
    }
}

/// `error: PATH: why` on stderr (the path as bytes): what `-q` still reports of a file that
/// could not be saved or restored.
pub fn error_line(path: &[u8], why: &str) {
    let mut line = b"error: ".to_vec();
    line.extend_from_slice(path);
    line.extend_from_slice(format!(": {why}\n").as_bytes());
    let _ = io::stderr().lock().write_all(&line);
}

/// How many `-v` were given.
pub fn verbose() -> u8 {
    VERBOSITY.load(Ordering::Relaxed).saturating_sub(1)
}

pub fn size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for nanoseconds since the epoch.
pub fn time(ns: impl Into<i128>) -> String {
    // Seconds of any time a tree holds fit (`tree::split_ns`); beyond, the display is held.
    let secs =
        ns.into().div_euclid(1_000_000_000).clamp(i128::from(i64::MIN / 2), i128::from(i64::MAX / 2)) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm): a dozen
/// lines, not worth a date-time dependency for one display format.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Writes to stdout; returns false once the reader has gone away.
pub struct Out {
    inner: io::BufWriter<io::Stdout>,
    closed: bool,
}

impl Out {
    pub fn new() -> Self {
        Out { inner: io::BufWriter::new(io::stdout()), closed: false }
    }

    /// For a command's report of what it did (not for what the user asked to see, such as a
    /// listing): discards everything with `-q`, unless the output is `--json`, which a script
    /// asked for.
    pub fn summary(json: bool) -> Self {
        Out { inner: io::BufWriter::new(io::stdout()), closed: quiet() && !json }
    }

    pub fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.write_all(b) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }

    pub fn line(&mut self, s: &str) -> io::Result<()> {
        self.bytes(s.as_bytes())?;
        self.bytes(b"\n")
    }

    pub fn path_line(&mut self, prefix: &str, path: &std::path::Path) -> io::Result<()> {
        self.bytes(prefix.as_bytes())?;
        self.bytes(path.as_os_str().as_bytes())?;
        self.bytes(b"\n")
    }

    pub fn finish(mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::time(0), "1970-01-01 00:00:00");
        assert_eq!(super::time(1_795_962_372_000_000_000_i64), "2026-11-29 14:26:12");
        assert_eq!(super::time(951_782_400_000_000_000_i64), "2000-02-29 00:00:00");
        // Beyond an i64 of nanoseconds, both ways.
        assert_eq!(super::time(10_451_635_200_i128 * 1_000_000_000), "2301-03-15 00:00:00");
        assert_eq!(super::time(-2_177_452_800_i128 * 1_000_000_000), "1901-01-01 00:00:00");
    }
}
