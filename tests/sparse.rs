//! Sparse files through the real binary: a backup reads only their data (`bytes_read` equals
//! the data the file system reports), a restore makes the same holes (the same data map, and
//! allocated blocks within 5 % of the original), and `--verify` and a restore over itself
//! compare them right.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use chaos::argv;
use chaos::testkit::{restored_path, Bakare, Rng, TestDir};
use rustix::fs::SeekFrom;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

/// A file of `size` bytes holding random data only at `extents` (offset, length).
fn sparse(path: &Path, size: u64, extents: &[(u64, u64)], rng: &mut Rng) {
    let f = fs::File::create(path).unwrap();
    for &(at, len) in extents {
        f.write_all_at(&rng.bytes(len as usize), at).unwrap();
    }
    f.set_len(size).unwrap();
}

/// Where a file's data is, as the file system reports it: (offset, length) runs.
fn data_map(path: &Path) -> Vec<(u64, u64)> {
    let f = fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut runs = Vec::new();
    let mut pos = 0;
    while pos < size {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => panic!("SEEK_DATA: {e}"),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data)).unwrap().min(size);
        runs.push((data, hole - data));
        pos = hole;
    }
    runs
}

fn read_at(path: &Path, at: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    fs::File::open(path).unwrap().read_exact_at(&mut buf, at).unwrap();
    buf
}

#[test]
fn sparse_files_are_read_and_restored_as_holes() {
    let src = TestDir::new();
    let mut rng = Rng::new(17);
    let s = src.path();
    // A 10 GiB file with three data extents (one at the very end), one that is nothing but a
    // hole, one with a hole before and after its data, and dense files (one of written zeros).
    sparse(
        &s.join("big"),
        10 * GIB,
        &[(0, MIB), (5 * GIB, MIB), (10 * GIB - 100 * 1024, 100 * 1024)],
        &mut rng,
    );
    sparse(&s.join("hole"), GIB, &[], &mut rng);
    sparse(&s.join("middle"), 64 * MIB, &[(60 * MIB, MIB)], &mut rng);
    fs::write(s.join("dense"), rng.bytes(300_000)).unwrap();
    fs::write(s.join("zeros"), vec![0u8; 2 * MIB as usize]).unwrap();
    let names = ["big", "hole", "middle", "dense", "zeros"];
    let maps: Vec<_> = names.iter().map(|n| data_map(&s.join(n))).collect();
    if maps[0].len() != 3 {
        chaos::testkit::skipped(&format!("this file system does not keep holes: {:?}", maps[0]));
        return;
    }
    let data: u64 = maps.iter().flatten().map(|r| r.1).sum();
    let logical: u64 = names.iter().map(|n| fs::metadata(s.join(n)).unwrap().len()).sum();

    // Older than the files cache's one-second window for racy timestamps, so it keeps them.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = bakare();
    let run = b.ok(&argv!["run", "--json", s]).json();
    assert_eq!(run["bytes_read"], data, "only the data is read: {run}");
    assert_eq!(run["bytes"], logical, "{run}");
    // The files cache keeps the holes: nothing is read again, and what is restored below is
    // this snapshot's, whose files all came from the cache.
    let again = b.ok(&argv!["run", "--json", s]).json();
    assert_eq!(
        (again["bytes_read"].as_u64(), again["unchanged_files"].as_u64()),
        (Some(0), Some(5)),
        "{again}"
    );

    let t = TestDir::new();
    let out = b.ok(&argv!["restore", "latest", "--json", "--verify", "--target", t.path()]).json();
    assert_eq!(out["verified"], names.len(), "{out}");
    let r = restored_path(t.path(), s);
    for (name, map) in names.iter().zip(&maps) {
        let (a, b) = (s.join(name), r.join(name));
        let (ma, mb) = (fs::metadata(&a).unwrap(), fs::metadata(&b).unwrap());
        assert_eq!(ma.len(), mb.len(), "{name}: size");
        if *name != "zeros" {
            assert_eq!(&data_map(&b), map, "{name}: the same data map");
            for &(at, len) in map {
                assert!(read_at(&a, at, len) == read_at(&b, at, len), "{name}: data at {at}");
            }
        }
        let (ba, bb) = (ma.blocks(), mb.blocks());
        assert!(bb <= ba + ba / 20, "{name}: {bb} blocks restored for {ba}");
        if *name == "big" {
            assert!(bb * 20 >= ba * 19, "{name}: {bb} blocks restored for {ba}");
        }
    }
    assert!(data_map(&r.join("zeros")).is_empty(), "a file of written zeros is restored as a hole");

    // Over itself: every file is compared (holes as zeros) and kept.
    let over = b.ok(&argv!["restore", "latest", "--json", "--target", t.path()]).json();
    assert_eq!(over["kept"], names.len(), "{over}");
    // Data where the snapshot has a hole is noticed and replaced.
    fs::OpenOptions::new().write(true).open(r.join("big")).unwrap().write_all_at(b"x", 3 * GIB).unwrap();
    let fixed = b.ok(&argv!["restore", "latest", "--json", "--target", t.path()]).json();
    assert_eq!((fixed["kept"].as_u64(), fixed["replaced"].as_u64()), (Some(4), Some(1)), "{fixed}");
    assert_eq!(data_map(&r.join("big")), maps[0]);
    b.ok(&argv!["check", "--read-data"]);
}
