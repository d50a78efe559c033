//! The repository's `config` object: format version, id, chunker parameters, pack size, grace
//! period and the public key's fingerprint. Not secret; signed by the owner (version 3):
//! `"BKCONFIG" | 3 | postcard(Config) | owner's public key (32) | signature (64)`.
//! Versions 1 and 2 (`... | BLAKE3(all preceding bytes)`, which anyone can recompute) are read
//! only by `bakare migrate`, which signs them. Version 2 added the previous grace period and
//! when it changed. Since 2026-12 a version 3 body may be followed by `postcard(Extension)`
//! (the compression setting): decoders before it ignore trailing bytes, and a body without it
//! reads as `Compression::Auto`. A second extension (`Extension2`) follows it with the parity
//! percent; a config with parity is version 5 (`VERSION_PARITY`), so bakare of before refuses
//! the repository rather than misread packs that end in parity; without parity it stays 4.
//! `config` is the one object that is replaced (atomically) rather than only
//! created: when the grace period changes, and by `migrate`.
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::signing::{self, PublicKey, Purpose, SigningKey};

pub const MAGIC: &[u8; 8] = b"BKCONFIG";
pub const VERSION: u8 = 4;
/// Signed, from before index segments and pack trailers sealed where blobs are to the owner
/// (2026-12): read alike. Version 4 is the same object; its number makes older bakare refuse
/// the repository instead of misreading the new segments and trailers (an older `repair index`
/// would delete what it cannot read, and an older writer would keep writing sizes readable with
/// a backup-only key). `init` writes 4, `migrate` signs a version 3 config again as 4.
pub const VERSION_BEFORE_SEALED_PLACES: u8 = 3;
/// Version 4 whose packs may end in parity (`format::parity`): written only when the
/// config's parity is above 0, so repositories without it stay readable by older bakare.
pub const VERSION_PARITY: u8 = 5;
/// The shortest grace period prune honours without `--unsafe-now`: writers need time to
/// notice a condemnation, and a forged short period must not make prune delete at once.
pub const MIN_GRACE_SECS: u64 = 3600;

/// How a config object is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seal {
    /// Versions 1 and 2: a checksum, which proves nothing about who wrote it.
    Checksum(u8),
    /// Versions 4 and 5: signed by this key (verified; whether it is the owner's is the caller's check).
    Signed(PublicKey),
    /// Version 3: the same, from before sealed places (`VERSION_BEFORE_SEALED_PLACES`).
    SignedBefore(PublicKey),
}

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
    /// The grace period before the last change, and when it changed: until the old period has
    /// passed since the change, writers and pruners still honour it (prune waits the longer,
    /// writers refresh after half the shorter), since other processes may have read the old one.
    pub grace_prev_secs: u64,
    pub grace_changed_ns: i64,
    /// Encoded after the fields above, in the `Extension` (not by this derive), so that configs
    /// written before it still decode.
    #[serde(skip)]
    pub compression: Compression,
    /// Recovery shards per 100 data shards appended to new packs (`format::parity`); 0 is off.
    /// In `Extension2`.
    #[serde(skip)]
    pub parity: u8,
    /// Parity is off, but was on: packs may still end in parity, so the config stays version 5
    /// (an older bakare reading version 4 would take those packs for damaged ones).
    #[serde(skip)]
    pub parity_packs: bool,
}

/// Fields added to format 3 after its first release, appended to the body. New fields go at its
/// end: a decoder ignores bytes after what it knows.
#[derive(Serialize, Deserialize)]
struct Extension {
    compression: Compression,
}

/// After `Extension`: the parity percent (configs without it have none).
#[derive(Serialize, Deserialize)]
struct Extension2 {
    parity: u8,
}

/// How data blobs are compressed (`init --compression`, `config --compression`). Readers need
/// no setting: every blob's frame names its codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// The measured default: zstd level 1 for chunks, level 3 for bundles of small files
    /// (design.md 1b; `stages::compress::BUNDLE_LEVEL`).
    #[default]
    Auto,
    /// Stored raw (codec 0).
    Off,
    /// zstd at this level (1..=19) for chunks and bundles alike.
    Level(u8),
}

impl Compression {
    pub const MAX_LEVEL: u8 = 19;

