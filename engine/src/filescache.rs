//! The files cache: for one repository and one source (host + paths), what each regular file
//! looked like at the last backup (size, mtime, ctime, inode, device) and its chunk ids. A file
//! that still looks the same is not read again: an unchanged file costs one stat.
//!
//! It is read as a stream in step with the scan (both are in the scan's order: depth first,
//! names sorted), so it never sits whole in memory. It lives outside the repository
//! (`$XDG_CACHE_HOME/bakare/<repository>/files-<source>`), is only a cache — losing it costs a
//! re-read, dedup still prevents re-upload — and is never trusted blindly: every record carries
//! a checksum, and every chunk id it gives must be in the repository's index.
//!
//! A directory's record comes after everything inside it (where the scan is when it leaves the
//! directory): its own stamp, how many entries its tree had and the tree's blob ids. When the
//! directory and every entry in it are unchanged, the next run reuses that tree instead of
//! encoding and hashing it again.
//!
//! Format: `"BKFCACHE" | version u8 (5) | repository id [16] | nonce prefix [8]`, then the
//! records sealed in blocks of up to 64 KiB of plaintext: `len u32 LE | AES-256-GCM(files
//! cache key, nonce = prefix | block index u32 BE, aad = header | index u32 LE | last u8)`.
//! The key is derived from the writer key, so only the machine's own key reads it: paths,
//! sizes, times and inodes are not left in the clear beside the repository's secrets. The last
//! block says it is last, so a cut file is seen as cut. Inside, records are
//! `len u32 LE | postcard(Record) | XXH3-64(body) LE`. Version 5 added `Full` records (holes,
//! attributes); version 4
//! is read as it is, version 3 without its directory records (`VERSION_3`); versions 1 and 2 (unsealed) are read as
//! no cache: the run after an upgrade reads every file once. (XXH3 rather than BLAKE3: a
//! checksum against damage is all a local cache needs, and BLAKE3 on ~100-byte records was 7 %
//! of a no-change run over 100,000 files.)
use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stages::encrypt::BlockCipher;
use stages::BlobId;

use crate::tree::{Hole, Xattr};

const MAGIC: &[u8; 8] = b"BKFCACHE";
const VERSION: u8 = 5;
/// The version before (no `Full` records; its directory records name trees of version 2,
/// which are read as they are). Version 5 exists so that an older bakare, which would reuse
/// directory records naming version 3 trees it cannot read, sees no cache instead.
const VERSION_4: u8 = 4;
/// Its file records are read as they are (postcard writes an i64 and an i128 that holds the
/// same number alike), its directory records are not used: their trees lack the extended
/// attributes and inode flags tree version 2 keeps.
const VERSION_3: u8 = 3;
const MAX_RECORD: u32 = 64 << 20;
/// Plaintext bytes per sealed block.
const BLOCK: usize = 64 << 10;
/// `MAGIC | VERSION | repository id | nonce prefix`.
const HEADER: usize = 8 + 1 + 16 + 8;

/// The key the files cache is sealed with, from the writer's catalog key.
pub fn cache_key(catalog_key: &crate::crypto::Secret32) -> BlockCipher {
    BlockCipher::new(catalog_key.derive("bakare 2026-12 files cache").as_bytes())
}

fn block_nonce(head: &[u8; HEADER], index: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&head[HEADER - 8..]);
    n[8..].copy_from_slice(&index.to_be_bytes());
    n
}

fn block_aad(head: &[u8; HEADER], index: u32, last: bool) -> [u8; HEADER + 5] {
    let mut a = [0u8; HEADER + 5];
    a[..HEADER].copy_from_slice(head);
    a[HEADER..HEADER + 4].copy_from_slice(&index.to_le_bytes());
    a[HEADER + 4] = u8::from(last);
    a
}

/// Plaintext written through it is sealed a block at a time (`BLOCK`).
struct Sealer {
    out: BufWriter<File>,
    cipher: BlockCipher,
    head: [u8; HEADER],
    block: Vec<u8>,
    index: u32,
}

