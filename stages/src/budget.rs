//! MemoryBudget: the bytes that data in flight may occupy. Every data buffer holds a `Permit` for
//! its size from the moment it is allocated until the last piece derived from it is dropped
//! (written to a pack, or discarded by dedup). When the budget is empty, `acquire` blocks: that is
//! the pipeline's backpressure.
//!
//! Full-budget policy: a request larger than the whole budget is admitted only when nothing else
//! is held (an empty pipeline), otherwise it could never be satisfied and would deadlock.
//!
//! The budget also keeps a few idle large buffers for reuse (`recycle` / `take_buffer`). The
//! allocator returns freed large buffers to the OS at once (so that RSS follows the budget), and
//! every new one is then faulted in and zeroed by the kernel again: that was ~20 % of a first
//! backup's CPU on the mixed corpus (`clear_page_erms`). Idle buffers count against the limit
//! like permits do, and are dropped first whenever a request would otherwise wait, so reuse
//! never costs the ceiling or blocks anyone.
#![forbid(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Debug)]
struct State {
    used: u64,
    peak: u64,
    /// Lowered by `shrink` as long-lived structures (the session's dedup set) grow.
    limit: u64,
    /// Idle buffers kept for reuse, and their capacity in bytes (held against `limit`).
    idle: Vec<Vec<u8>>,
    idle_bytes: u64,
}

/// Smaller buffers come from the allocator's own free lists, which it keeps: not worth pooling.
pub const RECYCLE_MIN: usize = 256 << 10;
/// At most this many idle buffers are kept.
const MAX_IDLE: usize = 8;

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Clone, Debug)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

/// Bytes held against the budget; released on drop.
#[derive(Debug)]
pub struct Permit {
    budget: MemoryBudget,
    bytes: u64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    used: 0,
                    peak: 0,
                    limit: limit.max(1),
                    idle: Vec::new(),
                    idle_bytes: 0,
                }),
                freed: Condvar::new(),
            }),
        }
    }

    pub fn limit(&self) -> u64 {
        self.lock().limit
    }

    /// Lowers the limit for good by `bytes`, but not below `floor`: memory that something other
    /// than data in flight now holds until the end of the run. Never waits; data already in
    /// flight drains, and new requests wait until they fit the lower limit.
    pub fn shrink(&self, bytes: u64, floor: u64) {
        let mut st = self.lock();
        st.limit = st.limit.saturating_sub(bytes).max(floor.min(st.limit)).max(1);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters inconsistent (they are
        // updated in single statements), so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `bytes` fit, after dropping as many idle buffers as that takes.
    fn fits(&self, st: &mut State, bytes: u64) -> bool {
        loop {
            let held = st.used + st.idle_bytes;
            if held + bytes <= st.limit || held == 0 {
                return true;
            }
            match st.idle.pop() {
                Some(b) => st.idle_bytes -= b.capacity() as u64,
                None => return false,
            }
        }
    }

    /// Blocks until `bytes` fit.
    pub fn acquire(&self, bytes: u64) -> Permit {
        let mut st = self.lock();
        while !self.fits(&mut st, bytes) {
            st = self.inner.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        self.grant(&mut st, bytes)
    }

    pub fn try_acquire(&self, bytes: u64) -> Option<Permit> {
        let mut st = self.lock();
        self.fits(&mut st, bytes).then(|| self.grant(&mut st, bytes))
    }

    /// An empty buffer with room for `cap` bytes: an idle one when one has between `cap` and
    /// twice `cap` (callers' permits cover twice what they read), else a new allocation.
    pub fn take_buffer(&self, cap: usize) -> Vec<u8> {
        if cap >= RECYCLE_MIN {
            let mut st = self.lock();
            let best = (st.idle.iter().enumerate())
                .filter(|(_, b)| b.capacity() >= cap && b.capacity() <= 2 * cap)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = best {
                let b = st.idle.swap_remove(i);
                st.idle_bytes -= b.capacity() as u64;
                drop(st);
                self.inner.freed.notify_all();
                return b;
            }
        }
        Vec::with_capacity(cap)
    }

    /// Keeps a buffer that is no longer used, when it is large enough to be worth it and fits
    /// under the limit; otherwise frees it.
    pub fn recycle(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap < RECYCLE_MIN {
            return;
        }
        let mut st = self.lock();
        if st.idle.len() < MAX_IDLE && st.used + st.idle_bytes + cap as u64 <= st.limit {
            buf.clear();
            st.idle_bytes += cap as u64;
            st.idle.push(buf);
        }
    }

    /// Frees every idle buffer (at the end of a run).
    pub fn drop_idle(&self) {
        let idle = {
            let mut st = self.lock();
            st.idle_bytes = 0;
            std::mem::take(&mut st.idle)
        };
        drop(idle);
    }

    fn grant(&self, st: &mut State, bytes: u64) -> Permit {
        st.used += bytes;
        st.peak = st.peak.max(st.used);
        Permit { budget: self.clone(), bytes }
    }

    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// Bytes held by idle buffers.
    pub fn idle_bytes(&self) -> u64 {
        self.lock().idle_bytes
    }

    /// The most bytes ever held at once.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }
}

impl Permit {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }
}

/// A buffer that goes back to its budget's idle list when the last `Bytes` made from it drops.
struct Recycled {
    buf: Vec<u8>,
    budget: MemoryBudget,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.budget.recycle(std::mem::take(&mut self.buf));
    }
}

