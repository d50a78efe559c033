//! The one place that reads the wall clock, so tests can replace it.
use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch; `BAKARE_FAKE_NOW_NS` overrides it (tests).
pub fn now_ns() -> i64 {
    if let Some(v) = std::env::var_os("BAKARE_FAKE_NOW_NS").and_then(|v| v.into_string().ok()) {
        if let Ok(n) = v.parse() {
            return n;
        }
    }
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}
