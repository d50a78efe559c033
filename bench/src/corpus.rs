//! Deterministic test corpora. The same kind, size and seed always give a byte-identical tree
//! (names and contents), so runs on different days and machines back up the same data.
//!
//! `mixed` is shaped like a home directory: a quarter of the bytes in small text files in nested
//! directories, the rest in large files (incompressible and compressible), exact duplicates
//! (dedup by whole file) and near-duplicates (a few bytes inserted in the middle: content-defined
//! chunking should store only the chunks around the edit). `manyfiles` is small files only, where
//! per-file costs (open, stat, tree entries) dominate.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::gen::{Rng, Text};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Mixed,
    Manyfiles,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    pub small: u64,
    pub big_random: u64,
    pub big_text: u64,
    pub duplicates: u64,
    pub near_duplicates: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files in {} dirs, {} bytes ({:.1} MiB): {} small text, {} large random, \
             {} large text, {} exact duplicates, {} near-duplicates",
            self.files,
            self.dirs,
            self.bytes,
            self.bytes as f64 / (1u64 << 20) as f64,
            self.small,
            self.big_random,
            self.big_text,
            self.duplicates,
            self.near_duplicates
        )
    }
}

const BLOCK: usize = 1 << 20;

/// Writes a corpus of about `size` bytes into `out`, which must be missing or empty.
pub fn generate(kind: Kind, size: u64, out: &Path, seed: u64) -> Result<Summary> {
    if out.exists()
        && fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?.next().is_some()
    {
        bail!("{} is not empty: a corpus is only reproducible in an empty directory", out.display());
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = Writer { root: out.to_path_buf(), sum: Summary::default(), written: Vec::new() };
    match kind {
        Kind::Mixed => mixed(&mut w, size, seed)?,
        Kind::Manyfiles => manyfiles(&mut w, size, seed)?,
    }
    for e in walkdir::WalkDir::new(out).min_depth(1) {
        if e.with_context(|| format!("listing {}", out.display()))?.file_type().is_dir() {
            w.sum.dirs += 1;
        }
    }
    Ok(w.sum)
}

struct Writer {
    root: PathBuf,
    sum: Summary,
    /// Every file written so far (relative path, size), for picking duplicates.
    written: Vec<(PathBuf, u64)>,
}

enum Content<'a> {
    Random(&'a mut Rng),
    Text(&'a mut Text),
}

impl Writer {
    fn create(&self, rel: &Path) -> Result<BufWriter<File>> {
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BufWriter::with_capacity(BLOCK, f))
    }

    fn file(&mut self, rel: PathBuf, len: u64, mut content: Content<'_>) -> Result<()> {
        let mut f = self.create(&rel)?;
        let mut buf = Vec::with_capacity(BLOCK);
        let mut left = len;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            buf.clear();
            match &mut content {
                Content::Random(r) => {
                    buf.resize(n, 0);
                    r.fill(&mut buf);
                }
                Content::Text(t) => t.fill(&mut buf, n),
            }
            f.write_all(&buf).with_context(|| format!("writing {}", rel.display()))?;
            left -= n as u64;
        }
        f.flush().with_context(|| format!("writing {}", rel.display()))?;
        self.done(rel, len);
        Ok(())
    }

    /// Copies `src` to `rel`, inserting `insert` at the middle (nothing: an exact duplicate).
    fn copy(&mut self, src: &Path, len: u64, rel: PathBuf, insert: &[u8]) -> Result<()> {
        let from = self.root.join(src);
        let mut r = BufReader::with_capacity(
            BLOCK,
            File::open(&from).with_context(|| format!("opening {}", from.display()))?,
        );
        let mut f = self.create(&rel)?;
        let half = len / 2;
        let copied = std::io::copy(&mut (&mut r).take(half), &mut f)
            .with_context(|| format!("copying {}", from.display()))?;
        f.write_all(insert)?;
        let rest = std::io::copy(&mut r, &mut f).with_context(|| format!("copying {}", from.display()))?;
        f.flush().with_context(|| format!("writing {}", rel.display()))?;
        if copied + rest != len {
            bail!("{} changed while being copied", from.display());
        }
        self.done(rel, len + insert.len() as u64);
        Ok(())
    }

    fn done(&mut self, rel: PathBuf, len: u64) {
        self.sum.files += 1;
        self.sum.bytes += len;
        self.written.push((rel, len));
    }
}

