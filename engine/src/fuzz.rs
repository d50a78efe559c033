//! Entry points for fuzzing every decoder of an on-disk format, shared by the cargo-fuzz
//! targets in `fuzz/` and the bounded run in CI (`chaos/tests/decoders.rs`). Each takes
//! arbitrary bytes and must return without panicking, allocating without bound, or looping;
//! it returns whether the input was accepted (so tests can tell that seeds are valid).
//!
//! Authenticated formats are fuzzed twice: as raw bytes (what a damaged disk gives: rejected
//! by authentication), and, when the first byte is odd, with the rest sealed under the test
//! keys first, so the fuzzer reaches the parser behind the authentication (what a holder of
//! a backup-only key, who can write authentic objects, could feed a reader).
use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use stages::BlobId;

use crate::crypto::{seal_catalog, WriterKeys};
use crate::keys::Key;

struct Keys {
    key: Key,
    wk: WriterKeys,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = Key::generate([7; 16]);
        let wk = key.writer_keys();
        Keys { key, wk }
    })
}

/// Splits off the mode byte: (sealed?, rest).
fn mode(data: &[u8]) -> (bool, &[u8]) {
    match data.split_first() {
        Some((m, rest)) => (m & 1 == 1, rest),
        None => (false, data),
    }
}

pub fn config(data: &[u8]) -> bool {
    let owner = crate::signing::SigningKey::from_seed(&[7; 32]).public();
    crate::config::Config::decode(data, &owner).is_ok()
        | crate::config::Config::decode_unverified(data).is_ok()
}

/// A whole pack: header, wrapped key, trailer (found before the parity, if any), and every
/// blob the trailer lists; a pack whose trailer fails is repaired from its parity first.
pub fn pack(data: &[u8]) -> bool {
    let k = keys();
    let repaired;
    let data = match crate::pack::trailer_from_bytes(trailer_keys(), "fuzz", data) {
        Err(_) => {
            let mut copy = data.to_vec();
            if !matches!(crate::format::parity::repair_whole(&mut copy, crate::pack::ends_plain), Ok(Some(_)))
            {
                return false;
            }
            repaired = copy;
            &repaired[..]
        }
        Ok(_) => data,
    };
    let Some(wrapped) = crate::pack::header_key(data) else { return false };
    let Ok(identity) = k.key.identity() else { return false };
    let keys = crate::pack::TrailerKeys { catalog: &k.wk.catalog_key, identity: Some(identity) };
    let Ok(entries) = crate::pack::trailer_from_bytes(keys, "fuzz", data) else { return false };
    let Ok(dk) = crate::crypto::unwrap_key(identity, wrapped) else { return false };
    let mut all = true;
    for e in entries.iter().take(10_000) {
        let (off, len) = (e.offset as usize, e.len as usize);
        let kind = e.kind().unwrap_or(stages::BlobKind::Data);
        let ok = data
            .get(off..off.saturating_add(len))
            .and_then(|sealed| stages::encrypt::open(&dk, &e.id, kind, sealed).ok())
            .is_some_and(|frame| stages::compress::unframe(&frame).is_ok());
        all &= ok;
    }
    all
}

fn trailer_keys() -> crate::pack::TrailerKeys<'static> {
    let k = keys();
    crate::pack::TrailerKeys { catalog: &k.wk.catalog_key, identity: k.key.identity.as_ref() }
}

/// An object's parity (`format::parity`): its footers and tables found from its end and size,
/// and the whole object repaired from them. Accepted when it has parity that reads.
pub fn parity(data: &[u8]) -> bool {
    let mut object = data.to_vec();
    matches!(crate::format::parity::repair_whole(&mut object, crate::pack::ends_plain), Ok(Some(_)))
}

/// The mode byte's second bit picks the format: a trailer of before 2026-12 (catalog key) or a
/// new one (a key derived from a data key).
pub fn pack_trailer(data: &[u8]) -> bool {
    let k = keys();
    let new = data.first().is_some_and(|m| m & 2 == 2);
    let data_key = stages::encrypt::DataKey::from_bytes([7; 32]);
    let new_key = crate::crypto::pack_trailer_key(&data_key);
    let (key, magic) = if new {
        (&new_key, crate::pack::TRAILER_MAGIC2)
    } else {
        (&k.wk.catalog_key, crate::pack::TRAILER_MAGIC)
    };
    match mode(data) {
        (false, raw) => crate::pack::decode_trailer(key, magic, "fuzz", raw).is_ok(),
        (true, plain) => {
            let sealed = seal_catalog(key, magic, plain);
            crate::pack::decode_trailer(key, magic, "fuzz", &sealed).is_ok()
        }
    }
}

