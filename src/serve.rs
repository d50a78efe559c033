//! `serve`: repositories under one directory, served over HTTPS (the S3 protocol) to the
//! machines given invitations; `--add-client`, `--list-clients`, `--remove-client` manage them.
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::output;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The directory holding the repositories, one per subdirectory (clients use them as
    /// --repo serve:https://HOST:PORT/NAME); the server's own state is in DIR/.serve
    #[arg(long, value_name = "DIR")]
    pub storage: PathBuf,
    /// Address and port to listen on (port 0 picks a free one and prints it)
    #[arg(long, default_value = "0.0.0.0:8443", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// A CA-signed certificate chain (PEM) to present instead of the server's self-signed one;
    /// clients then verify it against their CA roots rather than pinning it
    #[arg(long, requires = "key", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM, readable by its owner only)
    #[arg(long, requires = "cert", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Add a client and print its invitation (one line, for `bakare join` on that machine)
    #[arg(long, value_name = "NAME", conflicts_with_all = ["list_clients", "remove_client"])]
    pub add_client: Option<String>,
    /// With --add-client: the client may delete and replace objects (the repository owner's
    /// prune and forget); other clients may only add
    #[arg(long, requires = "add_client")]
    pub owner: bool,
    /// With --add-client or --approve: the most bytes of new objects the client may add (e.g.
    /// 500G); over it, its uploads are refused (403 QuotaExceeded) and what it stored before stays
    #[arg(long, value_parser = crate::parse_size_arg, value_name = "SIZE")]
    pub quota: Option<u64>,
    /// With --add-client: the address clients reach the server at (default: this machine's
    /// host name, or the --listen address when it is not 0.0.0.0, and the --listen port)
    #[arg(long, requires = "add_client", value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// Relay every repository to this place as clients add to it (keyless, like `sync`): an S3
    /// prefix (s3:https://host/bucket/prefix), another server (serve:https://host:port) or a
    /// directory; each repository goes below it under its own name
    #[arg(long, value_name = "LOCATION")]
    pub relay_to: Option<String>,
    /// Objects the relay copies at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub relay_jobs: usize,
    /// Show the relay's state as of its last pass: per repository, the objects and bytes not yet
    /// upstream, the age of the oldest, the last success and the last error
    #[arg(long, conflicts_with_all = ["add_client", "list_clients", "remove_client"])]
    pub status: bool,
    /// Memory budget: sets how many connections are served at once (the budget less 64 MiB,
    /// one per MiB; more wait to be accepted) and the threads for file work, e.g. 256M, 1G
    #[arg(long, default_value = "256M", value_parser = crate::parse_size_arg, value_name = "SIZE")]
    pub mem_limit: u64,
    /// Print a systemd service that runs this server with these options, and exit
    #[arg(long)]
    pub print_systemd_unit: bool,
    /// List the clients
    #[arg(long, conflicts_with = "remove_client")]
    pub list_clients: bool,
    /// Keep backups for friends: announce this server on the local network (DNS-SD over
    /// multicast DNS, `bakare peers` finds it) and take pairing requests (`bakare peers pair`),
    /// which wait for --approve
    #[arg(long)]
    pub peers: bool,
    /// The name this server announces with --peers [default: the host name]
    #[arg(long, requires = "peers", value_name = "NAME")]
    pub name: Option<String>,
    /// List the pairing requests waiting for approval (their codes are on the friends' screens)
    #[arg(long, conflicts_with_all = ["add_client", "list_clients", "remove_client", "status"])]
    pub pending: bool,
    /// Approve the pairing request showing CODE (compare it with the code on the friend's
    /// machine): the friend becomes an append-only client of its own repository, with --quota;
    /// prints a confirmation code for the friend to type
    #[arg(long, value_name = "CODE", conflicts_with_all = ["add_client", "list_clients", "remove_client", "status", "pending"])]
    pub approve: Option<String>,
    /// Remove a client: its next request is refused
    #[arg(long, value_name = "NAME")]
    pub remove_client: Option<String>,
}

/// The address an invitation names: --address, else the listen address, or this machine's host
/// name when listening on all addresses.
fn public_address(args: &ServeArgs) -> Result<String> {
    if let Some(a) = &args.address {
        if a.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            bail!("--address {a:?} is not HOST:PORT");
        }
        return Ok(a.clone());
    }
    let port = args.listen.port();
    if port == 0 {
        bail!("--add-client needs the port clients connect to: give --address HOST:PORT or --listen with a port");
    }
    Ok(match args.listen.ip() {
        ip if ip.is_unspecified() => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .context("cannot read this machine's host name: give --address HOST:PORT")?;
            format!("{host}:{port}")
        }
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        IpAddr::V4(ip) => format!("{ip}:{port}"),
    })
}

