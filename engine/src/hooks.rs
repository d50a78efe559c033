//! Test hooks besides the clocks (`clock`): like them, they exist only with the `test-hooks`
//! feature and only in builds with debug assertions.

/// With BAKARE_TEST_PEAK_RSS_FILE set, writes this process's peak resident memory (VmHWM, in
/// bytes) there as it ends. The suites read it rather than the child's `ru_maxrss`, which on
/// Linux includes the test process's own peak: a child spawned with vfork (as `Command` does)
/// shares its parent's memory until exec, and exec records that memory's high-water mark as
/// the child's. (Measured: a child of a process that once held 500 MiB reports 525 MiB.)
#[cfg(all(feature = "test-hooks", debug_assertions))]
pub fn report_peak_rss() {
    let Some(path) = std::env::var_os("BAKARE_TEST_PEAK_RSS_FILE") else { return };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    if let Some(kib) = kib {
        let _ = std::fs::write(path, (kib * 1024).to_string());
    }
}

#[cfg(not(all(feature = "test-hooks", debug_assertions)))]
pub fn report_peak_rss() {}

/// How long a backup's sealed packs may wait before an index segment lists them. Tests set
/// BAKARE_TEST_SEGMENT_AGE_MS (0: a segment after every pack) to see an interrupted run's
/// packs reused without waiting a minute.
#[cfg(all(feature = "test-hooks", debug_assertions))]
pub fn segment_age() -> std::time::Duration {
    std::env::var("BAKARE_TEST_SEGMENT_AGE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(crate::pack::SEGMENT_AGE, std::time::Duration::from_millis)
}

#[cfg(not(all(feature = "test-hooks", debug_assertions)))]
pub fn segment_age() -> std::time::Duration {
    crate::pack::SEGMENT_AGE
}
