//! Peer-to-peer backups between friends: finding nodes on the local network (DNS-SD over multicast DNS), and auditing what they keep.
//!
//! A persister (a node running `bakare serve`) announces itself as a `_bakare._tcp.local.`
//! service whose instance name is the node's name, with a TXT record saying what it does, the
//! SHA-256 of its certificate and how much a new friend may store; [`browse`] lists what answers
//! on the local network. Nothing found here is trusted: pairing is explicit, elsewhere. Every TXT
//! value is checked and bounded ([`txt`]), and an entry that does not check out is skipped, not
//! half used.
#![forbid(unsafe_code)]

pub mod audit;
pub mod txt;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ResolvedService, ServiceDaemon, ServiceEvent, ServiceInfo};

pub use txt::{valid_name, valid_sha256};

/// The DNS-SD service type bakare nodes announce.
pub const SERVICE: &str = "_bakare._tcp.local.";

/// At most this many distinct names are kept by one [`browse`]: a hostile host could announce
/// any number of them. Names past it are counted in [`Browse::ignored`].
const MAX_NAMES: usize = 1024;

/// At most this many addresses are kept for a node (IPv4 first); a hostile one could give any
/// number.
const MAX_ADDRESSES: usize = 16;

/// How long dropping an [`Announcer`] waits for its goodbye to be sent, and for its daemon to
/// stop.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something given to this crate, or received from the network, is not valid.
    #[error("{0}")]
    Invalid(String),
    /// The mDNS daemon failed to do something.
    #[error("{context}: {source}")]
    Mdns { context: String, source: mdns_sd::Error },
}

impl Error {
    fn mdns(context: impl Into<String>) -> impl FnOnce(mdns_sd::Error) -> Error {
        let context = context.into();
        move |source| Error::Mdns { context, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a node does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Keeps friends' backups (runs `bakare serve`).
    Persister,
    /// Backs up to friends.
    Publisher,
}

impl Role {
    /// The role as written in TXT.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Persister => "persister",
            Role::Publisher => "publisher",
        }
    }
}

/// What this node announces about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The node's name: 1 to 63 of `[A-Za-z0-9-]` ([`valid_name`]). The DNS-SD instance name,
    /// and with `.local.` the mDNS host name.
    pub name: String,
    /// The port `bakare serve` listens on.
    pub port: u16,
    /// What the node does; at least one.
    pub roles: Vec<Role>,
    /// The SHA-256 of the node's TLS certificate (64 lower-case hex digits), for persisters.
    pub sha256: Option<String>,
    /// Bytes a new friend may store on the node.
    pub free: Option<u64>,
}

impl Announcement {
    /// The service this announcement registers, after checking it. Its addresses follow the
    /// interfaces (`enable_addr_auto`).
    fn service(&self) -> Result<ServiceInfo> {
        if !valid_name(&self.name) {
            return Err(Error::Invalid(format!(
                "node name {} is not 1 to 63 letters, digits and dashes",
                txt::shown(self.name.as_bytes())
            )));
        }
        let props = txt::encode(&self.roles, self.sha256.as_deref(), self.free)?;
        // The name is one plain DNS label: nothing to sanitise in the host name.
        let host = format!("{}.local.", self.name);
        ServiceInfo::new(SERVICE, &self.name, &host, (), self.port, &props[..])
            .map(ServiceInfo::enable_addr_auto)
            .map_err(Error::mdns(format!("describing service {}", self.name)))
    }
}

/// An announcement being made: the node answers for its service until this is dropped, which
/// sends a goodbye (so browsers forget it at once) and stops the mDNS daemon.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
    /// What is announced now, for [`Announcer::set_free`].
    current: Mutex<Announcement>,
}

/// Starts announcing `a` on every interface, as long as the returned [`Announcer`] lives.
pub fn announce(a: &Announcement) -> Result<Announcer> {
    let service = a.service()?;
    let fullname = service.get_fullname().to_string();
    let daemon = ServiceDaemon::new().map_err(Error::mdns("starting the mDNS daemon"))?;
    if let Err(e) = daemon.register(service) {
        let _ = daemon.shutdown();
        return Err(Error::mdns(format!("announcing {fullname}"))(e));
    }
    Ok(Announcer { daemon, fullname, current: Mutex::new(a.clone()) })
}

impl Announcer {
    /// Changes the free space announced: registers the service again with the new TXT record,
    /// which the daemon announces at once.
    pub fn set_free(&self, free: Option<u64>) -> Result<()> {
        // A panic while holding the lock cannot leave the announcement half written: it is
        // replaced whole.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let next = Announcement { free, ..current.clone() };
        let service = next.service()?;
        self.daemon.register(service).map_err(Error::mdns(format!("announcing {} again", self.fullname)))?;
        *current = next;
        Ok(())
    }