pub fn serve_cmd(json: bool, args: ServeArgs) -> Result<u8> {
    let state = ::serve::StateDir::new(&args.storage);
    let cert = args.cert.as_deref().zip(args.key.as_deref());
    if args.quota.is_some() && args.add_client.is_none() && args.approve.is_none() {
        bail!("--quota goes with --add-client or --approve");
    }
    if let Some(code) = &args.approve {
        let Some(quota) = args.quota else {
            bail!("--approve needs --quota SIZE: how much the friend may store here (e.g. 500G)");
        };
        let (client, confirmation) = state.pairing_approve(code, Some(quota))?;
        let repo = client.repo.clone().unwrap_or_default();
        if json {
            let v = json!({ "client": client.name, "repo": repo, "quota": client.quota, "confirmation": confirmation });
            println!("{v}");
        } else {
            let quota = bytesize::ByteSize(quota);
            println!("approved {}: append-only client of repository {repo}, quota {quota}", client.name);
            let (a, b) = confirmation.split_at(3.min(confirmation.len()));
            println!(
                "confirmation code {a} {b}: tell it to {}'s owner, who types it to finish pairing",
                client.name
            );
        }
        return Ok(0);
    }
    if args.pending {
        let pending = state.pairing_pending()?;
        if json {
            let list: Vec<_> = pending
                .iter()
                .map(|p| json!({ "name": p.name, "repo": p.repo, "age_seconds": p.age_seconds }))
                .collect();
            println!("{}", serde_json::Value::Array(list));
        } else {
            if pending.is_empty() && !output::quiet() {
                eprintln!("no pairing request is waiting");
            }
            for p in &pending {
                println!("{}\trepository {}\tasked {} s ago", p.name, p.repo, p.age_seconds);
            }
        }
        return Ok(0);
    }
    if let Some(name) = &args.add_client {
        let address = public_address(&args)?;
        let host = address.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string());
        let identity = ::serve::identity(&args.storage, cert, &host.into_iter().collect::<Vec<_>>())?;
        let client = state.add_client(name, args.owner, args.quota)?;
        let invitation = ::serve::invitation(&address, &identity, &client);
        if json {
            println!("{}", json!({ "client": client.name, "owner": client.owner, "invitation": invitation }));
        } else {
            if !output::quiet() {
                eprintln!(
                    "added client {}{}; on that machine run `bakare join` with this invitation (it holds the client's secret):",
                    client.name,
                    if client.owner { " (owner: may delete)" } else { " (append-only)" }
                );
            }
            println!("{invitation}");
        }
        return Ok(0);
    }
    if args.list_clients {
        let clients = state.clients()?;
        let usage = ::serve::usage(&state)?;
        let used = |name: &str| usage.get(name).copied().unwrap_or(0);
        if json {
            let list: Vec<_> = clients
                .values()
                .map(|c| json!({ "name": c.name, "owner": c.owner, "quota": c.quota, "used": used(&c.name), "repo": c.repo }))
                .collect();
            println!("{}", serde_json::Value::Array(list));
        } else {
            for c in clients.values() {
                let quota = c.quota.map(|q| format!(" of {}", bytesize::ByteSize(q))).unwrap_or_default();
                let role = match (&c.repo, c.owner) {
                    (_, true) => ", owner".to_string(),
                    (Some(r), false) => format!(", friend: repository {r} only"),
                    (None, false) => String::new(),
                };
                println!("{} ({} used{quota}{role})", c.name, bytesize::ByteSize(used(&c.name)));
            }
        }
        return Ok(0);
    }
    if let Some(name) = &args.remove_client {
        if !state.remove_client(name)? {
            bail!("no client named {name:?} on the server at {}", args.storage.display());
        }
        if !output::quiet() {
            eprintln!("removed client {name}");
        }
        return Ok(0);
    }
    if args.status {
        return status(&state, json);
    }
    if args.print_systemd_unit {
        let service = ["Restart=on-failure", "RestartSec=5", "KillSignal=SIGTERM", "TimeoutStopSec=45"];
        print!(
            "{}",
            crate::watch::systemd_unit("serve", "bakare serve: repository server", false, &service)?
        );
        return Ok(0);
    }
    if !args.storage.is_dir() {
        bail!("--storage {}: not a directory", args.storage.display());
    }
    let identity = ::serve::identity(&args.storage, cert, &[])?;
    let fingerprint = identity.fingerprint();
    let pinned = identity.self_signed;
    if let Some(r) = &args.relay_to {
        // Checked now rather than at the first pass.
        engine::repo::Location::parse(std::ffi::OsStr::new(&::serve::upstream_of(r, "x")))
            .with_context(|| format!("--relay-to {r}"))?;
    }
    let opts = ::serve::Options {
        storage: args.storage.clone(),
        listen: args.listen,
        identity,
        relay: args.relay_to.clone(),
        relay_workers: args.relay_jobs.max(1),
        max_connections: ::serve::Options::limits(args.mem_limit).0,
        max_blocking: ::serve::Options::limits(args.mem_limit).1,
        pairing: args.peers,
    };
    let node = match (&args.name, args.peers) {
        (Some(n), _) => Some(n.clone()),
        (None, true) => Some(node_name()?),
        (None, false) => None,
    };
    if let Some(n) = &node {
        if !::peers::valid_name(n) {
            bail!("--name {n:?}: 1 to 63 letters, digits or '-'");
        }
        if !pinned {
            bail!("--peers needs the server's own certificate (friends pair by its fingerprint): leave out --cert");
        }
    }
    let mut announcer = None;
    let announce_fp = fingerprint.clone();
    let storage = args.storage.clone();
    ::serve::serve(opts, |bound| {
        if let Some(n) = node {
            let a = ::peers::Announcement {
                name: n.clone(),
                port: bound.port(),
                roles: vec![::peers::Role::Persister],
                sha256: Some(announce_fp),
                free: free_bytes(&storage),
            };
            match ::peers::announce(&a) {
                Ok(h) => {
                    if !output::quiet() {
                        eprintln!("bakare serve: announcing {n} on the local network; friends pair with `bakare peers pair {n}`");
                    }
                    let h = std::sync::Arc::new(h);
                    keep_free_current(std::sync::Arc::downgrade(&h), storage.clone());
                    announcer = Some(h);
                }
                Err(e) => eprintln!("bakare serve: cannot announce on the local network ({e}); friends can still pair with --address and --sha256"),
            }
        }
        if json {
            println!("{}", json!({ "listening": bound.to_string(), "sha256": fingerprint }));
        } else {
            let how = if pinned { "self-signed, pinned by clients" } else { "CA-signed" };
            eprintln!("bakare serve: listening on https://{bound}; certificate sha256 {fingerprint} ({how})");
        }
    })?;
    // Says goodbye on the network.
    drop(announcer);
    Ok(0)
}

