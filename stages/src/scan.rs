//! scan: roots -> ScanEvent (tree shape) + ReadJob (files to read). Workers: 1.
//! Holds one sorted directory listing per open depth (walkdir) and the (dev, inode) of files with
//! several links. Depth-first, sorted by name bytes, so the same input gives the same trees.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use walkdir::WalkDir;

use crate::msg::{BlobId, Cancel, FileKind, Meta, Progress, ReadJob, ScanEvent};

/// Returns true for paths to leave out (and, for directories, not to descend into).
pub type Exclude = Arc<dyn Fn(&Path, bool) -> bool + Send + Sync>;

/// The content of a file that is known not to have changed since an earlier backup, or None.
/// Called once per regular file, in scan order (so an implementation can walk a sorted cache
/// in step with the scan).
pub type Known = Box<dyn FnMut(&Path, &Meta) -> Option<Vec<BlobId>> + Send>;

pub struct ScanConfig {
    /// Absolute paths to back up.
    pub roots: Vec<PathBuf>,
    pub exclude: Option<Exclude>,
    pub known: Option<Known>,
    pub progress: Arc<Progress>,
}

pub struct ScanStats {
    pub files: u64,
    pub dirs: u64,
    /// Files whose content came from `Known` without reading them.
    pub unchanged: u64,
}

pub fn meta_of(md: &fs::Metadata) -> Meta {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_socket() {
        FileKind::Socket
    } else if ft.is_char_device() {
        FileKind::CharDev
    } else if ft.is_block_device() {
        FileKind::BlockDev
    } else {
        FileKind::File
    };
    Meta {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: if kind == FileKind::File { md.size() } else { 0 },
        mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        ino: md.ino(),
        dev: md.dev(),
        nlink: md.nlink(),
        rdev: md.rdev(),
    }
}

