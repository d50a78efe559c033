//! `bakare serve` with real clients on loopback: several machines back up at once and another
//! restores everything; clients add but never delete or replace, and the owner prunes; quotas;
//! a server with another certificate, and a removed client, are refused; the relay copies
//! every repository upstream and catches up after outages and a kill -9. Also `bakare join` and
//! `init --join`: invitations kept privately, refused with reasons that never repeat the
//! secret, and `serve:` repositories that name a server this machine never joined.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos::argv;
use chaos::testkit::{
    assert_same_tree, random_tree, restored_path, Bakare, FakeClock, Rng, S3Server, Served, TestDir, HOUR_NS,
};

const SECRET: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
const PIN: &str = "0f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a69780f1e2d3c4b5a6978";

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare"))
}

fn invitation(secret: &str, host_port: &str) -> String {
    format!("bakare-join:https://laptop:{secret}@{host_port}/?sha256={PIN}")
}

#[test]
fn join_keeps_the_invitation_privately_and_says_how_to_use_it() {
    let mut b = bakare();
    b.env.push(("BAKARE_INVITATION".into(), invitation(SECRET, "Backup.Example.com:8443")));
    let out = b.ok(&["join"]).stdout_str();
    assert_eq!(
        out.trim(),
        format!(
            "joined https://backup.example.com:8443 (certificate sha256 {PIN}); use --repo \
             serve:https://backup.example.com:8443/<name>"
        )
    );
    let kept = b.home.path().join(".config/bakare/servers/backup.example.com_8443.json");
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    let entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&kept).unwrap()).unwrap();
    assert_eq!(entry["secret"], SECRET);
    assert_eq!(entry["access_key"], "laptop");
}

