//! The one place that reads clocks, so tests can move them.
//!
//! - `now_ns`: wall time (snapshot times, condemnation times, retention).
//! - `boot_ns`: CLOCK_BOOTTIME, which keeps counting while the machine is suspended: the age of
//!   a writer's view of the repository (design.md section 4, rule 4) must include the time a
//!   laptop spent with its lid closed, which CLOCK_MONOTONIC leaves out.
//!
//! Tests move time for every process at once through `BAKARE_CLOCK_OFFSET_FILE`: a file holding
//! a signed number of nanoseconds added to both clocks, read at every call (a paused writer
//! sees the jump when it resumes, as after a real suspend). `BAKARE_FAKE_NOW_NS` pins the wall
//! clock instead. Both exist only with the `test-hooks` feature, which the test suites enable
//! (through `chaos`), and only in builds with debug assertions: a release binary never reads
//! them, even one built beside the tests (`cargo build --release --workspace`, `cargo bench`),
//! where cargo unifies the feature in (`tests/hooks.rs`).
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(not(all(feature = "test-hooks", debug_assertions)))]
fn offset_ns() -> i64 {
    0
}

#[cfg(not(all(feature = "test-hooks", debug_assertions)))]
fn fake_now_ns() -> Option<i64> {
    None
}

#[cfg(all(feature = "test-hooks", debug_assertions))]
fn fake_now_ns() -> Option<i64> {
    std::env::var_os("BAKARE_FAKE_NOW_NS").and_then(|v| v.into_string().ok()).and_then(|v| v.parse().ok())
}

#[cfg(all(feature = "test-hooks", debug_assertions))]
fn offset_ns() -> i64 {
    let Some(path) = std::env::var_os("BAKARE_CLOCK_OFFSET_FILE") else { return 0 };
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    if let Some(n) = fake_now_ns() {
        return n;
    }
    let real = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    };
    real.saturating_add(offset_ns())
}

/// Nanoseconds of CLOCK_BOOTTIME (since boot, suspended time included).
pub fn boot_ns() -> i64 {
    let t = rustix::time::clock_gettime_dynamic(rustix::time::DynamicClockId::Boottime)
        .unwrap_or_else(|_| rustix::time::clock_gettime(rustix::time::ClockId::Monotonic));
    (t.tv_sec as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as i64)
        .saturating_add(offset_ns())
}

/// `ns` since the epoch as a UTC time (RFC 3339), for messages.
pub fn format_ns(ns: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns)).map_or_else(|_| format!("{ns} ns"), |t| t.to_string())
}
