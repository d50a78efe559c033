//! Snapshot records: `"BKSNAP02" | age(seal(writer, postcard(Snapshot)))` for the repository's
//! recipient (time, host and paths are private too), signed inside the encryption by the key
//! that made it: the owner's, or a registered writer's (so who wrote a snapshot is private too).
//! Named by the BLAKE3 of the file. Written first to `pending/`, then to `snapshots/`
//! (design.md section 4). `"BKSNAP01" | age(postcard(Snapshot))` is the unsigned form of before:
//! still read, never trusted by default (`bakare migrate` adopts them).
//!
//! postcard is not self-describing, so the body's first byte (the `version` field) says which
//! layout follows: 1 (before descriptions, selections and `tag`), or 2. A record keeps the
//! version it was decoded from, and `body` writes it back in that layout: the abandonment
//! proof of an old writer's pending snapshot (commit.rs) is over those bytes, and `migrate`
//! re-signs old records without changing them.
use serde::{Deserialize, Serialize};
use stages::BlobId;

use crate::error::{Error, Result};
use crate::signing::{self, PublicKey, Purpose, SigningKey};

pub const MAGIC: &[u8; 8] = b"BKSNAP02";
pub const MAGIC_V1: &[u8; 8] = b"BKSNAP01";
/// The layout written by this version.
pub const VERSION: u8 = 2;
/// The layout before description, selection and original.
pub const VERSION_1: u8 = 1;
/// Longest description a snapshot may hold (a sentence or a paragraph, not a file).
pub const MAX_DESCRIPTION: usize = 64 << 10;

/// Who signed a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    /// Unsigned: written before snapshots were signed (or forged to look so).
    Nobody,
    Key(PublicKey),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub files: u64,
    pub dirs: u64,
    /// Total size of the files in the snapshot.
    pub bytes: u64,
    /// Bytes actually read (files found unchanged through the files cache are not read).
    pub read_bytes: u64,
    pub unchanged_files: u64,
    pub new_blobs: u64,
    pub new_bytes: u64,
    pub stored_bytes: u64,
    pub errors: u64,
    pub duration_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileError {
    pub path: Vec<u8>,
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u8,
    pub time_ns: i64,
    pub host: String,
    pub user: String,
    pub paths: Vec<Vec<u8>>,
    pub tags: Vec<String>,
    /// The root directory's tree blobs.
    pub tree: Vec<BlobId>,
    pub stats: Stats,
    pub errors: Vec<FileError>,
    pub program: String,
    /// What the user wrote about this run (`run --description`).
    pub description: Option<String>,
    /// The selection options the run used, as command-line words (`--exclude`, `*.tmp`, ...).
    pub selection: Vec<String>,
    /// The snapshot this record replaces (`bakare tag` writes a new record with other tags),
    /// the first one of a chain: a 64-hex id.
    pub original: Option<String>,
}

/// Layout 1, as written before `description`, `selection` and `original`.
#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    version: u8,
    time_ns: i64,
    host: String,
    user: String,
    paths: Vec<Vec<u8>>,
    tags: Vec<String>,
    tree: Vec<BlobId>,
    stats: Stats,
    errors: Vec<FileError>,
    program: String,
}