    /// The DNS-SD full name announced: `<name>._bakare._tcp.local.`.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // Best effort: waits (boundedly) for the goodbye to go out before stopping the daemon.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(GOODBYE_WAIT);
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = done.recv_timeout(GOODBYE_WAIT);
        }
    }
}

/// A node found on the local network, its TXT record checked. Nothing here is trusted.
#[derive(Clone, Debug)]
pub struct Found {
    /// The node's name ([`valid_name`]).
    pub name: String,
    /// The addresses it gave (browsing asks over IPv4, so these are mostly IPv4): sorted, IPv4
    /// first, no duplicates, at most 16.
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    /// Canonical order (persister first), no duplicates, at least one.
    pub roles: Vec<Role>,
    /// The SHA-256 of its certificate as it says: 64 lower-case hex digits.
    pub sha256: Option<String>,
    pub free: Option<u64>,
    /// The version of its TXT keys (1).
    pub version: u32,
}

/// A service found but not listed, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// Its DNS-SD full name, escaped and shortened ([`txt::shown`]).
    pub fullname: String,
    pub reason: String,
}

/// All that one [`browse_all`] saw.
#[derive(Clone, Debug, Default)]
pub struct Browse {
    /// Valid nodes, one per name (the last resolution of each, with the addresses of all),
    /// sorted by name.
    pub found: Vec<Found>,
    /// Services whose name or TXT record did not check out, sorted by full name.
    pub skipped: Vec<Skipped>,
    /// Services not even looked at because [`MAX_NAMES`] names had been seen already.
    pub ignored: usize,
}

/// Every node that resolved within `timeout`, deduplicated by name and sorted by name. Entries
/// with an invalid name or TXT record are left out; [`browse_all`] says which and why.
pub fn browse(timeout: Duration) -> Result<Vec<Found>> {
    Ok(browse_all(timeout)?.found)
}

/// Like [`browse`], with what was skipped. Asks over IPv4 only: link-local IPv6 addresses are of
/// no use without their interface, which an `IpAddr` does not hold (see `browse_with`). Returns
/// at once, with nothing, when no IPv4 interface but loopback is up (there is nobody to ask);
/// otherwise after `timeout`. A service that says goodbye within it is not listed.
pub fn browse_all(timeout: Duration) -> Result<Browse> {
    browse_with(timeout, None)
}

/// Like [`browse_all`], but returns as soon as `done` says what was found so far is enough
/// (it is asked after each change), e.g. when a given node has answered.
pub fn browse_until(timeout: Duration, mut done: impl FnMut(&Browse) -> bool) -> Result<Browse> {
    browse_with(timeout, Some(&mut done))
}

/// [`browse_until`], `done` being optional (without it, nothing is summed up before the end).
fn browse_with(timeout: Duration, done: Option<&mut dyn FnMut(&Browse) -> bool>) -> Result<Browse> {
    let deadline = Instant::now() + timeout;
    if !has_multicast_interface() {
        return Ok(Browse::default());
    }
    let daemon = ServiceDaemon::new().map_err(Error::mdns("starting the mDNS daemon"))?;
    // IPv4 only. A node answers over IPv4 and IPv6 separately, each answer with addresses of its
    // own kind; once one answer is in, the queries that follow list the node as known, so it is
    // not answered again: when its IPv4 answer was lost, it would be found with only its
    // link-local IPv6 address, of no use without the interface (which an IpAddr cannot hold).
    let result = match daemon.disable_interface(IfKind::IPv6) {
        Ok(()) => collect(&daemon, deadline, done),
        Err(e) => Err(Error::mdns("leaving IPv6 out of the mDNS daemon")(e)),
    };
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(Duration::from_millis(500));
    }
    result
}

/// Whether an IPv4 interface other than loopback is up, as the mDNS daemon chooses them.
fn has_multicast_interface() -> bool {
    if_addrs::get_if_addrs()
        .map(|all| all.iter().any(|i| i.is_oper_up() && !i.is_loopback() && !i.is_p2p() && i.ip().is_ipv4()))
        // Cannot tell: ask the network anyway, the timeout bounds it.
        .unwrap_or(true)
}

