//! Opening and creating repositories, finding snapshots, and reading blobs back.
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use io::{Backend, LocalBackend, StorageError};
use stages::compress::{unframe, unframe_into};
use stages::encrypt::{self, DataKey};
use stages::hash::blob_id;
use stages::{BlobId, BlobKind, BUNDLE_ID};

use crate::config::{Compression, Config};
use crate::crypto::{unwrap_key, WriterKeys};
use crate::error::{Error, Result};
use crate::index::{Index, SegmentKeys, SegmentSealer, Trusted, Use};
use crate::keys::{self, Key};
use crate::pack;
use crate::signing::PublicKey;
use crate::snapshot::Signer;
use crate::snapshot::Snapshot;
use crate::tree::{entries_size, Amplification, Listing, Node, Refused, Tree, MAX_HELD};
use crate::writers::{Registry, Standing};

/// Problems that did not stop an operation, to show the user.
pub type Warnings = Vec<String>;

pub struct Repository {
    pub backend: Arc<dyn Backend>,
    pub location: Location,
    pub config: Config,
    pub key: Key,
    pub wk: WriterKeys,
    /// The owner's public signing key (from the key file, never from the repository).
    pub owner: PublicKey,
    /// List and use snapshots whatever their signer (`--trust-all`, for forensics).
    pub trust_all: bool,
}

/// How far in the future a snapshot may be dated before it is distrusted: clocks of different
/// machines disagree, but not by a day.
pub const FUTURE_SKEW_NS: i64 = 3600 * 1_000_000_000;

/// A snapshot as listed: its id, contents, who signed it and where that signer stands.
#[derive(Clone, Debug)]
pub struct SnapshotEntry {
    pub id: String,
    pub snapshot: Snapshot,
    pub signer: Signer,
    pub standing: Standing,
}

impl SnapshotEntry {
    /// The writer, as shown to users.
    pub fn writer(&self) -> String {
        match (&self.standing, &self.signer) {
            (Standing::Owner, _) => crate::writers::OWNER.to_string(),
            (Standing::Registered(n), _) => n.clone(),
            (Standing::Revoked(n), _) => format!("{n} (revoked)"),
            (Standing::Unknown, Signer::Key(k)) => format!("unknown {}", crate::signing::fingerprint(k)),
            (Standing::Unknown, Signer::Nobody) => "unsigned".to_string(),
        }
    }

    /// Why this snapshot is not trusted by default, if it is not.
    pub fn distrust(&self, now_ns: i64) -> Option<String> {
        let why = match (&self.standing, &self.signer) {
            (Standing::Owner | Standing::Registered(_), _) => {
                if self.snapshot.time_ns > now_ns.saturating_add(FUTURE_SKEW_NS) {
                    "dated in the future".to_string()
                } else {
                    return None;
                }
            }
            (Standing::Revoked(n), _) => format!("signed by revoked writer {n}"),
            (Standing::Unknown, Signer::Key(k)) => {
                format!("signed by an unregistered key {}", crate::signing::fingerprint(k))
            }
            (Standing::Unknown, Signer::Nobody) => "unsigned".to_string(),
        };
        Some(why)
    }
}

/// Default pack size: 32 MiB (few files per GiB, small enough to rewrite cheaply in prune).
pub const DEFAULT_PACK_SIZE: u64 = 32 << 20;
/// Default grace period G: 24 h (design.md section 4).
pub const DEFAULT_GRACE_SECS: u64 = 24 * 3600;

/// Where a repository lives: a local directory, an S3-compatible bucket
/// (`s3:http(s)://host:port/bucket/prefix`), or a repository on a `bakare serve` this machine
/// joined (`serve:https://host:port/repo`; `peer:NAME` names the repository a paired friend's
/// server gave this machine, and parses to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(String),
    /// `serve:https://host:port/repo`, normalised (io::ServedUrl).
    Serve(String),
}

/// What `--repo` accepts, for error messages.
pub const SUPPORTED_LOCATIONS: &str =
    "a directory (PATH or local:PATH), an S3-compatible bucket as s3:https://host[:port]/bucket[/prefix] or s3:host/bucket[/prefix], \
     a repository on a joined bakare server as serve:https://host:port/repo, \
     or one on a paired friend's server as peer:NAME";

impl Location {
    /// `s3:http(s)://host/bucket/prefix`, or restic's `s3:host/bucket/prefix` (https), is a
    /// bucket; a path is a directory (any bytes). Any other `scheme:...` (sftp:, rest:,
    /// rclone:, b2:, ...) is refused rather than taken for a directory of that name: a
    /// relative directory whose name looks like one is written `./name:...`.
    pub fn parse(s: &std::ffi::OsStr) -> Result<Location> {
        use std::os::unix::ffi::OsStrExt;
        // restic's explicit form of a local path.
        if let Some(path) = s.as_bytes().strip_prefix(b"local:") {
            return Ok(Location::Local(PathBuf::from(std::ffi::OsStr::from_bytes(path))));
        }
        if let Some(rest) = s.to_str().and_then(|u| u.strip_prefix("s3:")) {
            if rest.starts_with("http://") || rest.starts_with("https://") {
                return Ok(Location::S3(format!("s3:{rest}")));
            }
            let (host, bucket) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() || bucket.trim_matches('/').is_empty() || rest.contains("://") {
                return Err(Error::Invalid(format!(
                    "{rest:?} after s3: is not host/bucket[/prefix] nor a http(s):// URL ({SUPPORTED_LOCATIONS})"
                )));
            }
            return Ok(Location::S3(format!("s3:https://{rest}")));
        }
        if let Some(name) = s.to_str().and_then(|u| u.strip_prefix("peer:")) {
            let peer = io::joined::load_peer(name).map_err(|e| Error::Invalid(e.to_string()))?;
            return Ok(Location::Serve(peer.location()));
        }
        if let Some(url) = s.to_str().filter(|u| u.starts_with("serve:")) {
            let u = io::ServedUrl::parse(url).map_err(Error::Invalid)?;
            return Ok(Location::Serve(u.to_string()));
        }
        let bytes = s.as_bytes();
        if let Some(colon) = bytes.iter().position(|&b| b == b':') {
            let scheme = &bytes[..colon];
            let schemelike = scheme.first().is_some_and(u8::is_ascii_alphabetic)
                && scheme.iter().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b));
            if schemelike {
                return Err(Error::Invalid(format!(
                    "{}: is not a kind of repository bakare supports (it supports {SUPPORTED_LOCATIONS}); \
                     for a directory of that name, write ./{} or local:{}",
                    String::from_utf8_lossy(scheme),
                    s.to_string_lossy(),
                    s.to_string_lossy()
                )));
            }
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3(_) | Location::Serve(_) => None,
        }
    }

    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Location::Local(p) => Arc::new(LocalBackend::new(p)),
            Location::S3(url) => Arc::new(io::S3Backend::open(url, &io::S3Tuning::from_env())?),
            Location::Serve(url) => Arc::new(io::S3Backend::open_served(url, &io::S3Tuning::from_env())?),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) | Location::Serve(u) => f.write_str(u),
        }
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::Local(p.to_path_buf())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::Local(p)
    }
}

impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::Local(p.clone())
    }
}

impl Repository {
    /// Creates a repository and its key (saved at `key_path`, or in the key directory).
    /// Without parity: the engine's own tests damage packs and look for what breaks. The CLI's
    /// `init` adds `format::parity::DEFAULT_PERCENT`.
    pub fn init(location: impl Into<Location>, key_path: Option<&Path>) -> Result<Repository> {
        Repository::init_with(location, key_path, None, false, Compression::Auto, 0)
    }

    /// `init`, with the key file's identity sealed with `passphrase` when one is given. A
    /// directory that holds anything and is not a repository is refused unless `force`: a
    /// typo, or the wrong directory, must not become a repository beside someone's files.
    /// `compression` is how backups compress data (`init --compression`), `parity` the percent
    /// of recovery data appended to each new pack (`init --parity`, 0 for none).
    pub fn init_with(
        location: impl Into<Location>,
        key_path: Option<&Path>,
        passphrase: Option<age::secrecy::SecretString>,
        force: bool,
        compression: Compression,
        parity: u8,
    ) -> Result<Repository> {
        if parity > crate::format::parity::MAX_PERCENT {
            return Err(Error::Invalid(format!("parity {parity} %: expected 0 to 100")));
        }
        let location = location.into();
        let backend = location.backend()?;
        if backend.exists("config")? {
            return Err(Error::RepositoryExists(location.to_string()));
        }
        if let Some(path) = location.local().filter(|_| !force) {
            let occupied = match std::fs::read_dir(path) {
                Ok(mut entries) => entries.next().is_some(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(Error::io(path, e)),
            };
            if occupied {
                return Err(Error::Invalid(format!(
                    "{} is not empty and is not a repository: refusing to create one there \
                     (bakare init --force does)",
                    path.display()
                )));
            }
        }
        let mut repo_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut repo_id);
        let mut key = Key::generate(repo_id);
        key.passphrase = passphrase;
        let owner_key = key.owner_signer()?;
        let kp = match key_path {
            Some(p) => p.to_path_buf(),
            None => keys::default_key_path(&repo_id)?,
        };
        key.save(&kp)?;
        key.path = kp;
        let now = crate::clock::now_ns();
        let config = Config {
            repo_id,
            chunk_min: stages::chunk::ChunkParams::DEFAULT_MIN,
            chunk_avg: stages::chunk::ChunkParams::DEFAULT_AVG,
            chunk_max: stages::chunk::ChunkParams::DEFAULT_MAX,
            pack_size: DEFAULT_PACK_SIZE,
            grace_secs: DEFAULT_GRACE_SECS,
            key_fingerprint: key.fingerprint(),
            created_ns: now,
            grace_prev_secs: DEFAULT_GRACE_SECS,
            grace_changed_ns: now,
            compression,
            parity,
            parity_packs: false,
        };
        if let Some(path) = location.local() {
            for dir in ["packs", "index", "snapshots", "pending", "gc", "writers", "roster", "tmp"] {
                std::fs::create_dir_all(path.join(dir)).map_err(|e| Error::io(path.join(dir), e))?;
            }
        }
        // Nothing here is unsigned: any unsigned index segment found later was planted, and
        // `migrate` does not vouch for it. (Before the config: a repository exists once its
        // config does, and none may exist without the mark.)
        crate::index::put_signed_mark(backend.as_ref(), &owner_key, &repo_id, now)?;
        backend.put("config", &config.encode(&owner_key))?;
        let wk = key.writer_keys();
        let owner = owner_key.public();
        Ok(Repository { backend, location, config, key, wk, owner, trust_all: false })
    }

    pub fn open(location: impl Into<Location>, key_path: Option<&Path>) -> Result<Repository> {
        Repository::open_with(location, key_path, false)
    }

