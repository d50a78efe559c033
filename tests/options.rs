//! The repository's compression setting, through the real binary: what is restored is the
//! bytes that were saved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;

use chaos::argv;
use chaos::testkit::{assert_same_tree, restored_path, Bakare, Rng, TestDir};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn json(b: &Bakare, args: &[OsString]) -> serde_json::Value {
    let mut a = argv!["--json"].to_vec();
    a.extend_from_slice(args);
    b.ok(&a).json()
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn compression_level_is_a_repository_setting() {
    let text = Rng::new(3).text(4 << 20);
    let src = TestDir::new().file("log.txt", &text);
    let mut stored = Vec::new();
    for level in ["1", "19", "off"] {
        let mut b = bakare();
        b.repo = b.home.path().join("repo");
        let init = b.ok(&argv!["--json", "init", "--compression", level]).json();
        assert_eq!(init["compression"], level);
        let shown = b.ok(&argv!["config"]).stdout_str();
        let want = if level == "off" {
            "compression  off".to_string()
        } else {
            format!("compression  zstd {level}")
        };
        assert!(shown.contains(&want), "{shown}");
        let j = json(&b, &argv!["run", src.path()]);
        stored.push(n(&j, "stored_bytes"));
        let target = tempfile::tempdir().unwrap();
        b.ok(&argv!["restore", "latest", "--target", target.path()]);
        let back = fs::read(restored_path(target.path(), &src.path().join("log.txt"))).unwrap();
        assert!(back == text, "level {level}: restored bytes differ");
    }
    let (one, nineteen, off) = (stored[0], stored[1], stored[2]);
    assert!(nineteen < one, "level 19 stored {nineteen} bytes, level 1 {one}");
    assert!(off >= text.len() as u64, "off stored {off} of {} bytes", text.len());

    // Changed later by the owner: new data takes the new setting, old data still reads.
    let b = bakare();
    b.ok(&argv!["init"]);
    assert!(b.ok(&argv!["config"]).stdout_str().contains("compression  auto (zstd 1"));
    let first = json(&b, &argv!["run", src.path()]);
    let o = b.ok(&argv!["config", "--compression", "max"]);
    assert!(o.stdout_str().contains("compression  zstd 19"), "{}", o.stdout_str());
    assert_eq!(json(&b, &argv!["config"])["compression"], "19");
    let more = TestDir::new().file("log2.txt", Rng::new(4).text(4 << 20));
    let second = json(&b, &argv!["run", more.path()]);
    assert!(n(&second, "stored_bytes") < n(&first, "stored_bytes"), "{first}\n{second}");
    for bad in ["20", "-1", "fast"] {
        let o = b.run(&argv!["config", format!("--compression={bad}")]);
        assert_eq!(o.code, 2, "{bad}: {}", o.stderr);
        assert!(o.stderr.contains("zstd level from 1 to 19"), "{}", o.stderr);
    }
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    assert_same_tree(more.path(), &restored_path(target.path(), more.path()));
}
