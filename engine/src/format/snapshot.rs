//! Snapshot records: `"BKSNAP02" | age(seal(writer, postcard(Snapshot)))` for the repository's
//! recipient (time, host and paths are private too), signed inside the encryption by the key
//! that made it: the owner's, or a registered writer's (so who wrote a snapshot is private too).
//! Named by the BLAKE3 of the file. Written first to `pending/`, then to `snapshots/`
//! (design.md section 4). `"BKSNAP01" | age(postcard(Snapshot))` is the unsigned form of before:
//! still read, never trusted by default (`bakare migrate` adopts them).
use serde::{Deserialize, Serialize};
use stages::BlobId;

use crate::error::{Error, Result};
use crate::signing::{self, PublicKey, Purpose, SigningKey};

pub const MAGIC: &[u8; 8] = b"BKSNAP02";
pub const MAGIC_V1: &[u8; 8] = b"BKSNAP01";
pub const VERSION: u8 = 1;

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
}

impl Snapshot {
    pub fn encode(
        &self,
        recipient: &age::x25519::Recipient,
        signer: &SigningKey,
        repo_id: &[u8; 16],
    ) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
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
        let s: Snapshot = postcard::from_bytes(body).map_err(|e| Error::corrupt("snapshot", name, e))?;
        if s.version != VERSION {
            return Err(Error::corrupt("snapshot", name, format!("unknown version {}", s.version)));
        }
        Ok((s, signer))
    }

    /// The unsigned form of before (tests of `migrate` and of how unsigned snapshots are
    /// treated build old repositories with it).
    pub fn encode_unsigned(&self, recipient: &age::x25519::Recipient) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
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
        assert_eq!(Snapshot::decode(&id, &[1; 16], "s", &old).unwrap(), (s, Signer::Nobody));
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
    }
}