    /// `legacy`: also open a repository whose config is not signed yet (for `migrate`, with a
    /// full key); otherwise such a repository is refused with a message that says to migrate.
    pub fn open_with(
        location: impl Into<Location>,
        key_path: Option<&Path>,
        legacy: bool,
    ) -> Result<Repository> {
        let location = location.into();
        let backend = location.backend()?;
        let raw = match backend.get("config") {
            Ok(c) => c,
            Err(StorageError::NotFound { .. }) => return Err(Error::NoRepository(location.to_string())),
            Err(e) => return Err(e.into()),
        };
        // Unverified only to learn which key to load; verified below with that key.
        let (config, _) = Config::decode_unverified(&raw)?;
        let kp = match key_path {
            Some(p) => p.to_path_buf(),
            None => keys::default_key_path(&config.repo_id)?,
        };
        if !kp.exists() {
            return Err(Error::Key(format!(
                "no key for repository {} at {} (give one with --key or BAKARE_KEY)",
                hex::encode(config.repo_id),
                kp.display()
            )));
        }
        let key = Key::load(&kp)?;
        if key.repo_id != config.repo_id || key.fingerprint() != config.key_fingerprint {
            return Err(Error::Key(format!(
                "{} belongs to repository {}, not to {} ({})",
                kp.display(),
                hex::encode(key.repo_id),
                hex::encode(config.repo_id),
                location
            )));
        }
        let owner = key.owner_public().ok_or_else(|| {
            Error::Key(format!(
                "{} is a backup-only key from before writers were registered: it cannot tell the \
                 owner's objects from forgeries; the owner must export a new one \
                 (bakare key export --backup-only --name NAME FILE)",
                kp.display()
            ))
        })?;
        let config = match Config::decode(&raw, &owner) {
            Ok(c) => c,
            Err(Error::Legacy(_)) if legacy => {
                key.identity()?;
                config
            }
            Err(e) => return Err(e),
        };
        let wk = key.writer_keys();
        Ok(Repository { backend, location, config, key, wk, owner, trust_all: false })
    }

