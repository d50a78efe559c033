//! The S3 operations bakare's client uses, over repositories stored as directories (the layout
//! of a local repository, so the owner can also run commands on the server's disk directly).
//!
//! Append-only for clients: an object is created once (temporary name, fsync, link(2) that
//! never replaces, fsync the directory); writing a name that exists succeeds only with the same
//! bytes (a retry, or the same content-addressed object from another client) and is otherwise
//! refused with 403, as is every DELETE. The owner's credential may replace and delete (prune,
//! forget).

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt;
use rand::RngCore;
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3Request, S3Response, S3Result, S3};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::quota::Usage;
use crate::relay::Notes;
use crate::state::{Client, StateDir};
use ::io::storage::valid_key;

/// The clients, read again from disk whenever the file changes: `--add-client` and
/// `--remove-client` take effect on a running server.
pub(crate) struct Clients {
    state: StateDir,
    /// The clients file's inode and mtime when read, and what it said.
    cache: Mutex<(Option<FileStamp>, std::collections::BTreeMap<String, Client>)>,
}

type FileStamp = (u64, SystemTime);

impl Clients {
    pub(crate) fn new(state: StateDir) -> Clients {
        Clients { state, cache: Mutex::new((None, Default::default())) }
    }

    pub(crate) fn get(&self, name: &str) -> S3Result<Option<Client>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.state.path().join("clients.json");
        let stamp = fs::metadata(&path).ok().and_then(|m| Some((m.ino(), m.modified().ok()?)));
        let mut cache = self.cache.lock().map_err(|_| s3_error!(InternalError, "a thread panicked"))?;
        if cache.0.is_none() || cache.0 != stamp {
            let clients = self.state.clients().map_err(|e| {
                eprintln!("bakare serve: {e}");
                s3_error!(InternalError, "the server cannot read its clients")
            })?;
            *cache = (stamp, clients);
        }
        Ok(cache.1.get(name).cloned())
    }
}

pub(crate) struct Auth(pub(crate) Arc<Clients>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.get(access_key)? {
            Some(c) => Ok(SecretKey::from(c.secret)),
            None => Err(s3_error!(InvalidAccessKeyId, "no client of that name on this server")),
        }
    }
}

/// A multipart upload in progress: its parts are files in `dir`.
struct Upload {
    client: String,
    bucket: String,
    key: String,
    dir: PathBuf,
    /// Bytes of its parts so far (they count against the client's quota while it is open).
    bytes: u64,
    /// When it was started or last given a part: uploads a killed client left are forgotten
    /// after `UPLOAD_IDLE`.
    touched: std::time::Instant,
}

/// An upload without a new part for this long is forgotten (its client was killed or gave up).
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

pub(crate) struct Store {
    storage: PathBuf,
    uploads_dir: PathBuf,
    clients: Arc<Clients>,
    usage: Arc<Usage>,
    /// The relay's, when there is one.
    notes: Option<Arc<Notes>>,
    uploads: Mutex<HashMap<String, Upload>>,
}

/// Confines a friend's credential to its own repository: every request naming another is
/// refused before its body is read.
pub(crate) struct Access(pub(crate) Arc<Clients>);

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        let Some(cred) = cx.credentials() else {
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are refused: sign with a client's credential"
            ));
        };
        let client = self
            .0
            .get(&cred.access_key)?
            .ok_or_else(|| s3_error!(InvalidAccessKeyId, "no client of that name"))?;
        let Some(only) = &client.repo else { return Ok(()) };
        let bucket = match cx.s3_path() {
            s3s::path::S3Path::Root => None,
            s3s::path::S3Path::Bucket { bucket } | s3s::path::S3Path::Object { bucket, .. } => Some(bucket),
        };
        match bucket {
            Some(b) if **b == **only => Ok(()),
            _ => {
                Err(s3_error!(AccessDenied, "client {} may use only its own repository, {only}", client.name))
            }
        }
    }
}

fn internal(what: impl std::fmt::Display) -> S3Error {
    eprintln!("bakare serve: {what}");
    s3_error!(InternalError, "the server failed to store or read the object (see its log)")
}

fn blocking_failed(e: tokio::task::JoinError) -> S3Error {
    internal(format!("a storage task failed: {e}"))
}

/// The largest object the server takes (packs are 32 MiB and parity): the relay reads objects
/// whole, and a client must not be able to make it hold gigabytes.
pub(crate) const MAX_OBJECT: u64 = 256 << 20;
/// Multipart uploads a client may have open at once.
const MAX_UPLOADS: usize = 16;

