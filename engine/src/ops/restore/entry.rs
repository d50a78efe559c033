//! entry: what restore does for one entry of the target: a file written under a temporary
//! name and renamed into place (or kept, `Overwrite`), a symlink or special file, a
//! directory's metadata once everything in it is done; and what it counts on the way.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use stages::{BlobId, BlobKind};

use super::spill::Spill;
use super::{confine, Overwrite, RestoreOptions};
use crate::error::{Error, Result};
use crate::ops::attrs::{self, Xattr};
use crate::repo::{BlobReader, Scratch};
use crate::tree::{Node, NodeKind, Placer};

/// Both times of a restored node: its mtime. (Every node a reader accepts has one that fits:
/// `Node::problem`.)
pub(super) fn timestamps(node: &Node) -> rustix::fs::Timestamps {
    let (tv_sec, nsec) = node.mtime().unwrap_or_default();
    let t = rustix::fs::Timespec { tv_sec, tv_nsec: nsec.into() };
    rustix::fs::Timestamps { last_access: t, last_modification: t }
}

/// The mode of a file restore is still writing under its final name (in a directory it
/// created): a file found with it and without the snapshot's size and mtime (which restore
/// sets last) is what an interrupted restore left, and is replaced whatever `--overwrite`
/// says. (A real file of mode 000 that differs from the snapshot is replaced too.)
pub(super) const UNFINISHED: u32 = 0;

/// Failures named one by one; the rest are counted.
pub(super) const MAX_ERRORS: usize = 10_000;

/// A restore stops after this many files in a row failed because the target's file system is
/// full, with one message, instead of naming every remaining file.
pub(super) const FULL_IN_A_ROW: u64 = 8;

/// An open directory inside the target. Its own metadata is applied when the last handle on
/// it is dropped: after the walk has left it and every file in it is written (file jobs and
/// subdirectories hold it).
pub(super) struct DirHandle<'a> {
    pub(super) fd: OwnedFd,
    /// For messages.
    pub(super) path: PathBuf,
    /// Relative to the target (`a/b`), for the hard links made at the end.
    pub(super) rel: Vec<u8>,
    /// Its entry in the snapshot; None for the target itself and for handles of the last phase.
    pub(super) node: Option<Node>,
    /// Hard links will be made in it at the end: its metadata waits for them.
    pub(super) has_links: AtomicBool,
    pub(super) r: &'a Restorer<'a>,
    pub(super) _parent: Option<Arc<DirHandle<'a>>>,
    /// Files created in it inherit no kept inode flags (`confine::passes_no_flags`), asked once.
    pub(super) no_flags: std::sync::OnceLock<bool>,
}

impl DirHandle<'_> {
    /// Hard links will be made in this directory at the end: its metadata, and that of every
    /// directory above it (a read-only ancestor would stop the links), waits for them.
    pub(super) fn mark_links(&self) {
        let mut d = Some(self);
        while let Some(h) = d {
            if h.has_links.swap(true, Relaxed) {
                break; // marked before, and so were its ancestors
            }
            d = h._parent.as_deref();
        }
    }

    pub(super) fn child_path(&self, name: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(name))
    }

    pub(super) fn child_rel(&self, name: &[u8]) -> Vec<u8> {
        let mut rel = self.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name);
        rel
    }
}

impl Drop for DirHandle<'_> {
    fn drop(&mut self) {
        let Some(node) = self.node.take() else { return };
        if self.has_links.load(Relaxed) {
            let rel = std::mem::take(&mut self.rel);
            let size = rel.len() + crate::tree::entries_size(std::slice::from_ref(&node));
            lock(&self.r.deferred).push((rel, node), size);
        } else if let Err(e) = self.r.dir_meta(&self.fd, &node) {
            self.r.fail(&self.path, format!("cannot set directory metadata: {e}"));
        }
    }
}

pub(super) struct FileJob<'a> {
    pub(super) dir: Arc<DirHandle<'a>>,
    pub(super) node: Node,
    /// Its directory was created by this restore: nothing can be in the way.
    pub(super) fresh: bool,
}

/// The files this restore created that have other names: the (device, inode) each got, by a keyed
/// 64-bit hash of its path relative to the target (a collision or a crafted path can only
/// fail the inode check a link makes, and the content is restored instead). At most `cap`
/// are tracked: the other names of files past it are restored as copies, and counted.
pub(super) struct Linked {
    map: HashMap<u64, (u64, u64)>,
    keys: std::collections::hash_map::RandomState,
    cap: usize,
    pub(super) untracked: u64,
}

