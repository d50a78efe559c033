//! Storage: one trait with its contract, and the local-directory backend.
//!
//! # Contract (every backend must keep it)
//! - Keys are relative, `/`-separated, ASCII (`packs/ab/ab12…`, `snapshots/…`).
//! - Objects are immutable. `put` and `Staged::commit` are atomic (readers see the whole object or
//!   nothing) and durable when they return. They never replace an existing object: storing a key
//!   that exists is a successful no-op, which is safe because names are content hashes or random ids.
//! - `get` of a missing key is `StorageError::NotFound`, distinct from other failures.
//! - `list` returns the keys under a directory prefix in no particular order; objects being
//!   written (temporary names) are never listed.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::durable;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object {key}: {source}")]
    Io {
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("invalid object key {key:?}")]
    BadKey { key: String },
    /// A storage location that cannot be used as given (a bad URL, no credentials).
    #[error("{0}")]
    Setup(String),
    /// A remote store failed after its retries (or refused the request).
    #[error("object {key}: {why}")]
    Remote { key: String, why: String },
}

impl StorageError {
    pub fn io(key: &str, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            StorageError::NotFound { key: key.to_string() }
        } else {
            StorageError::Io { key: key.to_string(), source }
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// A large object being written piece by piece (a pack), committed under a name known only at
/// the end (the hash of its bytes). Dropping it without `commit` discards it.
pub trait Staged: Write + Send {
    fn commit(self: Box<Self>, key: &str) -> Result<()>;
}

pub trait Backend: Send + Sync {
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    fn stage(&self) -> Result<Box<dyn Staged>>;
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// `get_range` into `buf` (replacing its contents), so a reader can reuse one buffer.
    fn get_range_into(&self, key: &str, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        *buf = self.get_range(key, offset, len)?;
        Ok(())
    }
    fn size(&self, key: &str) -> Result<u64>;
    fn list(&self, dir: &str) -> Result<Vec<String>>;
    /// Removes an object; removing one that is already gone succeeds (several processes may
    /// clean up the same leftover). Only the owner's commands (prune, forget, repair) delete:
    /// a backup must work with credentials that cannot.
    fn delete(&self, key: &str) -> Result<()>;
    /// Atomically replaces a settings object (only `config`): readers see the old or the new
    /// bytes, never a mix.
    fn replace(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Whether every request costs a network round trip: readers then fetch larger ranges and
    /// keep them, rather than one request per blob.
    fn remote(&self) -> bool {
        false
    }
    fn exists(&self, key: &str) -> Result<bool> {
        match self.size(key) {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// Temporary files that writers killed mid-write left behind (never listed by `list`).
    /// Only local storage has them: an S3 object is all there or not at all.
    fn leftovers(&self) -> Result<Vec<Leftover>> {
        Ok(Vec::new())
    }
    /// Removes a leftover `leftovers` listed, unless a writer is still writing it (false);
    /// one already gone is fine.
    fn remove_leftover(&self, _name: &str) -> Result<bool> {
        Ok(false)
    }
}

/// A temporary file left by an interrupted write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    /// Its path below the repository (`tmp/.tmp-…`, `index/.tmp-…`).
    pub name: String,
    pub size: u64,
    /// Last modified, in ns since the epoch.
    pub modified_ns: i64,
}

/// The directories of a repository, besides `packs/`'s fan-out.
const REPO_DIRS: [&str; 9] =
    ["packs", "index", "snapshots", "pending", "abandoned", "gc", "writers", "roster", "tmp"];

/// Whether `key` names an object of a repository kept in a directory (locally, or by `bakare
/// serve`): no empty, `.` or `..` segments, no temporary names, printable ASCII.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && !part.starts_with(".tmp-")
                && part.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if valid_key(key) {
            Ok(self.root.join(key))
        } else {
            Err(StorageError::BadKey { key: key.to_string() })
        }
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The subdirectories of `dir` (not followed through links).
    fn list_dirs(&self, dir: &str) -> Result<Vec<String>> {
        let rd = match fs::read_dir(self.root.join(dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io(dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| StorageError::io(dir, e))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

struct LocalStaged {
    file: Option<File>,
    tmp: PathBuf,
    root: PathBuf,
}

impl Write for LocalStaged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("staged object already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Staged for LocalStaged {
    fn commit(mut self: Box<Self>, key: &str) -> Result<()> {
        let dest = LocalBackend::new(self.root.clone()).path(key)?;
        let file =
            self.file.take().ok_or_else(|| StorageError::io(key, io::Error::other("committed twice")))?;
        let dir = dest.parent().unwrap_or(&self.root);
        // Held (locked) until published: prune leaves a locked temporary file alone.
        let published = file
            .sync_all()
            .and_then(|()| fs::create_dir_all(dir))
            .and_then(|()| durable::publish(&self.tmp, &dest));
        if published.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        drop(file);
        published.map(|_| ()).map_err(|e| StorageError::io(key, e))
    }
}

impl Drop for LocalStaged {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Backend for LocalBackend {
    fn leftovers(&self) -> Result<Vec<Leftover>> {
        let mut out = Vec::new();
        // Only the repository's own directories (and its top level, where `config` is
        // written), and only names `durable::temp_path` makes: a directory made a repository
        // with `init --force` may hold a user's own `.tmp-something`.
        let mut dirs: Vec<String> = vec![String::new()];
        dirs.extend(REPO_DIRS.iter().map(|d| d.to_string()));
        for fan in self.list_dirs("packs")? {
            dirs.push(format!("packs/{fan}"));
        }
        for prefix in dirs {
            let dir = if prefix.is_empty() { self.root.clone() } else { self.root.join(&prefix) };
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(&prefix, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| StorageError::io(&prefix, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if !durable::is_temp_name(&name) {
                    continue;
                }
                let key = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
                // Not followed: a symlink is never a leftover of ours.
                let md = match entry.path().symlink_metadata() {
                    Ok(md) => md,
                    // Published (or removed) by its writer since the listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io(&key, e)),
                };
                if !md.file_type().is_file() {
                    continue;
                }
                let modified_ns = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
                out.push(Leftover { name: key, size: md.len(), modified_ns });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove_leftover(&self, name: &str) -> Result<bool> {
        let bad = || StorageError::BadKey { key: name.to_string() };
        let (dir, file) = name.rsplit_once('/').unwrap_or(("", name));
        let known = dir.is_empty()
            || REPO_DIRS.contains(&dir)
            || dir
                .strip_prefix("packs/")
                .is_some_and(|f| f.len() == 2 && f.bytes().all(|b| b.is_ascii_hexdigit()));
        if !known || !durable::is_temp_name(file) {
            return Err(bad());
        }
        // The directories on the way must be the repository's own, not links elsewhere.
        let mut at = self.root.clone();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            at.push(part);
            match at.symlink_metadata() {
                Ok(md) if md.file_type().is_dir() => {}
                Ok(_) => return Err(bad()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(StorageError::io(name, e)),
            }
        }
        durable::remove_unheld(&self.root.join(name)).map_err(|e| StorageError::io(name, e))
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(key)?;
        durable::write_atomic(&dest, data).map_err(|e| StorageError::io(key, e))?;
        Ok(())
    }

    fn stage(&self) -> Result<Box<dyn Staged>> {
        let dir = self.tmp_dir();
        fs::create_dir_all(&dir).map_err(|e| StorageError::io("tmp", e))?;
        let (file, tmp) = durable::create_held(&dir).map_err(|e| StorageError::io("tmp", e))?;
        Ok(Box::new(LocalStaged { file: Some(file), tmp, root: self.root.clone() }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        fs::read(self.path(key)?).map_err(|e| StorageError::io(key, e))
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(key, offset, len, &mut buf)?;
        Ok(buf)
    }

    fn get_range_into(&self, key: &str, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        let mut f = File::open(self.path(key)?).map_err(|e| StorageError::io(key, e))?;
        f.seek(SeekFrom::Start(offset)).map_err(|e| StorageError::io(key, e))?;
        buf.clear();
        buf.reserve(len);
        // Reads into the spare capacity: a reused buffer is not zeroed first.
        f.take(len as u64).read_to_end(buf).map_err(|e| StorageError::io(key, e))?;
        if buf.len() != len {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "object shorter than expected");
            return Err(StorageError::Io { key: key.to_string(), source: e });
        }
        Ok(())
    }

    fn size(&self, key: &str) -> Result<u64> {
        fs::metadata(self.path(key)?).map(|m| m.len()).map_err(|e| StorageError::io(key, e))
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let base = self.path(dir)?;
        let mut out = Vec::new();
        let mut stack = vec![(base, dir.to_string())];
        while let Some((path, key)) = stack.pop() {
            let rd = match fs::read_dir(&path) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(&key, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| StorageError::io(&key, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if name.starts_with(".tmp-") {
                    continue;
                }
                let child = format!("{key}/{name}");
                let ft = entry.file_type().map_err(|e| StorageError::io(&child, e))?;
                if ft.is_dir() {
                    stack.push((entry.path(), child));
                } else if ft.is_file() {
                    out.push(child);
                }
            }
        }
        Ok(out)
    }

    fn replace(&self, key: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(key)?;
        durable::replace_atomic(&dest, data).map_err(|e| StorageError::io(key, e))
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io(key, e)),
        }
        if let Some(dir) = p.parent() {
            durable::sync_dir(dir).map_err(|e| StorageError::io(key, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack being written is a temporary file prune must not remove, however old it looks:
    /// its writer holds it locked until it is published. Once its writer is gone (killed), the
    /// same file is a leftover to remove. Names and places not of our making are never listed.
    #[test]
    fn leftovers_in_use_are_kept_and_others_removed() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let mut staged = b.stage().unwrap();
        staged.write_all(b"part of a pack").unwrap();
        let left = b.leftovers().unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].name.starts_with("tmp/.tmp-") && left[0].size == 14, "{left:?}");
        assert!(!b.remove_leftover(&left[0].name).unwrap(), "removed while being written");
        staged.commit("packs/ab/abcd").unwrap();
        assert_eq!(b.get("packs/ab/abcd").unwrap(), b"part of a pack");
        assert!(b.leftovers().unwrap().is_empty());
        // A leftover nobody holds (its writer was killed) goes.
        fs::create_dir_all(dir.path().join("index")).unwrap();
        fs::write(dir.path().join("index/.tmp-0123456789abcdef01234567"), b"x").unwrap();
        fs::write(dir.path().join("index/.tmp-mine"), b"x").unwrap();
        let left = b.leftovers().unwrap();
        assert_eq!(
            left.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["index/.tmp-0123456789abcdef01234567"]
        );
        assert!(b.remove_leftover(&left[0].name).unwrap());
        assert!(b.leftovers().unwrap().is_empty() && dir.path().join("index/.tmp-mine").exists());
        for bad in
            ["../.tmp-0123456789abcdef01234567", "photos/.tmp-0123456789abcdef01234567", "index/config"]
        {
            assert!(b.remove_leftover(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_backend_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put("snapshots/abc", b"hello").unwrap();
        assert_eq!(b.get("snapshots/abc").unwrap(), b"hello");
        assert_eq!(b.get_range("snapshots/abc", 1, 3).unwrap(), b"ell");
        assert!(b.get_range("snapshots/abc", 3, 5).is_err());
        let mut s = b.stage().unwrap();
        s.write_all(b"pack bytes").unwrap();
        s.commit("packs/ab/abcd").unwrap();
        let mut keys = b.list("packs").unwrap();
        keys.sort();
        assert_eq!(keys, vec!["packs/ab/abcd".to_string()]);
        assert!(matches!(b.get("packs/zz"), Err(StorageError::NotFound { .. })));
        assert!(matches!(b.get("../etc/passwd"), Err(StorageError::BadKey { .. })));
        b.delete("packs/ab/abcd").unwrap();
        assert!(!b.exists("packs/ab/abcd").unwrap());
    }

    #[test]
    fn dropped_stage_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let mut s = b.stage().unwrap();
        s.write_all(b"partial").unwrap();
        drop(s);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
