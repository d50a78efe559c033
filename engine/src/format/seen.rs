//! When this machine first saw each condemnation record (local state, not in the repository):
//! `$XDG_CACHE_HOME/bakare/<repository id>/gc-seen`. A record's own time is only what it says;
//! an old record put back after prune deleted it (anyone with storage credentials can copy
//! one) would be due at once. Prune counts the grace period from the later of the record's
//! time and when it first saw it.
//!
//! Text: `bakare-gc-seen-v1`, then one `<record name> <first seen, ns>` per line. A file that
//! does not parse is treated as empty: every record counts as first seen now, which only
//! delays deletions.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const HEADER: &str = "bakare-gc-seen-v1";

#[derive(Debug, Default)]
pub struct Seen {
    pub file: Option<PathBuf>,
    pub first: BTreeMap<String, i64>,
}

impl Seen {
    pub fn load(dir: Option<&Path>, repo_id: &[u8; 16]) -> Seen {
        let file = dir.map(|d| d.join(hex::encode(repo_id)).join("gc-seen"));
        let text = file.as_deref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        Seen { file, first: parse(&text).unwrap_or_default() }
    }

    /// When `name` was first seen; now, if never before.
    pub fn first_seen(&mut self, name: &str, now_ns: i64) -> i64 {
        *self.first.entry(name.to_string()).or_insert(now_ns)
    }

    /// Keeps only `names` (the records still in the repository) and writes the file.
    pub fn save(&mut self, names: &[&str]) -> std::io::Result<()> {
        self.first.retain(|k, _| names.contains(&k.as_str()));
        let Some(file) = &self.file else { return Ok(()) };
        let mut text = format!("{HEADER}\n");
        for (k, v) in &self.first {
            text.push_str(&format!("{k} {v}\n"));
        }
        if let Some(dir) = file.parent() {
            ::io::durable::create_private_dir_all(dir)?;
        }
        ::io::durable::replace_atomic(file, text.as_bytes())
    }
}

fn parse(text: &str) -> Option<BTreeMap<String, i64>> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut out = BTreeMap::new();
    for line in lines {
        let (k, v) = line.split_once(' ')?;
        if !k.starts_with("gc/") {
            return None;
        }
        out.insert(k.to_string(), v.parse().ok()?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_sightings_persist_and_forgotten_records_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Seen::load(Some(dir.path()), &[1; 16]);
        assert_eq!(s.first_seen("gc/a", 10), 10);
        assert_eq!(s.first_seen("gc/b", 20), 20);
        s.save(&["gc/a"]).unwrap();
        let mut t = Seen::load(Some(dir.path()), &[1; 16]);
        assert_eq!(t.first_seen("gc/a", 99), 10);
        assert_eq!(t.first_seen("gc/b", 99), 99, "gone from the repository: forgotten");
        std::fs::write(dir.path().join(hex::encode([1u8; 16])).join("gc-seen"), "garbage").unwrap();
        assert!(Seen::load(Some(dir.path()), &[1; 16]).first.is_empty());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in ".{0,200}") {
            let _ = parse(&g);
            let _ = parse(&format!("{HEADER}\n{g}"));
        }
    }
}
