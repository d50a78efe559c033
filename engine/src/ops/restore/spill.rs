//! spill: a list kept in memory up to a number of bytes, and beyond that in an unnamed
//! temporary file (gone when the list is), read back in the order it was added. Restore keeps
//! its hard links and the directories waiting for them this way: a tree with millions of hard
//! links (rsnapshot's copies) costs disk, not memory.
//!
//! Written here rather than taken from a crate: the crates that spill (extsort and the like)
//! sort, and these lists are only replayed in order; `tempfile` gives the file.
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub(super) struct Spill<T> {
    mem: Vec<T>,
    bytes: usize,
    limit: usize,
    file: Option<BufWriter<File>>,
    len: u64,
}

impl<T: Serialize + DeserializeOwned> Spill<T> {
    /// A list that keeps at most about `limit` bytes in memory (as the callers measure them).
    pub(super) fn new(limit: usize) -> Self {
        Spill { mem: Vec::new(), bytes: 0, limit, file: None, len: 0 }
    }

    /// Adds `item`, which takes about `size` bytes in memory.
    pub(super) fn push(&mut self, item: T, size: usize) -> io::Result<()> {
        self.len += 1;
        if let Some(f) = &mut self.file {
            return write(f, &item);
        }
        self.mem.push(item);
        self.bytes += size;
        if self.bytes > self.limit {
            let mut f = BufWriter::new(tempfile::tempfile()?);
            for item in self.mem.drain(..) {
                write(&mut f, &item)?;
            }
            self.mem = Vec::new();
            self.file = Some(f);
        }
        Ok(())
    }

    /// Everything added, in order.
    pub(super) fn drain(self) -> io::Result<Drain<T>> {
        let file = match self.file {
            Some(f) => {
                let mut f = f.into_inner().map_err(|e| e.into_error())?;
                f.rewind()?;
                Some(BufReader::new(f))
            }
            None => None,
        };
        Ok(Drain { mem: self.mem.into_iter(), file })
    }
}

fn write<T: Serialize>(f: &mut BufWriter<File>, item: &T) -> io::Result<()> {
    let bytes = postcard::to_allocvec(item).map_err(io::Error::other)?;
    let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    f.write_all(&len.to_le_bytes())?;
    f.write_all(&bytes)
}

pub(super) struct Drain<T> {
    mem: std::vec::IntoIter<T>,
    file: Option<BufReader<File>>,
}

impl<T: DeserializeOwned> Iterator for Drain<T> {
    type Item = io::Result<T>;

    fn next(&mut self) -> Option<io::Result<T>> {
        let Some(f) = &mut self.file else { return self.mem.next().map(Ok) };
        let mut len = [0u8; 4];
        match f.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.file = None;
                return self.mem.next().map(Ok);
            }
            Err(e) => return Some(Err(e)),
            Ok(()) => {}
        }
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        let item = f.read_exact(&mut buf).and_then(|()| {
            postcard::from_bytes(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        });
        if item.is_err() {
            self.file = None; // what follows cannot be framed
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
            small.push(item.clone(), item.len() + 24).unwrap();
            large.push(item, 30).unwrap();
        }
        assert!(small.file.is_none() && large.file.is_some() && large.mem.is_empty());
        assert_eq!(large.len, 1000);
        let a: Vec<_> = small.drain().unwrap().map(Result::unwrap).collect();
        let b: Vec<_> = large.drain().unwrap().map(Result::unwrap).collect();
        assert_eq!(a.len(), 1000);
        assert_eq!(a, b);
        assert_eq!(a[999], 999u32.to_le_bytes().repeat(999 % 7));
    }
}