impl Sealer {
    fn seal_block(&mut self, last: bool) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.block);
        let nonce = block_nonce(&self.head, self.index);
        self.cipher.seal(nonce, &block_aad(&self.head, self.index, last), &mut buf);
        self.out.write_all(&(buf.len() as u32).to_le_bytes())?;
        self.out.write_all(&buf)?;
        self.index = self.index.checked_add(1).ok_or_else(|| io::Error::other("files cache too large"))?;
        buf.clear();
        self.block = buf;
        Ok(())
    }

    /// Seals what is left as the last block and hands back the file.
    fn finish(mut self) -> io::Result<File> {
        self.seal_block(true)?;
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Sealer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK {
            self.seal_block(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The plaintext of a sealed files cache, a block at a time. A block that fails
/// authentication, or a file that ends before its last block, is an error (the reader then
/// reads the rest of the tree's files again).
struct Unsealer {
    r: Box<dyn BufRead + Send>,
    cipher: BlockCipher,
    head: [u8; HEADER],
    /// The current block: sealed as read, then its plaintext.
    buf: Vec<u8>,
    /// What of the plaintext is still to be read.
    plain: std::ops::Range<usize>,
    index: u32,
    done: bool,
}

impl Unsealer {
    /// Reads and checks the header: the records' plaintext follows.
    fn new(
        mut r: Box<dyn BufRead + Send>,
        repo_id: &[u8; 16],
        cipher: BlockCipher,
    ) -> Result<Unsealer, String> {
        let mut head = [0u8; HEADER];
        if r.read_exact(&mut head).is_err()
            || &head[..8] != MAGIC
            || ![VERSION, VERSION_4, VERSION_3].contains(&head[8])
            || head[9..25] != repo_id[..]
        {
            return Err("damaged or from another version".into());
        }
        let buf = Vec::with_capacity(BLOCK + 16);
        Ok(Unsealer { r, cipher, head, buf, plain: 0..0, index: 0, done: false })
    }

    fn next_block(&mut self) -> io::Result<()> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let mut len = [0u8; 4];
        match self.r.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(bad("cut short")),
            other => other?,
        }
        let len = u32::from_le_bytes(len) as usize;
        if !(16..=BLOCK + 16).contains(&len) {
            return Err(bad("block length out of range"));
        }
        self.buf.resize(len, 0);
        self.r.read_exact(&mut self.buf).map_err(|_| bad("cut short"))?;
        let nonce = block_nonce(&self.head, self.index);
        // The block the file ends with must be the one sealed as last: a file cut at a block
        // boundary ends with one that is not, and fails here.
        let last = self.r.fill_buf()?.is_empty();
        let aad = block_aad(&self.head, self.index, last);
        let plain_len = match self.cipher.open(nonce, &aad, &mut self.buf) {
            Some(p) => p.len(),
            None if last => return Err(bad("cut short or damaged: its last block failed authentication")),
            None => return Err(bad("a block failed authentication")),
        };
        self.plain = 0..plain_len;
        self.index = self.index.checked_add(1).ok_or_else(|| bad("too many blocks"))?;
        self.done = last;
        Ok(())
    }
}

impl Read for Unsealer {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Unsealer {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.plain.is_empty() && !self.done {
            self.next_block()?;
        }
        Ok(&self.buf[self.plain.clone()])
    }

    fn consume(&mut self, n: usize) {
        self.plain.start = (self.plain.start + n).min(self.plain.end);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub path: Vec<u8>,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    pub content: Vec<BlobId>,
}

/// What a file record of version 5 adds to `CacheEntry`: its holes, and its extended
/// attributes and inode flags as the run that wrote it read them, kept only when its ctime was
/// outside the racy window (a change to them moves the ctime, which the lookup compares).
/// Without them, a file in a directory that changed had its attributes read again: a run that
/// touched one file in each of 1,000 directories of 300 files read 300,000 files' attributes
/// and took 2.1x as long (bench/README.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileExtra {
    pub holes: Vec<Hole>,
    pub attrs: Option<(Vec<Xattr>, u32)>,
}

/// `FileExtra::attrs` as `StoredFile::attrs` carries them through the scan to the builder.
pub fn encode_attrs(attrs: &(Vec<Xattr>, u32)) -> Vec<u8> {
    // Serializing owned plain data into a Vec cannot fail.
    postcard::to_allocvec(attrs).unwrap_or_default()
}

/// What `encode_attrs` encoded (None for anything else: the attributes are read again).
pub fn decode_attrs(bytes: &[u8]) -> Option<(Vec<Xattr>, u32)> {
    postcard::from_bytes(bytes).ok()
}

fn checksum(body: &[u8]) -> [u8; 8] {
    xxhash_rust::xxh3::xxh3_64(body).to_le_bytes()
}

/// A directory as the last run left it: its stamp, and the tree it was stored as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: Vec<u8>,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    /// Entries in its tree.
    pub entries: u64,
    pub tree: Vec<BlobId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    File(CacheEntry),
    /// Written when the scan leaves the directory: after everything inside it.
    Dir(DirEntry),
    /// A file with holes (tree version 3) or known attributes (cache version 5).
    Full(CacheEntry, FileExtra),
}

