//! `forget`, `prune` and `config`: retention, garbage collection, and the grace period.
use anyhow::{bail, Context, Result};
use engine::forget::{self, Policy};
use engine::prune::{self, PruneOptions};
use engine::Repository;
use serde_json::json;

use crate::output::{self, Out};
use crate::{ConfigArgs, ForgetArgs, PruneArgs};

fn seconds(ns: i64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub fn forget_cmd(repo: &Repository, json: bool, args: ForgetArgs) -> Result<u8> {
    let policy = Policy {
        last: args.keep_last,
        hourly: args.keep_hourly,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
        yearly: args.keep_yearly,
        within: args.keep_within,
        keep_tags: args.keep_tag.iter().map(|t| engine::ops::filter::tag_list(t)).collect(),
        group_by: args.group_by,
    };
    let filter = args.filter.filter()?;
    let (all, warnings) = repo.snapshots()?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let decisions = if !args.snapshots.is_empty() {
        if !policy.is_empty() {
            bail!("give either snapshot ids or a retention policy, not both");
        }
        if !filter.is_empty() {
            bail!("--host, --tag and --path choose what a policy applies to; snapshots named by id go whatever they hold");
        }
        let mut chosen = Vec::new();
        let mut unreadable = Vec::new();
        for spec in &args.snapshots {
            match repo.find_snapshot(spec) {
                Ok(e) => chosen.push(e.id),
                // An object in snapshots/ that does not decode (damaged, or planted: prune stops
                // on it) can be named by its whole id.
                Err(engine::Error::NoSnapshot(_))
                    if spec.len() == 64
                        && spec.bytes().all(|b| b.is_ascii_hexdigit())
                        && repo.backend.exists(&format!("snapshots/{spec}"))? =>
                {
                    unreadable.push(spec.clone())
                }
                Err(e) => return Err(e.into()),
            }
        }
        all.iter()
            .filter(|e| chosen.contains(&e.id))
            .map(|e| forget::Decision { id: e.id.clone(), keep: false, reasons: vec!["named".into()] })
            .chain(unreadable.into_iter().map(|id| forget::Decision {
                id,
                keep: false,
                reasons: vec!["named (it cannot be read)".into()],
            }))
            .collect()
    } else {
        // Only trusted snapshots count toward a policy (unless --trust-all): a forged one must
        // not push a real one out of keep-last. Untrusted ones stay until named.
        let (scope, writers): (Vec<_>, Vec<String>) = all
            .iter()
            .filter(|e| filter.matches(&e.snapshot))
            .map(|e| ((e.id.clone(), e.snapshot.clone()), e.writer()))
            .unzip();
        forget::apply_by(&scope, &|i| writers[i].clone(), &policy, &jiff::tz::TimeZone::system())?
    };
    let mut removed = 0;
    for d in decisions.iter().filter(|d| !d.keep) {
        if !args.dry_run {
            engine::commit::remove_snapshot(repo, &d.id)?;
        }
        removed += 1;
    }
    let mut out = Out::summary(json);
    let by_id = |id: &str| all.iter().find(|e| e.id == id).map(|e| &e.snapshot);
    if json {
        let v: Vec<_> = decisions
            .iter()
            .map(|d| {
                json!({"id": d.id, "keep": d.keep, "reasons": d.reasons,
                            "time": by_id(&d.id).map(|s| output::time(s.time_ns))})
            })
            .collect();
        out.line(&json!({"dry_run": args.dry_run, "removed": removed, "decisions": v}).to_string())?;
    } else {
        for d in &decisions {
            let Some(s) = by_id(&d.id) else { continue };
            let verb = match (d.keep, args.dry_run) {
                (true, _) => "keep  ",
                (false, true) => "would remove",
                (false, false) => "remove",
            };
            let paths: Vec<_> = s.paths.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            out.line(&format!(
                "{verb} {}  {}  {}  {}  ({})",
                &d.id[..16],
                output::time(s.time_ns),
                s.host,
                paths.join(" "),
                d.reasons.join(", ")
            ))?;
        }
        let what = if args.dry_run { "would be removed" } else { "removed" };
        out.line(&format!(
            "{removed} snapshots {what}, {} kept; their data goes when `bakare prune` finds nothing else uses it",
            decisions.len() - removed
        ))?;
    }
    out.finish()?;
    if args.prune && !args.dry_run {
        return prune_cmd(
            repo,
            json,
            PruneArgs { dry_run: false, repack_threshold: 30.0, unsafe_now: false, cache_dir: None },
        );
    }
    Ok(0)
}

pub fn prune_cmd(repo: &Repository, json: bool, args: PruneArgs) -> Result<u8> {
    if args.unsafe_now {
        eprintln!(
            "warning: --unsafe-now deletes condemned data without waiting for the grace period: \
             a backup running (or suspended) on another machine may lose data it is about to commit"
        );
    }
    let opts = PruneOptions {
        repack_threshold: args.repack_threshold / 100.0,
        dry_run: args.dry_run,
        unsafe_now: args.unsafe_now,
        host: engine::backup::default_host(),
        state_dir: args.cache_dir.clone().or_else(engine::filescache::default_dir),
    };
    let r = prune::prune(repo, &opts)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    let mut out = Out::summary(json);
    if json {
        let v = json!({
            "dry_run": args.dry_run,
            "snapshots": r.snapshots, "pending": r.pending, "grace_seconds": r.grace_ns / 1_000_000_000,
            "deleted": r.phase2.iter().map(|p| json!({
                "record": p.record, "condemned": p.condemned, "rescued": p.rescued,
                "deleted_packs": p.deleted_packs, "deleted_segments": p.deleted_segments, "freed_bytes": p.freed_bytes,
            })).collect::<Vec<_>>(),
            "waiting": r.waiting.iter().map(|(n, due, packs, bytes)| json!({
                "record": n, "due": output::time(*due), "due_ns": due, "packs": packs, "bytes": bytes,
            })).collect::<Vec<_>>(),
            "condemned_packs": r.condemned_packs, "condemned_bytes": r.condemned_bytes,
            "repacked_packs": r.repacked_packs, "repacked_bytes_copied": r.repacked_bytes_copied,
            "new_packs": r.new_packs, "segments_written": r.segments_written,
            "segments_condemned": r.segments_condemned, "record": r.record,
            "freed_now": r.freed_now(), "freed_later": r.freed_later(),
            "pending_removed": r.pending_removed, "abandoned_removed": r.abandoned_removed,
            "temp_removed": r.temp_removed, "temp_bytes": r.temp_bytes, "temp_kept": r.temp_kept,
        });
        out.line(&v.to_string())?;
    } else {
        let dry = if args.dry_run { " (dry run: nothing written or deleted)" } else { "" };
        out.line(&format!(
            "{} snapshots and {} pending use the repository; grace period {}{dry}",
            r.snapshots,
            r.pending,
            seconds(r.grace_ns)
        ))?;
        for p in &r.phase2 {
            out.line(&format!(
                "{}: {} packs condemned, {} rescued (a snapshot needs them), {} deleted, {} segments deleted, {} freed",
                p.record,
                p.condemned,
                p.rescued,
                p.deleted_packs,
                p.deleted_segments,
                output::size(p.freed_bytes)
            ))?;
        }
        for (n, due, packs, bytes) in &r.waiting {
            out.line(&format!(
                "{n}: {packs} condemned packs ({}) wait until {} UTC",
                output::size(*bytes),
                output::time(*due)
            ))?;
        }
        out.line(&format!(
            "condemned now: {} packs ({}), of which {} repacked into {} new packs ({} copied); \
             index: {} segments written, {} condemned",
            r.condemned_packs,
            output::size(r.condemned_bytes),
            r.repacked_packs,
            r.new_packs,
            output::size(r.repacked_bytes_copied),
            r.segments_written,
            r.segments_condemned
        ))?;
        if r.pending_removed + r.abandoned_removed > 0 {
            let verb = if args.dry_run { "would remove" } else { "removed" };
            out.line(&format!(
                "{verb} {} pending copies of committed snapshots and {} pending snapshots their writers gave up",
                r.pending_removed, r.abandoned_removed
            ))?;
        }
        if r.temp_removed + r.temp_kept > 0 {
            let verb = if args.dry_run { "would remove" } else { "removed" };
            out.line(&format!(
                "{verb} {} temporary files of interrupted writes ({}); {} younger than the grace period kept",
                r.temp_removed,
                output::size(r.temp_bytes),
                r.temp_kept
            ))?;
        }
        out.line(&format!(
            "freed now: {}; freed later (after the grace period, by a later prune): {}",
            output::size(r.freed_now()),
            output::size(r.freed_later())
        ))?;
    }
    out.finish()?;
    Ok(0)
}

/// `auto (zstd 1, small-file bundles 3)`, `off (stored uncompressed)`, `zstd 19`.
fn compression_line(c: engine::config::Compression) -> String {
    use engine::config::Compression;
    match c {
        Compression::Auto => {
            let (chunks, bundles) = c.levels();
            let l = |v: Option<i32>| v.map(|v| v.to_string()).unwrap_or_else(|| "off".into());
            format!("auto (zstd {} for chunks, {} for bundles of small files)", l(chunks), l(bundles))
        }
        Compression::Off => "off (data stored uncompressed)".into(),
        Compression::Level(n) => format!("zstd {n}"),
    }
}

fn parity_line(p: u8) -> String {
    match p {
        0 => "off".into(),
        p => format!("{p} % (Reed-Solomon over 4 KiB blocks, per MiB of each new pack)"),
    }
}

pub fn config_cmd(repo: &Repository, json: bool, args: ConfigArgs) -> Result<u8> {
    let mut config = repo.fresh_config()?;
    if let Some(span) = args.grace {
        repo.key.identity()?;
        let now = engine::clock::now_ns();
        let zoned = jiff::Timestamp::from_nanosecond(i128::from(now))?.to_zoned(jiff::tz::TimeZone::UTC);
        let secs = span.total((jiff::Unit::Second, &zoned))?;
        let min = engine::config::MIN_GRACE_SECS as f64;
        if !(min..=10.0 * 365.0 * 86400.0).contains(&secs) {
            bail!("--grace {span:#}: must be between 1 hour and 10 years");
        }
        let old = config.grace_secs;
        config.set_grace(secs as u64, now);
        if let Some(c) = args.compression {
            config.compression = c;
        }
        if let Some(p) = args.parity {
            config.set_parity(p);
        }
        repo.backend.replace("config", &config.encode(&repo.key.owner_signer()?))?;
        if (secs as u64) < old && !output::quiet() {
            eprintln!(
                "note: prune keeps waiting the old grace period ({}) for {} more, since other machines may have read it",
                seconds(old as i64 * 1_000_000_000),
                seconds(old as i64 * 1_000_000_000)
            );
        }
    }
    if args.grace.is_none() && (args.compression.is_some() || args.parity.is_some()) {
        repo.key.owner_signer().context(
            "`config --compression` and `--parity` change the config as the owner: they need the full key",
        )?;
        if let Some(c) = args.compression {
            config.compression = c;
        }
        if let Some(p) = args.parity {
            config.set_parity(p);
        }
        repo.backend.replace("config", &config.encode(&repo.key.owner_signer()?))?;
    }
    let mut out = Out::new();
    let now = engine::clock::now_ns();
    if json {
        let v = json!({
            "repository": hex::encode(config.repo_id),
            "chunk_min": config.chunk_min, "chunk_avg": config.chunk_avg, "chunk_max": config.chunk_max,
            "pack_size": config.pack_size, "grace_seconds": config.grace_secs,
            "prune_waits_seconds": config.prune_grace_ns(now) / 1_000_000_000,
            "key_fingerprint": config.key_fingerprint, "created": output::time(config.created_ns),
            "compression": config.compression.to_string(),
            "parity": config.parity,
        });
        out.line(&v.to_string())?;
    } else {
        out.line(&format!("repository   {}", hex::encode(config.repo_id)))?;
        out.line(&format!("created      {} UTC", output::time(config.created_ns)))?;
        out.line(&format!(
            "chunks       {} / {} / {} (min / average / max)",
            output::size(config.chunk_min.into()),
            output::size(config.chunk_avg.into()),
            output::size(config.chunk_max.into())
        ))?;
        out.line(&format!("pack size    {}", output::size(config.pack_size)))?;
        let g = seconds(config.grace_secs as i64 * 1_000_000_000);
        let waits = config.prune_grace_ns(now);
        if waits / 1_000_000_000 != config.grace_secs as i64 {
            out.line(&format!(
                "grace period {g} (prune waits {} until the last change settles)",
                seconds(waits)
            ))?;
        } else {
            out.line(&format!("grace period {g}"))?;
        }
        out.line(&format!("compression  {}", compression_line(config.compression)))?;
        out.line(&format!("parity       {}", parity_line(config.parity)))?;
        out.line(&format!("key          {}", config.key_fingerprint))?;
    }
    out.finish()?;
    Ok(0)
}
