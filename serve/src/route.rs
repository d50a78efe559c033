//! Two routes beside the S3 API: `GET /?bakare-health` (anonymous: "ok" while the server runs,
//! for monitoring and load balancers) and `GET /?bakare-status` (signed with an owner's
//! credential: the relay's state and the clients' usage, as JSON). On the root path, where S3
//! has only ListBuckets, so no repository name can collide. And, when the server takes friends
//! (`--peers`), the anonymous pairing exchange `GET /?bakare-pair=open|reveal|poll&...`
//! (crate::pairing), answered with JSON: `{"error": "..."}` with status 400 when refused.

use std::sync::Arc;

use s3s::route::S3Route;
use s3s::{s3_error, Body, S3Request, S3Response, S3Result};

use crate::store::Clients;
use crate::StateDir;

pub(crate) const HEALTH: &str = "bakare-health";
pub(crate) const STATUS: &str = "bakare-status";
pub(crate) const PAIR: &str = "bakare-pair";
/// The header of an audit challenge: `NONCE:OFFSET:LENGTH` (64 hex digits, decimal, decimal).
pub(crate) const AUDIT_HEADER: &str = "x-bakare-audit";
/// The most bytes one challenge covers.
pub(crate) const AUDIT_MAX: u64 = 1 << 20;

fn which(uri: &hyper::Uri) -> Option<&'static str> {
    let key = uri.query().map(|q| q.split_once('=').map_or(q, |(k, _)| k));
    match (uri.path(), key) {
        ("/", Some(HEALTH)) => Some(HEALTH),
        ("/", Some(STATUS)) => Some(STATUS),
        ("/", Some(PAIR)) => Some(PAIR),
        _ => None,
    }
}

/// An audit challenge: a GET of an object (signed by a client, presigned in the query) with an
/// `x-bakare-audit: NONCE:OFFSET:LENGTH` header. The answer is the BLAKE3 of those bytes keyed
/// with the nonce, which the client computed when it uploaded the object and kept: only a
/// server that still holds the bytes can give it (`bakare peers audit`, docs/peers.md).
struct Challenge {
    bucket: String,
    key: String,
    nonce: [u8; 32],
    offset: u64,
    length: u64,
}

fn challenge(uri: &hyper::Uri, headers: &hyper::HeaderMap) -> Option<Result<Challenge, String>> {
    let h = headers.get(AUDIT_HEADER)?;
    Some((|| {
        let v = h.to_str().map_err(|_| "the challenge is not text")?;
        let mut parts = v.split(':');
        let (Some(n), Some(o), Some(l), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("the challenge is not NONCE:OFFSET:LENGTH".to_string());
        };
        let mut nonce = [0u8; 32];
        if n.len() != 64 || hex::decode_to_slice(n, &mut nonce).is_err() {
            return Err("the challenge's nonce is not 64 hex digits".into());
        }
        let offset: u64 = o.parse().map_err(|_| "the challenge's offset is not a number")?;
        let length: u64 = l.parse().map_err(|_| "the challenge's length is not a number")?;
        if length == 0 || length > AUDIT_MAX || offset.checked_add(length).is_none() {
            return Err(format!("a challenge covers 1 to {AUDIT_MAX} bytes"));
        }
        let path = uri.path().strip_prefix('/').ok_or("no repository in the path")?;
        let (bucket, key) = path.split_once('/').ok_or("no object in the path")?;
        if !::io::joined::valid_bucket(bucket) || !::io::storage::valid_key(key) {
            return Err("not an object of a repository".into());
        }
        Ok(Challenge { bucket: bucket.to_string(), key: key.to_string(), nonce, offset, length })
    })())
}

/// The keyed hash of `length` bytes at `offset` of `path`; fewer when the file is shorter
/// (truncated: the hash then differs). `None` when the object does not exist.
fn answer(path: &std::path::Path, c: &Challenge) -> std::io::Result<Option<(String, u64)>> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    // Not following a symlink, and only a regular file (a FIFO would hold the thread).
    let f =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(c.offset))?;
    let mut h = blake3::Hasher::new_keyed(&c.nonce);
    let mut buf = vec![0u8; 64 << 10];
    let mut left = c.length;
    let mut read = 0u64;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
        read += n as u64;
    }
    Ok(Some((h.finalize().to_hex().to_string(), read)))
}

#[derive(Clone)]
pub(crate) struct Routes {
    pub(crate) state: StateDir,
    /// The directory holding the repositories.
    pub(crate) storage: std::path::PathBuf,
    pub(crate) clients: Arc<Clients>,
    /// The certificate's SHA-256, which pairing codes are computed from.
    pub(crate) fingerprint: [u8; 32],
    /// Whether pairing requests are taken (`--peers`).
    pub(crate) pairing: bool,
}

/// The parameters of a query: plain `k=v` pairs (pairing sends only names and hex, so anything
/// percent-encoded is refused rather than decoded).
fn params(uri: &hyper::Uri) -> Option<std::collections::BTreeMap<&str, &str>> {
    let q = uri.query()?;
    if q.len() > 1024 || q.contains('%') || q.contains('+') {
        return None;
    }
    q.split('&').map(|kv| kv.split_once('=')).collect::<Option<_>>()
}