impl Linked {
    pub(super) fn new(cap: usize) -> Self {
        Linked { map: HashMap::new(), keys: Default::default(), cap, untracked: 0 }
    }

    fn key(&self, rel: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.keys.hash_one(rel)
    }

    pub(super) fn insert(&mut self, rel: &[u8], dev: u64, ino: u64) {
        let key = self.key(rel);
        if self.map.len() < self.cap || self.map.contains_key(&key) {
            self.map.insert(key, (dev, ino));
        } else {
            self.untracked += 1;
        }
    }

    pub(super) fn get(&self, rel: &[u8]) -> Option<(u64, u64)> {
        self.map.get(&self.key(rel)).copied()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct Restorer<'a> {
    pub(super) reader: &'a BlobReader<'a>,
    pub(super) opts: &'a RestoreOptions,
    /// Owners and set-id bits are restored (running as root, and asked to).
    pub(super) owner: bool,
    /// Device nodes may be made (running as root).
    pub(super) devices: bool,
    pub(super) verified: AtomicU64,
    pub(super) deleted: AtomicU64,
    pub(super) deleted_bytes: AtomicU64,
    pub(super) replaced: AtomicU64,
    /// The snapshot's bytes of the regular files among them.
    pub(super) replaced_bytes: AtomicU64,
    pub(super) kept: AtomicU64,
    pub(super) errors: Mutex<Vec<(PathBuf, String)>>,
    /// Failures past `MAX_ERRORS`, counted only.
    pub(super) unlisted: AtomicU64,
    /// Files that failed in a row with ENOSPC; at `FULL_IN_A_ROW` the restore stops.
    pub(super) full: AtomicU64,
    pub(super) stop: AtomicBool,
    /// Restored files that have other names (hard link targets).
    pub(super) linked: Mutex<Linked>,
    /// Directories whose metadata waits for their hard links: (relative path, entry), each
    /// after those below it (a handle goes after its children's).
    pub(super) deferred: Mutex<Spill<(Vec<u8>, Node)>>,
    pub(super) setid_dropped: AtomicU64,
    pub(super) owners_skipped: AtomicU64,
    pub(super) devices_skipped: AtomicU64,
    pub(super) privileged_dropped: AtomicU64,
    pub(super) locking_linked: AtomicU64,
    pub(super) attrs_failed: AtomicU64,
    pub(super) first_attr_failure: Mutex<Option<(PathBuf, String)>>,
    pub(super) xattrs_skipped: AtomicU64,
    pub(super) flags_skipped: AtomicU64,
    pub(super) specials_skipped: AtomicU64,
    pub(super) euid: u32,
}

impl Restorer<'_> {
    /// Names a failure; past `MAX_ERRORS` only counts it (a hostile snapshot can fail in
    /// millions of places, each with a long path).
    pub(super) fn fail(&self, path: &Path, why: impl ToString) {
        let mut errors = lock(&self.errors);
        if errors.len() < MAX_ERRORS {
            errors.push((path.to_path_buf(), why.to_string()));
        } else {
            self.unlisted.fetch_add(1, Relaxed);
        }
    }

