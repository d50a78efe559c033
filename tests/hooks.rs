//! Test hooks are compiled only for tests: the binary built for this suite obeys the clock
//! hooks (so this test can fail), and a release binary built without dev-dependencies (as
//! `cargo build --release` or `cargo install` build it; .ci/run builds one and names it in
//! BAKARE_RELEASE_BIN) ignores every hook variable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use chaos::argv;
use chaos::testkit::{Bakare, TestDir};

/// 2001-09-09, far from any real clock.
const FAKE_NOW_NS: i64 = 1_000_000_000_000_000_000;

/// The time of the one snapshot a backup with every hook variable set gets, the bytes its
/// restore (with the same variables) gives back, and whether it reported its peak memory
/// (BAKARE_TEST_PEAK_RSS_FILE, which `run_measured` sets).
fn with_hooks(bin: PathBuf) -> (i64, Vec<u8>, bool) {
    let mut b = Bakare::new(bin);
    let offset = b.home.path().join("offset");
    std::fs::write(&offset, (90_000_000_000_000i64).to_string()).unwrap(); // +25 h
    b.env.push(("BAKARE_FAKE_NOW_NS".into(), FAKE_NOW_NS.to_string()));
    b.env.push(("BAKARE_CLOCK_OFFSET_FILE".into(), offset.display().to_string()));
    b.env.push(("BAKARE_TEST_SPOIL_RESTORED".into(), "f".into()));
    b.ok(&argv!["init"]);
    let src = TestDir::new().file("f", "x");
    b.ok(&argv!["run", src.path()]);
    let list = b.ok(&argv!["--json", "snapshots"]).json();
    let target = tempfile::tempdir().unwrap();
    let reported = b.ok(&argv!["restore", "latest", "--target", target.path()]).peak_reported;
    let restored = std::fs::read(chaos::testkit::restored_path(target.path(), src.path()).join("f")).unwrap();
    (list.as_array().unwrap()[0]["time_ns"].as_i64().unwrap(), restored, reported)
}

#[test]
fn release_binaries_ignore_test_hooks() {
    // This suite's binary has the hooks: the fake clock shows in the snapshot, and the restored
    // file is spoiled, and it reports its peak memory.
    assert_eq!(with_hooks(env!("CARGO_BIN_EXE_bakare").into()), (FAKE_NOW_NS, b"X".to_vec(), true));
    let Some(release) = std::env::var_os("BAKARE_RELEASE_BIN").map(PathBuf::from) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build a release binary and set BAKARE_RELEASE_BIN"
        );
        chaos::testkit::skipped(
            "set BAKARE_RELEASE_BIN to a release build of bakare to check it ignores test hooks",
        );
        return;
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let (t, restored, reported) = with_hooks(release);
    assert_eq!((restored.as_slice(), reported), (&b"x"[..], false));
    // Neither pinned nor moved 25 h: the real clock, within the minutes a slow machine takes.
    assert!((t - now).abs() < 600_000_000_000, "release binary took {t}, real clock {now}");
}
