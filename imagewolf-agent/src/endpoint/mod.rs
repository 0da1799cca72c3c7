//! The node-local, read-only registry endpoint: the part of the OCI distribution API that a
//! pull uses, served from what this node already has.
//!
//! The node's runtime (dockerd, containerd) pulls an image from its own agent as from any
//! registry, so it records the registry's manifest digest and knows the layers by their blob
//! digests, exactly as after a pull from the registry itself (a `docker load` records
//! neither, so a later pull from the registry would fetch every layer again). The bytes come
//! from the swarm.
//!
//! | route | answer |
//! |---|---|
//! | `GET\|HEAD /v2/` | 200 `{}`, `Docker-Distribution-API-Version: registry/2.0` |
//! | `GET\|HEAD /v2/<name>/manifests/<tag\|digest>` | the manifest or index as stored: its media type as `Content-Type`, `Docker-Content-Digest`, exact `Content-Length` |
//! | `GET\|HEAD /v2/<name>/blobs/<digest>` | the blob streamed, `Accept-Ranges: bytes`; one `Range` (206 / 416) |
//! | anything else | 404; other methods 405 with `Allow: GET, HEAD` |
//!
//! Errors carry the OCI error body `{"errors":[{"code":"...","message":"..."}]}`:
//! `MANIFEST_UNKNOWN`, `BLOB_UNKNOWN` (404), `NAME_INVALID`, `TAG_INVALID`, `DIGEST_INVALID`
//! (400), `UNSUPPORTED` (404 unknown route, 405 method). A tag is resolved with
//! [`Content::resolve_tag`], passing containerd's `ns` query parameter (the upstream registry
//! a mirror request is for). The `Accept` header is not consulted: the manifest is served as
//! the registry served it (converting it would change its digest).
//!
//! Design decisions:
//! - **Read-only.** Nothing can be pushed: images enter a node only through the agent, from the
//!   registry or the swarm, so a local process cannot plant an image that a runtime then
//!   trusts under a registry's name. No request body is ever read.
//! - **Only verified content.** Everything served comes from [`Content`], whose contract is that
//!   it returns content-addressed data already checked against its digest; manifests (small)
//!   are checked again here before they go out, and one that does not match is answered as
//!   unknown (logged as an error) so the runtime falls back to its next host. The runtime
//!   checks every digest again itself.
//! - **Bounded.** At most [`EndpointConfig::max_connections`] connections (more wait in the
//!   listen backlog until one closes), request heads bounded by hyper's read buffer
//!   ([`MAX_HEAD_LEN`], [`MAX_HEADERS`]) and [`EndpointConfig::header_timeout`] (which also
//!   ends idle keep-alive connections), blobs streamed [`BLOB_CHUNK`] bytes at a time from the
//!   blocking pool with positioned reads, so a connection holds one chunk at most.
//! - **Keep-alive** is on: dockerd and containerd reuse connections across blobs.
//! - **Shutdown** when the watch value becomes `true` (or its sender drops): stop accepting,
//!   let in-flight responses finish, abort what is left after
//!   [`EndpointConfig::shutdown_grace`].
//!
//! Counters ([`EndpointStats`], shared through [`EndpointConfig::stats`]) feed `/metrics`.

mod body;
mod route;

pub(crate) use body::read_chunk;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, ALLOW, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub use route::{
    parse_path, parse_range, valid_digest, valid_name, valid_tag, RangeRequest, Reference, Route,
    RouteError, MAX_NAME_LEN, MAX_TAG_LEN,
};

/// Default for [`EndpointConfig::max_connections`].
pub const MAX_CONNECTIONS: usize = 128;
/// Default for [`EndpointConfig::header_timeout`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`EndpointConfig::shutdown_grace`].
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Read buffer per connection, bounding the request line plus headers.
pub const MAX_HEAD_LEN: usize = 32 * 1024;
/// Headers accepted per request.
pub const MAX_HEADERS: usize = 64;
/// Bytes of a blob read (on the blocking pool) and sent at a time.
pub const BLOB_CHUNK: usize = 256 * 1024;
/// Pause after a failed `accept` (typically out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The API version header every response carries (clients check it on `/v2/`).
pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
/// The digest header of manifest and blob answers.
pub const CONTENT_DIGEST_HEADER: &str = "docker-content-digest";

