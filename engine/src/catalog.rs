//! The name catalog: a local cache of every name in every snapshot, so `find` answers from one
//! file instead of decrypting thousands of tree blobs per query. It lives outside the repository
//! (`$XDG_CACHE_HOME/bakare/<repository>/catalog-v1`), is only a cache — rebuilt when missing,
//! damaged or from another version — and is never trusted over the repository: snapshots it
//! names that are gone are dropped, snapshots it lacks are added by walking their trees.
//!
//! Names are secret, so the file is sealed (XChaCha20-Poly1305) under a key derived from the
//! secret identity and the writer key: a backup-only key can neither build nor read it.
//!
//! History repeats itself, so nothing is stored once per snapshot:
//! - a *version* is one path with one content (kind, size, mtime, fingerprint of the content
//!   ids). A file unchanged across 30 snapshots is one version, stored once; paths are a table
//!   of (parent, name).
//! - a snapshot's set of versions is a delta (runs of version ids added and removed) against
//!   the previous snapshot of the same source (host and paths): 1 % of changes cost 1 % of the
//!   ids. The first snapshot of a source is runs of ids numbered in walk order: a few runs.
//! - the walk is memoized by (directory path, tree blob ids): trees are content-addressed, so a
//!   directory unchanged since the newest snapshot of its source is not decoded again. The memo
//!   (each directory's own entries and its subdirectories) is kept for that newest snapshot only.
//!
//! Memory: the whole catalog is in memory while `find` runs, so it is held to a budget
//! (`find --mem-limit`, [`DEFAULT_MEM_LIMIT`] without it; see `budget`): a snapshot whose walk
//! would take the catalog past it is left out, with a warning, and walked again next time; a
//! saved catalog too large for it is rebuilt within it.
//!
//! Format: `"BKNAMES1" | repository id [16] | seal(catalog key, "BKNAMES1", postcard(Catalog))`,
//! where seal is XChaCha20-Poly1305 with a random 24-byte nonce (`nonce | ciphertext | tag`).
mod bitmap;
mod budget;
mod build;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

pub use bitmap::{Bitmap, Run};
pub use budget::{Budget, DEFAULT_MEM_LIMIT};

use crate::crypto::Secret32;
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::repo::{BlobReader, Repository, Warnings};
use crate::snapshot::Snapshot;

pub const MAGIC: &[u8; 8] = b"BKNAMES1";
const FILE_NAME: &str = "catalog-v1";
/// The root directory's path id.
pub const ROOT: u32 = 0;
const NO_PARENT: u32 = u32::MAX;
const HEADER: usize = 8 + 16;
const NONCE: usize = 24;

/// One path with one content. Directories are versions by path and mtime (their content is
/// listed as their entries' versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    pub path: u32,
    /// `Node::type_char` as a byte: `-` file, `d` dir, `l` symlink, `h` hard link, ...
    pub kind: u8,
    pub size: u64,
    pub mtime_ns: i64,
    /// BLAKE3 of the content ids (files), the target (symlinks) or the device number: tells
    /// apart two contents of one path with the same size and mtime.
    pub fp: [u8; 8],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapEntry {
    /// The snapshot's object id (64 hex).
    pub id: String,
    pub time_ns: i64,
    pub host: String,
    /// BLAKE3(host, paths): snapshots of one source differ little from one to the next.
    lineage: [u8; 16],
    /// Its versions are those of entry `base` (an earlier one) minus `removed` plus `added`;
    /// without a base, `added`.
    base: Option<u32>,
    added: Vec<Run>,
    removed: Vec<Run>,
    /// False when some of its trees could not be read: it is walked again next time.
    pub complete: bool,
    /// Its root directory in the memo, while it is the newest complete one of its lineage.
    memo_root: Option<u32>,
}

/// A directory as walked: its own entries' versions and its subdirectories (earlier entries).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DirMemo {
    path: u32,
    tree: [u8; 32],
    entries: Vec<Run>,
    children: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    repo_id: [u8; 16],
    /// In the order they were added (a base comes before the entries built on it).
    pub snapshots: Vec<SnapEntry>,
    /// Path table: entry i is `name i` inside directory `parents[i]` (always < i); 0 is `/`.
    parents: Vec<u32>,
    /// End of name i in `names` (name i starts where name i-1 ends).
    name_ends: Vec<u32>,
    names: Vec<u8>,
    pub versions: Vec<Version>,
    /// Children come before their parents, so the memo has no cycles.
    memo: Vec<DirMemo>,
}

