//! The read stage reads each regular file's attributes on the descriptor it reads the content
//! through and sends them ahead of the file's blocks (`Block::Attrs`), through io_uring and
//! through the thread pool alike; an empty file, never opened, has none sent (the builder reads
//! its attributes by path).
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{IFlags, XattrFlags};
use stages::pool::BufferPool;
use stages::read::{ReadConfig, ReadMode};
use stages::{Block, Cancel, FileKind, MemoryBudget, Meta, ReadJob};

fn job(seq: u64, path: &Path) -> ReadJob {
    let md = std::fs::symlink_metadata(path).unwrap();
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    let meta = Meta {
        kind: FileKind::File,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        mtime_ns: ns(md.mtime(), md.mtime_nsec()),
        ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        ino: md.ino(),
        dev: md.dev(),
        nlink: md.nlink(),
        rdev: md.rdev(),
        blocks: md.blocks(),
    };
    ReadJob { seq, path: path.to_path_buf(), meta }
}

/// Every block the read stage sends for `paths` (seq = index), in the order sent; None when
/// `mode` is io_uring and the kernel refuses it.
fn read_all(mode: ReadMode, paths: &[&Path]) -> Option<Vec<Block>> {
    let budget = MemoryBudget::new(64 << 20);
    let cfg = ReadConfig { mode, segment: 1 << 20, headroom: 64 << 10, threads: 2, depth: 8 };
    let pool = BufferPool::new(budget.clone(), (1 << 20) + (64 << 10));
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let source = Arc::new(io::LocalSource::default());
    let read = match stages::read::spawn(cfg, source, budget, job_rx, vec![out_tx], pool, Cancel::default()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIPPED: io_uring refused ({e})");
            return None;
        }
    };
    for (i, p) in paths.iter().enumerate() {
        job_tx.send(job(i as u64, p)).unwrap();
    }
    drop(job_tx);
    read.finish();
    Some(out_rx.into_iter().flatten().collect())
}

#[test]
fn attributes_are_read_on_the_open_file_and_sent_before_its_blocks() {
    let d = tempfile::tempdir().unwrap();
    let (flagged, plain, empty) = (d.path().join("flagged"), d.path().join("plain"), d.path().join("empty"));
    std::fs::write(&flagged, vec![1u8; 5000]).unwrap();
    std::fs::write(&plain, b"plain").unwrap();
    std::fs::write(&empty, b"").unwrap();
    let kept = IFlags::NODUMP | IFlags::NOATIME;
    let file = std::fs::File::open(&flagged).unwrap();
    let set = rustix::fs::ioctl_setflags(file.as_fd(), kept)
        .and_then(|()| rustix::fs::setxattr(&flagged, "user.note", b"kept", XattrFlags::empty()));
    if let Err(e) = set {
        eprintln!(
            "SKIPPED: the temporary directory's file system takes no inode flags or user attributes ({e})"
        );
        return;
    }
    for mode in [ReadMode::Pool, ReadMode::Uring] {
        let Some(blocks) = read_all(mode, &[&flagged, &plain, &empty]) else { continue };
        let of = |seq: u64| blocks.iter().filter(|b| b.seq() == seq).collect::<Vec<_>>();
        let (flagged, plain, empty) = (of(0), of(1), of(2));
        match flagged.as_slice() {
            [Block::Attrs { attrs, .. }, Block::Data { last: true, .. }] => {
                let flags = *attrs.flags.as_ref().unwrap();
                assert_eq!(flags & kept.bits(), kept.bits(), "{mode:?}: {flags:#x}");
                let xattrs = attrs.xattrs.as_ref().unwrap();
                let user: Vec<_> = xattrs.iter().filter(|(n, _)| n.starts_with(b"user.")).collect();
                assert_eq!(user, [&(b"user.note".to_vec(), b"kept".to_vec())], "{mode:?}");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        match plain.as_slice() {
            [Block::Attrs { attrs, .. }, Block::Data { last: true, .. }] => {
                assert_eq!(*attrs.flags.as_ref().unwrap() & kept.bits(), 0, "{mode:?}");
                let xattrs = attrs.xattrs.as_ref().unwrap();
                assert!(!xattrs.iter().any(|(n, _)| n.starts_with(b"user.")), "{mode:?}: {xattrs:?}");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(matches!(empty.as_slice(), [Block::Data { last: true, .. }]), "{mode:?}: {empty:?}");
    }
}
