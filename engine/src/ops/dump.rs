//! dump: a snapshot's file as its bytes, or a part of a snapshot as a tar stream, written as read.
//!
//! Bounded memory: one blob of file data at a time, one tree blob per directory level the walk
//! is in (`Entries`), and the archive names of files with other names, up to a budget.
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use stages::{BlobId, BlobKind};
use tar::{EntryType, Header};

use crate::error::Error;
use crate::repo::{BlobReader, Scratch, Tally};
use crate::tree::{Node, NodeKind, Placer, MAX_DEPTH, MAX_PATH};

/// Why a dump stopped: the snapshot could not be read at a path, or the output took no more.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{path}: {source}")]
    Snapshot {
        /// The path in the snapshot, from its root (`/home/me/f`).
        path: String,
        #[source]
        source: Error,
    },
    /// Writing the output failed (a closed pipe among others: see `is_closed_pipe`).
    #[error("writing the output at {path}: {source}")]
    Output {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl DumpError {
    /// Whether the reader of the output went away (`bakare dump ... | head`): not an error.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, DumpError::Output { source, .. } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// `path` (a path in the snapshot, `/` separated, with or without a leading `/`) as its names,
/// `.` and empty components left out (as `find::lookup` reads it).
pub fn names(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&c| c == b'/').filter(|c| !c.is_empty() && *c != b".").collect()
}

pub(crate) fn shown(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// A file's bytes in order, its holes as zeros, read one blob at a time. Every blob is
/// authenticated before a byte of it is given out, and a file whose blobs hold more or less
/// data than its size less its holes is an error, never bytes of the wrong length.
pub struct Content<'n, 'r, 'a> {
    reader: &'r BlobReader<'a>,
    scratch: Scratch,
    blobs: std::slice::Iter<'n, BlobId>,
    placer: Placer<'n>,
    size: u64,
    /// Bytes of data the file holds (its size less its holes), and those read so far.
    data: u64,
    read: u64,
    buf: Vec<u8>,
    off: usize,
    /// The part of `buf` placed in the file: from `seg_at`, `seg_len` bytes.
    seg_at: u64,
    seg_len: u64,
    pos: u64,
    error: Option<Error>,
}

impl<'n, 'r, 'a> Content<'n, 'r, 'a> {
    /// The content of `node`; None if it is not a file (or another name of one).
    pub fn new(reader: &'r BlobReader<'a>, node: &'n Node) -> Option<Self> {
        let (NodeKind::File { size, content } | NodeKind::HardLink { size, content, .. }) = &node.kind else {
            return None;
        };
        Some(Content {
            reader,
            scratch: Scratch::default(),
            blobs: content.iter(),
            placer: Placer::new(&node.holes),
            size: *size,
            data: size.saturating_sub(node.hole_bytes()),
            read: 0,
            buf: Vec::new(),
            off: 0,
            seg_at: 0,
            seg_len: 0,
            pos: 0,
            error: None,
        })
    }

    /// Why the last read failed, if the snapshot was the cause.
    pub fn take_error(&mut self) -> Option<Error> {
        self.error.take()
    }

    fn damaged(why: String) -> Error {
        Error::corrupt("file", "content", why)
    }

    fn fill(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.seg_len == 0 && self.pos < self.size {
            if self.off < self.buf.len() {
                let (at, n) = self.placer.place((self.buf.len() - self.off) as u64);
                if at < self.pos || at.saturating_add(n) > self.size {
                    return Err(Self::damaged(format!("data placed at {at}, past its size {}", self.size)));
                }
                (self.seg_at, self.seg_len) = (at, n);
            } else if let Some(id) = self.blobs.next() {
                let buf = &mut self.buf;
                buf.clear();
                self.off = 0;
                self.reader.read_with(id, BlobKind::Data, &mut self.scratch, |d| buf.extend_from_slice(d))?;
                self.read += self.buf.len() as u64;
                if self.buf.is_empty() || self.read > self.data {
                    let (read, data) = (self.read, self.data);
                    return Err(Self::damaged(format!("content is at least {read} bytes, expected {data}")));
                }
            } else if self.read != self.data {
                let (read, data) = (self.read, self.data);
                return Err(Self::damaged(format!("content is {read} bytes, expected {data}")));
            } else {
                // All data placed: the rest of the file is a hole.
                self.seg_at = self.size;
                break;
            }
        }
        if self.pos >= self.size {
            if self.off < self.buf.len() || self.blobs.len() > 0 {
                return Err(Self::damaged(format!("more content than its size {}", self.size)));
            }
            return Ok(0);
        }
        if self.pos < self.seg_at {
            let k = (out.len() as u64).min(self.seg_at - self.pos) as usize;
            out[..k].fill(0);
            self.pos += k as u64;
            return Ok(k);
        }
        let k = (out.len() as u64).min(self.seg_len) as usize;
        out[..k].copy_from_slice(&self.buf[self.off..self.off + k]);
        self.off += k;
        self.seg_len -= k as u64;
        self.seg_at += k as u64;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Read for Content<'_, '_, '_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.fill(out).map_err(|e| {
            self.error = Some(e);
            io::Error::other("the snapshot could not be read")
        })
    }
}

