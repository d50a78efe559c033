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

/// The roster (`roster/<hash>`): the writer registry as writers can read it, so that a backup
/// knows whose packs it may deduplicate against. Each entry names a writer's key, not its name,
/// is signed by the owner and sealed with the catalog key:
/// `"BKROSTR1" | seal_catalog("BKROSTR1", seal(owner, postcard(RosterEntry)))`.
pub const ROSTER_MAGIC: &[u8; 8] = b"BKROSTR1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    pub version: u8,
    pub key: PublicKey,
    pub time_ns: i64,
    pub revoked: bool,
}

impl RosterEntry {
    pub fn encode(
        &self,
        owner: &SigningKey,
        repo_id: &[u8; 16],
        catalog: &crate::crypto::Secret32,
    ) -> Result<(String, Vec<u8>)> {
        let body = postcard::to_allocvec(self).map_err(|e| Error::Pipeline(e.to_string()))?;
        let signed = signing::seal(owner, Purpose::Roster, repo_id, body);
        let mut out = ROSTER_MAGIC.to_vec();
        out.extend_from_slice(&crate::crypto::seal_catalog(catalog, ROSTER_MAGIC, &signed));
        Ok((format!("roster/{}", blake3::hash(&out).to_hex()), out))
    }

    pub fn decode(
        catalog: &crate::crypto::Secret32,
        owner: &PublicKey,
        repo_id: &[u8; 16],
        name: &str,
        data: &[u8],
    ) -> Result<RosterEntry> {
        let bad = |why: String| Error::corrupt("roster entry", name, why);
        let sealed = data.strip_prefix(ROSTER_MAGIC).ok_or_else(|| bad("bad magic".into()))?;
        let plain = crate::crypto::open_catalog(catalog, ROSTER_MAGIC, sealed)
            .ok_or_else(|| bad("failed authentication".into()))?;
        let (body, signer) = signing::open(Purpose::Roster, repo_id, &plain)
            .ok_or_else(|| bad("signature does not verify".into()))?;
        if signer != *owner {
            return Err(bad("not signed by the owner".into()));
        }
        let r: RosterEntry = postcard::from_bytes(body).map_err(|e| bad(e.to_string()))?;
        if r.version != VERSION {
            return Err(bad(format!("unknown version {}", r.version)));
        }
        Ok(r)
    }
}

/// The roster as a writer reads it: every (key, revoked) the owner recorded, and a warning per
/// entry that does not open or is not the owner's (it grants nothing).
pub fn load_roster(
    backend: &dyn Backend,
    catalog: &crate::crypto::Secret32,
    owner: &PublicKey,
    repo_id: &[u8; 16],
) -> Result<(Vec<RosterEntry>, Vec<String>)> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut names = backend.list("roster")?;
    names.sort();
    for name in names {
        let data = match backend.get(&name) {
            Ok(d) => d,
            Err(io::StorageError::NotFound { .. }) => continue,
            // An object that cannot be read grants nothing; it must not stop every backup.
            Err(e) => {
                warnings.push(format!("{e}; ignored"));
                continue;
            }
        };
        match RosterEntry::decode(catalog, owner, repo_id, &name, &data) {
            Ok(r) => out.push(r),
            Err(e) => warnings.push(format!("{e}; ignored")),
        }
    }
    Ok((out, warnings))
}

/// The keys of the roster's writers in good standing: registered and never revoked.
pub fn in_good_standing(entries: &[RosterEntry]) -> impl Iterator<Item = PublicKey> + '_ {
    entries
        .iter()
        .filter(|r| !r.revoked && !entries.iter().any(|o| o.revoked && o.key == r.key))
        .map(|r| r.key)
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

    /// Writers read the roster: only the owner's entries count, a revocation sticks, and a
    /// stranger can neither add itself nor lift a revocation.
    #[test]
    fn the_roster_is_the_owners_word() {
        let dir = tempfile::tempdir().unwrap();
        let backend = io::LocalBackend::new(dir.path());
        let catalog = crate::crypto::Secret32::random();
        let owner = SigningKey::generate();
        let repo = [7; 16];
        let (laptop, desktop, evil) = ([1; 32], [2; 32], [3; 32]);
        let e = |key, revoked| RosterEntry { version: VERSION, key, time_ns: 5, revoked };
        for (entry, signer) in [
            (e(laptop, false), &owner),
            (e(desktop, false), &owner),
            (e(laptop, true), &owner),
            (e(evil, false), &SigningKey::generate()),
        ] {
            let (name, bytes) = entry.encode(signer, &repo, &catalog).unwrap();
            assert!(name.starts_with("roster/"));
            backend.put(&name, &bytes).unwrap();
        }
        let (entries, warnings) = load_roster(&backend, &catalog, &owner.public(), &repo).unwrap();
        assert_eq!((entries.len(), warnings.len()), (3, 1), "{warnings:?}");
        assert_eq!(in_good_standing(&entries).collect::<Vec<_>>(), [desktop]);
        let other = crate::crypto::Secret32::random();
        let (entries, warnings) = load_roster(&backend, &other, &owner.public(), &repo).unwrap();
        assert_eq!((entries.len(), warnings.len()), (0, 4));
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
            let k = crate::crypto::Secret32::random();
            let mut r = ROSTER_MAGIC.to_vec();
            r.extend_from_slice(&g);
            let _ = RosterEntry::decode(&k, &[1; 32], &[0; 16], "r", &r);
        }
    }
}
