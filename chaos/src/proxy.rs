//! proxy: a TCP proxy on loopback that sits between bakare and an S3 server and breaks a seeded
//! fraction of the connections, the way real networks do: refused at once, reset mid-transfer,
//! silent for longer than the client's timeout, slow, or a reply cut short.
//!
//! Threads, not async: one accept thread, and two pump threads per connection (one each way).
//! Faults are drawn per exchange (a request and its reply; the first on a connection, and each
//! later one on a kept-alive connection, see `pump`): whether it is faulted, how, and after how
//! many bytes depends only on the seed and the exchange's index, so a run can be replayed as far
//! as the client's order of requests is. A connection that fails in any way
//! ends that connection only; the proxy keeps accepting until it is dropped.
//!
//! Optionally it also plays a bucket policy: every request with a given method (e.g. DELETE,
//! for put-only credentials) is answered 403 AccessDenied and never reaches the server.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::testkit::Rng;

/// What happens to a faulted exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Closed without forwarding anything (a new connection: without connecting to the server).
    Drop,
    /// After some bytes (either way), closed with a TCP RST (SO_LINGER 0).
    Reset,
    /// After some bytes, nothing more is forwarded for `ProxyConfig::stall`, then closed.
    Stall,
    /// `ProxyConfig::delay` of silence first, then forwarded normally.
    Delay,
    /// Only the first bytes of the server's replies are forwarded, then closed (FIN).
    Truncate,
}

pub const ALL_FAULTS: [FaultKind; 5] =
    [FaultKind::Drop, FaultKind::Reset, FaultKind::Stall, FaultKind::Delay, FaultKind::Truncate];

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where connections are forwarded.
    pub upstream: SocketAddr,
    pub seed: u64,
    /// Faulted exchanges per thousand.
    pub fault_permille: u64,
    /// Kinds a faulted exchange draws from, uniformly.
    pub kinds: Vec<FaultKind>,
    /// Reset, stall and truncate strike after a number of bytes drawn below this. Small values
    /// (below a request's headers) make sure that no faulted request completes.
    pub fault_within: u64,
    /// How long a stalled connection stays silent; longer than the client's request timeout.
    pub stall: Duration,
    pub delay: Duration,
    /// Fault only requests with this HTTP method (e.g. "PUT"): others are never faulted. Their
    /// first bytes are needed to tell, so with it a dropped first exchange has connected to the
    /// server already.
    pub only_method: Option<String>,
    /// Answer every request with this HTTP method with 403 AccessDenied instead of forwarding
    /// it, as S3 does for credentials a bucket policy denies it (e.g. "DELETE": put-only
    /// credentials). Not a fault: counted in `ProxyStats::denied`, whatever `fault_permille`.
    pub deny_method: Option<String>,
}

impl ProxyConfig {
    pub fn new(upstream: SocketAddr, seed: u64, fault_permille: u64) -> Self {
        ProxyConfig {
            upstream,
            seed,
            fault_permille,
            kinds: ALL_FAULTS.to_vec(),
            fault_within: 4 << 20,
            stall: Duration::from_secs(8),
            delay: Duration::from_millis(500),
            only_method: None,
            deny_method: None,
        }
    }
}

/// Counters, readable while the proxy runs.
#[derive(Default, Debug)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    /// Requests with their replies (see `pump`); faults are drawn for each.
    pub exchanges: AtomicU64,
    pub dropped: AtomicU64,
    pub reset: AtomicU64,
    pub stalled: AtomicU64,
    pub delayed: AtomicU64,
    pub truncated: AtomicU64,
    /// Requests answered 403 by `ProxyConfig::deny_method`.
    pub denied: AtomicU64,
    /// Connections that could not be served (the server refused, or no thread): not faults of ours.
    pub upstream_errors: AtomicU64,
    pub bytes_to_server: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

impl ProxyStats {
    fn kind(&self, k: FaultKind) -> &AtomicU64 {
        match k {
            FaultKind::Drop => &self.dropped,
            FaultKind::Reset => &self.reset,
            FaultKind::Stall => &self.stalled,
            FaultKind::Delay => &self.delayed,
            FaultKind::Truncate => &self.truncated,
        }
    }