/// Writes the content of the file `node`, at `path` in the snapshot, to `out`.
pub fn write_file(
    reader: &BlobReader,
    node: &Node,
    path: &[u8],
    out: &mut impl Write,
) -> Result<(), DumpError> {
    let snapshot = |source| DumpError::Snapshot { path: shown(path), source };
    let output = |source| DumpError::Output { path: shown(path), source };
    let Some(mut content) = Content::new(reader, node) else {
        return Err(snapshot(Error::Invalid("not a file".into())));
    };
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let source = content.take_error().unwrap_or_else(|| Error::io(shown(path), e));
                return Err(snapshot(source));
            }
        };
        out.write_all(&buf[..n]).map_err(output)?;
    }
    out.flush().map_err(output)
}

/// A writer that fails once closed: a dump that stopped must not end its archive (the tar
/// builder writes the end marker when dropped), which would make a cut stream look whole.
/// The output of an archive: closed (every write fails) once the dump stopped, so that nothing
/// written on the way out (a zip's drop, a tar's end marker) makes a cut archive look whole.
pub(crate) struct Gate<W: Write> {
    pub(crate) out: W,
    pub(crate) open: Rc<Cell<bool>>,
}

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.open.get() {
            return Err(io::Error::other("the dump stopped"));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.open.get() {
            return Ok(());
        }
        self.out.flush()
    }
}

/// What a tar dump left out, to be told (the archive has no place for it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes {
    /// Sockets: tar has no type for them (GNU tar leaves them out too).
    pub sockets: u64,
    /// Extended attributes whose names are not UTF-8 (PAX records are named in UTF-8).
    pub xattrs: u64,
    /// Other names of files stored as copies, not links: the first name was outside the
    /// archive, or the list of names had reached its budget.
    pub link_copies: u64,
    /// FIFOs and device nodes left out (`specials(false)`).
    pub specials: u64,
    /// Privileged extended attributes (`trusted.*`, `security.*`) left out (`owners(false)`).
    pub privileged: u64,
    /// Entries left out whose names (or symlink targets) are not UTF-8 (zip stores UTF-8), and
    /// everything below such a directory.
    pub names: u64,
    /// FIFOs, sockets and device nodes a zip has no type for.
    pub unsupported: u64,
}