/// What a client that is not the owner may write under `key`: the names a backup makes, and
/// nothing else (a file planted where the repository needs a directory would stop everyone's
/// writes there). `Some(true)`: the name must be the BLAKE3 of the bytes (the relay, sync and
/// check hold them to it); `Some(false)`: any bytes; `None`: refused.
fn client_layout(key: &str) -> Option<bool> {
    let hex64 =
        |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["config" | "index-signed"] => Some(false),
        ["packs", fan, name] if hex64(name) && name.starts_with(fan) && fan.len() == 2 => Some(true),
        ["index" | "snapshots" | "pending" | "writers" | "roster", name] if hex64(name) => Some(true),
        ["abandoned", name] if hex64(name) => Some(false),
        _ => None,
    }
}

/// Creates `dir` and its missing parents, fsyncing the directory that holds each new one: an
/// object acknowledged in a new directory survives a power loss with its directory.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.exists() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    for m in missing.into_iter().rev() {
        match fs::create_dir(m) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if let Some(p) = m.parent() {
            ::io::durable::sync_dir(p)?;
        }
    }
    Ok(())
}

/// A strong validator from what the file system knows (content never changes under a name,
/// except through the owner's replace, which makes a new inode).
fn etag(md: &fs::Metadata) -> ETag {
    use std::os::unix::fs::MetadataExt;
    ETag::Strong(format!(
        "{:x}-{:x}-{:x}",
        md.ino(),
        md.mtime_nsec() as u64 ^ (md.mtime() as u64) << 30,
        md.len()
    ))
}

fn modified(md: &fs::Metadata) -> Timestamp {
    Timestamp::from(md.modified().unwrap_or(SystemTime::UNIX_EPOCH))
}

/// What happened to a written object.
enum Published {
    Created,
    /// The name existed with the same bytes.
    Same,
    /// The name existed with other bytes and the owner replaced it.
    Replaced,
    /// The name existed and the request was create-only.
    Exists,
    /// The name existed with other bytes and the writer may not replace.
    Refused,
}

/// Whether two files hold the same bytes, reading both in 256 KiB pieces.
fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 256 << 10], vec![0u8; 256 << 10]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Puts the synced temporary file `tmp` (held open as `held`) at `dest`, never replacing what is
/// there unless `may_replace`; the temporary file is gone afterwards whatever happens.
fn publish(
    held: File,
    tmp: &Path,
    dest: &Path,
    create_only: bool,
    may_replace: bool,
) -> std::io::Result<Published> {
    let result = (|| {
        held.sync_all()?;
        let dir = dest.parent().ok_or_else(|| std::io::Error::other("an object path without a directory"))?;
        create_dirs_durably(dir)?;
        match fs::hard_link(tmp, dest) {
            Ok(()) => {
                ::io::durable::sync_dir(dir)?;
                Ok(Published::Created)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if create_only {
                    Ok(Published::Exists)
                } else if same_bytes(tmp, dest)? {
                    Ok(Published::Same)
                } else if may_replace {
                    fs::rename(tmp, dest)?;
                    ::io::durable::sync_dir(dir)?;
                    Ok(Published::Replaced)
                } else {
                    Ok(Published::Refused)
                }
            }
            Err(e) => Err(e),
        }
    })();
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if result.is_ok() => return Err(e),
        Err(_) => {}
    }
    drop(held);
    result
}

