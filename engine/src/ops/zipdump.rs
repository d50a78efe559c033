//! zipdump: a part of a snapshot as a zip stream (`dump --archive zip`), written as read.
//!
//! Zip keeps no owners, extended attributes, FIFOs, sockets or devices, and names entries in
//! UTF-8: what it cannot hold is left out and counted (`Notes`), never renamed. Other names of
//! a file are copies. Entries are deflated; sizes past 4 GiB get zip64 records. Unlike tar, a
//! zip ends with a central directory of every entry, which the writer holds until the end:
//! `budget` bounds it, and a dump past it stops with an error that says to use tar.
use std::cell::Cell;
use std::io::{self, Write};
use std::rc::Rc;

use ::zip::write::{FullFileOptions, StreamWriter};
use ::zip::{CompressionMethod, DateTime, ZipWriter};
use stages::BlobId;

use crate::ops::dump::{shown, walk, Content, DumpError, Gate, Notes};
use crate::repo::BlobReader;
use crate::tree::{Node, NodeKind};

/// What the writer keeps per entry for the central directory besides its name (twice): the
/// zip crate's record of it and its map's share, rounded up.
const PER_ENTRY: usize = 512;

pub struct ZipDump<'r, 'a, W: Write> {
    reader: &'r BlobReader<'a>,
    /// None once finished.
    zip: Option<ZipWriter<StreamWriter<Gate<W>>>>,
    open: Rc<Cell<bool>>,
    held: usize,
    budget: usize,
    /// Bytes of tree entries the walk may hold (`Memory::held`).
    held_limit: usize,
    pub notes: Notes,
}

/// A dump that stopped (an error, or never finished) must not end as a valid zip: the zip
/// crate writes the central directory when its writer is dropped, so the output is closed
/// first and the writer forgotten (the process is ending; the bytes it holds go nowhere).
impl<W: Write> Drop for ZipDump<'_, '_, W> {
    fn drop(&mut self) {
        if let Some(zip) = self.zip.take() {
            self.open.set(false);
            std::mem::forget(zip);
        }
    }
}

/// Files at least this large get zip64 records from their first header: deflate can make
/// incompressible data slightly larger, so a file just under 4 GiB may pass it compressed.
const ZIP64_FROM: u64 = u32::MAX as u64 - (64 << 20);

fn zip_io(e: ::zip::result::ZipError) -> io::Error {
    match e {
        ::zip::result::ZipError::Io(e) => e,
        e => io::Error::other(e),
    }
}

/// The zip's DOS time for `secs` since the epoch (UTC), clamped to what zip holds (1980-2107).
fn dos_time(secs: i64) -> DateTime {
    let clamped = secs.clamp(315_532_800, 4_354_819_198);
    jiff::Timestamp::from_second(clamped)
        .ok()
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).datetime())
        .and_then(|d| {
            let field = |v: i8| u8::try_from(v).ok();
            DateTime::from_date_and_time(
                u16::try_from(d.year()).ok()?,
                field(d.month())?,
                field(d.day())?,
                field(d.hour())?,
                field(d.minute())?,
                field(d.second())?,
            )
            .ok()
        })
        .unwrap_or_default()
}

impl<'r, 'a, W: Write> ZipDump<'r, 'a, W> {
    /// `budget`: bytes the central directory may take (`PER_ENTRY` and the name twice each).
    pub fn new(reader: &'r BlobReader<'a>, out: W, budget: usize) -> Self {
        let open = Rc::new(Cell::new(true));
        let zip = ZipWriter::new_stream(Gate { out, open: open.clone() }).set_auto_large_file();
        ZipDump {
            reader,
            zip: Some(zip),
            open,
            held: 0,
            budget,
            held_limit: crate::tree::MAX_HELD,
            notes: Notes::default(),
        }
    }

    /// At most `bytes` of tree entries held by the walk (`--mem-limit`: `Memory::held`).
    pub fn held(mut self, bytes: usize) -> Self {
        self.held_limit = bytes;
        self
    }

    /// Adds the entries below the directory stored as `tree` at `dir` in the snapshot (empty:
    /// its root) and everything below them, named from `strip` bytes on (`TarDump::add_tree`).
    pub fn add_tree(&mut self, dir: &[u8], tree: &[BlobId], strip: usize) -> Result<(), DumpError> {
        let reader = self.reader;
        let r = walk(reader, self.held_limit, dir, tree, |path, node| self.entry(path, node, strip));
        if r.is_err() {
            self.open.set(false);
        }
        r
    }