    /// `auto`, `off` (or `0`, `none`), `max` (19), or a zstd level 1..=19.
    pub fn parse(s: &str) -> std::result::Result<Compression, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Compression::Auto),
            "off" | "none" | "0" => Ok(Compression::Off),
            "max" => Ok(Compression::Level(Self::MAX_LEVEL)),
            n => match n.parse::<u8>() {
                Ok(l) if (1..=Self::MAX_LEVEL).contains(&l) => Ok(Compression::Level(l)),
                _ => Err(format!("{s:?}: expected auto, off, max or a zstd level from 1 to 19")),
            },
        }
    }

    /// zstd levels for (chunks, bundles of small files); None stores raw.
    pub fn levels(self) -> (Option<i32>, Option<i32>) {
        match self {
            Compression::Auto => (Some(1), Some(stages::compress::BUNDLE_LEVEL)),
            Compression::Off => (None, None),
            Compression::Level(l) => (Some(l.into()), Some(l.into())),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Auto => write!(f, "auto"),
            Compression::Off => write!(f, "off"),
            Compression::Level(l) => write!(f, "{l}"),
        }
    }
}

/// Version 1: the same without the grace period's history.
#[derive(Deserialize)]
struct ConfigV1 {
    repo_id: [u8; 16],
    chunk_min: u32,
    chunk_avg: u32,
    chunk_max: u32,
    pack_size: u64,
    grace_secs: u64,
    key_fingerprint: String,
    created_ns: i64,
}

impl Config {
    /// Sets the parity percent for new packs. Once packs may end in parity, the config stays
    /// version 5 even with parity off (`parity_packs`).
    pub fn set_parity(&mut self, percent: u8) {
        let had = self.parity > 0 || self.parity_packs;
        self.parity = percent;
        self.parity_packs = had && percent == 0;
    }

    /// How long prune must wait after condemning before deleting, at wall time `now_ns`.
    pub fn prune_grace_ns(&self, now_ns: i64) -> i64 {
        let cur = secs_ns(self.grace_secs);
        let prev = secs_ns(self.grace_prev_secs);
        let g = if now_ns < self.grace_changed_ns.saturating_add(prev) { cur.max(prev) } else { cur };
        g.max(secs_ns(MIN_GRACE_SECS))
    }

    /// The shortest grace period some prune may act on at `now_ns`: during a change, the
    /// shorter of the current and previous ones (another prune may already use the new one),
    /// after it the current one; never under `MIN_GRACE_SECS`.
    pub fn shortest_grace_ns(&self, now_ns: i64) -> i64 {
        let cur = secs_ns(self.grace_secs);
        let prev = secs_ns(self.grace_prev_secs);
        let g = if now_ns < self.grace_changed_ns.saturating_add(prev) { cur.min(prev) } else { cur };
        g.max(secs_ns(MIN_GRACE_SECS))
    }

    /// The grace period a writer assumes: the shorter of the current and previous ones.
    pub fn writer_grace_ns(&self) -> i64 {
        secs_ns(self.grace_secs).min(secs_ns(self.grace_prev_secs))
    }

    /// Sets a new grace period, remembering the old one.
    pub fn set_grace(&mut self, secs: u64, now_ns: i64) {
        // A change during a change: keep the longest period still in force as "previous".
        self.grace_prev_secs = if now_ns < self.grace_changed_ns.saturating_add(secs_ns(self.grace_prev_secs))
        {
            self.grace_secs.max(self.grace_prev_secs)
        } else {
            self.grace_secs
        };
        self.grace_secs = secs;
        // Never earlier than the change before: a clock behind the last writer's would make
        // this config look older than that one (prune would take it for one put back).
        self.grace_changed_ns = now_ns.max(self.grace_changed_ns.saturating_add(1));
    }

