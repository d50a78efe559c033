//! Condemnation records (`gc/<hash>`), written by prune's phase 1 (design.md section 4, rule 2):
//! which packs and index segments no snapshot referenced at time T1. Nothing is deleted then;
//! phase 2, a grace period later, rescues what any snapshot (pending or committed) references
//! and deletes the rest. Writers read these records so they never deduplicate against a
//! condemned pack (rule 3).
//!
//! `"BKGCREC1" | seal_catalog("BKGCREC1", postcard(GcRecord))`, named by the BLAKE3 of the bytes;
//! sealed with the catalog key so that writers holding only a backup key can read them, and so
//! that a forged or damaged record is refused.
use std::collections::HashSet;

use io::Backend;
use serde::{Deserialize, Serialize};

use crate::crypto::{open_catalog, seal_catalog, Secret32};
use crate::error::{Error, Result};
use crate::pack::PackId;

pub const MAGIC: &[u8; 8] = b"BKGCREC1";
pub const VERSION: u8 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRecord {
    pub version: u8,
    /// T1: when phase 1 listed the snapshots (wall clock of the pruning machine).
    pub time_ns: i64,
    pub host: String,
    pub packs: Vec<PackId>,
    /// Index segments superseded by the compacted segment phase 1 wrote.
    pub segments: Vec<String>,
}

impl GcRecord {
    pub fn encode(&self, key: &Secret32) -> Result<(String, Vec<u8>)> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&seal_catalog(key, MAGIC, &body));
        Ok((format!("gc/{}", blake3::hash(&out).to_hex()), out))
    }

    pub fn decode(key: &Secret32, name: &str, data: &[u8]) -> Result<GcRecord> {
        if data.len() < 8 || &data[..8] != MAGIC {
            return Err(Error::corrupt("gc record", name, "bad magic"));
        }
        let body = open_catalog(key, MAGIC, &data[8..])
            .ok_or_else(|| Error::corrupt("gc record", name, "failed authentication"))?;
        let r: GcRecord = postcard::from_bytes(&body).map_err(|e| Error::corrupt("gc record", name, e))?;
        if r.version != VERSION {
            return Err(Error::corrupt("gc record", name, format!("unknown version {}", r.version)));
        }
        Ok(r)
    }
}

/// Every condemnation record. Err when one cannot be read: then nobody can tell what is
/// condemned, and callers must not guess.
pub fn load(backend: &dyn Backend, key: &Secret32) -> Result<Vec<(String, GcRecord)>> {
    let mut names = backend.list("gc")?;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let data = backend.get(&name)?;
        out.push((name.clone(), GcRecord::decode(key, &name, &data)?));
    }
    Ok(out)
}

pub fn condemned_packs(records: &[(String, GcRecord)]) -> HashSet<PackId> {
    records.iter().flat_map(|(_, r)| r.packs.iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let k = Secret32::random();
        let r = GcRecord {
            version: VERSION,
            time_ns: 5,
            host: "h".into(),
            packs: vec![[1; 32]],
            segments: vec!["index/ab".into()],
        };
        let (name, bytes) = r.encode(&k).unwrap();
        assert_eq!(GcRecord::decode(&k, &name, &bytes).unwrap(), r);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(GcRecord::decode(&k, &name, &bad).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = GcRecord::decode(&Secret32::random(), "gc/x", &g);
        }
    }
}
