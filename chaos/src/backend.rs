//! `FaultyBackend`: the real storage, with a crash or pause point at one step of the write
//! path, from `BAKARE_CRASH=WHEN:WHAT:N[:ACTION]`:
//! - WHEN: `before` or `after` the operation;
//! - WHAT: `packs` (committing a pack: "before" leaves the complete temporary file unlinked),
//!   `index`, `pending`, `snapshots`, `abandoned`, `gc` (writing such an object; `abandoned`
//!   only when a writer gives up a pending snapshot, `gc` when prune condemns), or `delete`
//!   (deleting any object: prune, forget and repair delete; a writer never does);
//! - N: the N-th such operation of the process (1-based);
//! - ACTION: `kill` (SIGKILL to itself, the default) or `stop` (SIGSTOP to itself: the test
//!   resumes it with SIGCONT, as a laptop lid would).
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io::{Backend, Staged, StorageError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Kill,
    Stop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashPoint {
    pub when: When,
    pub what: String,
    pub nth: u64,
    pub action: Action,
}

impl CrashPoint {
    pub fn parse(s: &str) -> Result<CrashPoint, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || format!("{s:?}: expected WHEN:WHAT:N[:ACTION], e.g. before:index:1:kill");
        if !(3..=4).contains(&parts.len()) {
            return Err(bad());
        }
        let when = match parts[0] {
            "before" => When::Before,
            "after" => When::After,
            _ => return Err(bad()),
        };
        if !["packs", "index", "pending", "snapshots", "abandoned", "gc", "delete"].contains(&parts[1]) {
            return Err(bad());
        }
        let nth: u64 = parts[2].parse().map_err(|_| bad())?;
        let action = match parts.get(3).copied().unwrap_or("kill") {
            "kill" => Action::Kill,
            "stop" => Action::Stop,
            _ => return Err(bad()),
        };
        Ok(CrashPoint { when, what: parts[1].into(), nth, action })
    }

    pub fn from_env() -> Result<Option<CrashPoint>, String> {
        match std::env::var("BAKARE_CRASH") {
            Ok(s) if !s.is_empty() => CrashPoint::parse(&s).map(Some),
            _ => Ok(None),
        }
    }
}

pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    point: CrashPoint,
    seen: Arc<AtomicU64>,
}

impl FaultyBackend {
    pub fn new(inner: Arc<dyn Backend>, point: CrashPoint) -> Self {
        FaultyBackend { inner, point, seen: Arc::new(AtomicU64::new(0)) }
    }
}

/// Counts an operation of kind `what` (at "before") and acts if it is the chosen one; returns
/// its number, which the same operation's "after" passes back to `hit_after`. (Reading the
/// counter again at "after" would take another operation's number when two run at once: two
/// pack writers committing together made `after:packs:1` miss.)
fn hit_before(point: &CrashPoint, seen: &AtomicU64, what: &str) -> u64 {
    if point.what != what {
        return 0;
    }
    let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
    act(point, what, When::Before, n);
    n
}

fn hit_after(point: &CrashPoint, what: &str, n: u64) {
    if point.what == what {
        act(point, what, When::After, n);
    }
}

fn act(point: &CrashPoint, what: &str, when: When, n: u64) {
    if n == point.nth && when == point.when {
        let sig = match point.action {
            Action::Kill => libc::SIGKILL,
            Action::Stop => libc::SIGSTOP,
        };
        eprintln!("bakare-faulty: {:?} {what} #{n}: {:?}", when, point.action);
        // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
        unsafe { libc::kill(libc::getpid(), sig) };
    }
}

fn kind_of(key: &str) -> &str {
    key.split('/').next().unwrap_or("")
}

struct FaultyStaged {
    inner: Box<dyn Staged>,
    point: CrashPoint,
    seen: Arc<AtomicU64>,
}

impl Write for FaultyStaged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Staged for FaultyStaged {
    fn commit(self: Box<Self>, key: &str) -> io::storage::Result<()> {
        let FaultyStaged { inner, point, seen } = *self;
        let n = hit_before(&point, &seen, kind_of(key));
        let r = inner.commit(key);
        hit_after(&point, kind_of(key), n);
        r
    }
}

impl Backend for FaultyBackend {
    fn put(&self, key: &str, data: &[u8]) -> io::storage::Result<()> {
        let n = hit_before(&self.point, &self.seen, kind_of(key));
        let r = self.inner.put(key, data);
        hit_after(&self.point, kind_of(key), n);
        r
    }
    fn stage(&self) -> io::storage::Result<Box<dyn Staged>> {
        let inner = self.inner.stage()?;
        Ok(Box::new(FaultyStaged { inner, point: self.point.clone(), seen: self.seen.clone() }))
    }
    fn get(&self, key: &str) -> io::storage::Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: usize) -> io::storage::Result<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }
    fn size(&self, key: &str) -> io::storage::Result<u64> {
        self.inner.size(key)
    }
    fn list(&self, dir: &str) -> io::storage::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn delete(&self, key: &str) -> io::storage::Result<()> {
        let n = hit_before(&self.point, &self.seen, "delete");
        let r = self.inner.delete(key);
        hit_after(&self.point, "delete", n);
        r
    }
    fn replace(&self, key: &str, data: &[u8]) -> io::storage::Result<()> {
        self.inner.replace(key, data)
    }
    fn remote(&self) -> bool {
        self.inner.remote()
    }
    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        self.inner.exists(key)
    }
    fn leftovers(&self) -> io::storage::Result<Vec<io::Leftover>> {
        self.inner.leftovers()
    }
    fn remove_leftover(&self, name: &str) -> io::storage::Result<bool> {
        self.inner.remove_leftover(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let p = CrashPoint::parse("after:pending:2:stop").unwrap();
        assert_eq!(p, CrashPoint { when: When::After, what: "pending".into(), nth: 2, action: Action::Stop });
        assert_eq!(CrashPoint::parse("before:packs:1").unwrap().action, Action::Kill);
        assert_eq!(CrashPoint::parse("after:abandoned:1").unwrap().what, "abandoned");
        assert_eq!(CrashPoint::parse("before:delete:3").unwrap().what, "delete");
        for bad in [
            "",
            "during:packs:1",
            "before:nope:1",
            "before:packs:x",
            "before:packs:1:explode",
            "before:unpend:1",
        ] {
            assert!(CrashPoint::parse(bad).is_err(), "{bad}");
        }
    }
}
