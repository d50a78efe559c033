//! Key derivation and the two sealing schemes that are not per-pack blobs:
//! - the catalog (index segments, pack trailers of before 2026-12): XChaCha20-Poly1305 under a
//!   key derived from the writer key, with a random 192-bit nonce (safe to pick at random), so
//!   that a backup-only machine can read the index to dedup; newer pack trailers are sealed the
//!   same way under a key derived from the pack's data key (`pack_trailer_key`);
//! - data keys wrapped for the recipient with age (X25519), readable only with the secret identity.
use std::fmt;

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use stages::encrypt::DataKey;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret derived from or equal to the writer key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret32([u8; 32]);

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Secret32 {
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Secret32(k)
    }
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Secret32(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    pub fn derive(&self, context: &str) -> Secret32 {
        Secret32(blake3::derive_key(context, &self.0))
    }
}

/// Everything derived from the writer key.
#[derive(Clone, Debug)]
pub struct WriterKeys {
    pub id_key: Secret32,
    pub catalog_key: Secret32,
    pub chunk_seed: u64,
}

impl WriterKeys {
    pub fn derive(writer: &Secret32) -> Self {
        let seed = writer.derive("bakare 2026-11 chunker gear seed");
        let mut s = [0u8; 8];
        s.copy_from_slice(&seed.as_bytes()[..8]);
        WriterKeys {
            id_key: writer.derive("bakare 2026-11 blob id"),
            catalog_key: writer.derive("bakare 2026-11 catalog"),
            // never 0: fastcdc treats seed 0 as "unkeyed"
            chunk_seed: u64::from_le_bytes(s) | 1,
        }
    }
}

/// What a pack's trailer (BKPKEND2) is sealed with: derived from the pack's own data key, so
/// only the owner (and the pack's writer while it writes it) can read where its blobs are.
pub fn pack_trailer_key(data_key: &DataKey) -> Secret32 {
    Secret32(blake3::derive_key("bakare 2026-12 pack trailer", data_key.as_bytes()))
}

const XNONCE: usize = 24;

/// nonce || ciphertext+tag, with `magic` (the object's format tag) as associated data.
pub fn seal_catalog(key: &Secret32, magic: &[u8], plain: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let mut nonce = [0u8; XNONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    // Encryption only fails for messages beyond 256 GiB.
    if let Ok(ct) = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: magic }) {
        out.extend_from_slice(&ct);
    }
    out
}

/// `prefix`, then `value` encoded (postcard) and sealed as by `seal_catalog`, in one buffer of
/// exactly its final size: encoded into place and encrypted there. Encoding into a growing
/// buffer and sealing a copy of it held up to three times an index segment at once (two sinks
/// flushing their segments together were a peak of a backup of 300,000 files).
pub fn seal_catalog_value<T: serde::Serialize + ?Sized>(
    key: &Secret32,
    magic: &[u8],
    prefix: &[u8],
    value: &T,
) -> Result<Vec<u8>, String> {
    seal_catalog_padded(key, magic, prefix, value, 0)
}

/// `seal_catalog_value` with the plaintext followed by zeros up to `padded_len(len, min)`
/// (postcard decoders stop at the value's end, so readers need not know): the sealed length
/// tells little about what the value holds. For pack trailers, whose length would otherwise
/// give a pack's number of blobs to anyone holding it.
pub fn seal_catalog_padded<T: serde::Serialize + ?Sized>(
    key: &Secret32,
    magic: &[u8],
    prefix: &[u8],
    value: &T,
    min: usize,
) -> Result<Vec<u8>, String> {
    let len = postcard::experimental::serialized_size(value).map_err(|e| e.to_string())?;
    let padded = if min == 0 { len } else { padded_len(len, min) };
    let mut nonce = [0u8; XNONCE];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(prefix.len() + XNONCE + padded + 16);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&nonce);
    let start = out.len();
    let mut out = postcard::to_extend(value, out).map_err(|e| e.to_string())?;
    out.resize(start + padded.max(len), 0);
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), magic, &mut out[start..])
        .map_err(|_| format!("cannot seal {len} bytes"))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// `len` rounded up as Padmé does (Nikitin et al., 2019): at least `min`, then to a multiple
/// of 2^(e - s), where 2^e <= len and s is the bit length of e, which costs at most ~12 %
/// and leaves O(log log len) bits of the length visible.
pub fn padded_len(len: usize, min: usize) -> usize {
    let len = len.max(min).max(2);
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = u32::BITS - e.leading_zeros(); // bit length of e
    let mask = (1usize << (e - s)) - 1;
    (len + mask) & !mask
}

