//! The writer registry (`writers/<hash>`): which backup-only keys the owner has registered,
//! and which it has revoked. Each record is signed by the owner and encrypted for the
//! recipient: `"BKWRITR1" | age(seal(owner, postcard(WriterRecord)))`. Records are never
//! changed: revoking a writer adds a record with `revoked` set, and a writer is revoked when any
//! record says so.
use std::collections::BTreeMap;

use io::Backend;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::signing::{self, PublicKey, Purpose, SigningKey};

pub const MAGIC: &[u8; 8] = b"BKWRITR1";
pub const VERSION: u8 = 1;
/// The name the owner's own snapshots show.
pub const OWNER: &str = "owner";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterRecord {
    pub version: u8,
    pub name: String,
    pub key: PublicKey,
    pub time_ns: i64,
    pub revoked: bool,
}

impl WriterRecord {
    pub fn encode(
        &self,
        owner: &SigningKey,
        repo_id: &[u8; 16],
        recipient: &age::x25519::Recipient,
    ) -> Result<(String, Vec<u8>)> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
        let signed = signing::seal(owner, Purpose::WriterRecord, repo_id, body);
        let sealed = age::encrypt(recipient, &signed).map_err(|e| Error::Pipeline(e.to_string()))?;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&sealed);
        Ok((format!("writers/{}", blake3::hash(&out).to_hex()), out))
    }

    /// A record the owner signed, or an error naming why not.
    pub fn decode(
        identity: &age::x25519::Identity,
        owner: &PublicKey,
        repo_id: &[u8; 16],
        name: &str,
        data: &[u8],
    ) -> Result<WriterRecord> {
        let bad = |why: String| Error::corrupt("writer record", name, why);
        let sealed = data.strip_prefix(MAGIC).ok_or_else(|| bad("bad magic".into()))?;
        let plain = age::decrypt(identity, sealed).map_err(|e| bad(format!("cannot decrypt: {e}")))?;
        let (body, signer) = signing::open(Purpose::WriterRecord, repo_id, &plain)
            .ok_or_else(|| bad("signature does not verify".into()))?;
        if signer != *owner {
            return Err(bad("not signed by the owner".into()));
        }
        let r: WriterRecord = postcard::from_bytes(body).map_err(|e| bad(e.to_string()))?;
        if r.version != VERSION {
            return Err(bad(format!("unknown version {}", r.version)));
        }
        Ok(r)
    }
}

/// Where a signer stands with the owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    Owner,
    Registered(String),
    Revoked(String),
    Unknown,
}

impl Standing {
    pub fn trusted(&self) -> bool {
        matches!(self, Standing::Owner | Standing::Registered(_))
    }
}

/// One registered writer, as `key list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    pub name: String,
    pub key: PublicKey,
    pub registered_ns: i64,
    pub revoked_ns: Option<i64>,
}

/// Every registered writer, by key.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub owner: Option<PublicKey>,
    pub writers: BTreeMap<PublicKey, Writer>,
}

impl Registry {
    /// Reads every record. A record that does not open, or is not the owner's, is skipped and
    /// named in the warnings (it can only be damage or a forgery, and it grants nothing).
    pub fn load(
        backend: &dyn Backend,
        identity: &age::x25519::Identity,
        repo_id: &[u8; 16],
    ) -> Result<(Registry, Vec<String>)> {
        let owner = SigningKey::owner(identity).public();
        let mut reg = Registry { owner: Some(owner), writers: BTreeMap::new() };
        let mut warnings = Vec::new();
        let mut names = backend.list("writers")?;
        names.sort();
        let mut records = Vec::new();
        for name in names {
            let data = match backend.get(&name) {
                Ok(d) => d,
                Err(io::StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            match WriterRecord::decode(identity, &owner, repo_id, &name, &data) {
                Ok(r) => records.push(r),
                Err(e) => warnings.push(format!("{e}; ignored")),
            }
        }
        // Registrations first, so a revocation always finds its writer.
        records.sort_by_key(|r| (r.revoked, r.time_ns));
        for r in records {
            let w = reg.writers.entry(r.key).or_insert_with(|| Writer {
                name: r.name.clone(),
                key: r.key,
                registered_ns: r.time_ns,
                revoked_ns: None,
            });
            if r.revoked {
                w.revoked_ns = Some(w.revoked_ns.map_or(r.time_ns, |t| t.min(r.time_ns)));
            }
        }
        Ok((reg, warnings))
    }

    pub fn standing(&self, key: &PublicKey) -> Standing {
        if self.owner.as_ref() == Some(key) {
            return Standing::Owner;
        }
        match self.writers.get(key) {
            Some(w) if w.revoked_ns.is_some() => Standing::Revoked(w.name.clone()),
            Some(w) => Standing::Registered(w.name.clone()),
            None => Standing::Unknown,
        }
    }

    /// The writers named `name` that are not revoked.
    pub fn active(&self, name: &str) -> Vec<&Writer> {
        self.writers.values().filter(|w| w.name == name && w.revoked_ns.is_none()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_the_owners_records_count_and_revocation_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let backend = io::LocalBackend::new(dir.path());
        let id = age::x25519::Identity::generate();
        let owner = SigningKey::owner(&id);
        let repo = [7; 16];
        let laptop = SigningKey::generate().public();
        let rec = |name: &str, key, revoked, t| WriterRecord {
            version: VERSION,
            name: name.into(),
            key,
            time_ns: t,
            revoked,
        };
        for (r, signer) in [
            (rec("laptop", laptop, false, 10), &owner),
            (rec("laptop", laptop, true, 20), &owner),
            // a forger registers itself with a key of its own
            (rec("evil", [9; 32], false, 30), &SigningKey::generate()),
        ] {
            let (name, bytes) = r.encode(signer, &repo, &id.to_public()).unwrap();
            backend.put(&name, &bytes).unwrap();
        }
        let (reg, warnings) = Registry::load(&backend, &id, &repo).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("not signed by the owner"), "{warnings:?}");
        assert_eq!(reg.standing(&laptop), Standing::Revoked("laptop".into()));
        assert_eq!(reg.standing(&[9; 32]), Standing::Unknown);
        assert_eq!(reg.standing(&owner.public()), Standing::Owner);
        assert!(reg.active("laptop").is_empty());
        // another repository's id does not verify
        let (reg, warnings) = Registry::load(&backend, &id, &[8; 16]).unwrap();
        assert_eq!((reg.writers.len(), warnings.len()), (0, 3));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..400)) {
            let id = age::x25519::Identity::generate();
            let mut d = MAGIC.to_vec();
            d.extend_from_slice(&g);
            let _ = WriterRecord::decode(&id, &[1; 32], &[0; 16], "w", &d);
            let _ = WriterRecord::decode(&id, &[1; 32], &[0; 16], "w", &g);
        }
    }
}
