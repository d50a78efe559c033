//! rewrite: a snapshot again without the paths that match exclude patterns (restic's
//! `rewrite`): a leaked secret, a huge file. Directories with nothing matching below them keep
//! their trees; the others are written again without the matching entries, blob for blob. The
//! new record keeps the time, host, paths and everything else, is tagged `rewritten`, and names
//! the first snapshot of its chain in `original`.
//! The old one stays unless `forget`; what only it referenced goes at the next prune.
//!
//! An owner operation, like `tag`: the new record is the owner's (signed with the owner's
//! key), so only the owner's own snapshots are rewritten.
use std::collections::HashSet;
use std::path::Path;

use stages::BlobId;

use crate::commit;
use crate::error::{Error, Result};
use crate::ops::select::{Patterns, Rules};
use crate::repo::{BlobReader, Repository, SnapshotEntry};
use crate::snapshot::{Snapshot, VERSION};
use crate::tree::{NodeKind, Tree};
use crate::writer::BlobWriter;
use crate::writers::Standing;

/// What `rewrite` did to one snapshot.
#[derive(Debug)]
pub struct Rewritten {
    pub old: String,
    /// The new snapshot's id; None in a dry run, or when nothing matched.
    pub new: Option<String>,
    /// The paths left out (absolute; a directory stands for everything in it).
    pub removed: Vec<Vec<u8>>,
    /// Whether the old snapshot was removed (`forget`).
    pub forgotten: bool,
}

struct Walk<'a, 'w> {
    reader: &'w BlobReader<'a>,
    writer: Option<&'w mut BlobWriter<'a>>,
    patterns: &'w Patterns,
    removed: Vec<Vec<u8>>,
    /// Left-out paths: a later hard link to one of them (or to anything below a left-out
    /// directory) becomes a file of its own, since its target is gone.
    gone: HashSet<Vec<u8>>,
    /// The shared-subtree bound every walker keeps (docs/security.md): entries visited, and
    /// the distinct tree blobs read with their entries.
    visited: u64,
    distinct: HashSet<BlobId>,
    distinct_entries: u64,
}

fn os(b: &[u8]) -> &Path {
    Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b))
}

impl Walk<'_, '_> {
    /// A hard link's target (relative to the snapshot root) was left out.
    fn target_gone(&self, target: &[u8]) -> bool {
        let mut t = b"/".to_vec();
        t.extend_from_slice(target);
        let mut at = t.len();
        loop {
            if self.gone.contains(&t[..at]) {
                return true;
            }
            match t[..at].iter().rposition(|&c| c == b'/') {
                Some(0) | None => return false,
                Some(i) => at = i,
            }
        }
    }

    /// The directory stored as `ids` at `path` without the matching entries: None when
    /// nothing in it matched (its trees stay), else its new trees (none for a blob emptied:
    /// a backup writes none for an empty directory either).
    fn dir(&mut self, ids: &[BlobId], path: &[u8], depth: usize) -> Result<Option<Vec<BlobId>>> {
        let shown = || String::from_utf8_lossy(if path.is_empty() { b"/" } else { path }).into_owned();
        if depth > crate::tree::MAX_DEPTH {
            return Err(Error::corrupt("directory", shown(), "deeper than a snapshot holds"));
        }
        let mut out = Vec::with_capacity(ids.len());
        let mut changed = false;
        // Its blobs checked as one directory (names in order and unique across them).
        let mut listing = crate::tree::Listing::default();
        for id in ids {
            let (nodes, refused) = self.reader.tree_blob(id, &mut listing)?;
            if let Some(r) = refused.first() {
                // Written again, it would be signed anew without them: `check` names it,
                // `repair snapshots` deals with it.
                return Err(Error::corrupt(
                    "directory",
                    shown(),
                    format!(
                        "entry {:?} is invalid ({}); run `bakare check`",
                        String::from_utf8_lossy(&r.name),
                        r.why
                    ),
                ));
            }
            if self.distinct.insert(*id) {
                self.distinct_entries += nodes.len() as u64;
            }
            self.visited += nodes.len() as u64;
            if self.visited > (self.distinct_entries * 1024).max(16_384) {
                return Err(Error::corrupt(
                    "snapshot",
                    shown(),
                    "its directories repeat shared subtrees far more than a real tree does",
                ));
            }
            let mut kept = Vec::with_capacity(nodes.len());
            let mut this = false;
            for mut n in nodes {
                let mut child = path.to_vec();
                child.push(b'/');
                child.extend_from_slice(&n.name);
                if child.len() >= crate::tree::MAX_PATH {
                    return Err(Error::corrupt("directory", shown(), "a path longer than a snapshot holds"));
                }
                if self.patterns.is_match(os(&child)) {
                    self.gone.insert(child.clone());
                    self.removed.push(child);
                    this = true;
                    continue;
                }
                match &mut n.kind {
                    NodeKind::Dir { subtree } => {
                        if let Some(new) = self.dir(subtree, &child, depth + 1)? {
                            *subtree = new;
                            this = true;
                        }
                    }
                    NodeKind::HardLink { target, size, content } if self.target_gone(target) => {
                        n.kind = NodeKind::File { size: *size, content: std::mem::take(content) };
                        this = true;
                    }
                    _ => {}
                }
                kept.push(n);
            }
            changed |= this;
            match (this, self.writer.as_deref_mut()) {
                (true, _) if kept.is_empty() => {}
                (true, Some(w)) => out.push(w.put_tree(&Tree { nodes: kept })?),
                _ => out.push(*id),
            }
        }
        Ok(changed.then_some(out))
    }
}

