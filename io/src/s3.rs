//! The S3-compatible backend (AWS, MinIO, Garage, Ceph, B2, Wasabi...), through `object_store`,
//! keeping the storage contract (storage.rs):
//! - small objects are created with `If-None-Match: *` (PutMode::Create): an object that
//!   exists already (a retry after a lost reply, or the same content-addressed object from
//!   another writer) is a successful no-op;
//! - packs are staged in an anonymous local temporary file, then uploaded in one PUT, or in
//!   parts of 8 MiB (two in flight) above 16 MiB; their names are hashes of their bytes, so a
//!   repeated upload is harmless;
//! - every request has a connect timeout and an overall timeout, and is retried with
//!   exponential backoff and jitter (object_store's retry layer) within a bounded total time;
//!   every operation is also retried whole (`Retry`, below) within the same budget, for the
//!   failures object_store does not retry; a failure that outlasts both ends the operation with
//!   an error naming the object and saying how long it was retried;
//! - errors give the HTTP status and the S3 error code, never the server's reply body (it can
//!   hold the access key id); an `http://` endpoint is warned about once per process.
//!
//! URL: `s3:http(s)://host[:port]/bucket[/prefix]`. Credentials: AWS_ACCESS_KEY_ID,
//! AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), AWS_REGION or AWS_DEFAULT_REGION (default
//! us-east-1); without them, the `[AWS_PROFILE or default]` section of ~/.aws/credentials.
//!
//! URL: `serve:https://host:port/repo`, a repository on a `bakare serve` this machine joined:
//! credentials and the certificate's pin come from the joined entry (joined.rs, pinned.rs).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

use crate::joined::{Joined, ServedUrl};
use crate::pinned::PinnedConnector;
use crate::storage::{Backend, Result, Staged, StorageError};