    /// Version 4 (5 with parity), signed by the owner.
    pub fn encode(&self, owner: &SigningKey) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let with_parity = self.parity > 0 || self.parity_packs;
        out.push(if with_parity { VERSION_PARITY } else { VERSION });
        // Serializing plain fields into a Vec cannot fail.
        out.extend_from_slice(&postcard::to_allocvec(self).unwrap_or_default());
        let ext = Extension { compression: self.compression };
        out.extend_from_slice(&postcard::to_allocvec(&ext).unwrap_or_default());
        if with_parity {
            out.extend_from_slice(
                &postcard::to_allocvec(&Extension2 { parity: self.parity }).unwrap_or_default(),
            );
        }
        signing::seal(owner, Purpose::Config, &self.repo_id, out)
    }

    /// The config, if the owner signed it: what every command reads.
    pub fn decode(data: &[u8], owner: &PublicKey) -> Result<Config> {
        match Config::decode_unverified(data)? {
            (c, Seal::Signed(k) | Seal::SignedBefore(k)) if k == *owner => Ok(c),
            (_, Seal::Signed(_) | Seal::SignedBefore(_)) => Err(Error::corrupt(
                "config",
                "config",
                "not signed by this repository's owner (forged, or another repository's): refusing it",
            )),
            (_, Seal::Checksum(v)) => Err(Error::Legacy(format!(
                "the repository's config is format version {v}, from before owner-signed control objects; \
                 run `bakare migrate` once with the full key"
            ))),
        }
    }

    /// The config and how it is sealed, without knowing the owner's key: to find the key, to
    /// copy a repository, and for `migrate`. A version 3 signature is verified against the key
    /// it names.
    pub fn decode_unverified(data: &[u8]) -> Result<(Config, Seal)> {
        let bad = |why: &str| Error::corrupt("config", "config", why);
        if data.len() < MAGIC.len() + 1 + 32 || &data[..8] != MAGIC {
            return Err(bad("not a bakare repository config"));
        }
        let version = data[8];
        let (body, seal) = match version {
            1 | 2 => {
                let (body, sum) = data.split_at(data.len() - 32);
                if blake3::hash(body).as_bytes() != sum {
                    return Err(bad("checksum mismatch"));
                }
                (&body[9..], Seal::Checksum(version))
            }
            VERSION_BEFORE_SEALED_PLACES | VERSION | VERSION_PARITY => {
                // The repository id is both inside what is signed and part of the signature's
                // message, so it is read first and confirmed after.
                let Some(body) = data.len().checked_sub(96).and_then(|split| data.get(9..split)) else {
                    return Err(bad("truncated"));
                };
                let cfg: Config = postcard::from_bytes(body).map_err(|e| bad(&e.to_string()))?;
                let (_, key) = signing::open(Purpose::Config, &cfg.repo_id, data)
                    .ok_or_else(|| bad("signature does not verify (damaged or edited)"))?;
                let seal = if version == VERSION_BEFORE_SEALED_PLACES {
                    Seal::SignedBefore(key)
                } else {
                    Seal::Signed(key)
                };
                (body, seal)
            }
            v => return Err(bad(&format!("unsupported format version {v}"))),
        };
        let cfg: Config = if version == 1 {
            let v1: ConfigV1 = postcard::from_bytes(body).map_err(|e| bad(&e.to_string()))?;
            Config {
                repo_id: v1.repo_id,
                chunk_min: v1.chunk_min,
                chunk_avg: v1.chunk_avg,
                chunk_max: v1.chunk_max,
                pack_size: v1.pack_size,
                grace_secs: v1.grace_secs,
                key_fingerprint: v1.key_fingerprint,
                created_ns: v1.created_ns,
                grace_prev_secs: v1.grace_secs,
                grace_changed_ns: v1.created_ns,
                compression: Compression::Auto,
                parity: 0,
                parity_packs: false,
            }
        } else {
            let (mut cfg, rest): (Config, _) =
                postcard::take_from_bytes(body).map_err(|e| bad(&e.to_string()))?;
            if !rest.is_empty() {
                let (ext, rest): (Extension, _) =
                    postcard::take_from_bytes(rest).map_err(|e| bad(&e.to_string()))?;
                cfg.compression = ext.compression;
                if !rest.is_empty() {
                    let ext: Extension2 = postcard::from_bytes(rest).map_err(|e| bad(&e.to_string()))?;
                    cfg.parity = ext.parity;
                }
                cfg.parity_packs = version == VERSION_PARITY && cfg.parity == 0;
            }
            cfg
        };
        if cfg.parity > crate::format::parity::MAX_PERCENT {
            return Err(bad(&format!("parity {} % out of range", cfg.parity)));
        }
        // Packs with parity in a repository older bakare would read: not written by bakare.
        if cfg.parity > 0 && version != VERSION_PARITY {
            return Err(bad(&format!("parity {} % in a format version {version} config", cfg.parity)));
        }
        if let Compression::Level(l) = cfg.compression {
            if !(1..=Compression::MAX_LEVEL).contains(&l) {
                return Err(bad(&format!("compression level {l} out of range")));
            }
        }
        let params = stages::chunk::ChunkParams {
            min: cfg.chunk_min,
            avg: cfg.chunk_avg,
            max: cfg.chunk_max,
            seed: 1,
        };
        if !params.is_valid() || cfg.pack_size == 0 {
            return Err(bad("chunker or pack parameters out of range"));
        }
        Ok((cfg, seal))
    }
}

