//! Relay: copies every repository the server stores to an upstream (an S3 bucket, another
//! server, a directory) with `engine::sync` — keyless, in the order that keeps the upstream a
//! valid repository at every moment, resuming wherever it stopped. A pass starts a moment after
//! clients add objects (so a backup's objects go in one pass), when the server starts (what a
//! stop or kill -9 left behind), once an hour (changes made on the server's disk directly), and
//! again after a failure, backing off from 2 s to 5 min for that repository alone. Its state is written to
//! `.serve/relay.json` after every pass, for `bakare serve --status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::{write_private, StateDir, STATE_DIR};
use crate::{Error, Result};

const STATUS: &str = "relay.json";
/// Quiet time after the last new object before a pass starts, and the longest wait.
const SETTLE: Duration = Duration::from_secs(2);
const SETTLE_MAX: Duration = Duration::from_secs(30);
const PERIODIC: Duration = Duration::from_secs(3600);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Objects clients added that the relay has not copied yet, per repository.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Backlog {
    pub objects: u64,
    pub bytes: u64,
    /// When the oldest of them was added (seconds since the epoch).
    pub oldest: Option<u64>,
}

/// What `--status` shows for one repository.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RepoStatus {
    pub backlog: Backlog,
    /// The end of the last pass that copied everything there was (seconds since the epoch).
    pub last_success: Option<u64>,
    /// The last pass's error, cleared by a pass that succeeds.
    pub last_error: Option<String>,
    /// Objects and bytes the last successful pass copied.
    pub last_copied_objects: u64,
    pub last_copied_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub upstream: String,
    pub repos: BTreeMap<String, RepoStatus>,
}

/// How long a repository's relay waits after `n` failures in a row: 2 s, doubling, at most
/// 5 min.
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.clamp(1, 9)).min(BACKOFF_MAX)
}