/// Compiled exclude patterns for `rewrite` (`Rules::exclude`, `Rules::exclude_file`).
pub fn patterns(rules: &Rules) -> Result<Patterns> {
    if rules.globs().is_empty() {
        return Err(Error::Invalid("say what to leave out: --exclude or --exclude-file".into()));
    }
    Patterns::new(rules.globs())
}

/// Rewrites each of `snapshots` without the paths `rules` exclude, one at a time: its packs
/// and index segment, its record, then (`forget`) the removal of the old one, before the next
/// is read. `done` hears of each as it is done, so a failure later leaves a true account.
pub fn rewrite(
    repo: &Repository,
    snapshots: &[&SnapshotEntry],
    rules: &Rules,
    forget: bool,
    dry_run: bool,
    done: &mut dyn FnMut(Rewritten),
) -> Result<()> {
    let patterns = patterns(rules)?;
    // Refused before anything is read or written: a backup-only key can neither read trees
    // nor sign as the owner.
    let owner = repo.key.owner_signer()?;
    repo.key.identity()?;
    for s in snapshots {
        if !matches!(s.standing, Standing::Owner) {
            return Err(Error::Invalid(format!(
                "snapshot {} was written by {}, not the owner: only the owner's snapshots can be \
                 rewritten (the new record would be the owner's, outside that writer's forget group \
                 and revocation); `forget` removes it",
                &s.id[..s.id.len().min(16)],
                s.writer()
            )));
        }
    }
    let (index, _) = repo.load_index()?;
    let reader = BlobReader::new(repo, &index)?;
    for s in snapshots {
        let mut writer = if dry_run { None } else { Some(BlobWriter::new(repo, &index)?) };
        let mut walk = Walk {
            reader: &reader,
            writer: writer.as_mut(),
            patterns: &patterns,
            removed: Vec::new(),
            gone: HashSet::new(),
            visited: 0,
            distinct: HashSet::new(),
            distinct_entries: 0,
        };
        let tree = walk.dir(&s.snapshot.tree, b"", 1)?;
        let removed = walk.removed;
        let mut r = Rewritten { old: s.id.clone(), new: None, removed, forgotten: false };
        if let (Some(tree), Some(w)) = (tree, writer) {
            // Packs and their segment first, then the record that refers to them.
            w.finish()?;
            let record = rewritten(s, tree, &patterns);
            let bytes = record.encode(&repo.key.recipient, &owner, &repo.config.repo_id)?;
            let id = commit::write_pending(repo, &bytes)?;
            commit::promote(repo, &id, &bytes)?;
            r.new = Some(id);
            if forget {
                commit::remove_snapshot(repo, &r.old)?;
                r.forgotten = true;
            }
        }
        done(r);
    }
    Ok(())
}

/// The record of `old` with `tree`, tagged `rewritten`, without the notes of files that are
/// left out now. What was left out is not listed in it (a path can be what had to go).
fn rewritten(old: &SnapshotEntry, tree: Vec<BlobId>, patterns: &Patterns) -> Snapshot {
    let mut tags = old.snapshot.tags.clone();
    if !tags.iter().any(|t| t == "rewritten") {
        tags.push("rewritten".into());
    }
    let errors: Vec<_> =
        old.snapshot.errors.iter().filter(|e| !patterns.is_match(os(&e.path))).cloned().collect();
    let mut stats = old.snapshot.stats.clone();
    stats.errors = errors.len() as u64;
    Snapshot {
        version: VERSION,
        tree,
        tags,
        errors,
        stats,
        original: Some(old.snapshot.original.clone().unwrap_or_else(|| old.id.clone())),
        program: format!("bakare {} (rewrite)", env!("CARGO_PKG_VERSION")),
        ..old.snapshot.clone()
    }
}
