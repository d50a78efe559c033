//! Who wrote an object: Ed25519 signatures. The owner's key, derived from the secret identity
//! (so only a full key has it), signs the control objects whose forgery could make an owner
//! operation delete or hide data (config, condemnation records, the writer registry) and the
//! owner's own snapshots. Each backup-only key carries a writer key of its own, registered by
//! the owner, that signs the snapshots it makes (docs/format.md, docs/security.md).
//!
//! What is signed is a BLAKE3 digest of the object's bytes, keyed by the kind of object
//! (`derive_key` context) and prefixed by the repository id, so a signature never carries over
//! to another kind of object or to another repository.
use std::fmt;

use ed25519_dalek::Signer as _;

/// An Ed25519 public key (the verifying half).
pub type PublicKey = [u8; 32];
pub type Signature = [u8; 64];

/// What a signature is for: part of what is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Config,
    GcRecord,
    WriterRecord,
    Snapshot,
    IndexSegment,
    Roster,
    Marker,
}

impl Purpose {
    fn context(self) -> &'static str {
        match self {
            Purpose::Config => "bakare 2026-12 signed config",
            Purpose::GcRecord => "bakare 2026-12 signed condemnation record",
            Purpose::WriterRecord => "bakare 2026-12 signed writer record",
            Purpose::Snapshot => "bakare 2026-12 signed snapshot",
            Purpose::IndexSegment => "bakare 2026-12 signed index segment",
            Purpose::Roster => "bakare 2026-12 signed writer roster entry",
            Purpose::Marker => "bakare 2026-12 signed index marker",
        }
    }
}

fn digest(purpose: Purpose, repo_id: &[u8; 16], msg: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(purpose.context());
    h.update(repo_id);
    h.update(msg);
    *h.finalize().as_bytes()
}

/// A signing key. ed25519-dalek zeroizes it on drop; it never prints.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", fingerprint(&self.public()))
    }
}

impl SigningKey {
    pub fn generate() -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The secret seed, for key files.
    pub fn seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.0.to_bytes())
    }

    /// The owner's key: derived from the secret identity, so only a full key can sign as owner.
    pub fn owner(identity: &age::x25519::Identity) -> SigningKey {
        use age::secrecy::ExposeSecret;
        let secret = identity.to_string();
        let seed = zeroize::Zeroizing::new(blake3::derive_key(
            "bakare 2026-12 owner signing key",
            secret.expose_secret().as_bytes(),
        ));
        SigningKey::from_seed(&seed)
    }

    pub fn public(&self) -> PublicKey {
        self.0.verifying_key().to_bytes()
    }

    pub fn sign(&self, purpose: Purpose, repo_id: &[u8; 16], msg: &[u8]) -> Signature {
        self.0.sign(&digest(purpose, repo_id, msg)).to_bytes()
    }
}

/// Whether `sig` is `key`'s signature of `msg` for `purpose` in repository `repo_id`. Strict
/// verification: no malleable or small-order forms.
pub fn verify(key: &PublicKey, purpose: Purpose, repo_id: &[u8; 16], msg: &[u8], sig: &Signature) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(key) else { return false };
    if vk.is_weak() {
        return false;
    }
    let sig = ed25519_dalek::Signature::from_bytes(sig);
    vk.verify_strict(&digest(purpose, repo_id, msg), &sig).is_ok()
}

/// `body | signer's public key (32) | signature (64)`: the form every signed object takes
/// inside its encryption.
pub fn seal(key: &SigningKey, purpose: Purpose, repo_id: &[u8; 16], mut body: Vec<u8>) -> Vec<u8> {
    let sig = key.sign(purpose, repo_id, &body);
    body.extend_from_slice(&key.public());
    body.extend_from_slice(&sig);
    body
}

/// The body of a `seal`ed object and the key that signed it, or None when the signature does
/// not verify. Who the signer is, and whether to trust it, is the caller's question.
pub fn open<'a>(purpose: Purpose, repo_id: &[u8; 16], data: &'a [u8]) -> Option<(&'a [u8], PublicKey)> {
    let split = data.len().checked_sub(96)?;
    let (body, tail) = data.split_at(split);
    let (key, sig) = tail.split_at(32);
    let key: PublicKey = key.try_into().ok()?;
    let sig: Signature = sig.try_into().ok()?;
    verify(&key, purpose, repo_id, body, &sig).then_some((body, key))
}

/// Short form shown to users: `abcd-ef01-2345-6789` (BLAKE3 of the key).
pub fn fingerprint(key: &PublicKey) -> String {
    let h = blake3::hash(key).to_hex();
    format!("{}-{}-{}-{}", &h[0..4], &h[4..8], &h[8..12], &h[12..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_key_purpose_repository_and_bytes() {
        let k = SigningKey::generate();
        let pk = k.public();
        let sig = k.sign(Purpose::Snapshot, &[1; 16], b"body");
        assert!(verify(&pk, Purpose::Snapshot, &[1; 16], b"body", &sig));
        assert!(!verify(&pk, Purpose::Config, &[1; 16], b"body", &sig));
        assert!(!verify(&pk, Purpose::Snapshot, &[2; 16], b"body", &sig));
        assert!(!verify(&pk, Purpose::Snapshot, &[1; 16], b"bodY", &sig));
        assert!(!verify(&SigningKey::generate().public(), Purpose::Snapshot, &[1; 16], b"body", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!verify(&pk, Purpose::Snapshot, &[1; 16], b"body", &bad));
        // garbage keys and signatures are refused, never panic
        assert!(!verify(&[0; 32], Purpose::Snapshot, &[1; 16], b"body", &[0; 64]));
        assert!(!verify(&[0xff; 32], Purpose::Snapshot, &[1; 16], b"body", &[0xff; 64]));
        assert_eq!(SigningKey::from_seed(&k.seed()).public(), pk);
    }

    #[test]
    fn sealed_bodies_open_only_unchanged() {
        let k = SigningKey::generate();
        let sealed = seal(&k, Purpose::GcRecord, &[3; 16], b"record".to_vec());
        assert_eq!(open(Purpose::GcRecord, &[3; 16], &sealed), Some((&b"record"[..], k.public())));
        assert_eq!(open(Purpose::Snapshot, &[3; 16], &sealed), None);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x20;
            assert_eq!(open(Purpose::GcRecord, &[3; 16], &bad), None, "byte {i}");
        }
        assert_eq!(open(Purpose::GcRecord, &[3; 16], &sealed[..95]), None);
    }

    #[test]
    fn the_owner_key_follows_from_the_identity_alone() {
        let id = age::x25519::Identity::generate();
        assert_eq!(SigningKey::owner(&id).public(), SigningKey::owner(&id).public());
        assert_ne!(
            SigningKey::owner(&id).public(),
            SigningKey::owner(&age::x25519::Identity::generate()).public()
        );
    }
}
