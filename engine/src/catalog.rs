//! The name catalog: a local cache of every name in every snapshot, so `find` answers from one
//! file instead of decrypting thousands of tree blobs per query. It lives outside the repository
//! (`$XDG_CACHE_HOME/bakare/<repository>/catalog-v1`), is only a cache — rebuilt when missing,
//! damaged or from another version — and is never trusted over the repository: snapshots it
//! names that are gone are dropped, snapshots it lacks are added by walking their trees.
//!
//! Names are secret, so the file is sealed (XChaCha20-Poly1305) under a key derived from the
//! secret identity and the writer key: a backup-only key can neither build nor read it.
//!
//! Deduplicated twice over, because history repeats itself:
//! - a *version* is one path with one content (kind, size, mtime, fingerprint of the content
//!   ids). A file unchanged across 30 snapshots is one version, stored once.
//! - a snapshot is a list of runs of version ids. Versions are numbered in walk order, so an
//!   unchanged tree is one long run; 300,000 files with 1 % changed cost a few thousand runs.
//! - the walk is memoized by (directory path, tree blob ids): trees are content-addressed, so a
//!   subdirectory that did not change between snapshots is decoded once, and later snapshots
//!   reuse its runs.
//!
//! Format: `"BKNAMES1" | repository id [16] | seal(catalog key, "BKNAMES1", postcard(Stored))`.
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use stages::BlobId;

use crate::crypto::{open_catalog, seal_catalog, Secret32};
use crate::error::{Error, Result};
use crate::keys::Key;
use crate::repo::{BlobReader, Repository, Warnings};
use crate::snapshot::Snapshot;
use crate::tree::{Node, NodeKind};

pub const MAGIC: &[u8; 8] = b"BKNAMES1";
const FILE_NAME: &str = "catalog-v1";
/// The root directory's path id.
pub const ROOT: u32 = 0;
const NO_PARENT: u32 = u32::MAX;

/// A half-open range `[start, end)` of version ids.
pub type Run = (u32, u32);

/// One path with one content. Directories are versions by path and mtime (their content is
/// listed as their entries' versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    pub path: u32,
    /// `Node::type_char` as a byte: `-` file, `d` dir, `l` symlink, `h` hard link, ...
    pub kind: u8,
    pub size: u64,
    pub mtime_ns: i64,
    /// BLAKE3 of the content ids (files), the target (symlinks) or the device number.
    pub fp: [u8; 16],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapEntry {
    /// The snapshot's object id (64 hex).
    pub id: String,
    pub time_ns: i64,
    pub host: String,
    /// The versions it holds: sorted, disjoint, non-adjacent runs.
    pub runs: Vec<Run>,
    /// False when some of its trees could not be read: it is walked again next time.
    pub complete: bool,
}

impl SnapEntry {
    pub fn contains(&self, v: u32) -> bool {
        let i = self.runs.partition_point(|r| r.1 <= v);
        self.runs.get(i).is_some_and(|r| r.0 <= v)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Memo {
    path: u32,
    tree: [u8; 32],
    runs: Vec<Run>,
}

/// What is stored, and what a query reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    repo_id: [u8; 16],
    /// Oldest first (time, then id).
    pub snapshots: Vec<SnapEntry>,
    /// Path table: entry i is `name i` inside directory `parents[i]` (always < i); 0 is `/`.
    parents: Vec<u32>,
    /// End of name i in `names` (name i starts where name i-1 ends).
    name_ends: Vec<u32>,
    names: Vec<u8>,
    pub versions: Vec<Version>,
    memo: Vec<Memo>,
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
    pub warnings: Warnings,
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

/// The key under which a directory's contents are memoized: its one tree blob id, or the hash
/// of its several ones.
fn tree_key(ids: &[BlobId]) -> [u8; 32] {
    match ids {
        [one] => *one,
        many => {
            let mut h = blake3::Hasher::new();
            h.update(b"bakare tree list");
            for id in many {
                h.update(id);
            }
            *h.finalize().as_bytes()
        }
    }
}

fn fingerprint(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&h.finalize().as_bytes()[..16]);
    fp
}

fn version_of(path: u32, n: &Node) -> Version {
    let (size, fp) = match &n.kind {
        NodeKind::File { size, content } | NodeKind::HardLink { size, content, .. } => {
            let ids: Vec<&[u8]> = content.iter().map(|c| &c[..]).collect();
            (*size, fingerprint(&ids))
        }
        NodeKind::Symlink { target } => (0, fingerprint(&[target])),
        NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev } => (0, fingerprint(&[&rdev.to_le_bytes()])),
        NodeKind::Dir { .. } | NodeKind::Fifo | NodeKind::Socket => (0, [0; 16]),
    };
    Version { path, kind: n.type_char() as u8, size, mtime_ns: n.mtime_ns, fp }
}