impl Store {
    pub(crate) fn new(
        storage: &Path,
        state: &StateDir,
        clients: Arc<Clients>,
        usage: Arc<Usage>,
        notes: Option<Arc<Notes>>,
    ) -> crate::Result<Store> {
        // Parts of uploads that were in progress when the server stopped: their clients retry
        // the whole upload, under a new id.
        let uploads_dir = state.path().join("uploads");
        match fs::remove_dir_all(&uploads_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::Error::io(&uploads_dir, e)),
        }
        ::io::durable::create_private_dir_all(&uploads_dir).map_err(|e| crate::Error::io(&uploads_dir, e))?;
        sweep_leftovers(storage);
        Ok(Store {
            storage: storage.to_path_buf(),
            uploads_dir,
            clients,
            usage,
            notes,
            uploads: Mutex::new(HashMap::new()),
        })
    }

    /// The client making the request; anonymous requests are refused.
    fn client<T>(&self, req: &S3Request<T>) -> S3Result<Client> {
        let Some(cred) = &req.credentials else {
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are refused: sign with a client's credential"
            ));
        };
        self.clients
            .get(&cred.access_key)?
            .ok_or_else(|| s3_error!(InvalidAccessKeyId, "no client of that name"))
    }

    fn repo(&self, bucket: &str) -> S3Result<PathBuf> {
        if !::io::joined::valid_bucket(bucket) {
            return Err(s3_error!(InvalidBucketName, "not a repository name: 3 to 63 of a-z, 0-9, '.', '-'"));
        }
        Ok(self.storage.join(bucket))
    }

    fn object(&self, bucket: &str, key: &str) -> S3Result<(PathBuf, PathBuf)> {
        let root = self.repo(bucket)?;
        if !valid_key(key) {
            return Err(s3_error!(InvalidArgument, "not an object name of a bakare repository"));
        }
        let path = root.join(key);
        Ok((root, path))
    }

    /// A new temporary file in the repository's `tmp/`, locked like a local writer's (so the
    /// owner's prune on this disk leaves it alone while it is written).
    async fn stage(&self, root: &Path) -> S3Result<(File, PathBuf)> {
        let (root, shown) = (root.to_path_buf(), root.display().to_string());
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            let tmp_dir = root.join("tmp");
            if !root.exists() {
                fs::create_dir_all(&tmp_dir)?;
                ::io::durable::sync_dir(&storage)?;
            } else {
                fs::create_dir_all(&tmp_dir)?;
            }
            ::io::durable::create_held(&tmp_dir)
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| internal(format!("{shown}: {e}")))
    }

    /// What `client` may write at `key`: refused outside a repository's layout unless it is
    /// the owner; true when the name must be the BLAKE3 of the bytes.
    fn may_write(&self, client: &Client, key: &str) -> S3Result<bool> {
        if client.owner {
            return Ok(false);
        }
        client_layout(key).ok_or_else(|| {
            eprintln!(
                "bakare serve: refused: client {} tried to write {key}, not a name a backup writes",
                client.name
            );
            s3_error!(AccessDenied, "not a name a backup writes (only the owner may write others)")
        })
    }

    /// Writes what `fill` puts in the staged file and publishes it at `dest`.
    #[allow(clippy::too_many_arguments)]
    async fn store(
        &self,
        client: &Client,
        bucket: &str,
        root: &Path,
        dest: PathBuf,
        key: &str,
        create_only: bool,
        fill: impl FnOnce(File) -> futures::future::BoxFuture<'static, S3Result<Filled>>,
    ) -> S3Result<ETag> {
        let hashed = self.may_write(client, key)?;
        let (held, tmp) = self.stage(root).await?;
        let mut discard = Discard(Some(tmp.clone()));
        let filled = fill(held).await?;
        if hashed && key.rsplit('/').next() != Some(filled.hash.to_hex().as_str()) {
            eprintln!("bakare serve: refused: client {} sent bytes that are not named {key}", client.name);
            return Err(s3_error!(BadDigest, "the name of this object must be the BLAKE3 of its bytes"));
        }
        // The authoritative quota check, the whole object reserved before it is published (and
        // given back below unless it was created).
        self.usage.reserve(client, filled.len)?;
        // From here the blocking task runs to its end even if the request is dropped: it removes
        // the temporary file, and settles the usage and the relay's note.
        discard.0 = None;
        let may_replace = client.owner;
        let at = dest.clone();
        let (usage, notes, name, repo, len) =
            (self.usage.clone(), self.notes.clone(), client.name.clone(), bucket.to_string(), filled.len);
        let published = tokio::task::spawn_blocking(move || {
            let p = publish(filled.file, &tmp, &at, create_only, may_replace);
            match (&p, &notes) {
                (Ok(Published::Created), Some(n)) => n.created(&repo, len),
                (Ok(Published::Created), None) => {}
                _ => usage.refund(&name, len),
            }
            Ok::<_, std::io::Error>((p?, fs::metadata(&at)?))
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| internal(format!("{}: {e}", dest.display())))?;
        match published {
            (Published::Created | Published::Same | Published::Replaced, md) => Ok(etag(&md)),
            (Published::Exists, _) => Err(s3_error!(PreconditionFailed, "the object exists already")),
            (Published::Refused, _) => {
                eprintln!(
                    "bakare serve: refused: client {} tried to replace {key} with other bytes",
                    client.name
                );
                Err(s3_error!(
                    AccessDenied,
                    "append-only: client {} may add objects but not replace {key} (only the owner may)",
                    client.name
                ))
            }
        }
    }
}

