//! Durable, atomic file creation: write to a temporary name, fsync, link into place, fsync the
//! directory. A committed name is never overwritten in place.
#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Creates `dir` and its missing parents with mode 0700 (local state: caches, keys), leaving
/// the mode of directories that already exist alone.
pub fn create_private_dir_all(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// A random temporary name in `dir`, so that concurrent writers (threads or processes on other
/// computers sharing the directory) never collide.
pub fn temp_path(dir: &Path) -> PathBuf {
    let mut bytes = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut bytes);
    let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!(".tmp-{name}"))
}

/// Creates a new temporary file in `dir`, held (an exclusive lock while the handle is open) so
/// that prune never removes it, however old it looks: a writer suspended for days, or a test
/// clock moved ahead. Best effort: where the file system has no locks, the grace period alone
/// protects it.
///
/// A file cannot be created locked, so prune may find it in the moment between: it removes a
/// temporary file only while holding its lock (`remove_unheld`), so a file still at its path once
/// we hold the lock stays ours; one removed in that moment is made again under a new name.
pub fn create_held(dir: &Path) -> io::Result<(File, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    // A prune sweeps a directory now and then; a test's sweeper spins on it without pause
    // (under load, 8 tries in a row were lost to it in CI).
    const TRIES: usize = 64;
    for _ in 0..TRIES {
        let tmp = temp_path(dir);
        let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let locked = loop {
            match f.lock() {
                Ok(()) => break true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // No locks here (some network and FUSE file systems): the grace period alone.
                Err(e)
                    if e.kind() == io::ErrorKind::Unsupported || e.raw_os_error() == Some(libc::ENOLCK) =>
                {
                    break false
                }
                Err(e) => return Err(e),
            }
        };
        if !locked {
            return Ok((f, tmp));
        }
        let (ours, there) = (f.metadata()?, fs::symlink_metadata(&tmp));
        match there {
            Ok(md) if md.dev() == ours.dev() && md.ino() == ours.ino() => return Ok((f, tmp)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{TRIES} temporary files made in {} were removed before they could be locked (a prune removing leftovers?)",
        dir.display()
    )))
}

/// Removes the temporary file at `path` unless another process is writing it (holds its lock);
/// returns whether it is gone. The lock is held while it is removed, so that its writer, locking
/// it just after, finds it gone (see `create_held`). A file that cannot be opened (another
/// user's, on a shared disk) is left alone; one on a file system without locks is not in use
/// (the caller's grace period protects it).
pub fn remove_unheld(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    // Not blocking on a FIFO planted under a temporary name.
    let held =
        match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(_) => return Ok(false),
        };
    match held.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(false),
        Err(fs::TryLockError::Error(e))
            if e.kind() == io::ErrorKind::Unsupported || e.raw_os_error() == Some(libc::ENOLCK) => {}
        Err(fs::TryLockError::Error(_)) => return Ok(false),
    }
    let gone = match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    };
    drop(held);
    gone
}

/// Whether `name` is one `temp_path` makes: `.tmp-` and 24 lowercase hex digits.
pub fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(".tmp-")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Moves the fully written and synced file at `tmp` to `dest` without ever replacing an existing
/// `dest`. Returns `false` when `dest` already existed (names are content hashes or random ids,
/// so an existing object is the same object).
pub fn publish(tmp: &Path, dest: &Path) -> io::Result<bool> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    // link(2) fails with EEXIST instead of replacing: that is the no-overwrite guarantee.
    let created = match fs::hard_link(tmp, dest) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        // File systems without hard links: a rename that never replaces.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP | libc::ENOSYS)) => {
            let created = rename_noreplace(tmp, dest)?;
            if !created {
                fs::remove_file(tmp)?;
            }
            sync_dir(dir)?;
            return Ok(created);
        }
        Err(e) => return Err(e),
    };
    fs::remove_file(tmp)?;
    sync_dir(dir)?;
    Ok(created)
}

