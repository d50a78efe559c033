//! Hostile repositories: snapshots crafted by the holder of a backup-only key, written through
//! the engine's own writer (`BlobWriter`, sealed and indexed like any backup), with trees no
//! honest backup produces. The hostile suite restores and checks them as the owner.
//! Test code: it panics on anything unexpected.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;

use engine::gc::{self, GcRecord};
use engine::index::Index;
use engine::signing::SigningKey;
use engine::snapshot::{Snapshot, Stats, VERSION};
use engine::tree::{Node, NodeKind, Tree};
use engine::writer::BlobWriter;
use engine::{BlobId, Repository};
use stages::BlobKind;

/// An entry with ordinary metadata (mode 0644 or 0755, owned by the test's user).
pub fn node(name: impl AsRef<[u8]>, kind: NodeKind) -> Node {
    let mode = if matches!(kind, NodeKind::Dir { .. }) { 0o755 } else { 0o644 };
    Node {
        name: name.as_ref().to_vec(),
        kind,
        mode,
        uid: crate::testkit::my_uid(),
        gid: 0,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_000,
        ino: 0,
        nlink: 1,
        xattrs: Vec::new(),
        flags: 0,
        holes: vec![],
    }
}

pub fn dir(name: impl AsRef<[u8]>, subtree: Vec<BlobId>) -> Node {
    node(name, NodeKind::Dir { subtree })
}

pub fn symlink(name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Node {
    node(name, NodeKind::Symlink { target: target.as_ref().to_vec() })
}

/// Writes blobs and trees into a repository with whatever key it was opened with.
pub struct Forger<'a> {
    w: BlobWriter<'a>,
}

impl Forger<'_> {
    pub fn data(&mut self, bytes: &[u8]) -> BlobId {
        self.w.put(BlobKind::Data, bytes).unwrap()
    }

    /// A file entry holding `bytes` in one blob.
    pub fn file(&mut self, name: impl AsRef<[u8]>, bytes: &[u8]) -> Node {
        let id = self.data(bytes);
        node(name, NodeKind::File { size: bytes.len() as u64, content: vec![id] })
    }

    /// One tree blob with exactly these entries, in this order (never checked).
    pub fn tree(&mut self, nodes: Vec<Node>) -> BlobId {
        self.w.put_tree(&Tree { nodes }).unwrap()
    }
}

/// How a forged object is signed: what a backup-only key's holder can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signed {
    /// With the writer key the stolen backup-only key carries (a registered writer).
    Writer,
    /// With a key of the attacker's own, never registered.
    Stranger,
    /// Not at all (the format of before signatures).
    Unsigned,
}

/// Opens `repo` with `key` (a backup-only key, in the suite), lets `build` write blobs and
/// return the root directory's tree blobs, and commits a snapshot of them. Returns its id.
pub fn forge(repo: &Path, key: &Path, build: impl FnOnce(&mut Forger) -> Vec<BlobId>) -> String {
    forge_snapshot(repo, key, Signed::Writer, engine::clock::now_ns(), build)
}

/// `forge`, signed as `how` and dated `time_ns`.
pub fn forge_snapshot(
    repo: &Path,
    key: &Path,
    how: Signed,
    time_ns: i64,
    build: impl FnOnce(&mut Forger) -> Vec<BlobId>,
) -> String {
    forge_snapshot_with(repo, key, how, |s| s.time_ns = time_ns, build)
}

/// `forge`, signed as `how`, with the record changed by `edit` (host, paths, time: a writer
/// chooses them all).
pub fn forge_snapshot_with(
    repo: &Path,
    key: &Path,
    how: Signed,
    edit: impl FnOnce(&mut Snapshot),
    build: impl FnOnce(&mut Forger) -> Vec<BlobId>,
) -> String {
    let r = Repository::open(repo, Some(key)).unwrap();
    let index = Index::default();
    let mut f = Forger { w: BlobWriter::new(&r, &index).unwrap() };
    let tree = build(&mut f);
    f.w.finish().unwrap();
    let mut snap = Snapshot {
        version: VERSION,
        time_ns: engine::clock::now_ns(),
        host: "hostile".into(),
        user: "mallory".into(),
        paths: vec![b"/".to_vec()],
        tags: vec![],
        tree,
        stats: Stats::default(),
        errors: vec![],
        program: "forged".into(),
        description: None,
        selection: Vec::new(),
        original: None,
    };
    edit(&mut snap);
    let bytes = match how {
        Signed::Writer => snap.encode(&r.key.recipient, &r.key.snapshot_signer().unwrap(), &r.config.repo_id),
        Signed::Stranger => snap.encode(&r.key.recipient, &SigningKey::generate(), &r.config.repo_id),
        Signed::Unsigned => snap.encode_unsigned(&r.key.recipient),
    }
    .unwrap();
    let id = blake3::hash(&bytes).to_hex().to_string();
    r.backend.put(&format!("snapshots/{id}"), &bytes).unwrap();
    id
}