impl Record {
    pub fn path(&self) -> &[u8] {
        self.position().0
    }

    fn position(&self) -> (&[u8], bool) {
        match self {
            Record::File(e) | Record::Full(e, _) => (&e.path, false),
            Record::Dir(d) => (&d.path, true),
        }
    }
}

/// The scan's order: paths compared component by component (depth first, sorted names).
pub fn cmp_paths(a: &[u8], b: &[u8]) -> Ordering {
    cmp_positions((a, false), (b, false))
}

/// The scan's order of records: a path, or (`true`) the end of the directory at that path,
/// which comes after everything inside the directory.
fn cmp_positions(a: (&[u8], bool), b: (&[u8], bool)) -> Ordering {
    let mut x = a.0.split(|&c| c == b'/').filter(|c| !c.is_empty());
    let mut y = b.0.split(|&c| c == b'/').filter(|c| !c.is_empty());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return a.1.cmp(&b.1),
            (None, Some(_)) => return if a.1 { Ordering::Greater } else { Ordering::Less },
            (Some(_), None) => return if b.1 { Ordering::Less } else { Ordering::Greater },
            (Some(p), Some(q)) => match p.cmp(q) {
                Ordering::Equal => {}
                o => return o,
            },
        }
    }
}

/// Where the cache of `roots` backed up from `host` into repository `repo_id` lives.
pub fn cache_file(dir: &Path, repo_id: &[u8; 16], host: &str, roots: &[PathBuf]) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(host.as_bytes());
    for r in roots {
        h.update(b"\0");
        h.update(std::os::unix::ffi::OsStrExt::as_bytes(r.as_os_str()));
    }
    let source = h.finalize().to_hex();
    dir.join(hex::encode(repo_id)).join(format!("files-{}", &source[..32]))
}

pub fn default_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("bakare"))
}

pub struct CacheReader {
    r: Box<dyn BufRead + Send>,
    next: Option<Record>,
    body: Vec<u8>,
    /// The stored bytes (after the length) of the record `seek` last returned.
    last: Vec<u8>,
    /// Why reading stopped early, if it did.
    pub problem: Option<String>,
    /// Whether its directory records are used (`VERSION_3`'s are not).
    dirs: bool,
}

