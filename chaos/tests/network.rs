//! Bad networks between bakare and a real S3 server (s3s-fs): a seeded proxy that drops, resets,
//! stalls, delays and truncates connections, and real packet loss (iptables in a network
//! namespace). A backup through them completes and restores the same bytes, or, when nothing
//! gets through, fails within its retry budget with a clear error and leaves a valid repository.
//! Skipped, with a message the test runner shows, where s3s-fs is not installed (or, for packet
//! loss, where namespaces or the tools are not available), unless BAKARE_REQUIRE_S3 (and, for
//! packet loss, BAKARE_REQUIRE_NETNS) is set, as `.ci/run` sets them: then that is a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos::argv;
use chaos::lan::{sh, tool};
use chaos::proxy::{FaultKind, Proxy, ProxyConfig};
use chaos::testkit::{
    assert_same_tree, is_root, restored_path, s3s_fs, skipped, Bakare, Rng, S3Server, TestDir, S3_ACCESS_KEY,
    S3_SECRET_KEY,
};

fn bakare() -> Bakare {
    Bakare::new(env!("CARGO_BIN_EXE_bakare-faulty"))
}

fn tune(b: &mut Bakare, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        b.env.push((k.to_string(), v.to_string()));
    }
}

/// A few large random files (whole multipart uploads) and some hundreds of small ones; returns
/// the tree and its size in bytes.
fn corpus(seed: u64, big: usize, big_mib: (u64, u64), small: usize) -> (TestDir, u64) {
    let mut rng = Rng::new(seed);
    let mut t = TestDir::new();
    let mut total = 0;
    for i in 0..big {
        let n = ((big_mib.0 + rng.below(big_mib.1 - big_mib.0 + 1)) << 20) as usize;
        total += n as u64;
        t = t.file(format!("big/f{i}.bin"), rng.bytes(n));
    }
    for i in 0..small {
        let n = rng.below(40_000) as usize;
        total += n as u64;
        let data = if i % 2 == 0 { rng.text(n) } else { rng.bytes(n) };
        t = t.file(format!("small/d{}/s{i}", i % 17), data);
    }
    (t, total)
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn upstream(server: &S3Server) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], server.port))
}

#[test]
fn ten_percent_of_exchanges_faulted_backup_restore_and_check_complete() {
    let Some(server) = S3Server::start() else { return };
    let (src, total) = corpus(61, 5, (30, 40), 300);

    // The same data straight to the server, for comparison.
    let mut direct = bakare();
    server.configure(&mut direct, "direct");
    direct.ok(&argv!["init"]);
    let t0 = Instant::now();
    direct.ok(&argv!["run", src.path()]);
    let direct_time = t0.elapsed();

    let proxy = Proxy::start(ProxyConfig::new(upstream(&server), 0xB0BA, 100)).unwrap();
    let mut b = bakare();
    server.configure(&mut b, "through-proxy");
    // Stalls (8 s of silence) outlast the 5 s request timeout and are retried.
    tune(
        &mut b,
        &[
            ("BAKARE_REPO", &server.url_via(proxy.port, "through-proxy")),
            ("BAKARE_S3_TIMEOUT_MS", "5000"),
            ("BAKARE_S3_CONNECT_TIMEOUT_MS", "1000"),
            ("BAKARE_S3_RETRIES", "10"),
            ("BAKARE_S3_RETRY_BUDGET_MS", "60000"),
        ],
    );
    b.ok(&argv!["init"]);
    let t0 = Instant::now();
    let run = b.ok(&argv!["--json", "run", src.path()]).json();
    let proxy_time = t0.elapsed();
    let id = run["snapshot"].as_str().unwrap().to_string();
    let after_backup = proxy.stats.summary();

    let target = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    b.ok(&argv!["restore", &id, "--target", target.path()]);
    let restore_time = t0.elapsed();
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    let c = b.ok(&argv!["--json", "check", "--read-data"]).json();
    assert_eq!(c["ok"], true, "{c}");

    eprintln!("corpus: {:.1} MiB", total as f64 / (1 << 20) as f64);
    eprintln!("backup direct: {:.1} s, {:.1} MiB/s", direct_time.as_secs_f64(), mib_s(total, direct_time));
    eprintln!(
        "backup through the 10% proxy: {:.1} s, {:.1} MiB/s",
        proxy_time.as_secs_f64(),
        mib_s(total, proxy_time)
    );
    eprintln!(
        "restore through the 10% proxy: {:.1} s, {:.1} MiB/s",
        restore_time.as_secs_f64(),
        mib_s(total, restore_time)
    );
    eprintln!("proxy after the backup: {after_backup}");
    eprintln!("proxy at the end: {}", proxy.stats.summary());
    // The faults did happen: otherwise this test proves nothing.
    assert!(proxy.stats.faulted() > 0, "{}", proxy.stats.summary());
}