impl From<SnapshotV1> for Snapshot {
    fn from(s: SnapshotV1) -> Snapshot {
        Snapshot {
            version: VERSION_1,
            time_ns: s.time_ns,
            host: s.host,
            user: s.user,
            paths: s.paths,
            tags: s.tags,
            tree: s.tree,
            stats: s.stats,
            errors: s.errors,
            program: s.program,
            description: None,
            selection: Vec::new(),
            original: None,
        }
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Snapshot {
    /// The plaintext record, in the layout of `self.version`. A version-1 record cannot hold
    /// the fields added later: asking for one is an error, never a silent loss.
    pub fn body(&self) -> Result<Vec<u8>> {
        let enc = |e: postcard::Error| Error::Pipeline(format!("encoding a snapshot: {e}"));
        match self.version {
            VERSION => postcard::to_allocvec(self).map_err(enc),
            VERSION_1 => {
                if self.description.is_some() || !self.selection.is_empty() || self.original.is_some() {
                    return Err(Error::Invalid(
                        "a version-1 snapshot record has no room for a description, selection or original"
                            .into(),
                    ));
                }
                let v1 = SnapshotV1 {
                    version: VERSION_1,
                    time_ns: self.time_ns,
                    host: self.host.clone(),
                    user: self.user.clone(),
                    paths: self.paths.clone(),
                    tags: self.tags.clone(),
                    tree: self.tree.clone(),
                    stats: self.stats.clone(),
                    errors: self.errors.clone(),
                    program: self.program.clone(),
                };
                postcard::to_allocvec(&v1).map_err(enc)
            }
            v => Err(Error::Invalid(format!("cannot write a snapshot record of unknown version {v}"))),
        }
    }

    /// Decodes a plaintext record of any known version, checking what the types cannot say.
    fn from_body(name: &str, body: &[u8]) -> Result<Snapshot> {
        let bad = |e: postcard::Error| Error::corrupt("snapshot", name, e);
        let s: Snapshot = match body.first() {
            Some(&VERSION_1) => postcard::from_bytes::<SnapshotV1>(body).map_err(bad)?.into(),
            Some(&VERSION) => postcard::from_bytes(body).map_err(bad)?,
            Some(v) => return Err(Error::corrupt("snapshot", name, format!("unknown version {v}"))),
            None => return Err(Error::corrupt("snapshot", name, "empty record")),
        };
        if s.description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION) {
            return Err(Error::corrupt("snapshot", name, "description longer than 64 KiB"));
        }
        if s.original.as_deref().is_some_and(|o| !is_id(o)) {
            return Err(Error::corrupt("snapshot", name, "original is not a snapshot id"));
        }
        Ok(s)
    }

    pub fn encode(
        &self,
        recipient: &age::x25519::Recipient,
        signer: &SigningKey,
        repo_id: &[u8; 16],
    ) -> Result<Vec<u8>> {
        let body = self.body()?;
        let signed = signing::seal(signer, Purpose::Snapshot, repo_id, body);
        let sealed = age::encrypt(recipient, &signed).map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The snapshot and who signed it. A signature that does not verify is an error (damage or
    /// tampering); whether the signer is trusted is the caller's question (`writers::Registry`).
    pub fn decode(
        identity: &age::x25519::Identity,
        repo_id: &[u8; 16],
        name: &str,
        data: &[u8],
    ) -> Result<(Snapshot, Signer)> {
        let signed = match data.get(..8) {
            Some(m) if m == MAGIC => true,
            Some(m) if m == MAGIC_V1 => false,
            _ => return Err(Error::corrupt("snapshot", name, "bad magic")),
        };
        let plain = age::decrypt(identity, &data[8..])
            .map_err(|e| Error::corrupt("snapshot", name, format!("cannot decrypt: {e}")))?;
        let (body, signer) = if signed {
            let (body, key) = signing::open(Purpose::Snapshot, repo_id, &plain)
                .ok_or_else(|| Error::corrupt("snapshot", name, "signature does not verify"))?;
            (body, Signer::Key(key))
        } else {
            (&plain[..], Signer::Nobody)
        };
        Ok((Snapshot::from_body(name, body)?, signer))
    }

    /// The unsigned form of before (tests of `migrate` and of how unsigned snapshots are
    /// treated build old repositories with it).
    pub fn encode_unsigned(&self, recipient: &age::x25519::Recipient) -> Result<Vec<u8>> {
        let body = self.body()?;
        let sealed = age::encrypt(recipient, &body).map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut out = MAGIC_V1.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let id = age::x25519::Identity::generate();
        let s = Snapshot {
            version: VERSION,
            time_ns: 1,
            host: "h".into(),
            user: "u".into(),
            paths: vec![b"/x".to_vec()],
            tags: vec![],
            tree: vec![[1; 32]],
            stats: Stats::default(),
            errors: vec![FileError { path: vec![0xff, b'a'], why: "gone".into() }],
            program: "bakare".into(),
            description: Some("before the upgrade".into()),
            selection: vec!["--exclude".into(), "*.tmp".into()],
            original: Some("ab".repeat(32)),
        };
        let k = SigningKey::generate();
        let e = s.encode(&id.to_public(), &k, &[1; 16]).unwrap();
        assert_eq!(Snapshot::decode(&id, &[1; 16], "s", &e).unwrap(), (s.clone(), Signer::Key(k.public())));
        // signed for another repository: its signature does not verify here
        assert!(Snapshot::decode(&id, &[2; 16], "s", &e).is_err());
        let mut t = e.clone();
        let n = t.len() - 5;
        t[n] ^= 1;
        assert!(Snapshot::decode(&id, &[1; 16], "s", &t).is_err());
        let old = s.encode_unsigned(&id.to_public()).unwrap();
        assert_eq!(Snapshot::decode(&id, &[1; 16], "s", &old).unwrap(), (s.clone(), Signer::Nobody));
        // what a version-1 record cannot hold is refused, not dropped
        let v1 = Snapshot { version: VERSION_1, ..s.clone() };
        assert!(v1.encode(&id.to_public(), &k, &[1; 16]).is_err());
        assert!(Snapshot { version: 3, ..s }.body().is_err());
    }

    /// A version-1 body as bakare wrote it before version 2, byte by byte (postcard: varints,
    /// zigzag for i64, length-prefixed strings and sequences).
    fn v1_body() -> Vec<u8> {
        let mut b = vec![
            1,    // version
            0x0a, // time_ns 5, zigzag
            1, b'h', // host
            1, b'u', // user
            1, 2, b'/', b'x', // paths: ["/x"]
            1, 3, b'o', b'l', b'd', // tags: ["old"]
            1,    // tree: one blob id
        ];
        b.extend_from_slice(&[7; 32]);
        b.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // stats: files 3, the rest 0
        b.extend_from_slice(&[1, 1, b'f', 4, b'g', b'o', b'n', b'e']); // errors: [("f", "gone")]
        b.extend_from_slice(&[6, b'b', b'a', b'k', b'a', b'r', b'e']); // program
        b
    }

    #[test]
    fn version_1_records_still_decode_and_keep_their_bytes() {
        let id = age::x25519::Identity::generate();
        let want = Snapshot {
            version: VERSION_1,
            time_ns: 5,
            host: "h".into(),
            user: "u".into(),
            paths: vec![b"/x".to_vec()],
            tags: vec!["old".into()],
            tree: vec![[7; 32]],
            stats: Stats { files: 3, ..Stats::default() },
            errors: vec![FileError { path: b"f".to_vec(), why: "gone".into() }],
            program: "bakare".into(),
            description: None,
            selection: vec![],
            original: None,
        };
        // signed (BKSNAP02) and unsigned (BKSNAP01), as a writer of before sealed them
        let k = SigningKey::from_seed(&[9; 32]);
        let signed = signing::seal(&k, Purpose::Snapshot, &[1; 16], v1_body());
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&age::encrypt(&id.to_public(), &signed).unwrap());
        assert_eq!(
            Snapshot::decode(&id, &[1; 16], "s", &data).unwrap(),
            (want.clone(), Signer::Key(k.public()))
        );
        let mut data = MAGIC_V1.to_vec();
        data.extend_from_slice(&age::encrypt(&id.to_public(), &v1_body()).unwrap());
        let (got, signer) = Snapshot::decode(&id, &[1; 16], "s", &data).unwrap();
        assert_eq!((&got, signer), (&want, Signer::Nobody));
        // written back in its own layout, byte for byte (abandonment proofs are over these)
        assert_eq!(got.body().unwrap(), v1_body());
        // the same record as version 2 is longer by its three new fields, all empty
        let v2 = Snapshot { version: VERSION, ..got };
        let mut b = v2.body().unwrap();
        assert_eq!(b.split_off(b.len() - 3), [0, 0, 0]);
        assert_eq!(b[1..], v1_body()[1..]);
    }

    #[test]
    fn fields_the_types_cannot_check_are_checked() {
        let base = Snapshot::from_body("s", &v1_body()).unwrap();
        let v2 = |f: &dyn Fn(&mut Snapshot)| {
            let mut s = Snapshot { version: VERSION, ..base.clone() };
            f(&mut s);
            Snapshot::from_body("s", &s.body().unwrap())
        };
        assert!(v2(&|_| ()).is_ok());
        assert!(v2(&|s| s.original = Some("f".repeat(64))).is_ok());
        assert!(v2(&|s| s.original = Some("F".repeat(64))).is_err());
        assert!(v2(&|s| s.original = Some("../snapshots".into())).is_err());
        assert!(v2(&|s| s.description = Some("x".repeat(MAX_DESCRIPTION))).is_ok());
        assert!(v2(&|s| s.description = Some("x".repeat(MAX_DESCRIPTION + 1))).is_err());
        for bad in [&[][..], &[0], &[3, 0], &[255]] {
            assert!(Snapshot::from_body("s", bad).is_err(), "{bad:?}");
        }
        // a version-1 body cut anywhere, or read as version 2, is an error
        let b = v1_body();
        for n in 0..b.len() {
            assert!(Snapshot::from_body("s", &b[..n]).is_err(), "cut at {n}");
        }
        let mut as_v2 = b.clone();
        as_v2[0] = VERSION;
        assert!(Snapshot::from_body("s", &as_v2).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let id = age::x25519::Identity::generate();
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&g);
            let _ = Snapshot::decode(&id, &[0; 16], "s", &d);
            let _ = Snapshot::decode(&id, &[0; 16], "s", &g);
            // a sealed body of garbage, with and without a signature's room
            let sealed = age::encrypt(&id.to_public(), &g).unwrap();
            for magic in [MAGIC, MAGIC_V1] {
                let mut d = magic.to_vec();
                d.extend_from_slice(&sealed);
                let _ = Snapshot::decode(&id, &[0; 16], "s", &d);
            }
        }

        #[test]
        fn garbage_bodies_of_each_version_never_panic(v in 0u8..4, g in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut body = vec![v];
            body.extend_from_slice(&g);
            let _ = Snapshot::from_body("s", &body);
        }
    }
}