/// A tar stream of parts of one snapshot: each entry with its mode, owner ids, mtime (PAX
/// records for nanoseconds), extended attributes (PAX `SCHILY.xattr.*`, as GNU tar writes
/// them, ACLs among them), long names (GNU extensions), symlinks, FIFOs and devices; other
/// names of a file as hard link entries to its first name in the archive.
pub struct TarDump<'r, 'a, W: Write> {
    reader: &'r BlobReader<'a>,
    tar: tar::Builder<Gate<W>>,
    open: Rc<Cell<bool>>,
    /// Hash of a file's path in the snapshot -> its name in the archive: files with other names.
    linked: HashMap<[u8; 16], Vec<u8>>,
    linked_bytes: usize,
    linked_budget: usize,
    owners: bool,
    specials: bool,
    /// Bytes of tree entries the walk may hold (`Memory::held`).
    held: usize,
    /// `finish` ran: only then may the archive end.
    finished: bool,
    pub notes: Notes,
}

/// Whatever stopped the dump (an error anywhere, also outside `add`: a path that could not be
/// looked up), an archive that was not finished never gets its end marker.
impl<W: Write> Drop for TarDump<'_, '_, W> {
    fn drop(&mut self) {
        if !self.finished {
            self.open.set(false);
        }
    }
}

/// Bytes counted per remembered name besides the name itself (the key and the map's share).
const LINKED_ENTRY: usize = 64;

fn key(path: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(&blake3::hash(path).as_bytes()[..16]);
    k
}

impl<'r, 'a, W: Write> TarDump<'r, 'a, W> {
    /// `linked_budget`: bytes the names of files with other names may take; past it, further
    /// names of those files are stored as copies.
    pub fn new(reader: &'r BlobReader<'a>, out: W, linked_budget: usize) -> Self {
        let open = Rc::new(Cell::new(true));
        let gate = Gate { out, open: open.clone() };
        TarDump {
            reader,
            tar: tar::Builder::new(gate),
            open,
            linked: HashMap::new(),
            linked_bytes: 0,
            linked_budget,
            owners: true,
            specials: true,
            held: crate::tree::MAX_HELD,
            finished: false,
            notes: Notes::default(),
        }
    }

    /// Without owners: every entry owned by uid and gid 0, without set-id bits (`restore
    /// --no-owner`).
    pub fn owners(mut self, keep: bool) -> Self {
        self.owners = keep;
        self
    }

    /// Without FIFOs and device nodes (`restore --no-special`).
    pub fn specials(mut self, keep: bool) -> Self {
        self.specials = keep;
        self
    }

    /// At most `bytes` of tree entries held by the walk (`--mem-limit`: `Memory::held`).
    pub fn held(mut self, bytes: usize) -> Self {
        self.held = bytes;
        self
    }

    /// Adds the entries below the directory stored as `tree`, which is at `dir` in the
    /// snapshot (empty: its root), and everything below them. Archive names are paths in the
    /// snapshot less their first `strip` bytes.
    pub fn add_tree(&mut self, dir: &[u8], tree: &[BlobId], strip: usize) -> Result<(), DumpError> {
        let r = self.walk(dir, tree, strip);
        if r.is_err() {
            self.open.set(false);
        }
        r
    }

    /// Adds `node`, at `path` in the snapshot, and everything below it (`add_tree`).
    pub fn add(&mut self, path: &[u8], node: &Node, strip: usize) -> Result<(), DumpError> {
        let mut r = self.entry(path, node, strip);
        if let (Ok(()), NodeKind::Dir { subtree }) = (&r, &node.kind) {
            r = self.walk(path, subtree, strip);
        }
        if r.is_err() {
            self.open.set(false);
        }
        r
    }

    /// Ends the archive and flushes the output.
    pub fn finish(mut self) -> Result<(), DumpError> {
        let output = |source| DumpError::Output { path: "the end of the archive".into(), source };
        self.tar.finish().map_err(output)?;
        self.tar.get_mut().out.flush().map_err(output)?;
        self.finished = true;
        Ok(())
    }

