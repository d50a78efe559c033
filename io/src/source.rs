//! Where file contents come from. The read stage opens and reads files through a `Source`, so the
//! chaos crate can wrap the real one and inject vanishing files, EIO mid-read and files that change
//! while they are read — on both the io_uring path and the thread-pool path.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub trait Source: Send + Sync {
    /// Opens a regular file for reading.
    fn open(&self, path: &Path) -> io::Result<File>;

    /// When opening is a plain open(2) of the path for reading, its flags: the read stage may
    /// then batch opens through io_uring (retrying through `open` when the ring's open fails
    /// for any reason but a missing file). None: every open goes through `open`.
    fn open_flags(&self) -> Option<i32> {
        None
    }

    /// Sees the outcome of every read of `path` at `offset` before the pipeline does, and may
    /// replace it. The real source passes it through.
    fn after_read(
        &self,
        _path: &Path,
        _offset: u64,
        _buf: &mut [u8],
        res: io::Result<usize>,
    ) -> io::Result<usize> {
        res
    }
}

/// The local filesystem. Opens with O_NOATIME where permitted (reading a backup source should not
/// touch every file's atime), and never follows a symlink swapped in after the scan. Paths of any
/// length: one longer than PATH_MAX is opened a piece at a time (`longpath`).
#[derive(Default)]
pub struct LocalSource {
    noatime_refused: AtomicBool,
}

const BASE_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC;

impl Source for LocalSource {
    fn open_flags(&self) -> Option<i32> {
        let noatime = if self.noatime_refused.load(Ordering::Relaxed) { 0 } else { libc::O_NOATIME };
        Some(BASE_FLAGS | noatime)
    }

    fn open(&self, path: &Path) -> io::Result<File> {
        if !self.noatime_refused.load(Ordering::Relaxed) {
            match open_read(path, BASE_FLAGS | libc::O_NOATIME) {
                // O_NOATIME is only allowed for the file's owner (or CAP_FOWNER).
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    self.noatime_refused.store(true, Ordering::Relaxed)
                }
                other => return other,
            }
        }
        open_read(path, BASE_FLAGS)
    }
}

fn open_read(path: &Path, flags: i32) -> io::Result<File> {
    let flags = rustix::fs::OFlags::from_bits_retain(flags as u32) | rustix::fs::OFlags::RDONLY;
    crate::longpath::open(path, flags).map(File::from)
}