/// Sorts and merges runs into disjoint, non-adjacent ones.
fn normalize(mut runs: Vec<Run>) -> Vec<Run> {
    runs.sort_unstable();
    let mut out: Vec<Run> = Vec::with_capacity(runs.len().min(64));
    for r in runs {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

fn valid_runs(runs: &[Run], limit: usize) -> bool {
    runs.iter().all(|r| r.0 < r.1 && r.1 as usize <= limit) && runs.windows(2).all(|w| w[0].1 < w[1].0)
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

    /// Every path in full (`/a/b`), indexed by path id. Parents come before their children, so
    /// one pass builds them all.
    pub fn full_paths(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::with_capacity(self.parents.len());
        for (i, &parent) in self.parents.iter().enumerate() {
            if i == ROOT as usize {
                out.push(b"/".to_vec());
                continue;
            }
            let mut p = match out.get(parent as usize) {
                Some(base) if parent != ROOT => base.clone(),
                _ => Vec::new(),
            };
            p.push(b'/');
            p.extend_from_slice(self.name(i as u32));
            out.push(p);
        }
        out
    }

    pub fn encode(&self, key: &Secret32) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.repo_id);
        out.extend_from_slice(&seal_catalog(key, MAGIC, &body));
        Ok(out)
    }

    /// Authenticates, parses and checks every reference, so a query can index without fear.
    pub fn decode(key: &Secret32, repo_id: &[u8; 16], name: &str, data: &[u8]) -> Result<Catalog> {
        let bad = |why: &str| Error::corrupt("name catalog", name, why);
        if data.len() < 24 || &data[..8] != MAGIC {
            return Err(bad("bad magic (damaged, or from another version)"));
        }
        if data[8..24] != repo_id[..] {
            return Err(bad("belongs to another repository"));
        }
        let body = open_catalog(key, MAGIC, &data[24..]).ok_or_else(|| bad("failed authentication"))?;
        let c: Catalog = postcard::from_bytes(&body).map_err(|e| bad(&e.to_string()))?;
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
        if n > u32::MAX as usize || self.versions.len() > u32::MAX as usize {
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
        if !self.snapshots.iter().all(|s| valid_runs(&s.runs, nv) && s.id.len() == 64) {
            return Err("bad snapshot entry");
        }
        if !self.memo.iter().all(|m| (m.path as usize) < n && valid_runs(&m.runs, nv)) {
            return Err("bad memo entry");
        }
        Ok(())
    }

    /// Loads the catalog of `repo` from `cache_dir` (None: build it in memory only), brings it
    /// up to date with the repository's snapshots, and saves it when it changed.
    pub fn open(repo: &Repository, cache_dir: Option<&Path>) -> Result<(Catalog, Opened)> {
        let key = catalog_key(&repo.key)?;
        let repo_id = repo.config.repo_id;
        let file = cache_dir.map(|d| catalog_file(d, &repo_id));
        let mut o = Opened::default();
        let mut cat = match file.as_deref().map(|f| (f, fs::read(f))) {
            None => Catalog::empty(repo_id),
            Some((_, Err(e))) if e.kind() == std::io::ErrorKind::NotFound => Catalog::empty(repo_id),
            Some((f, Err(e))) => {
                o.warnings.push(format!("cannot read the name catalog {}: {e}; rebuilding it", f.display()));
                Catalog::empty(repo_id)
            }
            Some((f, Ok(data))) => Catalog::decode(&key, &repo_id, &f.display().to_string(), &data)
                .unwrap_or_else(|e| {
                    o.warnings.push(format!("{e}; rebuilding it"));
                    Catalog::empty(repo_id)
                }),
        };
        cat.sync(repo, &mut o)?;
        if let (true, Some(f)) = (o.added + o.dropped > 0, &file) {
            if let Err(e) = cat.save(&key, f) {
                o.warnings.push(format!("cannot save the name catalog {}: {e}", f.display()));
            }
        }
        Ok((cat, o))
    }

    /// Drops snapshots that are gone (and those whose walk was incomplete: the damage may have
    /// been repaired since), walks the new ones.
    pub fn sync(&mut self, repo: &Repository, o: &mut Opened) -> Result<()> {
        let present: HashSet<String> = repo
            .backend
            .list("snapshots")?
            .into_iter()
            .map(|n| n.trim_start_matches("snapshots/").to_string())
            .collect();
        let before = self.snapshots.len();
        self.snapshots.retain(|s| s.complete && present.contains(&s.id));
        o.dropped += before - self.snapshots.len();
        if o.dropped > 0 {
            self.compact();
        }
        let known: HashSet<&str> = self.snapshots.iter().map(|s| s.id.as_str()).collect();
        let mut new: Vec<&String> = present.iter().filter(|id| !known.contains(id.as_str())).collect();
        new.sort();
        if new.is_empty() {
            return Ok(());
        }
        let identity = repo.key.identity()?;
        let (index, index_warnings) = repo.load_index()?;
        o.warnings.extend(index_warnings);
        let reader = BlobReader::new(repo, &index)?;
        let mut b = Builder::new(self);
        for id in new {
            let name = format!("snapshots/{id}");
            let got = repo.backend.get(&name).map_err(Error::from);
            let snap = match got.and_then(|d| Snapshot::decode(identity, &name, &d)) {
                Ok(s) => s,
                Err(e) => {
                    o.warnings.push(e.to_string());
                    continue;
                }
            };
            let mut lost = Vec::new();
            let runs = b.walk(&reader, &snap.tree, &mut lost);
            for (path, e) in &lost {
                o.warnings.push(format!(
                    "snapshot {}: {} cannot be listed: {e}",
                    &id[..16.min(id.len())],
                    String::from_utf8_lossy(&b.cat.full_path(*path))
                ));
            }
            let complete = lost.is_empty();
            b.cat.snapshots.push(SnapEntry {
                id: id.clone(),
                time_ns: snap.time_ns,
                host: snap.host,
                runs,
                complete,
            });
            o.added += 1;
        }
        o.decoded_dirs += b.decoded;
        b.finish();
        self.snapshots.sort_by(|a, b| a.time_ns.cmp(&b.time_ns).then(a.id.cmp(&b.id)));
        Ok(())
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

    /// Drops versions no snapshot holds any more, and the memo entries that mention them (a
    /// subtree with a dead version is in no remaining snapshot). Numbering stays monotonic, so
    /// runs stay runs.
    fn compact(&mut self) {
        let n = self.versions.len();
        let mut live = vec![false; n];
        for s in &self.snapshots {
            for &(a, b) in &s.runs {
                live[a as usize..b as usize].iter_mut().for_each(|x| *x = true);
            }
        }
        // live_before[i] = live versions below i: the new id of a live version i.
        let mut live_before = Vec::with_capacity(n + 1);
        let mut count = 0u32;
        for &l in &live {
            live_before.push(count);
            count += u32::from(l);
        }
        live_before.push(count);
        if count as usize == n {
            return;
        }
        let remap = |r: &Run| (live_before[r.0 as usize], live_before[r.1 as usize]);
        let all_live = |r: &Run| live_before[r.1 as usize] - live_before[r.0 as usize] == r.1 - r.0;
        for s in &mut self.snapshots {
            s.runs = normalize(s.runs.iter().map(remap).collect());
        }
        self.memo.retain(|m| m.runs.iter().all(all_live));
        for m in &mut self.memo {
            m.runs = normalize(m.runs.iter().map(remap).collect());
        }
        let mut i = 0;
        self.versions.retain(|_| {
            i += 1;
            live[i - 1]
        });
    }

    fn save(&self, key: &Secret32, dest: &Path) -> std::io::Result<()> {
        let data = self.encode(key).map_err(std::io::Error::other)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = ::io::durable::temp_path(dir);
        let written = (|| {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
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

/// The maps that adding snapshots needs (and queries do not): built from the loaded catalog,
/// dropped when the new snapshots are in.
struct Builder<'c> {
    cat: &'c mut Catalog,
    hasher: std::collections::hash_map::RandomState,
    /// (parent, hash of name) -> path; a name whose hash collides goes to `collided`.
    paths: HashMap<(u32, u64), u32>,
    collided: HashMap<(u32, Vec<u8>), u32>,
    versions: HashMap<Version, u32>,
    memo: HashMap<(u32, [u8; 32]), Vec<Run>>,
    decoded: u64,
}

/// A directory being walked: its own entries' versions and its subdirectories to visit.
struct Frame {
    path: u32,
    key: [u8; 32],
    runs: Vec<Run>,
    children: std::vec::IntoIter<(u32, Vec<BlobId>)>,
    /// Something below could not be read: not memoized.
    damaged: bool,
}

impl<'c> Builder<'c> {
    fn new(cat: &'c mut Catalog) -> Self {
        let mut b = Builder {
            hasher: std::collections::hash_map::RandomState::new(),
            paths: HashMap::with_capacity(cat.parents.len()),
            collided: HashMap::new(),
            versions: HashMap::with_capacity(cat.versions.len()),
            memo: std::mem::take(&mut cat.memo).into_iter().map(|m| ((m.path, m.tree), m.runs)).collect(),
            cat,
            decoded: 0,
        };
        for i in 1..b.cat.parents.len() as u32 {
            let name = b.cat.name(i);
            let key = (b.cat.parents[i as usize], std::hash::BuildHasher::hash_one(&b.hasher, name));
            match b.paths.entry(key) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
                // Two names with one hash: the second is kept exactly.
                std::collections::hash_map::Entry::Occupied(_) => {
                    b.collided.insert((key.0, name.to_vec()), i);
                }
            }
        }
        for (i, v) in b.cat.versions.iter().enumerate() {
            b.versions.insert(*v, i as u32);
        }
        b
    }

    fn hash(&self, name: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, name)
    }

    fn path(&mut self, parent: u32, name: &[u8]) -> u32 {
        let key = (parent, self.hash(name));
        match self.paths.get(&key) {
            Some(&id) if self.cat.name(id) == name => id,
            Some(_) => {
                if let Some(&id) = self.collided.get(&(parent, name.to_vec())) {
                    return id;
                }
                let id = self.cat.push_path(parent, name);
                self.collided.insert((parent, name.to_vec()), id);
                id
            }
            None => {
                let id = self.cat.push_path(parent, name);
                self.paths.insert(key, id);
                id
            }
        }
    }

    fn version(&mut self, v: Version) -> u32 {
        *self.versions.entry(v).or_insert_with(|| {
            self.cat.versions.push(v);
            (self.cat.versions.len() - 1) as u32
        })
    }

    /// Decodes one directory, numbering its entries' versions.
    fn open_dir(
        &mut self,
        reader: &BlobReader,
        path: u32,
        ids: &[BlobId],
        lost: &mut Vec<(u32, Error)>,
    ) -> Frame {
        let mut f = Frame {
            path,
            key: tree_key(ids),
            runs: Vec::new(),
            children: Vec::new().into_iter(),
            damaged: false,
        };
        self.decoded += 1;
        match reader.tree(ids) {
            Err(e) => {
                lost.push((path, e));
                f.damaged = true;
            }
            Ok(nodes) => {
                let mut children = Vec::new();
                f.runs.reserve(nodes.len());
                for n in nodes {
                    let p = self.path(path, &n.name);
                    let v = self.version(version_of(p, &n));
                    f.runs.push((v, v + 1));
                    if let NodeKind::Dir { subtree } = n.kind {
                        children.push((p, subtree));
                    }
                }
                f.children = children.into_iter();
            }
        }
        f
    }

    /// The runs of versions below the root tree `root`. Depth first with an explicit stack
    /// (memory grows with depth, not width); a directory already walked at the same path with
    /// the same tree ids is not decoded again.
    fn walk(&mut self, reader: &BlobReader, root: &[BlobId], lost: &mut Vec<(u32, Error)>) -> Vec<Run> {
        if let Some(r) = self.memo.get(&(ROOT, tree_key(root))) {
            return r.clone();
        }
        let mut stack = vec![self.open_dir(reader, ROOT, root, lost)];
        loop {
            let Some(top) = stack.last_mut() else { return Vec::new() };
            if let Some((path, subtree)) = top.children.next() {
                match self.memo.get(&(path, tree_key(&subtree))) {
                    Some(r) => top.runs.extend_from_slice(r),
                    None => {
                        let f = self.open_dir(reader, path, &subtree, lost);
                        stack.push(f);
                    }
                }
                continue;
            }
            let Some(done) = stack.pop() else { return Vec::new() };
            let runs = normalize(done.runs);
            if !done.damaged {
                self.memo.insert((done.path, done.key), runs.clone());
            }
            match stack.last_mut() {
                Some(parent) => {
                    parent.runs.extend_from_slice(&runs);
                    parent.damaged |= done.damaged;
                }
                None => return runs,
            }
        }
    }

    fn finish(self) {
        let mut memo: Vec<Memo> =
            self.memo.into_iter().map(|((path, tree), runs)| Memo { path, tree, runs }).collect();
        memo.sort_unstable_by_key(|m| (m.path, m.tree));
        self.cat.memo = memo;
    }
}

impl Catalog {
    pub(crate) fn push_path(&mut self, parent: u32, name: &[u8]) -> u32 {
        self.names.extend_from_slice(name);
        self.parents.push(parent);
        self.name_ends.push(self.names.len() as u32);
        (self.parents.len() - 1) as u32
    }
}

/// A file of a test snapshot: path, size, mtime.
#[cfg(test)]
pub(crate) type TestFile<'a> = (&'a [u8], u64, i64);

/// A catalog from literals: snapshots `(host, time, files)`, oldest first.
#[cfg(test)]
pub(crate) fn test_catalog(snaps: &[(&str, i64, &[TestFile])]) -> Catalog {
    let mut c = Catalog::empty([1; 16]);
    let mut paths: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut versions: HashMap<Version, u32> = HashMap::new();
    for (n, (host, time, files)) in snaps.iter().enumerate() {
        let mut runs = Vec::new();
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
                    fp: [0; 16],
                };
                let id = *versions.entry(v).or_insert_with(|| {
                    c.versions.push(v);
                    (c.versions.len() - 1) as u32
                });
                runs.push((id, id + 1));
                parent = p;
            }
        }
        let id = hex::encode([n as u8 + 0xa0; 32]);
        c.snapshots.push(SnapEntry {
            id,
            time_ns: *time,
            host: host.to_string(),
            runs: normalize(runs),
            complete: true,
        });
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Catalog {
        let mut c = Catalog::empty([7; 16]);
        let a = c.push_path(ROOT, b"a");
        let b = c.push_path(a, b"zebra-secret\xff");
        let v = |path, size| Version { path, kind: b'-', size, mtime_ns: 5, fp: [size as u8; 16] };
        c.versions = vec![v(a, 0), v(b, 1), v(b, 2)];
        let snap = |n: u8, runs| SnapEntry {
            id: hex::encode([n; 32]),
            time_ns: n.into(),
            host: "h".into(),
            runs,
            complete: true,
        };
        c.snapshots = vec![snap(1, vec![(0, 2)]), snap(2, vec![(0, 1), (2, 3)])];
        c.memo = vec![Memo { path: a, tree: [1; 32], runs: vec![(1, 2)] }];
        c
    }

    #[test]
    fn round_trip_paths_and_runs() {
        let key = Secret32::random();
        let c = sample();
        let data = c.encode(&key).unwrap();
        let d = Catalog::decode(&key, &[7; 16], "c", &data).unwrap();
        assert_eq!(d, c);
        assert_eq!(d.full_paths(), vec![b"/".to_vec(), b"/a".to_vec(), b"/a/zebra-secret\xff".to_vec()]);
        assert_eq!(d.full_path(2), b"/a/zebra-secret\xff");
        assert_eq!(d.full_path(ROOT), b"/");
        assert!(d.snapshots[1].contains(0) && !d.snapshots[1].contains(1) && d.snapshots[1].contains(2));
        assert!(Catalog::decode(&key, &[8; 16], "c", &data).is_err(), "another repository");
        assert!(Catalog::decode(&Secret32::random(), &[7; 16], "c", &data).is_err(), "another key");
        // names are not in the file in plain text
        assert!(!data.windows(5).any(|w| w == b"zebra"));
    }

    #[test]
    fn runs_normalize() {
        assert_eq!(
            normalize(vec![(5, 6), (0, 1), (1, 2), (3, 5), (9, 10), (9, 12)]),
            vec![(0, 2), (3, 6), (9, 12)]
        );
        assert!(valid_runs(&[(0, 2), (3, 4)], 4));
        assert!(!valid_runs(&[(0, 2), (2, 4)], 4), "adjacent runs are one run");
        assert!(!valid_runs(&[(0, 5)], 4));
        assert!(!valid_runs(&[(3, 3)], 4));
    }

    #[test]
    fn compaction_drops_dead_versions_and_keeps_runs() {
        let mut c = sample();
        c.snapshots.remove(0); // version 1 is now in no snapshot
        c.compact();
        assert_eq!(c.versions.len(), 2);
        assert_eq!(c.snapshots[0].runs, vec![(0, 2)], "0 and 2 are now adjacent: 0 and 1");
        assert!(c.memo.is_empty(), "the memo named the dead version");
        c.check(&[7; 16]).unwrap();
    }

    #[test]
    fn checks_every_reference() {
        let mut c = sample();
        c.versions[0].path = 99;
        assert!(c.check(&[7; 16]).is_err());
        let mut c = sample();
        c.snapshots[0].runs = vec![(0, 9)];
        assert!(c.check(&[7; 16]).is_err());
        let mut c = sample();
        c.parents[2] = 2;
        assert!(c.check(&[7; 16]).is_err());
        let mut c = sample();
        c.name_ends[2] = 1000;
        assert!(c.check(&[7; 16]).is_err());
    }

    fn backup(repo: &Repository, src: &Path) -> String {
        let opts = crate::backup::BackupOptions {
            paths: vec![src.to_path_buf()],
            excludes: vec![],
            mem_limit: None,
            read_mode: stages::read::ReadMode::Pool,
            workers: 2,
            source: std::sync::Arc::new(::io::LocalSource::default()),
            host: "h".into(),
            tags: vec![],
            cache_dir: None,
            progress: Default::default(),
        };
        crate::backup::backup(repo, opts).unwrap().snapshot_id
    }

    #[test]
    fn incremental_walks_skip_unchanged_directories_and_follow_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        for (p, data) in [("a/1.txt", "one"), ("a/2.txt", "two"), ("a/deep/3.txt", "3"), ("b/4.txt", "four")]
        {
            fs::create_dir_all(src.join(p).parent().unwrap()).unwrap();
            fs::write(src.join(p), data).unwrap();
        }
        let repo = Repository::init(&dir.path().join("repo"), Some(&dir.path().join("key"))).unwrap();
        let cache = dir.path().join("cache");
        let first = backup(&repo, &src);
        let (c1, o1) = Catalog::open(&repo, Some(&cache)).unwrap();
        assert_eq!((o1.added, o1.dropped, c1.snapshots.len()), (1, 0, 1));
        assert!(o1.warnings.is_empty(), "{:?}", o1.warnings);
        let depth = src.components().count() as u64; // the root and every ancestor of src
        assert_eq!(o1.decoded_dirs, depth + 3, "root .. src, a, a/deep, b");

        // Warm: nothing to walk, the same catalog.
        let (c2, o2) = Catalog::open(&repo, Some(&cache)).unwrap();
        assert_eq!((o2.added, o2.decoded_dirs), (0, 0));
        assert_eq!(c2, c1);

        // One file changes: a and a/deep are not decoded again; the unchanged files keep their
        // versions, so the new snapshot adds one file version (and src's own, if its mtime moved).
        fs::write(src.join("b/4.txt"), "FOUR!").unwrap();
        backup(&repo, &src);
        let (c3, o3) = Catalog::open(&repo, Some(&cache)).unwrap();
        assert_eq!((o3.added, c3.snapshots.len()), (1, 2));
        assert_eq!(o3.decoded_dirs, depth + 1, "root .. src and b only");
        let four: Vec<&Version> =
            c3.versions.iter().filter(|v| c3.full_path(v.path).ends_with(b"/b/4.txt")).collect();
        assert_eq!(four.len(), 2);
        let one: Vec<u32> = (0..c3.versions.len() as u32)
            .filter(|&v| c3.full_path(c3.versions[v as usize].path).ends_with(b"/a/1.txt"))
            .collect();
        assert_eq!(one.len(), 1);
        assert!(c3.snapshots.iter().all(|s| s.contains(one[0])));

        // The first snapshot goes: its own versions go with it.
        fs::remove_file(dir.path().join("repo/snapshots").join(&first)).unwrap();
        let (c4, o4) = Catalog::open(&repo, Some(&cache)).unwrap();
        assert_eq!((o4.added, o4.dropped, c4.snapshots.len()), (0, 1, 1));
        let four: Vec<&Version> =
            c4.versions.iter().filter(|v| c4.full_path(v.path).ends_with(b"/b/4.txt")).collect();
        assert_eq!(four.len(), 1);
        assert_eq!(four[0].size, 5);
        c4.check(&repo.config.repo_id).unwrap();

        // A damaged file is rebuilt, with a warning, to the same content.
        let file = catalog_file(&cache, &repo.config.repo_id);
        let mut bytes = fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        fs::write(&file, &bytes).unwrap();
        let (c5, o5) = Catalog::open(&repo, Some(&cache)).unwrap();
        assert!(o5.warnings.iter().any(|w| w.contains("rebuilding")), "{:?}", o5.warnings);
        assert_eq!(o5.added, 1);
        let paths = |c: &Catalog| {
            let mut v: Vec<(Vec<u8>, u64)> =
                c.versions.iter().map(|v| (c.full_path(v.path), v.size)).collect();
            v.sort();
            v
        };
        assert_eq!(paths(&c5), paths(&c4));

        // A backup-only key is refused.
        let mut backup_only =
            Repository::open(&dir.path().join("repo"), Some(&dir.path().join("key"))).unwrap();
        backup_only.key = backup_only.key.backup_only();
        assert!(matches!(Catalog::open(&backup_only, Some(&cache)), Err(Error::BackupOnlyKey(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let key = Secret32::from_bytes([3; 32]);
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&[7; 16]);
            d.extend_from_slice(&g);
            prop_assert!(Catalog::decode(&key, &[7; 16], "c", &d).is_err());
            prop_assert!(Catalog::decode(&key, &[7; 16], "c", &g).is_err());
            // authentic bytes that are not a catalog
            let mut sealed = MAGIC.to_vec();
            sealed.extend_from_slice(&[7; 16]);
            sealed.extend_from_slice(&seal_catalog(&key, MAGIC, &g));
            let _ = Catalog::decode(&key, &[7; 16], "c", &sealed);
        }

        #[test]
        fn damage_is_refused(at in 0usize..10_000, bit in 0u8..8) {
            let key = Secret32::from_bytes([3; 32]);
            let mut data = sample().encode(&key).unwrap();
            let i = at % data.len();
            data[i] ^= 1 << bit;
            prop_assert!(Catalog::decode(&key, &[7; 16], "c", &data).is_err());
        }
    }
}
