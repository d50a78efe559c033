//! Deterministic edits to a corpus, to measure an incremental backup: about `percent` % of the
//! files change (bytes appended, bytes inserted in the middle, a region rewritten in place, the
//! file deleted) and a few new files appear. Same tree and seed, same edits.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::gen::{Rng, Text};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub files_before: u64,
    pub appended: u64,
    pub inserted: u64,
    pub rewritten: u64,
    pub deleted: u64,
    pub added: u64,
    /// Bytes written by the edits (not the bytes of the files they touched).
    pub bytes: u64,
}

impl Summary {
    /// Files changed, deleted or added.
    pub fn touched(&self) -> u64 {
        self.appended + self.inserted + self.rewritten + self.deleted + self.added
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} files touched: {} appended, {} inserted into, {} rewritten in place, \
             {} deleted, {} added ({} bytes written)",
            self.touched(),
            self.files_before,
            self.appended,
            self.inserted,
            self.rewritten,
            self.deleted,
            self.added,
            self.bytes
        )
    }
}

/// Regular files below `dir`, relative and sorted, so the same tree gives the same list.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        if e.file_type().is_file() {
            out.push(
                e.path()
                    .strip_prefix(dir)
                    .with_context(|| format!("listing {}", dir.display()))?
                    .to_path_buf(),
            );
        }
    }
    Ok(out)
}

pub fn mutate(dir: &Path, percent: f64, seed: u64) -> Result<Summary> {
    let files = list_files(dir)?;
    let mut rng = Rng::new(seed);
    let n = files.len() as u64;
    let mut sum = Summary { files_before: n, ..Summary::default() };
    let k =
        if percent > 0.0 && n > 0 { ((n as f64 * percent / 100.0).round() as u64).clamp(1, n) } else { 0 };
    // One touched file in ten is a new one, so the total stays about `percent` % of the tree.
    let added = k / 10;
    let mut pick: Vec<usize> = (0..files.len()).collect();
    for i in 0..(k - added) as usize {
        let j = i + rng.below((pick.len() - i) as u64) as usize;
        pick.swap(i, j);
    }
    for &i in &pick[..(k - added) as usize] {
        let path = dir.join(&files[i]);
        let mut r = rng.fork();
        let what = r.below(100);
        let wrote = match what {
            0..=39 => append(&path, &mut r).map(|b| (b, &mut sum.appended)),
            40..=69 => insert(&path, &mut r).map(|b| (b, &mut sum.inserted)),
            70..=89 => rewrite(&path, &mut r).map(|b| (b, &mut sum.rewritten)),
            _ => fs::remove_file(&path).map_err(Into::into).map(|()| (0, &mut sum.deleted)),
        }
        .with_context(|| format!("changing {}", path.display()))?;
        *wrote.1 += 1;
        sum.bytes += wrote.0;
    }
    for i in 0..added {
        // Next to an existing file, so new files land in directories that already exist.
        let near = &files[rng.below(n) as usize];
        let parent = near.parent().unwrap_or(Path::new(""));
        let path = dir.join(parent).join(format!("new-{seed:x}-{i:04}.txt"));
        let len = rng.log_range(100, 64 << 10) as usize;
        fs::write(&path, crate::gen::text(rng.next_u64(), len))
            .with_context(|| format!("writing {}", path.display()))?;
        sum.added += 1;
        sum.bytes += len as u64;
    }
    Ok(sum)
}

/// Random bytes for binary files, text for the rest, so edits keep a file's compressibility.
fn bytes_for(path: &Path, rng: &mut Rng, len: usize) -> Vec<u8> {
    if path.extension().is_some_and(|e| e == "bin") {
        crate::gen::random_bytes(rng.next_u64(), len)
    } else {
        let mut v = Vec::with_capacity(len);
        Text::new(rng.next_u64()).fill(&mut v, len);
        v
    }
}

fn append(path: &Path, rng: &mut Rng) -> Result<u64> {
    let n = rng.range(1, 4097) as usize;
    let extra = bytes_for(path, rng, n);
    OpenOptions::new().append(true).open(path)?.write_all(&extra)?;
    Ok(extra.len() as u64)
}

/// Inserts a few bytes at a random offset: every later byte moves, which is what content-defined
/// chunking is for. Streams through a temporary file, so large files need no memory.
fn insert(path: &Path, rng: &mut Rng) -> Result<u64> {
    let len = fs::metadata(path)?.len();
    let at = rng.below(len + 1);
    let n = rng.range(1, 65) as usize;
    let extra = bytes_for(path, rng, n);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".mutate-tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        std::io::copy(&mut (&mut r).take(at), &mut w)?;
        w.write_all(&extra)?;
        std::io::copy(&mut r, &mut w)?;
        w.flush()?;
    }
    fs::rename(&tmp, path)?;
    Ok(extra.len() as u64)
}

/// Overwrites a region in place (same size: an edit that moves nothing).
fn rewrite(path: &Path, rng: &mut Rng) -> Result<u64> {
    let len = fs::metadata(path)?.len();
    let n = rng.range(1 << 10, 64 << 10).min(len.max(1));
    let at = rng.below(len.saturating_sub(n) + 1);
    let new = bytes_for(path, rng, n as usize);
    OpenOptions::new().write(true).open(path)?.write_all_at(&new, at)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::corpus::{generate, Kind};

    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        list_files(dir).unwrap().into_iter().map(|p| (p.clone(), fs::read(dir.join(p)).unwrap())).collect()
    }

    #[test]
    fn changes_about_the_requested_fraction() {
        let d = tempfile::tempdir().unwrap();
        let c = d.path().join("c");
        generate(Kind::Manyfiles, 4 << 20, &c, 3).unwrap();
        let before = snapshot(&c);
        let sum = mutate(&c, 5.0, 9).unwrap();
        let after = snapshot(&c);
        let changed = before.iter().filter(|(p, b)| after.get(*p) != Some(*b)).count();
        let added = after.keys().filter(|p| !before.contains_key(*p)).count();
        let want = before.len() as f64 * 0.05;
        let got = (changed + added) as f64;
        assert!((want * 0.8..=want * 1.2).contains(&got), "wanted ~{want}, {got} changed: {sum}");
        assert_eq!(sum.touched() as usize, changed + added, "{sum}");
        assert!(
            sum.appended > 0 && sum.inserted > 0 && sum.rewritten > 0 && sum.deleted > 0 && sum.added > 0,
            "{sum}"
        );
        assert!(!list_files(&c).unwrap().iter().any(|p| p.to_string_lossy().ends_with(".mutate-tmp")));
    }

    #[test]
    fn same_seed_same_edits() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        generate(Kind::Mixed, 2 << 20, &a, 5).unwrap();
        generate(Kind::Mixed, 2 << 20, &b, 5).unwrap();
        assert_eq!(mutate(&a, 10.0, 1).unwrap(), mutate(&b, 10.0, 1).unwrap());
        crate::measure::compare_trees(&a, &b).unwrap();
    }
}
