//! uncached: reads that leave the page cache as they found it (RWF_DONTCACHE, on kernels and
//! file systems that take it: xfs from 6.14, ext4 and others later). A page the read brings
//! in is dropped once copied; a page already cached stays. A backup of a large tree then does
//! not fill the cache with it. Where the flag is refused (EOPNOTSUPP: an older kernel, tmpfs,
//! a DAX inode) the read is made again without it, and the device (`st_dev`) is remembered so
//! its other files are read plainly from then on; where preadv2 itself is missing (ENOSYS:
//! before Linux 4.6, or a seccomp filter) every read is plain. A refusal only costs caching,
//! never data: a device that refused for one file (a DAX inode, one layer of an overlay) is
//! read through the cache from then on.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use rustix::io::{Errno, ReadWriteFlags};

/// RWF_DONTCACHE (include/uapi/linux/fs.h; rustix 1.1 has no name for it yet).
pub const RWF_DONTCACHE: u32 = 0x80;

/// Which devices' file systems take uncached reads: all until one refuses.
#[derive(Debug, Default)]
pub struct Uncached {
    /// Devices whose file systems refused the flag.
    refused: RwLock<Vec<u64>>,
    /// The kernel has no preadv2: every read is plain.
    no_preadv2: AtomicBool,
}

impl Uncached {
    /// The read flags for a file on `dev`: RWF_DONTCACHE, or 0 where it was refused.
    pub fn flags(&self, dev: u64) -> u32 {
        if self.no_preadv2.load(Ordering::Relaxed) {
            return 0;
        }
        match self.refused.read().map(|r| r.contains(&dev)) {
            Ok(false) => RWF_DONTCACHE,
            _ => 0,
        }
    }

    /// Whether a read made with `flags` failed for the flag rather than for the file (the
    /// caller makes it again without it, after `refuse`): EOPNOTSUPP is what the kernel answers
    /// a flag it or the file system does not take (preadv2 and io_uring alike). EINVAL is not:
    /// it comes from the file.
    pub fn is_refusal(flags: u32, e: &io::Error) -> bool {
        flags & RWF_DONTCACHE != 0 && e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error())
    }

    /// Remembers that `dev` refused uncached reads.
    pub fn refuse(&self, dev: u64) {
        if let Ok(mut r) = self.refused.write() {
            if !r.contains(&dev) {
                r.push(dev);
            }
        }
    }

    /// pread of `file` (on `dev`) at `offset` into `buf`, uncached where it can be.
    pub fn read_at(&self, file: &File, dev: u64, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let flags = self.flags(dev);
        if flags != 0 {
            let bits = ReadWriteFlags::from_bits_retain(flags);
            match rustix::io::preadv2(file, &mut [IoSliceMut::new(buf)], offset, bits) {
                Ok(n) => return Ok(n),
                Err(Errno::NOSYS) => self.no_preadv2.store(true, Ordering::Relaxed),
                Err(e) => {
                    let e = io::Error::from(e);
                    if !Self::is_refusal(flags, &e) {
                        return Err(e);
                    }
                    self.refuse(dev);
                }
            }
        }
        std::os::unix::fs::FileExt::read_at(file, buf, offset)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_the_same_bytes_and_a_refusing_device_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        let file = File::open(&path).unwrap();
        let u = Uncached::default();
        let mut buf = vec![0u8; 70_000];
        let n = u.read_at(&file, 7, &mut buf, 100_000).unwrap();
        assert_eq!(&buf[..n], &data[100_000..100_000 + n]);
        assert!(n > 0);
        // Refused or not, the bytes are the same; a refusal is remembered for that device only.
        u.refuse(9);
        assert_eq!(u.flags(9), 0);
        assert_eq!(u.flags(10), RWF_DONTCACHE);
        let n = u.read_at(&file, 9, &mut buf, 150_000).unwrap();
        assert_eq!(&buf[..n], &data[150_000..150_000 + n]);
        // Only the flag's own errors are refusals.
        let unsupported = io::Error::from_raw_os_error(Errno::OPNOTSUPP.raw_os_error());
        assert!(Uncached::is_refusal(RWF_DONTCACHE, &unsupported));
        assert!(!Uncached::is_refusal(0, &unsupported));
        assert!(!Uncached::is_refusal(
            RWF_DONTCACHE,
            &io::Error::from_raw_os_error(Errno::IO.raw_os_error())
        ));
    }
}
