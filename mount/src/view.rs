//! view: the snapshots a mount shows, under the names it shows them by, and the index their
//! blobs are read through. Re-read as a whole (`Repository::snapshots`, then the index if new
//! snapshots came) at most once per refresh interval.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use engine::index::Index;
use engine::repo::SnapshotEntry;
use engine::{BlobId, Repository};

/// A snapshot as the mount shows it.
pub struct Snap {
    /// `<time>_<shortid>`: the UTC time of the snapshot and the first 8 hex digits of its id.
    pub name: Vec<u8>,
    pub time_ns: i64,
    pub tree: Vec<BlobId>,
    pub host: Vec<u8>,
    pub tags: Vec<Vec<u8>>,
}

pub struct View {
    /// Oldest first.
    pub snaps: Vec<Snap>,
    pub index: Arc<Index>,
    pub at: Instant,
}

/// A host or tag as a directory name: `/` and NUL become `_`; empty, `.` and `..` are left out.
pub fn dir_name(s: &str) -> Option<Vec<u8>> {
    let n: Vec<u8> = s.bytes().map(|c| if c == b'/' || c == 0 { b'_' } else { c }).collect();
    (!n.is_empty() && n != b"." && n != b"..").then_some(n)
}

fn snap_name(e: &SnapshotEntry) -> Vec<u8> {
    let t = jiff::Timestamp::from_second(e.snapshot.time_ns.div_euclid(1_000_000_000))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| e.snapshot.time_ns.to_string());
    format!("{t}_{}", e.id.get(..8).unwrap_or(&e.id)).into_bytes()
}

impl View {
    /// The snapshots of `repo`; `index` is reused unless a snapshot is new to `known`.
    pub fn load(repo: &Repository, old: Option<&View>) -> engine::Result<View> {
        let (list, warnings) = repo.snapshots()?;
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        let mut snaps: Vec<Snap> = list
            .iter()
            .map(|e| Snap {
                name: snap_name(e),
                time_ns: e.snapshot.time_ns,
                tree: e.snapshot.tree.clone(),
                host: dir_name(&e.snapshot.host).unwrap_or_else(|| b"_".to_vec()),
                tags: e.snapshot.tags.iter().filter_map(|t| dir_name(t)).collect(),
            })
            .collect();
        // Names are unique (a short id shared by two snapshots of the same second would not be):
        // the later one gets the next digits of its id.
        let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for (s, e) in snaps.iter_mut().zip(&list) {
            let n = seen.entry(s.name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                s.name.extend_from_slice(format!("-{}", e.id).as_bytes());
            }
        }
        let same = old.is_some_and(|o| {
            o.snaps.len() == snaps.len() && o.snaps.iter().zip(&snaps).all(|(a, b)| a.name == b.name)
        });
        let index = match old {
            Some(o) if same => o.index.clone(),
            _ => {
                let (index, warnings) = repo.load_index()?;
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                Arc::new(index)
            }
        };
        Ok(View { snaps, index, at: Instant::now() })
    }

    pub fn find(&self, name: &[u8]) -> Option<&Snap> {
        self.snaps.iter().find(|s| s.name == name)
    }

    pub fn latest(&self) -> Option<&Snap> {
        self.snaps.last()
    }

    /// Hosts (or tags) and their snapshots' names, sorted.
    pub fn groups(&self, tags: bool) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
        let mut g: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
        for s in &self.snaps {
            if tags {
                for t in &s.tags {
                    g.entry(t.clone()).or_default().push(s.name.clone());
                }
            } else {
                g.entry(s.host.clone()).or_default().push(s.name.clone());
            }
        }
        g
    }
}