impl CacheReader {
    /// Ok(None) when there is no cache yet; Err(why) when it is unusable. `cipher` is the
    /// machine's `cache_key`.
    pub fn open(path: &Path, repo_id: &[u8; 16], cipher: BlockCipher) -> Result<Option<CacheReader>, String> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("files cache {}: {e}", path.display())),
        };
        let r = BufReader::with_capacity(256 << 10, f);
        Self::from_sealed(Box::new(r), repo_id, cipher)
            .map(Some)
            .map_err(|why| format!("files cache {}: {why}", path.display()))
    }

    /// A whole cache from any stream (the file, or a fuzzer's bytes), header first.
    pub fn from_sealed(
        r: Box<dyn BufRead + Send>,
        repo_id: &[u8; 16],
        cipher: BlockCipher,
    ) -> Result<CacheReader, String> {
        let unsealer = Unsealer::new(r, repo_id, cipher)?;
        let dirs = unsealer.head[8] != VERSION_3;
        let mut c = Self::from_records(Box::new(unsealer));
        c.dirs = dirs;
        Ok(c)
    }

    /// Records in the clear, as the sealed blocks hold them.
    pub fn from_records(r: Box<dyn BufRead + Send>) -> CacheReader {
        let mut c =
            CacheReader { r, next: None, body: Vec::new(), last: Vec::new(), problem: None, dirs: true };
        c.advance();
        c
    }

    fn read_record(&mut self) -> Result<Option<Record>, String> {
        let mut len = [0u8; 4];
        match self.r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD {
            return Err("record length out of range".into());
        }
        // Grown as bytes arrive, so a damaged length field cannot make a huge allocation.
        let want = u64::from(len) + 8;
        let body = &mut self.body;
        body.clear();
        (&mut self.r).take(want).read_to_end(body).map_err(|e| e.to_string())?;
        if body.len() as u64 != want {
            return Err("record truncated".into());
        }
        let (body, sum) = body.split_at(len as usize);
        if checksum(body) != sum {
            return Err("record checksum mismatch".into());
        }
        postcard::from_bytes(body).map(Some).map_err(|e| e.to_string())
    }

    fn advance(&mut self) {
        self.next = match self.read_record() {
            Ok(e) => e,
            Err(why) => {
                self.problem = Some(format!("files cache damaged ({why}); the rest is read again"));
                None
            }
        };
    }

    /// The record at `position`, skipping records of paths that are gone.
    fn seek(&mut self, position: (&[u8], bool)) -> Option<Record> {
        loop {
            match cmp_positions(self.next.as_ref()?.position(), position) {
                Ordering::Less => self.advance(),
                Ordering::Equal => {
                    let e = self.next.take();
                    std::mem::swap(&mut self.last, &mut self.body);
                    self.advance();
                    return e;
                }
                Ordering::Greater => return None,
            }
        }
    }

    /// The entry of the file at `path`, and its holes. Calls (to this and `dir`) must come in
    /// scan order.
    pub fn lookup(&mut self, path: &[u8]) -> Option<(CacheEntry, FileExtra)> {
        match self.seek((path, false))? {
            Record::File(e) => Some((e, FileExtra::default())),
            Record::Full(e, extra) => Some((e, extra)),
            Record::Dir(_) => None,
        }
    }

    /// The content of the next file record, read ahead already (`seek` keeps one record ahead).
    pub fn next_content(&self) -> Option<&[BlobId]> {
        match self.next.as_ref()? {
            Record::File(e) | Record::Full(e, _) => Some(&e.content),
            Record::Dir(_) => None,
        }
    }

    /// Appends the record `lookup` or `dir` last returned to `out`, exactly as stored
    /// (for `CacheWriter::add_raw`).
    pub fn last_record(&self, out: &mut Vec<u8>) {
        let len = self.last.len().saturating_sub(8) as u32;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&self.last);
    }

    /// Every record at and below the directory `path`, in order, each passed to `each` with its
    /// stored bytes (as `last_record` writes them); the directory's own record ends them.
    /// Calls come in scan order, like `lookup`'s.
    pub fn subtree(&mut self, path: &[u8], each: &mut dyn FnMut(&Record, &[u8])) -> Subtree {
        // Records before the first one inside `path` are of paths that are gone.
        while self.next.as_ref().is_some_and(|r| cmp_positions(r.position(), (path, false)).is_le()) {
            self.advance();
        }
        let mut passed = false;
        let mut raw = Vec::new();
        while let Some(r) = self.next.as_ref() {
            if cmp_positions(r.position(), (path, true)).is_gt() {
                break;
            }
            raw.clear();
            let len = self.body.len().saturating_sub(8) as u32;
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&self.body);
            each(r, &raw);
            passed = true;
            let own = r.position() == (path, true);
            let r = self.next.take();
            self.advance();
            if own {
                return match r {
                    Some(Record::Dir(d)) if self.dirs => Subtree::Own(d),
                    _ => Subtree::NoOwn,
                };
            }
        }
        match passed {
            true => Subtree::NoOwn,
            false => Subtree::Absent,
        }
    }

    /// The record of the directory at `path`, asked for when the scan leaves it.
    pub fn dir(&mut self, path: &[u8]) -> Option<DirEntry> {
        match self.seek((path, true))? {
            Record::Dir(d) if self.dirs => Some(d),
            Record::Dir(_) | Record::File(_) | Record::Full(..) => None,
        }
    }
}

