//! Storage audits: proof that a friend's server still holds a publisher's packs, without
//! downloading them.
//!
//! While a pack is uploaded, [`Recording`] picks [`PER_PACK`] of its 16 KiB blocks uniformly
//! at random (reservoir sampling, as the pack streams out; no copy of it is kept) and, for
//! each, draws a random 32-byte nonce and computes BLAKE3 of the block keyed with the nonce.
//! The challenges are kept on this machine ([`Store`]); the server never sees a nonce before
//! it is asked. An audit sends some: the server answers the keyed hash of the bytes it holds at
//! that place (`x-bakare-audit`, serve/src/route.rs), which it can only compute from the bytes.
//! A challenge is used once (an answer seen could be replayed).
//!
//! A server that deleted or truncated a pack fails every challenge on it; one that altered a
//! pack fails the challenges whose blocks it altered. One that kept a fraction f of the blocks
//! of every pack passes a challenge with probability f, so k challenges with probability f^k.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, RngCore};

/// Challenges kept per pack (each about 150 bytes on this machine): a pack can be audited this
/// many times.
pub const PER_PACK: usize = 32;
/// The bytes one challenge covers.
pub const BLOCK: u64 = 16 << 10;

const HEADER: &str = "bakare-audit 1";

/// One challenge: the keyed hash of `length` bytes at `offset` with `nonce` as the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub offset: u64,
    pub length: u64,
    pub nonce: [u8; 32],
    pub expected: [u8; 32],
}

impl Challenge {
    fn new(offset: u64, bytes: &[u8]) -> Challenge {
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let expected = *blake3::keyed_hash(&nonce, bytes).as_bytes();
        Challenge { offset, length: bytes.len() as u64, nonce, expected }
    }

    /// The header value the server reads: `NONCE:OFFSET:LENGTH`.
    pub fn header(&self) -> String {
        format!("{}:{}:{}", hex::encode(self.nonce), self.offset, self.length)
    }

    fn line(&self) -> String {
        format!(
            "{} {} {} {}\n",
            self.offset,
            self.length,
            hex::encode(self.nonce),
            hex::encode(self.expected)
        )
    }

    fn parse(line: &str) -> Option<Challenge> {
        let mut it = line.split(' ');
        let offset = it.next()?.parse().ok()?;
        let length: u64 = it.next()?.parse().ok()?;
        let mut nonce = [0u8; 32];
        let mut expected = [0u8; 32];
        hex::decode_to_slice(it.next()?, &mut nonce).ok()?;
        hex::decode_to_slice(it.next()?, &mut expected).ok()?;
        if it.next().is_some() || length == 0 || length > BLOCK {
            return None;
        }
        Some(Challenge { offset, length, nonce, expected })
    }
}

/// A pack's name: `packs/hh/<64 hex>`; its challenges are kept under the hex.
fn pack_hash(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("packs/")?;
    let (fan, hash) = rest.split_once('/')?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (fan.len() == 2 && hash.len() == 64 && hex(fan) && hex(hash) && hash.starts_with(fan)).then_some(hash)
}