/// What `daemon` resolves for [`SERVICE`] until `deadline`, or until `done`.
fn collect(
    daemon: &ServiceDaemon,
    deadline: Instant,
    mut done: Option<&mut dyn FnMut(&Browse) -> bool>,
) -> Result<Browse> {
    let events = daemon.browse(SERVICE).map_err(Error::mdns(format!("browsing for {SERVICE}")))?;
    // Keyed by the lower-cased full name (DNS names ignore case), so by node name for valid
    // ones: the last word on each wins (bar addresses, which add up).
    let mut seen: BTreeMap<String, std::result::Result<Found, Skipped>> = BTreeMap::new();
    let mut ignored = 0;
    loop {
        let event = match events.recv_deadline(deadline) {
            Ok(e) => e,
            Err(mdns_sd::RecvTimeoutError::Timeout) => break,
            Err(mdns_sd::RecvTimeoutError::Disconnected) => {
                return Err(Error::Invalid(format!("the mDNS daemon stopped while browsing for {SERVICE}")))
            }
        };
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let key = service.fullname.to_ascii_lowercase();
                if seen.len() >= MAX_NAMES && !seen.contains_key(&key) {
                    ignored += 1;
                    continue;
                }
                let mut now = found(&service);
                // A node answers over IPv4 and IPv6 separately, each answer with the addresses
                // of its own kind: what one resolution says adds to what the last one said.
                if let (Ok(now), Some(Ok(before))) = (&mut now, seen.get(&key)) {
                    now.addresses.extend_from_slice(&before.addresses);
                    now.addresses.sort_by_key(|a| (a.is_ipv6(), *a));
                    now.addresses.dedup();
                    now.addresses.truncate(MAX_ADDRESSES);
                }
                seen.insert(key, now);
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                seen.remove(&fullname.to_ascii_lowercase());
            }
            _ => continue,
        }
        if done.as_mut().is_some_and(|done| done(&summary(&seen, ignored))) {
            break;
        }
    }
    Ok(summary(&seen, ignored))
}

/// What `seen` holds, as [`Browse`] gives it.
fn summary(seen: &BTreeMap<String, std::result::Result<Found, Skipped>>, ignored: usize) -> Browse {
    let mut out = Browse { ignored, ..Browse::default() };
    for entry in seen.values() {
        match entry {
            Ok(f) => out.found.push(f.clone()),
            Err(s) => out.skipped.push(s.clone()),
        }
    }
    out.found.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The node `service` describes, or why it is skipped.
fn found(service: &ResolvedService) -> std::result::Result<Found, Skipped> {
    let skip = |reason: String| Skipped { fullname: txt::shown(service.fullname.as_bytes()), reason };
    let name = instance_name(&service.fullname)
        .ok_or_else(|| skip("not a node name (1 to 63 letters, digits and dashes)".into()))?;
    let t = txt::decode(service.txt_properties.iter().map(|p| (p.key(), p.val())))
        .map_err(|e| skip(e.to_string()))?;
    let mut addresses: Vec<IpAddr> = service.addresses.iter().map(|a| a.to_ip_addr()).collect();
    addresses.sort_by_key(|a| (a.is_ipv6(), *a));
    addresses.dedup();
    addresses.truncate(MAX_ADDRESSES);
    Ok(Found {
        name: name.to_string(),
        addresses,
        port: service.port,
        roles: t.roles,
        sha256: t.sha256,
        free: t.free,
        version: t.version,
    })
}

/// The node name in `<name>._bakare._tcp.local.`, if it is one ([`valid_name`]).
fn instance_name(fullname: &str) -> Option<&str> {
    let cut = fullname.len().checked_sub(SERVICE.len() + 1)?;
    let (name, rest) = (fullname.get(..cut)?, fullname.get(cut..)?);
    let suffix = rest.strip_prefix('.')?;
    (suffix.eq_ignore_ascii_case(SERVICE) && valid_name(name)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_checked() {
        assert_eq!(instance_name("alice._bakare._tcp.local."), Some("alice"));
        assert_eq!(instance_name("Bob-2._BAKARE._tcp.local."), Some("Bob-2"));
        for bad in [
            "",
            "._bakare._tcp.local.",
            "_bakare._tcp.local.",
            "a.b._bakare._tcp.local.",
            "a\\.b._bakare._tcp.local.",
            "alice._http._tcp.local.",
            "alice_bakare._tcp.local.",
            "é._bakare._tcp.local.",
            "ééééééééééééééééééééé",
        ] {
            assert_eq!(instance_name(bad), None, "{bad:?}");
        }
        let long = format!("{}._bakare._tcp.local.", "a".repeat(64));
        assert_eq!(instance_name(&long), None);
    }

    #[test]
    fn announcements_are_checked_before_anything_is_sent() {
        let mut a = Announcement {
            name: "node-1".into(),
            port: 9443,
            roles: vec![Role::Persister],
            sha256: None,
            free: None,
        };
        assert!(a.service().is_ok());
        for name in ["", "a.b", "a b", &"a".repeat(64)] {
            a.name = name.into();
            assert!(matches!(a.service(), Err(Error::Invalid(_))), "{name:?}");
            assert!(announce(&a).is_err());
        }
        a.name = "node-1".into();
        a.roles.clear();
        assert!(announce(&a).is_err());
    }
}
