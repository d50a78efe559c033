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
//!   an error naming the object and saying how long it was retried.
//!
//! URL: `s3:http(s)://host[:port]/bucket[/prefix]`. Credentials: AWS_ACCESS_KEY_ID,
//! AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), AWS_REGION or AWS_DEFAULT_REGION (default
//! us-east-1); without them, the `[AWS_PROFILE or default]` section of ~/.aws/credentials.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, WriteMultipart,
};

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

/// Whether trying again could help: not for answers about the object or the credentials.
fn transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
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
        e => StorageError::Remote { key: key.to_string(), why: e.to_string() },
    }
}

impl S3Backend {
    pub fn open(url: &str, tuning: &S3Tuning) -> Result<S3Backend> {
        let u = S3Url::parse(url).map_err(StorageError::Setup)?;
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        // Client options first: they replace everything set through them, allow_http included.
        let mut b = AmazonS3Builder::new()
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(tuning.connect_timeout)
                    .with_timeout(tuning.request_timeout),
            )
            .with_endpoint(&u.endpoint)
            .with_allow_http(u.endpoint.starts_with("http://"))
            .with_bucket_name(&u.bucket)
            .with_region(region)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: tuning.max_retries,
                retry_timeout: tuning.retry_budget,
            });
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
        let store = b.build().map_err(|e| StorageError::Setup(format!("S3 repository {url}: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bakare-s3")
            .enable_all()
            .build()
            .map_err(|e| StorageError::io("", e))?;
        let display = format!(
            "s3:{}/{}{}{}",
            u.endpoint,
            u.bucket,
            if u.prefix.is_empty() { "" } else { "/" },
            u.prefix
        );
        Ok(S3Backend {
            store: Arc::new(store),
            prefix: u.prefix,
            rt: Arc::new(rt),
            display,
            max_retries: tuning.max_retries,
            retry_budget: tuning.retry_budget,
        })
    }

    pub fn display(&self) -> &str {
        &self.display
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
                return Ok(Err(e));
            }
            w.write(&buf[..n]);
        }
        Ok(w.finish().await.map(|_| ()))
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
        let path = self.path(key)?;
        let data = match retried!(self, self.store.get_range(&path, offset..offset + len as u64)) {
            (Ok(d), _) => d,
            (Err(e), r) => return Err(r.fail(key, e)),
        };
        if data.len() != len {
            let e = io::Error::new(io::ErrorKind::UnexpectedEof, "object shorter than expected");
            return Err(StorageError::Io { key: key.to_string(), source: e });
        }
        Ok(data.to_vec())
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
}