    /// The keys condemnation records are read with.
    pub fn gc_keys(&self) -> crate::gc::Keys<'_> {
        crate::gc::Keys { catalog: &self.wk.catalog_key, owner: &self.owner, repo_id: &self.config.repo_id }
    }

    /// The keys index segments are read with.
    pub fn segment_keys(&self) -> SegmentKeys<'_> {
        SegmentKeys {
            catalog: &self.wk.catalog_key,
            identity: self.key.identity.as_ref(),
            repo_id: &self.config.repo_id,
            owner: &self.owner,
        }
    }

    /// The keys pack trailers are read with (the identity: None with a backup-only key).
    pub fn trailer_keys(&self) -> crate::pack::TrailerKeys<'_> {
        crate::pack::TrailerKeys { catalog: &self.wk.catalog_key, identity: self.key.identity.as_ref() }
    }

    /// What this key writes index segments with: signed by its writer key (the owner's, for a
    /// full key).
    pub fn sealer(&self) -> Result<SegmentSealer> {
        Ok(SegmentSealer {
            catalog: self.wk.catalog_key.clone(),
            signer: self.key.snapshot_signer()?,
            repo_id: self.config.repo_id,
            recipient: self.key.recipient.clone(),
        })
    }

    /// Whose packs a backup deduplicates against: the owner, this key's own writer, and the
    /// writers the owner registered and has not revoked (from the registry with a full key,
    /// from the roster with a backup-only one).
    pub fn trusted(&self) -> Result<(Trusted, Warnings)> {
        let mut set = std::collections::HashSet::from([self.owner]);
        if let Ok(s) = self.key.snapshot_signer() {
            set.insert(s.public());
        }
        let warnings = if self.key.identity().is_ok() {
            let (registry, warnings) = self.registry()?;
            set.extend(registry.writers.values().filter(|w| w.revoked_ns.is_none()).map(|w| w.key));
            warnings
        } else {
            let (roster, warnings) = self.roster()?;
            set.extend(crate::writers::in_good_standing(&roster));
            warnings
        };
        Ok((Trusted(set), warnings))
    }

    /// The config as stored now, checked to be the owner's.
    pub fn fresh_config(&self) -> Result<Config> {
        Config::decode(&self.backend.get("config")?, &self.owner)
    }

    pub fn chunk_params(&self) -> stages::chunk::ChunkParams {
        stages::chunk::ChunkParams {
            min: self.config.chunk_min,
            avg: self.config.chunk_avg,
            max: self.config.chunk_max,
            seed: self.wk.chunk_seed,
        }
    }

    /// The index for reading back: every copy of every blob, copies in packs prune has
    /// condemned last.
    pub fn load_index(&self) -> Result<(Index, Vec<String>)> {
        let mut warnings = Vec::new();
        // Records that do not count (check and prune name them) are left out here.
        let condemned = match crate::gc::load(self.backend.as_ref(), self.gc_keys()) {
            Ok(records) => crate::gc::condemned_packs(&records.valid),
            Err(e) => {
                warnings.push(format!("{e}; reading without it"));
                Default::default()
            }
        };
        let trusted = match self.trusted() {
            Ok((t, w)) => {
                warnings.extend(w);
                t
            }
            Err(e) => {
                warnings.push(format!("{e}; reading every copy alike"));
                Trusted::default()
            }
        };
        let (idx, w) =
            Index::load_with(self.backend.as_ref(), self.segment_keys(), &trusted, &condemned, Use::Read)?;
        warnings.extend(w);
        Ok((idx, warnings))
    }

    /// The index a backup deduplicates against: blobs in condemned packs count as absent
    /// (design.md section 4, rule 3). When the condemnation records cannot be read, nothing
    /// counts as present: every blob is stored again rather than risk referencing doomed data.
    pub fn load_dedup_index(&self) -> Result<(Index, Vec<String>)> {
        match crate::gc::load(self.backend.as_ref(), self.gc_keys()) {
            Ok(records) => {
                let condemned = crate::gc::condemned_packs(&records.valid);
                let (trusted, mut warnings) = self.trusted()?;
                let (idx, w) = Index::load_with(
                    self.backend.as_ref(),
                    self.segment_keys(),
                    &trusted,
                    &condemned,
                    Use::Dedup,
                )?;
                warnings.extend(w);
                Ok((idx, warnings))
            }
            Err(e) => Ok((
                Index::default(),
                vec![format!(
                    "{e}: cannot tell which packs prune condemned, so nothing is deduplicated this run"
                )],
            )),
        }
    }

    /// The roster: the registry as writers read it (`format::writers`).
    pub fn roster(&self) -> Result<(Vec<crate::writers::RosterEntry>, Warnings)> {
        crate::writers::load_roster(
            self.backend.as_ref(),
            &self.wk.catalog_key,
            &self.owner,
            &self.config.repo_id,
        )
    }

    /// The writer registry (needs the secret identity).
    pub fn registry(&self) -> Result<(Registry, Warnings)> {
        Registry::load(self.backend.as_ref(), self.key.identity()?, &self.config.repo_id)
    }

    /// Every readable snapshot whoever signed it, oldest first, with a warning for each
    /// unreadable one. For check, key list and prune's view; commands that show or use
    /// snapshots call `snapshots`.
    pub fn all_snapshots(&self) -> Result<(Vec<SnapshotEntry>, Warnings)> {
        let identity = self.key.identity()?;
        let (registry, mut warnings) = self.registry()?;
        let mut out = Vec::new();
        for name in self.backend.list("snapshots")? {
            let id = name.trim_start_matches("snapshots/").to_string();
            // A copy under another name (anyone can make one) is not a snapshot of its own: it
            // would count twice toward a retention policy.
            let named = |d: Vec<u8>| {
                if blake3::hash(&d).to_hex().as_str() == id {
                    Ok(d)
                } else {
                    Err(Error::corrupt("snapshot", name.clone(), "content does not match its name; ignored"))
                }
            };
            match self
                .backend
                .get(&name)
                .map_err(Error::from)
                .and_then(named)
                .and_then(|d| Snapshot::decode(identity, &self.config.repo_id, &name, &d))
            {
                Ok((snapshot, signer)) => {
                    let standing = match &signer {
                        Signer::Key(k) => registry.standing(k),
                        Signer::Nobody => Standing::Unknown,
                    };
                    out.push(SnapshotEntry { id, snapshot, signer, standing })
                }
                // Forgotten since the listing.
                Err(Error::Storage(io::StorageError::NotFound { .. })) => {}
                Err(e) => warnings.push(e.to_string()),
            }
        }
        // A repaired or rewritten copy keeps its original's time; it sorts after it, so
        // `latest` is the copy.
        let repaired = |s: &Snapshot| s.tags.iter().any(|t| t == "repaired" || t == "rewritten");
        out.sort_by(|a, b| {
            (a.snapshot.time_ns, repaired(&a.snapshot), &a.id).cmp(&(
                b.snapshot.time_ns,
                repaired(&b.snapshot),
                &b.id,
            ))
        });
        Ok((out, warnings))
    }

    /// The snapshots to show and use: those signed by the owner or a writer in good standing
    /// and not dated in the future, unless `trust_all`. Each one left out is named in a warning
    /// with the reason.
    pub fn snapshots(&self) -> Result<(Vec<SnapshotEntry>, Warnings)> {
        let (all, mut warnings) = self.all_snapshots()?;
        if self.trust_all {
            return Ok((all, warnings));
        }
        let now = crate::clock::now_ns();
        let mut kept = Vec::with_capacity(all.len());
        let mut ignored = 0usize;
        for e in all {
            match e.distrust(now) {
                None => kept.push(e),
                Some(why) => {
                    ignored += 1;
                    if ignored <= 20 {
                        warnings
                            .push(format!("snapshot {} ignored: {why} (--trust-all uses it)", short(&e.id)));
                    }
                }
            }
        }
        if ignored > 20 {
            warnings.push(format!("{} more snapshots ignored for the same reasons", ignored - 20));
        }
        Ok((kept, warnings))
    }

    /// `latest`, or a unique prefix of a snapshot id, among `snapshots()`.
    pub fn find_snapshot(&self, spec: &str) -> Result<SnapshotEntry> {
        self.find_snapshot_matching(spec, &crate::ops::filter::Filter::default())
    }

    /// `find_snapshot`, where `latest` is the newest snapshot `filter` matches.
    pub fn find_snapshot_matching(
        &self,
        spec: &str,
        filter: &crate::ops::filter::Filter,
    ) -> Result<SnapshotEntry> {
        let (all, warnings) = self.snapshots()?;
        let found = crate::ops::filter::resolve(&all, spec, filter).cloned();
        // What was left out matters most when nothing matched, or `latest` was asked for.
        if found.is_err() || spec == "latest" {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
        }
        found
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// One reading thread's reusable buffers (see `BlobReader::read_with`).
#[derive(Default)]
pub struct Scratch {
    sealed: Vec<u8>,
    plain: Vec<u8>,
}

/// Reads blobs back: locate in the index, fetch, unwrap the pack key (cached), decrypt,
/// decompress, and check the keyed hash, so wrong bytes are never returned.
pub struct BlobReader<'a> {
    repo: &'a Repository,
    pub index: &'a Index,
    identity: &'a age::x25519::Identity,
    keys: Mutex<HashMap<u32, DataKey>>,
    bundles: Mutex<BundleCache>,
    /// Remote backends: recently fetched windows of packs (pack, start) -> bytes, and pack sizes.
    windows: Mutex<VecDeque<BundleSlot>>,
    windows_kept: usize,
    /// The buffer of the last window let go that nothing else held, for the next one.
    spare_window: Mutex<Option<Vec<u8>>>,
    sizes: Mutex<HashMap<u32, u64>>,
    /// Packs whose damage was repaired from their parity on the way: the data shards rebuilt
    /// (a shard repaired again for another blob counts once).
    corrections: Mutex<BTreeMap<String, BTreeSet<u64>>>,
}

