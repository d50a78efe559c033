//! `check` and `repair`: finding damage, and keeping what is intact restorable.
use anyhow::Result;
use engine::check::{self, CheckOptions, CheckReport, Subset};
use engine::repair::{self, SnapshotRepairOptions};
use engine::Repository;
use serde_json::json;

use crate::output::{self, Out};
use crate::{CheckArgs, RepairCommand, EXIT_PARTIAL};

fn workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

fn read_data_choice(read_data: bool, subset: Option<Subset>) -> Option<Subset> {
    subset.or(read_data.then_some(Subset::All))
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn short(object: &str) -> &str {
    object.rsplit('/').next().map(|s| &s[..s.len().min(16)]).unwrap_or(object)
}

fn report_json(r: &CheckReport) -> serde_json::Value {
    json!({
        "ok": r.is_clean(),
        "snapshots": r.snapshots, "trees": r.trees, "packs": r.packs,
        "packs_read": r.packs_read, "bytes_read": r.bytes_read, "blobs_verified": r.blobs_verified,
        "snapshots_checked": r.snapshots_checked,
        "damage": r.damage.iter().map(|d| json!({"object": d.object, "why": d.why})).collect::<Vec<_>>(),
        "affected": r.affected.iter().map(|a| json!({
            "snapshot": a.snapshot, "path": lossy(&a.path), "why": a.why
        })).collect::<Vec<_>>(),
        "notes": r.notes,
        "corrected": r.corrected.iter().map(|(pack, blocks)| json!({"pack": pack, "blocks": blocks}))
            .collect::<Vec<_>>(),
    })
}

fn print_report(out: &mut Out, r: &CheckReport) -> std::io::Result<()> {
    let mut summary = format!("checked {} snapshots, {} trees, {} packs", r.snapshots, r.trees, r.packs);
    if r.packs_read > 0 {
        summary.push_str(&format!(
            "; read {} packs ({}), {} blobs verified",
            r.packs_read,
            output::size(r.bytes_read),
            r.blobs_verified
        ));
    }
    out.line(&summary)?;
    for n in &r.notes {
        out.line(&format!("note: {n}"))?;
    }
    for (pack, blocks) in &r.corrected {
        out.line(&format!("corrected: {}", crate::commands::corrected_line(pack, *blocks)))?;
    }
    if !r.damage.is_empty() {
        out.line(&format!("{} damaged objects:", r.damage.len()))?;
        for d in &r.damage {
            out.line(&format!("  {}: {}", d.object, d.why))?;
        }
    }
    if !r.affected.is_empty() {
        out.line(&format!("{} files or directories cannot be fully restored:", r.affected.len()))?;
        for a in &r.affected {
            out.bytes(format!("  snapshot {}: ", short(&a.snapshot)).as_bytes())?;
            out.bytes(&a.path)?;
            out.line(&format!(": {}", a.why))?;
        }
        out.line("`bakare repair snapshots` writes copies of the damaged snapshots without these")?;
    }
    if r.is_clean() {
        out.line("no damage found")?;
    }
    Ok(())
}

pub fn check_cmd(repo: &Repository, json: bool, args: CheckArgs) -> Result<u8> {
    let opts = CheckOptions {
        read_data: read_data_choice(args.read_data, args.read_data_subset),
        writer: args.writer,
        workers: workers(),
        lost: Default::default(),
    };
    let r = check::check(repo, &opts)?;
    let mut out = Out::new();
    if json {
        out.line(&report_json(&r).to_string())?;
    } else {
        print_report(&mut out, &r)?;
    }
    out.finish()?;
    Ok(if r.is_clean() { 0 } else { EXIT_PARTIAL })
}

pub fn repair_cmd(repo: &Repository, json: bool, cmd: RepairCommand) -> Result<u8> {
    let mut out = Out::summary(json);
    match cmd {
        RepairCommand::Index { read_data } => {
            let r = repair::repair_index(repo, read_data, workers())?;
            if crate::output::quiet() && !json {
                for p in &r.problems {
                    eprintln!("warning: {p}");
                }
            }
            if json {
                let v = json!({
                    "packs": r.packs, "blobs": r.blobs, "segments_written": r.segments_written,
                    "segments_removed": r.segments_removed, "dropped_blobs": r.dropped_blobs,
                    "problems": r.problems,
                });
                out.line(&v.to_string())?;
            } else {
                for p in &r.problems {
                    out.line(&format!("warning: {p}"))?;
                }
                out.line(&format!(
                    "index rebuilt from {} packs ({} blobs): {} segments written, {} old segments removed",
                    r.packs, r.blobs, r.segments_written, r.segments_removed
                ))?;
            }
            out.finish()?;
            Ok(0)
        }
        RepairCommand::Snapshots { snapshots, forget, dry_run, no_read_data } => {
            let opts = SnapshotRepairOptions {
                snapshots,
                forget,
                dry_run,
                read_data: (!no_read_data).then_some(Subset::All),
                workers: workers(),
            };
            let r = repair::repair_snapshots(repo, &opts)?;
            if crate::output::quiet() && !json {
                for (s, why) in &r.unrepairable {
                    eprintln!("error: snapshot {} cannot be repaired: {why}", short(s));
                }
            }
            if json {
                let v = json!({
                    "dry_run": dry_run,
                    "repaired": r.repaired.iter().map(|s| json!({
                        "old": s.old, "new": s.new,
                        "dropped": s.dropped.iter().map(|(p, why)| json!({"path": lossy(p), "why": why})).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "unrepairable": r.unrepairable.iter().map(|(s, why)| json!({"snapshot": s, "why": why})).collect::<Vec<_>>(),
                    "forgotten": r.forgotten,
                    "check": report_json(&r.check),
                });
                out.line(&v.to_string())?;
            } else {
                for s in &r.repaired {
                    let what = match (&s.new, dry_run) {
                        (Some(n), _) => format!("snapshot {} repaired as {}", short(&s.old), &n[..16]),
                        _ => format!("snapshot {} would be repaired", short(&s.old)),
                    };
                    out.line(&format!("{what}, leaving out {}:", s.dropped.len()))?;
                    for (p, why) in &s.dropped {
                        out.bytes(b"  ")?;
                        out.bytes(p)?;
                        out.line(&format!(": {why}"))?;
                    }
                }
                for (s, why) in &r.unrepairable {
                    out.line(&format!("snapshot {} cannot be repaired: {why}", short(s)))?;
                }
                for s in &r.forgotten {
                    out.line(&format!("removed the damaged snapshot {}", short(s)))?;
                }
                if r.repaired.is_empty() && r.unrepairable.is_empty() {
                    out.line("no damaged snapshots")?;
                }
            }
            out.finish()?;
            Ok(if r.unrepairable.is_empty() { 0 } else { EXIT_PARTIAL })
        }
    }
}

pub fn migrate_cmd(
    at: &engine::repo::Location,
    key: Option<&std::path::Path>,
    json: bool,
    args: crate::MigrateArgs,
) -> Result<u8> {
    let repo = engine::Repository::open_with(at.clone(), key, true).map(crate::wrapped)?;
    let r = engine::ops::migrate::migrate(&repo, args.dry_run)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let mut out = Out::summary(json);
    let would = if args.dry_run { "would " } else { "" };
    if json {
        let adopted: Vec<_> = r
            .adopted
            .iter()
            .map(|(old, new, s)| {
                json!({"old": old, "new": new, "time": output::time(s.time_ns), "host": s.host})
            })
            .collect();
        let config = r.config.as_ref().map(|c| {
            json!({"chunk_min": c.chunk_min, "chunk_avg": c.chunk_avg, "chunk_max": c.chunk_max,
                   "pack_size": c.pack_size, "grace_seconds": c.grace_secs})
        });
        let v = json!({
            "dry_run": args.dry_run, "config_from": r.config_from, "config_to": engine::config::VERSION,
            "config": config, "records_removed": r.records_removed, "adopted": adopted, "left_unsigned": r.left,
            "segments_signed": r.segments_signed, "segments_sealed": r.segments_sealed,
            "roster_written": r.roster_written,
            "segments_left_unsigned": r.segments_left_unsigned,
        });
        out.line(&v.to_string())?;
    } else {
        if r.config_from == engine::config::VERSION {
            out.line("config: signed already")?;
        } else {
            out.line(&format!(
                "config: {would}sign it (format {} to {})",
                r.config_from,
                engine::config::VERSION
            ))?;
        }
        for rec in &r.records_removed {
            out.line(&format!("{would}remove {rec}"))?;
        }
        if r.segments_signed > 0 {
            out.line(&format!(
                "{would}sign {} unsigned index segments as the owner's (backups deduplicate against \
                 their packs again; `bakare repair index --read-data` instead vouches only for what it reads)",
                r.segments_signed
            ))?;
        }
        if r.segments_sealed > 0 {
            out.line(&format!(
                "{would}seal where the blobs are in {} index segments to the owner (backup-only keys \
                 read only their ids)",
                r.segments_sealed
            ))?;
        }
        if r.roster_written > 0 {
            out.line(&format!("{would}write {} roster entries for registered writers", r.roster_written))?;
        }
        for (old, new, s) in &r.adopted {
            let to =
                if new.is_empty() { String::new() } else { format!(" -> {}", new.get(..16).unwrap_or(new)) };
            out.line(&format!(
                "{would}adopt unsigned snapshot {}{to} ({}, {})",
                old.get(..16).unwrap_or(old),
                output::time(s.time_ns),
                s.host
            ))?;
        }
        out.line(&format!(
            "{} snapshots {would}adopted as the owner's. Backup-only keys exported before this \
             version cannot write here any more: export a new one per machine \
             (bakare key export --backup-only --name NAME FILE).",
            r.adopted.len()
        ))?;
    }
    out.finish()?;
    Ok(0)
}