pub fn index_segment(data: &[u8]) -> bool {
    let k = keys();
    let signer = crate::signing::SigningKey::from_seed(&[5; 32]);
    let keys = crate::index::SegmentKeys {
        catalog: &k.wk.catalog_key,
        identity: k.key.identity.as_ref(),
        repo_id: &[7; 16],
        owner: &[9; 32],
    };
    match mode(data) {
        (false, raw) => crate::index::decode_segment(keys, "fuzz", raw.to_vec()).is_ok(),
        (true, plain) => {
            // As an unsigned segment of before, and as signed ones of both later formats
            // (voucher, then packs with their entries; or voucher, head and ids).
            let mut old = crate::index::MAGIC_V1.to_vec();
            old.extend_from_slice(&seal_catalog(&k.wk.catalog_key, crate::index::MAGIC_V1, plain));
            let signed = crate::signing::seal(
                &signer,
                crate::signing::Purpose::IndexSegment,
                &[7; 16],
                plain.to_vec(),
            );
            let mut segments = vec![old];
            for magic in [crate::index::MAGIC_V2, crate::index::MAGIC] {
                let mut seg = magic.to_vec();
                seg.extend_from_slice(&seal_catalog(&k.wk.catalog_key, magic, &signed));
                segments.push(seg);
            }
            let mut any = false;
            for seg in segments {
                let Ok((voucher, body)) = crate::index::decode_segment(keys, "fuzz", seg) else { continue };
                let mut idx = crate::index::IndexBuilder::default();
                for (p, entries) in body.iter().take(10_000) {
                    idx.add_pack_vouched(*p, entries, voucher != crate::index::Voucher::Nobody);
                }
                let _ = idx.build();
                any = true;
            }
            any
        }
    }
}

pub fn tree(data: &[u8]) -> bool {
    crate::tree::Tree::decode("fuzz", data).is_ok()
}

pub fn snapshot(data: &[u8]) -> bool {
    let k = keys();
    let Ok(identity) = k.key.identity() else { return false };
    match mode(data) {
        (false, raw) => crate::snapshot::Snapshot::decode(identity, &k.key.repo_id, "fuzz", raw).is_ok(),
        (true, plain) => {
            // Unsigned, so that the bytes reach the snapshot's own decoder.
            let Ok(sealed) = age::encrypt(&k.key.recipient, plain) else { return false };
            let mut s = crate::snapshot::MAGIC_V1.to_vec();
            s.extend_from_slice(&sealed);
            crate::snapshot::Snapshot::decode(identity, &k.key.repo_id, "fuzz", &s).is_ok()
        }
    }
}

pub fn key_file(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| Key::decode(text, Path::new("fuzz.key")).is_ok())
}

/// A files cache: raw, a whole sealed file (header and blocks) under the test key; with the
/// mode bit, its records in the clear (what the blocks hold). Accepted when every record is.
pub fn files_cache(data: &[u8]) -> bool {
    let repo_id = [7u8; 16];
    let cipher = || crate::filescache::cache_key(&keys().wk.catalog_key);
    let r = match mode(data) {
        (false, raw) => {
            match crate::filescache::CacheReader::from_sealed(
                Box::new(Cursor::new(raw.to_vec())),
                &repo_id,
                cipher(),
            ) {
                Ok(r) => r,
                Err(_) => return false,
            }
        }
        (true, plain) => crate::filescache::CacheReader::from_records(Box::new(Cursor::new(plain.to_vec()))),
    };
    let mut r = r;
    // A path after every other in scan order: reads every record.
    let _ = r.lookup(&[0xff; 64]);
    r.problem.is_none()
}

/// The local name catalog (a cache, but parsed like any other format).
pub fn catalog(data: &[u8]) -> bool {
    let k = keys();
    let repo_id = [7u8; 16];
    match mode(data) {
        (false, raw) => {
            crate::catalog::Catalog::decode(&k.wk.catalog_key, &repo_id, "fuzz", raw.to_vec()).is_ok()
        }
        (true, plain) => crate::catalog::Catalog::from_plain(&repo_id, "fuzz", plain).is_ok(),
    }
}

