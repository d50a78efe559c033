//! `peers`: friends' servers (`bakare serve --peers`) found on the local network, pairing with
//! one (after which its repository for this machine is `--repo peer:NAME`), and auditing what
//! a friend keeps (docs/peers.md).
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use rand::RngCore;
use serde_json::json;

use crate::output;

#[derive(Args, Debug)]
pub struct PeersArgs {
    #[command(subcommand)]
    pub command: Option<PeersCommand>,
    /// How long to listen for announcements
    #[arg(long, default_value = "3s", value_parser = crate::watch::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum PeersCommand {
    /// Ask a friend's server to keep this machine's backups. Prints a six-digit code for the
    /// server's owner to type (`bakare serve --approve CODE --quota SIZE`), then asks for the
    /// confirmation code that shows them
    Pair(PairArgs),
    /// Prove that a paired friend's server still holds this machine's packs, without
    /// downloading them: sends challenges made when the packs were uploaded (exit 3 when a
    /// pack is missing, truncated or altered there; the snapshots at risk are named)
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The peer's name (as in --repo peer:NAME)
    pub name: String,
    /// How many packs to challenge (one challenge each, chosen at random; each challenge is
    /// used once)
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub sample: usize,
}

#[derive(Args, Debug)]
pub struct PairArgs {
    /// The server's name as `bakare peers` lists it (and the name of `--repo peer:NAME`)
    pub name: String,
    /// This machine's name on that server (its repository there is this name in lower case)
    /// [default: the host name]
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Reach the server at this address instead of finding it on the local network (a friend
    /// across the internet); needs --sha256
    #[arg(long, requires = "sha256", value_name = "HOST:PORT")]
    pub address: Option<String>,
    /// The SHA-256 of the server's certificate, as `bakare serve` prints it at start
    #[arg(long, requires = "address", value_name = "HEX")]
    pub sha256: Option<String>,
    /// How long to listen for the server's announcement
    #[arg(long, default_value = "5s", value_parser = crate::watch::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// How long to wait for the owner's approval
    #[arg(long, default_value = "10m", value_parser = crate::watch::parse_duration, value_name = "DURATION")]
    pub wait: Duration,
}

pub fn peers_cmd(args: PeersArgs, json: bool, key: Option<&std::path::Path>) -> Result<u8> {
    match args.command {
        None => list(args.timeout, json),
        Some(PeersCommand::Pair(p)) => pair(p, json),
        Some(PeersCommand::Audit(a)) => audit(a, json, key),
    }
}

/// What an audit found.
#[derive(Debug, Default)]
pub(crate) struct Audit {
    pub audited: usize,
    pub passed: usize,
    /// (pack, why) that failed: missing, truncated or altered on the server.
    pub failed: Vec<(String, String)>,
    /// Why the audit stopped early: the server could not be reached (the challenge that was
    /// not sent is put back).
    pub unreachable: Option<String>,
    /// Packs the server lists that have no challenges here (uploaded before audits existed, by
    /// another machine, or listed by the server before this machine uploaded them), and packs
    /// whose challenges are used up.
    pub unchallenged: usize,
    pub exhausted: usize,
    /// Failed packs that no snapshot needs (deleted by a prune): their challenges forgotten.
    pub gone: Vec<String>,
    /// Snapshot id -> files and directories of it that need a failed pack.
    pub at_risk: std::collections::BTreeMap<String, usize>,
    /// Why the snapshots at risk could not be named, if they could not.
    pub risk_note: Option<String>,
    pub sent: u64,
    pub received: u64,
}

impl Audit {
    pub fn json(&self, label: &str) -> serde_json::Value {
        let pairs = |v: &[(String, String)]| {
            v.iter().map(|(p, w)| json!({ "pack": p, "why": w })).collect::<Vec<_>>()
        };
        json!({
            "repo": label, "audited": self.audited, "passed": self.passed,
            "failed": pairs(&self.failed), "unreachable": self.unreachable,
            "unchallenged_packs": self.unchallenged, "exhausted_packs": self.exhausted, "gone": self.gone,
            "at_risk": self.at_risk.iter().map(|(id, n)| json!({ "snapshot": id, "paths": n })).collect::<Vec<_>>(),
            "at_risk_note": self.risk_note, "bytes_sent": self.sent, "bytes_received": self.received,
        })
    }