/// Objects larger than this are uploaded in parts.
const MULTIPART_ABOVE: u64 = 16 << 20;
const PART: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// `http(s)://host:port`
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3:http://host:port/bucket/prefix` (the `s3:` is optional here).
    pub fn parse(s: &str) -> std::result::Result<S3Url, String> {
        let rest = s.strip_prefix("s3:").unwrap_or(s);
        let bad =
            |why: &str| format!("{s:?} is not an S3 URL like s3:https://host:port/bucket/prefix: {why}");
        let (scheme, after) = rest.split_once("://").ok_or_else(|| bad("no http:// or https://"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let (host, path) = after.split_once('/').ok_or_else(|| bad("no bucket"))?;
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let bucket = parts.next().ok_or_else(|| bad("no bucket"))?.to_string();
        let prefix = parts.collect::<Vec<_>>().join("/");
        Ok(S3Url { endpoint: format!("{scheme}://{host}"), bucket, prefix })
    }
}

/// Retry and timeout settings; the tests shorten them.
#[derive(Clone, Debug)]
pub struct S3Tuning {
    pub connect_timeout: Duration,
    /// Whole request (a stalled transfer fails after this and is retried).
    pub request_timeout: Duration,
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_budget: Duration,
}

impl Default for S3Tuning {
    fn default() -> Self {
        S3Tuning {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            max_retries: 10,
            retry_budget: Duration::from_secs(180),
        }
    }
}

impl S3Tuning {
    /// Defaults, overridden by BAKARE_S3_TIMEOUT_MS, BAKARE_S3_CONNECT_TIMEOUT_MS,
    /// BAKARE_S3_RETRIES and BAKARE_S3_RETRY_BUDGET_MS.
    pub fn from_env() -> S3Tuning {
        let ms =
            |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
        let d = S3Tuning::default();
        S3Tuning {
            connect_timeout: ms("BAKARE_S3_CONNECT_TIMEOUT_MS").unwrap_or(d.connect_timeout),
            request_timeout: ms("BAKARE_S3_TIMEOUT_MS").unwrap_or(d.request_timeout),
            max_retries: std::env::var("BAKARE_S3_RETRIES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.max_retries),
            retry_budget: ms("BAKARE_S3_RETRY_BUDGET_MS").unwrap_or(d.retry_budget),
        }
    }
}

#[derive(Clone)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
    prefix: String,
    rt: Arc<tokio::runtime::Runtime>,
    display: String,
    max_retries: usize,
    retry_budget: Duration,
}

/// Whole-operation retries, around object_store's per-request ones.
///
/// Why a second layer: object_store retries a request that failed before it was sent, an
/// idempotent one (GET, HEAD, overwriting PUT, multipart part) that timed out or broke after it
/// was sent, and a streamed GET body that broke off; but not a create-only PUT (`If-None-Match`)
/// that timed out or whose connection was reset after it was sent (it cannot know that repeating
/// it is harmless), nor a failure it cannot classify. chaos/tests/network.rs
/// (`uploads_reset_or_stalled_after_sending_are_retried_whole`) fails without this layer: the
/// snapshot's PUT is reset and the run ends. Each operation here is safe to repeat as a whole: a GET,
/// HEAD or LIST reads; a create-only PUT that did land the first time answers "already exists",
/// which is success; packs and `replace` write the same bytes to the same name again; a DELETE of
/// something gone is success. The backoff has full jitter so that writers that failed together
/// do not retry together; no attempt starts later than the retry budget after the first one (an
/// attempt started in time may itself use object_store's retries, so the worst case is about
/// twice the budget).
struct Retry {
    start: Instant,
    attempts: usize,
    max_retries: usize,
    budget: Duration,
}

impl Retry {
    fn new(b: &S3Backend) -> Retry {
        Retry { start: Instant::now(), attempts: 1, max_retries: b.max_retries, budget: b.retry_budget }
    }

    /// After a failed attempt: waits and returns true when another attempt is due.
    async fn again(&mut self, e: &object_store::Error) -> bool {
        if !transient(e) || self.attempts > self.max_retries {
            return false;
        }
        let cap = Duration::from_millis(200).saturating_mul(1 << self.attempts.min(5) as u32);
        let sleep = cap.mul_f64(rand::random::<f64>());
        if self.start.elapsed() + sleep > self.budget {
            return false;
        }
        tokio::time::sleep(sleep).await;
        self.attempts += 1;
        true
    }

    /// The error that ends the operation, saying how hard it was tried.
    fn fail(&self, key: &str, e: object_store::Error) -> StorageError {
        match remote(key, e) {
            StorageError::Remote { key, why } if self.attempts > 1 => StorageError::Remote {
                key,
                why: format!(
                    "{why} (retries exhausted: {} attempts over {:.1} s)",
                    self.attempts,
                    self.start.elapsed().as_secs_f64()
                ),
            },
            other => other,
        }
    }
}

/// Whether trying again could help: not for answers about the object or the credentials, nor
/// for a server that is not the one this machine joined.
fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    if crate::pinned::mismatch_in(e).is_some() {
        return false;
    }
    // A client error (4xx) gets the same answer again, except a timeout or a request to slow
    // down (408, 429, and S3's 400 RequestTimeout), or expired credentials that a retry signs
    // afresh (ExpiredToken, TokenRefreshRequired): e.g. `bakare serve`'s BadDigest.
    let text = e.to_string();
    if let Some((_, reply)) = text.split_once("status code: ") {
        let status: String = reply.chars().take_while(char::is_ascii_digit).take(3).collect();
        if status.starts_with('4')
            && status != "408"
            && status != "429"
            && !matches!(
                s3_error_code(reply),
                Some("RequestTimeout" | "ExpiredToken" | "TokenRefreshRequired")
            )
        {
            return false;
        }
    }
    !matches!(
        e,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotImplemented
            | E::NotSupported { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

fn profile_credentials() -> Option<(String, String, Option<String>)> {
    let home = std::env::var_os("HOME")?;
    let path = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(&home).join(".aws/credentials"));
    let ini = ini::Ini::load_from_file(path).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let s = ini.section(Some(profile))?;
    Some((
        s.get("aws_access_key_id")?.to_string(),
        s.get("aws_secret_access_key")?.to_string(),
        s.get("aws_session_token").map(str::to_string),
    ))
}

fn remote(key: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound { key: key.to_string() },
        e => StorageError::Remote { key: key.to_string(), why: without_reply_body(&with_causes(&e)) },
    }
}

/// `e` and its causes, each said once: object_store's own text stops at reqwest's "error sending
/// request", and the reason (refused, a certificate, a pin) is further down the chain. A cause
/// whose text is already in the line (object_store repeats its inner errors) is not added again.
/// A reply body in it is removed with the rest by `without_reply_body`.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        next = cause.source();
    }
    text
}