pub fn blob_frame(data: &[u8]) -> bool {
    stages::compress::unframe(data).is_ok()
}

/// Every target by name.
/// A fuzz entry point: arbitrary bytes in, whether they were accepted out.
pub type Target = fn(&[u8]) -> bool;

pub const TARGETS: [(&str, Target); 11] = [
    ("config", config),
    ("pack", pack),
    ("parity", parity),
    ("pack_trailer", pack_trailer),
    ("index_segment", index_segment),
    ("tree", tree),
    ("snapshot", snapshot),
    ("key_file", key_file),
    ("files_cache", files_cache),
    ("catalog", catalog),
    ("blob_frame", blob_frame),
];

/// Valid inputs for each target (seeds to mutate): a real encoding of each format.
pub fn samples(target: &str) -> Vec<Vec<u8>> {
    let k = keys();
    let id: BlobId = [3; 32];
    let entry = crate::pack::BlobEntry { id, kind: 0, offset: 200, len: 64, raw_len: 40, inner: Some(8) };
    let entries = vec![entry, crate::pack::BlobEntry { inner: None, kind: 1, ..entry }];
    let sealed = |body: Vec<u8>| {
        let mut v = vec![1u8];
        v.extend(body);
        v
    };
    let node = crate::tree::Node {
        name: b"file\xff.txt".to_vec(),
        kind: crate::tree::NodeKind::File { size: 5, content: vec![id, id] },
        mode: 0o100644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1,
        ino: 42,
        nlink: 1,
        xattrs: vec![crate::tree::Xattr { name: b"user.x".to_vec(), value: b"\xff".to_vec() }],
        flags: 0x10,
        holes: vec![crate::tree::Hole { offset: 0, len: 3 }],
    };
    let dir = crate::tree::Node {
        name: b"sub".to_vec(),
        kind: crate::tree::NodeKind::Dir { subtree: vec![id] },
        holes: vec![],
        ..node.clone()
    };
    let snap = crate::snapshot::Snapshot {
        version: crate::snapshot::VERSION,
        time_ns: 5,
        host: "h".into(),
        user: "u".into(),
        paths: vec![b"/home/u".to_vec()],
        tags: vec!["t".into()],
        tree: vec![id],
        stats: Default::default(),
        errors: vec![crate::snapshot::FileError { path: b"/x".to_vec(), why: "gone".into() }],
        program: "bakare".into(),
        description: Some("nightly".into()),
        selection: vec!["--exclude".into(), "*.tmp".into()],
        original: Some("0f".repeat(32)),
    };
    // The same record in the layout of before (version 1 cannot hold the new fields).
    let snap_v1 = crate::snapshot::Snapshot {
        version: crate::snapshot::VERSION_1,
        description: None,
        selection: vec![],
        original: None,
        ..snap.clone()
    };
    match target {
        "config" => {
            let c = crate::config::Config {
                repo_id: [7; 16],
                chunk_min: 256 << 10,
                chunk_avg: 1 << 20,
                chunk_max: 4 << 20,
                pack_size: 32 << 20,
                grace_secs: 3600,
                key_fingerprint: k.key.fingerprint(),
                created_ns: 1,
                grace_prev_secs: 3600,
                grace_changed_ns: 1,
                compression: crate::config::Compression::Level(9),
                parity: 5,
                parity_packs: false,
            };
            vec![c.encode(&crate::signing::SigningKey::from_seed(&[7; 32]))]
        }
        "pack" => vec![sample_pack(true), sample_pack(false), with_parity(sample_pack(true), 5)],
        "parity" => vec![with_parity(sample_pack(true), 5), with_parity(sample_pack(true), 100), {
            // Both footers gone: found from the size.
            let mut p = with_parity(sample_pack(true), 20);
            let n = p.len();
            p[n - crate::format::parity::TAIL..].fill(0);
            p
        }],
        "pack_trailer" => vec![sealed(encode(&entries)), [vec![3u8], encode(&entries)].concat()],
        "index_segment" => vec![sealed(encode(&vec![([9u8; 32], entries.clone())]))],
        "tree" => vec![crate::tree::Tree { nodes: vec![node, dir] }.encode()],
        "snapshot" => {
            let mut v =
                vec![sealed(snap.body().unwrap_or_default()), sealed(snap_v1.body().unwrap_or_default())];
            if let Ok(enc) = snap.encode_unsigned(&k.key.recipient) {
                v.push([vec![0u8], enc].concat());
            }
            v
        }
        "key_file" => {
            let mut v = Vec::new();
            for key in [Ok(k.key.clone()), k.key.backup_only("fuzz")].into_iter().flatten() {
                if let Ok(text) = key.encode() {
                    v.push(text.into_bytes());
                }
            }
            v
        }
        "files_cache" => {
            use crate::filescache::{CacheEntry, DirEntry, Record};
            let (mtime_ns, ctime_ns, ino, dev) = (1, 2, 3, 4);
            let file = CacheEntry {
                path: b"/a/b".to_vec(),
                size: 9,
                mtime_ns,
                ctime_ns,
                ino,
                dev,
                content: vec![id],
            };
            let dir =
                DirEntry { path: b"/a".to_vec(), mtime_ns, ctime_ns, ino, dev, entries: 1, tree: vec![id] };
            let mut rec = Vec::new();
            for r in [Record::File(file), Record::Dir(dir)] {
                let body = encode(&r);
                rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
                rec.extend_from_slice(&body);
                rec.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
            }
            let mut v = vec![sealed(rec.clone())];
            // And the whole file, sealed as a backup writes it.
            if let Some(file) = crate::filescache::sealed_sample(&[7; 16], &k.wk.catalog_key, &rec) {
                v.push([vec![0u8], file].concat());
            }
            v
        }
        "catalog" => {
            let c = crate::catalog::Catalog::empty([7; 16]);
            let mut v = vec![sealed(encode(&c))];
            if let Ok(enc) = c.encode(&k.wk.catalog_key) {
                v.push([vec![0u8], enc].concat());
            }
            v
        }
        "blob_frame" => {
            let frame = |data: &[u8]| -> Vec<u8> {
                match stages::compress::Compressor::new(1) {
                    Ok(mut c) => c.frame(data)[stages::compress::NONCE_ROOM..].to_vec(),
                    Err(_) => Vec::new(),
                }
            };
            vec![frame(&b"hello hello hello hello ".repeat(50)), frame(b"x")]
        }
        _ => Vec::new(),
    }
}