/// Bytes fetched at once from a remote pack: restores read blobs in the order they were
/// written, so one request serves many blobs (one request per 1 MiB blob made a restore from
/// a local S3 server 24 MB/s).
const WINDOW: u64 = 8 << 20;
/// Windows kept by default: several restore workers read different parts at once.
const WINDOWS_KEPT: usize = 8;

type BundleSlot = ((u32, u32), Arc<Vec<u8>>);

/// Decompressed bundles kept by a reader (see `BlobReader::bundle`): the most recent ones,
/// and those read again after they had left the recent ones. A reread part of 24 MiB restores
/// as fast as one of 48 on every corpus measured (3 GiB mixed: 3.15-3.25 s against 3.19-3.67 s;
/// 300 MiB mixed 0.31 s; 100,000 files 1.08 s), and the restore of the 3 GiB corpus peaks at
/// 86 MiB instead of 108.
const RECENT_BUNDLES_BYTES: usize = 8 << 20;
const REREAD_BUNDLES_BYTES: usize = 24 << 20;
/// Bundles remembered (by position only) after leaving the recent ones.
const GHOSTS: usize = 4096;

/// Decompressed bundles by (pack, offset), in two parts (the "2Q" policy). A restore reads the
/// small files of a bundle one after another, then usually never again: those pass through
/// the small recent part. A bundle asked for again after it left the recent part (a file
/// deduplicated against older data reaches back into it) is kept in the reread part, least
/// recently used out first. So a restore in order holds ~8 MiB of bundles, and one that keeps
/// reaching back decompresses each bundle about twice instead of every time.
struct BundleCache {
    recent: Slots,
    reread: Slots,
    ghosts: VecDeque<(u32, u32)>,
}

/// Bundles up to a number of bytes, least recently used first.
struct Slots {
    slots: VecDeque<BundleSlot>,
    bytes: usize,
    limit: usize,
}

impl Slots {
    fn new(limit: usize) -> Self {
        Slots { slots: VecDeque::new(), bytes: 0, limit }
    }

    fn get(&mut self, at: (u32, u32)) -> Option<Arc<Vec<u8>>> {
        let i = self.slots.iter().position(|(k, _)| *k == at)?;
        let slot = self.slots.remove(i)?;
        let b = slot.1.clone();
        self.slots.push_back(slot);
        Some(b)
    }

    /// Adds a bundle; returns the positions of those that had to leave.
    fn insert(&mut self, at: (u32, u32), plain: Arc<Vec<u8>>) -> Vec<(u32, u32)> {
        self.bytes += plain.len();
        self.slots.push_back((at, plain));
        let mut gone = Vec::new();
        while self.bytes > self.limit && self.slots.len() > 1 {
            let Some((k, old)) = self.slots.pop_front() else { break };
            self.bytes -= old.len();
            gone.push(k);
        }
        gone
    }
}

impl BundleCache {
    fn new(recent: usize, reread: usize) -> Self {
        BundleCache { recent: Slots::new(recent), reread: Slots::new(reread), ghosts: VecDeque::new() }
    }

    fn get(&mut self, at: (u32, u32)) -> Option<Arc<Vec<u8>>> {
        self.reread.get(at).or_else(|| self.recent.get(at))
    }

    fn insert(&mut self, at: (u32, u32), plain: Arc<Vec<u8>>) {
        if self.get(at).is_some() {
            return; // another worker decompressed it meanwhile
        }
        if let Some(i) = self.ghosts.iter().position(|k| *k == at) {
            self.ghosts.remove(i);
            self.reread.insert(at, plain);
            return;
        }
        for k in self.recent.insert(at, plain) {
            if self.ghosts.len() >= GHOSTS {
                self.ghosts.pop_front();
            }
            self.ghosts.push_back(k);
        }
    }
}

impl<'a> BlobReader<'a> {
    pub fn new(repo: &'a Repository, index: &'a Index) -> Result<Self> {
        Self::with_cache(
            repo,
            index,
            WINDOWS_KEPT * WINDOW as usize + RECENT_BUNDLES_BYTES + REREAD_BUNDLES_BYTES,
        )
    }

    /// A reader whose caches hold about `bytes`: bundles get a third (at most their default
    /// 32 MiB, a quarter of it for the recent part), windows of remote packs the rest (at
    /// least one).
    pub fn with_cache(repo: &'a Repository, index: &'a Index, bytes: usize) -> Result<Self> {
        let bundles = (bytes / 3).min(RECENT_BUNDLES_BYTES + REREAD_BUNDLES_BYTES);
        let windows = ((bytes - bundles) / WINDOW as usize).clamp(1, WINDOWS_KEPT);
        Ok(BlobReader {
            repo,
            index,
            identity: repo.key.identity()?,
            keys: Mutex::new(HashMap::new()),
            bundles: Mutex::new(BundleCache::new(bundles / 4, bundles - bundles / 4)),
            windows: Mutex::new(VecDeque::new()),
            windows_kept: windows,
            spare_window: Mutex::new(None),
            sizes: Mutex::new(HashMap::new()),
            corrections: Mutex::new(BTreeMap::new()),
        })
    }

    /// The packs this reader repaired from their parity, and how many 4 KiB data shards of
    /// each were damaged and rebuilt.
    pub fn corrected(&self) -> Vec<(String, usize)> {
        let c = self.corrections.lock().unwrap_or_else(|p| p.into_inner());
        c.iter().map(|(k, s)| (k.clone(), s.len())).collect()
    }

    /// `len` bytes at `offset` of a pack, repaired from its parity after what was read failed
    /// to authenticate; None when the parity cannot help (`pack::repaired_range`).
    fn repaired(&self, pack_key: &str, offset: u64, len: usize) -> Option<Vec<u8>> {
        let (bytes, fixed) = pack::repaired_range(self.repo.backend.as_ref(), pack_key, offset, len)?;
        let mut c = self.corrections.lock().unwrap_or_else(|p| p.into_inner());
        c.entry(pack_key.to_string()).or_default().extend(fixed);
        Some(bytes)
    }

