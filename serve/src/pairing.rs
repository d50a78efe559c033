//! Pairing: how a friend's machine (a publisher) becomes a client of this server without anyone
//! carrying an invitation, and without trusting whoever answered on the network.
//!
//! 1. `open`: the publisher sends its name and a commitment, BLAKE3 of a random 32-byte token
//!    T; the server answers with a request id and its own random nonce N.
//! 2. `reveal`: the publisher sends T; the server checks it against the commitment.
//! 3. Both compute the code: six digits of a keyed BLAKE3 of (certificate SHA-256, T, N), the
//!    publisher with the certificate it saw in the TLS handshake, the server with its own. The
//!    publisher shows it; the server's operator types it (`bakare serve --approve CODE`). A
//!    machine in the middle presents another certificate, so the codes differ, and it cannot
//!    choose its T after seeing N nor its N after seeing T (the commitment), so it matches one
//!    code in a million by chance: this is the commit-then-reveal of Bluetooth's numeric
//!    comparison and ZRTP's short authentication string.
//! 4. `poll`: with T, the publisher collects its credential once approved. The new client may
//!    use only its own repository (named after it), append-only, under the quota the operator
//!    gave.
//!
//! Requests live in `.serve/pairing.json` (the operator's `--approve` runs in another process),
//! at most [`MAX_PENDING`], each for [`EXPIRY`].

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::state::{valid_client_name, write_private, Client, StateDir};
use crate::{Error, Result};

const FILE: &str = "pairing.json";
const VERSION: u32 = 1;
/// Requests waiting at once; more are refused until some expire or are approved.
pub const MAX_PENDING: usize = 16;
/// Seconds a request waits for approval; an approved credential waits as long to be collected
/// (a client nobody collected is removed then).
pub const EXPIRY: u64 = 600;
/// Seconds a request may wait for its token: a publisher reveals it at once, so requests
/// opened and left (to fill the slots) go soon.
pub const REVEAL_WITHIN: u64 = 60;

/// The six-digit code both sides show, from the server certificate's SHA-256 (as the publisher
/// saw it, or as the server has it), the publisher's token and the server's nonce.
pub fn code(sha256: &[u8; 32], token: &[u8; 32], nonce: &[u8; 32]) -> String {
    digits("bakare 2026-12 pairing code v1", sha256, token, nonce)
}

/// The six digits `--approve` shows the server's owner, for the friend to type: proof that the
/// server which approved is the one the owner runs (an impostor that answered the friend's
/// request can approve it, but cannot show this on the real owner's screen).
pub fn confirmation(sha256: &[u8; 32], token: &[u8; 32], nonce: &[u8; 32]) -> String {
    digits("bakare 2026-12 pairing confirmation v1", sha256, token, nonce)
}

fn digits(context: &str, sha256: &[u8; 32], token: &[u8; 32], nonce: &[u8; 32]) -> String {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(sha256).update(token).update(nonce);
    let out = h.finalize();
    let b = out.as_bytes();
    // 2^64 mod 10^6 is small against 2^64: the bias is below 1e-13.
    let n = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) % 1_000_000;
    format!("{n:06}")
}

/// The commitment to a token.
pub fn commitment(token: &[u8; 32]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key("bakare 2026-12 pairing commitment v1")
        .update(token)
        .finalize()
        .as_bytes()
}

/// The repository a paired friend gets: its name in lower case (names that do not make one
/// are refused when the request is opened).
pub fn repo_of(name: &str) -> Option<String> {
    let r = name.to_ascii_lowercase();
    ::io::joined::valid_bucket(&r).then_some(r)
}

#[derive(Clone, Serialize, Deserialize)]
struct Request {
    id: String,
    name: String,
    commit: String,
    nonce: String,
    created: u64,
    /// Set by `reveal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    /// Set by the operator's approval: the client made for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approved: Option<Client>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    approved_at: Option<u64>,
    /// Set with the code: what `--approve` shows for the friend to type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confirmation: Option<String>,
}