/// This machine's name among friends: its host name, as announcements allow.
fn node_name() -> Result<String> {
    let raw =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading this machine's host name")?;
    let name: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_string();
    if !::peers::valid_name(&name) {
        bail!("this machine's host name {raw:?} makes no name to announce: give one with --name NAME");
    }
    Ok(name)
}

/// Announces the storage's free space again when it changed by more than 1 % (checked each
/// minute), until the announcer is gone.
fn keep_free_current(announcer: std::sync::Weak<::peers::Announcer>, storage: PathBuf) {
    let mut said = free_bytes(&storage);
    let spawned = std::thread::Builder::new().name("announce-free".into()).spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
        let Some(a) = announcer.upgrade() else { return };
        let now = free_bytes(&storage);
        let moved = match (said, now) {
            (Some(a), Some(b)) => a.abs_diff(b) > a / 100,
            (a, b) => a != b,
        };
        if moved {
            match a.set_free(now) {
                Ok(()) => said = now,
                Err(e) => eprintln!("bakare serve: announcing the free space: {e}"),
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("bakare serve: the free space announced stays as at start ({e})");
    }
}

/// Bytes available to unprivileged users on the storage's file system.
fn free_bytes(storage: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(storage).ok()?;
    st.f_bavail.checked_mul(st.f_frsize)
}

fn status(state: &::serve::StateDir, json: bool) -> Result<u8> {
    let Some(st) = ::serve::relay_status(state)? else {
        bail!("no relay has run on this server (start it with --relay-to)");
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let age = |t: Option<u64>| t.map(|t| now.saturating_sub(t));
    if json {
        let repos: serde_json::Map<String, serde_json::Value> = st
            .repos
            .iter()
            .map(|(name, r)| {
                let v = json!({
                    "backlog_objects": r.backlog.objects, "backlog_bytes": r.backlog.bytes,
                    "oldest_seconds": age(r.backlog.oldest), "last_success_seconds_ago": age(r.last_success),
                    "last_error": r.last_error, "last_copied_objects": r.last_copied_objects,
                    "last_copied_bytes": r.last_copied_bytes,
                });
                (name.clone(), v)
            })
            .collect();
        println!("{}", json!({ "upstream": st.upstream, "repos": repos }));
        return Ok(0);
    }
    println!("relaying to {}", st.upstream);
    for (name, r) in &st.repos {
        let oldest = age(r.backlog.oldest).map(|a| format!(", oldest {a} s")).unwrap_or_default();
        let success = age(r.last_success).map(|a| format!("{a} s ago")).unwrap_or_else(|| "never".into());
        println!(
            "{name}: {} objects ({}) not yet upstream{oldest}; last success {success}{}",
            r.backlog.objects,
            bytesize::ByteSize(r.backlog.bytes),
            r.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default()
        );
    }
    Ok(0)
}
