//! Key files. A full key holds the age identity (secret: restore, find, prune), its recipient
//! and the writer key; a backup key holds only the recipient and the writer key (back up and
//! dedup, never read back). Format (text, versioned, checksummed):
//! ```text
//! # comment lines
//! bakare-key-v1
//! repository: <32 hex>
//! recipient: age1...
//! writer: <64 hex>
//! identity: AGE-SECRET-KEY-1...     (full keys only; or, protected by a passphrase:)
//! identity-sealed: <hex of the identity encrypted with age's scrypt passphrase recipient>
//! owner: <64 hex>      (backup-only keys: the owner's Ed25519 public key, to check config
//!                       and condemnation records)
//! name: <writer name>  (backup-only keys: as registered by the owner)
//! signer: <64 hex>     (backup-only keys: the seed of the writer's own Ed25519 key, which
//!                       signs its snapshots)
//! checksum: <64 hex: BLAKE3 of the lines above, from bakare-key-v1 on, each ending in \n>
//! ```
//! Keys live outside the repository, in `$XDG_CONFIG_HOME/bakare/keys/<repository>.key`, 0600.
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::sync::OnceLock;

use age::secrecy::{ExposeSecret, SecretString};

use crate::crypto::{Secret32, WriterKeys};
use crate::error::{Error, Result};
use crate::signing::{PublicKey, SigningKey};

const HEADER: &str = "bakare-key-v1";

#[derive(Clone)]
pub struct Key {
    pub repo_id: [u8; 16],
    pub recipient: age::x25519::Recipient,
    pub writer: Secret32,
    pub identity: Option<age::x25519::Identity>,
    /// Backup-only keys: the owner's public signing key, the writer's name and its own
    /// signing key (None in backup-only keys made before writers were registered: those are
    /// refused, and the owner exports new ones).
    pub owner: Option<PublicKey>,
    pub name: Option<String>,
    pub signer: Option<SigningKey>,
    /// The passphrase the identity is sealed with in the key file (None: stored in clear).
    pub passphrase: Option<SecretString>,
    /// Where it was loaded from (for messages).
    pub path: PathBuf,
}

/// Where a sealed identity's passphrase comes from: set once by the CLI (environment, a
/// command, or a prompt on the terminal). Without one, only `BAKARE_PASSPHRASE` is read.
pub type PassphraseSource = Box<dyn Fn(&Path) -> Result<SecretString> + Send + Sync>;
static PASSPHRASE_SOURCE: OnceLock<PassphraseSource> = OnceLock::new();

pub fn set_passphrase_source(f: PassphraseSource) {
    let _ = PASSPHRASE_SOURCE.set(f);
}

fn passphrase_for(path: &Path) -> Result<SecretString> {
    match PASSPHRASE_SOURCE.get() {
        Some(f) => f(path),
        None => std::env::var("BAKARE_PASSPHRASE").map(SecretString::from).map_err(|_| {
            Error::Key(format!("{} is protected by a passphrase: set BAKARE_PASSPHRASE", path.display()))
        }),
    }
}

/// A writer's name: 1 to 64 of `A-Z a-z 0-9 . _ - @`, and not `owner` (what the owner's own
/// snapshots show).
pub fn valid_writer_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s != crate::writers::OWNER
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

impl Key {
    pub fn generate(repo_id: [u8; 16]) -> Key {
        let identity = age::x25519::Identity::generate();
        Key {
            repo_id,
            recipient: identity.to_public(),
            writer: Secret32::random(),
            identity: Some(identity),
            owner: None,
            name: None,
            signer: None,
            passphrase: None,
            path: PathBuf::new(),
        }
    }

    /// The owner's public signing key: derived from the identity, or as a backup-only key
    /// carries it.
    pub fn owner_public(&self) -> Option<PublicKey> {
        match &self.identity {
            Some(id) => Some(SigningKey::owner(id).public()),
            None => self.owner,
        }
    }

    /// The owner's signing key (full keys only).
    pub fn owner_signer(&self) -> Result<SigningKey> {
        Ok(SigningKey::owner(self.identity()?))
    }