impl Request {
    fn live(&self, now: u64) -> bool {
        match (&self.code, self.approved_at) {
            (_, Some(at)) => now.saturating_sub(at) < EXPIRY,
            (Some(_), None) => now.saturating_sub(self.created) < EXPIRY,
            (None, None) => now.saturating_sub(self.created) < REVEAL_WITHIN,
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    version: u32,
    requests: Vec<Request>,
}

/// A request as the operator sees it: not its code, which the operator must take from the
/// friend's screen, not from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub name: String,
    /// The repository it would get.
    pub repo: String,
    pub age_seconds: u64,
}

/// What `poll` finds.
#[derive(Debug)]
pub enum Poll {
    Waiting,
    Approved { client: Client, repo: String },
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn hex32(s: &str, what: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return Err(Error::Invalid(format!("{what} must be 64 hex digits")));
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| Error::Invalid(format!("{what} must be 64 hex digits")))?;
    Ok(out)
}

impl StateDir {
    /// Held while the pairing file is read, changed and written.
    fn lock_pairing(&self) -> Result<fs::File> {
        self.create()?;
        let path = self.file("pairing.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        f.lock().map_err(|e| Error::io(&path, e))?;
        Ok(f)
    }

    /// The directory holding the repositories.
    fn storage(&self) -> &std::path::Path {
        self.path().parent().unwrap_or(std::path::Path::new("."))
    }

    /// Refuses a repository name that is in use: a directory of that name exists (the owner's
    /// repository, another client's, a removed friend's) or a client has it.
    fn repo_free(&self, repo: &str) -> Result<()> {
        let taken = self.storage().join(repo).exists()
            || self.clients()?.values().any(|c| c.repo.as_deref() == Some(repo));
        if taken {
            return Err(Error::Invalid(format!(
                "a repository named {repo:?} exists on this server already: pair under another name (--as)"
            )));
        }
        Ok(())
    }

    /// The requests, with the expired ones dropped and, for approved ones nobody collected,
    /// their clients removed.
    fn live_requests(&self) -> Result<Vec<Request>> {
        let now = now();
        let (live, gone): (Vec<Request>, Vec<Request>) =
            self.requests()?.into_iter().partition(|r| r.live(now));
        if gone.is_empty() {
            return Ok(live);
        }
        for r in gone {
            if let Some(c) = r.approved {
                // Only the client made for it: the owner may have added another of that name.
                self.remove_client_if(&c.name, &c.secret)?;
            }
        }
        self.write_requests(live.clone())?;
        Ok(live)
    }

    /// Every request on file.
    fn requests(&self) -> Result<Vec<Request>> {
        let path = self.file(FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let f: File = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("{}: not a pairing file: {e}", path.display())))?;
        if f.version != VERSION {
            return Err(Error::Invalid(format!(
                "{}: pairing file version {} (this bakare reads {VERSION})",
                path.display(),
                f.version
            )));
        }
        Ok(f.requests)
    }

    fn write_requests(&self, requests: Vec<Request>) -> Result<()> {
        let path = self.file(FILE);
        let bytes = serde_json::to_vec_pretty(&File { version: VERSION, requests })
            .map_err(|e| Error::Invalid(format!("encoding {}: {e}", path.display())))?;
        write_private(&path, &bytes)
    }

    /// A publisher named `name` asks to pair, committing to a token; returns the request's id
    /// and the server's nonce (hex).
    pub fn pairing_open(&self, name: &str, commit: &str) -> Result<(String, String)> {
        if !valid_client_name(name) || repo_of(name).is_none() {
            return Err(Error::Invalid(format!(
                "{name:?} cannot be a friend's name: 3 to 63 letters, digits or '-', starting with a letter or digit"
            )));
        }
        hex32(commit, "the commitment")?;
        let _lock = self.lock_pairing()?;
        let mut requests = self.live_requests()?;
        if self.clients()?.contains_key(name) {
            return Err(Error::Invalid(format!(
                "the name {name:?} is taken on this server: pair under another name (--as)"
            )));
        }
        self.repo_free(&repo_of(name).unwrap_or_default())?;
        if requests.iter().any(|r| r.name == name && r.approved.is_none()) {
            return Err(Error::Invalid(format!("a request from {name:?} is waiting already")));
        }
        if requests.len() >= MAX_PENDING {
            return Err(Error::Invalid(format!(
                "{MAX_PENDING} pairing requests are waiting already: try again in a few minutes"
            )));
        }
        let (id, nonce) = (hex::encode(random()), hex::encode(random()));
        requests.push(Request {
            id: id.clone(),
            name: name.to_string(),
            commit: commit.to_string(),
            nonce: nonce.clone(),
            created: now(),
            code: None,
            approved: None,
            approved_at: None,
            confirmation: None,
        });
        self.write_requests(requests)?;
        Ok((id, nonce))
    }

