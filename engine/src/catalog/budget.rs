//! What the name catalog may hold in memory (`find --mem-limit`), and an estimate of what it
//! holds: the capacities of its vectors and of the maps that build it, the heap of its snapshot
//! entries and memo, and the arrays a query makes. A walk checks the estimate at every entry
//! it adds, so a repository cannot make the catalog grow past the budget by saying it is large:
//! the snapshot being added is given up instead (`Builder::add`).
use std::collections::HashMap;
use std::mem::size_of;

use super::{Catalog, DirMemo, SnapEntry, Version};
use crate::backup::{index_reserve, FIXED_RESERVE};
use crate::restore::Memory;
use crate::tree::MAX_HELD;

/// Without --mem-limit. Larger than restore's default (~230 MiB besides the index): a catalog
/// holds every path of the repository's history, and the largest measured (2,097,157 paths)
/// took 443 MiB to build. 1 GiB keeps that with room, and is still a ceiling no repository
/// can raise.
pub const DEFAULT_MEM_LIMIT: u64 = 1 << 30;

/// A query's arrays per path: the start of its full path (8), `heads` (4), a candidate (4)
/// and its score (12).
const QUERY_PER_PATH: u64 = 28;
/// A query's arrays per version: `next` (4), a hit (16), and a bit in each of the bitmaps the
/// sweep holds (one byte covers eight sources).
const QUERY_PER_VERSION: u64 = 21;

const MIB: u64 = 1 << 20;

/// The process's ceiling, and how the user set it (for the warnings).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    limit: u64,
    explicit: bool,
}

impl Budget {
    pub fn new(mem_limit: Option<u64>) -> Budget {
        Budget { limit: mem_limit.unwrap_or(DEFAULT_MEM_LIMIT), explicit: mem_limit.is_some() }
    }

    /// What the catalog and a query may take: the limit less the fixed reserve (binary,
    /// stacks, allocator slack). The repository's index is gone by the time a query runs.
    pub fn query_bytes(&self) -> u64 {
        self.limit.saturating_sub(FIXED_RESERVE)
    }

    /// While snapshots are added: the reader's cache, and what the catalog and its maps may
    /// take besides the fixed reserve, the index, the tree entries a walk holds
    /// (`tree::MAX_HELD` across its levels) and that cache (a quarter of the rest, between
    /// 8 MiB and restore's default).
    pub fn build(&self, index_blobs: usize) -> (usize, u64) {
        let rest = self.limit.saturating_sub(FIXED_RESERVE + index_reserve(index_blobs) + MAX_HELD as u64);
        let cache = (rest / 4).clamp(8 * MIB, Memory::DEFAULT.cache as u64);
        (usize::try_from(cache).unwrap_or(usize::MAX), rest.saturating_sub(cache))
    }

    /// Why a snapshot (or a saved catalog) was left out.
    pub fn too_small(&self) -> String {
        match self.explicit {
            true => {
                format!("the name catalog would need more than --mem-limit {} MiB allows", self.limit / MIB)
            }
            false => format!(
                "the name catalog would need more than the default budget of {} MiB allows",
                self.limit / MIB
            ),
        }
    }
}

pub(super) fn vec_bytes<T>(v: &Vec<T>) -> u64 {
    v.capacity() as u64 * size_of::<T>() as u64
}

/// hashbrown's table: buckets at most 7/8 full, a control byte each.
pub(super) fn map_bytes<K, V, S>(m: &HashMap<K, V, S>) -> u64 {
    table_bytes::<K, V>(m.capacity())
}

/// The table of a map that holds `capacity` entries.
pub(super) fn table_bytes<K, V>(capacity: usize) -> u64 {
    (capacity as u64 * 8).div_ceil(7) * (size_of::<(K, V)>() as u64 + 1)
}

impl Catalog {
    /// The catalog's tables, by capacity: what grows as paths and versions are added.
    pub(super) fn tables(&self) -> [u64; 6] {
        [
            vec_bytes(&self.names),
            vec_bytes(&self.parents),
            vec_bytes(&self.name_ends),
            vec_bytes(&self.versions),
            vec_bytes(&self.memo),
            vec_bytes(&self.snapshots),
        ]
    }

    /// The heap of the snapshot entries and of the memo entries (one pass over both).
    pub(super) fn entries_bytes(&self) -> u64 {
        self.snapshots.iter().map(snap_bytes).sum::<u64>() + self.memo.iter().map(memo_bytes).sum::<u64>()
    }

    /// The bytes of every full path (`/a/b`), as `full_paths` holds them.
    pub(super) fn full_path_bytes(&self) -> u64 {
        let mut len: Vec<u64> = Vec::with_capacity(self.parents.len());
        for (i, &p) in self.parents.iter().enumerate() {
            let own = self.name(i as u32).len() as u64 + 1;
            let above =
                if i == 0 || p == super::ROOT { 0 } else { len.get(p as usize).copied().unwrap_or(0) };
            len.push(if i == 0 { 1 } else { above.saturating_add(own) });
        }
        len.iter().fold(0u64, |a, &l| a.saturating_add(l))
    }

    /// What a query over this catalog holds at most, `full` being `full_path_bytes`.
    pub(super) fn query_peak(&self, entries: u64, full: u64) -> u64 {
        let tables: u64 = self.tables().iter().sum();
        query_arrays(self.parents.len(), self.versions.len())
            .saturating_add(full)
            .saturating_add(tables)
            .saturating_add(entries)
    }
}

pub(super) fn query_arrays(paths: usize, versions: usize) -> u64 {
    paths as u64 * QUERY_PER_PATH + versions as u64 * QUERY_PER_VERSION
}

pub(super) fn memo_bytes(m: &DirMemo) -> u64 {
    vec_bytes(&m.entries) + vec_bytes(&m.children)
}

/// What one snapshot entry holds besides its place in `snapshots`.
pub(super) fn snap_bytes(s: &SnapEntry) -> u64 {
    (s.id.capacity() + s.host.capacity()) as u64 + vec_bytes(&s.added) + vec_bytes(&s.removed)
}

/// The builder's map of versions, per entry (for a first estimate before it is built).
pub(super) fn version_map_bytes(versions: usize) -> u64 {
    table_bytes::<Version, u32>(versions)
}

/// The builder's map of paths (parent, hash of the name) -> path.
pub(super) fn path_map_bytes(paths: usize) -> u64 {
    table_bytes::<(u32, u64), u32>(paths)
}