/// What the endpoint serves. Everything it returns must already be verified
/// (content-addressed: the bytes hash to the digest they are returned for).
pub trait Content: Send + Sync + 'static {
    /// A manifest or index by digest (`sha256:<hex>`): its bytes and media type.
    fn manifest(&self, digest: &str) -> Option<(Bytes, String)>;
    /// The manifest digest a tag names in `repository`; `registry` is containerd's `ns` query
    /// parameter when present (the upstream registry host the runtime is pulling for).
    fn resolve_tag(&self, registry: Option<&str>, repository: &str, tag: &str) -> Option<String>;
    /// A blob by digest: an open file and its length. May wait for a blob that is still
    /// arriving (the implementation decides how long); `None` = unknown.
    fn blob<'a>(&'a self, digest: &'a str) -> BoxFuture<'a, Option<(std::fs::File, u64)>>;
    /// Mirror mode: asked before a tag is resolved (tags move upstream) and after a
    /// manifest or blob was not found, with the upstream registry the runtime pulls for.
    /// Brings what `miss` names into the content (verified) and returns `true`, so that the
    /// lookup that follows finds it; `false` when it could not (the endpoint then answers
    /// with what it has, or unknown, and the runtime goes on to its next host). The default
    /// fetches nothing: a read-only cache of what the agent put there.
    fn fetch<'a>(&'a self, upstream: Upstream<'a>, miss: Miss<'a>) -> BoxFuture<'a, bool> {
        let _ = (upstream, miss);
        Box::pin(async { false })
    }
    /// Mirror mode: a blob [`Content::blob`] did not find, fetched from `upstream`. A
    /// mirror may hand it over while it arrives ([`BlobSource::Arriving`]), so that the
    /// runtime's ingest overlaps the transfer; `None` = not served (the runtime goes on to
    /// its next host). The default is [`Content::fetch`] with [`Miss::Blob`], then
    /// [`Content::blob`].
    fn fetch_blob<'a>(
        &'a self,
        upstream: Upstream<'a>,
        digest: &'a str,
    ) -> BoxFuture<'a, Option<BlobSource>> {
        Box::pin(async move {
            if self.fetch(upstream, Miss::Blob(digest)).await {
                let (file, len) = self.blob(digest).await?;
                Some(BlobSource::Stored(file, len))
            } else {
                None
            }
        })
    }
}

/// Where the bytes of a blob come from.
pub enum BlobSource {
    /// A committed blob: an open file and its length.
    Stored(std::fs::File, u64),
    /// A blob still arriving, read in order as it lands.
    Arriving(Arc<dyn Arriving>),
}

impl BlobSource {
    fn size(&self) -> u64 {
        match self {
            BlobSource::Stored(_, len) => *len,
            BlobSource::Arriving(blob) => blob.size(),
        }
    }
}

/// A blob still arriving (mirror mode). Its contract: every byte [`Arriving::read_at`]
/// returns is the blob's, as far as can be known before its end: read from the upstream,
/// or passed the swarm's piece checks; the last byte only once the whole blob passed its
/// SHA-256 check. A blob that fails the check is an error, so the client gets a short
/// body, never a whole wrong one (and the runtime checks the digest itself).
pub trait Arriving: Send + Sync + 'static {
    /// Its length in bytes.
    fn size(&self) -> u64;
    /// Between 1 and `max` bytes at `offset` (below [`Arriving::size`]), waiting until
    /// they are in place; an error once the blob cannot be completed.
    fn read_at(&self, offset: u64, max: usize) -> ReadAt<'_>;
}

/// What [`Arriving::read_at`] returns (`Sync`, as response bodies are).
pub type ReadAt<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Bytes>> + Send + Sync + 'a>>;

/// Whom a pull is for: the registry the runtime would otherwise ask, and the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream<'a> {
    /// containerd's `ns` query parameter (`host[:port]`); `None` for dockerd's
    /// `registry-mirrors`, which mirror Docker Hub only.
    pub registry: Option<&'a str>,
    /// The repository in the request's path (`library/nginx`).
    pub repository: &'a str,
}

/// What a mirror is asked to bring in ([`Content::fetch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss<'a> {
    /// A tag, resolved upstream (before the content's own tags are consulted).
    Tag(&'a str),
    /// A manifest or index by digest the content does not have.
    Manifest(&'a str),
    /// A blob by digest the content does not have.
    Blob(&'a str),
}

/// Limits of the endpoint, and where it counts what it does.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Most connections open at once; more wait in the listen backlog. Default
    /// [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Time a client has to send a request head; also the longest a keep-alive connection
    /// idles. Default [`HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// How long in-flight responses may take to finish at shutdown. Default
    /// [`SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
    /// The counters [`serve`] updates; keep a clone of the `Arc` to read them.
    pub stats: Arc<EndpointStats>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
            stats: Arc::new(EndpointStats::default()),
        }
    }
}

/// Live counters of one endpoint (atomics, shared with [`serve`] through
/// [`EndpointConfig::stats`]).
#[derive(Debug, Default)]
pub struct EndpointStats {
    manifest_requests: AtomicU64,
    blob_requests: AtomicU64,
    other_requests: AtomicU64,
    partial_responses: AtomicU64,
    bytes_served: AtomicU64,
    not_found: AtomicU64,
}