/// A condemnation record for `packs`, dated 1970, sealed with the catalog key the backup-only
/// key derives, and signed as `how` (never by the owner: the attacker cannot). Returns its name.
pub fn forge_gc_record(repo: &Path, key: &Path, packs: Vec<[u8; 32]>, how: Signed) -> String {
    let r = Repository::open(repo, Some(key)).unwrap();
    let rec = GcRecord { version: gc::VERSION, time_ns: 0, host: "hostile".into(), packs, segments: vec![] };
    let (name, bytes) = match how {
        Signed::Unsigned => {
            let body = postcard::to_allocvec(&rec).unwrap();
            let mut out = b"BKGCREC1".to_vec();
            out.extend_from_slice(&engine::crypto::seal_catalog(&r.wk.catalog_key, b"BKGCREC1", &body));
            (format!("gc/{}", blake3::hash(&out).to_hex()), out)
        }
        Signed::Writer => {
            rec.encode(&r.wk.catalog_key, &r.key.snapshot_signer().unwrap(), &r.config.repo_id).unwrap()
        }
        Signed::Stranger => {
            rec.encode(&r.wk.catalog_key, &SigningKey::generate(), &r.config.repo_id).unwrap()
        }
    };
    r.backend.put(&name, &bytes).unwrap();
    name
}

/// Replaces `config` with a copy whose grace period is 0, signed as `how` (`Unsigned`: the
/// checksummed form of format 2, which anyone can recompute).
pub fn forge_config(repo: &Path, key: &Path, how: Signed) {
    let r = Repository::open(repo, Some(key)).unwrap();
    let mut c = r.config.clone();
    c.grace_secs = 0;
    c.grace_prev_secs = 0;
    let bytes = match how {
        Signed::Unsigned => {
            let mut out = engine::config::MAGIC.to_vec();
            out.push(2);
            out.extend_from_slice(&postcard::to_allocvec(&c).unwrap());
            let sum = blake3::hash(&out);
            out.extend_from_slice(sum.as_bytes());
            out
        }
        Signed::Writer => c.encode(&r.key.snapshot_signer().unwrap()),
        Signed::Stranger => c.encode(&SigningKey::generate()),
    };
    r.backend.replace("config", &bytes).unwrap();
}

/// A decoy pack claiming to hold each of `ids` as data, with garbage in their place, listed by
/// an index segment signed as `how`: by the writer (what `decoy` writes), by a stranger's key,
/// or unsigned in the format of before 2026-12. Returns the decoy pack's file name.
pub fn decoy_signed(repo: &Path, key: &Path, ids: &[BlobId], how: Signed) -> String {
    let before: std::collections::BTreeSet<String> = list(repo, "index").into_iter().collect();
    let packs_before: std::collections::BTreeSet<String> = list(repo, "packs").into_iter().collect();
    // What the writer wrote: it cannot read its segment's places back (sealed to the owner).
    let body = decoy(repo, key, ids);
    let r = Repository::open(repo, Some(key)).unwrap();
    for name in list(repo, "index").into_iter().filter(|n| !before.contains(n)) {
        let bytes = match how {
            Signed::Writer => continue,
            Signed::Stranger => {
                let sealer =
                    engine::index::SegmentSealer { signer: SigningKey::generate(), ..r.sealer().unwrap() };
                sealer.own(&body).unwrap().1
            }
            Signed::Unsigned => {
                let m = engine::index::MAGIC_V1;
                engine::crypto::seal_catalog_value(&r.wk.catalog_key, m, m, &body).unwrap()
            }
        };
        r.backend.put(&format!("index/{}", blake3::hash(&bytes).to_hex()), &bytes).unwrap();
        r.backend.delete(&name).unwrap();
    }
    let pack = list(repo, "packs").into_iter().find(|n| !packs_before.contains(n)).unwrap();
    pack.rsplit('/').next().unwrap().to_string()
}

fn list(repo: &Path, dir: &str) -> Vec<String> {
    io::Backend::list(&io::LocalBackend::new(repo), dir).unwrap()
}

/// A decoy pack (and its index segment) claiming to hold each of `ids` as data, with garbage in
/// their place. Returns what the segment lists.
pub fn decoy(repo: &Path, key: &Path, ids: &[BlobId]) -> engine::index::SegmentBody {
    let r = Repository::open(repo, Some(key)).unwrap();
    let index = Index::default();
    let mut w = BlobWriter::new(&r, &index).unwrap();
    for id in ids {
        w.put_claiming(BlobKind::Data, *id, b"garbage in place of the owner's data").unwrap();
    }
    w.finish_listing().unwrap()
}