/// The challenges kept for one repository on one server: one small file per pack.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store for the repository at `location` (`serve:https://host:port/repo`), under
    /// `$BAKARE_CACHE_DIR/audits`, else `bakare/audits` in the user's cache directory.
    pub fn for_location(location: &str) -> std::io::Result<Store> {
        let base = match std::env::var_os("BAKARE_CACHE_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => dirs_cache()?.join("bakare"),
        };
        let name: String = location
            .strip_prefix("serve:https://")
            .unwrap_or(location)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        Ok(Store { dir: base.join("audits").join(name) })
    }

    pub fn at(dir: &Path) -> Store {
        Store { dir: dir.to_path_buf() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps `challenges` for the pack `key` (replacing what was kept for it; none left is an
    /// empty list, which still says the pack was known): secrets, so mode 0600 in a 0700
    /// directory; temporary name, fsync, rename, fsync the directory, so a challenge taken is
    /// gone for good before it is sent.
    pub fn record(&self, key: &str, challenges: &[Challenge]) -> std::io::Result<()> {
        let Some(hash) = pack_hash(key) else { return Ok(()) };
        io::durable::create_private_dir_all(&self.dir)?;
        let mut text = format!("{HEADER}\n");
        for c in challenges {
            text.push_str(&c.line());
        }
        io::durable::replace_private(&self.dir.join(hash), text.as_bytes())
    }

    /// Puts back a challenge that was taken but never reached the server.
    pub fn put_back(&self, key: &str, c: Challenge) -> std::io::Result<()> {
        let mut all = self.challenges(key)?;
        all.push(c);
        self.record(key, &all)
    }

    /// Every pack with a file here, challenges left or not, as `packs/hh/<hash>`.
    pub fn known(&self) -> std::io::Result<Vec<String>> {
        self.list(|_| true)
    }

    /// The packs with challenges left.
    pub fn packs(&self) -> std::io::Result<Vec<String>> {
        self.list(|len| len > HEADER.len() as u64 + 1)
    }

    fn list(&self, keep: impl Fn(u64) -> bool) -> std::io::Result<Vec<String>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e?;
            let name = e.file_name();
            if let Some(n) = name.to_str() {
                let key = format!("packs/{}/{n}", n.get(..2).unwrap_or(""));
                if pack_hash(&key).is_some() && keep(e.metadata()?.len()) {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The challenges left for `key`; an unreadable or malformed file is an error naming it.
    pub fn challenges(&self, key: &str) -> std::io::Result<Vec<Challenge>> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        let hash = pack_hash(key).ok_or_else(|| bad("not a pack's name"))?;
        let path = self.dir.join(hash);
        let text = fs::read_to_string(&path)?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad(&format!("{}: not a file of audit challenges (version 1)", path.display())));
        }
        lines
            .map(|l| {
                Challenge::parse(l).ok_or_else(|| bad(&format!("{}: a malformed challenge", path.display())))
            })
            .collect()
    }

    /// Forgets the challenges of `key` (the pack was deleted by its owner's prune).
    pub fn forget(&self, key: &str) -> std::io::Result<()> {
        let Some(hash) = pack_hash(key) else { return Ok(()) };
        match fs::remove_file(self.dir.join(hash)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            Err(_) => Ok(()),
            Ok(()) => io::durable::sync_dir(&self.dir),
        }
    }

    /// Takes one challenge of `key` out of the store, durably, before it is sent (it is used
    /// once); the pack stays known with none left.
    pub fn take(&self, key: &str) -> std::io::Result<Option<Challenge>> {
        let mut all = self.challenges(key)?;
        let Some(c) = all.pop() else { return Ok(None) };
        self.record(key, &all)?;
        Ok(Some(c))
    }
}

fn dirs_cache() -> std::io::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache"))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no HOME for the cache directory"))
}

/// Picks [`PER_PACK`] blocks of a pack uniformly as its bytes go by (reservoir sampling).
#[derive(Default)]
pub struct Sampler {
    block: Vec<u8>,
    /// Blocks completed so far.
    seen: u64,
    chosen: Vec<Challenge>,
}

impl Sampler {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (BLOCK as usize) - self.block.len();
            let n = room.min(data.len());
            self.block.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.block.len() == BLOCK as usize {
                self.close_block();
            }
        }
    }

    fn close_block(&mut self) {
        let offset = self.seen * BLOCK;
        let j = self.seen;
        self.seen += 1;
        if self.chosen.len() < PER_PACK {
            self.chosen.push(Challenge::new(offset, &self.block));
        } else {
            let r = rand::thread_rng().gen_range(0..=j);
            if let Ok(r) = usize::try_from(r) {
                if r < PER_PACK {
                    self.chosen[r] = Challenge::new(offset, &self.block);
                }
            }
        }
        self.block.clear();
    }

    /// The challenges, the last partial block counting as a block.
    pub fn finish(mut self) -> Vec<Challenge> {
        if !self.block.is_empty() {
            self.close_block();
        }
        self.chosen
    }
}

/// A repository's storage that records challenges for every pack written through it.
pub struct Recording {
    inner: Arc<dyn io::Backend>,
    store: Store,
}

impl Recording {
    pub fn new(inner: Arc<dyn io::Backend>, store: Store) -> Recording {
        Recording { inner, store }
    }
}

/// Keeps a pack's challenges. An audit is a check on the server, not part of the backup: a
/// challenge that cannot be kept only leaves that pack out of later audits, with a warning.
fn keep(store: &Store, key: &str, challenges: &[Challenge]) {
    if let Err(e) = store.record(key, challenges) {
        eprintln!("warning: cannot keep audit challenges for {key} in {}: {e}", store.dir.display());
    }
}

struct RecordingStaged {
    inner: Box<dyn io::Staged>,
    sampler: Sampler,
    store: Store,
}