#[test]
fn every_exchange_faulted_fails_within_the_budget_and_leaves_a_valid_repository() {
    let Some(server) = S3Server::start() else { return };
    let (src, _) = corpus(62, 1, (20, 20), 50);
    let mut b = bakare();
    server.configure(&mut b, "dead");
    b.ok(&argv!["init"]);

    // Every exchange fails before its request could complete: fault_within is smaller than a
    // signed request's headers. Delay is left out: it would let the connection through.
    let mut cfg = ProxyConfig::new(upstream(&server), 0xDEAD, 1000);
    cfg.kinds = vec![FaultKind::Drop, FaultKind::Reset, FaultKind::Stall, FaultKind::Truncate];
    cfg.fault_within = 200;
    cfg.stall = Duration::from_secs(3);
    let proxy = Proxy::start(cfg).unwrap();
    // The same HOME (and key) as `b`, through the proxy.
    let mut cmd = b.command(&argv!["--json", "run", src.path()]);
    for (k, v) in [
        ("BAKARE_REPO", server.url_via(proxy.port, "dead")),
        ("BAKARE_S3_TIMEOUT_MS", "1000".into()),
        ("BAKARE_S3_CONNECT_TIMEOUT_MS", "500".into()),
        ("BAKARE_S3_RETRIES", "10".into()),
        ("BAKARE_S3_RETRY_BUDGET_MS", "3000".into()),
    ] {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let o = chaos::testkit::run_measured(cmd);
    let failed_after = t0.elapsed();
    eprintln!(
        "100% faulted: exit {} after {:.1} s; {}\nstderr: {}",
        o.code,
        failed_after.as_secs_f64(),
        proxy.stats.summary(),
        o.stderr.trim()
    );
    assert_eq!(o.code, 1, "{}\n{}", o.stderr, o.stdout_str());
    assert!(o.stderr.contains("bakare: error:") && o.stderr.contains("object"), "{}", o.stderr);
    // The budget bounds when the last retry starts; that attempt then has its own timeout, and the
    // process its start-up and shut-down.
    assert!(failed_after < Duration::from_secs(12), "took {failed_after:?}");
    assert!(proxy.stats.faulted() >= 2, "{}", proxy.stats.summary());
    drop(proxy);

    // Straight to the server: the repository is valid, and a backup succeeds and restores.
    let c = b.ok(&argv!["--json", "check"]).json();
    assert_eq!(c["ok"], true, "{c}");
    let id = b.ok(&argv!["--json", "run", src.path()]).json()["snapshot"].as_str().unwrap().to_string();
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", &id, "--target", target.path()]);
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
}

#[test]
fn uploads_reset_or_stalled_after_sending_are_retried_whole() {
    // object_store does not retry a create-only PUT whose connection broke after the request
    // was sent (it cannot know that repeating it is harmless); the backend's own retry layer
    // must (io/src/s3.rs).
    let Some(server) = S3Server::start() else { return };
    let (src, _) = corpus(64, 2, (30, 30), 100);
    // Half the PUTs break within their first 2 KiB, so that small (create-only) objects, whose
    // requests are about that size, are hit too.
    let mut cfg = ProxyConfig::new(upstream(&server), 0x9075, 500);
    cfg.only_method = Some("PUT".into());
    cfg.kinds = vec![FaultKind::Reset, FaultKind::Stall];
    cfg.fault_within = 2048;
    cfg.stall = Duration::from_secs(3);
    let proxy = Proxy::start(cfg).unwrap();
    let mut b = bakare();
    server.configure(&mut b, "puts");
    b.ok(&argv!["init"]);
    tune(
        &mut b,
        &[
            ("BAKARE_REPO", &server.url_via(proxy.port, "puts")),
            ("BAKARE_S3_TIMEOUT_MS", "2000"),
            ("BAKARE_S3_RETRY_BUDGET_MS", "60000"),
        ],
    );
    let id = b.ok(&argv!["--json", "run", src.path()]).json()["snapshot"].as_str().unwrap().to_string();
    eprintln!("PUTs faulted: {}", proxy.stats.summary());
    assert!(proxy.stats.faulted() >= 3, "{}", proxy.stats.summary());
    // Straight to the server: everything landed, once and whole.
    b.env.push(("BAKARE_REPO".into(), server.url("puts")));
    let target = tempfile::tempdir().unwrap();
    b.ok(&argv!["restore", &id, "--target", target.path()]);
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    assert_eq!(b.ok(&argv!["--json", "check", "--read-data"]).json()["ok"], true);
}

/// A network namespace holding an s3s-fs server, joined to this one by a veth pair, with
/// iptables dropping 10% of the packets that reach the namespace. Everything is removed when
/// dropped, panics included.
struct LossyNet {
    ns: String,
    veth: String,
    server: Option<Child>,
    data: tempfile::TempDir,
    addr: String,
    iptables: String,
}

impl LossyNet {
    /// Builds it, or says why it cannot be built here.
    fn setup(s3s: PathBuf) -> Result<LossyNet, String> {
        if !is_root() {
            return Err("not root: network namespaces need CAP_NET_ADMIN".into());
        }
        if !Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success()) {
            return Err("`ip` (iproute2) is not installed".into());
        }
        let iptables = tool(&["iptables", "iptables-nft", "iptables-legacy"])
            .ok_or("no iptables, iptables-nft or iptables-legacy is installed")?;
        let pid = std::process::id();
        // Unique per process, and short: interface names hold 15 bytes.
        let ns = format!("bkns{pid}");
        let veth = format!("bkh{pid}");
        let peer = format!("bkp{pid}");
        // A /24 per process too, so parallel runs do not route into each other.
        let net = format!("10.77.{}", pid % 250);
        sh(&["ip", "netns", "add", &ns])?;
        let mut me = LossyNet {
            ns: ns.clone(),
            veth: veth.clone(),
            server: None,
            data: tempfile::tempdir().map_err(|e| e.to_string())?,
            addr: format!("{net}.2:9000"),
            iptables: iptables.clone(),
        };
        let inside = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", ns.as_str()];
            v.extend_from_slice(args);
            sh(&v)
        };
        sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        sh(&["ip", "link", "set", &peer, "netns", &ns])?;
        sh(&["ip", "addr", "add", &format!("{net}.1/24"), "dev", &veth])?;
        sh(&["ip", "link", "set", &veth, "up"])?;
        inside(&["ip", "addr", "add", &format!("{net}.2/24"), "dev", &peer])?;
        inside(&["ip", "link", "set", &peer, "up"])?;
        inside(&["ip", "link", "set", "lo", "up"])?;
        for chain in ["INPUT", "OUTPUT"] {
            inside(&[
                &iptables,
                "-A",
                chain,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.1",
                "-j",
                "DROP",
            ])?;
        }
        std::fs::create_dir(me.data.path().join("bakare")).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&s3s)
            .args(["--host", &format!("{net}.2"), "--port", "9000"])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(me.data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting s3s-fs in the namespace: {e}"))?;
        me.server = Some(child);
        let addr: SocketAddr = me.addr.parse().map_err(|e| format!("{e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if Instant::now() > deadline {
                // Not a skip: everything was set up, the server just does not answer.
                panic!("s3s-fs did not start in namespace {ns} on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// Packets the DROP rule of `chain` (INPUT or OUTPUT) has dropped so far.
    fn dropped(&self, chain: &str) -> u64 {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.ns, &self.iptables, "-L", chain, "-v", "-n", "-x"])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out
            .lines()
            .find(|l| l.contains("DROP") && l.contains("statistic"))
            .unwrap_or_else(|| panic!("{out}"));
        line.split_whitespace().next().unwrap().parse().unwrap()
    }

    fn configure(&self, b: &mut Bakare, prefix: &str) {
        b.env.push(("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()));
        b.env.push(("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()));
        b.env.push(("BAKARE_REPO".into(), format!("s3:http://{}/bakare/{prefix}", self.addr)));
    }
}

impl Drop for LossyNet {
    fn drop(&mut self) {
        // `ip netns exec` runs the server as its own child: killing the wrapper is enough (it
        // execs, so it is the server itself).
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deleting the namespace deletes the peer end, and with it the pair; the host end is
        // deleted explicitly in case the namespace is gone already.
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = sh(&["ip", "link", "del", &self.veth]);
    }
}

/// Real packet loss in both directions: 10 % of the packets into the server's namespace and
/// 10 % of those out of it, so requests and responses (restores, `check --read-data`) both
/// lose data. Skipped, visibly, without s3s-fs, root, iproute2 or iptables, unless
/// BAKARE_REQUIRE_NETNS is set (`.ci/run`), which makes that a failure.
#[test]
fn real_packet_loss_backup_and_restore_are_identical() {
    let required = std::env::var_os("BAKARE_REQUIRE_NETNS").is_some();
    let skip = |why: &str| {
        assert!(!required, "BAKARE_REQUIRE_NETNS is set, and the packet-loss test cannot run: {why}");
        skipped(why);
    };
    let Some(s3s) = s3s_fs() else {
        return skip("s3s-fs is not installed");
    };
    let net = match LossyNet::setup(s3s) {
        Ok(n) => n,
        Err(why) => return skip(&format!("real packet loss needs a network namespace: {why}")),
    };
    let (src, total) = corpus(63, 2, (25, 30), 200);
    let mut b = bakare();
    net.configure(&mut b, "lossy");
    // Lost packets cost retransmissions (200 ms at least each): slow, but a request should not
    // need a retry, so the timeout is generous.
    tune(&mut b, &[("BAKARE_S3_TIMEOUT_MS", "60000"), ("BAKARE_S3_CONNECT_TIMEOUT_MS", "5000")]);
    let t0 = Instant::now();
    b.ok(&argv!["init"]);
    let id = b.ok(&argv!["--json", "run", src.path()]).json()["snapshot"].as_str().unwrap().to_string();
    let backup = t0.elapsed();
    let target = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    b.ok(&argv!["restore", &id, "--target", target.path()]);
    let restore = t0.elapsed();
    assert_same_tree(src.path(), &restored_path(target.path(), src.path()));
    let o = b.ok(&argv!["check", "--read-data"]);
    assert!(o.stdout_str().contains("no damage found"), "{}", o.stdout_str());
    let (inward, outward) = (net.dropped("INPUT"), net.dropped("OUTPUT"));
    eprintln!(
        "10% packet loss each way ({}, {inward} packets dropped in, {outward} out): {:.1} MiB backed up \
         in {:.1} s ({:.1} MiB/s), restored in {:.1} s ({:.1} MiB/s)",
        net.ns,
        total as f64 / (1 << 20) as f64,
        backup.as_secs_f64(),
        mib_s(total, backup),
        restore.as_secs_f64(),
        mib_s(total, restore)
    );
    // The loss was real both ways: otherwise this test proves nothing.
    assert!(inward > 100 && outward > 100, "only {inward} packets dropped in and {outward} out");
}
