//! commit: how a snapshot is committed with storage credentials that can create and read but
//! not delete, and how the owner tells which `pending/` objects are leftovers it may remove
//! (design.md section 4, rule 4; docs/concurrency.md has the argument).
//!
//! A writer writes `pending/<id>`, checks the age of its view, then either promotes the
//! snapshot (`snapshots/<id>`, the same bytes) or gives it up for good (`abandoned/<id>`, a
//! proof that only the writer and the owner can compute). It deletes nothing, so an S3 bucket
//! policy can deny backup machines every DELETE (docs/remote.md). The owner's prune removes a
//! pending copy when its committed copy holds the same bytes, or when its writer's proof of
//! abandonment is valid; every other pending snapshot stays a root.
use crate::error::Result;
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// Context of the BLAKE3 key derivation that gives an abandonment proof.
const PROOF_CONTEXT: &str = "bakare 2026-11 abandoned pending snapshot";
/// `abandoned/<id>`: this magic, then the 32-byte proof.
pub const ABANDONED_MAGIC: &[u8; 8] = b"BKABAND1";

pub fn pending_key(id: &str) -> String {
    format!("pending/{id}")
}

pub fn committed_key(id: &str) -> String {
    format!("snapshots/{id}")
}

pub fn abandoned_key(id: &str) -> String {
    format!("abandoned/{id}")
}

/// The id of an object named `<dir>/<id>`.
pub fn id_of<'a>(dir: &str, name: &'a str) -> Option<&'a str> {
    name.strip_prefix(dir)?.strip_prefix('/').filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The ids of every `abandoned/` marker.
pub fn markers(repo: &Repository) -> Result<std::collections::HashSet<String>> {
    Ok(repo
        .backend
        .list("abandoned")?
        .iter()
        .filter_map(|n| id_of("abandoned", n))
        .map(str::to_string)
        .collect())
}

/// The proof that the writer of `snapshot` gave it up: a key derived from its plaintext, which
/// only its writer (before encrypting) and the owner (after decrypting) know. Another holder of
/// a backup key sees only the ciphertext; guessing the plaintext means guessing, among the rest,
/// two nanosecond clock readings (start time and duration), with one try per snapshot since
/// `abandoned/<id>` is created once and never replaced.
///
/// Over the record in its own layout (`Snapshot::body`): a pending snapshot of a version-1
/// writer, decoded by a later owner, gives the proof that writer computed.
pub fn abandon_proof(snapshot: &Snapshot) -> Result<[u8; 32]> {
    let body = snapshot.body()?;
    Ok(blake3::derive_key(PROOF_CONTEXT, &body))
}

/// Writes the pending copy; returns the snapshot's id (the hash of its bytes).
pub(crate) fn write_pending(repo: &Repository, bytes: &[u8]) -> Result<String> {
    let id = blake3::hash(bytes).to_hex().to_string();
    repo.backend.put(&pending_key(&id), bytes)?;
    Ok(id)
}

/// Promotes a pending snapshot. The pending copy stays: removing it needs delete permission,
/// which a backup machine need not have; the owner's prune removes it.
pub(crate) fn promote(repo: &Repository, id: &str, bytes: &[u8]) -> Result<()> {
    repo.backend.put(&committed_key(id), bytes)?;
    Ok(())
}

/// Records that the writer gives up `pending/<id>`: after this it never promotes it (callers
/// must hold to that), so the owner may remove it.
pub(crate) fn abandon(repo: &Repository, id: &str, snapshot: &Snapshot) -> Result<()> {
    let mut marker = ABANDONED_MAGIC.to_vec();
    marker.extend_from_slice(&abandon_proof(snapshot)?);
    repo.backend.put(&abandoned_key(id), &marker)?;
    Ok(())
}

/// Commits a snapshot outside a backup (repair): pending, then committed.
pub(crate) fn commit_snapshot(repo: &Repository, snapshot: &Snapshot) -> Result<String> {
    let bytes = snapshot.encode(&repo.key.recipient, &repo.key.snapshot_signer()?, &repo.config.repo_id)?;
    let id = write_pending(repo, &bytes)?;
    promote(repo, &id, &bytes)?;
    Ok(id)
}

/// Forgets a committed snapshot (an owner operation): the pending copy first, so that a stop
/// between the two leaves the committed copy, to be forgotten again, and never a pending copy
/// without it (which would stay a root of prune for good).
pub fn remove_snapshot(repo: &Repository, id: &str) -> Result<()> {
    repo.backend.delete(&pending_key(id))?;
    repo.backend.delete(&committed_key(id))?;
    Ok(())
}

