//! spill: a list kept in memory up to a number of bytes, and beyond that in an unnamed
//! temporary file (gone when the list is), read back in the order it was added. Restore keeps
//! its hard links and the directories waiting for them this way: a tree with millions of hard
//! links (rsnapshot's copies) costs disk, not memory.
//!
//! Nothing added is ever lost: items go to the file a whole batch at a time, and a batch that
//! cannot be written is cut back off the file and stays in memory (and so does everything
//! after it: the list then only says why, in `failed`).
//!
//! Written here rather than taken from a crate: the crates that spill (extsort and the like)
//! sort, and these lists are only replayed in order; `tempfile` gives the file.
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(super) struct Spill<T> {
    mem: Vec<T>,
    bytes: usize,
    limit: usize,
    file: Option<File>,
    /// Items in the file, all whole, and the file's length.
    in_file: u64,
    file_len: u64,
    /// Why spilling stopped: everything added since stays in memory.
    pub(super) failed: Option<io::Error>,
}

impl<T: Serialize + DeserializeOwned> Spill<T> {
    /// A list that keeps at most about `limit` bytes in memory (as the callers measure them).
    pub(super) fn new(limit: usize) -> Self {
        Spill { mem: Vec::new(), bytes: 0, limit, file: None, in_file: 0, file_len: 0, failed: None }
    }

    /// Adds `item`, which takes about `size` bytes in memory.
    pub(super) fn push(&mut self, item: T, size: usize) {
        self.mem.push(item);
        self.bytes += size;
        if self.bytes > self.limit && self.failed.is_none() {
            if let Err(e) = self.spill() {
                self.failed = Some(e);
            }
        }
    }

    /// Moves everything in memory to the end of the file, or nothing.
    fn spill(&mut self) -> io::Result<()> {
        let mut batch = Vec::new();
        for item in &self.mem {
            let bytes = postcard::to_allocvec(item).map_err(io::Error::other)?;
            let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
            batch.extend_from_slice(&len.to_le_bytes());
            batch.extend_from_slice(&bytes);
        }
        let f = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile()?),
        };
        if let Err(e) = f.write_all(&batch) {
            // Cut back to the last whole batch; the file is dropped if that fails too.
            if f.set_len(self.file_len).and_then(|()| f.seek(SeekFrom::Start(self.file_len))).is_err() {
                self.file = None;
                self.in_file = 0;
                return Err(io::Error::other(format!("{e}, and the file could not be cut back")));
            }
            return Err(e);
        }
        self.file_len += batch.len() as u64;
        self.in_file += self.mem.len() as u64;
        self.mem = Vec::new();
        self.bytes = 0;
        Ok(())
    }

    /// Everything added, in order.
    pub(super) fn drain(self) -> io::Result<Drain<T>> {
        let file = match self.file {
            Some(mut f) => {
                f.rewind()?;
                Some(BufReader::new(f))
            }
            None => None,
        };
        Ok(Drain { mem: self.mem.into_iter(), file, left: self.in_file })
    }
}

pub(super) struct Drain<T> {
    mem: std::vec::IntoIter<T>,
    file: Option<BufReader<File>>,
    /// Items still to read from the file.
    left: u64,
}

impl<T: DeserializeOwned> Iterator for Drain<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        let Some(f) = self.file.as_mut().filter(|_| self.left > 0) else { return self.mem.next().map(Ok) };
        self.left -= 1;
        let mut len = [0u8; 4];
        let item = f.read_exact(&mut len).and_then(|()| {
            let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
            f.read_exact(&mut buf)?;
            postcard::from_bytes(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        });
        if item.is_err() {
            self.left = 0; // what follows cannot be framed
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_in_order_from_memory_and_from_the_file() {
        let mut small: Spill<Vec<u8>> = Spill::new(1 << 20);
        let mut large: Spill<Vec<u8>> = Spill::new(100);
        for i in 0..1000u32 {
            let item = i.to_le_bytes().repeat(i as usize % 7);
            small.push(item.clone(), item.len() + 24);
            large.push(item, 30);
        }
        assert!(small.file.is_none() && large.file.is_some() && large.mem.len() < 4);
        assert!(large.failed.is_none());
        assert_eq!(large.in_file + large.mem.len() as u64, 1000);
        let a: Vec<_> = small.drain().unwrap().map(Result::unwrap).collect();
        let b: Vec<_> = large.drain().unwrap().map(Result::unwrap).collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(a, b);
        assert_eq!(a[999], 999u32.to_le_bytes().repeat(999 % 7));
    }

    #[test]
    fn a_batch_that_cannot_be_written_stays_in_memory() {
        // A file that refuses writes: every batch stays in memory, nothing is lost.
        let read_only = tempfile::NamedTempFile::new().unwrap();
        let mut s: Spill<u32> = Spill::new(10);
        s.file = Some(File::open(read_only.path()).unwrap());
        for i in 0..20 {
            s.push(i, 4);
        }
        assert!(s.failed.is_some());
        assert_eq!((s.mem.len(), s.in_file), (20, 0));
        let back: Vec<u32> = s.drain().unwrap().map(Result::unwrap).collect();
        assert_eq!(back, (0..20).collect::<Vec<_>>());
    }
}