/// A real one-blob pack sealed under the test keys: `new`, its trailer sealed as now
/// (BKPKEND2), else as before 2026-12 (BKPKEND1).
fn sample_pack(new: bool) -> Vec<u8> {
    let k = keys();
    let epoch = stages::encrypt::KeyEpoch::new();
    let Ok(wrapped) = crate::crypto::wrap_key(&k.key.recipient, &epoch.key) else { return Vec::new() };
    let data = b"some file content".repeat(20);
    let id = stages::hash::blob_id(k.wk.id_key.as_bytes(), &data);
    let Ok(mut c) = stages::compress::Compressor::new(1) else { return Vec::new() };
    let mut blob = c.frame(&data);
    if !stages::encrypt::seal(&epoch, 0, &id, stages::BlobKind::Data, &mut blob) {
        return Vec::new();
    }
    let mut pack = crate::pack::MAGIC.to_vec();
    pack.extend_from_slice(&(wrapped.len() as u32).to_le_bytes());
    pack.extend_from_slice(&wrapped);
    let entry = crate::pack::BlobEntry {
        id,
        kind: 0,
        offset: pack.len() as u32,
        len: blob.len() as u32,
        raw_len: data.len() as u32,
        inner: None,
    };
    pack.extend_from_slice(&blob);
    let body = postcard::to_allocvec(&vec![entry]).unwrap_or_default();
    let (trailer, end) = if new {
        let key = crate::crypto::pack_trailer_key(&epoch.key);
        (seal_catalog(&key, crate::pack::TRAILER_MAGIC2, &body), crate::pack::END2)
    } else {
        (seal_catalog(&k.wk.catalog_key, crate::pack::TRAILER_MAGIC, &body), crate::pack::END)
    };
    pack.extend_from_slice(&trailer);
    pack.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
    pack.extend_from_slice(end);
    pack
}

/// `pack` followed by its parity at `percent`.
fn with_parity(mut pack: Vec<u8>, percent: u8) -> Vec<u8> {
    let section = crate::format::parity::section(&pack, percent).unwrap_or_default();
    pack.extend_from_slice(&section);
    pack
}

/// postcard bytes of a sample (plain data: serializing cannot fail).
fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}