/// What the owner may do with a pending snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingState {
    /// Not known to be finished with: a root of prune, kept.
    InFlight,
    /// `snapshots/<id>` holds the same bytes: the committed copy protects the same data, so
    /// the pending copy may go.
    Committed,
    /// Its writer proved it gave it up (a valid `abandoned/<id>`): it is never promoted, so it
    /// may go.
    Abandoned,
    /// An `abandoned/<id>` that proves nothing (damaged, or forged by someone who cannot read
    /// the snapshot): the pending snapshot is kept, as in flight.
    BadMarker,
}

impl PendingState {
    /// Whether the owner may remove the pending copy (and its marker).
    pub fn removable(self) -> bool {
        matches!(self, PendingState::Committed | PendingState::Abandoned)
    }
}

/// Classifies `pending/<id>` (its bytes and decoded snapshot), given the bytes of
/// `snapshots/<id>` and of `abandoned/<id>` where they exist. Any doubt keeps it.
pub fn classify(
    pending: &[u8],
    snapshot: &Snapshot,
    committed: Option<&[u8]>,
    marker: Option<&[u8]>,
) -> Result<PendingState> {
    if committed.is_some_and(|c| c == pending) {
        return Ok(PendingState::Committed);
    }
    let Some(marker) = marker else { return Ok(PendingState::InFlight) };
    let proof = match marker.strip_prefix(ABANDONED_MAGIC.as_slice()) {
        Some(p) => p,
        None => return Ok(PendingState::BadMarker),
    };
    let Ok(proof) = <[u8; 32]>::try_from(proof) else { return Ok(PendingState::BadMarker) };
    // blake3::Hash compares in constant time.
    if blake3::Hash::from(proof) == blake3::Hash::from(abandon_proof(snapshot)?) {
        Ok(PendingState::Abandoned)
    } else {
        Ok(PendingState::BadMarker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Stats, VERSION};

    fn snap(duration_ns: u64) -> Snapshot {
        Snapshot {
            version: VERSION,
            time_ns: 1_700_000_000_123_456_789,
            host: "h".into(),
            user: "u".into(),
            paths: vec![b"/x".to_vec()],
            tags: vec![],
            tree: vec![[7; 32]],
            stats: Stats { duration_ns, ..Stats::default() },
            errors: vec![],
            program: "bakare".into(),
            description: None,
            selection: Vec::new(),
            original: None,
        }
    }

    fn marker_for(s: &Snapshot) -> Vec<u8> {
        let mut m = ABANDONED_MAGIC.to_vec();
        m.extend_from_slice(&abandon_proof(s).unwrap());
        m
    }

    #[test]
    fn a_pending_copy_goes_only_when_committed_identically_or_abandoned_by_proof() {
        let s = snap(5);
        let bytes = b"BKSNAP01 the sealed bytes".to_vec();
        let other = b"BKSNAP01 other sealed bytes".to_vec();
        let c = |committed: Option<&[u8]>, marker: Option<&[u8]>| {
            classify(&bytes, &s, committed, marker).unwrap()
        };
        assert_eq!(c(None, None), PendingState::InFlight);
        assert_eq!(c(Some(&bytes), None), PendingState::Committed);
        // A committed copy with other bytes (a forged one) protects other data: kept.
        assert_eq!(c(Some(&other), None), PendingState::InFlight);
        assert_eq!(c(None, Some(&marker_for(&s))), PendingState::Abandoned);
        // The proof of a snapshot that differs by one nanosecond of duration proves nothing.
        assert_eq!(c(None, Some(&marker_for(&snap(6)))), PendingState::BadMarker);
        let mut short = marker_for(&s);
        short.pop();
        let mut unmagic = marker_for(&s);
        unmagic[0] ^= 1;
        for bad in [&b""[..], &short, &unmagic, ABANDONED_MAGIC.as_slice(), &[0; 40]] {
            assert_eq!(c(None, Some(bad)), PendingState::BadMarker, "{bad:?}");
        }
        assert!(!PendingState::BadMarker.removable() && !PendingState::InFlight.removable());
        assert!(PendingState::Committed.removable() && PendingState::Abandoned.removable());
    }

    #[test]
    fn ids_of_names() {
        assert_eq!(id_of("pending", "pending/ab12"), Some("ab12"));
        assert_eq!(id_of("pending", "pendingx/ab12"), None);
        assert_eq!(id_of("pending", "pending/"), None);
        assert_eq!(id_of("pending", "pending/a/b"), None);
        assert_eq!(id_of("abandoned", "pending/ab12"), None);
    }
}