/// What opening the catalog did.
#[derive(Debug, Default)]
pub struct Opened {
    /// Snapshots walked and added.
    pub added: usize,
    /// Snapshots dropped (gone from the repository, or to be walked again).
    pub dropped: usize,
    /// Directories decoded from the repository (the others were known from earlier snapshots).
    pub decoded_dirs: u64,
    /// Snapshots left out because the catalog would not fit in its budget with them (each
    /// also has a warning): `find` did not search them.
    pub skipped: usize,
    /// The largest estimate of the catalog's memory while snapshots were added.
    pub peak_estimate: u64,
    pub warnings: Warnings,
}

/// Every full path (`/a/b`) of a catalog, in one buffer.
pub struct FullPaths {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

impl FullPaths {
    pub fn get(&self, path: u32) -> &[u8] {
        let i = path as usize;
        match (self.starts.get(i), self.starts.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.bytes[a..b],
            _ => &[],
        }
    }
}

/// The bytes of `file`, or None when it is larger than `limit` (checked before reading it).
fn read_within(file: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = fs::File::open(file)?;
    if f.metadata()?.len() > limit {
        return Ok(None);
    }
    let mut data = Vec::new();
    // `take`: a file that grew since is read no further than the limit (and then fails
    // authentication).
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut f, limit), &mut data)?;
    Ok(Some(data))
}

/// Where the catalog of repository `repo_id` lives below the cache directory.
pub fn catalog_file(cache_dir: &Path, repo_id: &[u8; 16]) -> PathBuf {
    cache_dir.join(hex::encode(repo_id)).join(FILE_NAME)
}

/// The key that seals the catalog. Derived from the secret identity (and the writer key), not
/// from the writer key alone: a machine with only a backup key must not read names from it.
pub fn catalog_key(key: &Key) -> Result<Secret32> {
    let identity = key.identity()?;
    let secret = identity.to_string();
    let mut h = blake3::Hasher::new_derive_key("bakare 2026-11 name catalog cache");
    h.update(secret.expose_secret().as_bytes());
    h.update(key.writer.as_bytes());
    Ok(Secret32::from_bytes(*h.finalize().as_bytes()))
}