    /// 3 when a pack failed, 1 when the server could not be reached, else 0.
    pub fn code(&self) -> u8 {
        if !self.failed.is_empty() {
            crate::EXIT_PARTIAL
        } else if self.unreachable.is_some() {
            1
        } else {
            0
        }
    }

    pub fn summary(&self, label: &str) -> String {
        format!(
            "audited {} packs on {label}: {} passed, {} failed ({} B sent, {} B received); {} packs there have no challenges here, {} have none left{}",
            self.audited,
            self.passed,
            self.failed.len(),
            self.sent,
            self.received,
            self.unchallenged,
            self.exhausted,
            self.unreachable.as_ref().map(|e| format!("; stopped: the server cannot be reached ({e})")).unwrap_or_default()
        )
    }
}

fn audit(args: AuditArgs, json: bool, key: Option<&std::path::Path>) -> Result<u8> {
    let peer = io::joined::load_peer(&args.name)?;
    let a = audit_at(&peer.location(), args.sample, key)?;
    let label = format!("peer:{}", args.name);
    if json {
        println!("{}", a.json(&label));
        return Ok(a.code());
    }
    for (p, w) in &a.failed {
        println!("FAILED {p}: {w}");
    }
    for p in &a.gone {
        println!("gone {p}: missing or damaged there, but no snapshot needs it (pruned, or its data is in other packs); its challenges are forgotten");
    }
    for (id, n) in &a.at_risk {
        println!("at risk on {label}: snapshot {id} ({n} paths need a failed pack)");
    }
    if let Some(n) = &a.risk_note {
        println!("{n}");
    }
    if !output::quiet() {
        println!("{}", a.summary(&label));
    }
    Ok(a.code())
}

/// Audits the repository at `location` (`serve:https://host:port/repo`): one unused challenge
/// for each of `sample` packs chosen at random among those with challenges left.
pub(crate) fn audit_at(location: &str, sample: usize, key: Option<&std::path::Path>) -> Result<Audit> {
    use rand::seq::SliceRandom;
    let served = io::ServedUrl::parse(location).map_err(|e| anyhow!(e))?;
    let joined = io::joined::load(&served.host_port)?;
    let pin = joined.sha256.ok_or_else(|| anyhow!("the server at {} is not pinned", served.host_port))?;
    let store = ::peers::audit::Store::for_location(location).context("finding the audit challenges")?;
    // A server that is down is said in seconds, before the S3 client's minute of retries.
    if let Err(e) = crate::copies::reachable(&engine::repo::Location::Serve(location.to_string())) {
        return Ok(Audit { unreachable: Some(e), ..Default::default() });
    }
    let backend = io::S3Backend::open_served(location, &io::S3Tuning::from_env())?;
    let mut packs = store.packs().with_context(|| format!("reading {}", store.dir().display()))?;
    let known: std::collections::HashSet<String> =
        store.known().with_context(|| format!("reading {}", store.dir().display()))?.into_iter().collect();
    let mut a = Audit { exhausted: known.len().saturating_sub(packs.len()), ..Default::default() };
    // The server's list says only what it claims; packs it lists that were never challenged
    // are counted, so that the audit's coverage is plain.
    match io::Backend::list(&backend, "packs") {
        Ok(listed) => a.unchallenged = listed.iter().filter(|k| !known.contains(*k)).count(),
        Err(e) => eprintln!("warning: cannot list the packs on {location}: {e}"),
    }
    if packs.is_empty() {
        bail!(
            "no audit challenges are kept for {location} in {} (they are made as this machine uploads packs there)",
            store.dir().display()
        );
    }
    packs.shuffle(&mut rand::thread_rng());
    packs.truncate(sample.max(1));
    for pack in packs {
        let c = match store.take(&pack) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("warning: the audit challenges of {pack} cannot be read ({e}): it is left out");
                continue;
            }
        };
        let url = match backend.presigned_get(&pack, Duration::from_secs(300)) {
            Ok(u) => u,
            Err(e) => {
                let _ = store.put_back(&pack, c);
                return Err(anyhow!("signing a challenge for {pack}: {e}"));
            }
        };
        let header = c.header();
        a.sent += (url.len() + header.len()) as u64;
        let answer = io::pinned::get_with(
            &url,
            &[("x-bakare-audit", header)],
            &served.host_port,
            pin,
            Duration::from_secs(60),
        );
        match answer {
            // Not sent, or no answer: the challenge goes back, and the audit stops (a server
            // that is down would otherwise use them all up).
            Err(e) => {
                if let Err(e) = store.put_back(&pack, c) {
                    eprintln!("warning: cannot put back the challenge of {pack}: {e}");
                }
                a.unreachable = Some(e);
                break;
            }
            // Anything but the right hash over the pinned connection fails: a server that
            // answers some other way for the packs it dropped must not escape.
            Ok((status, body)) => {
                a.audited += 1;
                a.received += body.len() as u64;
                let v: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
                match (status, v.as_ref().and_then(|v| v.get("hash")).and_then(|h| h.as_str())) {
                    (200, Some(h)) if h == hex::encode(c.expected) => a.passed += 1,
                    (200, Some(_)) => a.failed.push((
                        pack,
                        format!(
                            "the server's answer for bytes {}..{} is wrong: the pack was altered or truncated there",
                            c.offset,
                            c.offset.saturating_add(c.length)
                        ),
                    )),
                    (404, _) => a.failed.push((pack, "the server does not have it".into())),
                    (status, _) => a.failed.push((pack, format!("the server did not answer the challenge (HTTP {status})"))),
                }
            }
        }
    }
    // What depends on the failed packs: check, taking them as lost.
    if !a.failed.is_empty() {
        let lost = a.failed.iter().map(|(p, w)| (p.clone(), format!("failed an audit: {w}"))).collect();
        let opened = crate::open_repo(&engine::repo::Location::Serve(location.to_string()), key);
        match opened.map_err(anyhow::Error::from).and_then(|repo| {
            let opts = engine::check::CheckOptions { lost, workers: 4, ..Default::default() };
            Ok(engine::check::check(&repo, &opts)?)
        }) {
            Ok(r) if r.snapshots_checked => {
                for x in &r.affected {
                    let id = engine::commit::id_of("snapshots", &x.snapshot).unwrap_or(&x.snapshot);
                    *a.at_risk.entry(id.to_string()).or_default() += 1;
                }
                // A pack no snapshot needs was pruned, not lost: its challenges go. Only when
                // nothing is at risk at all: a lost tree hides what below it needs which pack.
                let needed = |p: &str| !r.affected.is_empty() || r.damage.iter().any(|d| d.object == p);
                let (failed, gone): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut a.failed).into_iter().partition(|(p, _)| needed(p));
                a.failed = failed;
                for (p, _) in gone {
                    if let Err(e) = store.forget(&p) {
                        eprintln!("warning: cannot forget the challenges of {p}: {e}");
                    }
                    a.gone.push(p);
                }
            }
            Ok(_) => {
                a.risk_note = Some("with a backup-only key the snapshots at risk cannot be named".into())
            }
            Err(e) => a.risk_note = Some(format!("the snapshots at risk cannot be named: {e:#}")),
        }
    }
    Ok(a)
}

