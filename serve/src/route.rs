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

fn which(uri: &hyper::Uri) -> Option<&'static str> {
    let key = uri.query().map(|q| q.split_once('=').map_or(q, |(k, _)| k));
    match (uri.path(), key) {
        ("/", Some(HEALTH)) => Some(HEALTH),
        ("/", Some(STATUS)) => Some(STATUS),
        ("/", Some(PAIR)) => Some(PAIR),
        _ => None,
    }
}

#[derive(Clone)]
pub(crate) struct Routes {
    pub(crate) state: StateDir,
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
        match get(PAIR)? {
            "open" => {
                let (id, nonce) =
                    state.pairing_open(get("name")?, get("commit")?).map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "id": id, "nonce": nonce }))
            }
            "reveal" => {
                state
                    .pairing_reveal(get("id")?, get("token")?, &self.fingerprint)
                    .map_err(|e| e.to_string())?;
                Ok(serde_json::json!({ "status": "waiting" }))
            }
            "poll" => match state.pairing_poll(get("id")?, get("token")?).map_err(|e| e.to_string())? {
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
        _: &hyper::HeaderMap,
        _: &mut hyper::http::Extensions,
    ) -> bool {
        method == hyper::Method::GET && which(uri).is_some()
    }

    async fn check_access(&self, req: &mut S3Request<Body>) -> S3Result<()> {
        if matches!(which(&req.uri), Some(HEALTH | PAIR)) {
            return Ok(());
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