/// How the records below a directory ended (`CacheReader::subtree`).
#[derive(Debug, PartialEq, Eq)]
pub enum Subtree {
    /// No record at or below it.
    Absent,
    /// Records below it, then its own.
    Own(DirEntry),
    /// Records below it, but none of its own: it was not recorded (something in it was not
    /// settled when the last run left it).
    NoOwn,
}

pub struct CacheWriter {
    w: Sealer,
    /// Removed unless committed (a failed run leaves no temporary file behind).
    tmp: TempName,
    dest: PathBuf,
}

impl CacheWriter {
    /// A new cache for `dest`, sealed with `cipher` (`cache_key`), written under a temporary
    /// name until `commit`.
    pub fn create(dest: &Path, repo_id: &[u8; 16], cipher: BlockCipher) -> io::Result<CacheWriter> {
        let dir = dest.parent().unwrap_or(Path::new("."));
        ::io::durable::create_private_dir_all(dir)?;
        let tmp = ::io::durable::temp_path(dir);
        // 0600: paths, sizes and inodes of the user's files are nobody else's business.
        let f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let mut out = BufWriter::with_capacity(256 << 10, f);
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(MAGIC);
        head[8] = VERSION;
        head[9..25].copy_from_slice(repo_id);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut head[25..]);
        out.write_all(&head)?;
        let w = Sealer { out, cipher, head, block: Vec::with_capacity(BLOCK + 16), index: 0 };
        Ok(CacheWriter { w, tmp: TempName(Some(tmp)), dest: dest.to_path_buf() })
    }

    pub fn add(&mut self, e: &Record) -> io::Result<()> {
        let body = postcard::to_allocvec(e).map_err(io::Error::other)?;
        self.w.write_all(&(body.len() as u32).to_le_bytes())?;
        self.w.write_all(&body)?;
        self.w.write_all(&checksum(&body))
    }

    /// Writes records as `CacheReader::last_record` gave them (read, checked and decoded by
    /// this version before, so written again without being encoded and summed again).
    pub fn add_raw(&mut self, records: &[u8]) -> io::Result<()> {
        self.w.write_all(records)
    }

    /// Replaces the previous cache (a local cache, not a repository object: replacing is fine).
    pub fn commit(self) -> io::Result<()> {
        let CacheWriter { w, mut tmp, dest } = self;
        w.finish()?.sync_all()?;
        if let Some(path) = &tmp.0 {
            fs::rename(path, &dest)?;
        }
        tmp.0 = None; // renamed: nothing left to remove
        Ok(())
    }
}

/// A whole sealed cache file holding `records` (as `CacheReader::last_record` gives them), for
/// the fuzzers' samples.
pub fn sealed_sample(
    repo_id: &[u8; 16],
    catalog_key: &crate::crypto::Secret32,
    records: &[u8],
) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().ok()?;
    let p = dir.path().join("files");
    let mut w = CacheWriter::create(&p, repo_id, cache_key(catalog_key)).ok()?;
    w.add_raw(records).ok()?;
    w.commit().ok()?;
    fs::read(&p).ok()
}

/// A temporary file, removed when dropped (unless taken out).
struct TempName(Option<PathBuf>);

impl Drop for TempName {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> BlockCipher {
        BlockCipher::new(&[9; 32])
    }