    fn data_key(&self, pack_idx: u32, pack_key: &str) -> Result<DataKey> {
        if let Some(k) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&pack_idx) {
            return Ok(k.clone());
        }
        let unwrap = |wrapped: &[u8]| {
            unwrap_key(self.identity, wrapped).map_err(|e| Error::corrupt("pack", pack_key, e))
        };
        let k = match pack::read_wrapped_key(self.repo.backend.as_ref(), pack_key).and_then(|w| unwrap(&w)) {
            Ok(k) => k,
            Err(e) => {
                // A damaged header: its first bytes again, from the parity.
                let head = self.repaired(pack_key, 0, 12 + pack::MAX_WRAPPED as usize);
                match head.as_deref().and_then(pack::header_key) {
                    Some(wrapped) => unwrap(wrapped)?,
                    None => return Err(e),
                }
            }
        };
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(pack_idx, k.clone());
        Ok(k)
    }

    pub fn read(&self, id: &BlobId, kind: BlobKind) -> Result<Vec<u8>> {
        self.read_with(id, kind, &mut Scratch::default(), <[u8]>::to_vec)
    }

    /// Fetches, authenticates, decompresses and checks a blob, and hands its bytes to `f`,
    /// using `scratch`'s buffers: a restore worker reads every blob through the same two
    /// buffers instead of allocating (and the kernel zeroing) fresh ones per blob.
    pub fn read_with<R>(
        &self,
        id: &BlobId,
        kind: BlobKind,
        scratch: &mut Scratch,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let hex = || hex::encode(id);
        let loc = self.index.get(id).ok_or_else(|| Error::MissingBlob(hex()))?;
        let pack_id = self.index.pack_id(loc.pack).ok_or_else(|| Error::MissingBlob(hex()))?;
        let pack_key = pack::pack_key(pack_id);
        let key = self.data_key(loc.pack, &pack_key)?;
        let check = |plain: &[u8]| {
            if blob_id(self.repo.wk.id_key.as_bytes(), plain) != *id {
                return Err(Error::BlobAuth(hex()));
            }
            Ok(())
        };
        match loc.inner {
            None => {
                self.range_into(loc.pack, &pack_key, loc.offset, loc.len, &mut scratch.sealed)?;
                let open = |sealed: &mut Vec<u8>, plain: &mut Vec<u8>| {
                    let frame =
                        encrypt::open_in_place(&key, id, kind, sealed).map_err(|_| Error::BlobAuth(hex()))?;
                    unframe_into(&sealed[frame], plain).map_err(|e| Error::corrupt("blob", hex(), e))?;
                    check(plain)
                };
                if let Err(e) = open(&mut scratch.sealed, &mut scratch.plain) {
                    // Damaged: the same bytes repaired from the pack's parity, if it can.
                    let Some(bytes) = self.repaired(&pack_key, loc.offset.into(), loc.len as usize) else {
                        return Err(e);
                    };
                    scratch.sealed = bytes;
                    open(&mut scratch.sealed, &mut scratch.plain)?;
                }
                Ok(f(&scratch.plain))
            }
            Some(inner) => {
                let bundle = self.bundle(&key, &pack_key, loc.pack, loc.offset, loc.len)?;
                let (start, end) = (inner as usize, inner as usize + loc.raw_len as usize);
                let part = bundle
                    .get(start..end)
                    .ok_or_else(|| Error::corrupt("blob", hex(), "outside its bundle"))?;
                check(part)?;
                Ok(f(part))
            }
        }
    }

    /// `range`, into a reused buffer (a restore reads every blob through one: a new buffer per
    /// blob had the kernel fault in fresh pages for each large one, on S3 a quarter of the
    /// restore's CPU).
    fn range_into(&self, pack: u32, pack_key: &str, offset: u32, len: u32, buf: &mut Vec<u8>) -> Result<()> {
        if !self.repo.backend.remote() || u64::from(len) >= WINDOW {
            return Ok(self.repo.backend.get_range_into(pack_key, u64::from(offset), len as usize, buf)?);
        }
        let (window, from) = self.window(pack, pack_key, offset, len)?;
        buf.clear();
        buf.extend_from_slice(&window[from..from + len as usize]);
        Ok(())
    }

    /// `len` bytes at `offset` of a pack: directly from a local backend; from a remote one
    /// through a window of up to 8 MiB that later reads of the same region reuse.
    fn range(&self, pack: u32, pack_key: &str, offset: u32, len: u32) -> Result<Vec<u8>> {
        if !self.repo.backend.remote() || u64::from(len) >= WINDOW {
            return Ok(self.repo.backend.get_range(pack_key, u64::from(offset), len as usize)?);
        }
        let (window, from) = self.window(pack, pack_key, offset, len)?;
        Ok(window[from..from + len as usize].to_vec())
    }

    /// The window of a remote pack holding `len` bytes at `offset`, and where they start in it:
    /// one kept from an earlier read, or a new one (in the buffer of the last window let go,
    /// when nothing else held it).
    fn window(&self, pack: u32, pack_key: &str, offset: u32, len: u32) -> Result<(Arc<Vec<u8>>, usize)> {
        let (start, end) = (u64::from(offset), u64::from(offset) + u64::from(len));
        {
            let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            for ((p, at), bytes) in w.iter() {
                let at = u64::from(*at);
                if *p == pack && at <= start && end <= at + bytes.len() as u64 {
                    return Ok((bytes.clone(), (start - at) as usize));
                }
            }
        }
        let size = {
            let known = self.sizes.lock().unwrap_or_else(|p| p.into_inner()).get(&pack).copied();
            match known {
                Some(s) => s,
                None => {
                    let s = self.repo.backend.size(pack_key)?;
                    self.sizes.lock().unwrap_or_else(|p| p.into_inner()).insert(pack, s);
                    s
                }
            }
        };
        let wend = (start + WINDOW).min(size).max(end);
        let mut bytes =
            self.spare_window.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        self.repo.backend.get_range_into(pack_key, start, (wend - start) as usize, &mut bytes)?;
        let bytes = Arc::new(bytes);
        let old = {
            let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let old = if w.len() >= self.windows_kept { w.pop_front() } else { None };
            w.push_back(((pack, offset), bytes.clone()));
            old
        };
        if let Some(buf) = old.and_then(|(_, b)| Arc::try_unwrap(b).ok()) {
            *self.spare_window.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        }
        Ok((bytes, 0))
    }

    /// The plaintext of the bundle at `offset` in a pack, kept for the next files of the same
    /// bundle (`BundleCache`). On the mixed corpus, keeping only the last 16 bundles decompressed
    /// each of its 81 bundles 11 times on average (462 MiB of zstd output for 40 MiB of
    /// bundles), half of the restore's CPU: files deduplicated against older data (copies,
    /// moved directories) reach back into any bundle.
    fn bundle(
        &self,
        key: &DataKey,
        pack_key: &str,
        pack: u32,
        offset: u32,
        len: u32,
    ) -> Result<Arc<Vec<u8>>> {
        let at = (pack, offset);
        if let Some(b) = self.bundles.lock().unwrap_or_else(|p| p.into_inner()).get(at) {
            return Ok(b);
        }
        let name = format!("bundle at {pack_key}+{offset}");
        let open = |sealed: &[u8]| {
            let frame = encrypt::open(key, &BUNDLE_ID, BlobKind::Bundle, sealed)
                .map_err(|_| Error::BlobAuth(name.clone()))?;
            unframe(&frame).map_err(|e| Error::corrupt("blob", name.clone(), e))
        };
        let plain = match open(&self.range(pack, pack_key, offset, len)?) {
            Ok(plain) => plain,
            // Damaged: the same bytes repaired from the pack's parity, if it can.
            Err(e) => match self.repaired(pack_key, offset.into(), len as usize) {
                Some(sealed) => open(&sealed)?,
                None => return Err(e),
            },
        };
        let plain = Arc::new(plain);
        self.bundles.lock().unwrap_or_else(|p| p.into_inner()).insert(at, plain.clone());
        Ok(plain)
    }

    /// The plaintext length of blob `id`, if the index has it.
    pub fn raw_len(&self, id: &BlobId) -> Option<u32> {
        self.index.get(id).map(|l| l.raw_len)
    }

    /// Whether `data` is the plaintext of blob `id` (its keyed hash is the id).
    pub fn matches(&self, id: &BlobId, data: &[u8]) -> bool {
        blob_id(self.repo.wk.id_key.as_bytes(), data) == *id
    }

    /// The entries of a directory stored as `ids` (one or more tree blobs), checked as one
    /// directory (`Listing`), all at once: for tests and small directories. Walks use
    /// `entries`, which holds one blob at a time.
    pub fn tree(&self, ids: &[BlobId]) -> Result<Vec<Node>> {
        let tally = Tally::default();
        let mut entries = self.entries(ids, &tally);
        let mut nodes = Vec::new();
        while let Some(n) = entries.next()? {
            nodes.push(n);
        }
        Ok(nodes)
    }

    /// The entry `name` of the directory stored as `ids`, read up to where it would be.
    pub fn entry(&self, ids: &[BlobId], name: &[u8]) -> Result<Option<Node>> {
        let tally = Tally::default();
        let mut entries = self.entries(ids, &tally);
        while let Some(n) = entries.next()? {
            match n.name.as_slice().cmp(name) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return Ok(Some(n)),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }

    /// The entries of a directory stored as `ids`, read one tree blob at a time (`Entries`).
    pub fn entries<'r>(&'r self, ids: &[BlobId], tally: &'r Tally) -> Entries<'r, 'a> {
        Entries {
            reader: self,
            tally,
            blobs: Vec::from(ids).into_iter(),
            nodes: Vec::new().into_iter(),
            listing: Listing::default(),
            held: 0,
        }
    }

    /// One of a directory's tree blobs, admitted to its `listing` (blobs in order): its valid
    /// entries, and those refused (`Tree::decode_entries`).
    pub fn tree_blob(&self, id: &BlobId, listing: &mut Listing) -> Result<(Vec<Node>, Vec<Refused>)> {
        let name = hex::encode(id);
        let (nodes, refused) = Tree::decode_entries(&name, &self.read(id, BlobKind::Tree)?)?;
        listing.admit(&nodes).map_err(|why| Error::corrupt("tree", name, why))?;
        Ok((nodes, refused))
    }
}

