//! Discovery on a LAN (`chaos::lan`: network namespaces on one bridge): what nodes announce with
//! the `peers` crate is found, whole and right, by a browse on another node; a node that stops
//! announcing is no longer listed; 10 % packet loss each way only slows discovery down; and a
//! node with no network browses at once to nothing. Announcing and browsing run in
//! `peers-probe`, in the nodes' namespaces. Skipped, visibly, where namespaces cannot be built
//! (not root, no iproute2), unless BAKARE_REQUIRE_NETNS is set (`.ci/run`): then that is a
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use chaos::lan::Lan;
use chaos::testkit::skipped;
use serde_json::Value;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A LAN of `nodes` nodes, or None after saying why there cannot be one here (a failure when
/// BAKARE_REQUIRE_NETNS is set).
fn lan(nodes: usize) -> Option<Lan> {
    let required = std::env::var_os("BAKARE_REQUIRE_NETNS").is_some();
    match Lan::new(nodes) {
        Ok(l) => Some(l),
        Err(why) => {
            let why = format!("discovery on a LAN needs network namespaces: {why}");
            assert!(!required, "BAKARE_REQUIRE_NETNS is set, and the discovery test cannot run: {why}");
            skipped(&why);
            None
        }
    }
}

/// `peers-probe announce` running in a node; stopped (killed) when dropped if it is still
/// running. Declared after the [`Lan`], so dropped before it.
struct Announcing {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Announcing {
    fn start(lan: &Lan, node: usize, name: &str, roles: &str, sha: Option<&str>, free: Option<u64>) -> Self {
        let free = free.map_or("-".to_string(), |f| f.to_string());
        let mut child = lan
            .command(node, env!("CARGO_BIN_EXE_peers-probe"))
            .args(["announce", name, "8443", roles, sha.unwrap_or("-"), &free])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut me = Announcing { child, stdin, stdout };
        let line = me.line();
        assert_eq!(line, format!("announced {name}._bakare._tcp.local."));
        me
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).unwrap();
        s.trim_end().to_string()
    }

    fn set_free(&mut self, free: u64) {
        writeln!(self.stdin.as_mut().unwrap(), "free {free}").unwrap();
        assert_eq!(self.line(), "free set");
    }

    /// Closes stdin: the probe says goodbye and exits.
    fn stop(mut self) {
        drop(self.stdin.take());
        assert_eq!(self.line(), "stopped");
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Announcing {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one browse in node `node` printed: the nodes found (by name), the skipped, and how
/// long it took.
struct Seen {
    found: Vec<Value>,
    skipped: Vec<Value>,
    elapsed: Duration,
}

impl Seen {
    fn node(&self, name: &str) -> Option<&Value> {
        self.found.iter().find(|f| f["name"] == name)
    }
}

fn browse(lan: &Lan, node: usize, seconds: f64, expect: Option<usize>) -> Seen {
    let mut c = lan.command(node, env!("CARGO_BIN_EXE_peers-probe"));
    c.args(["browse", &seconds.to_string()]);
    if let Some(n) = expect {
        c.arg(n.to_string());
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut seen = Seen { found: Vec::new(), skipped: Vec::new(), elapsed: Duration::ZERO };
    for line in String::from_utf8(o.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(ms) = v["elapsed_ms"].as_u64() {
            seen.elapsed = Duration::from_millis(ms);
        } else if v.get("skipped").is_some() {
            seen.skipped.push(v);
        } else {
            seen.found.push(v);
        }
    }
    seen
}

/// The IPv4 addresses of a node found.
fn v4(found: &Value) -> Vec<IpAddr> {
    found["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse::<IpAddr>().unwrap())
        .filter(IpAddr::is_ipv4)
        .collect()
}

fn check_both(lan: &Lan, seen: &Seen) {
    assert!(seen.skipped.is_empty(), "{:?}", seen.skipped);
    assert_eq!(seen.found.len(), 2, "{:?}", seen.found);
    let alpha = seen.node("alpha").expect("alpha not found");
    assert_eq!(alpha["roles"], serde_json::json!(["persister"]));
    assert_eq!(alpha["sha256"], SHA);
    assert_eq!(alpha["port"], 8443);
    assert_eq!(alpha["version"], 1);
    assert_eq!(v4(alpha), vec![lan.addr(0)], "{alpha}");
    let beta = seen.node("beta").expect("beta not found");
    assert_eq!(beta["roles"], serde_json::json!(["persister", "publisher"]));
    assert_eq!(beta["sha256"], Value::Null);
    assert_eq!(v4(beta), vec![lan.addr(1)], "{beta}");
    // IPv4 first.
    assert!(beta["addresses"][0].as_str().unwrap().parse::<IpAddr>().unwrap().is_ipv4());
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn announcements_in_two_nodes_are_found_by_a_third_and_a_goodbye_removes_them() {
    let Some(lan) = lan(3) else { return };
    let alpha = Announcing::start(&lan, 0, "alpha", "persister", Some(SHA), Some(1 << 40));
    let mut beta = Announcing::start(&lan, 1, "beta", "publisher,persister", None, None);

    let seen = browse(&lan, 2, 15.0, Some(2));
    check_both(&lan, &seen);
    assert_eq!(seen.node("alpha").unwrap()["free"], 1u64 << 40);
    assert_eq!(seen.node("beta").unwrap()["free"], Value::Null);
    eprintln!("both found in {:?}", seen.elapsed);

    // A new free space is announced again, and seen by the next browse.
    beta.set_free(12345);
    let seen = browse(&lan, 2, 15.0, Some(2));
    check_both(&lan, &seen);
    assert_eq!(seen.node("beta").unwrap()["free"], 12345);

    // alpha stops: a browse for its whole timeout finds beta only.
    alpha.stop();
    let seen = browse(&lan, 2, 3.0, None);
    assert_eq!(seen.found.len(), 1, "{:?}", seen.found);
    assert!(seen.node("beta").is_some());
    assert!(seen.node("alpha").is_none());
}

#[test]
fn with_ten_percent_loss_each_way_both_are_still_found() {
    let Some(lan) = lan(3) else { return };
    if let Err(why) = lan.set_loss(10) {
        let required = std::env::var_os("BAKARE_REQUIRE_NETNS").is_some();
        assert!(!required, "BAKARE_REQUIRE_NETNS is set, and loss cannot be set: {why}");
        return skipped(&format!("packet loss on the LAN: {why}"));
    }
    let _alpha = Announcing::start(&lan, 0, "alpha", "persister", Some(SHA), Some(7));
    let _beta = Announcing::start(&lan, 1, "beta", "persister,publisher", None, None);
    let seen = browse(&lan, 2, 60.0, Some(2));
    check_both(&lan, &seen);
    let dropped: u64 = (0..3).flat_map(|i| ["INPUT", "OUTPUT"].map(|c| lan.dropped(i, c).unwrap())).sum();
    eprintln!("with 10% loss, both found in {:?} ({dropped} packets dropped so far)", seen.elapsed);
}

#[test]
fn a_node_without_a_network_browses_to_nothing_at_once() {
    let Some(lan) = lan(1) else { return };
    lan.sh(0, &["ip", "link", "set", "eth0", "down"]).unwrap();
    let t0 = Instant::now();
    let seen = browse(&lan, 0, 20.0, None);
    assert!(seen.found.is_empty() && seen.skipped.is_empty());
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
}

/// Not a check but a measurement: how long a browse takes to find two nodes already
/// announcing, median of five (1.5 s apart), without loss and with 10 % each way.
#[test]
fn time_to_find_two_nodes_with_and_without_loss() {
    let Some(lan) = lan(3) else { return };
    let _alpha = Announcing::start(&lan, 0, "alpha", "persister", Some(SHA), Some(7));
    let _beta = Announcing::start(&lan, 1, "beta", "persister,publisher", None, None);
    // Past their probing and first announcements.
    std::thread::sleep(Duration::from_secs(3));
    let mut report = Vec::new();
    for loss in [0, 10] {
        if let Err(why) = lan.set_loss(loss) {
            return skipped(&format!("packet loss on the LAN: {why}"));
        }
        let times: Vec<Duration> = (0..5)
            .map(|_| {
                // A responder multicasts a record at most once a second (RFC 6762 §6): a browse
                // right after another is answered only when it asks again, a second later.
                std::thread::sleep(Duration::from_millis(1500));
                let seen = browse(&lan, 2, 60.0, Some(2));
                check_both(&lan, &seen);
                seen.elapsed
            })
            .collect();
        report.push(format!("{loss}% loss: median {:?} of {times:?}", median(times.clone())));
    }
    eprintln!("time for a browse to find two nodes: {}", report.join("; "));
}