    /// Adds `node` at `path` and everything below it.
    pub fn add(&mut self, path: &[u8], node: &Node, strip: usize) -> Result<(), DumpError> {
        let r = self.entry(path, node, strip);
        if r.is_err() {
            self.open.set(false);
            return r;
        }
        match &node.kind {
            NodeKind::Dir { subtree } => self.add_tree(path, subtree, strip),
            _ => Ok(()),
        }
    }

    /// Writes the central directory and flushes the output.
    pub fn finish(mut self) -> Result<Notes, DumpError> {
        let output = |source| DumpError::Output { path: "the end of the archive".into(), source };
        let Some(zip) = self.zip.take().filter(|_| self.open.get()) else {
            return Err(output(io::Error::other("the dump stopped before its end")));
        };
        let mut out = zip.finish().map_err(zip_io).map_err(output)?.into_inner();
        out.flush().map_err(output)?;
        Ok(std::mem::take(&mut self.notes))
    }

    fn entry(&mut self, path: &[u8], node: &Node, strip: usize) -> Result<(), DumpError> {
        let output = |source| DumpError::Output { path: shown(path), source };
        let raw = path.get(strip..).filter(|n| !n.is_empty()).unwrap_or(&node.name);
        // A directory whose name is not UTF-8 is left out with what it holds: each is counted.
        let Ok(name) = std::str::from_utf8(raw) else {
            self.notes.names += 1;
            return Ok(());
        };
        if matches!(
            node.kind,
            NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDev { .. } | NodeKind::BlockDev { .. }
        ) {
            self.notes.unsupported += 1;
            return Ok(());
        }
        self.held = self.held.saturating_add(PER_ENTRY + 2 * name.len());
        if self.held > self.budget {
            let why = format!(
                "a zip's central directory is held until its end, and this one passed {} MiB here \
                 (raise --mem-limit, or use --archive tar, which has none)",
                self.budget >> 20
            );
            return Err(output(io::Error::other(why)));
        }
        let (secs, _) = node.mtime().unwrap_or((0, 0));
        let mut options = FullFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .compression_level(Some(1))
            .last_modified_time(dos_time(secs))
            .unix_permissions(node.mode & 0o7777);
        // The exact second too (Info-ZIP's extended timestamp, UTC), where it fits in 32 bits.
        if let Ok(t) = u32::try_from(secs) {
            let mut field = vec![1u8];
            field.extend_from_slice(&t.to_le_bytes());
            options.add_extra_field(0x5455, field, false).map_err(zip_io).map_err(output)?;
        }
        let Some(zip) = self.zip.as_mut() else {
            return Err(output(io::Error::other("the archive has ended")));
        };
        match &node.kind {
            NodeKind::Dir { .. } => zip.add_directory(name, options).map_err(zip_io).map_err(output),
            NodeKind::Symlink { target } => {
                let Ok(target) = std::str::from_utf8(target) else {
                    self.notes.names += 1;
                    return Ok(());
                };
                zip.add_symlink(name, target, options).map_err(zip_io).map_err(output)
            }
            NodeKind::File { .. } | NodeKind::HardLink { .. } => {
                if matches!(node.kind, NodeKind::HardLink { .. }) {
                    self.notes.link_copies += 1;
                }
                let options = options.large_file(node.size() >= ZIP64_FROM);
                zip.start_file(name, options).map_err(zip_io).map_err(output)?;
                let Some(mut content) = Content::new(self.reader, node) else { return Ok(()) };
                let copied = io::copy(&mut content, zip);
                if let Some(source) = content.take_error() {
                    return Err(DumpError::Snapshot { path: shown(path), source });
                }
                copied.map(|_| ()).map_err(output)
            }
            NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDev { .. } | NodeKind::BlockDev { .. } => {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_times_clamp_to_what_zip_holds() {
        let t = dos_time(1_795_962_372); // 2026-11-29 14:26:12 UTC
        assert_eq!(
            (t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second()),
            (2026, 11, 29, 14, 26, 12)
        );
        assert_eq!(dos_time(0).year(), 1980);
        assert_eq!(dos_time(i64::MAX).year(), 2107);
        assert_eq!(dos_time(i64::MIN).year(), 1980);
    }
}
