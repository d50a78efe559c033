//! watch: the file watcher behind `bakare watch`. An inotify watch on every directory of the
//! backed-up trees, whose events become the set of directories that changed
//! (`stages::dirty::Dirty`), and the reasons the next run must be a full scan instead.
//!
//! inotify, not fanotify: it needs no privileges. Its costs and limits:
//! - one watch per directory (about 1 KiB of kernel memory each), at most
//!   `fs.inotify.max_user_watches`: a directory that cannot be watched makes every run a
//!   full scan, and says which sysctl to raise;
//! - a queue of `fs.inotify.max_queued_events` events: when it overflows, changes are lost,
//!   and the next run is a full scan;
//! - a write through one name of a multiply-linked file is reported in that name's directory
//!   only: directories holding such files are never recorded in the files cache, so they are
//!   listed by every run.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use stages::dirty::Dirty;

/// Changed directories the watcher keeps at most (about 100 bytes each); beyond, the next run
/// scans everything.
pub const MAX_DIRTY: usize = 1 << 20;

/// What every directory is watched for: any change to its entries, or to itself.
fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::DONT_FOLLOW
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&c| c == b'/') {
        Some(0) => b"/",
        Some(i) => &path[..i],
        None => b"/",
    }
}

/// Whether `path` is `dir` or below it.
pub fn under(path: &[u8], dir: &[u8]) -> bool {
    dir == b"/" || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

fn os(b: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(b))
}

