//! The memory ceiling holds: a tree with a file larger than the limit (2 GiB) and 200,000 small
//! files backs up with --mem-limit 512M and 128M, and the kernel's account of the process's peak
//! resident memory (ru_maxrss from wait4) stays below the limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;

use chaos::argv;
use chaos::testkit::{Bakare, Rng};

const MIB: u64 = 1 << 20;

fn build_tree(root: &std::path::Path) -> u64 {
    // 2 GiB: alternating MiB of random and of compressible data, so both the raw and the zstd
    // paths carry load.
    let mut rng = Rng::new(99);
    let mut f = std::io::BufWriter::with_capacity(4 << 20, fs::File::create(root.join("huge.bin")).unwrap());
    for i in 0..2048u32 {
        let block = if i % 2 == 0 { rng.bytes(1 << 20) } else { rng.text(1 << 20) };
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let mut files = 1;
    for d in 0..200 {
        let dir = root.join(format!("dir{d:03}"));
        fs::create_dir(&dir).unwrap();
        for i in 0..1000 {
            let n = 50 + rng.below(1500) as usize;
            fs::write(dir.join(format!("f{i:04}.txt")), rng.text(n)).unwrap();
            files += 1;
        }
    }
    files
}

#[test]
fn memory_ceiling_holds_for_huge_files_and_many_small_ones() {
    let src = tempfile::tempdir().unwrap();
    let files = build_tree(src.path());
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
    b.ok(&argv!["init"]);
    let mut report = Vec::new();
    for limit in ["512M", "128M"] {
        let o = b.ok(&argv!["--json", "run", "--mem-limit", limit, src.path()]);
        let j = o.json();
        assert_eq!(j["files"].as_u64().unwrap(), files);
        let cap = parse(limit);
        report.push(format!(
            "--mem-limit {limit}: peak RSS {} MiB, budget peak {} MiB",
            o.peak_rss / MIB,
            j["budget_peak"].as_u64().unwrap() / MIB
        ));
        assert!(o.peak_rss < cap, "--mem-limit {limit}: peak RSS {} MiB", o.peak_rss / MIB);
    }
    let o = b.ok(&argv!["--json", "run", src.path()]);
    report.push(format!("default: peak RSS {} MiB", o.peak_rss / MIB));
    eprintln!("{}", report.join("\n"));
    // the default stays modest too
    assert!(o.peak_rss < 256 * MIB, "default peak RSS {} MiB", o.peak_rss / MIB);
}

fn parse(s: &str) -> u64 {
    s.trim_end_matches('M').parse::<u64>().unwrap() * MIB
}
