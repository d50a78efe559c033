//! When this machine first saw each condemnation record (local state, not in the repository):
//! `$XDG_CACHE_HOME/bakare/<repository id>/gc-seen-<BLAKE3(location)[..16 hex]>`, one per
//! place the repository is kept: a copy made by `sync` has the same id but its own records and
//! config, and pruning both must not mix them. A record's own time is only what it says;
//! an old record put back after prune deleted it (anyone with storage credentials can copy
//! one) would be due at once. Prune counts the grace period from the later of the record's
//! time and when it first saw it.
//!
//! It also keeps the newest config this machine has seen (`grace_changed_ns`): an older config
//! put back (with a shorter grace period that writers reading the newer one do not expect)
//! makes prune delete nothing until the owner writes a new one.
//!
//! Text: `bakare-gc-seen-v1`, then one `<record name> <first seen, ns>` per line, and
//! `config <grace_changed_ns>`. A file that does not parse is treated as empty: every record
//! counts as first seen now, which only delays deletions.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const HEADER: &str = "bakare-gc-seen-v1";

#[derive(Debug, Default)]
pub struct Seen {
    pub file: Option<PathBuf>,
    pub first: BTreeMap<String, i64>,
    /// The newest config seen: when its grace period last changed.
    pub config: Option<i64>,
}

impl Seen {
    /// The state of the repository `repo_id` kept at `location` (its path or URL, as bytes).
    pub fn load(dir: Option<&Path>, repo_id: &[u8; 16], location: &[u8]) -> Seen {
        let place = blake3::hash(location).to_hex();
        let file = dir.map(|d| d.join(hex::encode(repo_id)).join(format!("gc-seen-{}", &place[..16])));
        let text = file.as_deref().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
        let (first, config) = parse(&text).unwrap_or_default();
        Seen { file, first, config }
    }

    /// Notes a config whose grace period last changed at `changed_ns`; returns the newer one
    /// seen before, if this one is older (put back, or written from a clock far behind).
    pub fn config_older_than_seen(&mut self, changed_ns: i64) -> Option<i64> {
        match self.config {
            Some(newest) if changed_ns < newest => Some(newest),
            _ => {
                self.config = Some(changed_ns);
                None
            }
        }
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
        if let Some(c) = self.config {
            text.push_str(&format!("config {c}\n"));
        }
        if let Some(dir) = file.parent() {
            ::io::durable::create_private_dir_all(dir)?;
        }
        ::io::durable::replace_atomic(file, text.as_bytes())
    }
}

type Parsed = (BTreeMap<String, i64>, Option<i64>);

fn parse(text: &str) -> Option<Parsed> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let (mut out, mut config) = (BTreeMap::new(), None);
    for line in lines {
        let (k, v) = line.split_once(' ')?;
        let v: i64 = v.parse().ok()?;
        match k {
            "config" => config = Some(v),
            _ if k.starts_with("gc/") => {
                out.insert(k.to_string(), v);
            }
            _ => return None,
        }
    }
    Some((out, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_sightings_persist_and_forgotten_records_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Seen::load(Some(dir.path()), &[1; 16], b"/r");
        assert_eq!(s.first_seen("gc/a", 10), 10);
        assert_eq!(s.first_seen("gc/b", 20), 20);
        s.save(&["gc/a"]).unwrap();
        let mut t = Seen::load(Some(dir.path()), &[1; 16], b"/r");
        assert_eq!(t.first_seen("gc/a", 99), 10);
        assert_eq!(t.first_seen("gc/b", 99), 99, "gone from the repository: forgotten");
        // The newest config seen stays; an older one is named.
        assert_eq!(t.config_older_than_seen(100), None);
        assert_eq!(t.config_older_than_seen(200), None);
        t.save(&["gc/a"]).unwrap();
        let mut u = Seen::load(Some(dir.path()), &[1; 16], b"/r");
        assert_eq!(u.config_older_than_seen(150), Some(200));
        assert_eq!(u.config_older_than_seen(200), None);
        // Another place with the same repository id (a copy made by `sync`) has its own.
        assert_eq!(Seen::load(Some(dir.path()), &[1; 16], b"/copy").config, None);
        let file = Seen::load(Some(dir.path()), &[1; 16], b"/r").file.unwrap();
        std::fs::write(file, "garbage").unwrap();
        assert!(Seen::load(Some(dir.path()), &[1; 16], b"/r").first.is_empty());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(g in ".{0,200}") {
            let _ = parse(&g);
            let _ = parse(&format!("{HEADER}\n{g}"));
        }
    }
}