impl Write for RecordingStaged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sampler.feed(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl io::Staged for RecordingStaged {
    fn commit(self: Box<Self>, key: &str) -> io::storage::Result<()> {
        let RecordingStaged { inner, sampler, store } = *self;
        inner.commit(key)?;
        if pack_hash(key).is_some() {
            keep(&store, key, &sampler.finish());
        }
        Ok(())
    }
}

impl io::Backend for Recording {
    fn put(&self, key: &str, data: &[u8]) -> io::storage::Result<()> {
        self.inner.put(key, data)?;
        if pack_hash(key).is_some() {
            let mut s = Sampler::default();
            s.feed(data);
            keep(&self.store, key, &s.finish());
        }
        Ok(())
    }
    fn stage(&self) -> io::storage::Result<Box<dyn io::Staged>> {
        Ok(Box::new(RecordingStaged {
            inner: self.inner.stage()?,
            sampler: Sampler::default(),
            store: self.store.clone(),
        }))
    }
    fn get(&self, key: &str) -> io::storage::Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: usize) -> io::storage::Result<Vec<u8>> {
        self.inner.get_range(key, offset, len)
    }
    fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::storage::Result<()> {
        self.inner.get_range_into(key, offset, len, buf)
    }
    fn size(&self, key: &str) -> io::storage::Result<u64> {
        self.inner.size(key)
    }
    fn list(&self, dir: &str) -> io::storage::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn delete(&self, key: &str) -> io::storage::Result<()> {
        self.inner.delete(key)?;
        if let Err(e) = self.store.forget(key) {
            eprintln!("warning: cannot forget the audit challenges of {key}: {e}");
        }
        Ok(())
    }
    fn replace(&self, key: &str, data: &[u8]) -> io::storage::Result<()> {
        self.inner.replace(key, data)
    }
    fn remote(&self) -> bool {
        self.inner.remote()
    }
    fn exists(&self, key: &str) -> io::storage::Result<bool> {
        self.inner.exists(key)
    }
    fn leftovers(&self) -> io::storage::Result<Vec<io::storage::Leftover>> {
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
    fn the_sampler_keeps_per_pack_blocks_whose_hashes_match_the_bytes() {
        let data: Vec<u8> = (0..(BLOCK * 40 + 123)).map(|i| (i * 7 % 251) as u8).collect();
        for piece in [1usize, 1000, 70_000] {
            let mut s = Sampler::default();
            for chunk in data.chunks(piece) {
                s.feed(chunk);
            }
            let chosen = s.finish();
            assert_eq!(chosen.len(), PER_PACK);
            for c in &chosen {
                let bytes = &data[c.offset as usize..(c.offset + c.length) as usize];
                assert_eq!(*blake3::keyed_hash(&c.nonce, bytes).as_bytes(), c.expected);
                assert_eq!(c.offset % BLOCK, 0);
            }
        }
        let mut s = Sampler::default();
        s.feed(&data[..100]);
        let small = s.finish();
        assert_eq!(small.len(), 1, "a pack smaller than a block has one challenge, over all of it");
        assert_eq!(small[0].length, 100);
    }

    #[test]
    fn every_block_can_be_chosen() {
        let data = vec![1u8; (BLOCK * 30) as usize];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut s = Sampler::default();
            s.feed(&data);
            seen.extend(s.finish().into_iter().map(|c| c.offset / BLOCK));
        }
        assert_eq!(seen.len(), 30, "reservoir sampling reaches every block: {seen:?}");
    }

    #[test]
    fn challenges_are_kept_taken_once_and_malformed_files_named() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path());
        let key = format!("packs/ab/ab{}", "0".repeat(62));
        let c = vec![Challenge::new(0, b"one"), Challenge::new(BLOCK, b"two")];
        store.record(&key, &c).unwrap();
        store.record("index/whatever", &c).unwrap();
        assert_eq!(store.packs().unwrap(), vec![key.clone()]);
        assert_eq!(store.challenges(&key).unwrap(), c);
        assert_eq!(store.take(&key).unwrap(), Some(c[1].clone()));
        store.put_back(&key, c[1].clone()).unwrap();
        assert_eq!(store.take(&key).unwrap(), Some(c[1].clone()));
        assert_eq!(store.take(&key).unwrap(), Some(c[0].clone()));
        assert_eq!(store.take(&key).unwrap(), None);
        assert!(store.packs().unwrap().is_empty(), "no challenges left");
        assert_eq!(store.known().unwrap(), vec![key.clone()], "the pack stays known");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d.path().join(format!("ab{}", "0".repeat(62)))).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(d.path().join(format!("ab{}", "0".repeat(62))), "bakare-audit 1\n1 2 zz\n").unwrap();
        let e = store.challenges(&key).unwrap_err().to_string();
        assert!(e.contains("malformed"), "{e}");
        assert!(pack_hash("packs/ab/cd00").is_none());
        assert!(pack_hash(&format!("packs/zz/zz{}", "0".repeat(62))).is_none());
    }
}