fn list(timeout: Duration, json: bool) -> Result<u8> {
    let found = ::peers::browse(timeout).context("listening for bakare nodes on the local network")?;
    let paired = io::joined::peers()?;
    let state = |f: &::peers::Found| match paired.iter().find(|p| p.name == f.name) {
        Some(p) if Some(&p.sha256) == f.sha256.as_ref() => "paired",
        Some(_) => "paired with ANOTHER certificate",
        None => "not paired",
    };
    let roles = |f: &::peers::Found| {
        f.roles
            .iter()
            .map(|r| match r {
                ::peers::Role::Persister => "persister",
                ::peers::Role::Publisher => "publisher",
            })
            .collect::<Vec<_>>()
    };
    if json {
        for f in &found {
            println!(
                "{}",
                json!({
                    "name": f.name, "addresses": f.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "port": f.port, "roles": roles(f), "sha256": f.sha256, "free": f.free, "paired": state(f),
                })
            );
        }
        return Ok(0);
    }
    if found.is_empty() && !output::quiet() {
        eprintln!("no bakare node answered within {timeout:?}");
    }
    for f in &found {
        let address = f.addresses.first().map(|a| socket(*a, f.port)).unwrap_or_else(|| "-".into());
        let free = f.free.map(|b| format!("{} free", bytesize::ByteSize(b))).unwrap_or_default();
        let sha =
            f.sha256.as_deref().map(|s| format!("sha256 {}…", &s[..16.min(s.len())])).unwrap_or_default();
        println!("{}\t{address}\t{}\t{sha}\t{free}\t{}", f.name, roles(f).join("+"), state(f));
    }
    Ok(0)
}

