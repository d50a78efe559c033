//! The memory ceiling holds: a tree with a file larger than the limit (1 GiB) and 200,000 small
//! files backs up, as a first backup, with --mem-limit 512M and 128M under the limit (128M also
//! with 16 workers asked for: they are fitted to the limit), and with the default budget under
//! 104 MiB (96 and 4 for each of two workers' parity, on by default) plus `worker_reserve`
//! (11 MiB with parity) for each CPU past two; the smallest limits (96M with parity, 88M
//! without) hold too. Peak resident memory is the child's own (VmHWM).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;

use chaos::argv;
use chaos::testkit::{Bakare, Rng};
use engine::backup::{budget_and_workers, worker_reserve};
use engine::format::config::Compression;
use engine::format::parity::DEFAULT_PERCENT;

const MIB: u64 = 1 << 20;

fn build_tree(root: &std::path::Path) -> u64 {
    // 1 GiB: alternating MiB of random and of compressible data, so both the raw and the zstd
    // paths carry load. (2 GiB, with the source tree and one repository at a time, ran a CI
    // machine out of disk: the test needs about 2 GiB of free space as it is.)
    let mut rng = Rng::new(99);
    let mut f = std::io::BufWriter::with_capacity(4 << 20, fs::File::create(root.join("huge.bin")).unwrap());
    for i in 0..1024u32 {
        let block = if i % 2 == 0 { rng.bytes(1 << 20) } else { rng.text(1 << 20) };
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let mut files = 1;
    // Medium files (one read each, many in flight, many sizes): what a home directory holds.
    fs::create_dir(root.join("medium")).unwrap();
    for i in 0..150 {
        let n = (64 << 10) + rng.below(6 << 20) as usize;
        let data = if i % 3 == 0 { rng.bytes(n) } else { rng.text(n) };
        fs::write(root.join("medium").join(format!("m{i:03}")), data).unwrap();
        files += 1;
    }
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

/// Each run is a first backup into a fresh repository (a re-run deduplicates everything and
/// stores nothing, which is not where memory goes). Peak memory is what each child reports
/// of itself (VmHWM, `engine::hooks`): its ru_maxrss would also count this test process's
/// own high-water mark, which a child spawned by vfork inherits at exec.
#[test]
fn memory_ceiling_holds_for_huge_files_and_many_small_ones() {
    let src = tempfile::tempdir().unwrap();
    let files = build_tree(src.path());
    let mut report = Vec::new();
    let cpus = std::thread::available_parallelism().unwrap().get();
    // With the default budget, every CPU gets a worker, and each past two holds memory outside
    // the budget (the README puts a first backup of the 3 GiB mixed corpus at 79 MiB on two).
    // Parity (on by default) holds ~4 MiB a worker more, the first two included.
    let default_cap = 96 * MIB
        + 2 * engine::backup::PARITY_RESERVE
        + worker_reserve(DEFAULT_PERCENT) * (cpus as u64).saturating_sub(2);
    for (limit, workers, cap) in [
        (Some("512M"), None, 512 * MIB),
        (Some("128M"), None, 128 * MIB),
        (Some("128M"), Some(16), 128 * MIB),
        (None, None, default_cap),
    ] {
        let b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
        b.ok(&argv!["init"]);
        let mut args = argv!["--json", "run", "--no-cache", src.path()].to_vec();
        if let Some(l) = limit {
            args.extend(argv!["--mem-limit", l]);
        }
        if let Some(w) = workers {
            args.extend(argv!["--workers", w.to_string()]);
        }
        let o = b.ok(&args);
        assert!(o.peak_reported, "the child's own peak");
        let j = o.json();
        assert_eq!(j["files"].as_u64().unwrap(), files);
        let ran = j["workers"].as_u64().unwrap();
        let what = format!(
            "{}, {ran} workers",
            limit.map_or("the default budget".to_string(), |l| format!("--mem-limit {l}"))
        );
        // As many as fit, of those asked for (one per CPU by default): 40 MiB for two workers
        // and 7 for each other, 4 more each with parity (on by default), beside the smallest
        // budget (48), so 4 in 128M.
        let limit_bytes = limit.map(|l| l.trim_end_matches('M').parse::<u64>().unwrap() * MIB);
        let asked = workers.unwrap_or(cpus);
        let (_, want) =
            budget_and_workers(limit_bytes, asked, Compression::Auto, DEFAULT_PERCENT, 0).unwrap();
        assert_eq!(ran, want as u64, "{what}");
        if workers == Some(16) {
            assert_eq!(ran, 4);
        }
        report.push(format!(
            "{what}: peak RSS {} MiB (ceiling {} MiB), budget peak {} MiB",
            o.peak_rss / MIB,
            cap / MIB,
            j["budget_peak"].as_u64().unwrap() / MIB
        ));
        assert!(o.peak_rss < cap, "{what}: peak RSS {} MiB", o.peak_rss / MIB);
        if limit == Some("128M") && workers.is_none() {
            // 200,000 new blobs: the writers wrote index segments during the run instead of
            // holding every entry to the end, and the index still covers everything.
            let segments = fs::read_dir(b.repo.join("index")).unwrap().count();
            assert!(segments >= 3, "{segments} segments");
            let c = b.ok(&argv!["--json", "check"]).json();
            assert_eq!(c["ok"], true, "{c}");
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// A tight budget must be slow, never stuck: large files with small tails (whose chunks share
/// the large blocks' permits), large files of several blocks (the chunker keeps each block's
/// tail until the next one is read) with small files read around them, and a budget smaller
/// than one large block. Reused read buffers once deadlocked this tree at 88M in about 2 runs
/// of 5: a buffer went idle, holding budget, while the reader waited for it.
#[test]
fn tight_budgets_make_progress() {
    let src = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(4);
    for i in 0..6 {
        let mut data = rng.bytes(9 << 20);
        data.extend(rng.text(5000));
        fs::write(src.path().join(format!("large-{i}")), data).unwrap();
    }
    for i in 0..3 {
        // Written a MiB at a time, to keep the test itself small.
        let mut f = fs::File::create(src.path().join(format!("m-large-{i}"))).unwrap();
        for j in 0..26 {
            f.write_all(&if j < 13 { rng.bytes(1 << 20) } else { rng.text(1 << 20) }).unwrap();
        }
    }
    for dir in ["a-small", "z-small"] {
        fs::create_dir(src.path().join(dir)).unwrap();
        for i in 0..300 {
            let n = 100 + rng.below(20_000) as usize;
            fs::write(src.path().join(dir).join(format!("small-{i}")), rng.text(n)).unwrap();
        }
    }
    let b = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
    b.ok(&argv!["init"]);
    let o = b.run(&argv!["run", "--mem-limit", "60M", src.path()]);
    assert_eq!(o.code, 1);
    // 40 MiB, 4 for each of two workers' parity, and the smallest budget (48).
    assert!(o.stderr.contains("too small") && o.stderr.contains("at least 96 MiB"), "{}", o.stderr);
    // The smallest limit leaves no room for an index: each try is a first backup. Without
    // parity it is 88M.
    for (parity, limit) in [("0", 88), ("5", 96)] {
        let fresh = Bakare::new(env!("CARGO_BIN_EXE_bakare"));
        fresh.ok(&argv!["init", "--parity", parity]);
        let arg = format!("{limit}M");
        let o = fresh.ok(&argv!["--json", "run", "--no-cache", "--mem-limit", &arg, src.path()]);
        assert_eq!(o.json()["files"].as_u64().unwrap(), 609);
        let peak = o.peak_rss / MIB;
        eprintln!("--mem-limit {arg}, parity {parity} %: peak RSS {peak} MiB");
        assert!(o.peak_rss < limit * MIB, "--mem-limit {arg}, parity {parity} %: peak RSS {peak} MiB");
    }
    for limit in ["96M", "104M", "128M"] {
        let j = b.ok(&argv!["--json", "run", "--no-cache", "--mem-limit", limit, src.path()]).json();
        assert_eq!(j["files"].as_u64().unwrap(), 609, "{limit}");
    }
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", "latest", "--target", target.path()]);
    chaos::testkit::assert_same_tree(src.path(), &chaos::testkit::restored_path(target.path(), src.path()));
}
