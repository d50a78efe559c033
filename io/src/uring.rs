//! A small, safe wrapper over one io_uring for positioned reads. All `unsafe` of the project's
//! I/O lives here. The ring owns each operation's file and buffer until the kernel has completed
//! it, which is what makes the public API safe: nothing the kernel may still write to can be
//! dropped or moved by the caller.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};

struct Op {
    file: Arc<File>,
    buf: Vec<u8>,
    offset: u64,
    token: u64,
}

/// A completed read: the buffer has `len` valid bytes from its start on success.
pub struct Completion {
    pub token: u64,
    pub file: Arc<File>,
    pub buf: Vec<u8>,
    pub offset: u64,
    pub result: io::Result<usize>,
}

pub struct Ring {
    ring: IoUring,
    /// Table of operations the kernel holds, indexed by the slot in `user_data`.
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Operations waiting for room in the submission queue.
    backlog: VecDeque<Op>,
    in_kernel: usize,
}

impl Ring {
    /// Fails with the kernel's error (EPERM under seccomp or sysctl, ENOSYS, EINVAL) when io_uring
    /// cannot be used; callers fall back to plain reads.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring = IoUring::new(entries)?;
        Ok(Ring { ring, slots: Vec::new(), free: Vec::new(), backlog: VecDeque::new(), in_kernel: 0 })
    }

    /// Operations queued or in the kernel.
    pub fn in_flight(&self) -> usize {
        self.in_kernel + self.backlog.len()
    }

    /// Queues a read at `offset` into the spare capacity of `buf`: on completion the bytes read
    /// follow the buffer's existing contents (which callers use as headroom).
    pub fn read(&mut self, file: Arc<File>, buf: Vec<u8>, offset: u64, token: u64) {
        self.backlog.push_back(Op { file, buf, offset, token });
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
            let spare = op.buf.spare_capacity_mut();
            let len = u32::try_from(spare.len()).unwrap_or(u32::MAX);
            let ptr = spare.as_mut_ptr().cast::<u8>();
            let entry = opcode::Read::new(types::Fd(op.file.as_raw_fd()), ptr, len)
                .offset(op.offset)
                .build()
                .user_data(slot as u64);
            // SAFETY: the buffer pointer and fd stay valid until the completion for `slot` is
            // reaped, because `op` (owning both the Vec and an Arc of the File) is stored in
            // `self.slots[slot]` and only removed in `reap`, after the kernel reported completion.
            // Moving the Vec into the table does not move its heap allocation. The kernel writes
            // at most `len` bytes into the Vec's spare capacity, which nothing else touches.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_err() {
                self.free.push(slot);
                self.backlog.push_front(op);
                break;
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
            let mut buf = op.buf;
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                let n = (res as usize).min(buf.capacity() - buf.len());
                // SAFETY: the kernel initialised exactly `n` bytes of spare capacity directly
                // after the buffer's previous length for this completed read.
                unsafe { buf.set_len(buf.len() + n) };
                Ok(n)
            };
            done.push(Completion { token: op.token, file: op.file, buf, offset: op.offset, result });
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Buffers still in the kernel must not be freed before it is done with them.
        while self.in_kernel > 0 {
            let mut sink = Vec::new();
            if self.ring.submit_and_wait(1).is_err() {
                // The ring is unusable: leak the remaining buffers rather than free memory the
                // kernel might still write.
                for slot in self.slots.drain(..).flatten() {
                    std::mem::forget(slot.buf);
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
            ring.read(f.clone(), Vec::with_capacity(4096), 0, i as u64);
        }
        let mut got = 0;
        while ring.in_flight() > 0 {
            for c in ring.complete(1).unwrap() {
                let i = c.token as u8;
                assert_eq!(c.result.unwrap(), 1000 + i as usize);
                assert!(c.buf.iter().all(|&b| b == i));
                got += 1;
            }
        }
        assert_eq!(got, 20);
    }
}