fn socket(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// This machine's default name among friends: its host name, as a repository name allows.
fn host_name() -> Result<String> {
    let raw =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading this machine's host name")?;
    let name: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_string();
    if ::serve::repo_of(&name).is_none() {
        bail!("this machine's host name {raw:?} makes no name for friends: give one with --as NAME");
    }
    Ok(name)
}

fn pair(args: PairArgs, json: bool) -> Result<u8> {
    let me = match args.as_name {
        Some(n) => n,
        None => host_name()?,
    };
    if !::serve::valid_client_name(&me) || ::serve::repo_of(&me).is_none() {
        bail!("--as {me:?}: a name among friends is 3 to 63 letters, digits or '-', starting with a letter or digit");
    }
    if !::serve::valid_client_name(&args.name) {
        bail!("{:?} is not a peer's name", args.name);
    }
    let (host_port, sha_hex) = match (args.address, args.sha256) {
        (Some(a), Some(s)) => (a, s.to_ascii_lowercase()),
        _ => {
            let found =
                ::peers::browse(args.timeout).context("listening for bakare nodes on the local network")?;
            let f = found.into_iter().find(|f| f.name == args.name).ok_or_else(|| {
                anyhow!(
                    "no server named {} answered on the local network within {:?} (`bakare peers` lists those \
                     that do; for one elsewhere give --address HOST:PORT --sha256 HEX)",
                    args.name,
                    args.timeout
                )
            })?;
            if !f.roles.contains(&::peers::Role::Persister) {
                bail!("{} does not keep backups for friends (it announces no server)", f.name);
            }
            let sha = f.sha256.clone().ok_or_else(|| anyhow!("{} announces no certificate", f.name))?;
            let ip = *f.addresses.first().ok_or_else(|| anyhow!("{} announces no address", f.name))?;
            (socket(ip, f.port), sha)
        }
    };
    let mut pin = [0u8; 32];
    if sha_hex.len() != 64 || hex::decode_to_slice(&sha_hex, &mut pin).is_err() {
        bail!("--sha256 must be the 64 hex digits of the server's certificate");
    }
    let url = format!("https://{host_port}");
    // The address must be what `serve:` URLs accept.
    let served = io::ServedUrl::parse(&format!("serve:{url}/probe")).map_err(|e| anyhow!(e))?;
    let host_port = served.host_port;
    // One credential per server: pairing must not replace one this machine holds already (an
    // owner's, say).
    if let Ok(j) = io::joined::load(&host_port) {
        bail!(
            "this machine holds a credential for the server at {host_port} already (client {}): \
             it cannot pair with it as well",
            j.access_key
        );
    }
    // Ok(None): the request itself failed (the network), worth trying again while polling.
    let exchange = |query: &str| -> Result<Option<serde_json::Value>> {
        let (status, body) = match io::pinned::get(
            &format!("https://{host_port}/?{query}"),
            &host_port,
            pin,
            Duration::from_secs(30),
        ) {
            Ok(r) => r,
            Err(e) if e.contains("certificate") => bail!("pairing with {} at {host_port}: {e}", args.name),
            Err(e) => {
                eprintln!("warning: pairing with {} at {host_port}: {e}", args.name);
                return Ok(None);
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            anyhow!("{} at {host_port} answered with status {status}, not a pairing answer", args.name)
        })?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("{} refused to pair: {e}", args.name);
        }
        if status != 200 {
            bail!("{} at {host_port} answered with status {status}", args.name);
        }
        Ok(Some(v))
    };
    let step = |query: String| -> Result<serde_json::Value> {
        exchange(&query)?
            .ok_or_else(|| anyhow!("pairing with {} at {host_port} failed (see above)", args.name))
    };
    let field = |v: &serde_json::Value, k: &str| -> Result<String> {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the pairing answer has no {k}"))
    };
    let mut token = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut token);
    let commit = hex::encode(::serve::pairing_commitment(&token));
    let opened = step(format!("bakare-pair=open&name={me}&commit={commit}"))?;
    let id = field(&opened, "id")?;
    let mut nonce = [0u8; 32];
    if hex::decode_to_slice(field(&opened, "nonce")?, &mut nonce).is_err() || id.len() != 64 {
        bail!("{} sent a malformed pairing answer", args.name);
    }
    step(format!("bakare-pair=reveal&id={id}&token={}", hex::encode(token)))?;
    let code = ::serve::pairing_code(&pin, &token, &nonce);
    if json {
        println!("{}", json!({ "code": code, "peer": args.name, "as": me }));
    } else {
        println!("pairing code {} {}", &code[..3], &code[3..]);
        if !output::quiet() {
            eprintln!(
                "tell the code to {}'s owner, who types it there: \
                 bakare serve --storage DIR --approve {code} --quota SIZE; waiting for the approval",
                args.name
            );
        }
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + args.wait;
    let approved = loop {
        let v = exchange(&format!("bakare-pair=poll&id={id}&token={}", hex::encode(token)))?;
        if let Some(v) = v.filter(|v| v.get("status").and_then(|s| s.as_str()) == Some("approved")) {
            break v;
        }
        if Instant::now() >= deadline {
            bail!("{}'s owner did not approve within {:?}", args.name, args.wait);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Whoever answered approved; the owner's confirmation code says that it was the owner.
    let expected = ::serve::pairing_confirmation(&pin, &token, &nonce);
    confirm(&args.name, &expected)?;
    let client = field(&approved, "client")?;
    let secret = field(&approved, "secret")?;
    let repo = field(&approved, "repo")?;
    let invitation = format!("bakare-join:https://{client}:{secret}@{host_port}/?sha256={sha_hex}");
    let joined = io::joined::parse_invitation(&invitation)
        .map_err(|e| anyhow!("{} sent a malformed credential: {e}", args.name))?;
    io::joined::save(&joined).context("keeping the credential")?;
    let peer = io::joined::Peer { name: args.name.clone(), url: joined.url.clone(), repo, sha256: sha_hex };
    io::ServedUrl::parse(&peer.location())
        .map_err(|e| anyhow!("{} gave a malformed repository: {e}", args.name))?;
    io::joined::save_peer(&peer).context("keeping the pairing")?;
    if json {
        println!(
            "{}",
            json!({ "paired": peer.name, "location": peer.location(), "quota": approved.get("quota") })
        );
    } else if !output::quiet() {
        println!(
            "paired with {0}: its repository for this machine is --repo peer:{0} (`bakare init --repo peer:{0}` \
             creates it; or `bakare run --repo peer:OTHER --repo peer:{0}` makes it a copy of another)",
            peer.name
        );
    }
    Ok(0)
}

/// Asks for the confirmation code `--approve` showed the server's owner (three tries; a line
/// of standard input when it is not a terminal).
fn confirm(name: &str, expected: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    for _ in 0..3 {
        if stdin.is_terminal() {
            eprint!("{name}'s owner approved. Type the confirmation code it showed them: ");
            let _ = std::io::stderr().flush();
        } else {
            println!("confirmation code?");
            let _ = std::io::stdout().flush();
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).context("reading the confirmation code")? == 0 {
            break;
        }
        let typed: String = line.chars().filter(char::is_ascii_digit).collect();
        if typed == expected {
            return Ok(());
        }
        eprintln!("that is not the code that goes with this pairing");
    }
    bail!(
        "not paired: the confirmation code was not given. The server that answered may not be {name}'s; \
         its owner can remove the client it made with `bakare serve --remove-client`"
    )
}