fn secs_ns(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1_000_000_000).saturating_mul(1_000_000_000)
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
            grace_prev_secs: 86400,
            grace_changed_ns: 5,
            compression: Compression::Auto,
            parity: 0,
            parity_packs: false,
        }
    }

    /// Version 3 as bakare wrote it before the extension: the body ends after the grace fields.
    fn v3_without_extension(c: &Config, owner: &SigningKey) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION_BEFORE_SEALED_PLACES);
        out.extend_from_slice(&postcard::to_allocvec(c).unwrap());
        signing::seal(owner, Purpose::Config, &c.repo_id, out)
    }

    #[test]
    fn compression_is_an_extension_older_configs_lack() {
        let owner = SigningKey::generate();
        let mut c = sample();
        // Written before the extension: reads as auto.
        let old = v3_without_extension(&c, &owner);
        assert_eq!(Config::decode(&old, &owner.public()).unwrap().compression, Compression::Auto);
        for level in [Compression::Off, Compression::Level(1), Compression::Level(19)] {
            c.compression = level;
            let e = c.encode(&owner);
            assert_eq!(Config::decode(&e, &owner.public()).unwrap(), c);
            // What a decoder of before reads: the same fields, the extension ignored.
            let body = &e[9..e.len() - 96];
            let before: Config = postcard::from_bytes(body).unwrap();
            assert_eq!(before.grace_changed_ns, c.grace_changed_ns);
        }
        // A level out of range does not decode, however well signed.
        c.compression = Compression::Level(20);
        assert!(Config::decode(&c.encode(&owner), &owner.public()).is_err());
        assert_eq!(Compression::parse("max"), Ok(Compression::Level(19)));
        assert_eq!(Compression::parse("0"), Ok(Compression::Off));
        assert_eq!(Compression::parse("Auto"), Ok(Compression::Auto));
        assert!(Compression::parse("20").is_err() && Compression::parse("-1").is_err());
    }

    #[test]
    fn parity_is_version_5_and_a_second_extension() {
        let owner = SigningKey::generate();
        let mut c = sample();
        c.compression = Compression::Level(3);
        // Without parity: version 4, as before, and no second extension.
        let off = c.encode(&owner);
        assert_eq!(off[8], VERSION);
        assert_eq!(Config::decode(&off, &owner.public()).unwrap(), c);
        let body = &off[9..off.len() - 96];
        let (_, ext) = postcard::take_from_bytes::<Config>(body).unwrap();
        let (_, rest) = postcard::take_from_bytes::<Extension>(ext).unwrap();
        assert!(rest.is_empty());
        // With it: version 5; the first extension still decodes as before.
        for p in [1, 5, 100] {
            c.parity = p;
            let on = c.encode(&owner);
            assert_eq!(on[8], VERSION_PARITY);
            assert_eq!(Config::decode(&on, &owner.public()).unwrap(), c);
            let body = &on[9..on.len() - 96];
            let (_, ext) = postcard::take_from_bytes::<Config>(body).unwrap();
            let (first, _) = postcard::take_from_bytes::<Extension>(ext).unwrap();
            assert_eq!(first.compression, Compression::Level(3));
            // The same body signed as version 4: corrupt, not a repository without parity.
            let mut v4 = on[..on.len() - 96].to_vec();
            v4[8] = VERSION;
            let v4 = signing::seal(&owner, Purpose::Config, &c.repo_id, v4);
            let err = Config::decode(&v4, &owner.public()).unwrap_err().to_string();
            assert!(err.contains("format version 4"), "{err}");
        }
        // Version 5 with parity 0 reads as off; a percent past 100 does not decode.
        let mut v5 = off[..off.len() - 96].to_vec();
        v5[8] = VERSION_PARITY;
        let v5 = signing::seal(&owner, Purpose::Config, &c.repo_id, v5);
        assert_eq!(Config::decode(&v5, &owner.public()).unwrap().parity, 0);
        c.parity = 101;
        assert!(Config::decode(&c.encode(&owner), &owner.public()).is_err());
    }

    #[test]
    fn grace_changes_honour_the_old_period() {
        let h = 3_600_000_000_000i64;
        let mut c = sample();
        assert_eq!(c.prune_grace_ns(10 * h), 24 * h);
        c.set_grace(3600, 100 * h);
        // For 24 h after the change prune still waits 24 h; writers use 1 h at once.
        assert_eq!(c.prune_grace_ns(101 * h), 24 * h);
        assert_eq!(c.writer_grace_ns(), h);
        assert_eq!(c.prune_grace_ns(125 * h), h);
        // Lengthening takes effect at once for prune.
        c.set_grace(48 * 3600, 200 * h);
        assert_eq!(c.prune_grace_ns(200 * h), 48 * h);
        assert_eq!(c.writer_grace_ns(), h);
        // The shortest in force: the 1 h during the change, then the 48 h alone.
        assert_eq!(c.shortest_grace_ns(200 * h + h / 2), h);
        assert_eq!(c.shortest_grace_ns(300 * h), 48 * h);
        // A change from a clock behind the last one is still stamped after it.
        c.set_grace(24 * 3600, 150 * h);
        assert_eq!(c.grace_changed_ns, 200 * h + 1);
        let k = SigningKey::generate();
        assert_eq!(Config::decode(&c.encode(&k), &k.public()).unwrap(), c);
        // A forged short period never shortens prune's wait below the minimum.
        c.grace_secs = 0;
        c.grace_prev_secs = 0;
        assert_eq!(c.prune_grace_ns(300 * h), h);
    }

    /// Version 2, as bakare wrote it before configs were signed.
    fn v2(c: &Config) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(2);
        out.extend_from_slice(&postcard::to_allocvec(c).unwrap());
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    #[test]
    fn round_trip_and_damage() {
        let c = sample();
        let owner = SigningKey::generate();
        let e = c.encode(&owner);
        assert_eq!(Config::decode(&e, &owner.public()).unwrap(), c);
        assert_eq!(Config::decode_unverified(&e).unwrap(), (c.clone(), Seal::Signed(owner.public())));
        for i in 0..e.len() {
            let mut d = e.clone();
            d[i] ^= 0x10;
            assert!(Config::decode(&d, &owner.public()).is_err(), "byte {i}");
        }
        // signed by anyone else: refused, however valid its signature
        let forged = c.encode(&SigningKey::generate());
        let err = Config::decode(&forged, &owner.public()).unwrap_err().to_string();
        assert!(err.contains("not signed by this repository's owner"), "{err}");
        // version 3, signed before sealed places: read alike, and told apart
        let mut v3 = e.clone();
        v3[8] = VERSION_BEFORE_SEALED_PLACES;
        let v3 = signing::seal(&owner, Purpose::Config, &c.repo_id, v3[..v3.len() - 96].to_vec());
        assert_eq!(Config::decode(&v3, &owner.public()).unwrap(), c);
        assert_eq!(Config::decode_unverified(&v3).unwrap(), (c.clone(), Seal::SignedBefore(owner.public())));
        assert_eq!(e[8], 4);
        // the old checksummed form is read only as what it is
        let old = v2(&c);
        assert_eq!(Config::decode_unverified(&old).unwrap(), (c.clone(), Seal::Checksum(2)));
        let err = Config::decode(&old, &owner.public()).unwrap_err().to_string();
        assert!(err.contains("bakare migrate"), "{err}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in proptest::collection::vec(any::<u8>(), 0..300)) {
            let owner = SigningKey::from_seed(&[5; 32]);
            let _ = Config::decode(&g, &owner.public());
            for mut m in [sample().encode(&owner), v2(&sample())] {
                let n = g.len().min(m.len());
                m[..n].copy_from_slice(&g[..n]);
                let _ = Config::decode(&m, &owner.public());
                let _ = Config::decode_unverified(&m);
            }
        }
    }
}