    fn walk(&mut self, dir: &[u8], tree: &[BlobId], strip: usize) -> Result<(), DumpError> {
        let reader = self.reader;
        walk(reader, self.held, dir, tree, |path, node| self.entry(path, node, strip))
    }

    /// Remembers the archive name of the file at `path` in the snapshot, for its other names.
    fn remember(&mut self, path: &[u8], name: &[u8]) {
        let cost = LINKED_ENTRY + name.len();
        if self.linked_bytes.saturating_add(cost) <= self.linked_budget {
            self.linked_bytes += cost;
            self.linked.insert(key(path), name.to_vec());
        }
    }

    /// One entry (its content too, not what is below it), named `path` less `strip` bytes.
    fn entry(&mut self, path: &[u8], node: &Node, strip: usize) -> Result<(), DumpError> {
        let name = path.get(strip..).filter(|n| !n.is_empty()).unwrap_or(&node.name).to_vec();
        let output = |source| DumpError::Output { path: shown(path), source };
        if !self.specials
            && matches!(node.kind, NodeKind::Fifo | NodeKind::CharDev { .. } | NodeKind::BlockDev { .. })
        {
            self.notes.specials += 1;
            return Ok(());
        }
        let mut h = Header::new_gnu();
        let (mode, uid, gid) = match self.owners {
            true => (node.mode & 0o7777, node.uid, node.gid),
            false => (node.mode & 0o1777, 0, 0),
        };
        h.set_mode(mode);
        h.set_uid(u64::from(uid));
        h.set_gid(u64::from(gid));
        h.set_size(0);
        // A valid node's mtime fits (`Node::problem`); before 1970 the PAX record says it.
        let (secs, nanos) = node.mtime().unwrap_or((0, 0));
        h.set_mtime(secs.max(0) as u64);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if nanos != 0 || secs < 0 {
            let t = match (secs, nanos) {
                (s, 0) => format!("{s}"),
                (s, n) if s < 0 => format!("-{}.{:09}", -(s + 1), 1_000_000_000 - n),
                (s, n) => format!("{s}.{n:09}"),
            };
            pax.push(("mtime".into(), t.into_bytes()));
        }
        for x in &node.xattrs {
            // As restore --no-owner: user attributes and ACLs only, never trusted.* or
            // security.* (file capabilities) a forged snapshot could carry.
            if !self.owners && !crate::ops::attrs::unprivileged(x) {
                self.notes.privileged += 1;
                continue;
            }
            match std::str::from_utf8(&x.name) {
                Ok(n) => pax.push((format!("SCHILY.xattr.{n}"), x.value.clone())),
                Err(_) => self.notes.xattrs += 1,
            }
        }
        let at = Path::new(OsStr::from_bytes(&name));
        let mut content = Content::new(self.reader, node);
        let link = match &node.kind {
            NodeKind::HardLink { target, .. } => self.linked.get(&key(target)).cloned(),
            _ => None,
        };
        match (&node.kind, link) {
            (NodeKind::Socket, _) => {
                self.notes.sockets += 1;
                return Ok(());
            }
            (NodeKind::HardLink { .. }, Some(first)) => {
                h.set_entry_type(EntryType::Link);
                self.append_pax(&pax).map_err(output)?;
                let first = Path::new(OsStr::from_bytes(&first));
                return self.tar.append_link(&mut h, at, first).map_err(output);
            }
            (NodeKind::File { .. } | NodeKind::HardLink { .. }, _) => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(node.size());
                match &node.kind {
                    NodeKind::HardLink { target, .. } => {
                        self.notes.link_copies += 1;
                        // The other names of this file link to this one.
                        self.remember(target, &name);
                    }
                    _ if node.nlink > 1 => self.remember(path, &name),
                    _ => {}
                }
            }
            (NodeKind::Dir { .. }, _) => h.set_entry_type(EntryType::Directory),
            (NodeKind::Symlink { target }, _) => {
                h.set_entry_type(EntryType::Symlink);
                self.append_pax(&pax).map_err(output)?;
                // Short targets exactly as stored (set_link_name would tidy `a//b`); long ones
                // go in a GNU long-link record, also as stored.
                if target.len() <= 100 {
                    h.set_link_name_literal(target).map_err(output)?;
                    return self.tar.append_data(&mut h, at, io::empty()).map_err(output);
                }
                let target = Path::new(OsStr::from_bytes(target));
                return self.tar.append_link(&mut h, at, target).map_err(output);
            }
            (NodeKind::Fifo, _) => h.set_entry_type(EntryType::Fifo),
            (NodeKind::CharDev { rdev } | NodeKind::BlockDev { rdev }, _) => {
                let char = matches!(node.kind, NodeKind::CharDev { .. });
                h.set_entry_type(if char { EntryType::Char } else { EntryType::Block });
                h.set_device_major(rustix::fs::major(*rdev)).map_err(output)?;
                h.set_device_minor(rustix::fs::minor(*rdev)).map_err(output)?;
            }
        }
        self.append_pax(&pax).map_err(output)?;
        let r = match content.as_mut() {
            Some(c) if matches!(node.kind, NodeKind::File { .. } | NodeKind::HardLink { .. }) => {
                self.tar.append_data(&mut h, at, c)
            }
            _ => self.tar.append_data(&mut h, at, io::empty()),
        };
        if let Some(source) = content.as_mut().and_then(Content::take_error) {
            return Err(DumpError::Snapshot { path: shown(path), source });
        }
        r.map_err(output)
    }

    fn append_pax(&mut self, pax: &[(String, Vec<u8>)]) -> io::Result<()> {
        self.tar.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
    }
}