    pub fn faulted(&self) -> u64 {
        ALL_FAULTS.iter().map(|k| self.kind(*k).load(Ordering::Relaxed)).sum()
    }

    /// One line for test output.
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} connections, {} exchanges, {} faulted (drop {}, reset {}, stall {}, delay {}, truncate {}), \
             {} denied, {} upstream errors, {:.1} MiB to the server, {:.1} MiB to the client",
            g(&self.connections),
            g(&self.exchanges),
            self.faulted(),
            g(&self.dropped),
            g(&self.reset),
            g(&self.stalled),
            g(&self.delayed),
            g(&self.truncated),
            g(&self.denied),
            g(&self.upstream_errors),
            g(&self.bytes_to_server) as f64 / (1 << 20) as f64,
            g(&self.bytes_to_client) as f64 / (1 << 20) as f64,
        )
    }
}

/// A running proxy; stops accepting when dropped (connections in flight finish on their own).
pub struct Proxy {
    pub port: u16,
    pub stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(cfg: ProxyConfig) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stats = Arc::new(ProxyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("chaos-proxy".into())
                .spawn(move || accept_loop(listener, cfg, stats, stop))?
        };
        Ok(Proxy { port, stats, stop, accept: Some(accept) })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// The fate of one exchange, drawn from the seed and its index.
#[derive(Clone, Copy, Debug)]
struct Plan {
    fault: Option<FaultKind>,
    /// Bytes forwarded before a reset, stall or truncation strikes.
    after: u64,
}

fn plan(cfg: &ProxyConfig, index: u64) -> Plan {
    let mut rng = Rng::new(cfg.seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
    let faulted = rng.below(1000) < cfg.fault_permille;
    let kind = cfg.kinds.get(rng.below(cfg.kinds.len() as u64) as usize).copied();
    Plan { fault: kind.filter(|_| faulted), after: rng.below(cfg.fault_within) }
}

/// What every connection of one proxy shares.
struct Shared {
    cfg: ProxyConfig,
    stats: Arc<ProxyStats>,
    /// Index of the next exchange, for its plan.
    next: AtomicU64,
}

/// Whether the request starting with `head` uses `method`.
fn is_method(head: &[u8], method: &str) -> bool {
    head.starts_with(method.as_bytes()) && head.get(method.len()) == Some(&b' ')
}

impl Shared {
    fn denies(&self, head: &[u8]) -> bool {
        self.cfg.deny_method.as_deref().is_some_and(|m| is_method(head, m))
    }

    /// Draws (and counts) the plan of the next exchange, whose request starts with `head`
    /// (None: not read yet).
    fn draw(&self, head: Option<&[u8]>) -> Plan {
        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        let mut p = plan(&self.cfg, self.next.fetch_add(1, Ordering::Relaxed));
        if let Some(m) = &self.cfg.only_method {
            let matches = head.is_some_and(|h| is_method(h, m));
            if !matches {
                p.fault = None;
            }
        }
        if let Some(k) = p.fault {
            self.stats.kind(k).fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}

fn accept_loop(listener: TcpListener, cfg: ProxyConfig, stats: Arc<ProxyStats>, stop: Arc<AtomicBool>) {
    let shared = Arc::new(Shared { cfg, stats, next: AtomicU64::new(0) });
    for client in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // A failed accept (e.g. the client gave up already) ends that connection only.
        let Ok(client) = client else { continue };
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let spawned =
            std::thread::Builder::new().name("chaos-conn".into()).spawn(move || connection(client, s));
        if spawned.is_err() {
            shared.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// State both pumps of one connection share.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    shared: Arc<Shared>,
    plan: Mutex<Plan>,
    /// Bytes of this exchange forwarded either way, for reset and stall.
    moved: AtomicU64,
    /// Bytes of this exchange's reply forwarded, for truncate.
    replied: AtomicU64,
    /// The first exchange's plan is still to be drawn, from its request.
    fresh: AtomicBool,
    /// Set once a fault has struck: the other pump then leaves without touching the sockets, so
    /// a reset is not turned into a clean close by its half-close.
    struck: AtomicBool,
}

impl Conn {
    fn plan(&self) -> Plan {
        *self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn connection(client: TcpStream, shared: Arc<Shared>) {
    // Without a method filter, the first exchange's fate is known before its request is read.
    let fresh = shared.cfg.only_method.is_some() || shared.cfg.deny_method.is_some();
    let first = if fresh { Plan { fault: None, after: 0 } } else { shared.draw(None) };
    match first.fault {
        Some(FaultKind::Drop) => return,
        Some(FaultKind::Delay) => std::thread::sleep(shared.cfg.delay),
        _ => {}
    }
    let server = match TcpStream::connect_timeout(&shared.cfg.upstream, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(_) => {
            shared.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let conn = Arc::new(Conn {
        client,
        server,
        shared,
        plan: Mutex::new(first),
        moved: AtomicU64::new(0),
        replied: AtomicU64::new(0),
        fresh: AtomicBool::new(fresh),
        struck: AtomicBool::new(false),
    });
    let up = {
        let conn = conn.clone();
        std::thread::Builder::new().name("chaos-up".into()).spawn(move || pump(&conn, true))
    };
    if up.is_err() {
        // Without the other pump, this connection cannot work: close it.
        let _ = conn.client.shutdown(Shutdown::Both);
        let _ = conn.server.shutdown(Shutdown::Both);
    }
    let down = pump(&conn, false);
    let up = up.ok().and_then(|h| h.join().ok()).unwrap_or(0);
    conn.shared.stats.bytes_to_client.fetch_add(down, Ordering::Relaxed);
    conn.shared.stats.bytes_to_server.fetch_add(up, Ordering::Relaxed);
}

/// Copies one way until EOF, an error or a fault; returns the bytes forwarded.
///
/// Clients keep connections alive across requests, so faulting whole connections would fault
/// few requests. An HTTP/1.1 client sends its next request only after it has read the whole
/// reply to the last one (hyper does not pipeline), so bytes from the client after bytes from the
/// server start a new exchange, which gets a plan of its own, as a new connection would.
fn pump(c: &Conn, to_server: bool) -> u64 {
    let (mut from, mut to) = if to_server { (&c.client, &c.server) } else { (&c.server, &c.client) };
    let mut buf = vec![0u8; 64 << 10];
    let mut forwarded = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                if !c.struck.load(Ordering::SeqCst) {
                    // Pass the half-close on, so request/response framing by EOF still works.
                    let _ = to.shutdown(Shutdown::Write);
                }
                return forwarded;
            }
            Ok(n) => n,
        };
        if c.struck.load(Ordering::SeqCst) {
            return forwarded;
        }
        if to_server && (c.fresh.swap(false, Ordering::SeqCst) || c.replied.load(Ordering::SeqCst) > 0) {
            if c.shared.denies(&buf[..n]) {
                deny(c, &buf[..n]);
                return forwarded;
            }
            let p = c.shared.draw(Some(&buf[..n]));
            *c.plan.lock().unwrap_or_else(|p| p.into_inner()) = p;
            c.moved.store(0, Ordering::SeqCst);
            c.replied.store(0, Ordering::SeqCst);
            match p.fault {
                Some(FaultKind::Drop) => {
                    strike(c, FaultKind::Drop);
                    return forwarded;
                }
                Some(FaultKind::Delay) => std::thread::sleep(c.shared.cfg.delay),
                _ => {}
            }
        }
        let plan = c.plan();
        // Where in this buffer the fault strikes, if it does.
        let limit = match plan.fault {
            Some(FaultKind::Reset | FaultKind::Stall) => {
                let before = c.moved.fetch_add(n as u64, Ordering::SeqCst);
                (before + n as u64 > plan.after).then(|| plan.after.saturating_sub(before) as usize)
            }
            Some(FaultKind::Truncate) if !to_server => {
                let before = c.replied.load(Ordering::SeqCst);
                (before + n as u64 > plan.after).then(|| plan.after.saturating_sub(before) as usize)
            }
            _ => None,
        };
        let send = limit.unwrap_or(n);
        if to.write_all(&buf[..send]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return forwarded;
        }
        forwarded += send as u64;
        if !to_server {
            c.replied.fetch_add(send as u64, Ordering::SeqCst);
        }
        if let (Some(_), Some(kind)) = (limit, plan.fault) {
            strike(c, kind);
            return forwarded;
        }
    }
}

/// The access key id in a request's AWS signature (`Credential=<id>/<date>/...`).
fn access_key_id(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let (_, rest) = text.split_once("Credential=")?;
    let id = rest.split('/').next()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())).then(|| id.to_string())
}

/// The reply S3 gives a request a bucket policy denies. The body names the access key id, as
/// AWS's bodies for InvalidAccessKeyId and SignatureDoesNotMatch do, so that tests can check
/// that bakare never repeats a reply body.
fn access_denied(head: &[u8]) -> Vec<u8> {
    let key = access_key_id(head).unwrap_or_default();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
         <Message>Access Denied</Message><AWSAccessKeyId>{key}</AWSAccessKeyId>\
         <RequestId>chaos-proxy</RequestId></Error>"
    );
    let mut reply = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(body.as_bytes());
    reply
}

/// Answers the request starting with `first` with 403 AccessDenied, without forwarding any of
/// it, and closes the connection. The request's headers are read to their end first, and the
/// client's side drained after the reply: closing a socket with unread bytes sends RST, which
/// could destroy the reply before the client reads it.
fn deny(c: &Conn, first: &[u8]) {
    c.shared.stats.denied.fetch_add(1, Ordering::Relaxed);
    c.struck.store(true, Ordering::SeqCst);
    let mut head = first.to_vec();
    let mut from = &c.client;
    let _ = c.client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < (64 << 10) {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let mut to = &c.client;
    let _ = to.write_all(&access_denied(&head));
    let _ = c.client.shutdown(Shutdown::Write);
    while matches!(from.read(&mut buf), Ok(n) if n > 0) {}
    // Wakes the other pump, which leaves without touching the sockets (`struck`).
    let _ = c.server.shutdown(Shutdown::Both);
}

fn strike(c: &Conn, kind: FaultKind) {
    if c.struck.swap(true, Ordering::SeqCst) {
        return;
    }
    match kind {
        FaultKind::Reset => {
            // SO_LINGER 0: the last close of the client socket sends RST instead of FIN. Only
            // the read side is shut here, to wake the other pump without sending anything; the
            // socket closes (and resets) when both pumps have let go of it.
            let _ = socket2::SockRef::from(&c.client).set_linger(Some(Duration::ZERO));
            let _ = c.client.shutdown(Shutdown::Read);
        }
        FaultKind::Stall => {
            std::thread::sleep(c.shared.cfg.stall);
            let _ = c.client.shutdown(Shutdown::Both);
        }
        _ => {
            let _ = c.client.shutdown(Shutdown::Both);
        }
    }
    let _ = c.server.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_requests_get_s3s_reply_naming_the_key_id() {
        let head = b"DELETE /bakare/repo/pending/ab HTTP/1.1\r\nauthorization: AWS4-HMAC-SHA256 \
                     Credential=bakare-test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host\r\n\r\n";
        assert!(is_method(head, "DELETE") && !is_method(head, "DEL") && !is_method(head, "PUT"));
        assert_eq!(access_key_id(head).as_deref(), Some("bakare-test"));
        let reply = String::from_utf8(access_denied(head)).unwrap_or_default();
        let (headers, body) = reply.split_once("\r\n\r\n").unwrap_or_default();
        assert!(headers.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{headers}");
        assert!(headers.contains(&format!("Content-Length: {}\r\n", body.len())), "{headers}");
        assert!(body.contains("<Code>AccessDenied</Code>") && body.contains("bakare-test"), "{body}");
    }

    #[test]
    fn plans_are_seeded_and_about_the_fraction() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let cfg = ProxyConfig::new(addr, 7, 100);
        let a: Vec<_> = (0..10_000).map(|i| plan(&cfg, i).fault).collect();
        let b: Vec<_> = (0..10_000).map(|i| plan(&cfg, i).fault).collect();
        assert_eq!(a, b);
        let n = a.iter().filter(|f| f.is_some()).count();
        assert!((800..1200).contains(&n), "{n} of 10000 faulted");
        for k in ALL_FAULTS {
            assert!(a.contains(&Some(k)), "{k:?} never drawn");
        }
    }
}