    /// The publisher reveals its token; the code is fixed from then on.
    pub fn pairing_reveal(&self, id: &str, token: &str, sha256: &[u8; 32]) -> Result<()> {
        let t = hex32(token, "the token")?;
        let _lock = self.lock_pairing()?;
        let mut requests = self.live_requests()?;
        let r = requests
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| Error::Invalid("no such pairing request (it may have expired)".into()))?;
        if hex::encode(commitment(&t)) != r.commit {
            return Err(Error::Invalid("the token does not match the request's commitment".into()));
        }
        let nonce = hex32(&r.nonce, "the nonce")?;
        let code = code(sha256, &t, &nonce);
        match &r.code {
            Some(c) if *c == code => return Ok(()),
            Some(_) => return Err(Error::Invalid("the request's code is fixed already".into())),
            None => {
                r.code = Some(code);
                r.confirmation = Some(confirmation(sha256, &t, &nonce));
            }
        }
        self.write_requests(requests)
    }

    /// Whether the request `id` holding `token` was approved; an approved one is handed out
    /// once and forgotten.
    pub fn pairing_poll(&self, id: &str, token: &str) -> Result<Poll> {
        let t = hex32(token, "the token")?;
        let _lock = self.lock_pairing()?;
        let mut requests = self.live_requests()?;
        let i = requests
            .iter()
            .position(|r| r.id == id && hex::encode(commitment(&t)) == r.commit)
            .ok_or_else(|| Error::Invalid("no such pairing request (it may have expired)".into()))?;
        if requests[i].approved.is_none() {
            return Ok(Poll::Waiting);
        }
        let r = requests.remove(i);
        self.write_requests(requests)?;
        let client = r.approved.ok_or_else(|| Error::Invalid("approved request without a client".into()))?;
        let repo = client.repo.clone().unwrap_or_default();
        Ok(Poll::Approved { client, repo })
    }

    /// The requests waiting for the operator (revealed, not yet approved).
    pub fn pairing_pending(&self) -> Result<Vec<Pending>> {
        let now = now();
        let _lock = self.lock_pairing()?;
        Ok(self
            .live_requests()?
            .into_iter()
            .filter(|r| r.approved.is_none() && r.code.is_some())
            .map(|r| Pending {
                age_seconds: now.saturating_sub(r.created),
                repo: repo_of(&r.name).unwrap_or_default(),
                name: r.name,
            })
            .collect())
    }

