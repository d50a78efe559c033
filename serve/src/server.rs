//! The listener: TLS on every connection, HTTP/1.1, the S3 service; stops on SIGINT or SIGTERM
//! after the requests in flight finish (at most 30 s).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;

use crate::quota::Usage;
use crate::relay::{Notes, Relay};
use crate::route::Routes;
use crate::state::StateDir;
use crate::store::{Auth, Clients, Store};
use crate::{Error, Identity, Result};

pub struct Options {
    /// The directory holding one repository per subdirectory.
    pub storage: PathBuf,
    pub listen: SocketAddr,
    pub identity: Identity,
    /// Where to relay every repository to (a location `--repo` accepts, each repository going
    /// below it under its own name), and with how many threads.
    pub relay: Option<String>,
    pub relay_workers: usize,
    /// Connections served at once (more wait to be accepted) and threads for file work.
    pub max_connections: usize,
    pub max_blocking: usize,
    /// Take pairing requests from friends' machines (`--peers`).
    pub pairing: bool,
}

impl Options {
    /// Connections and file threads for a memory budget: a connection holds at most about
    /// 1 MiB (hyper's read buffer, a 256 KiB piece of a download, a piece of an upload), a file
    /// thread 512 KiB (comparing an object sent again) besides its stack; 64 MiB are left for
    /// the rest (the runtime, the relay's listings).
    pub fn limits(mem_limit: u64) -> (usize, usize) {
        let mib = mem_limit >> 20;
        let connections = mib.saturating_sub(64).clamp(8, 1024) as usize;
        let blocking = (mib / 16).clamp(4, 64) as usize;
        (connections, blocking)
    }
}

/// Serves until SIGINT or SIGTERM. `ready` is called with the bound address (port 0 picks one).
pub fn serve(opts: Options, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bakare-serve")
        .max_blocking_threads(opts.max_blocking.max(1))
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the server's runtime: {e}")))?;
    rt.block_on(run(opts, ready))
}

async fn run(opts: Options, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let state = StateDir::new(&opts.storage);
    state.create()?;
    let clients = Arc::new(Clients::new(state.clone()));
    let usage = Arc::new(Usage::load(&state)?);
    let notes = opts.relay.as_ref().map(|_| Arc::new(Notes::default()));
    let store = Store::new(&opts.storage, &state, clients.clone(), usage.clone(), notes.clone())?;
    if let (Some(upstream), Some(notes)) = (opts.relay.clone(), notes) {
        let relay = Relay {
            storage: opts.storage.clone(),
            state: state.clone(),
            upstream,
            workers: opts.relay_workers,
            notes,
        };
        std::thread::Builder::new()
            .name("bakare-relay".into())
            .spawn(move || relay.run())
            .map_err(|e| Error::Invalid(format!("starting the relay: {e}")))?;
    }
    let flusher = {
        let usage = usage.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let u = usage.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || u.flush()).await {
                    eprintln!("bakare serve: writing the clients' usage: {e}");
                }
            }
        })
    };
    let service = {
        let mut b = S3ServiceBuilder::new(store);
        // Small limits on what s3s reads into memory before it checks a request: POST object
        // uploads (browser forms) are off, as are XML bodies over 1 MiB (a CompleteMultipartUpload
        // of 10,000 parts is about 1 MiB).
        let mut config = s3s::config::S3Config::default();
        config.xml_max_body_size = 1 << 20;
        config.post_object_max_file_size = 0;
        config.form_max_field_size = 4 << 10;
        config.form_max_fields_size = 16 << 10;
        config.form_max_parts = 16;
        b.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(config))));
        b.set_auth(Auth(clients.clone()));
        b.set_access(crate::store::Access(clients.clone()));
        b.set_route(Routes {
            state: state.clone(),
            storage: opts.storage.clone(),
            clients: clients.clone(),
            fingerprint: opts.identity.sha256(),
            pairing: opts.pairing,
        });
        b.build()
    };
    let tls = TlsAcceptor::from(opts.identity.server_config()?);
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", opts.listen)))?;
    let bound = listener.local_addr().map_err(|e| Error::Invalid(format!("listening: {e}")))?;
    ready(bound);
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::Invalid(format!("SIGTERM handler: {e}")))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::Invalid(format!("SIGINT handler: {e}")))?;
    let http = {
        let mut b = ConnBuilder::new(TokioExecutor::new());
        b = b.http1_only();
        // A connection that sends no request headers for 30 s (idle between requests, or a
        // slow sender) is closed: it would hold a connection slot and a file descriptor.
        b.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
        b
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    loop {
        // A connection slot first: past the limit, connections wait in the listen queue.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("bakare serve: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let _ = tcp.set_nodelay(true);
        let (tls, service, http) = (tls.clone(), service.clone(), http.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            // A handshake that never finishes does not hold a task for ever.
            let stream = match tokio::time::timeout(Duration::from_secs(30), tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                // A connection closed before any TLS (a client checking that the server is up)
                // is not worth a line.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Ok(Err(e)) => {
                    eprintln!("bakare serve: TLS handshake with {peer} failed: {e}");
                    return;
                }
                Err(_) => return,
            };
            // POST form uploads are refused before s3s reads them (it would gather the file
            // part in memory before checking who sends it).
            let guarded = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let form = req.method() == hyper::Method::POST
                    && req
                        .headers()
                        .get(hyper::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/"));
                let service = service.clone();
                async move {
                    if form {
                        let mut r = hyper::Response::new(s3s::Body::from(
                            "POST uploads are not accepted\n".to_string(),
                        ));
                        *r.status_mut() = hyper::StatusCode::METHOD_NOT_ALLOWED;
                        r.headers_mut().insert(
                            hyper::header::CONNECTION,
                            hyper::header::HeaderValue::from_static("close"),
                        );
                        return Ok(r);
                    }
                    hyper::service::Service::call(&service, req).await
                }
            });
            let conn = http.serve_connection(TokioIo::new(stream), guarded);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                eprintln!("bakare serve: connection from {peer}: {e}");
            }
        });
    }
    eprintln!("bakare serve: stopping; waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(Duration::from_secs(30)) => eprintln!("bakare serve: requests still in flight after 30 s, stopping anyway"),
    }
    flusher.abort();
    usage.flush()
}