/// Renames `tmp` to `dest` unless `dest` exists (`renameat2` with `RENAME_NOREPLACE`); false
/// when it did. Where the file system lacks that flag, checks first: a writer of the same name
/// in between can then be replaced, by the same object (names are content hashes or random ids).
fn rename_noreplace(tmp: &Path, dest: &Path) -> io::Result<bool> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;
    match renameat_with(CWD, tmp, CWD, dest, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if dest.symlink_metadata().is_err() => {
            fs::rename(tmp, dest)?;
            Ok(true)
        }
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Writes `data` to a new temporary file beside `dest`, synced, then hands it to `place`
/// (which moves it to `dest`); the temporary file is removed if anything fails. With `mode`,
/// the file gets it before the first byte is written.
fn write_then<T>(
    dest: &Path,
    data: &[u8],
    mode: Option<u32>,
    place: impl FnOnce(&Path, &Path) -> io::Result<T>,
) -> io::Result<T> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let (mut f, tmp) = create_held(dir)?;
    let result = (|| {
        if let Some(mode) = mode {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        // Held until placed: prune leaves a locked temporary file alone.
        place(&tmp, dest)
    })();
    drop(f);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `data` durably under `dest` (see module doc). Parent directories are created.
pub fn write_atomic(dest: &Path, data: &[u8]) -> io::Result<bool> {
    write_then(dest, data, None, publish)
}

/// Writes `data` durably under `dest`, atomically replacing what was there (rename): only for
/// the few objects that are settings, not content (the repository `config`).
pub fn replace_atomic(dest: &Path, data: &[u8]) -> io::Result<()> {
    write_then(dest, data, None, rename_into_place)
}

/// `replace_atomic` for a file that holds a secret: mode 0600 from before its first byte.
pub fn replace_private(dest: &Path, data: &[u8]) -> io::Result<()> {
    write_then(dest, data, Some(0o600), rename_into_place)
}

fn rename_into_place(tmp: &Path, dest: &Path) -> io::Result<()> {
    fs::rename(tmp, dest)?;
    sync_dir(dest.parent().unwrap_or(Path::new(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_atomic_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        replace_atomic(&p, b"one").unwrap();
        replace_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A remover sweeping every temporary file it finds unheld (prune with its clock far ahead)
    /// beside a writer making them: every file the writer holds stays at its path (before, one
    /// removed between its creation and its lock was lost, and its object with it).
    #[test]
    fn a_held_temporary_file_is_never_removed_under_its_writer() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let done = AtomicBool::new(false);
        let removed = std::thread::scope(|s| {
            let sweeper = s.spawn(|| {
                let mut removed = 0;
                while !done.load(Ordering::Relaxed) {
                    for e in fs::read_dir(dir.path()).unwrap() {
                        removed += usize::from(remove_unheld(&e.unwrap().path()).unwrap());
                    }
                }
                removed
            });
            let writer = (0..3000).try_for_each(|i| {
                let (f, tmp) = create_held(dir.path()).map_err(|e| format!("round {i}: {e}"))?;
                if remove_unheld(&tmp).unwrap() || !tmp.exists() {
                    return Err(format!("round {i}: {} removed while held", tmp.display()));
                }
                drop(f);
                Ok(())
            });
            done.store(true, Ordering::Relaxed);
            let removed = sweeper.join().unwrap();
            writer.unwrap();
            removed
        });
        assert!(removed > 0, "the sweeper removed nothing: the test tested nothing");
    }

    /// The fallback where hard links fail never replaces either.
    #[test]
    fn rename_noreplace_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, dest) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("obj"));
        fs::write(&a, b"first").unwrap();
        fs::write(&b, b"second").unwrap();
        assert!(rename_noreplace(&a, &dest).unwrap());
        assert!(!rename_noreplace(&b, &dest).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        assert!(!a.exists() && b.exists());
    }

    #[test]
    fn write_atomic_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/obj");
        assert!(write_atomic(&p, b"first").unwrap());
        assert!(!write_atomic(&p, b"second").unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        // no temporary files are left behind
        let left: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