fn mixed(w: &mut Writer, size: u64, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let small_budget = size / 4;
    let random_budget = size * 3 / 10;
    let text_budget = size * 3 / 10;
    let dup_budget = size * 3 / 40;
    let near_budget = size - small_budget - random_budget - text_budget - dup_budget;
    // A 300 MiB corpus gets ~30 MiB large files, a 4 GiB one ~400 MiB (capped at 512 MiB).
    let big = (size / 10).clamp(64 << 10, 512 << 20);

    let mut used = 0;
    let mut i = 0u64;
    while used < small_budget {
        let len = rng.log_range(512, 64 << 10).min(small_budget - used).max(1);
        let mut dir = PathBuf::from("text");
        for level in 0..rng.range(1, 4) {
            dir.push(format!("{}{}", ["a", "b", "c"][level as usize], rng.below(6)));
        }
        let mut t = Text::new(rng.next_u64());
        w.file(dir.join(format!("f{i:06}.txt")), len, Content::Text(&mut t))?;
        w.sum.small += 1;
        used += len;
        i += 1;
    }
    for (budget, random) in [(random_budget, true), (text_budget, false)] {
        let mut used = 0;
        let mut i = 0u64;
        while used < budget {
            let len = rng.range(big / 2, big * 3 / 2).min(budget - used).max(1);
            let mut r = rng.fork();
            let mut t = Text::new(rng.next_u64());
            if random {
                w.file(PathBuf::from(format!("large/random-{i:03}.bin")), len, Content::Random(&mut r))?;
                w.sum.big_random += 1;
            } else {
                w.file(PathBuf::from(format!("large/text-{i:03}.log")), len, Content::Text(&mut t))?;
                w.sum.big_text += 1;
            }
            used += len;
            i += 1;
        }
    }
    for (budget, near) in [(dup_budget, false), (near_budget, true)] {
        let mut used = 0;
        let mut i = 0u64;
        // Give up after a run of picks that do not fit, rather than overshoot the size.
        let mut misses = 0;
        while used < budget && misses < 64 {
            let (src, len) = w.written[rng.below(w.written.len() as u64) as usize].clone();
            if len > budget - used || (near && len < 2) {
                misses += 1;
                continue;
            }
            misses = 0;
            let mut insert = vec![0u8; if near { rng.range(1, 17) as usize } else { 0 }];
            rng.fill(&mut insert);
            let dir = if near { "near" } else { "dup" };
            let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            w.copy(&src, len, PathBuf::from(format!("{dir}/{i:04}-{name}")), &insert)?;
            if near {
                w.sum.near_duplicates += 1;
            } else {
                w.sum.duplicates += 1;
            }
            used += len;
            i += 1;
        }
    }
    Ok(())
}

/// Files per directory in `manyfiles`: large enough that directory reads matter, small enough
/// that no filesystem slows down on it.
const PER_DIR: u64 = 1000;

fn manyfiles(w: &mut Writer, size: u64, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let mut t = Text::new(rng.next_u64());
    let mut used = 0;
    let mut i = 0u64;
    while used < size {
        let len = rng.range(100, 4097).min(size - used).max(1);
        let rel = PathBuf::from(format!("d{:04}/f{:04}.txt", i / PER_DIR, i % PER_DIR));
        w.file(rel, len, Content::Text(&mut t))?;
        w.sum.small += 1;
        used += len;
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::compare_trees;

    #[test]
    fn same_seed_same_tree() {
        let (a, b, c) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for kind in [Kind::Mixed, Kind::Manyfiles] {
            let (pa, pb, pc) = (a.path().join("x"), b.path().join("x"), c.path().join("x"));
            let sa = generate(kind, 3 << 20, &pa, 42).unwrap();
            let sb = generate(kind, 3 << 20, &pb, 42).unwrap();
            assert_eq!(sa, sb);
            compare_trees(&pa, &pb).unwrap();
            generate(kind, 3 << 20, &pc, 43).unwrap();
            assert!(compare_trees(&pa, &pc).is_err(), "another seed gives another tree");
            assert!(sa.bytes > (3 << 20) * 9 / 10 && sa.bytes <= (3 << 20) + 4096, "{sa}");
            fs::remove_dir_all(&pa).unwrap();
            fs::remove_dir_all(&pb).unwrap();
            fs::remove_dir_all(&pc).unwrap();
        }
    }

    #[test]
    fn mixed_has_every_shape() {
        let d = tempfile::tempdir().unwrap();
        let s = generate(Kind::Mixed, 4 << 20, &d.path().join("c"), 1).unwrap();
        assert!(s.small > 10 && s.big_random > 0 && s.big_text > 0, "{s}");
        assert!(s.duplicates > 0 && s.near_duplicates > 0, "{s}");
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("x"), b"x").unwrap();
        assert!(generate(Kind::Manyfiles, 1000, d.path(), 1).is_err());
    }
}
