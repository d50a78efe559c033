//! A CPU hint that the standard library only offers as an `unsafe` intrinsic.

/// Asks the CPU to bring the cache line holding `value` closer, without waiting for it. A hint
/// only: it never faults and has no effect on what the program computes.
#[inline]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 takes any address (a reference here) and never faults; SSE, which it
    // needs, is part of every x86_64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