    /// Records a file that failed because the file system is full (true), or resets the count
    /// of such failures in a row (false: it did not fail so). The failures are listed until
    /// `FULL_IN_A_ROW` in a row; that one is replaced by the message that stops the restore,
    /// and files still in flight after it are, like those never started, covered by that
    /// message. All under the errors' lock, so that nothing is listed after it.
    pub(super) fn full(&self, path: &Path, failed: Option<&Error>) -> bool {
        let enospc = |e: &&Error| matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull);
        let Some(e) = failed.filter(enospc) else {
            self.full.store(0, Relaxed);
            return false;
        };
        let mut errors = lock(&self.errors);
        if self.stop.load(Relaxed) {
            return true;
        }
        if self.full.fetch_add(1, Relaxed) + 1 < FULL_IN_A_ROW {
            if errors.len() < MAX_ERRORS {
                errors.push((path.to_path_buf(), e.to_string()));
            } else {
                self.unlisted.fetch_add(1, Relaxed);
            }
            return true;
        }
        self.stop.store(true, Relaxed);
        let why = format!(
            "the file system is full: {FULL_IN_A_ROW} files in a row could not be written (ENOSPC); \
             restore stopped. Free space and run it again: files already in place are kept"
        );
        errors.push((self.opts.target.clone(), why));
        true
    }

    /// Whether a file that is there belongs to whom this restore would give it: the snapshot's
    /// owner when owners are restored, the restoring user otherwise.
    fn owned_as_restored(&self, st: &rustix::fs::Stat, node: &Node) -> bool {
        match self.owner {
            true => (st.st_uid, st.st_gid) == (node.uid, node.gid),
            false => st.st_uid == self.euid,
        }
    }

    /// The owner to set, if any.
    pub(super) fn owner_of(&self, node: &Node) -> Option<(u32, u32)> {
        if self.owner {
            Some((node.uid, node.gid))
        } else {
            if node.uid != self.euid {
                self.owners_skipped.fetch_add(1, Relaxed);
            }
            None
        }
    }

    /// The permission bits to set: set-id bits only with the owner.
    pub(super) fn mode_of(&self, node: &Node) -> u32 {
        let mode = node.mode & 0o7777;
        if !self.owner && mode & 0o6000 != 0 {
            self.setid_dropped.fetch_add(1, Relaxed);
            return mode & 0o1777;
        }
        mode
    }

    /// The directory `name` in `dir`, opened (and created unless this is a dry run), and
    /// whether it is new. In a dry run a directory that does not exist yet gets a stand-in
    /// handle that nothing uses: below it everything is new.
    pub(super) fn child_dir(
        &self,
        dir: &DirHandle,
        name: &[u8],
        parent_fresh: bool,
    ) -> std::io::Result<(OwnedFd, bool)> {
        if !self.opts.dry_run {
            return confine::child_dir(&dir.fd, name);
        }
        let existing = if parent_fresh { None } else { confine::existing_dir(&dir.fd, name)? };
        match existing {
            Some(fd) => Ok((fd, false)),
            None => Ok((dir.fd.try_clone()?, true)),
        }
    }

    /// The names in the target's directory, for `delete`; leftovers of an interrupted restore
    /// (temporary names) are removed at once, before any file of this directory is written.
    pub(super) fn existing_names(&self, dir: &DirHandle) -> Option<Vec<Vec<u8>>> {
        match confine::names(&dir.fd) {
            Ok(mut names) => {
                names.retain(|n| {
                    let leftover = n.starts_with(confine::TEMP_PREFIX);
                    if leftover && !self.opts.dry_run {
                        let _ = confine::clear(&dir.fd, n);
                    }
                    !leftover
                });
                Some(names)
            }
            Err(e) => {
                self.fail(&dir.path, format!("cannot list it to delete what the snapshot lacks: {e}"));
                None
            }
        }
    }

    /// Removes `name` (and all below it) from `dir`: the snapshot does not have it.
    pub(super) fn delete(&self, dir: &DirHandle, name: &[u8]) {
        let (n, done) = confine::remove_tree(&dir.fd, name, self.opts.dry_run);
        self.deleted.fetch_add(n.entries, Relaxed);
        self.deleted_bytes.fetch_add(n.bytes, Relaxed);
        if let Err(e) = done {
            self.fail(&dir.child_path(name), format!("cannot delete it: {e}"));
        }
    }

    pub(super) fn dir_meta(&self, fd: &OwnedFd, node: &Node) -> std::io::Result<()> {
        self.fd_meta(fd, node, None)?;
        self.lock(fd, node, false)
    }

    /// What is set on `node`'s entry besides its content. Privileged attributes (`trusted.*`,
    /// `security.*` with file capabilities and labels) and the immutable and append-only flags,
    /// like set-id bits, only with the owner: a restore as another user, or with --no-owner,
    /// applies user attributes and ACLs.
    fn entry_meta<'n>(&self, node: &'n Node) -> (confine::EntryMeta<'n>, Option<Vec<Xattr>>) {
        let mut flags = node.flags;
        let mut filtered = None;
        if !self.owner {
            let privileged = node.xattrs.iter().any(|x| !attrs::unprivileged(x));
            if privileged {
                filtered = Some(node.xattrs.iter().filter(|x| attrs::unprivileged(x)).cloned().collect());
            }
            if privileged || flags & attrs::LOCKING != 0 {
                self.privileged_dropped.fetch_add(1, Relaxed);
            }
            flags &= !attrs::LOCKING;
        }
        let meta = confine::EntryMeta {
            owner: self.owner_of(node),
            mode: self.mode_of(node),
            times: timestamps(node),
            xattrs: &node.xattrs,
            flags,
            flags_clear: false,
        };
        (meta, filtered)
    }

    /// Everything but the content and the locking flags, on an open regular file or directory
    /// (`confine::fd_meta`); `path` names it in a note of an attribute that failed.
    fn fd_meta(&self, fd: impl std::os::fd::AsFd, node: &Node, path: Option<&Path>) -> std::io::Result<()> {
        self.fd_meta_in(fd, node, path, None)
    }

    /// `fd_meta` for a file this restore just created in `dir`.
    fn fd_meta_in(
        &self,
        fd: impl std::os::fd::AsFd,
        node: &Node,
        path: Option<&Path>,
        dir: Option<&DirHandle>,
    ) -> std::io::Result<()> {
        let (mut meta, filtered) = self.entry_meta(node);
        meta.flags_clear = dir.is_some_and(|d| *d.no_flags.get_or_init(|| confine::passes_no_flags(&d.fd)));
        if let Some(x) = &filtered {
            meta.xattrs = x;
        }
        let mut skipped = attrs::NotApplied::default();
        let done = confine::fd_meta(fd, &meta, &mut skipped);
        self.not_applied(skipped, path);
        done
    }

    /// Immutable and append-only, once the entry is in its place (`confine::lock`). A file
    /// with other names gets neither: the kernel would refuse to link them.
    fn lock(&self, fd: impl std::os::fd::AsFd, node: &Node, file: bool) -> std::io::Result<()> {
        if !self.owner || node.flags & attrs::LOCKING == 0 {
            return Ok(());
        }
        if file && node.nlink > 1 {
            self.locking_linked.fetch_add(1, Relaxed);
            return Ok(());
        }
        let mut skipped = attrs::NotApplied::default();
        let done = confine::lock(fd, node.flags, &mut skipped);
        self.not_applied(skipped, None);
        done
    }

    fn not_applied(&self, skipped: attrs::NotApplied, path: Option<&Path>) {
        self.xattrs_skipped.fetch_add(skipped.xattrs, Relaxed);
        self.flags_skipped.fetch_add(skipped.flags, Relaxed);
        self.attrs_failed.fetch_add(skipped.failed, Relaxed);
        if let Some(why) = skipped.first_failure {
            let mut first = lock(&self.first_attr_failure);
            if first.is_none() {
                *first = Some((path.map(Path::to_path_buf).unwrap_or_default(), why));
            }
        }
    }

    /// Writes a file's content, then its metadata. All-zero blobs become holes (sparse files
    /// stay sparse). Returns the bytes written, or the metadata error after a good write.
    pub(super) fn write_file(
        &self,
        job: &FileJob,
        content: &[BlobId],
        size: u64,
        scratch: &mut Scratch,
    ) -> Result<(u64, Option<String>)> {
        let (dir, name) = (&job.dir, job.node.name.as_slice());
        // In a directory this restore created, the file is written under its own name: until
        // its metadata comes last, it never has the snapshot's mtime, so an interrupted restore
        // leaves nothing that looks complete, and the next one (--overwrite if-changed) replaces
        // it. Elsewhere it replaces what is there only once complete (a temporary name renamed
        // into place). Renaming every file cost 20 % on a restore of 300,000 small files.
        let (mut f, tmp) = if job.fresh {
            // Mode 0 until complete (`UNFINISHED`): the next restore replaces it whatever its mtime.
            let f = confine::create_file(&dir.fd, name, 0).map_err(|e| Error::io(dir.child_path(name), e))?;
            (f, None)
        } else {
            let (f, tmp) = confine::create_temp(&dir.fd, name).map_err(|e| Error::io(dir.path.clone(), e))?;
            (f, Some(tmp))
        };
        let written = self.fill(&mut f, job, content, size, scratch);
        let placed = written.and_then(|n| {
            let node = &job.node;
            #[cfg(all(feature = "test-hooks", debug_assertions))]
            spoil_for_test(&f, name);
            // Before it takes the place of anything: a file that reads back wrong is removed,
            // and what was there stays.
            if self.opts.verify {
                let read_back = self.same_content(&f, node);
                match read_back {
                    Ok(true) => {
                        self.verified.fetch_add(1, Relaxed);
                    }
                    Ok(false) => {
                        let why = "read back, it differs from the snapshot (removed)";
                        return Err(Error::corrupt("file", dir.child_path(name).display().to_string(), why));
                    }
                    Err(e) => return Err(Error::io(dir.child_path(name), e)),
                }
            }
            let meta = self.fd_meta_in(&f, node, Some(&dir.child_path(name)), Some(dir));
            if let Some(tmp) = &tmp {
                confine::rename(&dir.fd, tmp, name).map_err(|e| Error::io(dir.child_path(name), e))?;
            }
            let meta = meta.and_then(|()| self.lock(&f, node, true));
            Ok((n, meta.err().map(|e| e.to_string())))
        });
        match placed {
            Ok(done) => {
                if job.node.nlink > 1 {
                    if let Ok(md) = f.metadata() {
                        use std::os::unix::fs::MetadataExt;
                        lock(&self.linked).insert(&dir.child_rel(name), md.dev(), md.ino());
                    }
                }
                Ok(done)
            }
            Err(e) => {
                let _ = confine::clear(&dir.fd, tmp.as_deref().unwrap_or(name));
                Err(e)
            }
        }
    }

    /// The content of `job` into `f`, around its holes, checked against its size. Whole blobs
    /// of zeros become holes too.
    pub(super) fn fill(
        &self,
        f: &mut std::fs::File,
        job: &FileJob,
        content: &[BlobId],
        size: u64,
        scratch: &mut Scratch,
    ) -> Result<u64> {
        use std::os::unix::fs::FileExt;
        let path = || job.dir.child_path(&job.node.name);
        let holes = &job.node.holes;
        let mut placer = Placer::new(holes);
        let mut written = 0u64;
        let mut sparse = !holes.is_empty();
        for id in content {
            let n = self.reader.read_with(id, BlobKind::Data, scratch, |data| {
                let zeros = data.len() >= 4096 && data.iter().all(|&b| b == 0);
                sparse |= zeros;
                let mut rest = data;
                while !rest.is_empty() {
                    let (at, n) = placer.place(rest.len() as u64);
                    let (here, after) = rest.split_at(n as usize);
                    if !zeros {
                        f.write_all_at(here, at)?;
                    }
                    rest = after;
                }
                Ok::<_, std::io::Error>(data.len() as u64)
            })?;
            written += n.map_err(|e| Error::io(path(), e))?;
        }
        let data = size - job.node.hole_bytes();
        if written != data {
            return Err(Error::corrupt(
                "file",
                path().display().to_string(),
                format!("content is {written} bytes, expected {data}"),
            ));
        }
        // No fsync per file: a restore that is interrupted is simply run again, and syncing
        // every file made restoring many small files several times slower.
        if sparse {
            f.set_len(size).map_err(|e| Error::io(path(), e))?;
        }
        Ok(size)
    }

    /// Whether the entry already at the job's name stays (`Overwrite`); counts what it decides.
    /// `linked_to`: for a hard link, the (device, inode) this restore gave its target.
    ///
    /// A file is given metadata, or linked to, only if it has one name and already belongs to
    /// whom the restore would give it: another name may be outside the target, and a file
    /// someone else planted may still be open for writing in their hands (write access is
    /// checked at open, so a chown would not take it back). Others are replaced, except that
    /// `never` and `if-newer` keep them as they are. A file an earlier restore linked is
    /// written again (its names are then linked to the new one).
    pub(super) fn keep_existing(
        &self,
        job: &FileJob,
        size: u64,
        linked_to: Option<(u64, u64)>,
    ) -> std::io::Result<bool> {
        use rustix::fs::FileType;
        let (dir, node) = (&job.dir, &job.node);
        let Some(st) = confine::stat(&dir.fd, &node.name)? else { return Ok(false) };
        let file = FileType::from_raw_mode(st.st_mode) == FileType::RegularFile;
        let mtime_ns = mtime_ns(&st);
        #[allow(clippy::unnecessary_cast)] // st_dev's width differs across targets
        if file && linked_to == Some((st.st_dev as u64, st.st_ino)) {
            // Already a name of the file this restore made for its target.
            self.kept.fetch_add(1, Relaxed);
            return Ok(true);
        }
        if file
            && st.st_mode & 0o7777 == UNFINISHED
            && (st.st_size as u64 != size || mtime_ns != node.mtime_ns)
        {
            // Left by an interrupted restore: never kept, even by `if-newer` or `never`.
            self.replaced.fetch_add(1, Relaxed);
            self.replaced_bytes.fetch_add(size, Relaxed);
            return Ok(false);
        }
        let keep = match self.opts.overwrite {
            Overwrite::Always => false,
            Overwrite::Never => true,
            Overwrite::IfNewer => file && mtime_ns >= node.mtime_ns,
            Overwrite::IfChanged
                if file && linked_to.is_none() && st.st_size as u64 == size && mtime_ns == node.mtime_ns =>
            {
                // One handle for comparing and for the metadata: the file looked at, with no
                // other name than the snapshot gives it (a hard link to a file elsewhere,
                // planted by someone who can write here, is replaced, not chowned).
                let f = confine::open_read(&dir.fd, &node.name)?;
                let now = rustix::fs::fstat(&f)?;
                let same = now.st_ino == st.st_ino && now.st_dev == st.st_dev;
                let keep = same
                    && now.st_nlink == 1
                    && self.owned_as_restored(&now, node)
                    && self.same_content(&f, node)?;
                if keep && !self.opts.dry_run {
                    confine::unlock(&f)?;
                    self.fd_meta(&f, node, Some(&dir.child_path(&node.name)))?;
                    self.lock(&f, node, true)?;
                    if rustix::fs::fstat(&f)?.st_nlink != 1 {
                        return Err(std::io::Error::other("another name appeared while it was checked"));
                    }
                }
                keep
            }
            Overwrite::IfChanged => false,
        };
        if keep {
            self.kept.fetch_add(1, Relaxed);
            if file && node.nlink > 1 && st.st_nlink == 1 && self.owned_as_restored(&st, node) {
                // Its other names in the snapshot link to it, as to a file written now: its
                // one name is here, so it is inside the target, and it is the restore's own.
                #[allow(clippy::unnecessary_cast)] // st_dev's width differs across targets
                lock(&self.linked).insert(&dir.child_rel(&node.name), st.st_dev as u64, st.st_ino);
            }
        } else {
            self.replaced.fetch_add(1, Relaxed);
            // A name that becomes a link to the file this restore made writes no bytes.
            if linked_to.is_none() {
                self.replaced_bytes.fetch_add(size, Relaxed);
            }
        }
        Ok(keep)
    }

    /// Whether the regular file `f` holds exactly `node`'s content: read back blob by blob
    /// (lengths from the index), each hashed against its id, with zeros in its holes and
    /// nothing after its end.
    pub(super) fn same_content(&self, f: &std::fs::File, node: &Node) -> std::io::Result<bool> {
        use std::os::unix::fs::FileExt;
        let (NodeKind::File { content, size } | NodeKind::HardLink { content, size, .. }) = &node.kind else {
            return Ok(false);
        };
        if f.metadata()?.len() != *size {
            return Ok(false);
        }
        let mut placer = Placer::new(&node.holes);
        let mut buf = Vec::new();
        for id in content {
            let Some(len) = self.reader.raw_len(id) else { return Ok(false) };
            buf.resize(len as usize, 0);
            let mut got = 0;
            while got < buf.len() {
                let (at, n) = placer.place((buf.len() - got) as u64);
                let n = n as usize;
                if f.read_exact_at(&mut buf[got..got + n], at).is_err() {
                    return Ok(false);
                }
                got += n;
            }
            if !self.reader.matches(id, &buf) {
                return Ok(false);
            }
        }
        for h in &node.holes {
            if !zeros(f, h.offset, h.len)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn file(&self, job: &FileJob, scratch: &mut Scratch) -> Option<u64> {
        let (content, size) = match &job.node.kind {
            NodeKind::File { content, size } | NodeKind::HardLink { content, size, .. } => (content, *size),
            _ => return None,
        };
        let path = || job.dir.child_path(&job.node.name);
        if !job.fresh {
            match self.keep_existing(job, size, None) {
                Ok(true) => return None,
                Ok(false) if !self.opts.dry_run => {
                    // A file an earlier restore made immutable or append-only cannot be
                    // replaced until that is cleared.
                    let unlocked = match confine::stat(&job.dir.fd, &job.node.name) {
                        // Never one with other names: they may be outside the target.
                        Ok(Some(st)) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() => {
                            confine::open_read(&job.dir.fd, &job.node.name).and_then(|f| {
                                match rustix::fs::fstat(&f) {
                                    Ok(now) if now.st_nlink == 1 => confine::unlock(f),
                                    Ok(_) => Ok(()),
                                    Err(e) => Err(e.into()),
                                }
                            })
                        }
                        Ok(_) => Ok(()),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = unlocked {
                        self.fail(&path(), format!("cannot replace it: {e}"));
                        return None;
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    self.fail(&path(), format!("cannot compare with what is there: {e}"));
                    return None;
                }
            }
        }
        self.write_new(job, content, size, scratch)
    }

    /// Writes the job's file (counted, named when it fails): what `file` does once it has
    /// decided to.
    pub(super) fn write_new(
        &self,
        job: &FileJob,
        content: &[BlobId],
        size: u64,
        scratch: &mut Scratch,
    ) -> Option<u64> {
        let path = || job.dir.child_path(&job.node.name);
        if self.stop.load(Relaxed) {
            return None;
        }
        if self.opts.dry_run {
            return Some(size);
        }
        let written = self.write_file(job, content, size, scratch);
        if self.full(&path(), written.as_ref().err()) {
            return None;
        }
        match written {
            Ok((n, meta)) => {
                if let Some(e) = meta {
                    self.fail(&path(), format!("restored, but cannot set metadata: {e}"));
                }
                Some(n)
            }
            Err(e) => {
                self.fail(&path(), e);
                None
            }
        }
    }

    /// A symlink, FIFO, socket or device node.
    pub(super) fn special(&self, dir: &DirHandle, node: &Node, fresh: bool) {
        use rustix::fs::FileType;
        let name = node.name.as_slice();
        let path = || dir.child_path(name);
        let kind = match &node.kind {
            NodeKind::Symlink { .. } => None,
            NodeKind::Fifo => Some((FileType::Fifo, 0)),
            NodeKind::Socket => Some((FileType::Socket, 0)),
            NodeKind::CharDev { rdev } => Some((FileType::CharacterDevice, *rdev)),
            NodeKind::BlockDev { rdev } => Some((FileType::BlockDevice, *rdev)),
            _ => return,
        };
        if self.opts.dry_run {
            return;
        }
        if kind.is_some() && !self.opts.special {
            self.specials_skipped.fetch_add(1, Relaxed);
            return;
        }
        if matches!(kind, Some((FileType::CharacterDevice | FileType::BlockDevice, _))) && !self.devices {
            self.devices_skipped.fetch_add(1, Relaxed);
            return;
        }
        if !fresh {
            match self.keep_special(dir, node, kind.map(|(ft, _)| ft)) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => return self.fail(&path(), format!("cannot compare with what is there: {e}")),
            }
            if let Err(e) = confine::clear(&dir.fd, name) {
                return self.fail(&path(), e);
            }
        }
        let made = match (&node.kind, kind) {
            (NodeKind::Symlink { target }, _) => confine::symlink(&dir.fd, name, target),
            (_, Some((ft, dev))) => confine::node(&dir.fd, name, ft, self.mode_of(node), dev),
            _ => return,
        };
        if let Err(e) = made {
            return self.fail(&path(), e);
        }
        let made = kind.map_or(FileType::Symlink, |(ft, _)| ft);
        let (mut meta, filtered) = self.entry_meta(node);
        if let Some(x) = &filtered {
            meta.xattrs = x;
        }
        let mut skipped = attrs::NotApplied::default();
        let done = confine::entry_meta(&dir.fd, name, made, &meta, &mut skipped);
        self.not_applied(skipped, Some(&path()));
        if let Err(e) = done {
            self.fail(&path(), format!("created, but cannot set metadata: {e}"));
        }
    }

    /// Whether what is already at a symlink's or special file's name stays (`Overwrite`):
    /// `if-changed` keeps the same kind (a symlink with the same target), `if-newer` anything
    /// as new. Counted with the files.
    fn keep_special(
        &self,
        dir: &DirHandle,
        node: &Node,
        kind: Option<rustix::fs::FileType>,
    ) -> std::io::Result<bool> {
        use rustix::fs::FileType;
        let Some(st) = confine::stat(&dir.fd, &node.name)? else { return Ok(false) };
        let there = FileType::from_raw_mode(st.st_mode);
        let mtime_ns = mtime_ns(&st);
        let keep = match (self.opts.overwrite, &node.kind) {
            (Overwrite::Always, _) => false,
            (Overwrite::Never, _) => true,
            (Overwrite::IfNewer, _) => mtime_ns >= node.mtime_ns,
            (Overwrite::IfChanged, NodeKind::Symlink { target }) => {
                there == FileType::Symlink
                    && rustix::fs::readlinkat(&dir.fd, node.name.as_slice(), Vec::new())
                        .is_ok_and(|t| t.as_bytes() == target.as_slice())
            }
            (Overwrite::IfChanged, _) => Some(there) == kind,
        };
        let counter = if keep { &self.kept } else { &self.replaced };
        counter.fetch_add(1, Relaxed);
        Ok(keep)
    }

    pub(super) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut say = |n: &AtomicU64, what: &str| {
            let n = n.load(Relaxed);
            if n > 0 {
                notes.push(format!("{n} {what}"));
            }
        };
        say(
            &self.owners_skipped,
            "entries keep the restoring user as owner (owners are restored only as root, without --no-owner)",
        );
        say(
            &self.setid_dropped,
            "set-user-id or set-group-id bits not restored (only as root, without --no-owner)",
        );
        say(&self.devices_skipped, "device nodes not restored (only as root)");
        say(
            &self.privileged_dropped,
            "entries restored without their privileged attributes (trusted.*, security.* such as file \
             capabilities and labels, immutable and append-only flags: only as root, without --no-owner)",
        );
        say(
            &self.locking_linked,
            "files with several names restored without their immutable or append-only flag (the kernel \
             refuses to link such files)",
        );
        say(
            &self.xattrs_skipped,
            "extended attributes not restored: the target's file system does not take them, or they need root \
             (trusted.*, security.*)",
        );
        say(
            &self.flags_skipped,
            "entries restored without their inode flags (chattr): the target's file system does not take them, \
             or they need root (immutable, append-only)",
        );
        say(&self.specials_skipped, "FIFOs, sockets or device nodes not restored (--no-special)");
        let failed = self.attrs_failed.load(Relaxed);
        if let Some((path, why)) = lock(&self.first_attr_failure).as_ref() {
            notes.push(format!(
                "{failed} extended attributes could not be set, the first on {}: {why}",
                path.display()
            ));
        }
        let untracked = lock(&self.linked).untracked;
        if untracked > 0 {
            notes.push(format!(
                "{untracked} files with other names were past what the memory limit tracks: their other \
                 names are restored as copies"
            ));
        }
        notes
    }
}

/// Whether `len` bytes of `f` at `offset` read as zeros: a hole there (`SEEK_DATA` says none
/// of them hold data) or data that is all zeros.
fn zeros(f: &std::fs::File, offset: u64, len: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let end = offset.saturating_add(len);
    let mut pos = offset;
    let mut buf = vec![0u8; 1 << 16];
    while pos < end {
        pos = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => return Ok(true),
            Err(rustix::io::Errno::INVAL) => pos,
            Err(e) => return Err(e.into()),
        };
        if pos >= end {
            break;
        }
        let n = (end - pos).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], pos)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// An entry's mtime in nanoseconds since the epoch.
#[allow(clippy::unnecessary_cast)] // st_mtime is i64 here, narrower on some targets
fn mtime_ns(st: &rustix::fs::Stat) -> i128 {
    ::io::uring::ns(st.st_mtime as i64, st.st_mtime_nsec as i64)
}

/// Test hook (`test-hooks`, debug builds only): spoils the just-written file named by
/// BAKARE_TEST_SPOIL_RESTORED, as a write path that changed its bytes would.
#[cfg(all(feature = "test-hooks", debug_assertions))]
fn spoil_for_test(f: &std::fs::File, name: &[u8]) {
    use std::os::unix::ffi::OsStrExt as _;
    if std::env::var_os("BAKARE_TEST_SPOIL_RESTORED").is_some_and(|v| v.as_bytes() == name) {
        let mut b = [0u8; 1];
        if rustix::io::pread(f, &mut b, 0).is_ok() {
            let _ = rustix::io::pwrite(f, &[b[0] ^ 0x20], 0);
        }
    }
}
