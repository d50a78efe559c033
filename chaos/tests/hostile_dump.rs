//! `dump` of hostile snapshots (crafted with only a backup-only key, as in hostile.rs): it
//! stops at the walk limits with the reason and bounded memory, never writes bytes a file does
//! not hold, and stores a hard link whose first name is not (yet) in the archive as a copy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use chaos::argv;
use chaos::hostile::{dir, forge, node, Forger};
use chaos::testkit::{Bakare, Outcome};
use engine::tree::{NodeKind, MAX_DEPTH};
use engine::BlobId;

/// As hostile.rs: these repositories are tiny, so anything near this means a structure grew
/// because the repository said so.
const RSS_LIMIT: u64 = 128 << 20;

struct World {
    b: Bakare,
    backup_key: PathBuf,
}

impl World {
    fn new() -> World {
        let b = Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"));
        b.ok(&argv!["init"]);
        let backup_key = b.home.path().join("backup.key");
        b.ok(&argv!["key", "export", "--backup-only", &backup_key]);
        World { b, backup_key }
    }

    fn forge(&self, build: impl FnOnce(&mut Forger) -> Vec<BlobId>) -> String {
        forge(&self.b.repo, &self.backup_key, build)
    }

    /// `dump SNAP PATH` as the owner, with bounded memory.
    fn dump(&self, snap: &str, path: &str) -> Outcome {
        let o = self.b.run(&argv!["dump", snap, path]);
        assert!(o.peak_rss < RSS_LIMIT, "dump peaked at {} MiB", o.peak_rss >> 20);
        o
    }
}

#[test]
fn a_chain_far_deeper_than_the_limit_stops_the_dump() {
    let w = World::new();
    let snap = w.forge(|f| {
        let bottom = f.file("bottom", b"x");
        let mut t = f.tree(vec![bottom]);
        for _ in 0..100_000 {
            t = f.tree(vec![dir("d", vec![t])]);
        }
        vec![t]
    });
    let o = w.dump(&snap, "/");
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains(&format!("deeper than {MAX_DEPTH} levels")), "{}", o.stderr);
}

#[test]
fn subtrees_listed_twice_at_every_level_stop_the_dump() {
    let w = World::new();
    let snap = w.forge(|f| {
        let mut t = f.tree(vec![node("leaf", NodeKind::Fifo)]);
        for _ in 0..17 {
            t = f.tree(vec![dir("a", vec![t]), dir("b", vec![t])]);
        }
        vec![t]
    });
    let o = w.dump(&snap, "/");
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("entries per stored one"), "{}", o.stderr);
}

#[test]
fn a_file_whose_blobs_hold_less_than_its_size_is_never_padded() {
    let w = World::new();
    let snap = w.forge(|f| {
        let mut short = f.file("short", b"12345");
        if let NodeKind::File { size, .. } = &mut short.kind {
            *size = 6;
        }
        vec![f.tree(vec![short])]
    });
    let o = w.dump(&snap, "/short");
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("/short") && o.stderr.contains("content is 5 bytes, expected 6"),
        "{}",
        o.stderr
    );
    assert!(o.stdout.len() < 6, "no byte the file does not hold");
}

#[test]
fn a_hard_link_to_a_later_or_missing_name_is_stored_as_a_copy() {
    let w = World::new();
    let snap = w.forge(|f| {
        let b = f.file("b", b"content");
        let NodeKind::File { content, size } = b.kind.clone() else { unreachable!() };
        let early = node("a", NodeKind::HardLink { target: b"b".to_vec(), size, content: content.clone() });
        let nowhere = node("c", NodeKind::HardLink { target: b"gone/x".to_vec(), size, content });
        vec![f.tree(vec![early, b, nowhere])]
    });
    let o = w.dump(&snap, "/");
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("a.tar");
    std::fs::write(&archive, &o.stdout).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(st.success());
    for name in ["a", "b", "c"] {
        assert_eq!(std::fs::read(out.path().join(name)).unwrap(), b"content", "{name}");
    }
}
