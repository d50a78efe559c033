//! A small, safe wrapper over one io_uring for positioned reads. All `unsafe` of the project's
//! I/O lives here. The ring owns each operation's file and buffer until the kernel has completed
//! it, which is what makes the public API safe: nothing the kernel may still write to can be
//! dropped or moved by the caller.

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

/// What an operation needs kept alive (and unmoved on the heap) until the kernel completes it.
enum Kind {
    Read {
        file: Arc<File>,
        buf: Vec<u8>,
        want: usize,
        offset: u64,
        /// RWF_* flags (`uncached::RWF_DONTCACHE`).
        flags: u32,
    },
    Open {
        path: CString,
        flags: i32,
    },
    Statx {
        file: Arc<File>,
        buf: Box<libc::statx>,
    },
    /// Before submission the descriptor is owned here; after, the kernel closes it.
    Close {
        fd: Option<OwnedFd>,
    },
}

struct Op {
    kind: Kind,
    token: u64,
}

/// A file's size and timestamps, as statx gave them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// Nanoseconds since the epoch, exact for any time in an i64 of seconds (an i64 of nanoseconds
/// ends in 2262).
pub fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

pub enum Outcome {
    /// The buffer has the bytes read appended to its previous contents.
    Read {
        file: Arc<File>,
        buf: Vec<u8>,
        offset: u64,
        result: io::Result<usize>,
    },
    Open(io::Result<File>),
    Statx {
        file: Arc<File>,
        result: io::Result<Stamp>,
    },
    Closed(io::Result<()>),
}

pub struct Completion {
    pub token: u64,
    pub outcome: Outcome,
}

pub struct Ring {
    ring: IoUring,
    /// Table of operations the kernel holds, indexed by the slot in `user_data`.
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Operations waiting for room in the submission queue.
    backlog: VecDeque<Op>,
    in_kernel: usize,
    file_ops: bool,
}

/// An empty path: statx of the descriptor itself (with AT_EMPTY_PATH).
const EMPTY: &std::ffi::CStr = c"";

