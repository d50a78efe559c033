//! The holes of sparse files, found with `SEEK_DATA`/`SEEK_HOLE`, so that a backup reads and
//! stores only their data.
use std::os::fd::AsFd;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

/// Most holes one file is described by; past them the rest of the file is read as data (its
/// zeros still deduplicate to one blob, and restore leaves whole zero blobs as holes). Bounds
/// the memory one file's description takes (16 bytes a hole) and a tree entry's size.
pub const MAX_HOLES: usize = 16_384;

/// A run of a file's bytes that the file system holds no data for: they read as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    pub offset: u64,
    pub len: u64,
}

/// Whether a regular file of `size` bytes occupying `blocks` 512-byte blocks may have holes:
/// fewer blocks than its size needs. Only such files are asked where their holes are (as GNU
/// tar does), so a dense file costs no extra system call.
pub fn may_have_holes(size: u64, blocks: u64) -> bool {
    blocks.saturating_mul(512) < size
}

/// The holes in the first `size` bytes of `file`, in order, at most `MAX_HOLES` of them. A file
/// system that cannot tell (`EINVAL` from `SEEK_DATA`) has none.
pub fn holes(file: impl AsFd, size: u64) -> std::io::Result<Vec<Hole>> {
    let fd = file.as_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size && out.len() < MAX_HOLES {
        let data = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(d) => d.min(size),
            // No data at or after `pos`: the rest is a hole.
            Err(Errno::NXIO) => size,
            Err(Errno::INVAL) if pos == 0 => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if data > pos {
            out.push(Hole { offset: pos, len: data - pos });
        }
        if data >= size {
            break;
        }
        let next = match rustix::fs::seek(fd, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        // Each step must move forward (a file system that answered otherwise would loop).
        if next <= pos || next <= data {
            let why = format!("the file system reports a hole at {next} inside data at {data}");
            return Err(std::io::Error::other(why));
        }
        pos = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn finds_the_holes_of_a_sparse_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        let f = std::fs::File::create(&p).unwrap();
        const M: u64 = 1 << 20;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 8 * M).unwrap();
        f.set_len(32 * M).unwrap();
        let md = f.metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        if !may_have_holes(md.size(), md.blocks()) {
            eprintln!("SKIPPED: this file system does not keep holes");
            return;
        }
        let h = holes(&f, md.size()).unwrap();
        // Data sits in whole file system blocks around each write.
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h[0].offset > 0 && h[0].offset <= 64 << 10, "{h:?}");
        assert_eq!(h[0].offset + h[0].len, 8 * M, "{h:?}");
        assert_eq!(h[1].offset + h[1].len, 32 * M, "a trailing hole reaches the end: {h:?}");
        // Asked for less than the file, the holes stop there.
        let part = holes(&f, 4 * M).unwrap();
        assert_eq!(part.len(), 1);
        assert_eq!(part[0].offset + part[0].len, 4 * M);
        // A dense file has none.
        let dense = d.path().join("d");
        std::fs::write(&dense, vec![1u8; 100_000]).unwrap();
        let md = std::fs::metadata(&dense).unwrap();
        assert!(!may_have_holes(md.size(), md.blocks()));
        assert!(holes(std::fs::File::open(&dense).unwrap(), md.size()).unwrap().is_empty());
    }
}
