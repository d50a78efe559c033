//! Snapshot records: `"BKSNAP01" | age(postcard(Snapshot))` for the repository's recipient (time,
//! host and paths are private too). Named by the BLAKE3 of the file. Written first to `pending/`,
//! then to `snapshots/` (design.md section 4).
use serde::{Deserialize, Serialize};
use stages::BlobId;

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BKSNAP01";
pub const VERSION: u8 = 1;

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
    pub fn encode(&self, recipient: &age::x25519::Recipient) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
        let sealed = age::encrypt(recipient, &body).map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn decode(identity: &age::x25519::Identity, name: &str, data: &[u8]) -> Result<Snapshot> {
        if data.len() < 8 || &data[..8] != MAGIC {
            return Err(Error::corrupt("snapshot", name, "bad magic"));
        }
        let body = age::decrypt(identity, &data[8..])
            .map_err(|e| Error::corrupt("snapshot", name, format!("cannot decrypt: {e}")))?;
        let s: Snapshot = postcard::from_bytes(&body).map_err(|e| Error::corrupt("snapshot", name, e))?;
        if s.version != VERSION {
            return Err(Error::corrupt("snapshot", name, format!("unknown version {}", s.version)));
        }
        Ok(s)
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
        let e = s.encode(&id.to_public()).unwrap();
        assert_eq!(Snapshot::decode(&id, "s", &e).unwrap(), s);
        let mut t = e.clone();
        let n = t.len() - 5;
        t[n] ^= 1;
        assert!(Snapshot::decode(&id, "s", &t).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let id = age::x25519::Identity::generate();
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&g);
            let _ = Snapshot::decode(&id, "s", &d);
            let _ = Snapshot::decode(&id, "s", &g);
        }
    }
}