impl Ring {
    /// Fails with the kernel's error (EPERM under seccomp or sysctl, ENOSYS, EINVAL) when io_uring
    /// cannot be used; callers fall back to plain reads.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::new(entries)?;
        let mut probe = io_uring::Probe::new();
        let file_ops = ring.submitter().register_probe(&mut probe).is_ok()
            && [opcode::OpenAt::CODE, opcode::Statx::CODE, opcode::Close::CODE]
                .iter()
                .all(|&op| probe.is_supported(op));
        let (slots, free, backlog) = (Vec::new(), Vec::new(), VecDeque::new());
        Ok(Ring { ring, slots, free, backlog, in_kernel: 0, file_ops })
    }

    /// Whether this kernel's io_uring can open, statx and close (5.6 and later); without them
    /// only `read` may be used.
    pub fn file_ops(&self) -> bool {
        self.file_ops
    }

    /// Operations queued or in the kernel.
    pub fn in_flight(&self) -> usize {
        self.in_kernel + self.backlog.len()
    }

    /// Queues a read of at most `want` bytes at `offset` into the spare capacity of `buf`, with
    /// the RWF_* `flags`: on completion the bytes read follow the buffer's existing contents
    /// (which callers use as headroom).
    pub fn read(&mut self, file: Arc<File>, buf: Vec<u8>, want: usize, offset: u64, flags: u32, token: u64) {
        self.backlog.push_back(Op { kind: Kind::Read { file, buf, want, offset, flags }, token });
    }

    /// Queues an open(2) of `path` for reading with `flags` (O_RDONLY is implied).
    pub fn open(&mut self, path: CString, flags: i32, token: u64) {
        self.backlog.push_back(Op { kind: Kind::Open { path, flags }, token });
    }

    /// Queues a statx of the open file (size, mtime, ctime).
    pub fn statx(&mut self, file: Arc<File>, token: u64) {
        // SAFETY: libc::statx is plain old data; all zeroes is a valid value.
        let buf = Box::new(unsafe { std::mem::zeroed::<libc::statx>() });
        self.backlog.push_back(Op { kind: Kind::Statx { file, buf }, token });
    }

    /// Queues the closing of a file.
    pub fn close(&mut self, file: File, token: u64) {
        self.backlog.push_back(Op { kind: Kind::Close { fd: Some(OwnedFd::from(file)) }, token });
    }

    fn entry(kind: &mut Kind) -> io_uring::squeue::Entry {
        match kind {
            Kind::Read { file, buf, want, offset, flags } => {
                let spare = buf.spare_capacity_mut();
                let len = u32::try_from(spare.len().min(*want)).unwrap_or(u32::MAX);
                let ptr = spare.as_mut_ptr().cast::<u8>();
                // The RWF_* bits, as the kernel's rw_flags field holds them.
                let flags = i32::from_ne_bytes(flags.to_ne_bytes());
                opcode::Read::new(types::Fd(file.as_raw_fd()), ptr, len)
                    .offset(*offset)
                    .rw_flags(flags)
                    .build()
            }
            Kind::Open { path, flags } => opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
                .flags(*flags | libc::O_RDONLY)
                .build(),
            Kind::Statx { file, buf } => {
                let ptr: *mut libc::statx = &mut **buf;
                opcode::Statx::new(types::Fd(file.as_raw_fd()), EMPTY.as_ptr(), ptr.cast::<types::statx>())
                    .flags(libc::AT_EMPTY_PATH)
                    .mask(libc::STATX_BASIC_STATS)
                    .build()
            }
            Kind::Close { fd } => {
                opcode::Close::new(types::Fd(fd.as_ref().map_or(-1, AsRawFd::as_raw_fd))).build()
            }
        }
    }

    fn push_backlog(&mut self) {
        while let Some(mut op) = self.backlog.pop_front() {
            if self.ring.submission().is_full() {
                self.backlog.push_front(op);
                break;
            }
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            let entry = Self::entry(&mut op.kind).user_data(slot as u64);
            // SAFETY: every pointer in the entry (buffer, path, statx buffer) and every
            // descriptor stays valid until the completion for `slot` is reaped, because `op`
            // (owning the Vec, CString or Box, and an Arc of the File) is stored in
            // `self.slots[slot]` and only removed in `reap`, after the kernel reported
            // completion. Moving the op into the table does not move those heap allocations.
            // The kernel writes at most `len` bytes into the Vec's spare capacity, which nothing
            // else touches. A descriptor to close is released from Rust's ownership once the
            // close is pushed (below), so it is closed exactly once, by the kernel.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_err() {
                self.free.push(slot);
                self.backlog.push_front(op);
                break;
            }
            if let Kind::Close { fd } = &mut op.kind {
                let _ = fd.take().map(IntoRawFd::into_raw_fd);
            }
            self.slots[slot] = Some(op);
            self.in_kernel += 1;
        }
    }

    /// Submits queued operations and waits until at least `min` have completed (0 = don't wait).
    pub fn complete(&mut self, min: usize) -> io::Result<Vec<Completion>> {
        let mut done = Vec::new();
        loop {
            self.push_backlog();
            let want = if done.len() >= min || self.in_kernel == 0 { 0 } else { 1 };
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.reap(&mut done);
            if done.len() >= min || (self.in_kernel == 0 && self.backlog.is_empty()) {
                return Ok(done);
            }
        }
    }

    fn reap(&mut self, done: &mut Vec<Completion>) {
        let cqes: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (slot, res) in cqes {
            let Some(op) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot as usize);
            self.in_kernel -= 1;
            let err = (res < 0).then(|| io::Error::from_raw_os_error(-res));
            let outcome = match op.kind {
                Kind::Read { file, mut buf, offset, .. } => {
                    let result = match err {
                        Some(e) => Err(e),
                        None => {
                            let n = (res as usize).min(buf.capacity() - buf.len());
                            // SAFETY: the kernel initialised exactly `n` bytes of spare capacity
                            // directly after the buffer's previous length for this read.
                            unsafe { buf.set_len(buf.len() + n) };
                            Ok(n)
                        }
                    };
                    Outcome::Read { file, buf, offset, result }
                }
                Kind::Open { .. } => Outcome::Open(match err {
                    Some(e) => Err(e),
                    // SAFETY: a successful openat returns a new descriptor that nothing else
                    // owns; the File takes ownership of it.
                    None => Ok(unsafe { File::from_raw_fd(res) }),
                }),
                Kind::Statx { file, buf } => {
                    let ns = |t: libc::statx_timestamp| ns(t.tv_sec, i64::from(t.tv_nsec));
                    let result = match err {
                        Some(e) => Err(e),
                        None => Ok(Stamp {
                            size: buf.stx_size,
                            mtime_ns: ns(buf.stx_mtime),
                            ctime_ns: ns(buf.stx_ctime),
                        }),
                    };
                    Outcome::Statx { file, result }
                }
                Kind::Close { .. } => Outcome::Closed(err.map_or(Ok(()), Err)),
            };
            done.push(Completion { token: op.token, outcome });
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Buffers still in the kernel must not be freed before it is done with them.
        while self.in_kernel > 0 {
            let mut sink = Vec::new();
            if self.ring.submit_and_wait(1).is_err() {
                // The ring is unusable: leak the remaining operations rather than free memory
                // the kernel might still write.
                for slot in self.slots.drain(..).flatten() {
                    std::mem::forget(slot);
                }
                return;
            }
            self.reap(&mut sink);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_many_files() {
        let Ok(mut ring) = Ring::new(8) else { return }; // kernel refuses io_uring: nothing to test
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for i in 0..20u8 {
            let p = dir.path().join(format!("f{i}"));
            let mut f = File::create(&p).unwrap();
            f.write_all(&vec![i; 1000 + i as usize]).unwrap();
            files.push(Arc::new(File::open(&p).unwrap()));
        }
        for (i, f) in files.iter().enumerate() {
            ring.read(f.clone(), Vec::with_capacity(4096), 4096, 0, 0, i as u64);
        }
        let mut got = 0;
        while ring.in_flight() > 0 {
            for c in ring.complete(1).unwrap() {
                let i = c.token as u8;
                let Outcome::Read { buf, result, .. } = c.outcome else { panic!("not a read") };
                assert_eq!(result.unwrap(), 1000 + i as usize);
                assert!(buf.iter().all(|&b| b == i));
                got += 1;
            }
        }
        assert_eq!(got, 20);
    }

    #[test]
    fn opens_stats_and_closes() {
        let Ok(mut ring) = Ring::new(4) else { return };
        if !ring.file_ops() {
            return; // a kernel before 5.6: the read stage opens files itself
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        let md = std::fs::metadata(&p).unwrap();
        let c = |p: &std::path::Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        ring.open(c(&p), libc::O_CLOEXEC, 1);
        ring.open(c(&dir.path().join("missing")), libc::O_CLOEXEC, 2);
        let mut file = None;
        for d in ring.complete(2).unwrap() {
            match (d.token, d.outcome) {
                (1, Outcome::Open(Ok(f))) => file = Some(Arc::new(f)),
                (2, Outcome::Open(Err(e))) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
                _ => panic!("unexpected completion"),
            }
        }
        let file = file.unwrap();
        ring.statx(file.clone(), 3);
        let d = ring.complete(1).unwrap().pop().unwrap();
        let Outcome::Statx { file: same, result } = d.outcome else { panic!("not a statx") };
        drop(same);
        let st = result.unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            st,
            Stamp {
                size: 5,
                mtime_ns: ns(md.mtime(), md.mtime_nsec()),
                ctime_ns: ns(md.ctime(), md.ctime_nsec())
            }
        );
        ring.close(Arc::try_unwrap(file).unwrap(), 4);
        assert!(matches!(ring.complete(1).unwrap().pop().unwrap().outcome, Outcome::Closed(Ok(()))));
    }
}