/// Removes a temporary file when dropped: on errors, and when a request cut short drops its
/// future in the middle of an upload.
struct Discard(Option<PathBuf>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// A temporary file written whole: its length and BLAKE3.
pub(crate) struct Filled {
    file: File,
    len: u64,
    hash: blake3::Hash,
}

/// The most bytes a request may send: what it declared, and never more than `MAX_OBJECT`.
fn body_limit(content_length: Option<i64>) -> u64 {
    content_length.and_then(|n| u64::try_from(n).ok()).unwrap_or(MAX_OBJECT).min(MAX_OBJECT)
}

fn too_large(declared: Option<i64>) -> S3Error {
    if declared.is_some_and(|n| n >= 0 && (n as u64) <= MAX_OBJECT) {
        s3_error!(IncompleteBody, "the body is longer than its Content-Length")
    } else {
        s3_error!(EntityTooLarge, "objects are at most {} bytes on this server", MAX_OBJECT)
    }
}

/// Bodies in aws-chunked encoding (`x-amz-content-sha256: STREAMING-…`) are refused: s3s
/// reads each chunk whole before checking it, and does not hold the decoded length to what was
/// declared. bakare (object_store) never sends them.
fn refuse_streaming(headers: &hyper::HeaderMap) -> S3Result<()> {
    let streaming = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"));
    if streaming {
        return Err(s3_error!(NotImplemented, "aws-chunked uploads are not accepted: send a plain body"));
    }
    Ok(())
}

/// Copies a request body into a file, hashing it (not buffered whole: memory stays one piece of
/// the body); more than `limit` bytes is an error.
async fn write_body(
    file: File,
    mut body: StreamingBlob,
    limit: u64,
    declared: Option<i64>,
) -> S3Result<Filled> {
    let mut f = tokio::fs::File::from_std(file);
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| s3_error!(IncompleteBody, "the request body broke off: {e}"))?;
        len = len.saturating_add(piece.len() as u64);
        if len > limit {
            return Err(too_large(declared));
        }
        hasher.update(&piece);
        f.write_all(&piece).await.map_err(|e| internal(format!("writing an upload: {e}")))?;
    }
    f.flush().await.map_err(|e| internal(format!("writing an upload: {e}")))?;
    Ok(Filled { file: f.into_std().await, len, hash: hasher.finalize() })
}

fn new_upload_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