/// Where object_store's description of a failed request goes on with the server's reply:
/// "Server returned non-2xx status code: 403 Forbidden: <body>", or "Server returned error
/// response: <body>" (object_store 0.12, client/retry.rs).
const REPLY: &str = "Server returned";

/// A failed request's description without the server's reply body, which is not ours to print:
/// S3 error bodies can hold the access key id (InvalidAccessKeyId, SignatureDoesNotMatch), the
/// string that was signed and the canonical request. What stays is object_store's account of
/// the request (method, URL, time, retries), the HTTP status and the S3 error code.
fn without_reply_body(text: &str) -> String {
    let Some(at) = text.find(REPLY) else { return text.to_string() };
    let (request, reply) = text.split_at(at);
    let request = request.trim_end_matches([' ', '-', ':']);
    let status = reply
        .split_once("status code: ")
        .map(|(_, rest)| rest.chars().take_while(char::is_ascii_digit).take(3).collect::<String>())
        .filter(|s| s.len() == 3);
    let answer = match (status, s3_error_code(reply)) {
        (Some(s), Some(c)) => format!("HTTP {s}, S3 error code {c}"),
        (Some(s), None) => format!("HTTP {s}"),
        (None, Some(c)) => format!("an error, S3 error code {c}"),
        (None, None) => "an error".to_string(),
    };
    // Codes `bakare serve` gives that a user can act on.
    let hint = match s3_error_code(reply) {
        Some("QuotaExceeded") => " (this client has used its quota on the server; its owner can raise it)",
        Some("AccessDenied") if reply.contains("append-only") => {
            " (the server is append-only for this client: only its owner's credential may delete or replace)"
        }
        Some("AccessDenied") if reply.contains("may use only its own repository") => {
            " (this machine is a friend of that server: it may use only the repository it was given, peer:NAME)"
        }
        Some("InvalidAccessKeyId") => {
            " (the server does not know this client's access key: its owner may have removed the client)"
        }
        _ => "",
    };
    format!("{request}: the server answered {answer}{hint}")
}

/// The `<Code>` of an S3 error body, if it is a plain code: 1 to 64 ASCII letters and digits
/// (every S3 error code is one, e.g. AccessDenied). Anything else is not repeated.
fn s3_error_code(body: &str) -> Option<&str> {
    const MAX: usize = 64;
    let (_, after) = body.split_once("<Code>")?;
    let end = after.find("</Code>").filter(|&end| end <= MAX)?;
    let code = &after[..end];
    (!code.is_empty() && code.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(code)
}

/// Credentials and session tokens cross an http:// connection in clear: requests are signed,
/// not encrypted, and the signature's header names the access key id.
fn plain_http_warning(endpoint: &str) -> Option<String> {
    endpoint.starts_with("http://").then(|| {
        format!(
            "{endpoint} is plain http: the access key id, any session token and all repository data \
             travel unencrypted (the data itself is sealed, the names and sizes of objects are not); \
             use https unless the server is on this machine"
        )
    })
}

/// Whether this is the first call for `flag`: the warning is said once per process, however
/// many repositories the process opens.
fn first_time(flag: &AtomicBool) -> bool {
    !flag.swap(true, Ordering::Relaxed)
}

static HTTP_WARNED: AtomicBool = AtomicBool::new(false);

/// What `open` and `open_served` share: the endpoint, the bucket in the path (not the host
/// name), the timeouts and object_store's retries. No credentials: each adds its own.
fn builder(endpoint: &str, bucket: &str, tuning: &S3Tuning) -> AmazonS3Builder {
    // Client options first: they replace everything set through them, allow_http included.
    AmazonS3Builder::new()
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(tuning.connect_timeout)
                .with_timeout(tuning.request_timeout),
        )
        .with_endpoint(endpoint)
        .with_allow_http(endpoint.starts_with("http://"))
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
                base: 2.0,
            },
            max_retries: tuning.max_retries,
            retry_timeout: tuning.retry_budget,
        })
}