impl MemoryBudget {
    /// `buf` as shared bytes that return it to this budget's idle list once all are dropped.
    pub fn bytes_from(&self, buf: Vec<u8>) -> bytes::Bytes {
        if buf.capacity() < RECYCLE_MIN {
            return bytes::Bytes::from(buf);
        }
        bytes::Bytes::from_owner(Recycled { buf, budget: self.clone() })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.budget.lock();
        st.used -= self.bytes;
        drop(st);
        self.budget.inner.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn blocks_until_released() {
        let b = MemoryBudget::new(100);
        let p1 = b.acquire(60);
        assert!(b.try_acquire(50).is_none());
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.acquire(50).bytes());
        std::thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished());
        drop(p1);
        assert_eq!(t.join().unwrap(), 50);
        assert_eq!(b.used(), 0);
        assert_eq!(b.peak(), 60);
    }

    #[test]
    fn shrinking_lowers_the_limit_down_to_a_floor() {
        let b = MemoryBudget::new(100);
        let p = b.acquire(80);
        b.shrink(30, 50);
        assert_eq!(b.limit(), 70);
        assert!(b.try_acquire(1).is_none(), "80 held is over the new limit");
        drop(p);
        assert!(b.try_acquire(70).is_some());
        b.shrink(1000, 50);
        assert_eq!(b.limit(), 50);
    }

    #[test]
    fn idle_buffers_are_reused_and_never_block_a_request() {
        let b = MemoryBudget::new(4 * RECYCLE_MIN as u64);
        let buf = b.take_buffer(RECYCLE_MIN + 4096);
        let ptr = buf.as_ptr();
        b.recycle(buf);
        let again = b.take_buffer(RECYCLE_MIN + 1000);
        assert_eq!(again.as_ptr(), ptr, "the idle buffer is handed out again");
        assert!(b.take_buffer(3 * RECYCLE_MIN).capacity() >= 3 * RECYCLE_MIN, "too small: a new one");
        b.recycle(again);
        // The idle buffer holds a quarter of the limit; a request for all of it still fits.
        let all = b.try_acquire(4 * RECYCLE_MIN as u64).expect("idle buffers make room");
        assert_eq!(b.idle_bytes(), 0, "it was dropped to make room");
        b.recycle(vec![0u8; RECYCLE_MIN]);
        assert_eq!(b.idle_bytes(), 0, "no room under the limit: not kept");
        drop(all);
        assert_eq!(b.used(), 0);
        b.recycle(Vec::with_capacity(RECYCLE_MIN / 2));
        assert_eq!(b.idle_bytes(), 0, "too small to keep");
        b.recycle(Vec::with_capacity(RECYCLE_MIN));
        assert_eq!(b.idle_bytes(), RECYCLE_MIN as u64);
        let mut v = b.take_buffer(RECYCLE_MIN + 1);
        v.resize(10, 7);
        let shared = b.bytes_from(v);
        let part = shared.slice(1..);
        drop(shared);
        assert_eq!(b.idle_bytes(), RECYCLE_MIN as u64, "still referenced");
        drop(part);
        assert!(b.idle_bytes() > RECYCLE_MIN as u64, "back when the last reference drops");
        b.drop_idle();
        assert_eq!(b.idle_bytes(), 0);
    }

    #[test]
    fn oversized_request_only_into_empty_budget() {
        let b = MemoryBudget::new(100);
        let small = b.acquire(10);
        assert!(b.try_acquire(500).is_none());
        drop(small);
        let big = b.try_acquire(500).unwrap();
        assert!(b.try_acquire(1).is_none());
        drop(big);
    }
}