pub fn open_catalog(key: &Secret32, magic: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < XNONCE + 16 {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let (nonce, ct) = sealed.split_at(XNONCE);
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: magic }).ok()
}

/// `open_catalog` in place: the plaintext of `data[at..]` (which holds the nonce, the
/// ciphertext and the tag), decrypted where it lies. For large objects (index segments), where a
/// second copy of the plaintext was the peak of loading.
pub fn open_catalog_in_place<'a>(
    key: &Secret32,
    magic: &[u8],
    data: &'a mut [u8],
    at: usize,
) -> Option<&'a [u8]> {
    let sealed = data.get_mut(at..)?;
    if sealed.len() < XNONCE + 16 {
        return None;
    }
    let cipher = XChaCha20Poly1305::new(key.as_bytes().into());
    let (nonce, rest) = sealed.split_at_mut(XNONCE);
    let (ct, tag) = rest.split_at_mut(rest.len() - 16);
    cipher.decrypt_in_place_detached(XNonce::from_slice(nonce), magic, ct, (&*tag).into()).ok()?;
    Some(ct)
}

/// Wraps a data key for the repository's recipient (one age file of ~200 bytes).
pub fn wrap_key(recipient: &age::x25519::Recipient, key: &DataKey) -> Result<Vec<u8>, String> {
    age::encrypt(recipient, key.as_bytes()).map_err(|e| format!("age encryption failed: {e}"))
}

pub fn unwrap_key(identity: &age::x25519::Identity, wrapped: &[u8]) -> Result<DataKey, String> {
    let plain = zeroize::Zeroizing::new(
        age::decrypt(identity, wrapped).map_err(|e| format!("cannot unwrap data key: {e}"))?,
    );
    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| "wrapped data key has the wrong length")?;
    Ok(DataKey::from_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_to_its_encoding_after_its_prefix_in_a_buffer_of_its_size() {
        let k = Secret32::random();
        let value: Vec<(u32, String)> = (0..1000).map(|i| (i * 7919, format!("entry {i}"))).collect();
        let sealed = seal_catalog_value(&k, b"MAGIC", b"PREFIX", &value).unwrap();
        assert_eq!(sealed.capacity(), sealed.len(), "sized exactly, never grown");
        assert_eq!(&sealed[..6], b"PREFIX");
        let plain = open_catalog(&k, b"MAGIC", &sealed[6..]).unwrap();
        assert_eq!(plain, postcard::to_allocvec(&value).unwrap());
        assert!(open_catalog(&k, b"OTHER", &sealed[6..]).is_none());
    }

    #[test]
    fn padded_values_open_to_their_value_and_their_length_says_little() {
        assert_eq!([padded_len(1, 4096), padded_len(4096, 4096), padded_len(4097, 4096)], [4096, 4096, 4352]);
        for len in [5000usize, 70_000, 1 << 20, 3_000_001] {
            let p = padded_len(len, 0);
            assert!(p >= len && p - len <= len / 8, "{len} -> {p}");
        }
        let k = Secret32::random();
        let few: Vec<u64> = vec![1, 2, 3];
        let many: Vec<u64> = (0..500).collect();
        let (a, b) = (
            seal_catalog_padded(&k, b"M", &[], &few, 4096).unwrap(),
            seal_catalog_padded(&k, b"M", &[], &many, 4096).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let back: Vec<u64> = postcard::from_bytes(&open_catalog(&k, b"M", &b).unwrap()).unwrap();
        assert_eq!(back, many);
    }

    #[test]
    fn catalog_round_trip_and_tamper() {
        let k = Secret32::random();
        let s = seal_catalog(&k, b"MAGIC", b"index body");
        assert_eq!(open_catalog(&k, b"MAGIC", &s).unwrap(), b"index body");
        assert!(open_catalog(&k, b"OTHER", &s).is_none());
        let mut t = s.clone();
        t[30] ^= 1;
        assert!(open_catalog(&k, b"MAGIC", &t).is_none());
        assert!(open_catalog(&Secret32::random(), b"MAGIC", &s).is_none());
        assert!(open_catalog(&k, b"MAGIC", &s[..10]).is_none());
    }

    #[test]
    fn key_wrapping() {
        let id = age::x25519::Identity::generate();
        let dk = DataKey::random();
        let w = wrap_key(&id.to_public(), &dk).unwrap();
        assert_eq!(unwrap_key(&id, &w).unwrap().as_bytes(), dk.as_bytes());
        assert!(unwrap_key(&age::x25519::Identity::generate(), &w).is_err());
        assert!(format!("{:?}", Secret32::random()) == "[redacted]");
    }
}