/// Makes roots absolute and lexically normal, drops duplicates and roots inside other roots, and
/// sorts them component-wise (the order the tree builder needs).
pub fn normalize_roots(roots: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = Vec::new();
    for r in roots {
        let abs = std::path::absolute(r)?;
        let mut norm = PathBuf::from("/");
        for c in abs.components() {
            match c {
                Component::Normal(p) => norm.push(p),
                Component::ParentDir => {
                    norm.pop();
                }
                _ => {}
            }
        }
        out.push(norm);
    }
    out.sort_by(|a, b| a.components().cmp(b.components()));
    out.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in out {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    Ok(kept)
}

/// Events travel to the tree builder in batches: one channel handoff per event (and a wakeup
/// of the builder for most of them) was the largest single cost of a no-change run over many
/// small files (11 % of its time in context switches).
const BATCH: usize = 256;

struct Scanner {
    known: Option<Known>,
    progress: Arc<Progress>,
    events: Sender<Vec<ScanEvent>>,
    batch: Vec<ScanEvent>,
    jobs: Sender<ReadJob>,
    cancel: Cancel,
    next_seq: u64,
    links: HashMap<(u64, u64), u64>,
    stats: ScanStats,
}

/// The receiver went away: the pipeline is shutting down.
struct Closed;

impl Scanner {
    fn emit(&mut self, ev: ScanEvent) -> Result<(), Closed> {
        self.batch.push(ev);
        if self.batch.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Closed> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.events.send(batch).map_err(|_| Closed)
    }

    fn entry(&mut self, path: &Path, name: OsString, meta: Meta) -> Result<(), Closed> {
        match meta.kind {
            FileKind::Dir => {
                self.stats.dirs += 1;
                self.emit(ScanEvent::Enter { name, meta })
            }
            FileKind::File => {
                self.stats.files += 1;
                Progress::add(&self.progress.files_total, 1);
                Progress::add(&self.progress.bytes_total, meta.size);
                if meta.nlink > 1 {
                    if let Some(&first) = self.links.get(&(meta.dev, meta.ino)) {
                        return self.emit(ScanEvent::HardLink { first, name, meta });
                    }
                    self.links.insert((meta.dev, meta.ino), self.next_seq);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                if let Some(content) = self.known.as_mut().and_then(|k| k(path, &meta)) {
                    self.stats.unchanged += 1;
                    return self.emit(ScanEvent::Unchanged { seq, name, meta, content });
                }
                // The job goes first: the tree builder may wait for this file's content, which
                // must already be on its way.
                let job = ReadJob { seq, path: path.to_path_buf(), meta: meta.clone() };
                self.jobs.send(job).map_err(|_| Closed)?;
                self.emit(ScanEvent::File { seq, name, meta })
            }
            FileKind::Symlink => match fs::read_link(path) {
                Ok(target) => self.emit(ScanEvent::Symlink { name, meta, target: target.into_os_string() }),
                Err(e) => self.error(path, format!("cannot read symlink: {e}")),
            },
            _ => self.emit(ScanEvent::Special { name, meta }),
        }
    }

    fn error(&mut self, path: &Path, why: String) -> Result<(), Closed> {
        self.emit(ScanEvent::Error { path: path.to_path_buf(), why })
    }

    fn walk(&mut self, root: &Path, exclude: &Option<Exclude>) -> Result<(), Closed> {
        let is_fs_root = root.parent().is_none();
        // A root that is a symlink is saved as the symlink (walkdir would follow it by default,
        // yielding the target's entries under a node recorded as a symlink).
        let walker = WalkDir::new(root)
            .follow_links(false)
            .follow_root_links(false)
            .min_depth(usize::from(is_fs_root))
            .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        let ex = exclude.clone();
        let walker = walker.into_iter().filter_entry(move |e| match &ex {
            Some(f) if e.depth() > 0 => !f(e.path(), e.file_type().is_dir()),
            _ => true,
        });
        // Depths of the directories this walk has entered and not yet left.
        let mut open: Vec<usize> = Vec::new();
        for item in walker {
            if self.cancel.is_cancelled() {
                return Err(Closed);
            }
            let entry = match item {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().unwrap_or(root).to_path_buf();
                    let why = e.io_error().map_or_else(|| e.to_string(), |io| io.to_string());
                    // An unreadable directory was already entered: it stays, empty.
                    self.error(&path, format!("cannot list or stat: {why}"))?;
                    continue;
                }
            };
            while open.last().is_some_and(|&d| d >= entry.depth()) {
                open.pop();
                self.emit(ScanEvent::Leave)?;
            }
            let meta = match entry.metadata() {
                Ok(md) => meta_of(&md),
                Err(e) => {
                    self.error(entry.path(), format!("cannot stat: {e}"))?;
                    continue;
                }
            };
            let is_dir = meta.kind == FileKind::Dir;
            let name = entry.file_name().to_os_string();
            self.entry(entry.path(), name, meta)?;
            if is_dir {
                open.push(entry.depth());
            }
        }
        for _ in open {
            self.emit(ScanEvent::Leave)?;
        }
        Ok(())
    }

    fn run(&mut self, mut cfg: ScanConfig) -> Result<(), Closed> {
        self.known = cfg.known.take();
        self.progress = cfg.progress.clone();
        // Ancestors of the roots are entered (with their own metadata) so that the snapshot keeps
        // absolute paths: /home/u/docs is restored as TARGET/home/u/docs.
        let mut open: Vec<OsString> = Vec::new();
        for root in &cfg.roots {
            let comps: Vec<OsString> = root
                .components()
                .filter_map(|c| match c {
                    Component::Normal(p) => Some(p.to_os_string()),
                    _ => None,
                })
                .collect();
            let parents = &comps[..comps.len().saturating_sub(1)];
            let common = open.iter().zip(parents).take_while(|(a, b)| a == b).count();
            while open.len() > common {
                open.pop();
                self.emit(ScanEvent::Leave)?;
            }
            for (i, name) in parents.iter().enumerate().skip(common) {
                let dir: PathBuf =
                    std::iter::once(OsString::from("/")).chain(parents[..=i].iter().cloned()).collect();
                match fs::symlink_metadata(&dir) {
                    Ok(md) => self.emit(ScanEvent::Enter { name: name.clone(), meta: meta_of(&md) })?,
                    Err(e) => {
                        self.error(&dir, format!("cannot stat: {e}"))?;
                        break;
                    }
                }
                open.push(name.clone());
            }
            if open.len() < parents.len() {
                continue; // an ancestor failed; the error is recorded
            }
            self.walk(root, &cfg.exclude)?;
        }
        for _ in open {
            self.emit(ScanEvent::Leave)?;
        }
        Ok(())
    }
}

pub struct ScanHandle {
    thread: JoinHandle<ScanStats>,
}

impl ScanHandle {
    /// Waits for the scan to end. A panic in the scanner is reported as no files scanned.
    pub fn finish(self) -> ScanStats {
        self.thread.join().unwrap_or(ScanStats { files: 0, dirs: 0, unchanged: 0 })
    }
}

pub fn spawn(
    cfg: ScanConfig,
    events: Sender<Vec<ScanEvent>>,
    jobs: Sender<ReadJob>,
    cancel: Cancel,
) -> std::io::Result<ScanHandle> {
    let thread = std::thread::Builder::new().name("scan".into()).spawn(move || {
        let mut s = Scanner {
            known: None,
            progress: Arc::default(),
            events,
            batch: Vec::with_capacity(BATCH),
            jobs,
            cancel,
            next_seq: 0,
            links: HashMap::new(),
            stats: ScanStats { files: 0, dirs: 0, unchanged: 0 },
        };
        let progress = cfg.progress.clone();
        if s.run(cfg).is_ok() {
            let _ = s.flush();
        }
        progress.scan_done.store(true, std::sync::atomic::Ordering::Relaxed);
        s.stats
    })?;
    Ok(ScanHandle { thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(evs: &[ScanEvent]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                ScanEvent::Enter { name, .. } => format!("+{}", name.to_string_lossy()),
                ScanEvent::Leave => "-".into(),
                ScanEvent::File { name, .. } | ScanEvent::Unchanged { name, .. } => {
                    name.to_string_lossy().into()
                }
                ScanEvent::HardLink { name, .. } => format!("={}", name.to_string_lossy()),
                ScanEvent::Symlink { name, .. } => format!("@{}", name.to_string_lossy()),
                ScanEvent::Special { name, .. } => format!("!{}", name.to_string_lossy()),
                ScanEvent::Error { .. } => "E".into(),
            })
            .collect()
    }

    #[test]
    fn sorted_depth_first_with_ancestors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        fs::create_dir_all(root.join("b/inner")).unwrap();
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("b/z"), "z").unwrap();
        fs::write(root.join("a/x"), "x").unwrap();
        fs::hard_link(root.join("a/x"), root.join("b/x2")).unwrap();
        std::os::unix::fs::symlink("a/x", root.join("c")).unwrap();
        let (etx, erx) = crossbeam_channel::unbounded();
        let (jtx, jrx) = crossbeam_channel::unbounded();
        let cfg = ScanConfig {
            roots: normalize_roots(std::slice::from_ref(&root)).unwrap(),
            exclude: None,
            known: None,
            progress: Arc::default(),
        };
        spawn(cfg, etx, jtx, Cancel::default()).unwrap().finish();
        let evs: Vec<_> = erx.iter().flatten().collect();
        let n = names(&evs);
        let depth = root.components().count() - 2; // ancestors entered, excluding "/" and "src"
        assert_eq!(n.len(), depth * 2 + 12);
        assert_eq!(
            &n[depth..depth + 12],
            &["+src", "+a", "x", "-", "+b", "+inner", "-", "=x2", "z", "-", "@c", "-"]
        );
        assert_eq!(jrx.iter().count(), 2);
    }

    #[test]
    fn nested_roots_are_dropped() {
        let r = normalize_roots(&["/a/b".into(), "/a".into(), "/a/../c".into()]).unwrap();
        assert_eq!(r, vec![PathBuf::from("/a"), PathBuf::from("/c")]);
    }
}