/// What the directories one walk has open share: its count against shared subtrees
/// (`Amplification`) and the bytes of tree entries they hold (at most `limit`, `MAX_HELD`
/// unless `--mem-limit` sets less: `Memory::held`).
pub struct Tally {
    amplification: RefCell<Amplification>,
    held: Cell<usize>,
    limit: usize,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally::with_limit(MAX_HELD)
    }
}

impl Tally {
    pub fn with_limit(limit: usize) -> Tally {
        Tally { amplification: RefCell::default(), held: Cell::new(0), limit }
    }
}

/// One directory's entries, read one tree blob at a time and checked as one directory
/// (`Listing`): a walk holds one blob's entries per directory it is in, never a whole
/// directory (one may list 16 million entries). An entry that breaks a rule ends it with an
/// error naming the tree blob (and so does the walk's `Tally`); it yields nothing after that.
pub struct Entries<'r, 'a> {
    reader: &'r BlobReader<'a>,
    tally: &'r Tally,
    blobs: std::vec::IntoIter<BlobId>,
    nodes: std::vec::IntoIter<Node>,
    listing: Listing,
    /// Estimated bytes of the current blob's entries (`entries_size`), counted in the tally.
    held: usize,
}

impl Entries<'_, '_> {
    /// The next entry, in name order; None at the end.
    #[allow(clippy::should_implement_trait)] // fallible: an Iterator of Results would go on
    pub fn next(&mut self) -> Result<Option<Node>> {
        loop {
            if let Some(n) = self.nodes.next() {
                return Ok(Some(n));
            }
            let Some(id) = self.blobs.next() else {
                self.release();
                return Ok(None);
            };
            match self.read(&id) {
                Ok(nodes) => self.nodes = nodes.into_iter(),
                Err(e) => {
                    self.blobs = Vec::new().into_iter();
                    self.release();
                    return Err(e);
                }
            }
        }
    }