    /// The operator approves the request showing `code`: its publisher becomes an append-only
    /// client of its own repository, with `quota`. A code no request shows is refused.
    /// Returns the client and the confirmation code for the friend to type.
    pub fn pairing_approve(&self, code: &str, quota: Option<u64>) -> Result<(Client, String)> {
        let code: String = code.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
        let _lock = self.lock_pairing()?;
        let mut requests = self.live_requests()?;
        let waiting: Vec<usize> = requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r.approved.is_none() && r.code.as_deref() == Some(code.as_str()))
            .map(|(i, _)| i)
            .collect();
        let [i] = waiting[..] else {
            let names: Vec<String> = requests
                .iter()
                .filter(|r| r.approved.is_none() && r.code.is_some())
                .map(|r| r.name.clone())
                .collect();
            return Err(Error::Invalid(if waiting.is_empty() {
                format!(
                    "no pairing request shows code {code}: compare the code on the friend's machine \
                     (waiting: {})",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                )
            } else {
                format!(
                    "{} requests show code {code}: nothing approved; ask them to pair again",
                    waiting.len()
                )
            }));
        };
        let name = requests[i].name.clone();
        let repo =
            repo_of(&name).ok_or_else(|| Error::Invalid(format!("{name:?} makes no repository name")))?;
        self.repo_free(&repo)?;
        let client = self.add_client_for(&name, quota, Some(repo))?;
        requests[i].approved = Some(client.clone());
        requests[i].approved_at = Some(now());
        let confirmation = requests[i].confirmation.clone().unwrap_or_default();
        self.write_requests(requests)?;
        Ok((client, confirmation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: &StateDir, name: &str, fp: &[u8; 32]) -> (String, [u8; 32], String) {
        let token = random();
        let (id, nonce) = s.pairing_open(name, &hex::encode(commitment(&token))).unwrap();
        s.pairing_reveal(&id, &hex::encode(token), fp).unwrap();
        let code = code(fp, &token, &hex32(&nonce, "n").unwrap());
        (id, token, code)
    }

    #[test]
    fn the_right_code_approves_and_hands_out_the_credential_once() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let fp = [7u8; 32];
        let (id, token, code) = pair(&s, "alice-laptop", &fp);
        let pending = s.pairing_pending().unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].name.as_str(), pending[0].repo.as_str()), ("alice-laptop", "alice-laptop"));
        assert!(matches!(s.pairing_poll(&id, &hex::encode(token)).unwrap(), Poll::Waiting));
        let wrong = if code == "000000" { "000001" } else { "000000" };
        let e = s.pairing_approve(wrong, None).unwrap_err().to_string();
        assert!(e.contains("no pairing request shows code") && e.contains("alice-laptop"), "{e}");
        assert!(s.clients().unwrap().is_empty(), "a wrong code adds no client");
        let (c, confirm) =
            s.pairing_approve(&format!("{} {}", &code[..3], &code[3..]), Some(1 << 30)).unwrap();
        assert_eq!(confirm, confirmation(&fp, &token, &hex32(&s.requests().unwrap()[0].nonce, "n").unwrap()));
        assert_ne!(confirm, code);
        assert_eq!(c.repo.as_deref(), Some("alice-laptop"));
        assert!(!c.owner);
        assert!(s.pairing_poll(&id, &hex::encode(random())).is_err(), "another token is refused");
        match s.pairing_poll(&id, &hex::encode(token)).unwrap() {
            Poll::Approved { client, repo } => {
                assert_eq!(client.secret, c.secret);
                assert_eq!(repo, "alice-laptop");
            }
            Poll::Waiting => panic!("approved"),
        }
        assert!(s.pairing_poll(&id, &hex::encode(token)).is_err(), "handed out once");
        assert_eq!(s.clients().unwrap()["alice-laptop"].quota, Some(1 << 30));
    }

    #[test]
    fn a_credential_nobody_collected_is_removed_with_its_request() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let (id, token, code) = pair(&s, "erin", &[3; 32]);
        s.pairing_approve(&code, None).unwrap();
        assert!(s.clients().unwrap().contains_key("erin"));
        // Approved EXPIRY seconds ago and never collected.
        let path = s.file(FILE);
        let text = fs::read_to_string(&path).unwrap();
        let at = text
            .split("\"approved_at\": ")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap();
        fs::write(&path, text.replace(&format!("\"approved_at\": {at}"), "\"approved_at\": 1")).unwrap();
        assert!(s.pairing_pending().unwrap().is_empty());
        assert!(!s.clients().unwrap().contains_key("erin"), "its client is removed");
        assert!(s.pairing_poll(&id, &hex::encode(token)).is_err());
    }

    #[test]
    fn a_token_that_does_not_match_its_commitment_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let (id, _) = s.pairing_open("bob-pc", &hex::encode(commitment(&[1; 32]))).unwrap();
        assert!(s.pairing_reveal(&id, &hex::encode([2u8; 32]), &[0; 32]).is_err());
        assert!(s.pairing_pending().unwrap().is_empty(), "no code without the committed token");
        s.pairing_reveal(&id, &hex::encode([1u8; 32]), &[0; 32]).unwrap();
        assert_eq!(s.pairing_pending().unwrap().len(), 1);
    }

    #[test]
    fn names_floods_and_existing_clients_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let c = hex::encode([0u8; 32]);
        for bad in ["", "ab", "has space", "dot.ted", "_under", &"x".repeat(64)] {
            assert!(s.pairing_open(bad, &c).is_err(), "{bad:?}");
        }
        assert!(s.pairing_open("carol", "zz").is_err());
        s.add_client("dave", false, None).unwrap();
        assert!(s.pairing_open("dave", &c).unwrap_err().to_string().contains("taken"));
        std::fs::create_dir(d.path().join("photos")).unwrap();
        let e = s.pairing_open("Photos", &c).unwrap_err().to_string();
        assert!(
            e.contains("a repository named \"photos\" exists"),
            "the owner's repository is not given away: {e}"
        );
        for i in 0..MAX_PENDING {
            s.pairing_open(&format!("node-{i}"), &c).unwrap();
        }
        assert!(s.pairing_open("one-more", &c).unwrap_err().to_string().contains("waiting already"));
    }

    #[test]
    fn the_code_depends_on_each_input() {
        let base = code(&[1; 32], &[2; 32], &[3; 32]);
        assert_eq!(base.len(), 6);
        assert_ne!(base, code(&[9; 32], &[2; 32], &[3; 32]));
        assert_ne!(base, code(&[1; 32], &[9; 32], &[3; 32]));
        assert_ne!(base, code(&[1; 32], &[2; 32], &[9; 32]));
    }
}