#[async_trait::async_trait]
impl S3 for Store {
    /// Browser-form uploads: not for backups (s3s would hand them to `put_object`).
    async fn post_object(&self, _req: S3Request<PostObjectInput>) -> S3Result<S3Response<PostObjectOutput>> {
        Err(s3_error!(NotImplemented, "POST uploads are not accepted"))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let client = self.client(&req)?;
        refuse_streaming(&req.headers)?;
        let input = req.input;
        let (root, dest) = self.object(&input.bucket, &input.key)?;
        self.may_write(&client, &input.key)?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let create_only = input.if_none_match.as_ref().is_some_and(|c| c.is_any());
        if create_only && dest.exists() {
            return Err(s3_error!(PreconditionFailed, "the object exists already"));
        }
        // Refused before the body is read when its length says so.
        let declared = input.content_length;
        if declared.is_some_and(|n| n < 0 || n as u64 > MAX_OBJECT) {
            return Err(too_large(declared));
        }
        self.usage.check(&client, declared.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))?;
        let limit = body_limit(declared);
        let e_tag = self
            .store(&client, &input.bucket, &root, dest, &input.key, create_only, move |f| {
                Box::pin(write_body(f, body, limit, declared))
            })
            .await?;
        Ok(S3Response::new(PutObjectOutput { e_tag: Some(e_tag), ..Default::default() }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.client(&req)?;
        let input = req.input;
        let (_, path) = self.object(&input.bucket, &input.key)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => s3_error!(NoSuchKey),
            _ => internal(format!("{}: {e}", path.display())),
        })?;
        let md = file.metadata().await.map_err(|e| internal(format!("{}: {e}", path.display())))?;
        if !md.is_file() {
            return Err(s3_error!(NoSuchKey));
        }
        let len = md.len();
        let (range, content_range) = match &input.range {
            None => (0..len, None),
            Some(r) => {
                let r = r.check(len).map_err(|_| s3_error!(InvalidRange))?;
                let cr = format!("bytes {}-{}/{len}", r.start, r.end.saturating_sub(1));
                (r, Some(cr))
            }
        };
        let n = range.end - range.start;
        file.seek(SeekFrom::Start(range.start))
            .await
            .map_err(|e| internal(format!("{}: {e}", path.display())))?;
        let body = ReaderStream::with_capacity(file.take(n), 256 << 10);
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(i64::try_from(n).map_err(|_| s3_error!(InvalidRange))?),
            content_range,
            last_modified: Some(modified(&md)),
            e_tag: Some(etag(&md)),
            ..Default::default()
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.client(&req)?;
        let (_, path) = self.object(&req.input.bucket, &req.input.key)?;
        let md = tokio::fs::metadata(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => s3_error!(NoSuchKey),
            _ => internal(format!("{}: {e}", path.display())),
        })?;
        if !md.is_file() {
            return Err(s3_error!(NoSuchKey));
        }
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(i64::try_from(md.len()).map_err(|_| s3_error!(InternalError))?),
            last_modified: Some(modified(&md)),
            e_tag: Some(etag(&md)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let client = self.client(&req)?;
        let (_, path) = self.object(&req.input.bucket, &req.input.key)?;
        if !client.owner {
            eprintln!("bakare serve: refused: client {} tried to delete {}", client.name, req.input.key);
            return Err(s3_error!(
                AccessDenied,
                "append-only: client {} may not delete (only the owner may)",
                client.name
            ));
        }
        tokio::task::spawn_blocking(move || match fs::remove_file(&path) {
            Ok(()) => path.parent().map_or(Ok(()), ::io::durable::sync_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await
        .map_err(blocking_failed)?
        .map_err(|e| internal(format!("deleting {}: {e}", req.input.key)))?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.client(&req)?;
        let input = req.input;
        let root = self.repo(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        // The directories a prefix reaches must be names inside the repository.
        if let Some((dirs, _)) = prefix.rsplit_once('/') {
            if !dirs.is_empty() && !valid_key(dirs) || prefix.starts_with('/') {
                return Err(s3_error!(InvalidArgument, "not a prefix of a name in a bakare repository"));
            }
        }
        let after = input.continuation_token.clone().or(input.start_after.clone()).unwrap_or_default();
        let max = input.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let (keys, truncated) = {
            let (prefix, after, delimiter) = (prefix.clone(), after.clone(), delimiter.clone());
            tokio::task::spawn_blocking(move || list(&root, &prefix, &after, delimiter.as_deref(), max))
                .await
                .map_err(blocking_failed)?
                .map_err(|e| internal(format!("listing {}: {e}", input.bucket)))?
        };
        let mut contents = Vec::new();
        let mut common = Vec::new();
        for entry in &keys {
            match entry {
                Listed::Object(key, md) => contents.push(Object {
                    key: Some(key.clone()),
                    size: Some(i64::try_from(md.len()).map_err(|_| s3_error!(InternalError))?),
                    last_modified: Some(modified(md)),
                    e_tag: Some(etag(md)),
                    ..Default::default()
                }),
                Listed::Prefix(p) => common.push(CommonPrefix { prefix: Some(p.clone()) }),
            }
        }
        let next = if truncated { keys.last().map(Listed::name) } else { None };
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            max_keys: Some(max as i32),
            key_count: Some(keys.len() as i32),
            continuation_token: input.continuation_token,
            is_truncated: Some(truncated),
            next_continuation_token: next,
            contents: Some(contents),
            common_prefixes: (!common.is_empty()).then_some(common),
            delimiter,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let client = self.client(&req)?;
        let input = req.input;
        self.object(&input.bucket, &input.key)?;
        self.may_write(&client, &input.key)?;
        // Uploads a killed client left (every pack is one) are forgotten when idle, and the
        // oldest when the client is at its cap: they must not lock it out until a restart.
        let id = new_upload_id();
        let dir = self.uploads_dir.join(&id);
        let stale: Vec<PathBuf> = {
            let mut uploads = self.uploads.lock().map_err(|_| internal("a thread panicked"))?;
            let mut gone: Vec<String> = uploads
                .iter()
                .filter(|(_, u)| u.client == client.name && u.touched.elapsed() > UPLOAD_IDLE)
                .map(|(k, _)| k.clone())
                .collect();
            let mut mine: Vec<(std::time::Instant, String)> = uploads
                .iter()
                .filter(|(k, u)| u.client == client.name && !gone.contains(k))
                .map(|(k, u)| (u.touched, k.clone()))
                .collect();
            mine.sort();
            let over = (mine.len() + 1).saturating_sub(MAX_UPLOADS);
            gone.extend(mine.into_iter().take(over).map(|(_, k)| k));
            let dirs = gone.iter().filter_map(|k| uploads.remove(k)).map(|u| u.dir).collect();
            // In the map from now on, so that creates at once count each other.
            uploads.insert(
                id.clone(),
                Upload {
                    client: client.name.clone(),
                    bucket: input.bucket.clone(),
                    key: input.key.clone(),
                    dir: dir.clone(),
                    bytes: 0,
                    touched: std::time::Instant::now(),
                },
            );
            dirs
        };
        for d in stale {
            let _ = tokio::fs::remove_dir_all(d).await;
        }
        if let Err(e) = tokio::fs::create_dir(&dir).await {
            self.forget_upload(&id);
            return Err(internal(format!("{}: {e}", dir.display())));
        }
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let client = self.client(&req)?;
        refuse_streaming(&req.headers)?;
        let input = req.input;
        if !(1..=10_000).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "part numbers go from 1 to 10000"));
        }
        let dir = self.upload_dir(&client, &input.upload_id, &input.bucket, &input.key)?;
        let declared = input.content_length;
        // The client's open uploads count against its quota, and the whole object against the
        // largest the server takes.
        let (so_far, open) = self.upload_bytes(&client, &input.upload_id)?;
        let room = MAX_OBJECT.saturating_sub(so_far);
        if declared.is_some_and(|n| n < 0 || n as u64 > room) {
            return Err(too_large(None));
        }
        self.usage
            .check(&client, open.saturating_add(declared.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)))?;
        let limit = body_limit(declared).min(room);
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let part = dir.join(format!("{:05}", input.part_number));
        // Its own name: the same part sent twice at once must not write one file.
        let partial = dir.join(format!("{:05}.{}.partial", input.part_number, new_upload_id()));
        let file = File::create(&partial).map_err(|e| internal(format!("{}: {e}", partial.display())))?;
        let mut discard = Discard(Some(partial.clone()));
        let filled = write_body(file, body, limit, declared).await?;
        let len = filled.len;
        drop(filled);
        // A part sent again replaces the one before: only the difference is added.
        let before = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        tokio::fs::rename(&partial, &part).await.map_err(|e| internal(format!("{}: {e}", part.display())))?;
        discard.0 = None;
        if let Some(u) =
            self.uploads.lock().map_err(|_| internal("a thread panicked"))?.get_mut(&input.upload_id)
        {
            u.bytes = u.bytes.saturating_sub(before).saturating_add(len);
            u.touched = std::time::Instant::now();
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(format!("{}-{len:x}", input.part_number))),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let client = self.client(&req)?;
        let input = req.input;
        let dir = self.upload_dir(&client, &input.upload_id, &input.bucket, &input.key)?;
        let (root, dest) = self.object(&input.bucket, &input.key)?;
        let parts: Vec<i32> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .iter()
            .map(|p| p.part_number.ok_or_else(|| s3_error!(InvalidPart, "a part without a number")))
            .collect::<S3Result<_>>()?;
        if parts.is_empty() || parts.windows(2).any(|w| w[0] >= w[1]) {
            return Err(s3_error!(InvalidPartOrder, "parts must be listed once each, in ascending order"));
        }
        let create_only = input.if_none_match.as_ref().is_some_and(|c| c.is_any());
        let files: Vec<PathBuf> = parts.iter().map(|n| dir.join(format!("{n:05}"))).collect();
        let e_tag = self
            .store(&client, &input.bucket, &root, dest, &input.key, create_only, move |held| {
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        let mut out = held;
                        let mut hasher = blake3::Hasher::new();
                        let mut len = 0u64;
                        let mut buf = vec![0u8; 256 << 10];
                        for f in &files {
                            let mut part = File::open(f)
                                .map_err(|_| s3_error!(InvalidPart, "a listed part was never uploaded"))?;
                            loop {
                                let n = part
                                    .read(&mut buf)
                                    .map_err(|e| internal(format!("{}: {e}", f.display())))?;
                                if n == 0 {
                                    break;
                                }
                                len = len.saturating_add(n as u64);
                                if len > MAX_OBJECT {
                                    return Err(too_large(None));
                                }
                                hasher.update(&buf[..n]);
                                std::io::Write::write_all(&mut out, &buf[..n])
                                    .map_err(|e| internal(format!("writing an upload: {e}")))?;
                            }
                        }
                        Ok(Filled { file: out, len, hash: hasher.finalize() })
                    })
                    .await
                    .map_err(blocking_failed)?
                })
            })
            .await;
        self.forget_upload(&input.upload_id);
        let e_tag = e_tag?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(e_tag),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let client = self.client(&req)?;
        let input = req.input;
        self.upload_dir(&client, &input.upload_id, &input.bucket, &input.key)?;
        self.forget_upload(&input.upload_id);
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

