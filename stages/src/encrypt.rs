//! encrypt: Framed -> Sealed. Workers: cfg.workers (CPU). Holds one data key epoch per worker.
//!
//! Each worker seals blobs under its own random data key (AES-256-GCM) and starts a new key
//! after `rotate_after` bytes; the write stage puts each epoch's blobs into one pack, whose header
//! carries that key wrapped for the repository's recipient. Nonces are a per-key counter, so they
//! cannot repeat: a key is never reused across epochs or processes (it is random and 256 bits).
//! The blob id and kind are the associated data, so a blob cannot be swapped for another.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use crossbeam_channel::{Receiver, Sender};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::compress::NONCE_ROOM;
use crate::msg::{BlobId, BlobKind, Cancel, Framed, Sealed};
use crate::Workers;

pub const TAG_LEN: usize = 16;

/// A pack's data key. Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        DataKey(k)
    }
    pub fn from_bytes(b: [u8; 32]) -> Self {
        DataKey(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// One data key and the blobs sealed under it (one pack).
pub struct KeyEpoch {
    pub id: u64,
    pub key: DataKey,
    cipher: Aes256Gcm,
}

impl fmt::Debug for KeyEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyEpoch({})", self.id)
    }
}

impl KeyEpoch {
    pub fn new() -> Self {
        let key = DataKey::random();
        let cipher = Aes256Gcm::new(key.as_bytes().into());
        KeyEpoch { id: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed), key, cipher }
    }
}

impl Default for KeyEpoch {
    fn default() -> Self {
        Self::new()
    }
}

fn aad(id: &BlobId, kind: BlobKind) -> [u8; 33] {
    let mut a = [0u8; 33];
    a[..32].copy_from_slice(id);
    a[32] = kind as u8;
    a
}

/// Seals a framed buffer in place: `[nonce][ciphertext][tag]`.
pub fn seal(epoch: &KeyEpoch, counter: u64, id: &BlobId, kind: BlobKind, buf: &mut Vec<u8>) -> bool {
    let mut nonce = [0u8; NONCE_ROOM];
    nonce[..8].copy_from_slice(&counter.to_le_bytes());
    buf[..NONCE_ROOM].copy_from_slice(&nonce);
    let n = Nonce::from_slice(&nonce);
    match epoch.cipher.encrypt_in_place_detached(n, &aad(id, kind), &mut buf[NONCE_ROOM..]) {
        Ok(tag) => {
            buf.extend_from_slice(&tag);
            true
        }
        Err(_) => false,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("blob {} failed authentication (corrupt or tampered)", hex_id(.0))]
pub struct AuthError(pub BlobId);

pub fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens a sealed blob; returns the framed plaintext (see compress::unframe).
pub fn open(key: &DataKey, id: &BlobId, kind: BlobKind, sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
    let mut buf = sealed.to_vec();
    let frame = open_in_place(key, id, kind, &mut buf)?;
    buf.truncate(frame.end);
    buf.drain(..frame.start);
    Ok(buf)
}

/// Opens a sealed blob where it lies: on success `sealed[range]` is the framed plaintext.
pub fn open_in_place(
    key: &DataKey,
    id: &BlobId,
    kind: BlobKind,
    sealed: &mut [u8],
) -> Result<std::ops::Range<usize>, AuthError> {
    if sealed.len() < NONCE_ROOM + TAG_LEN {
        return Err(AuthError(*id));
    }
    let cipher = Aes256Gcm::new(key.as_bytes().into());
    let (nonce, rest) = sealed.split_at_mut(NONCE_ROOM);
    let end = rest.len() - TAG_LEN;
    let (ct, tag) = rest.split_at_mut(end);
    cipher
        .decrypt_in_place_detached(Nonce::from_slice(nonce), &aad(id, kind), ct, (&*tag).into())
        .map_err(|_| AuthError(*id))?;
    Ok(NONCE_ROOM..NONCE_ROOM + end)
}

#[derive(Clone, Copy, Debug)]
pub struct EncryptConfig {
    pub workers: usize,
    /// Sealed bytes per data key (one pack).
    pub rotate_after: u64,
}

pub fn spawn(
    cfg: EncryptConfig,
    input: Receiver<Framed>,
    outs: Vec<Sender<Sealed>>,
    cancel: Cancel,
) -> std::io::Result<Workers> {
    if outs.is_empty() {
        return Err(std::io::Error::other("encrypt stage needs at least one writer"));
    }
    Workers::spawn("encrypt", cfg.workers, move |i| {
        // Worker i feeds writer i: all blobs of one key epoch reach the same writer.
        let out = &outs[i % outs.len()];
        let mut epoch = Arc::new(KeyEpoch::new());
        let (mut counter, mut sealed_bytes) = (0u64, 0u64);
        for f in &input {
            if cancel.is_cancelled() {
                continue;
            }
            if sealed_bytes >= cfg.rotate_after {
                epoch = Arc::new(KeyEpoch::new());
                counter = 0;
                sealed_bytes = 0;
            }
            let mut buf = f.buf;
            if !seal(&epoch, counter, &f.id, f.kind, &mut buf) {
                cancel.cancel(); // AES-GCM only fails on absurd lengths: a bug, stop.
                continue;
            }
            counter += 1;
            sealed_bytes += buf.len() as u64;
            let s = Sealed {
                id: f.id,
                kind: f.kind,
                raw_len: f.raw_len,
                epoch: epoch.clone(),
                bytes: buf,
                members: f.members,
                permits: f.permits,
            };
            if out.send(s).is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{unframe, Compressor};

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let epoch = KeyEpoch::new();
        let id = [7u8; 32];
        let data = b"some file content ".repeat(100);
        let mut buf = Compressor::new(1).unwrap().frame(&data);
        assert!(seal(&epoch, 3, &id, BlobKind::Data, &mut buf));
        let frame = open(&epoch.key, &id, BlobKind::Data, &buf).unwrap();
        assert_eq!(unframe(&frame).unwrap(), data);
        // wrong id, wrong kind, any flipped byte: all refused
        assert!(open(&epoch.key, &[8u8; 32], BlobKind::Data, &buf).is_err());
        assert!(open(&epoch.key, &id, BlobKind::Tree, &buf).is_err());
        for i in 0..buf.len() {
            let mut t = buf.clone();
            t[i] ^= 0x40;
            assert!(open(&epoch.key, &id, BlobKind::Data, &t).is_err(), "byte {i}");
        }
        assert!(format!("{:?}", epoch.key).contains("redacted"));
    }
}
