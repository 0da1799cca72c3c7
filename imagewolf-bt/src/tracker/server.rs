//! The tracker's HTTP front end: hyper 1.x, HTTP/1 only, one request per connection.
//!
//! Everything a remote side can size is bounded: the request head (URI and headers) by
//! hyper's read buffer, the number of open connections by [`MAX_CONNECTIONS`] (accepting
//! pauses while it is reached), and each connection's lifetime by a header-read timeout plus
//! an overall deadline, so idle or slow-loris connections cannot pile up. Keep-alive is off:
//! clients announce once per interval, so a kept connection would only hold a slot.
//! Request bodies are never read.
//!
//! The registry sits behind a `std::sync::Mutex`: announce handling is short and never
//! awaits while holding it, so an async lock would only add overhead.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::query::AnnounceRequest;
use super::response::encode_failure;
use super::swarm::{Swarms, TrackerConfig};
use crate::InfoHash;

/// Most connections served at once; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Hard limit on one connection's lifetime.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(15);
/// Read buffer per connection, bounding request line plus headers (hyper's minimum is 8 KiB).
const MAX_HEAD_LEN: usize = 16 * 1024;
/// Headers accepted per request.
const MAX_HEADERS: usize = 32;
/// Pause after a failed `accept` (typically out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A running tracker. Dropping it (or [`TrackerServer::shutdown`]) stops the listener and
/// aborts every connection.
#[derive(Debug)]
pub struct TrackerServer {
    local_addr: SocketAddr,
    swarms: Arc<Mutex<Swarms>>,
    accept_task: JoinHandle<()>,
    purge_task: JoinHandle<()>,
}

impl TrackerServer {
    /// Listen on `addr` and serve announces on the current tokio runtime.
    pub async fn bind(addr: SocketAddr, config: TrackerConfig) -> io::Result<TrackerServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        // Purging more often than every second is pointless, less often than hourly wasteful.
        let purge_every = config
            .interval
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        let swarms = Arc::new(Mutex::new(Swarms::new(config)));
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&swarms)));
        let purge_task = tokio::spawn(purge_loop(Arc::clone(&swarms), purge_every));
        Ok(TrackerServer {
            local_addr,
            swarms,
            accept_task,
            purge_task,
        })
    }

    /// The address actually bound (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://ADDR/announce` for this server.
    pub fn announce_url(&self) -> String {
        format!("http://{}/announce", self.local_addr)
    }

    /// Live peers registered for a torrent.
    pub fn peer_count(&self, info_hash: &InfoHash) -> usize {
        lock(&self.swarms).peer_count(info_hash, Instant::now())
    }

    /// Lists a peer of this process as if it had announced `started` from `ip` (a session
    /// lists its own torrents in its own tracker this way, without a round trip). A full
    /// tracker leaves it out; its announcer will try again.
    pub(crate) fn list_local(
        &self,
        info_hash: InfoHash,
        peer_id: crate::PeerId,
        ip: std::net::IpAddr,
        port: u16,
        left: u64,
    ) {
        let request = super::AnnounceRequest {
            info_hash,
            peer_id,
            port,
            uploaded: 0,
            downloaded: 0,
            left,
            event: super::Event::Started,
            compact: true,
            no_peer_id: true,
            numwant: Some(0),
            ip: None,
        };
        if let Err(e) = lock(&self.swarms).announce(&request, ip, Instant::now()) {
            tracing::debug!("listing {info_hash} in the session's tracker: {e}");
        }
    }

    /// Stops serving: the listener closes and every connection is aborted (dropping the
    /// server does the same). Works through a shared reference, so a server behind an `Arc`
    /// (as a [`crate::Session`] holds its own) can be stopped too.
    pub fn shutdown(&self) {
        self.accept_task.abort();
        self.purge_task.abort();
    }
}

impl Drop for TrackerServer {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet, which aborts them when dropped.
        self.accept_task.abort();
        self.purge_task.abort();
    }
}

fn lock(swarms: &Mutex<Swarms>) -> MutexGuard<'_, Swarms> {
    // The registry stays consistent even if a holder panicked: every mutation is a single
    // map operation.
    swarms.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(listener: TcpListener, swarms: Arc<Mutex<Swarms>>) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_LEN)
        .max_headers(MAX_HEADERS);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!("tracker accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let swarms = Arc::clone(&swarms);
        let service = service_fn(move |req| {
            let response = handle(&swarms, &req, remote.ip());
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                Ok(Err(e)) => tracing::trace!("tracker connection from {remote}: {e}"),
                Err(_) => tracing::trace!("tracker connection from {remote} timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

async fn purge_loop(swarms: Arc<Mutex<Swarms>>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        lock(&swarms).purge(Instant::now());
    }
}

fn handle(
    swarms: &Mutex<Swarms>,
    req: &Request<Incoming>,
    remote: IpAddr,
) -> Response<Full<Bytes>> {
    if req.uri().path() != "/announce" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "announce is GET only\n");
    }
    let query = req.uri().query().unwrap_or("");
    // Failures go out as `200 OK` with a `failure reason`: clients only read the body then.
    let body = match AnnounceRequest::from_query(query) {
        Err(e) => encode_failure(&e.to_string()),
        Ok(announce) => match lock(swarms).announce(&announce, remote, Instant::now()) {
            Ok(reply) => reply.encode(announce.compact),
            Err(e) => encode_failure(&e.to_string()),
        },
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