/// A copy of [`EndpointStats`] at one moment, for `/stats` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EndpointCounts {
    /// Manifest requests (GET and HEAD, any answer).
    pub manifest_requests: u64,
    /// Blob requests (GET and HEAD, any answer).
    pub blob_requests: u64,
    /// Every other request (`/v2/`, unknown routes, refused methods).
    pub other_requests: u64,
    /// Blob answers that were 206 (a `Range` request).
    pub partial_responses: u64,
    /// Body bytes of manifests and blobs sent.
    pub bytes_served: u64,
    /// 404 answers for unknown manifests, tags and blobs.
    pub not_found: u64,
}

impl EndpointStats {
    /// The counters now.
    pub fn snapshot(&self) -> EndpointCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EndpointCounts {
            manifest_requests: get(&self.manifest_requests),
            blob_requests: get(&self.blob_requests),
            other_requests: get(&self.other_requests),
            partial_responses: get(&self.partial_responses),
            bytes_served: get(&self.bytes_served),
            not_found: get(&self.not_found),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Serves the endpoint on `listener` until `shutdown` becomes `true` (or its sender drops).
///
/// Returns after in-flight responses finished or [`EndpointConfig::shutdown_grace`] passed.
/// Accept errors (e.g. out of file descriptors) are logged and retried. Counters go to
/// `config.stats`.
pub async fn serve(
    listener: TcpListener,
    content: Arc<dyn Content>,
    config: EndpointConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_LEN)
        .max_headers(MAX_HEADERS);
    let builder = Arc::new(builder);
    let grace = config.shutdown_grace;
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let ctx = Arc::new(Ctx { content, config });
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        // Take a slot before accepting: when all are in use, newcomers wait in the backlog.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // never closed
            },
            () = shutdown_requested(&mut shutdown) => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("endpoint accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown_requested(&mut shutdown) => break,
        };
        connections.spawn(connection(
            Arc::clone(&builder),
            stream,
            remote,
            Arc::clone(&ctx),
            shutdown.clone(),
            permit,
        ));
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::debug!(
            "endpoint shutdown: aborting {} connections",
            connections.len()
        );
        connections.shutdown().await;
    }
}

struct Ctx {
    content: Arc<dyn Content>,
    config: EndpointConfig,
}

/// Resolves once shutdown is requested: the value is `true` or the sender is gone.
async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&stop| stop).await;
}

