//! A local network made of network namespaces, for tests of what nodes do on a LAN (discovery
//! by multicast DNS, serving each other): N node namespaces, each with an `eth0` joined to one
//! Linux bridge that lives in a namespace of its own, so that nothing in the host's namespace
//! changes. Packet loss can be added to every node with iptables. Needs root and iproute2;
//! everything is removed when the [`Lan`] is dropped, panics included.
//!
//! Panicking is how test support reports failure, but building a LAN returns the reason it
//! cannot be built, so that a test can skip (see `chaos/tests/network.rs`).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::testkit::is_root;

/// The first of these commands that runs (`NAME --version` succeeds), or None.
pub fn tool(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| Command::new(n).arg("--version").output().is_ok_and(|o| o.status.success()))
        .map(|n| n.to_string())
}

/// Runs `args` (the program first), and says what failed, with its stderr, if it did.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let (program, rest) = args.split_first().ok_or("sh: no command")?;
    let o = Command::new(program).args(rest).output().map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

/// LANs built by this process so far: tests of one process run in parallel threads.
static BUILT: AtomicU32 = AtomicU32::new(0);

/// N nodes on one bridge. Node `i` is namespace [`Lan::ns`]`(i)`, its `eth0` has address
/// [`Lan::addr`]`(i)` in a /24 of its own, `lo` is up, and multicast flows (the bridge does no
/// IGMP snooping, and each node routes 224.0.0.0/4 to `eth0`).
pub struct Lan {
    /// The bridge's namespace.
    bridge: String,
    nodes: Vec<String>,
    /// The first three bytes of the addresses: 10.X.Y.
    net: [u8; 3],
    /// The iptables found when loss was first set.
    iptables: std::sync::OnceLock<String>,
}

impl Lan {
    /// Builds a LAN of `nodes` nodes (1 to 250), or says why it cannot be built here (not
    /// root, no `ip`, namespaces not allowed).
    pub fn new(nodes: usize) -> Result<Lan, String> {
        if !is_root() {
            return Err("not root: network namespaces need CAP_NET_ADMIN".into());
        }
        if !Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success()) {
            return Err("`ip` (iproute2) is not installed".into());
        }
        if !(1..=250).contains(&nodes) {
            return Err(format!("a LAN of {nodes} nodes: between 1 and 250, please"));
        }
        let pid = std::process::id();
        let k = BUILT.fetch_add(1, Ordering::Relaxed);
        // Unique per process and per LAN. Namespace names are file names; interface names (15
        // bytes at most) live inside the namespaces, so they need not be unique.
        let prefix = format!("bklan{pid}-{k}");
        // The /24 from the process id and the LAN's number, so parallel processes do not share
        // addresses (they would not reach each other anyway: each LAN has its own bridge).
        let tag = pid.wrapping_mul(8).wrapping_add(k) & 0xffff;
        let mut lan = Lan {
            bridge: format!("{prefix}-br"),
            nodes: Vec::new(),
            net: [10, (tag >> 8) as u8, tag as u8],
            iptables: std::sync::OnceLock::new(),
        };
        // From here on, dropping `lan` removes whatever was made.
        sh(&["ip", "netns", "add", &lan.bridge])?;
        let br = lan.bridge.clone();
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        sh(&["ip", "-n", &br, "link", "set", "lo", "up"])?;
        for i in 0..nodes {
            let ns = format!("{prefix}-n{i}");
            sh(&["ip", "netns", "add", &ns])?;
            lan.nodes.push(ns.clone());
            // Both ends are made in the bridge's namespace's view, the node's end straight in
            // the node's namespace: the host's namespace never sees them.
            let port = format!("p{i}");
            sh(&[
                "ip", "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            sh(&["ip", "-n", &br, "link", "set", &port, "master", "br0"])?;
            sh(&["ip", "-n", &br, "link", "set", &port, "up"])?;
            let addr = format!("{}/24", lan.addr(i));
            sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lan)
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a LAN has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The name of node `i`'s namespace (`ip netns exec NAME ...`).
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Node `i`'s address on the LAN: 10.X.Y.(i+1).
    pub fn addr(&self, i: usize) -> IpAddr {
        let [a, b, c] = self.net;
        IpAddr::V4(Ipv4Addr::new(a, b, c, u8::try_from(i + 1).unwrap_or(u8::MAX)))
    }

    /// A command that runs `program` in node `i`'s namespace (`ip netns exec NS program`); add
    /// its arguments.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(i)]).arg(program);
        c
    }

    /// Runs `args` (the program first) in node `i`'s namespace.
    pub fn sh(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let mut v = vec!["ip", "netns", "exec", self.ns(i)];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Drops `percent` % of the packets into and out of every node (iptables `statistic`
    /// rules in INPUT and OUTPUT), replacing the loss set before; 0 removes it.
    pub fn set_loss(&self, percent: u32) -> Result<(), String> {
        if percent > 100 {
            return Err(format!("{percent} % loss"));
        }
        let iptables = match self.iptables.get() {
            Some(t) => t.clone(),
            None => {
                let t = tool(&["iptables", "iptables-nft", "iptables-legacy"])
                    .ok_or("no iptables, iptables-nft or iptables-legacy is installed")?;
                self.iptables.get_or_init(|| t).clone()
            }
        };
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        for i in 0..self.len() {
            for chain in ["INPUT", "OUTPUT"] {
                // The node's namespace is this LAN's own: its chains hold nothing else.
                self.sh(i, &[&iptables, "-F", chain])?;
                if percent > 0 {
                    self.sh(
                        i,
                        &[
                            &iptables,
                            "-A",
                            chain,
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            &probability,
                            "-j",
                            "DROP",
                        ],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Packets dropped so far by the loss rules of node `i`'s `chain` (INPUT or OUTPUT); 0
    /// without loss.
    pub fn dropped(&self, i: usize, chain: &str) -> Result<u64, String> {
        let Some(iptables) = self.iptables.get() else { return Ok(0) };
        let o = self
            .command(i, iptables)
            .args(["-L", chain, "-v", "-n", "-x"])
            .output()
            .map_err(|e| format!("{iptables} -L {chain} in {}: {e}", self.ns(i)))?;
        let out = String::from_utf8_lossy(&o.stdout);
        Ok(out
            .lines()
            .filter(|l| l.contains("DROP") && l.contains("statistic"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each veth pair, and with it the pair. A
        // process still running in a namespace keeps it (nameless) until it exits: tests stop
        // theirs first.
        for ns in &self.nodes {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "netns", "del", &self.bridge]);
    }
}
