//! The read stage reads each regular file's attributes on the descriptor it reads the content
//! through and sends them ahead of the file's blocks (`Block::Attrs`), through io_uring and
//! through the thread pool alike; an empty file, never opened, has none sent (the builder reads
//! its attributes by path). Reads are uncached where the file system takes the flag and plain
//! where it refuses it (tmpfs), the same bytes either way.
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

/// The read stage spawned in `mode` (small blocks, so files of a few MiB span several), its
/// job queue and its output; None when `mode` is io_uring and the kernel refuses it.
type Spawned =
    (stages::read::ReadHandle, crossbeam_channel::Sender<ReadJob>, crossbeam_channel::Receiver<Vec<Block>>);

fn spawn_read(mode: ReadMode, paths: &[&Path]) -> Option<Spawned> {
    let budget = MemoryBudget::new(64 << 20);
    let cfg = ReadConfig { mode, segment: 1 << 20, headroom: 64 << 10, threads: 2, depth: 8 };
    let pool = BufferPool::new(budget.clone(), (1 << 20) + (64 << 10));
    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let source = Arc::new(io::LocalSource::default());
    let read = match stages::read::spawn(cfg, source, budget, job_rx, vec![out_tx], pool, Cancel::default()) {
        Ok(r) => r,
        Err(e) => {
            skipped(&format!("io_uring refused ({e})"));
            return None;
        }
    };
    for (i, p) in paths.iter().enumerate() {
        job_tx.send(job(i as u64, p)).unwrap();
    }
    Some((read, job_tx, out_rx))
}

/// Every block the read stage sends for `paths` (seq = index), in the order sent; None when
/// `mode` is io_uring and the kernel refuses it.
fn read_all(mode: ReadMode, paths: &[&Path]) -> Option<Vec<Block>> {
    let (read, job_tx, out_rx) = spawn_read(mode, paths)?;
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

/// Every file's bytes as the read stage sends them (seq = index), blocks consumed as they come
/// so the budget never fills.
fn contents(mode: ReadMode, paths: &[&Path]) -> Option<Vec<Vec<u8>>> {
    let (read, job_tx, out_rx) = spawn_read(mode, paths)?;
    drop(job_tx);
    let mut files = vec![Vec::new(); paths.len()];
    for block in out_rx.into_iter().flatten() {
        match block {
            Block::Data { seq, buf, start, offset, .. } => {
                let file = &mut files[seq as usize];
                assert_eq!(offset, file.len() as u64, "blocks in order");
                file.extend_from_slice(&buf[start..]);
            }
            Block::Failed { path, why, .. } => panic!("{mode:?}: {}: {why}", path.display()),
            _ => {}
        }
    }
    read.finish();
    Some(files)
}

/// Says a test skipped where the test runner shows it (libtest captures `eprintln!`).
fn skipped(why: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("SKIPPED: {why}\n").as_bytes());
}

/// On tmpfs, which refuses uncached reads, every read is made again plainly (the io_uring
/// reader re-submits the refused read into the same buffer, headroom and all); on the
/// temporary directory's file system they may be taken. The bytes are the file's either way:
/// files of several blocks (1 MiB each) and small ones, through both read paths.
#[test]
fn refused_and_taken_uncached_reads_give_the_files_bytes() {
    let shm = Path::new("/dev/shm");
    let on_tmpfs = rustix::fs::statfs(shm).is_ok_and(|s| s.f_type == 0x0102_1994); // TMPFS_MAGIC
    if !on_tmpfs {
        skipped("/dev/shm is not a tmpfs here: the refused-read path is not exercised");
    }
    let dirs: Vec<tempfile::TempDir> = [Some(shm), None]
        .into_iter()
        .filter(|d| d.is_none() || on_tmpfs)
        .map(|d| match d {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        })
        .collect();
    for dir in &dirs {
        let mut want = Vec::new();
        let mut paths = Vec::new();
        for i in 0..12u32 {
            // Three of several blocks (not a whole number of them), the rest small.
            let n = if i < 3 { (3 << 20) + 4097 * (i as usize + 1) } else { 100 + 1000 * i as usize };
            let data: Vec<u8> =
                (0..n).map(|j| (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8).collect();
            let p = dir.path().join(format!("f{i:02}"));
            std::fs::write(&p, &data).unwrap();
            want.push(data);
            paths.push(p);
        }
        let refs: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        for mode in [ReadMode::Pool, ReadMode::Uring] {
            let Some(got) = contents(mode, &refs) else { continue };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g == w,
                    "{mode:?} in {}: file {i} differs ({} bytes of {})",
                    dir.path().display(),
                    g.len(),
                    w.len()
                );
            }
        }
    }
}