    #[test]
    fn the_cache_is_sealed_and_damage_or_a_cut_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c/files");
        let id = [5u8; 16];
        let mut w = CacheWriter::create(&p, &id, key()).unwrap();
        // Enough records for several blocks.
        for i in 0..5000u64 {
            w.add(&Record::File(entry(&format!("/home/secret-name-{i:05}"), i))).unwrap();
        }
        w.commit().unwrap();
        let bytes = fs::read(&p).unwrap();
        assert!(bytes.len() > 3 * BLOCK);
        assert!(!bytes.windows(11).any(|w| w == b"secret-name"), "no path in the clear");
        let mut r = CacheReader::open(&p, &id, key()).unwrap().unwrap();
        assert_eq!(r.lookup(b"/home/secret-name-04999").unwrap().0.size, 4999);
        assert!(r.problem.is_none());
        // Another key reads nothing: the first block fails.
        let mut r = CacheReader::open(&p, &id, BlockCipher::new(&[8; 32])).unwrap().unwrap();
        assert_eq!(r.lookup(b"/home/secret-name-00000"), None);
        assert!(r.problem.as_deref().unwrap_or("").contains("failed authentication"), "{:?}", r.problem);
        let reread = |data: &[u8]| {
            let mut r =
                CacheReader::from_sealed(Box::new(std::io::Cursor::new(data.to_vec())), &id, key()).unwrap();
            let found = r.lookup(b"/home/secret-name-04999").is_some();
            (found, r.problem)
        };
        // A flipped byte in the second block: records before it are found, the rest is not.
        let mut flipped = bytes.clone();
        flipped[HEADER + BLOCK + 100] ^= 1;
        let (found, problem) = reread(&flipped);
        assert!(!found && problem.unwrap().contains("failed authentication"));
        // Cut at a block boundary: every block that is there opens, but the last one is missing.
        let first_len = u32::from_le_bytes(bytes[HEADER..HEADER + 4].try_into().unwrap()) as usize;
        let (found, problem) = reread(&bytes[..HEADER + 4 + first_len]);
        assert!(!found && problem.unwrap().contains("cut short or damaged"));
        // Something after the last block: then it is not the last, and fails.
        let (found, problem) = reread(&[bytes.clone(), vec![0; 3]].concat());
        assert!(!found && problem.unwrap().contains("failed authentication"));
        // The unsealed version 2 is no cache.
        let mut v2 = bytes[..25].to_vec();
        v2[8] = 2;
        assert!(CacheReader::from_sealed(Box::new(std::io::Cursor::new(v2)), &id, key()).is_err());
        assert_eq!(reread(&bytes), (true, None));
    }

    fn entry(path: &str, size: u64) -> CacheEntry {
        CacheEntry {
            path: path.as_bytes().to_vec(),
            size,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
            dev: 4,
            content: vec![[size as u8; 32]],
        }
    }

    #[test]
    fn scan_order() {
        assert_eq!(cmp_paths(b"/a/b", b"/a-c"), Ordering::Less); // bytewise, "/a-c" would sort first
        assert_eq!(cmp_paths(b"/a/b", b"/a/b"), Ordering::Equal);
        assert_eq!(cmp_paths(b"/a", b"/a/b"), Ordering::Less);
        assert_eq!(cmp_paths(b"/b", b"/a/z"), Ordering::Greater);
    }

    #[test]
    fn streamed_lookup_in_scan_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c/files");
        let id = [5u8; 16];
        let mut w = CacheWriter::create(&p, &id, key()).unwrap();
        for (path, size) in [("/a/1", 1), ("/a/2", 2), ("/a/b/3", 3), ("/c", 4)] {
            w.add(&Record::File(entry(path, size))).unwrap();
        }
        w.commit().unwrap();
        let mut r = CacheReader::open(&p, &id, key()).unwrap().unwrap();
        assert_eq!(r.lookup(b"/a/0"), None);
        assert_eq!(r.lookup(b"/a/2").unwrap().0.size, 2); // /a/1 is gone: skipped
        assert_eq!(r.next_content(), Some(&[[3u8; 32]][..]), "the next record's content");
        assert_eq!(r.lookup(b"/a/b/3").unwrap().0.size, 3);
        assert_eq!(r.lookup(b"/b"), None);
        assert_eq!(r.lookup(b"/c").unwrap().0.size, 4);
        assert_eq!(r.next_content(), None, "nothing after the last record");
        assert_eq!(r.lookup(b"/d"), None);
        assert!(r.problem.is_none());
        assert!(CacheReader::open(&p, &[6u8; 16], key()).is_err(), "another repository's cache");
        assert!(CacheReader::open(&dir.path().join("none"), &id, key()).unwrap().is_none());
    }

    fn dir(path: &str, entries: u64) -> Record {
        let tree = vec![[entries as u8; 32]];
        Record::Dir(DirEntry { path: path.into(), mtime_ns: 1, ctime_ns: 2, ino: 3, dev: 4, entries, tree })
    }

    #[test]
    fn a_directory_record_comes_after_everything_inside_it() {
        assert_eq!(cmp_positions((b"/a", true), (b"/a/z/y", false)), Ordering::Greater);
        assert_eq!(cmp_positions((b"/a", true), (b"/a/z", true)), Ordering::Greater);
        assert_eq!(cmp_positions((b"/a", true), (b"/a", false)), Ordering::Greater);
        assert_eq!(cmp_positions((b"/a", true), (b"/b", false)), Ordering::Less);
        assert_eq!(cmp_positions((b"/a/b", false), (b"/a", true)), Ordering::Less);
        assert_eq!(cmp_positions((b"/a", true), (b"/a", true)), Ordering::Equal);
        // Written as the scan goes: /d/1, /d/e/2, end of /d/e, /d/f, end of /d.
        let dir_ = tempfile::tempdir().unwrap();
        let p = dir_.path().join("files");
        let id = [5u8; 16];
        let mut w = CacheWriter::create(&p, &id, key()).unwrap();
        let recs = [
            Record::File(entry("/d/1", 1)),
            Record::File(entry("/d/e/2", 2)),
            dir("/d/e", 1),
            Record::File(entry("/d/f", 3)),
            dir("/d", 3),
        ];
        for r in &recs {
            w.add(r).unwrap();
        }
        w.commit().unwrap();
        let mut r = CacheReader::open(&p, &id, key()).unwrap().unwrap();
        assert_eq!(r.lookup(b"/d/1").unwrap().0.size, 1);
        // /d/e/2 is gone and /d/e/new is new: the directory's record is still found.
        assert_eq!(r.lookup(b"/d/e/new"), None);
        assert_eq!(r.dir(b"/d/e").map(Record::Dir), Some(recs[2].clone()));
        assert_eq!(r.lookup(b"/d/f").unwrap().0.size, 3);
        assert_eq!(r.dir(b"/d").map(Record::Dir), Some(recs[4].clone()));
        // Records copied as they are make the same cache.
        let mut r = CacheReader::open(&p, &id, key()).unwrap().unwrap();
        let mut raw = Vec::new();
        for (i, path) in [b"/d/1".as_slice(), b"/d/e/2"].into_iter().enumerate() {
            assert_eq!(r.lookup(path).map(|(e, _)| Record::File(e)), Some(recs[i].clone()));
            r.last_record(&mut raw);
        }
        assert!(r.dir(b"/d/e").is_some());
        r.last_record(&mut raw);
        let copy = dir_.path().join("copy");
        let mut w = CacheWriter::create(&copy, &id, key()).unwrap();
        w.add_raw(&raw).unwrap();
        w.add(&recs[3]).unwrap();
        w.add(&recs[4]).unwrap();
        w.commit().unwrap();
        // (The same records: each file has its own nonce prefix, so the bytes differ.)
        let plain = |path: &Path| {
            let f = BufReader::new(File::open(path).unwrap());
            let mut v = Vec::new();
            Unsealer::new(Box::new(f), &id, key()).unwrap().read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(plain(&copy), plain(&p));
        assert_ne!(fs::read(&copy).unwrap(), fs::read(&p).unwrap());
        let mut r = CacheReader::open(&p, &id, key()).unwrap().unwrap();
        // Skipping a whole directory (its files and its record) on the way to a later path.
        assert_eq!(r.lookup(b"/d/f").unwrap().0.size, 3);
        assert_eq!(r.dir(b"/d/e"), None, "asked out of order: not found, never wrong");
        assert_eq!(r.dir(b"/d").map(Record::Dir), Some(recs[4].clone()));
    }

    proptest! {
        #[test]
        fn damage_never_panics_and_never_lies(flip in 25usize..400, bit in 0u8..8) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("files");
            let id = [1u8; 16];
            let mut w = CacheWriter::create(&p, &id, key()).unwrap();
            let entries: Vec<_> = (0..10).map(|i| entry(&format!("/f{i}"), i)).collect();
            for e in &entries {
                w.add(&Record::File(e.clone())).unwrap();
            }
            w.commit().unwrap();
            let mut bytes = fs::read(&p).unwrap();
            let at = flip % bytes.len();
            bytes[at] ^= 1 << bit;
            fs::write(&p, &bytes).unwrap();
            if let Ok(Some(mut r)) = CacheReader::open(&p, &id, key()) {
                for e in &entries {
                    if let Some(got) = r.lookup(&e.path) {
                        prop_assert_eq!(&got.0, e);
                    }
                }
            }
        }
    }
}