async fn connection(
    builder: Arc<http1::Builder>,
    stream: TcpStream,
    remote: SocketAddr,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let service_ctx = Arc::clone(&ctx);
    let service = service_fn(move |req| {
        let ctx = Arc::clone(&service_ctx);
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown_requested(&mut shutdown) => {
            // Finish the current response (if any), then close; idle connections close now.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(ctx.config.shutdown_grace, conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        // The header timeout also ends idle keep-alive connections: routine.
        tracing::debug!(%remote, "endpoint connection ended: {e}");
    }
}

type Body = BoxBody<Bytes, io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn empty() -> Body {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A response with the API version header every answer carries.
fn response(status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    resp
}

/// An OCI error answer: `{"errors":[{"code":..,"message":..}]}` (no body for HEAD).
fn oci_error(status: StatusCode, code: &str, message: &str, head: bool) -> Response<Body> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    let bytes = Bytes::from(body.to_string());
    let len = bytes.len();
    let mut resp = response(status, if head { empty() } else { full(bytes) });
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn header_value(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Body> {
    let stats = &ctx.config.stats;
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            EndpointStats::add(&stats.other_requests, 1);
            let mut resp = oci_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is read-only: only GET and HEAD",
                false,
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
    };
    let route = match parse_path(req.uri().path()) {
        Ok(route) => route,
        Err(e) => {
            EndpointStats::add(&stats.other_requests, 1);
            let (status, code, message) = match e {
                RouteError::NotFound => (
                    StatusCode::NOT_FOUND,
                    "UNSUPPORTED",
                    "not served here: this read-only registry serves /v2/, manifests and blobs",
                ),
                RouteError::NameInvalid => (
                    StatusCode::BAD_REQUEST,
                    "NAME_INVALID",
                    "invalid repository name",
                ),
                RouteError::TagInvalid => (
                    StatusCode::BAD_REQUEST,
                    "TAG_INVALID",
                    "invalid manifest reference",
                ),
                RouteError::DigestInvalid => (
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "invalid digest: sha256:<64 lowercase hex> expected",
                ),
            };
            tracing::debug!(path = %req.uri().path(), ?e, "endpoint refused a path");
            return oci_error(status, code, message, head);
        }
    };
    match route {
        Route::Base => {
            EndpointStats::add(&stats.other_requests, 1);
            let mut resp = response(StatusCode::OK, if head { empty() } else { full("{}") });
            let headers = resp.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(2));
            resp
        }
        Route::Manifest { name, reference } => {
            EndpointStats::add(&stats.manifest_requests, 1);
            let ns = route::ns_param(req.uri().query());
            manifest(ctx, &name, &reference, ns.as_deref(), head).await
        }
        Route::Blob { name, digest } => {
            EndpointStats::add(&stats.blob_requests, 1);
            let range = req
                .headers()
                .get(RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let ns = route::ns_param(req.uri().query());
            let upstream = Upstream {
                registry: ns.as_deref(),
                repository: &name,
            };
            blob(ctx, upstream, &digest, range.as_deref(), head).await
        }
    }
}

async fn manifest(
    ctx: &Ctx,
    name: &str,
    reference: &Reference,
    ns: Option<&str>,
    head: bool,
) -> Response<Body> {
    let stats = &ctx.config.stats;
    let unknown = |what: &str| {
        EndpointStats::add(&stats.not_found, 1);
        tracing::debug!(name, ?reference, ns, "endpoint: manifest unknown ({what})");
        oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            &format!("manifest unknown: {what}"),
            head,
        )
    };
    let upstream = Upstream {
        registry: ns,
        repository: name,
    };
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(tag) => match resolve_tag(ctx, upstream, tag).await {
            Some(d) if valid_digest(&d) => d,
            Some(d) => {
                tracing::error!(name, tag, digest = %d, "endpoint: tag resolved to an invalid digest");
                return unknown("tag not known");
            }
            None => return unknown("tag not known"),
        },
    };
    let found = match ctx.content.manifest(&digest) {
        Some(found) => Some(found),
        None if ctx.content.fetch(upstream, Miss::Manifest(&digest)).await => {
            ctx.content.manifest(&digest)
        }
        None => None,
    };
    let Some((bytes, media_type)) = found else {
        return unknown("digest not known");
    };
    let actual = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
    if actual != digest {
        tracing::error!(%digest, %actual, "endpoint: stored manifest does not match its digest; not served");
        return unknown("digest not known");
    }
    let (Some(media_type), Some(digest_value)) = (header_value(&media_type), header_value(&digest))
    else {
        tracing::error!(%digest, media_type, "endpoint: manifest media type is not a header value");
        return unknown("digest not known");
    };
    let len = bytes.len();
    if !head {
        EndpointStats::add(&stats.bytes_served, len as u64);
    }
    let mut resp = response(StatusCode::OK, if head { empty() } else { full(bytes) });
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, media_type);
    headers.insert(CONTENT_DIGEST_HEADER, digest_value);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// The manifest digest `tag` names: a mirror resolves it upstream first (tags move); if it
/// cannot, the content's own tags answer.
async fn resolve_tag(ctx: &Ctx, upstream: Upstream<'_>, tag: &str) -> Option<String> {
    ctx.content.fetch(upstream, Miss::Tag(tag)).await;
    ctx.content
        .resolve_tag(upstream.registry, upstream.repository, tag)
}

async fn blob(
    ctx: &Ctx,
    upstream: Upstream<'_>,
    digest: &str,
    range: Option<&str>,
    head: bool,
) -> Response<Body> {
    let stats = &ctx.config.stats;
    let found = match ctx.content.blob(digest).await {
        Some((file, len)) => Some(BlobSource::Stored(file, len)),
        None => ctx.content.fetch_blob(upstream, digest).await,
    };
    let Some(source) = found else {
        EndpointStats::add(&stats.not_found, 1);
        tracing::debug!(digest, "endpoint: blob unknown");
        return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown", head);
    };
    let len = source.size();
    // Range applies to GET only.
    let range = if head {
        RangeRequest::Full
    } else {
        parse_range(range, len)
    };
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial { start, end } => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut resp = oci_error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "RANGE_INVALID",
                "requested range not satisfiable",
                false,
            );
            if let Some(v) = header_value(&format!("bytes */{len}")) {
                resp.headers_mut().insert(CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let body = if head {
        empty()
    } else {
        if status == StatusCode::PARTIAL_CONTENT {
            EndpointStats::add(&stats.partial_responses, 1);
        }
        let blob: Arc<dyn Arriving> = match source {
            BlobSource::Stored(file, len) => Arc::new(body::StoredFile::new(file, len)),
            BlobSource::Arriving(blob) => blob,
        };
        body::blob_body(blob, start, count, Arc::clone(stats))
    };
    let mut resp = response(status, body);
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(v) = header_value(digest) {
        headers.insert(CONTENT_DIGEST_HEADER, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let end = start + count - 1;
        if let Some(v) = header_value(&format!("bytes {start}-{end}/{len}")) {
            headers.insert(CONTENT_RANGE, v);
        }
    }
    resp
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
