//! content: a file of a snapshot read at any offset. Takes a node and its blobs' plaintext
//! lengths (from the index); emits the bytes of [offset, offset + size), fetching only the
//! blobs that cover them. Holds one offset table per open file and a bounded LRU of blobs.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use engine::tree::{Node, NodeKind};
use stages::BlobId;

/// A file's data (every byte but its holes) laid out: where each blob starts in the data, and
/// where each run of data sits in the file.
#[derive(Debug)]
pub struct Layout {
    pub size: u64,
    pub blobs: Vec<BlobId>,
    /// `starts[i]`: offset of blob i in the file's data; one more entry: the data's end.
    pub starts: Vec<u64>,
    /// Runs of data in file order: (offset in the file, offset in the data, length).
    pub runs: Vec<(u64, u64, u64)>,
}

/// Why a layout cannot be made: a blob the index does not have.
#[derive(Debug)]
pub struct Unknown(pub BlobId);

impl Layout {
    /// The layout of the file `node`; `raw_len` gives a blob's plaintext length. None if the
    /// node is not a file.
    pub fn new(node: &Node, raw_len: impl Fn(&BlobId) -> Option<u32>) -> Option<Result<Layout, Unknown>> {
        let (NodeKind::File { size, content } | NodeKind::HardLink { size, content, .. }) = &node.kind else {
            return None;
        };
        let mut starts = Vec::with_capacity(content.len() + 1);
        let mut at = 0u64;
        for id in content {
            starts.push(at);
            match raw_len(id) {
                Some(n) => at = at.saturating_add(u64::from(n)),
                None => return Some(Err(Unknown(*id))),
            }
        }
        starts.push(at);
        // As `tree::Placer` places data: up to the next hole, holes in order, past the size
        // nothing.
        let size = *size;
        let mut runs = Vec::new();
        let (mut pos, mut data) = (0u64, 0u64);
        for h in &node.holes {
            let start = h.offset.min(size);
            if start > pos {
                runs.push((pos, data, start - pos));
                data += start - pos;
            }
            pos = pos.max(h.offset.saturating_add(h.len).min(size));
        }
        if pos < size {
            runs.push((pos, data, size - pos));
        }
        Some(Ok(Layout { size, blobs: content.clone(), starts, runs }))
    }

    /// Bytes of data the blobs hold.
    pub fn data_len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    /// Bytes of data the file's size and holes call for.
    pub fn wanted(&self) -> u64 {
        self.runs.iter().map(|r| r.2).sum()
    }

    /// The pieces of [offset, offset + len) clipped to the size, in order: zeros, or data at
    /// an offset in the data.
    pub fn pieces(&self, offset: u64, len: u64) -> Vec<Piece> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        let first = self.runs.partition_point(|r| r.0 + r.2 <= pos);
        for &(at, data, n) in &self.runs[first..] {
            if pos >= end {
                break;
            }
            if at > pos {
                let z = at.min(end) - pos;
                out.push(Piece::Zeros(z));
                pos += z;
            }
            let stop = (at + n).min(end);
            if stop > pos {
                out.push(Piece::Data { at: data + (pos - at), len: stop - pos });
                pos = stop;
            }
        }
        if pos < end {
            out.push(Piece::Zeros(end - pos));
        }
        out
    }

    /// The blobs covering [at, at + len) of the data: (index, offset in that blob, length).
    pub fn spans(&self, at: u64, len: u64) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let end = at.saturating_add(len);
        let mut pos = at;
        let mut i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        while pos < end && i < self.blobs.len() {
            let (s, e) = (self.starts[i], self.starts[i + 1]);
            if e > pos {
                let stop = e.min(end);
                out.push((i, (pos - s) as usize, (stop - pos) as usize));
                pos = stop;
            }
            i += 1;
        }
        out
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Zeros(u64),
    Data { at: u64, len: u64 },
}

/// Decoded blobs, least recently used out first, up to a number of bytes (one blob larger
/// than the whole budget is still kept, alone).
pub struct Lru {
    blobs: HashMap<BlobId, (Arc<Vec<u8>>, u64)>,
    order: BTreeMap<u64, BlobId>,
    tick: u64,
    bytes: usize,
    limit: usize,
}

impl Lru {
    pub fn new(limit: usize) -> Lru {
        Lru { blobs: HashMap::new(), order: BTreeMap::new(), tick: 0, bytes: 0, limit }
    }

    pub fn get(&mut self, id: &BlobId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let (b, t) = self.blobs.get_mut(id)?;
        self.order.remove(t);
        *t = self.tick;
        self.order.insert(self.tick, *id);
        Some(b.clone())
    }

    pub fn insert(&mut self, id: BlobId, b: Arc<Vec<u8>>) {
        if self.get(&id).is_some() {
            return;
        }
        self.tick += 1;
        self.bytes += b.len();
        self.blobs.insert(id, (b, self.tick));
        self.order.insert(self.tick, id);
        while self.bytes > self.limit && self.blobs.len() > 1 {
            let Some((_, old)) = self.order.pop_first() else { break };
            if let Some((b, _)) = self.blobs.remove(&old) {
                self.bytes -= b.len();
            }
        }
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::tree::Hole;

    fn node(size: u64, blobs: usize, holes: Vec<Hole>) -> Node {
        Node {
            name: b"f".to_vec(),
            kind: NodeKind::File { size, content: (0..blobs).map(|i| [i as u8; 32]).collect() },
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 1,
            nlink: 1,
            xattrs: Vec::new(),
            flags: 0,
            holes,
        }
    }

    #[test]
    fn pieces_of_a_sparse_file() {
        // 100 bytes: data 0..10, hole 10..50, data 50..80, hole 80..100 (the tail).
        let n = node(100, 2, vec![Hole { offset: 10, len: 40 }, Hole { offset: 80, len: 20 }]);
        let l = Layout::new(&n, |_| Some(20)).unwrap().unwrap();
        assert_eq!(l.wanted(), 40);
        assert_eq!(l.data_len(), 40);
        assert_eq!(
            l.pieces(5, 60),
            vec![Piece::Data { at: 5, len: 5 }, Piece::Zeros(40), Piece::Data { at: 10, len: 15 }]
        );
        assert_eq!(l.pieces(70, 1000), vec![Piece::Data { at: 30, len: 10 }, Piece::Zeros(20)]);
        assert_eq!(l.pieces(100, 10), vec![]);
        assert_eq!(l.spans(15, 10), vec![(0, 15, 5), (1, 0, 5)]);
        assert_eq!(l.spans(20, 20), vec![(1, 0, 20)]);
    }

    #[test]
    fn a_blob_the_index_lacks() {
        let n = node(10, 1, Vec::new());
        assert!(Layout::new(&n, |_| None).unwrap().is_err());
    }

    #[test]
    fn lru_keeps_within_its_budget() {
        let mut lru = Lru::new(10);
        for i in 0..5u8 {
            lru.insert([i; 32], Arc::new(vec![0; 4]));
        }
        assert!(lru.bytes() <= 10);
        assert!(lru.get(&[4; 32]).is_some());
        assert!(lru.get(&[0; 32]).is_none());
    }
}
