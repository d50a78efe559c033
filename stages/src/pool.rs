//! Read buffers of large files, kept for the next block instead of being freed.
//!
//! The allocator hands freed memory back to the kernel at once (the memory ceiling needs that:
//! see `configure_allocator`), so every new 12 MiB block was faulted in and zeroed again, page by
//! page: on a first backup of the mixed corpus the kernel's page faults, zeroing and unmapping
//! were a quarter of the CPU (with freed memory kept instead, system time fell from 0.63–0.73 s
//! to 0.26 s). Blocks of large files all have one capacity (the chunker's headroom plus one
//! read), so a freed one serves any later one: its pages are resident already.
//!
//! A pooled buffer has a `Permit` for its whole capacity (which may be resident from an earlier
//! block), apart from the permit for the data it carries downstream: the buffer's permit stays
//! with the buffer, in flight and idle, so the budget still bounds all memory held for data. At
//! most a quarter of the budget is ever idle, and a reader that has to wait for budget first lets
//! every idle buffer go (`reclaim`), and no buffer becomes idle while it waits, so idle buffers
//! never keep anyone waiting.
#![forbid(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::budget::{MemoryBudget, Permit};

pub struct BufferPool {
    budget: MemoryBudget,
    /// The capacity of every pooled buffer.
    cap: usize,
    idle: Mutex<Vec<(Vec<u8>, Permit)>>,
    given: Condvar,
}

impl BufferPool {
    pub fn new(budget: MemoryBudget, cap: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool { budget, cap, idle: Mutex::new(Vec::new()), given: Condvar::new() })
    }

    /// The capacity of the buffers `take` gives.
    pub fn cap(&self) -> usize {
        self.cap
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Vec<u8>, Permit)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of capacity `cap()` with a permit for it: an idle one (its contents are stale
    /// bytes), or a new, empty one if the budget has room. With `wait`, waits for either (an idle
    /// buffer is what a reader usually waits for: the last block's, coming back); without it,
    /// None when there is neither.
    pub fn take(&self, wait: bool) -> Option<(Vec<u8>, Permit)> {
        let mut idle = self.lock();
        loop {
            if let Some(found) = idle.pop() {
                return Some(found);
            }
            if let Some(permit) = self.budget.try_acquire(self.cap as u64) {
                return Some((Vec::with_capacity(self.cap), permit));
            }
            if !wait {
                return None;
            }
            // Budget is freed elsewhere without a word to this pool: look again now and then.
            idle = match self.given.wait_timeout(idle, Duration::from_millis(2)) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Keeps `buf`, with the permit that covers it, for a later `take` if it is one of this
    /// pool's, a quarter of the budget holds it, and nobody waits for budget (a reader waiting
    /// for its next block while the chunker keeps the last one's tail would wait for good if
    /// the budget it needs sat idle here); else both are let go.
    pub fn give(&self, buf: Vec<u8>, permit: Permit) {
        if buf.capacity() != self.cap {
            return;
        }
        let mut idle = self.lock();
        let fits = (idle.len() as u64 + 1) * self.cap as u64 <= self.budget.limit() / 4;
        if fits && !self.budget.waiting() {
            idle.push((buf, permit));
            self.given.notify_one();
        }
    }

    /// Frees every idle buffer (and so its budget).
    pub fn reclaim(&self) {
        let freed = std::mem::take(&mut *self.lock());
        drop(freed);
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// A pooled buffer as the owner of `bytes::Bytes` slices: when the last slice is dropped, the
/// buffer goes back to its pool with its permit.
pub struct Pooled {
    buf: Vec<u8>,
    permit: Option<Permit>,
    pool: Arc<BufferPool>,
}

impl Pooled {
    pub fn new(buf: Vec<u8>, permit: Permit, pool: Arc<BufferPool>) -> Pooled {
        Pooled { buf, permit: Some(permit), pool }
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.pool.give(std::mem::take(&mut self.buf), permit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_buffers_keep_their_permits_within_a_quarter_of_the_budget() {
        let budget = MemoryBudget::new(400);
        let pool = BufferPool::new(budget.clone(), 100);
        let (mut buf, permit) = pool.take(false).unwrap();
        assert!(buf.capacity() == 100 && buf.is_empty() && budget.used() == 100);
        buf.extend_from_slice(&[7; 60]);
        pool.give(buf, permit);
        assert_eq!((pool.idle(), budget.used()), (1, 100), "the idle buffer holds its capacity");

        // A second one would pass a quarter of the budget: let go, with its permit.
        pool.give(Vec::with_capacity(100), budget.acquire(100));
        assert_eq!((pool.idle(), budget.used()), (1, 100));
        // Not one of the pool's: let go.
        pool.give(Vec::with_capacity(50), budget.acquire(100));
        assert_eq!((pool.idle(), budget.used()), (1, 100));

        let (buf, permit) = pool.take(false).unwrap();
        assert_eq!(buf.len(), 60, "stale contents come back as they were");
        assert_eq!(permit.bytes(), 100);
        assert_eq!(budget.used(), 100, "the permit came with it");
        drop(permit);
        assert_eq!(budget.used(), 0);

        // No idle buffer and no room: nothing without waiting; waiting, the next buffer given.
        let all = budget.acquire(400);
        assert!(pool.take(false).is_none());
        let p = pool.clone();
        let taker = std::thread::spawn(move || p.take(true).map(|(b, p)| (b.len(), p.bytes())));
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(all);
        let mut back = Vec::with_capacity(100);
        back.push(1);
        pool.give(back, budget.acquire(100));
        let got = taker.join().unwrap();
        assert!(got == Some((1, 100)) || got == Some((0, 100)), "{got:?}");

        pool.give(buf, budget.acquire(100));
        assert_eq!(budget.used(), 100);
        pool.reclaim();
        assert_eq!((pool.idle(), budget.used()), (0, 0));
    }

    #[test]
    fn nothing_idles_while_a_reader_waits_for_budget() {
        let budget = MemoryBudget::new(400);
        let pool = BufferPool::new(budget.clone(), 100);
        pool.give(Vec::with_capacity(100), budget.acquire(100));
        let held = budget.acquire(300);
        // The reader frees the idle buffer before it waits, then waits for 100 more.
        let (b, p) = (budget.clone(), pool.clone());
        let reader = std::thread::spawn(move || b.acquire_or(200, || p.reclaim()).bytes());
        while !budget.waiting() {
            std::thread::yield_now();
        }
        // A buffer coming back now is let go, not kept: its budget goes to the reader.
        pool.give(Vec::with_capacity(100), budget.acquire(100));
        assert_eq!(pool.idle(), 0);
        drop(held);
        assert_eq!(reader.join().unwrap(), 200);
        assert!(!budget.waiting());
    }

    #[test]
    fn the_last_slice_returns_the_buffer() {
        let budget = MemoryBudget::new(400);
        let pool = BufferPool::new(budget.clone(), 100);
        let mut buf = Vec::with_capacity(100);
        buf.extend_from_slice(b"hello, world");
        let bytes = bytes::Bytes::from_owner(Pooled::new(buf, budget.acquire(100), pool.clone()));
        let a = bytes.slice(0..5);
        let b = bytes.slice(7..);
        drop(bytes);
        drop(a);
        assert_eq!(pool.idle(), 0);
        assert_eq!(&b[..], b"world");
        drop(b);
        assert_eq!((pool.idle(), budget.used()), (1, 100));
    }
}