/// Reads the relay's last written status.
pub fn status(state: &StateDir) -> Result<Option<Status>> {
    let path = state.file(STATUS);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Invalid(format!("{}: not a relay status: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Default)]
struct Queue {
    backlog: BTreeMap<String, Backlog>,
    /// When the first and the last object not yet relayed came.
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Where the store reports the objects clients create.
#[derive(Default)]
pub(crate) struct Notes {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Notes {
    pub(crate) fn created(&self, repo: &str, bytes: u64) {
        if let Ok(mut q) = self.queue.lock() {
            let b = q.backlog.entry(repo.to_string()).or_default();
            b.objects += 1;
            b.bytes = b.bytes.saturating_add(bytes);
            b.oldest.get_or_insert_with(now);
            let t = Instant::now();
            q.first.get_or_insert(t);
            q.last = Some(t);
        }
        self.wake.notify_all();
    }
}

/// The upstream location of repository `repo`: below the upstream's path (a directory or an S3
/// prefix), or the bucket of that name on another server.
pub fn upstream_of(upstream: &str, repo: &str) -> String {
    let base = upstream.trim_end_matches('/');
    format!("{base}/{repo}")
}

/// The repositories under `storage`: directories holding a `config`.
fn repositories(storage: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(storage) else { return Vec::new() };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n != STATE_DIR && !n.starts_with('.') && storage.join(n).join("config").is_file())
        .collect();
    out.sort();
    out
}

pub(crate) struct Relay {
    pub(crate) storage: PathBuf,
    pub(crate) state: StateDir,
    pub(crate) upstream: String,
    pub(crate) workers: usize,
    pub(crate) notes: Arc<Notes>,
}

impl Relay {
    /// Runs passes for ever (on a thread of its own: `sync` blocks).
    pub(crate) fn run(self) {
        let mut status = status(&self.state).ok().flatten().unwrap_or_default();
        if status.upstream != self.upstream {
            status = Status { upstream: self.upstream.clone(), repos: BTreeMap::new() };
        }
        // Per repository: failures in a row, and when to try again (one that keeps failing
        // does not set the rhythm of the others).
        let mut failing: std::collections::HashMap<String, (u32, Instant)> = Default::default();
        let mut next_periodic = Instant::now();
        loop {
            // Everything at start and hourly; otherwise the repositories clients added to, and
            // failed ones when their backoff is over.
            let started = Instant::now();
            let everything = started >= next_periodic;
            let taken = self.take(&mut status);
            for repo in repositories(&self.storage) {
                let retry = failing.get(&repo).map(|(_, at)| *at <= started);
                if retry == Some(false) {
                    continue;
                }
                let due = everything || retry == Some(true);
                let Some(took) = taken.get(&repo).cloned().or_else(|| due.then(Backlog::default)) else {
                    continue;
                };
                let r = status.repos.entry(repo.clone()).or_default();
                match self.pass(&repo) {
                    Ok(report) => {
                        failing.remove(&repo);
                        r.last_success = Some(now());
                        r.last_error = None;
                        r.last_copied_objects = report.packs.objects
                            + report.segments.objects
                            + report.snapshots.objects
                            + report.writers.objects;
                        r.last_copied_bytes = report.packs.bytes
                            + report.segments.bytes
                            + report.snapshots.bytes
                            + report.writers.bytes;
                        r.backlog.objects = r.backlog.objects.saturating_sub(took.objects);
                        r.backlog.bytes = r.backlog.bytes.saturating_sub(took.bytes);
                        if r.backlog.objects == 0 {
                            r.backlog.oldest = None;
                        }
                    }
                    Err(e) => {
                        let n = failing.get(&repo).map_or(1, |(n, _)| n.saturating_add(1));
                        failing.insert(repo.clone(), (n, Instant::now() + backoff(n)));
                        eprintln!(
                            "bakare serve: relay of {repo} to {}: {e}",
                            upstream_of(&self.upstream, &repo)
                        );
                        r.last_error = Some(format!("{e}"));
                    }
                }
            }
            if let Err(e) = write_private(
                &self.state.file(STATUS),
                &serde_json::to_vec_pretty(&status).unwrap_or_default(),
            ) {
                eprintln!("bakare serve: writing the relay's status: {e}");
            }
            if everything {
                next_periodic = started + PERIODIC;
            }
            let wake = failing.values().map(|(_, at)| *at).fold(next_periodic, Instant::min);
            self.wait(wake.saturating_duration_since(Instant::now()));
        }
    }

    /// Moves what clients added into `status` and returns it per repository: the pass then
    /// copies at least that.
    fn take(&self, status: &mut Status) -> BTreeMap<String, Backlog> {
        let Ok(mut q) = self.notes.queue.lock() else { return BTreeMap::new() };
        let taken = std::mem::take(&mut q.backlog);
        q.first = None;
        q.last = None;
        for (repo, b) in &taken {
            let r = status.repos.entry(repo.clone()).or_default();
            r.backlog.objects += b.objects;
            r.backlog.bytes = r.backlog.bytes.saturating_add(b.bytes);
            r.backlog.oldest = match (r.backlog.oldest, b.oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        // What the status held before (a failed pass's) is taken again as well.
        status
            .repos
            .iter()
            .filter(|(_, r)| r.backlog.objects > 0)
            .map(|(k, r)| (k.clone(), r.backlog.clone()))
            .collect()
    }

    /// Sleeps until `timeout`, or until clients added objects and then were quiet for a moment.
    fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let Ok(mut q) = self.notes.queue.lock() else { return };
        loop {
            let t = Instant::now();
            if t >= deadline {
                return;
            }
            if let (Some(first), Some(last)) = (q.first, q.last) {
                if t >= last + SETTLE || t >= first + SETTLE_MAX {
                    return;
                }
                let until = (last + SETTLE).min(first + SETTLE_MAX).min(deadline);
                q = match self.notes.wake.wait_timeout(q, until - t) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
                continue;
            }
            q = match self.notes.wake.wait_timeout(q, deadline - t) {
                Ok((q, _)) => q,
                Err(_) => return,
            };
        }
    }

    fn pass(&self, repo: &str) -> engine::Result<engine::sync::SyncReport> {
        let from = io::LocalBackend::new(self.storage.join(repo));
        let to = engine::repo::Location::parse(std::ffi::OsStr::new(&upstream_of(&self.upstream, repo)))?
            .backend()?;
        engine::sync::sync(&from, to.as_ref(), self.workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_to_five_minutes() {
        let secs: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[test]
    fn upstream_names_one_place_per_repository() {
        assert_eq!(upstream_of("s3:https://h/b/relay/", "home"), "s3:https://h/b/relay/home");
        assert_eq!(upstream_of("/mnt/usb", "home"), "/mnt/usb/home");
        assert_eq!(upstream_of("serve:https://cloud:8443", "home"), "serve:https://cloud:8443/home");
    }

    #[test]
    fn what_clients_added_is_taken_into_the_status() {
        let d = tempfile::tempdir().unwrap();
        let up = tempfile::tempdir().unwrap();
        // Not a repository (no config): ignored.
        std::fs::create_dir_all(d.path().join("junk")).unwrap();
        let state = StateDir::new(d.path());
        state.create().unwrap();
        let notes = Arc::new(Notes::default());
        notes.created("home", 10);
        let relay = Relay {
            storage: d.path().to_path_buf(),
            state: state.clone(),
            upstream: up.path().to_str().unwrap().to_string(),
            workers: 1,
            notes,
        };
        let mut status = Status::default();
        let taken = relay.take(&mut status);
        assert_eq!(taken["home"].objects, 1);
        assert_eq!(status.repos["home"].backlog.bytes, 10);
        assert!(repositories(d.path()).is_empty());
    }
}
