//! The tools that `compare` runs, and the exact commands it gives each: init, backup, restore.
//!
//! Every tool gets a private directory (repository, HOME, XDG cache/config/data, temp files, key)
//! and a cleared environment: no config file, cache, `RESTIC_*`/`BORG_*` variable or earlier
//! run of the machine leaks into a measurement, and a rerun starts from the same state.
//! The settings each tool runs with, and why, are in the fairness notes atop `compare.rs`.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result};

/// The passphrase for the tools that derive their key from one (restic, rustic, borg). Not a
/// secret: the repositories are throwaway.
pub const PASSPHRASE: &str = "bakare-bench-throwaway-passphrase";

/// borg's compression here (its default is lz4); see the fairness notes in `compare.rs`.
pub const BORG_COMPRESSION: &str = "zstd,3";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Kind {
    Bakare,
    Bupstash,
    Restic,
    Rustic,
    Borg,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Bakare, Kind::Bupstash, Kind::Restic, Kind::Rustic, Kind::Borg];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Bakare => "bakare",
            Kind::Bupstash => "bupstash",
            Kind::Restic => "restic",
            Kind::Rustic => "rustic",
            Kind::Borg => "borg",
        }
    }

    /// How a missing tool gets installed, for the note printed when it is skipped.
    pub fn install_hint(self) -> &'static str {
        match self {
            Kind::Bakare => "cargo build --release -p bakare",
            _ => "bench/install-peers.sh",
        }
    }
}

/// The first executable file called `program` in `$PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

#[derive(Debug)]
pub struct Tool {
    pub kind: Kind,
    pub bin: PathBuf,
    /// First line of the tool's own version output.
    pub version: String,
    /// Private directory: everything the tool writes goes below it.
    dir: PathBuf,
}