#[test]
fn bad_invitations_are_refused_without_their_secret() {
    let b = bakare();
    let bad = invitation(&SECRET.to_uppercase(), "h:1");
    let o = b.run(&["join", bad.as_str()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("the secret must be 64 lower-case hex digits"), "{}", o.stderr);
    assert!(!o.stderr.to_lowercase().contains(SECRET), "{}", o.stderr);
    let o = b.run(&["join", &invitation(SECRET, "h")]);
    assert!(o.code == 1 && o.stderr.contains("no port"), "{}", o.stderr);
    assert!(!o.stderr.contains(SECRET), "{}", o.stderr);
    assert!(!b.home.path().join(".config/bakare/servers").exists());
}

#[test]
fn init_join_needs_the_invitations_server() {
    let b = bakare();
    let inv = invitation(SECRET, "h.example:1");
    let o = b.run(&["init", "--join", inv.as_str(), "--repo", "serve:https://other.example:1/photos"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("the invitation is for the server at h.example:1"), "{}", o.stderr);
    assert!(!o.stderr.contains(SECRET), "{}", o.stderr);
    let o = b.run(&["init", "--join", inv.as_str()]);
    assert!(o.code == 1 && o.stderr.contains("--join needs --repo serve:"), "{}", o.stderr);
    assert!(!b.home.path().join(".config/bakare/servers").exists());
}

#[test]
fn a_server_never_joined_is_named_with_what_to_do() {
    let b = bakare();
    let o = b.run(&["snapshots", "--repo", "serve:https://nas.example:8443/photos"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("has not joined the server at nas.example:8443")
            && o.stderr.contains("bakare join INVITATION"),
        "{}",
        o.stderr
    );
    let o = b.run(&["snapshots", "--repo", "serve:http://nas.example:8443/photos"]);
    assert!(o.code == 1 && o.stderr.contains("the scheme must be https"), "{}", o.stderr);
}

/// A machine that joined `server` as client `name` (extra: `--add-client` options), using the
/// repository `repo` there.
fn machine(server: &Served, repo: &str, name: &str, extra: &[&str]) -> Bakare {
    let mut b = bakare();
    b.env.push(("BAKARE_REPO".into(), server.repo(repo)));
    b.ok(&["join", server.add_client(name, extra).as_str()]);
    b
}

/// The repository's owner: joins as an owner client and creates the repository.
fn owner_of(server: &Served, repo: &str) -> Bakare {
    let mut b = bakare();
    b.env.push(("BAKARE_REPO".into(), server.repo(repo)));
    b.ok(&["init", "--join", server.add_client("owner", &["--owner"]).as_str()]);
    b
}

/// The full key of `owner`, exported to a file another machine can use.
fn full_key(owner: &Bakare) -> PathBuf {
    let k = owner.home.path().join("full.key");
    owner.ok(&argv!["key", "export", &k]);
    k
}

fn snapshot_ids(b: &Bakare, key: &Path) -> Vec<(String, String)> {
    let j = b.ok(&argv!["--key", key, "--json", "snapshots"]).json();
    j.as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["paths"][0].as_str().unwrap().to_string()))
        .collect()
}

/// Every file of a repository directory below the listed parts, with its bytes.
fn objects(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for part in ["config", "index", "packs", "snapshots", "writers", "roster"] {
        let mut stack = vec![root.join(part)];
        while let Some(p) = stack.pop() {
            let Ok(md) = fs::metadata(&p) else { continue };
            if md.is_dir() {
                stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if !p.file_name().unwrap().to_str().unwrap().starts_with(".tmp-") {
                out.push((
                    p.strip_prefix(root).unwrap().to_str().unwrap().to_string(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three machines back up into one repository through the server at the same time (the owner,
/// a laptop with the full key, a phone with a backup-only key; the laptop's 20 MiB file goes up
/// in parts); a fourth machine restores every snapshot exactly, and `check --read-data`
/// through the server finds nothing wrong.
#[test]
fn three_machines_back_up_at_once_and_a_fourth_restores_everything() {
    let server = Served::start(env!("CARGO_BIN_EXE_bakare"));
    let owner = owner_of(&server, "home");
    let full = full_key(&owner);
    let phone_key = owner.home.path().join("phone.key");
    owner.ok(&argv!["key", "export", "--backup-only", "--name", "phone", &phone_key]);
    let laptop = machine(&server, "home", "laptop", &[]);
    let phone = machine(&server, "home", "phone", &[]);
    let sources: Vec<TestDir> = (0..3)
        .map(|i| {
            let t = TestDir::new();
            random_tree(t.path(), 10 + i, 150);
            t
        })
        .collect();
    fs::write(sources[1].path().join("video.bin"), Rng::new(7).bytes(20 << 20)).unwrap();
    let runs = [
        owner.command(&argv!["run", sources[0].path()]),
        laptop.command(&argv!["--key", &full, "run", sources[1].path()]),
        phone.command(&argv!["--key", &phone_key, "run", sources[2].path()]),
    ];
    // All three at once.
    let children: Vec<_> = runs
        .into_iter()
        .map(|mut c| {
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "machine {i}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let fourth = machine(&server, "home", "restorer", &[]);
    let ids = snapshot_ids(&fourth, &full);
    assert_eq!(ids.len(), 3, "{ids:?}");
    for src in &sources {
        let id = &ids.iter().find(|(_, p)| Path::new(p) == src.path()).unwrap().0;
        let t = tempfile::tempdir().unwrap();
        fourth.ok(&argv!["--key", &full, "restore", id, "--target", t.path()]);
        assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    }
    let c = fourth.ok(&argv!["--key", &full, "--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");
}

/// A client (with the full key, even) can add snapshots but not remove or change anything:
/// its `forget` fails with 403 and removes nothing, and through the storage interface its DELETE
/// and its replacing of the config or of a pack with other bytes are refused and change no byte
/// (re-sending an object's own bytes succeeds: a retry). The owner's forget and both phases of
/// prune work through the same server.
#[test]
fn clients_add_but_never_delete_or_replace_and_the_owner_prunes() {
    let server = Served::start(env!("CARGO_BIN_EXE_bakare"));
    let mut owner = owner_of(&server, "home");
    let clock = FakeClock::install(&mut owner);
    let full = full_key(&owner);
    let inv = server.add_client("laptop", &[]);
    let mut laptop = bakare();
    laptop.env.push(("BAKARE_REPO".into(), server.repo("home")));
    laptop.env.extend(owner.env.iter().filter(|(k, _)| k.starts_with("BAKARE_CLOCK")).cloned());
    laptop.ok(&["join", inv.as_str()]);
    let src = TestDir::new()
        .file("a.txt", Rng::new(1).text(300_000))
        .file("b.bin", Rng::new(2).bytes(2 << 20))
        .file("old.bin", Rng::new(3).bytes(40 << 20));
    laptop.ok(&argv!["--key", &full, "run", src.path()]);
    fs::remove_file(src.path().join("old.bin")).unwrap();
    laptop.ok(&argv!["--key", &full, "run", src.path()]);
    let before = objects(&server.storage.path().join("home"));

    let o = laptop.run(&argv!["--key", &full, "forget", "--keep-last", "1"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("403") && o.stderr.contains("AccessDenied"), "{}", o.stderr);
    assert!(
        !o.stderr.contains(inv.split(':').nth(3).unwrap().split('@').next().unwrap()),
        "secret shown: {}",
        o.stderr
    );
    assert!(server.logged("refused: client laptop tried to delete"));

    let joined = io::joined::parse_invitation(&inv).unwrap();
    let raw =
        io::S3Backend::open_served_with(&server.repo("home"), &joined, &io::S3Tuning::default()).unwrap();
    use io::Backend;
    let e = raw.delete("config").unwrap_err().to_string();
    assert!(e.contains("403") && e.contains("AccessDenied"), "{e}");
    let e = raw.replace("config", b"not a config").unwrap_err().to_string();
    assert!(e.contains("403") && e.contains("AccessDenied"), "{e}");
    let (pack, bytes) = before.iter().find(|(k, _)| k.starts_with("packs/")).unwrap().clone();
    // Other bytes under a pack's name: they are not what the name says (packs are named by their
    // BLAKE3), refused at once.
    let mut staged = raw.stage().unwrap();
    std::io::Write::write_all(&mut staged, b"other bytes under a pack's name").unwrap();
    let started = Instant::now();
    let e = staged.commit(&pack).unwrap_err().to_string();
    assert!(e.contains("400") && e.contains("BadDigest"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "a refusal was retried: {e}");
    // Its own bytes again: a retry, which succeeds and changes nothing.
    let mut staged = raw.stage().unwrap();
    std::io::Write::write_all(&mut staged, &bytes).unwrap();
    staged.commit(&pack).unwrap();
    // A create-only write of an existing name is a no-op.
    raw.put("config", b"not a config").unwrap();
    assert_eq!(objects(&server.storage.path().join("home")), before, "a client changed the repository");

    // The owner's forget and prune, through the same server.
    owner.ok(&argv!["forget", "--keep-last", "1"]);
    assert_eq!(snapshot_ids(&owner, &full).len(), 1);
    let p = owner.ok(&argv!["--json", "prune"]).json();
    assert!(p["condemned_packs"].as_u64().unwrap() >= 1, "{p}");
    clock.advance(25 * HOUR_NS);
    let p = owner.ok(&argv!["--json", "prune"]).json();
    assert!(p["freed_now"].as_u64().unwrap() > 0, "{p}");
    let t = tempfile::tempdir().unwrap();
    owner.ok(&argv!["restore", "latest", "--target", t.path()]);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    assert_eq!(owner.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
}

/// A client with a 1 MiB quota backs up a small tree, then fails cleanly (exit 1, the quota
/// named) on 3 MiB more; its first snapshot stays whole and the repository checks clean;
/// `--list-clients` shows what it used, within the quota.
#[test]
fn a_client_over_its_quota_fails_cleanly_and_keeps_what_it_stored() {
    let server = Served::start(env!("CARGO_BIN_EXE_bakare"));
    let owner = owner_of(&server, "home");
    let full = full_key(&owner);
    let small = machine(&server, "home", "small", &["--quota", "1M"]);
    let src = TestDir::new().file("notes.txt", Rng::new(4).text(100_000));
    small.ok(&argv!["--key", &full, "run", src.path()]);
    let first = snapshot_ids(&owner, &full);
    let big = TestDir::new().file("big.bin", Rng::new(5).bytes(3 << 20));
    let o = small.run(&argv!["--key", &full, "run", big.path()]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("QuotaExceeded"), "{}", o.stderr);
    assert!(server.logged("refused: client small is at"));
    assert_eq!(snapshot_ids(&owner, &full), first);
    assert_eq!(owner.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
    let t = tempfile::tempdir().unwrap();
    owner.ok(&argv!["restore", "latest", "--target", t.path()]);
    assert_same_tree(src.path(), &restored_path(t.path(), src.path()));
    // Written at most a second after the change.
    std::thread::sleep(Duration::from_millis(1500));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bakare"))
        .args(["--json", "serve", "--list-clients", "--storage"])
        .arg(server.storage.path())
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list.as_array().unwrap().iter().find(|c| c["name"] == "small").unwrap().clone();
    let used = entry["used"].as_u64().unwrap();
    assert!(used > 0 && used <= 1 << 20, "{entry}");
    assert_eq!(entry["quota"], 1 << 20);
}

/// A server that presents another certificate than the one this machine joined (here: the
/// same server, after its certificate was made again) is refused with a message saying so, at
/// once rather than after minutes of retries; joining again with a new invitation works. A
/// client removed from a running server is refused at its next request.
#[test]
fn another_certificate_and_a_removed_client_are_refused() {
    let mut server = Served::start(env!("CARGO_BIN_EXE_bakare"));
    let owner = owner_of(&server, "home");
    let laptop = machine(&server, "home", "laptop", &[]);
    let full = full_key(&owner);
    let src = TestDir::new().file("a.txt", b"hello");
    laptop.ok(&argv!["--key", &full, "run", src.path()]);

    server.stop_with(15);
    fs::remove_file(server.storage.path().join(".serve/cert.pem")).unwrap();
    fs::remove_file(server.storage.path().join(".serve/key.pem")).unwrap();
    server.resume();
    let started = Instant::now();
    let o = owner.run(&["snapshots"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("presented a certificate with SHA-256"), "{}", o.stderr);
    assert!(o.stderr.contains("refusing to connect"), "{}", o.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "retried a wrong certificate for {:?}",
        started.elapsed()
    );
    owner.ok(&["join", server.add_client("owner-again", &["--owner"]).as_str()]);
    assert_eq!(snapshot_ids(&owner, &full).len(), 1);

    laptop.ok(&["join", server.add_client("laptop-again", &[]).as_str()]);
    assert_eq!(snapshot_ids(&laptop, &full).len(), 1);
    let removed = std::process::Command::new(env!("CARGO_BIN_EXE_bakare"))
        .args(["serve", "--remove-client", "laptop-again", "--storage"])
        .arg(server.storage.path())
        .status()
        .unwrap();
    assert!(removed.success());
    let o = laptop.run(&argv!["--key", &full, "snapshots"]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(o.stderr.contains("InvalidAccessKeyId"), "{}", o.stderr);
}

/// The relay (`serve --relay-to`) copies the repository to an S3 upstream (s3s-fs) through a
/// proxy that faults 10 % of the requests; with the upstream stopped, `--status` shows the
/// backlog and the error, and the relay catches up once it is back; after a kill -9 of the server
/// with objects not yet relayed, the restarted server resumes. The upstream ends with every
/// object the server has (the same bytes), and every snapshot restores exactly from it.
#[test]
fn the_relay_copies_upstream_through_faults_outages_and_a_kill() {
    use chaos::proxy::{Proxy, ProxyConfig};
    let Some(mut upstream) = S3Server::start() else { return };
    let mut cfg = ProxyConfig::new(std::net::SocketAddr::from(([127, 0, 0, 1], upstream.port)), 3, 100);
    cfg.stall = Duration::from_secs(3);
    let proxy = Proxy::start(cfg).unwrap();
    let env: Vec<(String, String)> = [
        ("AWS_ACCESS_KEY_ID", chaos::testkit::S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", chaos::testkit::S3_SECRET_KEY),
        ("BAKARE_S3_TIMEOUT_MS", "2000"),
        ("BAKARE_S3_RETRY_BUDGET_MS", "4000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let relay_to = upstream.url_via(proxy.port, "relay");
    let mut server =
        Served::start_with(env!("CARGO_BIN_EXE_bakare"), &["--relay-to".to_string(), relay_to], &env);
    let owner = owner_of(&server, "home");
    let full = full_key(&owner);
    let status = |server: &Served| server.status()["repos"]["home"].clone();
    let caught_up = |server: &Served| {
        let s = status(server);
        s["backlog_objects"] == 0 && s["last_error"].is_null() && !s["last_success_seconds_ago"].is_null()
    };
    let trees: Vec<TestDir> = (0..3)
        .map(|i| {
            let t = TestDir::new();
            random_tree(t.path(), 20 + i, 80);
            t
        })
        .collect();

    owner.ok(&argv!["run", trees[0].path()]);
    wait_for("the first relay", Duration::from_secs(120), || caught_up(&server));

    // Upstream away: the backlog shows, with the error; then it catches up.
    upstream.stop();
    owner.ok(&argv!["run", trees[1].path()]);
    wait_for("the relay to notice", Duration::from_secs(120), || {
        let s = status(&server);
        s["backlog_objects"].as_u64().unwrap_or(0) > 0 && !s["last_error"].is_null()
    });
    let s = status(&server);
    assert!(s["backlog_bytes"].as_u64().unwrap() > 0 && s["oldest_seconds"].is_u64(), "{s}");
    upstream.resume();
    wait_for("the relay to catch up", Duration::from_secs(180), || caught_up(&server));

    // Killed with objects not yet relayed (the upstream away again), restarted: it resumes.
    upstream.stop();
    owner.ok(&argv!["run", trees[2].path()]);
    server.stop_with(9);
    upstream.resume();
    server.resume();
    wait_for("the relay to resume after a kill", Duration::from_secs(180), || {
        caught_up(&server)
            && objects(&upstream.object_path("relay/home", "")).len()
                == objects(&server.storage.path().join("home")).len()
    });
    assert_eq!(
        objects(&upstream.object_path("relay/home", "")),
        objects(&server.storage.path().join("home")),
        "the upstream differs from the server's repository"
    );
    let st = &proxy.stats;
    let faults: u64 = [&st.dropped, &st.reset, &st.stalled, &st.delayed, &st.truncated]
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert!(faults > 0, "no request was faulted");

    let mut cloud = bakare();
    upstream.configure(&mut cloud, "relay/home");
    let ids = snapshot_ids(&cloud, &full);
    assert_eq!(ids.len(), 3);
    for t in &trees {
        let id = &ids.iter().find(|(_, p)| Path::new(p) == t.path()).unwrap().0;
        let out = tempfile::tempdir().unwrap();
        cloud.ok(&argv!["--key", &full, "restore", id, "--target", out.path()]);
        assert_same_tree(t.path(), &restored_path(out.path(), t.path()));
    }
}

/// `GET /?bakare-health` answers anyone "ok"; `GET /?bakare-status=1` answers only a request
/// signed with an owner's credential, with the clients' usage (curl signs it, as any S3 tool
/// would).
#[test]
fn health_for_anyone_and_status_for_the_owner() {
    if !chaos::testkit::tool_or_skip("curl", "BAKARE_REQUIRE_CURL") {
        return;
    }
    let server = Served::start(env!("CARGO_BIN_EXE_bakare"));
    let owner = owner_of(&server, "home");
    owner.ok(&argv!["run", TestDir::new().file("a", b"x").path()]);
    let inv_owner = server.add_client("boss", &["--owner"]);
    let inv_laptop = server.add_client("laptop", &[]);
    let base = format!("https://127.0.0.1:{}/", server.port);
    let curl = |path: &str, inv: Option<&str>| -> (String, String) {
        let mut c = std::process::Command::new("curl");
        c.args(["-sk", "-w", "\n%{http_code}", "-H", "x-amz-content-sha256:UNSIGNED-PAYLOAD"]);
        if let Some(inv) = inv {
            let j = io::joined::parse_invitation(inv).unwrap();
            c.args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
                .arg(format!("{}:{}", j.access_key, j.secret));
        }
        let out = c.arg(format!("{base}{path}")).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    assert_eq!(curl("?bakare-health", None), ("200".to_string(), "ok\n".to_string()));
    assert_eq!(curl("?bakare-status=1", None).0, "403");
    assert_eq!(curl("?bakare-status=1", Some(&inv_laptop)).0, "403");
    // Usage is written at most a second after it changes.
    wait_for("the usage in the status", Duration::from_secs(10), || {
        let (code, body) = curl("?bakare-status=1", Some(&inv_owner));
        assert_eq!(code, "200", "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["usage"]["owner"].as_u64().is_some_and(|n| n > 0)
    });
    // Anonymous S3 requests are refused too.
    assert_eq!(curl("home/config", None).0, "403");
}

/// `serve --print-systemd-unit` prints a system service running the server with the same
/// options, stopped by SIGTERM (graceful) with time for requests in flight.
#[test]
fn the_systemd_unit_runs_the_server_as_given() {
    let b = bakare();
    let unit = b
        .ok(&["serve", "--storage", "/srv/bakare", "--listen", "0.0.0.0:9443", "--print-systemd-unit"])
        .stdout_str();
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(exec.ends_with(" serve --storage /srv/bakare --listen 0.0.0.0:9443"), "{exec}");
    for line in
        ["KillSignal=SIGTERM", "TimeoutStopSec=45", "WantedBy=multi-user.target", "Restart=on-failure"]
    {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
}

/// What a hostile client (or anyone on the network) sends is refused without touching the
/// repository: bytes under a content-addressed name they do not hash to (they would stop the
/// relay for good), names outside a repository's layout (a file where a directory must be),
/// aws-chunked bodies, POST form uploads (even anonymous ones are refused before their body is
/// read), and listing prefixes that leave the repository.
#[test]
fn hostile_requests_are_refused_and_change_nothing() {
    if !chaos::testkit::tool_or_skip("curl", "BAKARE_REQUIRE_CURL") {
        return;
    }
    let server = Served::start(env!("CARGO_BIN_EXE_bakare"));
    let owner = owner_of(&server, "home");
    owner.ok(&argv!["run", TestDir::new().file("a", b"x").path()]);
    let inv = server.add_client("laptop", &[]);
    let joined = io::joined::parse_invitation(&inv).unwrap();
    let raw =
        io::S3Backend::open_served_with(&server.repo("home"), &joined, &io::S3Tuning::default()).unwrap();
    use io::Backend;
    let before = objects(&server.storage.path().join("home"));
    let forged = format!("packs/00/00{}", "1".repeat(62));
    let e = raw.put(&forged, b"not what the name says").unwrap_err().to_string();
    assert!(e.contains("BadDigest"), "{e}");
    let mut staged = raw.stage().unwrap();
    std::io::Write::write_all(&mut staged, b"not what the name says either").unwrap();
    assert!(staged.commit(&forged).unwrap_err().to_string().contains("BadDigest"));
    for key in ["gc", "packs/7f", "writers", "notes.txt", "index/short"] {
        let e = raw.put(key, b"x").unwrap_err().to_string();
        assert!(e.contains("AccessDenied"), "{key}: {e}");
    }

    let base = format!("https://127.0.0.1:{}", server.port);
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let user = format!("{}:{}", joined.access_key, joined.secret);
    let signed = ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", user.as_str()];
    // aws-chunked: refused.
    let url = format!("{base}/home/index/{}", blake3_hex(b"1"));
    let mut a = signed.to_vec();
    a.extend([
        "-H",
        "x-amz-content-sha256:STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "-H",
        "x-amz-decoded-content-length:1",
    ]);
    a.extend(["-X", "PUT", "--data-binary", "1", url.as_str()]);
    let code = curl(&a);
    assert!(code == "501" || code == "400" || code == "403", "aws-chunked answered {code}");
    // A POST form upload, anonymous, with a 4 MiB file: refused.
    let big = tempfile::NamedTempFile::new().unwrap();
    fs::write(big.path(), vec![7u8; 4 << 20]).unwrap();
    let form = format!("file=@{}", big.path().display());
    let code = curl(&["-F", "key=index/x", "-F", &form, &format!("{base}/home")]);
    assert!(code.starts_with('4') || code.starts_with('5'), "POST answered {code}");
    // Listing outside the repository.
    for prefix in ["..%2Fx%2F", "%2Fusr%2F", "a%2F..%2F..%2F"] {
        let mut a = signed.to_vec();
        a.extend(["-H", "x-amz-content-sha256:UNSIGNED-PAYLOAD"]);
        let url = format!("{base}/home?list-type=2&prefix={prefix}");
        a.push(&url);
        let code = curl(&a);
        assert_eq!(code, "400", "prefix {prefix} answered {code}");
    }
    assert_eq!(objects(&server.storage.path().join("home")), before);
    assert_eq!(owner.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
}

fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}
