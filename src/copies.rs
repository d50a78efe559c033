//! `run` with several `--repo`: one backup kept in each of several repositories (friends'
//! servers, a NAS, a disk), which are copies of one repository: the same id, key and objects.
//!
//! The backup goes into the first repository that takes it; each other one then gets what it
//! lacks from that one (`engine::sync`: keyless, every object checked against its name, only
//! additions), so a repository that was down, or not created yet, catches up at the next run.
//! Copies go one way only: a friend's server is not trusted to write into the publisher's
//! other repositories (it could send a config of its own, objects nobody references, or
//! snapshots forgotten since). So a snapshot that went into a later repository because the
//! earlier ones failed stays there. A copy counts once its snapshot reads back with the right
//! hash; one that cannot be reached is named in a warning; the run fails when fewer than
//! `--min-copies` hold the snapshot at its end.
use std::sync::Arc;

use anyhow::{bail, Result};
use engine::repo::Location;
use serde_json::json;

use crate::commands::{execute, open_for_run, prepare};
use crate::{output, RunArgs};

/// Objects copied at once to or from each other repository.
const JOBS: usize = 4;

/// How long a server has to accept a connection before it counts as down.
const PROBE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the server holding `at` accepts connections, said in a few seconds: a friend's
/// machine that is off is the common case, and the S3 client would retry it for a minute.
pub(crate) fn reachable(at: &Location) -> Result<(), String> {
    let host_port = match at {
        Location::Local(_) => return Ok(()),
        Location::Serve(url) => io::ServedUrl::parse(url)?.host_port,
        Location::S3(url) => {
            let u = io::S3Url::parse(url)?;
            let rest = u.endpoint.split_once("://").map_or(u.endpoint.as_str(), |(_, r)| r);
            if rest.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !rest.ends_with(']') {
                rest.to_string()
            } else if u.endpoint.starts_with("https") {
                format!("{rest}:443")
            } else {
                format!("{rest}:80")
            }
        }
    };
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = host_port.to_socket_addrs().map_err(|e| format!("{host_port}: {e}"))?.collect();
    let mut last = format!("{host_port}: no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, PROBE) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{host_port}: {e}"),
        }
    }
    Err(last)
}

/// Backs up into the first of `all` (each with the name the user gave it) that takes the
/// backup, then copies between it and each other.
pub fn run(
    all: Vec<(String, Location)>,
    key: Option<&std::path::Path>,
    json: bool,
    args: RunArgs,
    source: Arc<dyn io::Source>,
) -> Result<u8> {
    for (i, (name, at)) in all.iter().enumerate() {
        if all[..i].iter().any(|(_, a)| a == at) {
            bail!("--repo {name} is given twice");
        }
    }
    let wanted = if args.min_copies == 0 { all.len() } else { args.min_copies };
    if wanted > all.len() {
        bail!("--min-copies {wanted}, but only {} repositories are given", all.len());
    }
    let dry_run = args.dry_run;
    // A stream, or a list of paths, read from standard input is read once: its backup is not
    // tried again elsewhere.
    let dash = |v: &[std::path::PathBuf]| v.iter().any(|p| p.as_os_str() == "-");
    let once = args.stdin
        || args.stdin_from_command
        || dash(&args.files_from)
        || dash(&args.files_from_verbatim)
        || dash(&args.files_from_raw);
    let mut done = None;
    let mut last_error = None;
    for (i, (name, at)) in all.iter().enumerate() {
        if let Err(e) = reachable(at) {
            eprintln!("warning: {name}: not reachable ({e}); trying the next --repo");
            continue;
        }
        let repo = match open_for_run(at, false, key, json, dry_run) {
            Ok(repo) => repo,
            Err(e) => {
                eprintln!("warning: {name}: cannot be opened ({e:#}); trying the next --repo");
                last_error = Some(e);
                continue;
            }
        };
        let mut a = args.clone();
        let prepared = prepare(&mut a)?;
        match execute(&repo, json, a, prepared, source.clone(), None, None) {
            Ok(ran) => {
                done = Some((i, ran));
                break;
            }
            Err(e) if !once => {
                eprintln!("warning: {name}: the backup into it failed ({e:#}); trying the next --repo");
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    let Some((p, ran)) = done else {
        let e = last_error.map(|e| format!(": the last error was {e:#}")).unwrap_or_default();
        bail!("the backup went into none of the {} repositories{e}", all.len());
    };
    if dry_run {
        return Ok(ran.code);
    }
    let from = crate::open_backend(&all[p].1)?;
    let mut held = vec![all[p].0.clone()];
    let mut report = Vec::new();
    for (i, (name, at)) in all.iter().enumerate() {
        if i == p {
            continue;
        }
        // One that did not open before the backup is tried again: it may be back, or have
        // lacked a repository, which the copy creates.
        let copied = (|| -> anyhow::Result<engine::sync::SyncReport> {
            // A server's copy (a friend's, append-only: it keeps what was forgotten and could
            // list objects of its own) is not copied into this machine's own storage.
            let served = |l: &Location| matches!(l, Location::Serve(_));
            if served(&all[p].1) && !served(at) {
                bail!("the backup went into {}, a server's copy, which is not copied into {name}", all[p].0);
            }
            reachable(at).map_err(|e| anyhow::anyhow!("not reachable: {e}"))?;
            let to = crate::open_backend(at)?;
            let out = engine::sync::sync(from.as_ref(), to.as_ref(), JOBS)?;
            // Held means read back: a server that says it has an object is not taken at its
            // word (sync skips what the destination lists).
            if !ran.snapshot.is_empty() {
                let key = engine::commit::committed_key(&ran.snapshot);
                let back = to.get(&key).map_err(|e| anyhow::anyhow!("reading {key} back: {e}"))?;
                if blake3::hash(&back).to_hex().as_str() != ran.snapshot {
                    bail!("{key} read back does not match its name");
                }
            }
            Ok(out)
        })();
        match copied {
            Ok(out) => {
                held.push(name.clone());
                let objects = out.packs.objects + out.segments.objects + out.snapshots.objects;
                let bytes = out.packs.bytes + out.segments.bytes + out.snapshots.bytes;
                if !json && !output::quiet() {
                    eprintln!("copied to {name}: {objects} objects ({})", output::size(bytes));
                }
                report.push(json!({ "repo": name, "ok": true, "objects": objects, "bytes": bytes }));
            }
            Err(e) => {
                eprintln!("warning: {name}: the snapshot was not copied there ({e:#}); it catches up at a later run");
                report.push(json!({ "repo": name, "ok": false, "error": format!("{e:#}") }));
            }
        }
    }
    if json {
        println!("{}", json!({ "copies": report, "held_by": held, "min_copies": wanted }));
    }
    if held.len() < wanted {
        bail!(
            "the snapshot is in {} of {} repositories ({}), fewer than --min-copies {wanted}",
            held.len(),
            all.len(),
            held.join(", ")
        );
    }
    Ok(ran.code)
}