impl SnapEntry {
    pub fn lineage(host: &str, paths: &[Vec<u8>]) -> [u8; 16] {
        let mut h = blake3::Hasher::new();
        h.update(host.as_bytes());
        for p in paths {
            h.update(&(p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let mut l = [0u8; 16];
        l.copy_from_slice(&h.finalize().as_bytes()[..16]);
        l
    }
}

impl Catalog {
    pub fn empty(repo_id: [u8; 16]) -> Catalog {
        Catalog { repo_id, parents: vec![NO_PARENT], name_ends: vec![0], ..Catalog::default() }
    }

    pub fn path_count(&self) -> usize {
        self.parents.len()
    }

    pub fn parent(&self, path: u32) -> Option<u32> {
        self.parents.get(path as usize).copied().filter(|&p| p != NO_PARENT)
    }

    pub fn name(&self, path: u32) -> &[u8] {
        let i = path as usize;
        let start = if i == 0 { 0 } else { self.name_ends.get(i - 1).copied().unwrap_or(0) as usize };
        let end = self.name_ends.get(i).copied().unwrap_or(0) as usize;
        self.names.get(start..end).unwrap_or_default()
    }

    /// Every path in full. Parents come before their children, so one pass builds them all
    /// (in a buffer of exactly their size, which the memory budget counts).
    pub fn full_paths(&self) -> FullPaths {
        let total = usize::try_from(self.full_path_bytes()).unwrap_or(usize::MAX);
        let mut bytes = Vec::with_capacity(total);
        let mut starts = Vec::with_capacity(self.parents.len() + 1);
        for (i, &parent) in self.parents.iter().enumerate() {
            let start = bytes.len();
            starts.push(start);
            if i == ROOT as usize {
                bytes.push(b'/');
                continue;
            }
            if parent != ROOT {
                if let (Some(&a), Some(&b)) = (starts.get(parent as usize), starts.get(parent as usize + 1)) {
                    bytes.extend_from_within(a..b);
                }
            }
            bytes.push(b'/');
            bytes.extend_from_slice(self.name(i as u32));
        }
        starts.push(bytes.len());
        FullPaths { bytes, starts }
    }

    /// The full path of one path id.
    pub fn full_path(&self, path: u32) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut p = Some(path);
        while let Some(i) = p.filter(|&i| i != ROOT) {
            parts.push(self.name(i));
            p = self.parent(i);
        }
        let mut out = Vec::new();
        for name in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(name);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        out
    }

    /// Calls `f(entry index, its versions)` for every snapshot entry, in order. Each set is
    /// built from its base's: a sweep holds one set per lineage, not one per snapshot.
    pub fn for_each_set(&self, mut f: impl FnMut(usize, &Bitmap)) {
        let mut last_use: Vec<usize> = (0..self.snapshots.len()).collect();
        for (i, s) in self.snapshots.iter().enumerate() {
            if let Some(b) = s.base {
                last_use[b as usize] = i;
            }
        }
        let mut alive: HashMap<usize, Bitmap> = HashMap::new();
        for (i, s) in self.snapshots.iter().enumerate() {
            let mut set = match s.base.map(|b| b as usize) {
                Some(b) if last_use[b] == i => alive.remove(&b).unwrap_or_default(),
                Some(b) => alive.get(&b).cloned().unwrap_or_default(),
                None => Bitmap::default(),
            };
            set.remove_runs(&s.removed);
            set.insert_runs(&s.added);
            f(i, &set);
            if last_use[i] > i {
                alive.insert(i, set);
            }
        }
    }

    /// Entry indices, oldest snapshot first (time, then id).
    pub fn by_time(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.snapshots.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&self.snapshots[a], &self.snapshots[b]);
            x.time_ns.cmp(&y.time_ns).then_with(|| x.id.cmp(&y.id))
        });
        order
    }

    pub fn encode(&self, key: &Secret32) -> Result<Vec<u8>> {
        let mut body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut nonce = [0u8; NONCE];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        XChaCha20Poly1305::new(key.as_bytes().into())
            .encrypt_in_place(XNonce::from_slice(&nonce), MAGIC, &mut body)
            .map_err(|_| Error::Pipeline("name catalog too large to seal".into()))?;
        let mut out = Vec::with_capacity(HEADER + NONCE + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.repo_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Authenticates, parses and checks every reference, so a query can index without fear.
    /// Decrypts in place: the file's bytes become the plaintext.
    pub fn decode(key: &Secret32, repo_id: &[u8; 16], name: &str, mut data: Vec<u8>) -> Result<Catalog> {
        let bad = |why: &str| Error::corrupt("name catalog", name, why);
        if data.len() < HEADER + NONCE || &data[..8] != MAGIC {
            return Err(bad("bad magic (damaged, or from another version)"));
        }
        if data[8..HEADER] != repo_id[..] {
            return Err(bad("belongs to another repository"));
        }
        let mut body = data.split_off(HEADER + NONCE);
        XChaCha20Poly1305::new(key.as_bytes().into())
            .decrypt_in_place(XNonce::from_slice(&data[HEADER..]), MAGIC, &mut body)
            .map_err(|_| bad("failed authentication"))?;
        Catalog::from_plain(repo_id, name, &body)
    }

    /// Parses and checks an authenticated catalog body (also a fuzz entry point).
    pub fn from_plain(repo_id: &[u8; 16], name: &str, body: &[u8]) -> Result<Catalog> {
        let bad = |why: &str| Error::corrupt("name catalog", name, why);
        let c: Catalog = postcard::from_bytes(body).map_err(|e| bad(&e.to_string()))?;
        c.check(repo_id).map_err(bad)?;
        Ok(c)
    }

    fn check(&self, repo_id: &[u8; 16]) -> std::result::Result<(), &'static str> {
        if self.repo_id != *repo_id {
            return Err("belongs to another repository");
        }
        let n = self.parents.len();
        if n == 0 || self.name_ends.len() != n || self.parents[0] != NO_PARENT || self.name_ends[0] != 0 {
            return Err("bad path table");
        }
        if n > u32::MAX as usize
            || self.versions.len() > u32::MAX as usize
            || self.memo.len() > u32::MAX as usize
        {
            return Err("too large");
        }
        let parents_ok = self.parents.iter().enumerate().skip(1).all(|(i, &p)| (p as usize) < i);
        let ends_ok = self.name_ends.windows(2).all(|w| w[0] <= w[1])
            && self.name_ends.last().is_some_and(|&e| e as usize <= self.names.len());
        if !parents_ok || !ends_ok {
            return Err("bad path table");
        }
        if !self.versions.iter().all(|v| v.path != ROOT && (v.path as usize) < n) {
            return Err("version of an unknown path");
        }
        let nv = self.versions.len();
        let entry_ok = |(i, s): (usize, &SnapEntry)| {
            s.id.len() == 64
                && s.base.is_none_or(|b| (b as usize) < i)
                && s.memo_root.is_none_or(|m| (m as usize) < self.memo.len())
                && bitmap::valid_runs(&s.added, nv)
                && bitmap::valid_runs(&s.removed, nv)
        };
        if !self.snapshots.iter().enumerate().all(entry_ok) {
            return Err("bad snapshot entry");
        }
        let memo_ok = |(i, m): (usize, &DirMemo)| {
            (m.path as usize) < n
                && bitmap::valid_runs(&m.entries, nv)
                && m.children.iter().all(|&c| (c as usize) < i)
        };
        if !self.memo.iter().enumerate().all(memo_ok) {
            return Err("bad memo entry");
        }
        Ok(())
    }

    /// Loads the catalog of `repo` from `cache_dir` (None: build it in memory only), brings it
    /// up to date with the repository's snapshots within `budget`, and saves it when it
    /// changed.
    pub fn open(repo: &Repository, cache_dir: Option<&Path>, budget: Budget) -> Result<(Catalog, Opened)> {
        let key = catalog_key(&repo.key)?;
        let repo_id = repo.config.repo_id;
        let file = cache_dir.map(|d| catalog_file(d, &repo_id));
        let mut o = Opened::default();
        let mut cat = match file.as_deref().map(|f| (f, read_within(f, budget.query_bytes()))) {
            None => Catalog::empty(repo_id),
            Some((_, Err(e))) if e.kind() == std::io::ErrorKind::NotFound => Catalog::empty(repo_id),
            Some((f, Err(e))) => {
                o.warnings.push(format!("cannot read the name catalog {}: {e}; rebuilding it", f.display()));
                Catalog::empty(repo_id)
            }
            Some((f, Ok(None))) => {
                o.warnings.push(format!(
                    "{} ({}); rebuilding it within the limit",
                    budget.too_small(),
                    f.display()
                ));
                Catalog::empty(repo_id)
            }
            Some((f, Ok(Some(data)))) => {
                match Catalog::decode(&key, &repo_id, &f.display().to_string(), data) {
                    Ok(c) if c.query_peak(c.entries_bytes(), c.full_path_bytes()) <= budget.query_bytes() => {
                        c
                    }
                    Ok(_) => {
                        o.warnings.push(format!(
                            "{} ({}); rebuilding it within the limit",
                            budget.too_small(),
                            f.display()
                        ));
                        Catalog::empty(repo_id)
                    }
                    Err(e) => {
                        o.warnings.push(format!("{e}; rebuilding it"));
                        Catalog::empty(repo_id)
                    }
                }
            }
        };
        cat.sync(repo, &mut o, budget)?;
        if let (true, Some(f)) = (o.added + o.dropped > 0, &file) {
            if let Err(e) = cat.save(&key, f) {
                o.warnings.push(format!("cannot save the name catalog {}: {e}", f.display()));
            }
        }
        Ok((cat, o))
    }

    /// Drops snapshots that are gone (and those whose walk was incomplete: the damage may have
    /// been repaired since), walks the new ones, oldest first; those that do not fit in
    /// `budget` are left out, with a warning.
    pub fn sync(&mut self, repo: &Repository, o: &mut Opened, budget: Budget) -> Result<()> {
        // The snapshots `find` may show: signed by someone trusted (or all, with --trust-all).
        // Reading them all costs an age decryption each (~0.1 ms), and is what notices a
        // writer revoked since the catalog was saved.
        let (entries, warnings) = repo.snapshots()?;
        o.warnings.extend(warnings);
        let present: HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
        o.dropped += build::retain(self, |s| s.complete && present.contains(&s.id));
        let known: HashSet<&str> = self.snapshots.iter().map(|s| s.id.as_str()).collect();
        let mut snaps: Vec<(String, Snapshot)> = entries
            .into_iter()
            .filter(|e| !known.contains(e.id.as_str()))
            .map(|e| (e.id, e.snapshot))
            .collect();
        if snaps.is_empty() {
            return Ok(());
        }
        snaps.sort_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(a.0.cmp(&b.0)));
        let (index, index_warnings) = repo.load_index()?;
        o.warnings.extend(index_warnings);
        let (cache, bytes) = budget.build(index.blob_count());
        let reader = BlobReader::with_cache(repo, &index, cache)?;
        let mut b = build::Builder::new(self, bytes);
        for (id, snap) in snaps {
            let Some(lost) = b.add(&reader, id.clone(), &snap) else {
                o.warnings.push(format!(
                    "snapshot {} not searched: {} (raise --mem-limit)",
                    &id[..16.min(id.len())],
                    budget.too_small()
                ));
                o.skipped += 1;
                continue;
            };
            for (path, e) in &lost {
                o.warnings.push(format!(
                    "snapshot {}: {} cannot be listed: {e}",
                    &id[..16.min(id.len())],
                    String::from_utf8_lossy(&b.full_path(*path))
                ));
            }
            o.added += 1;
        }
        o.decoded_dirs += b.decoded;
        o.peak_estimate = o.peak_estimate.max(b.peak);
        Ok(())
    }

    fn save(&self, key: &Secret32, dest: &Path) -> std::io::Result<()> {
        let data = self.encode(key).map_err(std::io::Error::other)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        ::io::durable::create_private_dir_all(dir)?;
        let tmp = ::io::durable::temp_path(dir);
        let written = (|| {
            // 0600: sealed, but nobody else needs even its size.
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            drop(f);
            // A local cache, not a repository object: replacing it is fine.
            fs::rename(&tmp, dest)?;
            ::io::durable::sync_dir(dir)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

/// A file of a test snapshot: path, size, mtime.
#[cfg(test)]
pub(crate) type TestFile<'a> = (&'a [u8], u64, i64);

/// A catalog from literals: snapshots `(host, time, files)`, oldest first; each one a delta
/// against the one before.
#[cfg(test)]
pub(crate) fn test_catalog(snaps: &[(&str, i64, &[TestFile])]) -> Catalog {
    let mut c = Catalog::empty([1; 16]);
    let mut paths: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut versions: HashMap<Version, u32> = HashMap::new();
    let mut prev: Option<Bitmap> = None;
    for (n, (host, time, files)) in snaps.iter().enumerate() {
        let mut set = Bitmap::default();
        for (path, size, mtime) in files.iter() {
            let mut parent = ROOT;
            let mut at = Vec::new();
            let comps: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
            for (i, comp) in comps.iter().enumerate() {
                at.push(b'/');
                at.extend_from_slice(comp);
                let p = *paths.entry(at.clone()).or_insert_with(|| c.push_path(parent, comp));
                let file = i + 1 == comps.len();
                let v = Version {
                    path: p,
                    kind: if file { b'-' } else { b'd' },
                    size: if file { *size } else { 0 },
                    mtime_ns: if file { *mtime } else { 0 },
                    fp: [0; 8],
                };
                let id = *versions.entry(v).or_insert_with(|| {
                    c.versions.push(v);
                    (c.versions.len() - 1) as u32
                });
                set.insert(id);
                parent = p;
            }
        }
        let (base, added, removed) = match &prev {
            Some(p) => (Some(n as u32 - 1), set.runs_minus(p), p.runs_minus(&set)),
            None => (None, set.runs(), Vec::new()),
        };
        c.snapshots.push(SnapEntry {
            id: hex::encode([n as u8 + 0xa0; 32]),
            time_ns: *time,
            host: host.to_string(),
            lineage: [0; 16],
            base,
            added,
            removed,
            complete: true,
            memo_root: None,
        });
        prev = Some(set);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Catalog {
        let f: &[TestFile] = &[(b"/a/zebra-secret\xff", 1, 5), (b"/a/b", 2, 5)];
        let g: &[TestFile] = &[(b"/a/zebra-secret\xff", 1, 5), (b"/a/c", 3, 5)];
        let mut c = test_catalog(&[("h", 1, f), ("h", 2, g)]);
        c.repo_id = [7; 16];
        c.memo = vec![DirMemo { path: 1, tree: [1; 32], entries: vec![(1, 2)], children: vec![] }];
        c
    }

    fn sets(c: &Catalog) -> Vec<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        c.for_each_set(|_, set| {
            let mut paths: Vec<Vec<u8>> = (0..c.versions.len() as u32)
                .filter(|&v| set.contains(v))
                .map(|v| c.full_path(c.versions[v as usize].path))
                .collect();
            paths.sort();
            out.push(paths);
        });
        out
    }

    #[test]
    fn round_trip_paths_and_sets() {
        let key = Secret32::random();
        let c = sample();
        let data = c.encode(&key).unwrap();
        let d = Catalog::decode(&key, &[7; 16], "c", data.clone()).unwrap();
        assert_eq!(d, c);
        let full = d.full_paths();
        assert_eq!(full.get(0), b"/");
        assert_eq!(full.get(2), b"/a/zebra-secret\xff");
        assert_eq!(d.full_path(2), b"/a/zebra-secret\xff");
        assert_eq!(d.full_path(ROOT), b"/");
        let a: &[u8] = b"/a";
        assert_eq!(
            sets(&d),
            vec![
                vec![a.to_vec(), b"/a/b".to_vec(), b"/a/zebra-secret\xff".to_vec()],
                vec![a.to_vec(), b"/a/c".to_vec(), b"/a/zebra-secret\xff".to_vec()]
            ]
        );
        assert!(Catalog::decode(&key, &[8; 16], "c", data.clone()).is_err(), "another repository");
        assert!(Catalog::decode(&Secret32::random(), &[7; 16], "c", data.clone()).is_err(), "another key");
        // names are not in the file in plain text
        assert!(!data.windows(5).any(|w| w == b"zebra"));
    }

    #[test]
    fn checks_every_reference() {
        let ok = sample();
        ok.check(&[7; 16]).unwrap();
        let broken: [fn(&mut Catalog); 8] = [
            |c| c.versions[0].path = 99,
            |c| c.snapshots[0].added = vec![(0, 99)],
            |c| c.snapshots[0].base = Some(0),
            |c| c.snapshots[1].memo_root = Some(5),
            |c| c.parents[2] = 2,
            |c| c.name_ends[2] = 1000,
            |c| c.memo[0].children = vec![0],
            |c| c.repo_id = [0; 16],
        ];
        for (i, f) in broken.iter().enumerate() {
            let mut c = ok.clone();
            f(&mut c);
            assert!(c.check(&[7; 16]).is_err(), "case {i}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let key = Secret32::from_bytes([3; 32]);
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&[7; 16]);
            d.extend_from_slice(&g);
            prop_assert!(Catalog::decode(&key, &[7; 16], "c", d).is_err());
            prop_assert!(Catalog::decode(&key, &[7; 16], "c", g.clone()).is_err());
            // authentic bytes that are not a catalog
            let mut sealed = MAGIC.to_vec();
            sealed.extend_from_slice(&[7; 16]);
            sealed.extend_from_slice(&crate::crypto::seal_catalog(&key, MAGIC, &g));
            let _ = Catalog::decode(&key, &[7; 16], "c", sealed);
        }

        #[test]
        fn damage_is_refused(at in 0usize..10_000, bit in 0u8..8) {
            let key = Secret32::from_bytes([3; 32]);
            let mut data = sample().encode(&key).unwrap();
            let i = at % data.len();
            data[i] ^= 1 << bit;
            prop_assert!(Catalog::decode(&key, &[7; 16], "c", data).is_err());
        }
    }
}