/// (device, inode) of `p` and of the directory holding it, following symlinks as a run does.
fn identity(p: &Path) -> Option<(u64, u64, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(p).ok()?;
    let up = std::fs::metadata(p.parent().unwrap_or(p)).ok()?;
    Some((here.dev(), here.ino(), up.dev(), up.ino()))
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether two paths are one directory now (neither followed if a symlink).
fn same_dir(a: &[u8], b: &[u8]) -> bool {
    let id = |p: &[u8]| {
        rustix::fs::statat(rustix::fs::CWD, os(p), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    };
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// The kernel's limit on watches, for the message that names it.
fn max_user_watches() -> String {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A directory moved away within one batch of events: where it was, and the watches that
/// were at or below it then.
struct Moved {
    path: Vec<u8>,
    wds: Vec<i32>,
    /// Batches it has waited for its new place: the two halves of a rename may be read apart.
    age: u8,
}

pub struct Watcher {
    fd: OwnedFd,
    /// The mount table: it changes when something is mounted or unmounted, which inotify does
    /// not report (`wait` polls it).
    mounts: Option<std::fs::File>,
    roots: Vec<PathBuf>,
    /// Watch descriptor -> the directory it watches (absolute).
    wds: HashMap<i32, Vec<u8>>,
    /// Watch descriptor -> a directory holding a root: only its entries that are roots matter.
    above: HashMap<i32, Vec<u8>>,
    /// Directories moved away (by the rename's cookie), until their new place is seen.
    moved: HashMap<u32, Moved>,
    /// Where directories were moved to in this batch: walked again at its end, so that every
    /// watch below maps to where its directory is once all renames are done.
    moved_to: Vec<Vec<u8>>,
    dirty: Dirty,
    /// Directories the next run lists whatever happens, though nothing in them is known to
    /// have changed: those the last run could not record in the files cache.
    relist: Dirty,
    /// Why the record of changes is incomplete since it was last taken: the next run scans
    /// everything.
    gap: Option<String>,
    /// Why it cannot be complete with the watches as they are (a directory that cannot be
    /// watched, one seen under two paths): every run scans everything until a rebuild finds
    /// otherwise.
    blind: Option<String>,
    /// Why it can never be complete (a followed root, events no longer read): every run scans
    /// everything.
    never: Option<String>,
    /// Directories that could not be watched (EACCES, say): every run scans all of each.
    unwatched: Vec<Vec<u8>>,
    /// The mount points that matter (`our_mounts`), as last read.
    mount_points: Vec<Vec<u8>>,
    /// What each root and the directory holding it were when watched: another directory at a
    /// root's path (its parent renamed, a symlink above it swapped) has no watches.
    identities: Vec<Option<(u64, u64, u64, u64)>>,
    /// Why the watches must be made again (a root was replaced, the mount table changed).
    rebuild: Option<String>,
    /// Events handled, for the status.
    pub events: u64,
    /// Directories never watched: bakare's own repository and caches, which every run
    /// writes and no run backs up.
    ignored: Vec<Vec<u8>>,
    /// Paths the runs' exclude patterns leave out: such a directory is not watched, and a
    /// write to such a file calls for no run (`Excluded`).
    excluded: Excluded,
}

/// Whether the runs leave a path out (its exclude patterns). Only what the path alone
/// decides: ignore files and exclusion tags are a run's business.
pub type Excluded = Box<dyn Fn(&[u8]) -> bool + Send>;

/// Blocks until the watcher has something to take (`Watcher::fd`, `Watcher::mounts`): true
/// when the mount table changed.
pub fn wait(fd: &OwnedFd, mounts: Option<&std::fs::File>) -> std::io::Result<bool> {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = vec![PollFd::new(fd, PollFlags::IN)];
    if let Some(m) = mounts {
        fds.push(PollFd::new(m, PollFlags::PRI));
    }
    match rustix::event::poll(&mut fds, None) {
        Ok(_) => Ok(fds.get(1).is_some_and(|m| m.revents().intersects(PollFlags::PRI | PollFlags::ERR))),
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Watcher {
    /// Watches every directory at and below `roots` (absolute paths; a root that is a file is
    /// watched through its directory), and the directories holding the roots. Symlinks are
    /// not followed.
    pub fn new(roots: &[PathBuf], ignored: &[PathBuf]) -> std::io::Result<Watcher> {
        Self::excluding(roots, ignored, Box::new(|_| false))
    }

    /// `new`, leaving unwatched what the runs leave out.
    pub fn excluding(roots: &[PathBuf], ignored: &[PathBuf], excluded: Excluded) -> std::io::Result<Watcher> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let mut w = Watcher {
            fd,
            mounts: std::fs::File::open("/proc/self/mountinfo").ok(),
            roots: roots.to_vec(),
            wds: HashMap::new(),
            above: HashMap::new(),
            moved: HashMap::new(),
            moved_to: Vec::new(),
            dirty: Dirty::default(),
            relist: Dirty::default(),
            gap: None,
            blind: None,
            never: None,
            unwatched: Vec::new(),
            mount_points: Vec::new(),
            identities: Vec::new(),
            rebuild: None,
            events: 0,
            ignored: ignored.iter().map(|p| p.as_os_str().as_bytes().to_vec()).collect(),
            excluded,
        };
        w.mount_points = w.our_mounts();
        w.watch_roots();
        Ok(w)
    }

    fn watch_roots(&mut self) {
        self.blind = None;
        self.unwatched.clear();
        self.identities = self.roots.iter().map(|r| identity(r)).collect();
        for root in self.roots.clone() {
            let b = root.as_os_str().as_bytes();
            let up = parent(b);
            // The directory holding a root may be reached through a symlink (/home ->
            // /var/home): followed here, unlike below the roots.
            let above = mask() & !(WatchFlags::DONT_FOLLOW | WatchFlags::ONLYDIR);
            match inotify::add_watch(&self.fd, os(up), above) {
                Ok(wd) => {
                    self.above.insert(wd, up.to_vec());
                }
                // Not there (yet): the root is not either, and its run says so.
                Err(Errno::NOENT) => {}
                Err(e) => {
                    self.blind.get_or_insert_with(|| {
                        format!("{}, which holds a path to back up, cannot be watched: {e}", os(up).display())
                    });
                }
            }
            if std::fs::symlink_metadata(&root).is_ok_and(|md| md.is_dir()) {
                self.watch_tree(b, false);
            }
        }
    }

    /// Whether each root and the directory holding it are still what was watched.
    fn roots_moved(&self) -> Option<String> {
        self.roots
            .iter()
            .zip(&self.identities)
            .find(|(r, was)| identity(r) != **was)
            .map(|(r, _)| format!("{} is another directory than the one watched", r.display()))
    }

    /// The inotify descriptor, for `wait` on another thread (a `try_clone_to_owned` of it).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mount table, for `wait` on another thread (a `try_clone` of it).
    pub fn mounts(&self) -> Option<&std::fs::File> {
        self.mounts.as_ref()
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.wds.len()
    }

    /// Watches `dir`. `moved`: it was renamed, and a watch it already has now maps to its new
    /// path; otherwise a watch that maps to another path is that directory seen twice (a bind
    /// mount), whose changes would be told under one path only.
    fn watch_one(&mut self, dir: &[u8], moved: bool) -> bool {
        if self.ignored.iter().any(|i| under(dir, i)) || (!self.is_root(dir) && (self.excluded)(dir)) {
            return false;
        }
        match inotify::add_watch(&self.fd, os(dir), mask()) {
            Ok(wd) => {
                // Where it is now: not a watch of something that moved away for good.
                for m in self.moved.values_mut() {
                    m.wds.retain(|w| *w != wd);
                }
                if let Some(was) = self.wds.insert(wd, dir.to_vec()) {
                    // Under another path too: a rename not handled yet (that path is gone, or
                    // is another directory now), or one directory seen twice (a bind mount).
                    let twice = was != dir && !moved && same_dir(&was, dir);
                    if twice {
                        self.blind.get_or_insert_with(|| {
                            format!(
                                "{} and {} are one directory (a bind mount?): a change in it is told \
                                 under one of them only",
                                os(&was).display(),
                                os(dir).display()
                            )
                        });
                    }
                }
                true
            }
            // Gone or not a directory (any more): what is there now is scanned anyway.
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => false,
            Err(Errno::NOSPC) => {
                self.blind.get_or_insert_with(|| {
                    format!(
                        "{} and what is below it cannot be watched: the limit of inotify watches \
                         (fs.inotify.max_user_watches = {}) is reached; raise it (e.g. \
                         `sysctl fs.inotify.max_user_watches=1048576`) and restart the watcher",
                        os(dir).display(),
                        max_user_watches()
                    )
                });
                false
            }
            // Not readable, say: everything at and below it is scanned by every run (it is most
            // likely not listable either, which the run reports).
            Err(_) => {
                self.unwatched.push(dir.to_vec());
                false
            }
        }
    }

    /// Watches `dir` and every directory below it (an explicit stack: depth is not bounded
    /// by the thread's stack).
    fn watch_tree(&mut self, dir: &[u8], moved: bool) {
        let mut stack = vec![dir.to_vec()];
        while let Some(d) = stack.pop() {
            // Watched before it is listed: an entry made in between is seen one way or the other.
            if !self.watch_one(&d, moved) {
                continue;
            }
            let Ok(entries) = ::io::dir::list(os(&d)) else { continue };
            for e in entries {
                let is_dir = e.stat.as_ref().is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
                if is_dir {
                    stack.push(join(&d, e.name.as_bytes()));
                }
            }
        }
    }

    /// Waits up to `timeout` for events and takes every one that is ready. True when some
    /// change was recorded.
    pub fn poll(&mut self, timeout: Duration) -> std::io::Result<bool> {
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(Errno::INTR) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        self.drain()
    }

    /// Something was mounted or unmounted somewhere: if at or below a root, or above one, the
    /// watches may cover other directories now (other mounts, a container's or a snap's, are
    /// not ours).
    pub fn mounts_changed(&mut self) {
        let now = self.our_mounts();
        if now != self.mount_points {
            self.mount_points = now;
            self.rebuild
                .get_or_insert_with(|| "a file system was mounted or unmounted under the paths".into());
            self.rebuild_if_needed();
        }
    }

    /// The mount points at or below a root, or above one, from /proc/self/mountinfo (its fifth
    /// field, with `\ooo` escapes).
    fn our_mounts(&self) -> Vec<Vec<u8>> {
        let Ok(table) = std::fs::read("/proc/self/mountinfo") else { return Vec::new() };
        let mut out: Vec<Vec<u8>> = table
            .split(|&c| c == b'\n')
            .filter_map(|line| line.split(|&c| c == b' ').nth(4))
            .map(unescape)
            .filter(|m| {
                self.roots.iter().any(|r| {
                    let r = r.as_os_str().as_bytes();
                    under(m, r) || under(r, m)
                })
            })
            .collect();
        out.sort();
        out
    }

    /// Makes every watch again, if something calls for it: the next run scans everything.
    fn rebuild_if_needed(&mut self) {
        let Some(why) = self.rebuild.take() else { return };
        // Walked again from the roots: a watch that is still wanted comes back with the same
        // descriptor and its path now; only those not found again are removed (removing all
        // would queue an IN_IGNORED each, overflowing the queue on a large tree, which calls
        // for a rebuild...).
        let old: Vec<i32> = self.wds.keys().chain(self.above.keys()).copied().collect();
        self.wds.clear();
        self.above.clear();
        self.moved.clear();
        self.moved_to.clear();
        self.watch_roots();
        for wd in old {
            if !self.wds.contains_key(&wd) && !self.above.contains_key(&wd) {
                let _ = inotify::remove_watch(&self.fd, wd);
            }
        }
        self.gap.get_or_insert(format!("{why}: the watches were made again"));
    }

    /// Takes every event that is ready. True when some change was recorded.
    pub fn drain(&mut self) -> std::io::Result<bool> {
        let before = (self.dirty.len(), self.gap.is_some(), self.events);
        // Room for many events per read; names are at most 255 bytes.
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 << 10];
        let mut batch: Vec<(i32, ReadFlags, u32, Option<Vec<u8>>)> = Vec::new();
        {
            let mut r = inotify::Reader::new(self.fd.as_fd(), &mut buf);
            loop {
                match r.next() {
                    Ok(ev) => batch.push((
                        ev.wd(),
                        ev.events(),
                        ev.cookie(),
                        ev.file_name().map(|n| n.to_bytes().to_vec()),
                    )),
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for (wd, flags, cookie, name) in batch {
            self.event(wd, flags, cookie, name.as_deref());
        }
        // Every directory moved in this batch is walked where it is now: its watches (and any
        // added since it moved) map to its place after all the renames (an exchange of two
        // directories is two renames).
        for path in std::mem::take(&mut self.moved_to) {
            self.watch_tree(&path, true);
        }
        // A directory moved away whose new place was not seen in two batches left the watched
        // trees: its watches go, by descriptor (its old path may hold another directory now).
        let mut gone = Vec::new();
        self.moved.retain(|_, m| {
            m.age += 1;
            if m.age < 2 {
                return true;
            }
            gone.append(&mut m.wds);
            false
        });
        for wd in gone {
            if self.wds.remove(&wd).is_some() {
                let _ = inotify::remove_watch(&self.fd, wd);
            }
        }
        self.rebuild_if_needed();
        Ok((self.dirty.len(), self.gap.is_some(), self.events) != before)
    }

    fn is_root(&self, path: &[u8]) -> bool {
        self.roots.iter().any(|r| r.as_os_str().as_bytes() == path)
    }

    fn event(&mut self, wd: i32, flags: ReadFlags, cookie: u32, name: Option<&[u8]>) {
        self.events += 1;
        if self.dirty.len() >= MAX_DIRTY {
            // Memory stays bounded: past this, listing everything is no dearer.
            self.dirty = Dirty::default();
            self.gap.get_or_insert_with(|| format!("more than {MAX_DIRTY} directories changed"));
        }
        if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
            // Lost events include new directories (never watched) and renames (watches at
            // old paths): the watches are walked again, too.
            self.rebuild.get_or_insert_with(|| {
                "the kernel's queue of file events overflowed (fs.inotify.max_queued_events): \
                 some changes were not seen"
                    .into()
            });
            return;
        }
        if flags.contains(ReadFlags::UNMOUNT) {
            let at = self.wds.get(&wd).map(|d| os(d).display().to_string()).unwrap_or_default();
            self.rebuild.get_or_insert_with(|| format!("the file system at {at} was unmounted"));
        }
        // A directory holding a root: a root made, removed or renamed there is watched anew.
        if let (Some(up), Some(name)) = (self.above.get(&wd).cloned(), name) {
            let path = join(&up, name);
            let replaced = flags.intersects(
                ReadFlags::CREATE | ReadFlags::DELETE | ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO,
            );
            if self.is_root(&path) {
                match replaced {
                    true => {
                        self.rebuild.get_or_insert_with(|| format!("{} was replaced", os(&path).display()));
                    }
                    // A root's own metadata, or a root that is a file, changed: a run is due (a
                    // root is always stat'ed, never taken from the cache unlooked).
                    false => {
                        self.dirty.mark(&up);
                        self.dirty.mark(&path);
                    }
                }
            }
        }
        if name.is_none() && flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) {
            if let Some(up) = self.above.get(&wd) {
                self.rebuild.get_or_insert_with(|| format!("{} was moved or removed", os(up).display()));
            }
        }
        if flags.contains(ReadFlags::IGNORED) {
            if let Some(dir) = self.wds.remove(&wd) {
                if self.is_root(&dir) {
                    self.rebuild.get_or_insert_with(|| format!("{} is gone", os(&dir).display()));
                }
            }
            self.above.remove(&wd);
            return;
        }
        let Some(dir) = self.wds.get(&wd).cloned() else { return };
        let Some(name) = name else {
            // The directory itself: its own metadata is an entry of its parent, and it is
            // listed again so that its own record is made anew.
            self.dirty.mark(&dir);
            self.dirty.mark(parent(&dir));
            if flags.intersects(ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF) && self.is_root(&dir) {
                self.rebuild.get_or_insert_with(|| format!("{} was moved or removed", os(&dir).display()));
            }
            return;
        };
        let path = join(&dir, name);
        // A write to a file the runs leave out changes nothing they save (made, removed or
        // renamed, it moves `dir`'s mtime, which they do save).
        let structural = flags
            .intersects(ReadFlags::CREATE | ReadFlags::DELETE | ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO);
        if !structural && (self.excluded)(&path) {
            return;
        }
        // An entry of `dir` changed: `dir` is listed again, even when the entry is one of
        // bakare's own directories (its parent's mtime moved), which is never watched.
        self.dirty.mark(&dir);
        if self.ignored.iter().any(|i| under(&path, i)) {
            return;
        }
        if !flags.contains(ReadFlags::ISDIR) {
            if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                self.new_name(&path);
            }
            return;
        }
        if flags.contains(ReadFlags::MOVED_FROM) {
            let wds = self.wds.iter().filter(|(_, p)| under(p, &path)).map(|(wd, _)| *wd).collect();
            self.moved.insert(cookie, Moved { path, wds, age: 0 });
        } else if flags.contains(ReadFlags::MOVED_TO) {
            // Renamed within the watched trees: its watches follow it now (events later in
            // this batch name the new place), and it is walked again at the end of the batch.
            if let Some(m) = self.moved.remove(&cookie) {
                self.rename(&m.path, &path, &m.wds);
            }
            self.moved_to.push(path.clone());
            self.dirty.mark_deep(&path);
        } else if flags.contains(ReadFlags::CREATE) {
            self.watch_tree(&path, false);
            self.dirty.mark_deep(&path);
        }
    }

    /// A file got the name `path`. If it has others, their directories were told nothing (a
    /// link count is the inode's, reported to watches on the inode only), and a directory
    /// the files cache recorded with it as a file of one name is out of date: only a full
    /// scan finds those names.
    fn new_name(&mut self, path: &[u8]) {
        let Ok(st) = rustix::fs::statat(rustix::fs::CWD, os(path), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        else {
            return; // gone already: its directory is listed anyway
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink > 1 {
            self.gap.get_or_insert_with(|| {
                format!(
                    "{} is a hard link: the directories of its other names saw no change",
                    os(path).display()
                )
            });
        }
    }

    /// The watches `wds`, which were at or below `old`, are now at or below `new`.
    fn rename(&mut self, old: &[u8], new: &[u8], wds: &[i32]) {
        for wd in wds {
            if let Some(p) = self.wds.get_mut(wd) {
                if under(p, old) {
                    let mut moved = new.to_vec();
                    moved.extend_from_slice(&p[old.len()..]);
                    *p = moved;
                }
            }
        }
    }

    /// Whether anything was recorded since the last `take`.
    pub fn changed(&self) -> bool {
        !self.dirty.is_empty() || self.gap.is_some()
    }

    /// How many directories are marked, for the status.
    pub fn dirty_dirs(&self) -> usize {
        self.dirty.len()
    }

    /// Why the next run must be a full scan, if it must.
    pub fn full_scan_reason(&self) -> Option<&str> {
        self.never.as_deref().or(self.blind.as_deref()).or(self.gap.as_deref())
    }

    /// Lists `dir` at the next run, which this does not call for: a directory the last run
    /// could not record in the files cache (an entry changed within its last second, a file
    /// with several names).
    pub fn relist(&mut self, dir: &[u8]) {
        self.relist.mark(dir);
    }

    /// From now on the record starts empty: what changed since the last take, or why it is
    /// unknown (then the run that uses it scans everything).
    pub fn take(&mut self) -> Result<Dirty, String> {
        if let Some(why) = self.roots_moved() {
            self.rebuild(why);
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.merge(std::mem::take(&mut self.relist));
        for d in &self.unwatched {
            dirty.mark_deep(d);
        }
        if let Some(why) = self.never.as_ref().or(self.blind.as_ref()) {
            self.gap = None;
            return Err(why.clone());
        }
        match self.gap.take() {
            Some(why) => Err(why),
            None => Ok(dirty),
        }
    }

    /// Puts back what a run that failed did not use: the next run is due for it.
    pub fn restore(&mut self, dirty: Dirty) {
        self.dirty.merge(dirty);
    }

    /// Records that the next run must scan everything.
    pub fn gap(&mut self, why: String) {
        self.gap.get_or_insert(why);
    }

    /// Records that every run must scan everything, from now on.
    pub fn blind(&mut self, why: String) {
        self.never.get_or_insert(why);
    }

    /// Makes every watch again (a run found the watcher missed a change: whatever lost it
    /// may still be in place); the next run scans everything.
    pub fn rebuild(&mut self, why: String) {
        self.rebuild.get_or_insert(why);
        self.rebuild_if_needed();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::fs;

    fn settle(w: &mut Watcher) -> Dirty {
        while w.poll(Duration::from_millis(50)).unwrap() {}
        w.take().unwrap()
    }

    fn b(p: &Path) -> Vec<u8> {
        p.as_os_str().as_bytes().to_vec()
    }

    #[test]
    fn changes_mark_their_directories_and_new_trees_are_watched() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join("c")).unwrap();
        fs::write(root.join("a/b/f"), b"1").unwrap();
        fs::create_dir_all(root.join("c/own-cache/x")).unwrap();
        let mut w = Watcher::new(std::slice::from_ref(&root), &[root.join("c/own-cache")]).unwrap();
        assert_eq!(w.watched(), 4, "r, a, a/b, c: not the ignored directory");
        fs::write(root.join("c/own-cache/x/f"), b"1").unwrap();
        fs::write(root.join("c/own-cache/g"), b"1").unwrap();
        assert!(settle(&mut w).is_empty(), "nothing seen in an ignored directory");
        assert!(settle(&mut w).is_empty());

        fs::write(root.join("a/b/f"), b"22").unwrap();
        let d = settle(&mut w);
        assert_eq!(d.dirs().collect::<Vec<_>>(), [b(&root.join("a/b")).as_slice()]);
        assert!(d.untouched(&b(&root.join("c"))));

        // A new directory is watched, and everything in it is new.
        fs::create_dir_all(root.join("n/m")).unwrap();
        let d = settle(&mut w);
        assert!(!d.untouched(&b(&root.join("n/m"))));
        fs::write(root.join("n/m/g"), b"x").unwrap();
        let d = settle(&mut w);
        assert!(d.dirs().any(|x| x == b(&root.join("n/m"))), "{d:?}");

        // A renamed directory's watches follow it.
        fs::rename(root.join("a"), root.join("z")).unwrap();
        let d = settle(&mut w);
        assert!(!d.untouched(&b(&root.join("z/b"))));
        fs::write(root.join("z/b/f"), b"333").unwrap();
        let d = settle(&mut w);
        assert_eq!(d.dirs().collect::<Vec<_>>(), [b(&root.join("z/b")).as_slice()]);
    }

    #[test]
    fn xattrs_mark_their_directory_and_inode_flags_go_unseen() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a/f"), b"1").unwrap();
        let mut w = Watcher::new(std::slice::from_ref(&root), &[]).unwrap();
        let f = root.join("a/f");
        if rustix::fs::setxattr(&f, "user.bakare", b"v", rustix::fs::XattrFlags::empty()).is_ok() {
            let d = settle(&mut w);
            assert_eq!(d.dirs().collect::<Vec<_>>(), [b(&root.join("a")).as_slice()], "xattr");
        }
        let file = fs::File::open(&f).unwrap();
        let nodump = rustix::fs::IFlags::from_bits_retain(0x40); // FS_NODUMP_FL
        if rustix::fs::ioctl_setflags(&file, nodump).is_ok() {
            // The kernel tells inotify nothing of FS_IOC_SETFLAGS (chattr): docs/watch.md says
            // a full scan is what records such a change. Should this fail, the kernel reports
            // it now, and the docs are out of date.
            let d = settle(&mut w);
            assert!(d.is_empty(), "chattr +d was reported: {d:?}");
        } else {
            eprintln!("SKIPPED: inode flags cannot be set under {}", t.path().display());
        }
    }

    #[test]
    fn mount_points_are_read_as_mountinfo_escapes_them() {
        assert_eq!(unescape(b"/mnt/my\\040disk\\011x\\\\"), b"/mnt/my disk\tx\\\\".to_vec());
        assert_eq!(unescape(b"/a\\09"), b"/a\\09".to_vec(), "not three octal digits: kept");
        // The root file system is above every path.
        let t = tempfile::tempdir().unwrap();
        let w = Watcher::new(&[t.path().to_path_buf()], &[]).unwrap();
        assert!(w.our_mounts().contains(&b"/".to_vec()), "{:?}", w.our_mounts());
    }

    #[test]
    fn a_directory_moved_out_and_back_keeps_its_watches() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("d/e")).unwrap();
        let mut w = Watcher::new(std::slice::from_ref(&root), &[]).unwrap();
        fs::rename(root.join("d"), t.path().join("out")).unwrap();
        let _ = settle(&mut w);
        fs::rename(t.path().join("out"), root.join("d")).unwrap();
        for _ in 0..3 {
            let _ = settle(&mut w); // the first move's half ages out meanwhile
        }
        fs::write(root.join("d/e/f"), b"1").unwrap();
        let d = settle(&mut w);
        assert_eq!(d.dirs().collect::<Vec<_>>(), [b(&root.join("d/e")).as_slice()]);
    }

    #[test]
    fn a_directory_made_and_filled_by_a_rename_in_one_batch_is_no_bind_mount() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("a/b")).unwrap();
        let mut w = Watcher::new(std::slice::from_ref(&root), &[]).unwrap();
        fs::create_dir(root.join("n")).unwrap();
        fs::rename(root.join("a"), root.join("n/a")).unwrap();
        let d = settle(&mut w);
        assert!(!d.untouched(&b(&root.join("n/a/b"))));
        fs::write(root.join("n/a/b/f"), b"1").unwrap();
        let d = settle(&mut w);
        assert_eq!(d.dirs().collect::<Vec<_>>(), [b(&root.join("n/a/b")).as_slice()]);
        // A real bind mount would make every run a full scan; this is not one.
        assert_eq!(w.full_scan_reason(), None);
    }

    #[test]
    fn a_root_replaced_from_above_is_watched_again() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("home/u/docs");
        fs::create_dir_all(root.join("x")).unwrap();
        let mut w = Watcher::new(std::slice::from_ref(&root), &[]).unwrap();
        // The root's grandparent renamed, and a new tree made where the root was: no event
        // reaches any watch on the new one.
        fs::rename(t.path().join("home"), t.path().join("home.old")).unwrap();
        fs::create_dir_all(root.join("x")).unwrap();
        let _ = w.drain();
        let why = w.take().unwrap_err();
        assert!(why.contains("another directory than the one watched"), "{why}");
        fs::write(root.join("x/f"), b"1").unwrap();
        let d = settle(&mut w);
        assert_eq!(d.dirs().collect::<Vec<_>>(), [b(&root.join("x")).as_slice()]);
        // A root's own metadata changing is a change, not a replacement.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        let d = settle(&mut w);
        assert!(d.dirs().any(|x| x == b(&root)), "{d:?}");
    }

    #[test]
    fn a_directory_s_own_attributes_mark_it_and_its_parent() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        fs::create_dir_all(root.join("a")).unwrap();
        let mut w = Watcher::new(std::slice::from_ref(&root), &[]).unwrap();
        fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o700)).unwrap();
        let d = settle(&mut w);
        let dirs: Vec<&[u8]> = d.dirs().collect();
        assert_eq!(dirs, [b(&root).as_slice(), b(&root.join("a")).as_slice()]);
    }
}
