//! The `peers` crate on its own, so that tests can run it in network namespaces (`chaos::lan`):
//!
//! - `peers-probe announce NAME PORT ROLES SHA256|- FREE|-` announces (ROLES: `persister`,
//!   `publisher` or `persister,publisher`), prints `announced FULLNAME`, then reads lines from
//!   stdin: `free N` (or `free -`) changes the free space announced and prints `free set`. When
//!   stdin closes it stops announcing (sending a goodbye), prints `stopped` and exits.
//! - `peers-probe browse SECONDS [EXPECT]` browses for SECONDS, or until EXPECT valid nodes
//!   were found with an IPv4 address each, and prints one JSON object a line: each node found, each service skipped
//!   (`{"skipped": ..., "reason": ...}`), then `{"elapsed_ms": ..., "ignored": ...}`.
use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use peers::{Announcement, Role};
use serde_json::json;

fn optional<T: std::str::FromStr>(s: &str, what: &str) -> Result<Option<T>, String> {
    if s == "-" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| format!("{what} {s:?} is not valid"))
}

fn announce(args: &[String]) -> Result<(), String> {
    let [name, port, roles, sha, free] = args else {
        return Err("usage: peers-probe announce NAME PORT ROLES SHA256|- FREE|-".into());
    };
    let roles = roles
        .split(',')
        .map(|r| match r {
            "persister" => Ok(Role::Persister),
            "publisher" => Ok(Role::Publisher),
            other => Err(format!("unknown role {other:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let a = Announcement {
        name: name.clone(),
        port: port.parse().map_err(|_| format!("port {port:?} is not valid"))?,
        roles,
        sha256: optional(sha, "sha256")?,
        free: optional(free, "free")?,
    };
    let announcer = peers::announce(&a).map_err(|e| format!("announcing {name}: {e}"))?;
    println!("announced {}", announcer.fullname());
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["free", n] => {
                announcer.set_free(optional(n, "free")?).map_err(|e| format!("setting free: {e}"))?;
                println!("free set");
            }
            _ => return Err(format!("unknown command {line:?}")),
        }
    }
    drop(announcer);
    println!("stopped");
    Ok(())
}

fn browse(args: &[String]) -> Result<(), String> {
    let (seconds, expect) = match args {
        [s] => (s, None),
        [s, n] => (s, Some(n.parse::<usize>().map_err(|_| format!("EXPECT {n:?} is not a number"))?)),
        _ => return Err("usage: peers-probe browse SECONDS [EXPECT]".into()),
    };
    let seconds: f64 = seconds.parse().map_err(|_| format!("SECONDS {seconds:?} is not a number"))?;
    let timeout = Duration::try_from_secs_f64(seconds).map_err(|e| format!("SECONDS {seconds}: {e}"))?;
    let t0 = Instant::now();
    // A node's IPv4 and IPv6 addresses come in separate answers; the LAN is IPv4.
    let enough = |b: &peers::Browse| {
        expect
            .is_some_and(|n| b.found.iter().filter(|f| f.addresses.iter().any(|a| a.is_ipv4())).count() >= n)
    };
    let b = peers::browse_until(timeout, enough).map_err(|e| format!("browsing: {e}"))?;
    let elapsed = t0.elapsed();
    for f in &b.found {
        let roles: Vec<&str> = f.roles.iter().map(Role::as_str).collect();
        let addresses: Vec<String> = f.addresses.iter().map(ToString::to_string).collect();
        println!(
            "{}",
            json!({"name": f.name, "addresses": addresses, "port": f.port, "roles": roles,
                   "sha256": f.sha256, "free": f.free, "version": f.version})
        );
    }
    for s in &b.skipped {
        println!("{}", json!({"skipped": s.fullname, "reason": s.reason}));
    }
    println!("{}", json!({"elapsed_ms": elapsed.as_millis() as u64, "ignored": b.ignored}));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("announce") => announce(&args[1..]),
        Some("browse") => browse(&args[1..]),
        _ => Err("usage: peers-probe announce ... | browse ...".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