    /// The key that signs this key's snapshots: the owner's, or the writer's own.
    pub fn snapshot_signer(&self) -> Result<SigningKey> {
        if let Some(id) = &self.identity {
            return Ok(SigningKey::owner(id));
        }
        self.signer.clone().ok_or_else(|| {
            Error::Key(format!(
                "{} is a backup-only key from before writers were registered; the owner must export \
                 a new one (bakare key export --backup-only --name NAME FILE)",
                self.path.display()
            ))
        })
    }

    pub fn writer_keys(&self) -> WriterKeys {
        WriterKeys::derive(&self.writer)
    }

    /// The secret identity, or a clear refusal for a backup-only key.
    pub fn identity(&self) -> Result<&age::x25519::Identity> {
        self.identity.as_ref().ok_or_else(|| Error::BackupOnlyKey(self.path.clone()))
    }

    /// Short fingerprint of the public key, shown to users and stored in the config.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.recipient)
    }

    /// A new backup-only key named `name`, with a signing key of its own (which the owner
    /// registers).
    pub fn backup_only(&self, name: &str) -> Result<Key> {
        if !valid_writer_name(name) {
            return Err(Error::Invalid(format!(
                "writer name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
            )));
        }
        Ok(Key {
            repo_id: self.repo_id,
            recipient: self.recipient.clone(),
            writer: self.writer.clone(),
            identity: None,
            owner: Some(self.owner_signer()?.public()),
            name: Some(name.to_string()),
            signer: Some(SigningKey::generate()),
            passphrase: None,
            path: self.path.clone(),
        })
    }

    /// The key file's text. A sealed identity is sealed again (new salt) with its passphrase;
    /// that costs about a second (scrypt, tuned by age to the machine).
    pub fn encode(&self) -> Result<String> {
        let mut body = format!(
            "{HEADER}\nrepository: {}\nrecipient: {}\nwriter: {}\n",
            hex::encode(self.repo_id),
            self.recipient,
            hex::encode(self.writer.as_bytes())
        );
        match (&self.identity, &self.passphrase) {
            (Some(id), None) => body.push_str(&format!("identity: {}\n", id.to_string().expose_secret())),
            (Some(id), Some(pass)) => {
                let sealed = age::encrypt(
                    &age::scrypt::Recipient::new(pass.clone()),
                    id.to_string().expose_secret().as_bytes(),
                )
                .map_err(|e| Error::Key(format!("cannot seal the identity: {e}")))?;
                body.push_str(&format!("identity-sealed: {}\n", hex::encode(sealed)));
            }
            (None, _) => {}
        }
        if let Some(owner) = &self.owner {
            body.push_str(&format!("owner: {}\n", hex::encode(owner)));
        }
        if let Some(name) = &self.name {
            body.push_str(&format!("name: {name}\n"));
        }
        if let Some(signer) = &self.signer {
            body.push_str(&format!("signer: {}\n", hex::encode(*signer.seed())));
        }
        let sum = blake3::hash(body.as_bytes()).to_hex();
        let kind = if self.identity.is_some() {
            "# bakare FULL key: it can read every backup. Keep a copy somewhere safe and private;\n# without it the backups cannot be restored.\n"
        } else {
            "# bakare BACKUP-ONLY key: it can add backups but not read them.\n"
        };
        Ok(format!("{kind}{body}checksum: {sum}\n"))
    }

    /// A key file's key; a sealed identity is opened with the passphrase `passphrase` gives
    /// (asked for only then).
    pub fn decode_with(
        text: &str,
        path: &Path,
        passphrase: &dyn Fn(&Path) -> Result<SecretString>,
    ) -> Result<Key> {
        let bad = |why: &str| Error::Key(format!("{}: {why}", path.display()));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        if lines.first() != Some(&HEADER) {
            return Err(bad("not a bakare key file (or an unsupported version)"));
        }
        let mut body = String::new();
        let (mut repo, mut recipient, mut writer, mut identity, mut checksum) =
            (None, None, None, None, None);
        let (mut owner, mut name, mut signer, mut sealed) = (None, None, None, None);
        for line in &lines {
            let (k, v) = match line.split_once(": ") {
                Some(kv) => kv,
                None if *line == HEADER => ("", ""),
                None => return Err(bad("malformed line")),
            };
            if k != "checksum" {
                body.push_str(line);
                body.push('\n');
            }
            match k {
                "" => {}
                "repository" => repo = Some(v),
                "recipient" => recipient = Some(v),
                "writer" => writer = Some(v),
                "identity" => identity = Some(v),
                "owner" => owner = Some(v),
                "name" => name = Some(v),
                "signer" => signer = Some(v),
                "identity-sealed" => sealed = Some(v),
                "checksum" => checksum = Some(v),
                _ => return Err(bad("unknown field")),
            }
        }
        let sum = blake3::hash(body.as_bytes()).to_hex();
        if checksum != Some(sum.as_str()) {
            return Err(bad("checksum mismatch (damaged or edited key file)"));
        }
        let repo_id: [u8; 16] = hex::decode(repo.ok_or_else(|| bad("no repository"))?)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("bad repository id"))?;
        let hex32 = |v: &str| -> Option<[u8; 32]> { hex::decode(v).ok().and_then(|v| v.try_into().ok()) };
        let writer =
            hex32(writer.ok_or_else(|| bad("no writer key"))?).ok_or_else(|| bad("bad writer key"))?;
        let owner = owner.map(|v| hex32(v).ok_or_else(|| bad("bad owner key"))).transpose()?;
        let signer = signer
            .map(|v| hex32(v).map(|s| SigningKey::from_seed(&s)).ok_or_else(|| bad("bad signer key")))
            .transpose()?;
        if let Some(n) = name.filter(|n| !valid_writer_name(n)) {
            return Err(bad(&format!("bad writer name {n:?}")));
        }
        let recipient = age::x25519::Recipient::from_str(recipient.ok_or_else(|| bad("no recipient"))?)
            .map_err(|_| bad("bad recipient"))?;
        let mut pass = None;
        let opened;
        let identity = match (identity, sealed) {
            (Some(_), Some(_)) => return Err(bad("both a clear and a sealed identity")),
            (None, Some(hx)) => {
                let ct = hex::decode(hx).map_err(|_| bad("bad sealed identity"))?;
                let p = passphrase(path)?;
                let plain =
                    age::decrypt(&age::scrypt::Identity::new(p.clone()), &ct).map_err(|e| match e {
                        age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                            bad("wrong passphrase")
                        }
                        e => bad(&format!("cannot open the sealed identity: {e}")),
                    })?;
                pass = Some(p);
                opened = zeroize::Zeroizing::new(
                    String::from_utf8(plain).map_err(|_| bad("the sealed identity is not text"))?,
                );
                Some(opened.as_str())
            }
            (id, None) => id,
        };
        let identity = match identity {
            Some(s) => {
                let id = age::x25519::Identity::from_str(s).map_err(|_| bad("bad identity"))?;
                if id.to_public().to_string() != recipient.to_string() {
                    return Err(bad("identity does not match recipient"));
                }
                if owner.is_some_and(|o| o != SigningKey::owner(&id).public()) {
                    return Err(bad("owner key does not match identity"));
                }
                Some(id)
            }
            None => None,
        };
        Ok(Key {
            repo_id,
            recipient,
            writer: Secret32::from_bytes(writer),
            identity,
            owner,
            name: name.map(str::to_string),
            signer,
            passphrase: pass,
            path: path.to_path_buf(),
        })
    }

    /// A key file's key, without a passphrase (a sealed identity is refused).
    pub fn decode(text: &str, path: &Path) -> Result<Key> {
        Key::decode_with(text, path, &|p| {
            Err(Error::Key(format!("{} is protected by a passphrase", p.display())))
        })
    }

    pub fn load(path: &Path) -> Result<Key> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let key = Key::decode_with(&text, path, &passphrase_for)?;
        if let Some(why) = loose_mode(path, &key) {
            eprintln!("warning: {why}");
        }
        Ok(key)
    }

    /// Writes the key file with mode 0600, never replacing an existing file.
    pub fn save(&self, path: &Path) -> Result<()> {
        // Directories it creates are 0700; one that exists keeps its mode (`key export` to
        // /tmp/x.key must not make /tmp private).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            ::io::durable::create_private_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let text = self.encode()?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))?;
        f.sync_all().map_err(|e| Error::io(path, e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            ::io::durable::sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }

    /// Rewrites the key file at `self.path` (a new passphrase, or none): a temporary file
    /// (0600) beside it, fsynced, renamed over it, and the directory fsynced; the old file stays
    /// whole until the rename.
    pub fn rewrite(&self) -> Result<()> {
        let path = &self.path;
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let tmp = ::io::durable::temp_path(&dir);
        let mut temp = self.clone();
        temp.path = tmp.clone();
        let written = temp.save(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        ::io::durable::sync_dir(&dir).map_err(|e| Error::io(&dir, e))
    }
}

/// Why a key file's permissions are too loose (group or others may read it), if they are.
/// Every key file holds secrets: a full key the identity; a backup-only key the writer key and
/// the writer's signing key, with which a reader could sign snapshots as that writer.
fn loose_mode(path: &Path, key: &Key) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = fs::metadata(path).ok()?.mode() & 0o777;
    let what = if key.identity.is_some() { "a secret key" } else { "a backup-only key's secrets" };
    (mode & 0o077 != 0).then(|| {
        format!("{} holds {what} but is readable by others (mode {mode:o}): chmod 600 it", path.display())
    })
}

pub fn fingerprint(recipient: &age::x25519::Recipient) -> String {
    let h = blake3::hash(recipient.to_string().as_bytes());
    let hx = h.to_hex();
    format!("{}-{}-{}-{}", &hx[0..4], &hx[4..8], &hx[8..12], &hx[12..16])
}

/// Where keys are kept by default: `$XDG_CONFIG_HOME/bakare/keys`.
pub fn key_dir() -> Result<PathBuf> {
    dirs::config_dir()
        .map(|d| d.join("bakare").join("keys"))
        .ok_or_else(|| Error::Key("cannot find a config directory (set HOME or XDG_CONFIG_HOME)".into()))
}

pub fn default_key_path(repo_id: &[u8; 16]) -> Result<PathBuf> {
    Ok(key_dir()?.join(format!("{}.key", hex::encode(repo_id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_checksum() {
        let k = Key::generate([3; 16]);
        let text = k.encode().unwrap();
        let d = Key::decode(&text, Path::new("k")).unwrap();
        assert_eq!(d.writer, k.writer);
        assert_eq!(d.recipient.to_string(), k.recipient.to_string());
        assert!(d.identity.is_some());
        let b = Key::decode(&k.backup_only("laptop").unwrap().encode().unwrap(), Path::new("b")).unwrap();
        assert!(b.identity.is_none());
        assert_eq!(b.owner_public(), k.owner_public());
        assert_eq!(b.name.as_deref(), Some("laptop"));
        assert_ne!(b.snapshot_signer().unwrap().public(), k.snapshot_signer().unwrap().public());
        assert!(k.backup_only("no/slash").is_err());
        assert!(b.backup_only("x").is_err(), "a backup-only key cannot make others");
        assert!(matches!(b.identity(), Err(Error::BackupOnlyKey(_))));
        // flipping a character of the writer key is caught
        let pos = text.find("writer: ").unwrap() + 9;
        let mut t = text.into_bytes();
        t[pos] = if t[pos] == b'0' { b'1' } else { b'0' };
        assert!(Key::decode(std::str::from_utf8(&t).unwrap(), Path::new("k")).is_err());
        assert!(Key::decode("garbage", Path::new("k")).is_err());
    }

    #[test]
    fn a_sealed_identity_opens_with_its_passphrase_only() {
        let mut k = Key::generate([4; 16]);
        k.passphrase = Some(SecretString::from("correct horse".to_string()));
        let text = k.encode().unwrap();
        assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
        let right = |_: &Path| Ok(SecretString::from("correct horse".to_string()));
        let wrong = |_: &Path| Ok(SecretString::from("battery staple".to_string()));
        let d = Key::decode_with(&text, Path::new("k"), &right).unwrap();
        assert_eq!(
            d.identity.unwrap().to_string().expose_secret(),
            k.identity.as_ref().unwrap().to_string().expose_secret()
        );
        let e = Key::decode_with(&text, Path::new("k"), &wrong).err().unwrap().to_string();
        assert!(e.contains("wrong passphrase"), "{e}");
        assert!(Key::decode(&text, Path::new("k"))
            .err()
            .unwrap()
            .to_string()
            .contains("protected by a passphrase"));
    }
}