/// Depth first below the directory stored as `tree` at `dir`, each entry (with its path in the
/// snapshot) handed to `each` before what it holds; one tree blob held per level, at most
/// `held` bytes of entries across the levels (`Tally::with_limit`).
pub(crate) fn walk(
    reader: &BlobReader,
    held: usize,
    dir: &[u8],
    tree: &[BlobId],
    mut each: impl FnMut(&[u8], &Node) -> Result<(), DumpError>,
) -> Result<(), DumpError> {
    let tally = Tally::with_limit(held);
    let mut stack = vec![(dir.to_vec(), reader.entries(tree, &tally))];
    while let Some((dir, entries)) = stack.last_mut() {
        let node = match entries.next() {
            Ok(Some(n)) => n,
            Ok(None) => {
                stack.pop();
                continue;
            }
            Err(source) => return Err(DumpError::Snapshot { path: shown(dir), source }),
        };
        let mut path = Vec::with_capacity(dir.len() + 1 + node.name.len());
        path.extend_from_slice(dir);
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&node.name);
        let damaged = |why: String| DumpError::Snapshot {
            path: shown(&path),
            source: Error::corrupt("tree", "snapshot", why),
        };
        if path.len() > MAX_PATH {
            return Err(damaged(format!("a path longer than {MAX_PATH} bytes (a damaged snapshot)")));
        }
        each(&path, &node)?;
        if let NodeKind::Dir { subtree } = &node.kind {
            if stack.len() >= MAX_DEPTH {
                return Err(damaged(format!("deeper than {MAX_DEPTH} levels (a damaged snapshot)")));
            }
            let entries = reader.entries(subtree, &tally);
            stack.push((path, entries));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_leave_out_empty_and_dot() {
        assert_eq!(names(b"/home//me/./f"), [&b"home"[..], b"me", b"f"]);
        assert!(names(b"/").is_empty());
    }

    #[test]
    fn pax_times_before_1970() {
        // -1.5 s is written -0.5 less a second: "-1.500000000".
        let (s, n): (i64, u32) = (-2, 500_000_000);
        assert_eq!(format!("-{}.{:09}", -(s + 1), 1_000_000_000 - n), "-1.500000000");
    }
}