impl S3Backend {
    pub fn open(url: &str, tuning: &S3Tuning) -> Result<S3Backend> {
        let u = S3Url::parse(url).map_err(StorageError::Setup)?;
        if let Some(w) = plain_http_warning(&u.endpoint) {
            if first_time(&HTTP_WARNED) {
                eprintln!("warning: {w}");
            }
        }
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        let mut b = builder(&u.endpoint, &u.bucket, tuning).with_region(region);
        match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(id), Ok(secret)) => {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
                if let Ok(t) = std::env::var("AWS_SESSION_TOKEN") {
                    b = b.with_token(t);
                }
            }
            _ => match profile_credentials() {
                Some((id, secret, token)) => {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                    if let Some(t) = token {
                        b = b.with_token(t);
                    }
                }
                None => {
                    return Err(StorageError::Setup("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials".into()))
                }
            },
        }
        let display = format!(
            "s3:{}/{}{}{}",
            u.endpoint,
            u.bucket,
            if u.prefix.is_empty() { "" } else { "/" },
            u.prefix
        );
        S3Backend::build(b, u.prefix, display, tuning)
    }

    /// `serve:https://HOST:PORT/REPO`: repository REPO (a bucket) on a server that `bakare
    /// serve` runs and this machine has joined (joined.rs): its credentials are the joined
    /// entry's, never AWS_* nor ~/.aws; its certificate is the pinned one when the invitation
    /// pinned one, else one a public CA signed.
    pub fn open_served(url: &str, tuning: &S3Tuning) -> Result<S3Backend> {
        let u = ServedUrl::parse(url).map_err(StorageError::Setup)?;
        let joined = crate::joined::load(&u.host_port).map_err(|e| StorageError::Setup(e.to_string()))?;
        S3Backend::open_joined(&u, &joined, tuning)
    }

    /// `open_served` with the joined server given rather than looked up.
    pub fn open_served_with(url: &str, joined: &Joined, tuning: &S3Tuning) -> Result<S3Backend> {
        let u = ServedUrl::parse(url).map_err(StorageError::Setup)?;
        S3Backend::open_joined(&u, joined, tuning)
    }

    fn open_joined(u: &ServedUrl, joined: &Joined, tuning: &S3Tuning) -> Result<S3Backend> {
        // The region only enters the signature: `bakare serve` takes AWS's default.
        // Signing the payload's SHA-256 would hash every byte twice (here and on the server)
        // for what TLS, always on, already protects; the server checks content-addressed names
        // itself.
        let mut b = builder(&joined.url, &u.repo, tuning)
            .with_unsigned_payload(true)
            .with_region("us-east-1")
            .with_access_key_id(&joined.access_key)
            .with_secret_access_key(&joined.secret);
        if let Some(pin) = joined.sha256 {
            b = b.with_http_connector(PinnedConnector {
                host_port: u.host_port.clone(),
                pin,
                connect_timeout: tuning.connect_timeout,
                request_timeout: tuning.request_timeout,
            });
        }
        S3Backend::build(b, String::new(), u.to_string(), tuning)
    }

    fn build(b: AmazonS3Builder, prefix: String, display: String, tuning: &S3Tuning) -> Result<S3Backend> {
        let store = b.build().map_err(|e| StorageError::Setup(format!("S3 repository {display}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bakare-s3")
            .enable_all()
            .build()
            .map_err(|e| StorageError::io("", e))?;
        Ok(S3Backend {
            store: Arc::new(store),
            prefix,
            rt: Arc::new(rt),
            display,
            max_retries: tuning.max_retries,
            retry_budget: tuning.retry_budget,
        })
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    /// A URL that GETs `key` for `expires` without any other credential (SigV4 in the query):
    /// what `bakare peers audit` sends its challenges to, with the challenge in a header.
    pub fn presigned_get(&self, key: &str, expires: Duration) -> Result<String> {
        use object_store::signer::Signer;
        let path = self.path(key)?;
        let store = self.store.clone();
        self.rt
            .block_on(async move { store.signed_url(reqwest::Method::GET, &path, expires).await })
            .map(|u| u.to_string())
            .map_err(|e| remote(key, e))
    }

    fn path(&self, key: &str) -> Result<ObjPath> {
        let ok = !key.is_empty()
            && key
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != ".." && p.bytes().all(|b| b.is_ascii_graphic()));
        if !ok {
            return Err(StorageError::BadKey { key: key.to_string() });
        }
        Ok(if self.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.prefix))
        })
    }

    fn key_of(&self, p: &ObjPath) -> String {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            s.to_string()
        } else {
            s.strip_prefix(&self.prefix)
                .map(|r| r.trim_start_matches('/').to_string())
                .unwrap_or_else(|| s.to_string())
        }
    }

    fn upload_file(&self, key: &str, mut file: File) -> Result<()> {
        let path = self.path(key)?;
        let len = file.seek(SeekFrom::End(0)).map_err(|e| StorageError::io(key, e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| StorageError::io(key, e))?;
        if len <= MULTIPART_ABOVE {
            let mut data = Vec::with_capacity(len as usize);
            file.read_to_end(&mut data).map_err(|e| StorageError::io(key, e))?;
            let payload = PutPayload::from(bytes::Bytes::from(data));
            return self.rt.block_on(async {
                let mut r = Retry::new(self);
                loop {
                    match self.store.put(&path, payload.clone()).await {
                        Ok(_) => return Ok(()),
                        Err(e) if r.again(&e).await => {}
                        Err(e) => return Err(r.fail(key, e)),
                    }
                }
            });
        }
        self.rt.block_on(async {
            let mut r = Retry::new(self);
            loop {
                // Every attempt uploads the whole pack again, from its staged file.
                file.seek(SeekFrom::Start(0)).map_err(|e| StorageError::io(key, e))?;
                match self.multipart(key, &path, &mut file).await? {
                    Ok(()) => return Ok(()),
                    Err(e) if r.again(&e).await => {}
                    Err(e) => return Err(r.fail(key, e)),
                }
            }
        })
    }

    /// One multipart upload of `file`: local read errors end the operation (outer `Err`),
    /// remote ones are for the caller to retry (inner `Err`). A failed upload is aborted, so
    /// its parts do not linger on the server.
    async fn multipart(
        &self,
        key: &str,
        path: &ObjPath,
        file: &mut File,
    ) -> Result<std::result::Result<(), object_store::Error>> {
        let upload = match self.store.put_multipart(path).await {
            Ok(u) => u,
            Err(e) => return Ok(Err(e)),
        };
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut buf = vec![0u8; PART];
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(StorageError::io(key, e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = w.wait_for_capacity(2).await {
                let _ = w.abort().await;
                return Ok(Err(forgotten(e)));
            }
            w.write(&buf[..n]);
        }
        Ok(w.finish().await.map(|_| ()).map_err(forgotten))
    }
}

struct S3Staged {
    file: File,
    backend: S3Backend,
}

impl Write for S3Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Staged for S3Staged {
    fn commit(self: Box<Self>, key: &str) -> Result<()> {
        let S3Staged { file, backend } = *self;
        backend.upload_file(key, file)
    }
}

/// A multipart upload the server no longer knows (404 NoSuchUpload: `bakare serve` restarted, or
/// forgot an upload left idle) is started again whole rather than failing the run: `NotFound` is
/// final for other requests, so it is turned into an error that is retried.
fn forgotten(e: object_store::Error) -> object_store::Error {
    match e {
        object_store::Error::NotFound { path, source } => object_store::Error::Generic {
            store: "S3",
            source: format!("the server forgot the upload of {path} ({source}); uploading it again").into(),
        },
        e => e,
    }
}

/// Runs `$op` (an expression giving a future) until it succeeds or `Retry` gives up; the value
/// is the final `Result<T, object_store::Error>` and the `Retry`, for the caller to map.
macro_rules! retried {
    ($self:ident, $op:expr) => {
        $self.rt.block_on(async {
            let mut r = Retry::new($self);
            loop {
                match $op.await {
                    Ok(v) => break (Ok(v), r),
                    Err(e) if r.again(&e).await => {}
                    Err(e) => break (Err(e), r),
                }
            }
        })
    };
}

impl Backend for S3Backend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(data));
        let opts = || PutOptions { mode: PutMode::Create, ..Default::default() };
        match retried!(self, self.store.put_opts(&path, payload.clone(), opts())) {
            (Ok(_), _) | (Err(object_store::Error::AlreadyExists { .. }), _) => Ok(()),
            (Err(e), r) => Err(r.fail(key, e)),
        }
    }

    fn stage(&self) -> Result<Box<dyn Staged>> {
        let file = tempfile::tempfile().map_err(|e| StorageError::io("(a temporary file for a pack)", e))?;
        Ok(Box::new(S3Staged { file, backend: self.clone() }))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        match retried!(self, async { self.store.get(&path).await?.bytes().await }) {
            (Ok(b), _) => Ok(b.to_vec()),
            (Err(e), r) => Err(r.fail(key, e)),
        }
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.get_range_into(key, offset, len, &mut buf)?;
        Ok(buf)
    }

    /// Streams the range into `buf` as it arrives: no copy gathered first and copied again
    /// (which, for the ranges a restore reads, cost more CPU in fresh pages than the rest of
    /// the request).
    fn get_range_into(&self, key: &str, offset: u64, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        let path = self.path(key)?;
        let range = offset..offset + len as u64;
        buf.clear();
        buf.reserve(len);
        let got = retried!(self, async {
            buf.clear();
            let opts = object_store::GetOptions { range: Some(range.clone().into()), ..Default::default() };
            let mut body = self.store.get_opts(&path, opts).await?.into_stream();
            while let Some(piece) = body.try_next().await? {
                if buf.len() + piece.len() > len {
                    return Err(object_store::Error::Generic {
                        store: "S3",
                        source: "the server sent more bytes than the range asked for".into(),
                    });
                }
                buf.extend_from_slice(&piece);
            }
            Ok(())
        });
        if let (Err(e), r) = got {
            return Err(r.fail(key, e));
        }
        if buf.len() != len {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "object shorter than expected");
            return Err(StorageError::Io { key: key.to_string(), source: e });
        }
        Ok(())
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path(key)?;
        match retried!(self, self.store.head(&path)) {
            (Ok(m), _) => Ok(m.size),
            (Err(e), r) => Err(r.fail(key, e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let path = self.path(dir)?;
        // The whole listing is retried: a page that failed leaves no usable cursor.
        let metas: Vec<object_store::ObjectMeta> =
            match retried!(self, self.store.list(Some(&path)).try_collect::<Vec<_>>()) {
                (Ok(m), _) => m,
                (Err(e), r) => return Err(r.fail(dir, e)),
            };
        Ok(metas.into_iter().map(|m| self.key_of(&m.location)).collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match retried!(self, self.store.delete(&path)) {
            (Ok(()), _) | (Err(object_store::Error::NotFound { .. }), _) => Ok(()),
            (Err(e), r) => Err(r.fail(key, e)),
        }
    }

    fn remote(&self) -> bool {
        true
    }

    fn replace(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(data));
        match retried!(self, self.store.put(&path, payload.clone())) {
            (Ok(_), _) => Ok(()),
            (Err(e), r) => Err(r.fail(key, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = S3Url::parse("s3:http://127.0.0.1:9000/bucket/some/prefix/").unwrap();
        assert_eq!(u.endpoint, "http://127.0.0.1:9000");
        assert_eq!(u.bucket, "bucket");
        assert_eq!(u.prefix, "some/prefix");
        assert_eq!(S3Url::parse("s3:https://s3.example.com/b").unwrap().prefix, "");
        for bad in ["s3:ftp://h/b", "s3:http://h", "s3:http:///b", "s3:h/b", "s3:http://h/"] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }

    /// What object_store 0.12 says about a request AWS refused for a bad signature: its
    /// description, then the server's reply body.
    fn refused(body: &str) -> String {
        format!(
            "Generic S3 error: Error performing PUT http://s3.example.com/bucket/repo/pending/ab12 in \
             31.2ms - Server returned non-2xx status code: 403 Forbidden: {body}"
        )
    }

    const SIGNATURE_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\
        <Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match \
        the signature you provided.</Message><AWSAccessKeyId>AKIAIOSFODNN7EXAMPLE</AWSAccessKeyId>\
        <StringToSign>AWS4-HMAC-SHA256\n20260101T000000Z</StringToSign><RequestId>4442587FB7D0A2F9</RequestId>\
        </Error>";

    #[test]
    fn s3_error_codes_are_plain_words_or_nothing() {
        assert_eq!(s3_error_code(SIGNATURE_BODY), Some("SignatureDoesNotMatch"));
        assert_eq!(s3_error_code("<Error><Code>AccessDenied</Code></Error>"), Some("AccessDenied"));
        assert_eq!(s3_error_code("<Code>NoSuchKey</Code>"), Some("NoSuchKey"));
        let localized = "<Code>AccessDenied</Code><Message>Zugriff für ÄÖÜ verweigert ééééééééé</Message>";
        assert_eq!(s3_error_code(localized), Some("AccessDenied"));
        let long = format!("<Code>{}</Code>", "A".repeat(65));
        let max = format!("<Code>{}</Code>", "A".repeat(64));
        assert_eq!(s3_error_code(&max).map(str::len), Some(64));
        for bad in [
            "",
            "no xml at all",
            "<Code></Code>",
            "<Code>Access Denied</Code>",
            "<Code>AKIA/secret</Code>",
            "<Code><![CDATA[x]]></Code>",
            "<Code>Unterminated",
            "<Code>Ünicode</Code>",
            long.as_str(),
        ] {
            assert_eq!(s3_error_code(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_messages_keep_status_and_code_but_never_the_body() {
        let why = without_reply_body(&refused(SIGNATURE_BODY));
        assert_eq!(
            why,
            "Generic S3 error: Error performing PUT http://s3.example.com/bucket/repo/pending/ab12 in 31.2ms: \
             the server answered HTTP 403, S3 error code SignatureDoesNotMatch"
        );
        for secret in ["AKIAIOSFODNN7EXAMPLE", "AWS4-HMAC-SHA256", "StringToSign", "<", "signature you"] {
            assert!(!why.contains(secret), "{secret} in {why}");
        }
        // Through the whole error path, retries included.
        let e = StorageError::Remote { key: "pending/ab12".into(), why };
        assert!(!e.to_string().contains("AKIA"), "{e}");
        // A body that is not S3's XML: the status only.
        let why = without_reply_body(&refused("AKIAIOSFODNN7EXAMPLE is not allowed"));
        assert!(why.ends_with("the server answered HTTP 403") && !why.contains("AKIA"), "{why}");
        // A 200 with an error body (object_store: "error response"): the code only.
        let text = "Generic S3 error: Error performing POST http://h/b/k in 2ms - Server returned error \
                    response: <Error><Code>InternalError</Code><Message>AKIAIOSFODNN7EXAMPLE</Message></Error>";
        let why = without_reply_body(text);
        assert!(why.ends_with("the server answered an error, S3 error code InternalError"), "{why}");
        assert!(!why.contains("AKIA"), "{why}");
        // No reply at all (a connection that broke): nothing to hide, said as it was.
        let text =
            "Generic S3 error: Error performing GET http://h/b/k in 1s - HTTP error: error sending request";
        assert_eq!(without_reply_body(text), text);
    }

    /// A pinned repository on a server with another certificate: the operation ends at once
    /// (no retries for minutes), and the whole account of why reaches the message; with the
    /// right pin, the request gets through (the test server answers 404 to everything).
    #[test]
    fn a_pin_mismatch_is_said_and_not_retried() {
        use crate::pinned::test_server::{fingerprint, server};
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (port, _) = server(&rt);
        let u = ServedUrl::parse(&format!("serve:https://127.0.0.1:{port}/photos")).unwrap();
        let mut joined = Joined {
            url: format!("https://127.0.0.1:{port}"),
            sha256: Some(fingerprint()),
            access_key: "laptop".into(),
            secret: "ab".repeat(32),
        };
        let b = S3Backend::open_joined(&u, &joined, &S3Tuning::default()).unwrap();
        assert_eq!(b.display(), format!("serve:https://127.0.0.1:{port}/photos"));
        assert!(matches!(b.get("config"), Err(StorageError::NotFound { .. })));

        let mut wrong = fingerprint();
        wrong[31] ^= 0x80;
        joined.sha256 = Some(wrong);
        let b = S3Backend::open_joined(&u, &joined, &S3Tuning::default()).unwrap();
        let start = Instant::now();
        let e = b.get("config").unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(5), "retried for {:?}: {e}", start.elapsed());
        let said = format!(
            "the server at 127.0.0.1:{port} presented a certificate with SHA-256 {}, but this machine joined \
             it with {}: refusing to connect (a different server, or it made a new certificate; join again \
             with a new invitation)",
            hex::encode(fingerprint()),
            hex::encode(wrong)
        );
        assert!(e.contains(&said), "{e}");
        assert!(!e.contains(&"ab".repeat(32)), "{e}");
        eprintln!("{e}");
    }

    #[test]
    fn plain_http_is_warned_about_once_per_process() {
        let w = plain_http_warning("http://s3.example.com:9000").unwrap();
        assert!(w.contains("https") && w.contains("unencrypted"), "{w}");
        assert_eq!(plain_http_warning("https://s3.example.com"), None);
        let flag = AtomicBool::new(false);
        assert!(first_time(&flag));
        assert!(!first_time(&flag));
        assert!(!first_time(&flag));
    }
}
