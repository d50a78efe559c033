//! The repository's `config` object: format version, id, chunker parameters, pack size, grace
//! period and the public key's fingerprint. Not secret; checksummed:
//! `"BKCONFIG" | version u8 | postcard(Config) | BLAKE3(all preceding bytes)`.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BKCONFIG";
pub const VERSION: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub repo_id: [u8; 16],
    pub chunk_min: u32,
    pub chunk_avg: u32,
    pub chunk_max: u32,
    /// Target size of a pack file.
    pub pack_size: u64,
    /// Prune's grace period G (design.md section 4), in seconds.
    pub grace_secs: u64,
    /// Fingerprint of the recipient every pack key is wrapped for.
    pub key_fingerprint: String,
    pub created_ns: i64,
}

impl Config {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        // Serializing plain fields into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_allocvec(self).unwrap_or_default());
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    pub fn decode(data: &[u8]) -> Result<Config> {
        let bad = |why: &str| Error::corrupt("config", "config", why);
        if data.len() < MAGIC.len() + 1 + 32 || &data[..8] != MAGIC {
            return Err(bad("not a bakare repository config"));
        }
        if data[8] != VERSION {
            return Err(bad(&format!("unsupported format version {}", data[8])));
        }
        let (body, sum) = data.split_at(data.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(bad("checksum mismatch"));
        }
        let cfg: Config = postcard::from_bytes(&body[9..]).map_err(|e| bad(&e.to_string()))?;
        let params = stages::chunk::ChunkParams {
            min: cfg.chunk_min,
            avg: cfg.chunk_avg,
            max: cfg.chunk_max,
            seed: 1,
        };
        if !params.is_valid() || cfg.pack_size == 0 {
            return Err(bad("chunker or pack parameters out of range"));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Config {
        Config {
            repo_id: [1; 16],
            chunk_min: 256 << 10,
            chunk_avg: 1 << 20,
            chunk_max: 4 << 20,
            pack_size: 32 << 20,
            grace_secs: 86400,
            key_fingerprint: "abcd".into(),
            created_ns: 5,
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let c = sample();
        let e = c.encode();
        assert_eq!(Config::decode(&e).unwrap(), c);
        for i in 0..e.len() {
            let mut d = e.clone();
            d[i] ^= 0x10;
            assert!(Config::decode(&d).is_err());
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Config::decode(&g);
            let mut m = sample().encode();
            let n = g.len().min(m.len());
            m[..n].copy_from_slice(&g[..n]);
            let _ = Config::decode(&m);
        }
    }
}
