//! tag: change a snapshot's tags (restic's `tag --add/--remove/--set`). A snapshot record is
//! immutable and named by its hash, so a new record is written, with the same tree, time,
//! host, paths and everything else but the tags, naming the snapshot it replaces in
//! `original`; then the old one is removed. In that order: a stop in between leaves both
//! (the old one can be forgotten by name), never neither.
//!
//! An owner operation: the new record is signed with the owner's key, which only a full key
//! derives (a backup-only key could otherwise make the owner's `forget --keep-tag` keep, or
//! its policies drop, what it likes), and only the owner's own snapshots are retagged: a
//! writer's, signed anew by the owner, would leave that writer's `forget` group and escape its
//! revocation.
use crate::commit;
use crate::error::{Error, Result};
use crate::repo::{Repository, SnapshotEntry};
use crate::snapshot::{Snapshot, VERSION};
use crate::writers::Standing;

/// What to do to the tags, as restic does: `set` replaces them (and goes alone); otherwise
/// `add`, then `remove` (a tag in both is removed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagChange {
    pub set: Option<Vec<String>>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl TagChange {
    pub fn is_empty(&self) -> bool {
        self.set.is_none() && self.add.is_empty() && self.remove.is_empty()
    }

    /// The tags after the change: the old ones in their order, the new ones after.
    pub fn apply(&self, old: &[String]) -> Vec<String> {
        if let Some(set) = &self.set {
            let mut tags: Vec<String> = Vec::new();
            for t in set {
                if !tags.contains(t) {
                    tags.push(t.clone());
                }
            }
            return tags;
        }
        let mut tags = old.to_vec();
        for t in &self.add {
            if !tags.contains(t) {
                tags.push(t.clone());
            }
        }
        tags.retain(|t| !self.remove.contains(t));
        tags
    }
}

/// The record that replaces `old` with `tags`: everything else as it was, in the current
/// layout, naming the first snapshot of the chain.
pub fn retagged(old: &SnapshotEntry, tags: Vec<String>) -> Snapshot {
    Snapshot {
        version: VERSION,
        tags,
        original: Some(old.snapshot.original.clone().unwrap_or_else(|| old.id.clone())),
        ..old.snapshot.clone()
    }
}

/// Applies `change` to `old`: Ok(None) when its tags would not change (nothing is written),
/// else the new snapshot's id and record.
pub fn retag(
    repo: &Repository,
    old: &SnapshotEntry,
    change: &TagChange,
) -> Result<Option<(String, Snapshot)>> {
    if change.is_empty() {
        return Err(Error::Invalid("no tag change given (--add, --remove or --set)".into()));
    }
    // Refused before anything is written: a backup-only key cannot sign as the owner.
    let owner = repo.key.owner_signer()?;
    // Only the owner's own records: the new one is signed by the owner, so a writer's snapshot
    // retagged would leave its writer's `forget` group and escape a later `key revoke`.
    if !matches!(old.standing, Standing::Owner) {
        return Err(Error::Invalid(format!(
            "snapshot {} was written by {}, not the owner: only the owner's snapshots can be retagged \
             (the new record would be the owner's, outside that writer's forget group and revocation)",
            &old.id[..old.id.len().min(16)],
            old.writer()
        )));
    }
    let tags = change.apply(&old.snapshot.tags);
    if tags == old.snapshot.tags {
        return Ok(None);
    }
    let new = retagged(old, tags);
    let bytes = new.encode(&repo.key.recipient, &owner, &repo.config.repo_id)?;
    let id = commit::write_pending(repo, &bytes)?;
    commit::promote(repo, &id, &bytes)?;
    commit::remove_snapshot(repo, &old.id)?;
    Ok(Some((id, new)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(t: &[&str]) -> Vec<String> {
        t.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn changes_apply_like_restics() {
        let old = v(&["a", "b"]);
        let c = |set: Option<&[&str]>, add: &[&str], remove: &[&str]| TagChange {
            set: set.map(v),
            add: v(add),
            remove: v(remove),
        };
        assert_eq!(c(None, &["c"], &[]).apply(&old), v(&["a", "b", "c"]));
        assert_eq!(c(None, &["a"], &[]).apply(&old), old);
        assert_eq!(c(None, &[], &["a"]).apply(&old), v(&["b"]));
        assert_eq!(c(None, &[], &["z"]).apply(&old), old);
        assert_eq!(c(Some(&["x", "x"]), &[], &[]).apply(&old), v(&["x"]));
        assert_eq!(c(Some(&[]), &[], &[]).apply(&old), v(&[]));
        assert_eq!(c(None, &["c", "d"], &["a", "d"]).apply(&old), v(&["b", "c"]));
        assert_eq!(c(None, &["a"], &["a"]).apply(&old), v(&["b"]));
        assert!(TagChange::default().is_empty());
    }
}