fn json(status: hyper::StatusCode, v: serde_json::Value) -> S3Response<Body> {
    let mut r = S3Response::new(Body::from(v.to_string()));
    r.status = Some(status);
    r.headers
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

impl Routes {
    /// One step of pairing; `Err` is the reason it is refused, for the publisher to show.
    fn pair(&self, uri: &hyper::Uri) -> Result<serde_json::Value, String> {
        if !self.pairing {
            return Err("this server does not take friends (its owner starts it with --peers)".into());
        }
        let p = params(uri).ok_or("malformed pairing request")?;
        let get = |k: &str| p.get(k).copied().ok_or_else(|| format!("the pairing request has no {k}"));
        let state = &self.state;
        // What the server could not do is logged here; the anonymous caller gets no paths.
        let said = |e: crate::Error| match e {
            crate::Error::Invalid(m) => m,
            e => {
                eprintln!("bakare serve: pairing: {e}");
                "the server cannot keep pairing requests just now".to_string()
            }
        };
        match get(PAIR)? {
            "open" => {
                let (id, nonce) = state.pairing_open(get("name")?, get("commit")?).map_err(said)?;
                Ok(serde_json::json!({ "id": id, "nonce": nonce }))
            }
            "reveal" => {
                state.pairing_reveal(get("id")?, get("token")?, &self.fingerprint).map_err(said)?;
                Ok(serde_json::json!({ "status": "waiting" }))
            }
            "poll" => match state.pairing_poll(get("id")?, get("token")?).map_err(said)? {
                crate::Poll::Waiting => Ok(serde_json::json!({ "status": "waiting" })),
                crate::Poll::Approved { client, repo } => Ok(serde_json::json!({
                    "status": "approved", "client": client.name, "secret": client.secret,
                    "repo": repo, "quota": client.quota,
                })),
            },
            other => Err(format!("no pairing step {other:?}")),
        }
    }
}

#[async_trait::async_trait]
impl S3Route for Routes {
    fn is_match(
        &self,
        method: &hyper::Method,
        uri: &hyper::Uri,
        headers: &hyper::HeaderMap,
        _: &mut hyper::http::Extensions,
    ) -> bool {
        method == hyper::Method::GET && (which(uri).is_some() || headers.contains_key(AUDIT_HEADER))
    }

    async fn check_access(&self, req: &mut S3Request<Body>) -> S3Result<()> {
        if matches!(which(&req.uri), Some(HEALTH | PAIR)) {
            return Ok(());
        }
        if let Some(c) = challenge(&req.uri, &req.headers) {
            let c = c.map_err(|e| s3_error!(InvalidArgument, "{e}"))?;
            let Some(cred) = &req.credentials else {
                return Err(s3_error!(AccessDenied, "an audit is for a client: sign the request"));
            };
            return match self.clients.get(&cred.access_key)? {
                Some(cl) if cl.repo.as_ref().is_none_or(|r| *r == c.bucket) => Ok(()),
                Some(cl) => Err(s3_error!(
                    AccessDenied,
                    "client {} may use only its own repository, {}",
                    cl.name,
                    cl.repo.unwrap_or_default()
                )),
                None => Err(s3_error!(InvalidAccessKeyId, "no client of that name")),
            };
        }
        let Some(cred) = &req.credentials else {
            return Err(s3_error!(AccessDenied, "the status is for the owner: sign the request"));
        };
        match self.clients.get(&cred.access_key)? {
            Some(c) if c.owner => Ok(()),
            _ => Err(s3_error!(AccessDenied, "the status is for the owner")),
        }
    }

    async fn call(&self, req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        if which(&req.uri) == Some(HEALTH) {
            return Ok(S3Response::new(Body::from("ok\n".to_string())));
        }
        if let Some(c) = challenge(&req.uri, &req.headers) {
            let c = c.map_err(|e| s3_error!(InvalidArgument, "{e}"))?;
            let path = self.storage.join(&c.bucket).join(&c.key);
            let answered = tokio::task::spawn_blocking(move || answer(&path, &c))
                .await
                .map_err(|e| s3_error!(InternalError, "{e}"))?
                .map_err(|e| s3_error!(InternalError, "reading for an audit: {e}"))?;
            return Ok(match answered {
                Some((hash, read)) => {
                    json(hyper::StatusCode::OK, serde_json::json!({ "hash": hash, "read": read }))
                }
                None => json(hyper::StatusCode::NOT_FOUND, serde_json::json!({ "error": "no such object" })),
            });
        }
        if which(&req.uri) == Some(PAIR) {
            let (uri, routes) = (req.uri.clone(), self.clone());
            let answer = tokio::task::spawn_blocking(move || routes.pair(&uri))
                .await
                .map_err(|e| s3_error!(InternalError, "{e}"))?;
            return Ok(match answer {
                Ok(v) => json(hyper::StatusCode::OK, v),
                Err(e) => json(hyper::StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
            });
        }
        let state = self.state.clone();
        let body = tokio::task::spawn_blocking(move || {
            let relay = crate::relay::status(&state)?;
            let usage = crate::quota::usage(&state)?;
            Ok::<_, crate::Error>(serde_json::json!({ "relay": relay, "usage": usage }).to_string())
        })
        .await
        .map_err(|e| s3_error!(InternalError, "{e}"))?
        .map_err(|e| s3_error!(InternalError, "{e}"))?;
        Ok(S3Response::new(Body::from(body)))
    }
}