impl Store {
    /// Bytes of this upload's parts so far, and of all the client's open uploads.
    fn upload_bytes(&self, client: &Client, id: &str) -> S3Result<(u64, u64)> {
        let uploads = self.uploads.lock().map_err(|_| internal("a thread panicked"))?;
        let this = uploads.get(id).map_or(0, |u| u.bytes);
        let all = uploads.values().filter(|u| u.client == client.name).map(|u| u.bytes).sum();
        Ok((this, all))
    }

    /// The parts directory of an upload this client started for this object.
    fn upload_dir(&self, client: &Client, id: &str, bucket: &str, key: &str) -> S3Result<PathBuf> {
        let uploads = self.uploads.lock().map_err(|_| internal("a thread panicked"))?;
        match uploads.get(id) {
            Some(u) if u.client == client.name && u.bucket == bucket && u.key == key => Ok(u.dir.clone()),
            _ => Err(s3_error!(NoSuchUpload)),
        }
    }

    fn forget_upload(&self, id: &str) {
        let removed = self.uploads.lock().ok().and_then(|mut u| u.remove(id));
        if let Some(u) = removed {
            let _ = fs::remove_dir_all(&u.dir);
        }
    }
}

/// Removes the temporary files uploads cut short by a kill left in the repositories' `tmp/`:
/// only those nobody holds (a local writer on this disk holds its own), so it is safe beside
/// commands run on the server's disk.
fn sweep_leftovers(storage: &Path) {
    let Ok(repos) = fs::read_dir(storage) else { return };
    let mut removed = 0usize;
    for repo in repos.flatten() {
        if repo.file_name().to_str().is_none_or(|n| n.starts_with('.')) {
            continue;
        }
        let Ok(tmp) = fs::read_dir(repo.path().join("tmp")) else { continue };
        for f in tmp.flatten() {
            let temp = f.file_name().to_str().is_some_and(::io::durable::is_temp_name);
            if temp && matches!(::io::durable::remove_unheld(&f.path()), Ok(true)) {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        eprintln!("bakare serve: removed {removed} temporary files of uploads cut short");
    }
}

enum Listed {
    Object(String, fs::Metadata),
    Prefix(String),
}

impl Listed {
    fn name(&self) -> String {
        match self {
            Listed::Object(k, _) | Listed::Prefix(k) => k.clone(),
        }
    }
}

/// Up to `max` objects (or common prefixes) of the repository at `root` whose keys start with
/// `prefix` and sort after `after`, in key order; and whether more follow.
///
/// Walks the directories the prefix can reach and sorts what it finds: a listing of `packs/`
/// holds every pack's name in memory for each page (the client, listing, holds them too).
fn list(
    root: &Path,
    prefix: &str,
    after: &str,
    delimiter: Option<&str>,
    max: usize,
) -> std::io::Result<(Vec<Listed>, bool)> {
    let base = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut keys = BTreeSet::new();
    let mut stack =
        vec![(if base.is_empty() { root.to_path_buf() } else { root.join(base) }, base.to_string())];
    while let Some((dir, key)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        for entry in rd {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if name.starts_with(".tmp-") {
                continue;
            }
            let child = if key.is_empty() { name } else { format!("{key}/{name}") };
            let ft = entry.file_type()?;
            if ft.is_dir()
                && (prefix.starts_with(&format!("{child}/"))
                    || child.starts_with(prefix)
                    || format!("{child}/").starts_with(prefix))
            {
                stack.push((entry.path(), child));
            } else if ft.is_file() && child.starts_with(prefix) && valid_key(&child) {
                keys.insert(child);
            }
        }
    }
    let mut out: Vec<Listed> = Vec::new();
    let mut seen_prefix = String::new();
    for k in keys.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)) {
        if let Some(d) = delimiter {
            if let Some(i) = k[prefix.len()..].find(d) {
                let p = &k[..prefix.len() + i + d.len()];
                if p == seen_prefix || p <= after {
                    continue;
                }
                seen_prefix = p.to_string();
                if out.len() == max {
                    return Ok((out, true));
                }
                out.push(Listed::Prefix(p.to_string()));
                continue;
            }
        }
        if out.len() == max {
            return Ok((out, true));
        }
        // Gone since the walk (the owner's prune): not listed.
        let md = match fs::metadata(root.join(k)) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.push(Listed::Object(k.clone(), md));
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(l: &[Listed]) -> Vec<String> {
        l.iter().map(Listed::name).collect()
    }

    #[test]
    fn listing_pages_in_key_order_and_skips_temporary_files() {
        let d = tempfile::tempdir().unwrap();
        for k in ["config", "packs/aa/aa1", "packs/aa/aa2", "packs/bb/bb1", "snapshots/s1", "tmp/.tmp-0123"] {
            let p = d.path().join(k);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, k).unwrap();
        }
        let (l, more) = list(d.path(), "packs/", "", None, 2).unwrap();
        assert_eq!(names(&l), ["packs/aa/aa1", "packs/aa/aa2"]);
        assert!(more);
        let (l, more) = list(d.path(), "packs/", "packs/aa/aa2", None, 2).unwrap();
        assert_eq!(names(&l), ["packs/bb/bb1"]);
        assert!(!more);
        let (l, _) = list(d.path(), "", "", None, 1000).unwrap();
        assert_eq!(names(&l), ["config", "packs/aa/aa1", "packs/aa/aa2", "packs/bb/bb1", "snapshots/s1"]);
        let (l, _) = list(d.path(), "", "", Some("/"), 1000).unwrap();
        assert_eq!(names(&l), ["config", "packs/", "snapshots/"]);
        let (l, _) = list(d.path(), "sn", "", None, 1000).unwrap();
        assert_eq!(names(&l), ["snapshots/s1"]);
        let (l, _) = list(d.path(), "nothing/", "", None, 1000).unwrap();
        assert!(l.is_empty());
    }

    #[test]
    fn publish_never_replaces_other_bytes_for_a_client() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("packs/ab/x");
        let put = |bytes: &[u8], create_only: bool, owner: bool| {
            let (f, tmp) = ::io::durable::create_held(d.path()).unwrap();
            fs::write(&tmp, bytes).unwrap();
            let p = publish(f, &tmp, &dest, create_only, owner).unwrap();
            assert!(!tmp.exists());
            p
        };
        assert!(matches!(put(b"one", false, false), Published::Created));
        assert!(matches!(put(b"one", false, false), Published::Same));
        assert!(matches!(put(b"one", true, false), Published::Exists));
        assert!(matches!(put(b"two", false, false), Published::Refused));
        assert_eq!(fs::read(&dest).unwrap(), b"one");
        assert!(matches!(put(b"two", false, true), Published::Replaced));
        assert_eq!(fs::read(&dest).unwrap(), b"two");
    }

    #[test]
    fn clients_write_only_the_names_a_backup_writes() {
        let h = "0123456789abcdef".repeat(4);
        assert_eq!(client_layout("config"), Some(false));
        assert_eq!(client_layout("index-signed"), Some(false));
        assert_eq!(client_layout(&format!("packs/01/{h}")), Some(true));
        assert_eq!(client_layout(&format!("packs/02/{h}")), None, "the fan-out is the name's start");
        for dir in ["index", "snapshots", "pending", "writers", "roster"] {
            assert_eq!(client_layout(&format!("{dir}/{h}")), Some(true), "{dir}");
        }
        assert_eq!(client_layout(&format!("abandoned/{h}")), Some(false));
        for bad in [
            "gc",
            "packs",
            "packs/01",
            &format!("gc/{h}"),
            &format!("index/{h}/x"),
            "index/ABC",
            "tmp/x",
            "keys/k",
        ] {
            assert_eq!(client_layout(bad), None, "{bad}");
        }
        assert_eq!(client_layout(&format!("index/{}", h.to_uppercase())), None);
    }

    #[test]
    fn bodies_are_held_to_what_they_declare_and_to_the_largest_object() {
        assert_eq!(body_limit(Some(10)), 10);
        assert_eq!(body_limit(None), MAX_OBJECT);
        assert_eq!(body_limit(Some(-1)), MAX_OBJECT);
        assert_eq!(body_limit(Some(i64::MAX)), MAX_OBJECT);
        assert_eq!(too_large(Some(10)).code(), &s3s::S3ErrorCode::IncompleteBody);
        assert_eq!(too_large(None).code(), &s3s::S3ErrorCode::EntityTooLarge);
    }

    #[test]
    fn new_directories_are_made_whole() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dirs_durably(&deep).unwrap();
        assert!(deep.is_dir());
        create_dirs_durably(&deep).unwrap();
    }

    #[test]
    fn leftovers_nobody_holds_are_swept_at_start() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("home/tmp");
        fs::create_dir_all(&tmp).unwrap();
        let left = tmp.join(".tmp-0123456789abcdef01234567");
        fs::write(&left, b"cut short").unwrap();
        let (_held, writing) = ::io::durable::create_held(&tmp).unwrap();
        let other = tmp.join("not-ours");
        fs::write(&other, b"x").unwrap();
        sweep_leftovers(d.path());
        assert!(!left.exists());
        assert!(writing.exists(), "a file being written was removed");
        assert!(other.exists());
    }

    #[test]
    fn names_outside_a_repository_are_refused() {
        for b in [".serve", "..", "a", "ab", "Upper", "a/b", "-x", "ok..no"] {
            assert!(!::io::joined::valid_bucket(b), "{b}");
        }
        assert!(::io::joined::valid_bucket("home") && ::io::joined::valid_bucket("nas-1.repo"));
        for k in ["", "/x", "a//b", "../x", "a/./b", "tmp/.tmp-1", "a b"] {
            assert!(!valid_key(k), "{k}");
        }
    }
}