/// Turns `repo` back into format 2, as bakare wrote it before signatures: a checksummed config,
/// unsigned snapshots (re-encrypted, so they get new ids), no writer registry, and an unsigned
/// condemnation record for `packs`. Needs the full key. Returns the new snapshot ids.
pub fn downgrade(repo: &Path, full_key: &Path, packs: Vec<[u8; 32]>) -> Vec<String> {
    let r = Repository::open(repo, Some(full_key)).unwrap();
    let mut out = engine::config::MAGIC.to_vec();
    out.push(2);
    out.extend_from_slice(&postcard::to_allocvec(&r.config).unwrap());
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    let (snaps, _) = r.all_snapshots().unwrap();
    let mut ids = Vec::new();
    for e in snaps {
        let bytes = e.snapshot.encode_unsigned(&r.key.recipient).unwrap();
        let id = blake3::hash(&bytes).to_hex().to_string();
        r.backend.put(&format!("snapshots/{id}"), &bytes).unwrap();
        r.backend.delete(&format!("snapshots/{}", e.id)).unwrap();
        ids.push(id);
    }
    // Format 2's index segments were unsigned, and no migrate had vouched for them.
    unsign_index(&r);
    // Format 2 had no registry, and its writers removed their pending copies.
    for w in r
        .backend
        .list("writers")
        .unwrap()
        .into_iter()
        .chain(r.backend.list("roster").unwrap())
        .chain(r.backend.list("pending").unwrap())
    {
        r.backend.delete(&w).unwrap();
    }
    let rec = GcRecord { version: 1, time_ns: 0, host: "old".into(), packs, segments: vec![] };
    let body = postcard::to_allocvec(&rec).unwrap();
    let mut old = b"BKGCREC1".to_vec();
    old.extend_from_slice(&engine::crypto::seal_catalog(&r.wk.catalog_key, b"BKGCREC1", &body));
    r.backend.put(&format!("gc/{}", blake3::hash(&old).to_hex()), &old).unwrap();
    r.backend.replace("config", &out).unwrap();
    ids
}

/// Turns every index segment of `r` back into the unsigned form of before 2026-12, and removes
/// the mark that says the owner signed the index: a repository from before signed segments.
pub fn unsign_index(r: &Repository) {
    r.backend.delete(engine::index::MARK).unwrap();
    for name in r.backend.list("index").unwrap() {
        let (_, body) =
            engine::index::decode_segment(r.segment_keys(), &name, r.backend.get(&name).unwrap()).unwrap();
        let m = engine::index::MAGIC_V1;
        let bytes = engine::crypto::seal_catalog_value(&r.wk.catalog_key, m, m, &body).unwrap();
        r.backend.put(&format!("index/{}", blake3::hash(&bytes).to_hex()), &bytes).unwrap();
        r.backend.delete(&name).unwrap();
    }
}

/// Turns every index segment of `r` (opened with the full key) back into the format before
/// places were sealed (`BKINDEX2`: whole entries under the catalog key), each with its voucher,
/// signed by the owner as prune rewrote them.
pub fn unseal_places(r: &Repository) -> usize {
    let mut n = 0;
    for name in r.backend.list("index").unwrap() {
        let (voucher, body) =
            engine::index::decode_segment(r.segment_keys(), &name, r.backend.get(&name).unwrap()).unwrap();
        let plain = postcard::to_extend(&body, voucher.stored().to_vec()).unwrap();
        let signer = r.key.owner_signer().unwrap();
        let signed =
            engine::signing::seal(&signer, engine::signing::Purpose::IndexSegment, &r.config.repo_id, plain);
        let m = engine::index::MAGIC_V2;
        let mut bytes = m.to_vec();
        bytes.extend_from_slice(&engine::crypto::seal_catalog(&r.wk.catalog_key, m, &signed));
        r.backend.put(&format!("index/{}", blake3::hash(&bytes).to_hex()), &bytes).unwrap();
        r.backend.delete(&name).unwrap();
        n += 1;
    }
    n
}

/// Index segments (`copies` of them, so that one sorts after the genuine segments) listing each
/// pack of the repository with its trees only, its data left out: a backup-only key holds the catalog
/// key, so it can write such lies. What the packs hold is read with `full_key` (since 2026-12 only
/// the owner reads a pack's trailer; an attacker who learned it some other way is stronger).
pub fn forge_segments_hiding_blobs(repo: &Path, key: &Path, full_key: &Path, copies: usize) {
    let r = Repository::open(repo, Some(key)).unwrap();
    let owner = Repository::open(repo, Some(full_key)).unwrap();
    let mut body = Vec::new();
    for k in r.backend.list("packs").unwrap() {
        let id = engine::pack::parse_pack_key(&k).unwrap();
        let entries = engine::pack::read_trailer(r.backend.as_ref(), owner.trailer_keys(), &k).unwrap();
        body.push((id, entries.into_iter().filter(|e| e.kind() == Some(BlobKind::Tree)).collect::<Vec<_>>()));
    }
    for _ in 0..copies {
        let (name, bytes) = r.sealer().unwrap().own(&body).unwrap();
        r.backend.put(&name, &bytes).unwrap();
    }
}