    fn read(&mut self, id: &BlobId) -> Result<Vec<Node>> {
        let name = || hex::encode(id);
        let (nodes, refused) = self.reader.tree_blob(id, &mut self.listing)?;
        if let Some(r) = refused.into_iter().next() {
            return Err(Error::corrupt("tree", name(), r.why));
        }
        let visit = self.tally.amplification.borrow_mut().visit(Some(id), nodes.len());
        visit.map_err(|why| Error::corrupt("tree", name(), why))?;
        let size = entries_size(&nodes);
        let held = self.tally.held.get() - self.held + size;
        self.tally.held.set(held);
        self.held = size;
        if held > self.tally.limit {
            let why = format!(
                "its entries and those of the directories above it take more than {} MiB",
                self.tally.limit >> 20
            );
            return Err(Error::corrupt("tree", name(), why));
        }
        Ok(nodes)
    }

    fn release(&mut self) {
        self.tally.held.set(self.tally.held.get() - self.held);
        self.held = 0;
        self.nodes = Vec::new().into_iter();
    }
}

impl Drop for Entries<'_, '_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strings() {
        let p = |s: &str| Location::parse(std::ffi::OsStr::new(s));
        assert_eq!(p("s3:https://h:9000/b/p").unwrap(), Location::S3("s3:https://h:9000/b/p".into()));
        assert_eq!(p("s3:http://h/b").unwrap(), Location::S3("s3:http://h/b".into()));
        // restic's form: https implied
        assert_eq!(
            p("s3:s3.example.com/bucket/pre").unwrap(),
            Location::S3("s3:https://s3.example.com/bucket/pre".into())
        );
        assert_eq!(
            p("serve:https://Backup.Example.com:8443/photos/").unwrap(),
            Location::Serve("serve:https://backup.example.com:8443/photos".into())
        );
        assert_eq!(p("serve:https://[::1]:9000/r01").unwrap().to_string(), "serve:https://[::1]:9000/r01");
        for (bad, why) in [
            ("serve:", "not a URL"),
            ("serve:http://h:1/r1", "https"),
            ("serve:https://h/r01", "port"),
            ("serve:https://h:1/", "no repository"),
            ("serve:https://h:1/a/b", "one name"),
            ("serve:https://h:1/UPPER", "lower-case"),
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        for bad in [
            "s3:",
            "s3:host",
            "s3:host/",
            "s3:/bucket",
            "s3:ftp://h/b",
            "sftp:u@h:/p",
            "rest:http://h/",
            "b2:b",
            "x+y.z-1:p",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
        for dir in ["./sftp:x", "/srv/a:b", "backups", "../b:c", "1x:y", ":z"] {
            assert_eq!(p(dir).unwrap(), Location::Local(dir.into()), "{dir}");
        }
        assert_eq!(p("local:/srv/b").unwrap(), Location::Local("/srv/b".into()));
        assert_eq!(p("local:sftp:x").unwrap(), Location::Local("sftp:x".into()));
    }

    #[test]
    fn slots_keep_the_most_recently_used_within_their_bytes() {
        let mut c = Slots::new(300);
        let b = |n: usize| Arc::new(vec![n as u8; n]);
        assert!(c.insert((0, 1), b(100)).is_empty());
        c.insert((0, 2), b(100));
        c.insert((0, 3), b(100));
        assert_eq!(c.get((0, 1)).map(|v| v.len()), Some(100)); // now the most recent
        assert_eq!(c.insert((1, 1), b(100)), vec![(0, 2)]); // the least recently used goes
        assert!(c.get((0, 2)).is_none());
        assert!(c.get((0, 1)).is_some() && c.get((0, 3)).is_some() && c.get((1, 1)).is_some());
        assert_eq!(c.bytes, 300);
        // Larger than the limit alone: kept, everything else goes.
        assert_eq!(c.insert((2, 0), b(1000)).len(), 3);
        assert_eq!((c.slots.len(), c.bytes), (1, 1000));
    }

    #[test]
    fn bundles_read_again_after_leaving_the_recent_ones_are_kept_longer() {
        let mut c = BundleCache::new(200, 1000);
        let b = || Arc::new(vec![0u8; 100]);
        // Read in order, once each: only the last two stay.
        for i in 0..10 {
            c.insert((0, i), b());
        }
        assert_eq!(c.recent.bytes + c.reread.bytes, 200);
        assert!(c.get((0, 0)).is_none() && c.get((0, 9)).is_some());
        // Bundle 0 is asked for again: it goes to the reread part and stays there while many
        // other bundles pass through the recent part.
        c.insert((0, 0), b());
        for i in 10..30 {
            c.insert((0, i), b());
        }
        assert!(c.get((0, 0)).is_some());
        assert_eq!((c.recent.bytes, c.reread.bytes), (200, 100));
        c.insert((0, 0), b()); // already kept: not added twice
        assert_eq!(c.reread.bytes, 100);
    }
}
