//! Two routes beside the S3 API: `GET /?bakare-health` (anonymous: "ok" while the server runs,
//! for monitoring and load balancers) and `GET /?bakare-status` (signed with an owner's
//! credential: the relay's state and the clients' usage, as JSON). On the root path, where S3
//! has only ListBuckets, so no repository name can collide.

use std::sync::Arc;

use s3s::route::S3Route;
use s3s::{s3_error, Body, S3Request, S3Response, S3Result};

use crate::store::Clients;
use crate::StateDir;

pub(crate) const HEALTH: &str = "bakare-health";
pub(crate) const STATUS: &str = "bakare-status";

fn which(uri: &hyper::Uri) -> Option<&'static str> {
    let key = uri.query().map(|q| q.split_once('=').map_or(q, |(k, _)| k));
    match (uri.path(), key) {
        ("/", Some(HEALTH)) => Some(HEALTH),
        ("/", Some(STATUS)) => Some(STATUS),
        _ => None,
    }
}

pub(crate) struct Routes {
    pub(crate) state: StateDir,
    pub(crate) clients: Arc<Clients>,
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
        if which(&req.uri) == Some(HEALTH) {
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
