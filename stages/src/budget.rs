//! MemoryBudget: the bytes that data in flight may occupy. Every data buffer holds a `Permit` for
//! its size from the moment it is allocated until the last piece derived from it is dropped
//! (written to a pack, or discarded by dedup). When the budget is empty, `acquire` blocks: that is
//! the pipeline's backpressure.
//!
//! Full-budget policy: a request larger than the whole budget is admitted only when nothing else
//! is held (an empty pipeline), otherwise it could never be satisfied and would deadlock.
#![forbid(unsafe_code)]

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Debug)]
struct State {
    used: u64,
    peak: u64,
    /// Lowered by `shrink` as long-lived structures (the session's dedup set) grow.
    limit: u64,
    /// Threads waiting in `acquire_or`.
    waiting: u64,
}

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
                state: Mutex::new(State { used: 0, peak: 0, limit: limit.max(1), waiting: 0 }),
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

    fn fits(&self, st: &State, bytes: u64) -> bool {
        st.used + bytes <= st.limit || st.used == 0
    }

    /// Blocks until `bytes` fit.
    pub fn acquire(&self, bytes: u64) -> Permit {
        let mut st = self.lock();
        while !self.fits(&st, bytes) {
            st = self.inner.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        self.grant(&mut st, bytes)
    }

    /// Blocks until `bytes` fit; if they do not fit at once, `before_waiting` runs first, after
    /// this thread counts as waiting (`waiting`), so that memory it frees (idle buffers) cannot
    /// be taken back for idling while this thread waits.
    pub fn acquire_or(&self, bytes: u64, before_waiting: impl FnOnce()) -> Permit {
        let mut st = self.lock();
        if self.fits(&st, bytes) {
            return self.grant(&mut st, bytes);
        }
        st.waiting += 1;
        drop(st);
        before_waiting();
        let mut st = self.lock();
        while !self.fits(&st, bytes) {
            st = self.inner.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.waiting -= 1;
        self.grant(&mut st, bytes)
    }

    /// Whether a thread waits in `acquire_or`.
    pub fn waiting(&self) -> bool {
        self.lock().waiting > 0
    }

    pub fn try_acquire(&self, bytes: u64) -> Option<Permit> {
        let mut st = self.lock();
        self.fits(&st, bytes).then(|| self.grant(&mut st, bytes))
    }

    fn grant(&self, st: &mut State, bytes: u64) -> Permit {
        st.used += bytes;
        st.peak = st.peak.max(st.used);
        Permit { budget: self.clone(), bytes }
    }

    pub fn used(&self) -> u64 {
        self.lock().used
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