impl Tool {
    /// Sets up `dir` (created, must be private to this tool) for the binary `bin`.
    pub fn new(kind: Kind, bin: PathBuf, dir: PathBuf) -> Result<Tool> {
        for sub in ["home", "cache", "config", "data", "tmp", "restore"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let mut t = Tool { kind, bin, version: String::new(), dir };
        t.version = t.query_version();
        Ok(t)
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The repository directory (created by the tool's own init).
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }

    /// The directory a restore writes into (created empty; bupstash and borg need it to exist).
    pub fn restore_target(&self) -> PathBuf {
        self.dir.join("restore")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("bupstash.key")
    }

    fn query_version(&self) -> String {
        let arg = if self.kind == Kind::Restic { "version" } else { "--version" };
        let out = self.cmd([arg]).output();
        out.ok()
            .map(|o| {
                let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
                String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "?".into())
    }

    /// The tool with a cleared environment pointing at its private directory, its repository
    /// and its key or passphrase.
    fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let d = &self.dir;
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            // borg (Python) wants a UTF-8 locale for file names.
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", d.join("home"))
            .env("XDG_CACHE_HOME", d.join("cache"))
            .env("XDG_CONFIG_HOME", d.join("config"))
            .env("XDG_DATA_HOME", d.join("data"))
            .env("TMPDIR", d.join("tmp"));
        let repo = self.repo();
        match self.kind {
            Kind::Bakare => {
                c.env("BAKARE_REPO", &repo);
            }
            Kind::Bupstash => {
                c.env("BUPSTASH_REPOSITORY", &repo).env("BUPSTASH_KEY", self.key());
            }
            Kind::Restic => {
                c.env("RESTIC_REPOSITORY", &repo)
                    .env("RESTIC_PASSWORD", PASSPHRASE)
                    .env("RESTIC_CACHE_DIR", d.join("cache").join("restic"));
            }
            Kind::Rustic => {
                c.env("RUSTIC_REPOSITORY", &repo)
                    .env("RUSTIC_PASSWORD", PASSPHRASE)
                    .env("RUSTIC_CACHE_DIR", d.join("cache").join("rustic"));
            }
            Kind::Borg => {
                c.env("BORG_REPO", &repo)
                    .env("BORG_PASSPHRASE", PASSPHRASE)
                    .env("BORG_BASE_DIR", d.join("home"))
                    .env("BORG_CACHE_DIR", d.join("cache").join("borg"))
                    .env("BORG_CONFIG_DIR", d.join("config").join("borg"))
                    .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
                    .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
            }
        }
        c.args(args);
        c
    }

    /// The commands that create an encrypted repository (bupstash: a key file, then the repository).
    pub fn init(&self) -> Vec<Command> {
        match self.kind {
            Kind::Bakare => vec![self.cmd(["init"])],
            Kind::Bupstash => {
                vec![
                    self.cmd(["new-key".as_ref(), "-o".as_ref(), self.key().as_os_str()]),
                    self.cmd(["init"]),
                ]
            }
            // Format version 2 is the one with compression; named so an older default cannot apply.
            Kind::Restic => vec![self.cmd(["init", "--repository-version", "2"])],
            Kind::Rustic => vec![self.cmd(["init"])],
            Kind::Borg => vec![self.cmd(["init", "--encryption=repokey-blake2"])],
        }
    }

    /// Backup number `run` (1, 2, ...) of `src` (an absolute path without `=`, which bupstash
    /// would take for a tag). restic and rustic find the previous snapshot of the same host and
    /// path themselves; bakare, borg and bupstash keep a files cache (bupstash: a send log) in
    /// the private cache directory.
    pub fn backup(&self, src: &Path, run: u32) -> Command {
        let src = src.as_os_str();
        match self.kind {
            Kind::Bakare => self.cmd(["run".as_ref(), src]),
            // A tag per run, so the restore can name the last one (bupstash takes `-` in a tag
            // name for part of a path). The send log (what lets a
            // re-run skip unchanged files) is named, as bupstash asks for one per repeated job.
            Kind::Bupstash => self.cmd([
                "put".as_ref(),
                "--send-log".as_ref(),
                self.dir.join("cache").join("bupstash.sendlog").as_os_str(),
                format!("bench_run={run}").as_ref(),
                src,
            ]),
            Kind::Restic => self.cmd(["backup".as_ref(), "--host".as_ref(), "bench".as_ref(), src]),
            Kind::Rustic => self.cmd(["backup".as_ref(), "--host".as_ref(), "bench".as_ref(), src]),
            Kind::Borg => self.cmd([
                "create".as_ref(),
                "--compression".as_ref(),
                BORG_COMPRESSION.as_ref(),
                format!("::run-{run}").as_ref(),
                src,
            ]),
        }
    }

    /// A full restore of backup number `run` (the latest) into `restore_target()`.
    pub fn restore(&self, run: u32) -> Command {
        let target = self.restore_target();
        let t = target.as_os_str();
        match self.kind {
            Kind::Bakare => self.cmd(["restore".as_ref(), "latest".as_ref(), "--target".as_ref(), t]),
            Kind::Bupstash => {
                self.cmd(["restore".as_ref(), "--into".as_ref(), t, format!("bench_run={run}").as_ref()])
            }
            Kind::Restic => self.cmd(["restore".as_ref(), "latest".as_ref(), "--target".as_ref(), t]),
            Kind::Rustic => self.cmd(["restore".as_ref(), "latest".as_ref(), t]),
            // borg extracts into the working directory.
            Kind::Borg => {
                let mut c = self.cmd(["extract", &format!("::run-{run}")]);
                c.current_dir(&target);
                c
            }
        }
    }

    /// Where the backed-up `src` lands in the restore: below its absolute path for the tools that
    /// record it (bakare, restic, rustic, borg), at the top for bupstash, which stores the
    /// directory's contents.
    pub fn restored_root(&self, src: &Path) -> PathBuf {
        let target = self.restore_target();
        match self.kind {
            Kind::Bupstash => target,
            _ => target.join(src.strip_prefix("/").unwrap_or(src)),
        }
    }

    /// Whether an exit status counts as success: borg exits 1 for warnings (a file that changed
    /// while read, say) after completing the archive; bakare exits 3 when some files were skipped,
    /// which the restore check then catches.
    pub fn succeeded(&self, status: ExitStatus) -> bool {
        matches!((self.kind, status.code()), (_, Some(0)) | (Kind::Borg, Some(1)) | (Kind::Bakare, Some(3)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-program-bakare-bench").is_none());
    }

    #[test]
    fn every_tool_is_isolated() {
        let d = tempfile::tempdir().unwrap();
        for kind in Kind::ALL {
            let t = Tool::new(kind, PathBuf::from("/bin/true"), d.path().join(kind.name())).unwrap();
            let c = t.backup(Path::new("/data/src"), 2);
            let envs: Vec<_> = c.get_envs().map(|(k, _)| k.to_string_lossy().into_owned()).collect();
            for v in ["HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TMPDIR"] {
                assert!(envs.iter().any(|e| e == v), "{kind:?} lacks {v}");
            }
            assert!(c.get_args().any(|a| a == "/data/src"), "{kind:?} backs up the source");
            let root = t.restored_root(Path::new("/data/src"));
            assert!(root.starts_with(t.restore_target()));
            assert_eq!(root.ends_with("data/src"), kind != Kind::Bupstash);
        }
    }
}
