//! Condemnation records (`gc/<hash>`), written by prune's phase 1 (design.md section 4, rule 2):
//! which packs and index segments no snapshot referenced at time T1. Nothing is deleted then;
//! phase 2, a grace period later, rescues what any snapshot (pending or committed) references
//! and deletes the rest. Writers read these records so they never deduplicate against a
//! condemned pack (rule 3).
//!
//! `"BKGCREC2" | seal_catalog("BKGCREC2", seal(owner, postcard(GcRecord)))`, named by the
//! BLAKE3 of the bytes: sealed with the catalog key so that writers holding only a backup key
//! can read them, and signed by the owner, whose public key every key file knows, so that a
//! record a backup-only key forged (it holds the catalog key) counts for nobody. Version 1
//! records (sealed, unsigned) are refused the same way; `bakare migrate` removes them.
use std::collections::HashSet;

use io::Backend;
use serde::{Deserialize, Serialize};

use crate::crypto::{open_catalog, seal_catalog, Secret32};
use crate::error::{Error, Result};
use crate::pack::PackId;
use crate::signing::{self, PublicKey, Purpose, SigningKey};

pub const MAGIC: &[u8; 8] = b"BKGCREC2";
const MAGIC_V1: &[u8; 8] = b"BKGCREC1";
pub const VERSION: u8 = 2;

/// What it takes to read condemnation records: the catalog key opens them, the owner's
/// public key says whether they count.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    pub catalog: &'a Secret32,
    pub owner: &'a PublicKey,
    pub repo_id: &'a [u8; 16],
}

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
    pub fn encode(
        &self,
        catalog: &Secret32,
        owner: &SigningKey,
        repo_id: &[u8; 16],
    ) -> Result<(String, Vec<u8>)> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
        let signed = signing::seal(owner, Purpose::GcRecord, repo_id, body);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&seal_catalog(catalog, MAGIC, &signed));
        Ok((format!("gc/{}", blake3::hash(&out).to_hex()), out))
    }

    /// A record the owner wrote, or an error saying why this one does not count.
    pub fn decode(keys: Keys<'_>, name: &str, data: &[u8]) -> Result<GcRecord> {
        if data.starts_with(MAGIC_V1) {
            return Err(Error::corrupt("gc record", name, "unsigned (format version 1)"));
        }
        if data.len() < 8 || &data[..8] != MAGIC {
            return Err(Error::corrupt("gc record", name, "bad magic"));
        }
        let plain = open_catalog(keys.catalog, MAGIC, &data[8..])
            .ok_or_else(|| Error::corrupt("gc record", name, "failed authentication"))?;
        let (body, signer) = signing::open(Purpose::GcRecord, keys.repo_id, &plain)
            .ok_or_else(|| Error::corrupt("gc record", name, "signature does not verify"))?;
        if signer != *keys.owner {
            return Err(Error::corrupt("gc record", name, "not signed by the owner (forged)"));
        }
        let r: GcRecord = postcard::from_bytes(body).map_err(|e| Error::corrupt("gc record", name, e))?;
        if r.version != VERSION {
            return Err(Error::corrupt("gc record", name, format!("unknown version {}", r.version)));
        }
        Ok(r)
    }
}

/// The condemnation records in the repository.
#[derive(Debug, Default)]
pub struct Records {
    /// Those the owner wrote, by name.
    pub valid: Vec<(String, GcRecord)>,
    /// Those that do not count (forged, damaged, or unsigned from before), and why: nobody acts
    /// on them. A forged record only ever condemns, so ignoring it never loses data; a damaged
    /// genuine one leaves its packs in place until the next prune condemns them again.
    pub refused: Vec<(String, String)>,
}

/// Every condemnation record. Err when one cannot be fetched: then nobody can tell what is
/// condemned, and callers must not guess.
pub fn load(backend: &dyn Backend, keys: Keys<'_>) -> Result<Records> {
    let mut names = backend.list("gc")?;
    names.sort();
    let mut out = Records::default();
    for name in names {
        let data = match backend.get(&name) {
            Ok(d) => d,
            // deleted by a prune since the listing: done with
            Err(io::StorageError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        match GcRecord::decode(keys, &name, &data) {
            Ok(r) => out.valid.push((name, r)),
            Err(e) => out.refused.push((name, e.to_string())),
        }
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
        let owner = SigningKey::generate();
        let pk = owner.public();
        let keys = Keys { catalog: &k, owner: &pk, repo_id: &[4; 16] };
        let r = GcRecord {
            version: VERSION,
            time_ns: 5,
            host: "h".into(),
            packs: vec![[1; 32]],
            segments: vec!["index/ab".into()],
        };
        let (name, bytes) = r.encode(&k, &owner, &[4; 16]).unwrap();
        assert_eq!(GcRecord::decode(keys, &name, &bytes).unwrap(), r);
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert!(GcRecord::decode(keys, &name, &bad).is_err());
        // sealed with the right catalog key by someone who is not the owner: refused
        let (name, forged) = r.encode(&k, &SigningKey::generate(), &[4; 16]).unwrap();
        let err = GcRecord::decode(keys, &name, &forged).unwrap_err().to_string();
        assert!(err.contains("not signed by the owner"), "{err}");
        // an unsigned record of the old format: refused
        let mut v1 = MAGIC_V1.to_vec();
        v1.extend_from_slice(&seal_catalog(&k, MAGIC_V1, &postcard::to_allocvec(&r).unwrap()));
        assert!(GcRecord::decode(keys, "gc/v1", &v1).unwrap_err().to_string().contains("unsigned"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..300)) {
            let k = Secret32::random();
            let keys = Keys { catalog: &k, owner: &[1; 32], repo_id: &[0; 16] };
            let _ = GcRecord::decode(keys, "gc/x", &g);
        }
    }
}
