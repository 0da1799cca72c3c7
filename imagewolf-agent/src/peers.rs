//! Talking to the other agents: announcing a distribution, and asking what they have (a late
//! joiner's catch-up). Plain HTTP/1.1 JSON on the agents' API port, each request signed
//! with the cluster's request key when there is one ([`crate::auth`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::auth::{ClusterKey, AUTH_HEADER};
use crate::distributor::gossip::{Digest, Offers, Wants};
use crate::image::{BlobOffer, Distribution, LeaseAnswer};

/// How long an idle pooled connection is kept (the API closes idle ones after 10 s).
const POOL_IDLE: Duration = Duration::from_secs(8);
/// Time allowed for one agent-to-agent call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest reply accepted from another agent (a list of recent distributions).
const MAX_REPLY: usize = 16 << 20;
/// Largest `.torrent` of a blob chunk accepted (a chunk has at most a few thousand pieces).
pub const MAX_TORRENT: usize = 1 << 20;

/// Largest reply to a rumor (a list of wants).
const MAX_SMALL_REPLY: usize = 64 << 10;
/// Largest digest reply (256 entries of about 80 bytes).
const MAX_DIGEST_REPLY: usize = 256 << 10;

/// Rough bytes of a request head (request line, host, content headers, the signature)
/// and of a response head: counted with the bodies in [`PeerTraffic`].
const REQUEST_HEAD: u64 = 260;
const RESPONSE_HEAD: u64 = 110;

/// A JSON reply of at most `max` bytes.
fn parse<T: serde::de::DeserializeOwned>(
    agent: SocketAddr,
    body: &[u8],
    max: usize,
) -> Result<T, PeerCallError> {
    if body.len() > max {
        return Err(PeerCallError::BadReply(
            agent,
            format!("a reply of {} bytes", body.len()),
        ));
    }
    serde_json::from_slice(body).map_err(|e| PeerCallError::BadReply(agent, e.to_string()))
}

/// What a [`PeerClient`] moved: calls made (a retry counts again), bytes sent and received
/// (bodies, plus a typical head each way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Requests sent.
    pub calls: u64,
    /// Request bytes.
    pub bytes_sent: u64,
    /// Response bytes.
    pub bytes_received: u64,
}

#[derive(Debug, Default)]
struct TrafficCounters {
    calls: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

/// Why a call to another agent failed (it is retried later by the catch-up loop).
#[derive(Debug, thiserror::Error)]
pub enum PeerCallError {
    /// Could not connect or the request failed.
    #[error("request to {0} failed: {1}")]
    Request(SocketAddr, String),
    /// The agent answered with an error status.
    #[error("{0} answered {1}")]
    Status(SocketAddr, u16),
    /// The reply was not what an agent sends.
    #[error("bad reply from {0}: {1}")]
    BadReply(SocketAddr, String),
    /// No answer in time.
    #[error("{0} did not answer in time")]
    Timeout(SocketAddr),
}

/// HTTP client for agent-to-agent calls (connection pooling included).
#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpConnector, Full<Bytes>>,
    key: Option<ClusterKey>,
    traffic: Arc<TrafficCounters>,
}

impl PeerClient {
    /// A client with a connect timeout, signing its requests with `key` (None: a cluster
    /// without a secret, `--insecure-no-cluster-secret`).
    pub fn new(key: Option<ClusterKey>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                // The server ends idle connections after 10 s; let the pool drop them first.
                .pool_idle_timeout(POOL_IDLE)
                .build(connector),
            key,
            traffic: Arc::default(),
        }
    }

    /// A request to `agent` at `path`, signed when there is a key.
    fn request(
        &self,
        agent: SocketAddr,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Request<Full<Bytes>>, PeerCallError> {
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("http://{agent}{path}"));
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(key) = &self.key {
            req = req.header(AUTH_HEADER, key.sign_request(method.as_str(), path, &body));
        }
        req.body(Full::new(Bytes::from(body)))
            .map_err(|e| PeerCallError::Request(agent, e.to_string()))
    }

    /// `POST /v1/distributions` to `agent`.
    pub async fn announce(&self, agent: SocketAddr, d: &Distribution) -> Result<(), PeerCallError> {
        let body =
            serde_json::to_vec(d).map_err(|e| PeerCallError::BadReply(agent, e.to_string()))?;
        self.call(agent, hyper::Method::POST, "/v1/distributions", body)
            .await
            .map(|_| ())
    }

    /// `POST /v1/gossip` to `agent`: a rumor; what it wants of the offers.
    pub async fn offer(&self, agent: SocketAddr, offers: &Offers) -> Result<Wants, PeerCallError> {
        let body = serde_json::to_vec(offers)
            .map_err(|e| PeerCallError::BadReply(agent, e.to_string()))?;
        let reply = self
            .call(agent, hyper::Method::POST, "/v1/gossip", body)
            .await?;
        parse(agent, &reply, MAX_SMALL_REPLY)
    }

    /// `POST /v1/distributions/<id>?from=<k>&relay=<0|1>` to `agent`: the part of a
    /// distribution it wants (`delta`, from segment `from` on). `Ok(true)` when it took it
    /// or knew it already, `Ok(false)` when it answered that it could not use it (it lacks
    /// the first `from` segments: offer it instead, and it says what it wants).
    pub async fn deliver(
        &self,
        agent: SocketAddr,
        from: usize,
        relay: bool,
        delta: &Distribution,
    ) -> Result<bool, PeerCallError> {
        let body =
            serde_json::to_vec(delta).map_err(|e| PeerCallError::BadReply(agent, e.to_string()))?;
        let path = format!(
            "/v1/distributions/{}?from={from}&relay={}",
            delta.id,
            u8::from(relay)
        );
        let reply = self.call(agent, hyper::Method::POST, &path, body).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            status: String,
        }
        let answer: Answer = parse(agent, &reply, MAX_SMALL_REPLY)?;
        Ok(answer.status != "ignored")
    }

    /// `GET /v1/digest?hash=<h>` from `agent`: what it knows (entries only when its hash is
    /// not `hash`).
    pub async fn digest(&self, agent: SocketAddr, hash: &str) -> Result<Digest, PeerCallError> {
        let path = format!("/v1/digest?hash={hash}");
        let reply = self
            .call(agent, hyper::Method::GET, &path, Vec::new())
            .await?;
        parse(agent, &reply, MAX_DIGEST_REPLY)
    }

    /// `GET /v1/distributions/<id>?from=<k>` from `agent`: that distribution from segment
    /// `from` on.
    pub async fn distribution_since(
        &self,
        agent: SocketAddr,
        id: &str,
        from: usize,
    ) -> Result<Distribution, PeerCallError> {
        let path = format!("/v1/distributions/{id}?from={from}");
        let reply = self
            .call(agent, hyper::Method::GET, &path, Vec::new())
            .await?;
        parse(agent, &reply, MAX_REPLY)
    }

    /// What this client has sent and received so far.
    pub fn traffic(&self) -> PeerTraffic {
        PeerTraffic {
            calls: self.traffic.calls.load(Ordering::Relaxed),
            bytes_sent: self.traffic.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.traffic.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// `GET /v1/distributions` from `agent`.
    pub async fn distributions(
        &self,
        agent: SocketAddr,
    ) -> Result<Vec<Distribution>, PeerCallError> {
        let body = self
            .call(agent, hyper::Method::GET, "/v1/distributions", Vec::new())
            .await?;
        serde_json::from_slice(&body).map_err(|e| PeerCallError::BadReply(agent, e.to_string()))
    }

    /// `GET /v1/torrents/<info_hash>` from `agent`: a blob chunk's `.torrent` (at most
    /// [`MAX_TORRENT`] bytes; the caller checks it against the info-hash it asked for).
    pub async fn torrent(
        &self,
        agent: SocketAddr,
        info_hash: &str,
    ) -> Result<Bytes, PeerCallError> {
        let path = format!("/v1/torrents/{info_hash}");
        let body = self
            .call(agent, hyper::Method::GET, &path, Vec::new())
            .await?;
        if body.len() > MAX_TORRENT {
            return Err(PeerCallError::BadReply(
                agent,
                format!("a torrent of {} bytes", body.len()),
            ));
        }
        Ok(body)
    }

    /// `POST /v1/leases/<digest>?api=<me>` to a blob's coordinator (mirror mode): read the
    /// blob from the upstream, or fetch it from the agent named.
    pub async fn lease(
        &self,
        agent: SocketAddr,
        digest: &str,
        me: SocketAddr,
    ) -> Result<LeaseAnswer, PeerCallError> {
        let path = format!("/v1/leases/{digest}?api={me}");
        let body = self
            .call(agent, hyper::Method::POST, &path, Vec::new())
            .await?;
        serde_json::from_slice(&body).map_err(|e| PeerCallError::BadReply(agent, e.to_string()))
    }

    /// `GET /v1/blobs/<digest>` from `agent`: what it offers of the blob (mirror mode).
    pub async fn blob_offer(
        &self,
        agent: SocketAddr,
        digest: &str,
    ) -> Result<BlobOffer, PeerCallError> {
        let path = format!("/v1/blobs/{digest}");
        let body = self
            .call(agent, hyper::Method::GET, &path, Vec::new())
            .await?;
        serde_json::from_slice(&body).map_err(|e| PeerCallError::BadReply(agent, e.to_string()))
    }

    /// One call, signed afresh for each attempt: a request that fails on a pooled connection
    /// the other side had just closed (it idles them out) is sent once more on a new one.
    /// Every call is idempotent (an announcement already known is answered "known").
    async fn call(
        &self,
        agent: SocketAddr,
        method: hyper::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Bytes, PeerCallError> {
        let first = self
            .attempt(
                agent,
                self.request(agent, method.clone(), path, body.clone())?,
            )
            .await;
        match first {
            Err(Attempt::Reused(e)) => {
                tracing::debug!(%agent, path, "retrying on a new connection: {e}");
                let req = self.request(agent, method, path, body)?;
                self.attempt(agent, req).await.map_err(Attempt::into_error)
            }
            other => other.map_err(Attempt::into_error),
        }
    }

    async fn attempt(
        &self,
        agent: SocketAddr,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<Bytes, Attempt> {
        let sent = req
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len() as u64)
            + hyper::body::Body::size_hint(req.body())
                .exact()
                .unwrap_or(0)
            + REQUEST_HEAD;
        self.traffic.calls.fetch_add(1, Ordering::Relaxed);
        self.traffic.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // A connect error means the agent is not there: no second try.
                if e.is_connect() {
                    Attempt::Failed(PeerCallError::Request(agent, e.to_string()))
                } else {
                    Attempt::Reused(PeerCallError::Request(agent, e.to_string()))
                }
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| Attempt::Failed(PeerCallError::BadReply(agent, e.to_string())))?
                .to_bytes();
            self.traffic
                .bytes_received
                .fetch_add(body.len() as u64 + RESPONSE_HEAD, Ordering::Relaxed);
            if !status.is_success() {
                return Err(Attempt::Failed(PeerCallError::Status(
                    agent,
                    status.as_u16(),
                )));
            }
            Ok(body)
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| Attempt::Failed(PeerCallError::Timeout(agent)))?
    }
}

/// How one attempt of a call failed.
enum Attempt {
    /// The request failed on a connection (likely a pooled one the other side closed).
    Reused(PeerCallError),
    /// Any other failure: final.
    Failed(PeerCallError),
}

impl Attempt {
    fn into_error(self) -> PeerCallError {
        match self {
            Attempt::Reused(e) | Attempt::Failed(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Reads one request head (these requests have no body).
    async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    #[tokio::test]
    async fn a_request_on_a_pooled_connection_closed_under_it_is_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let n = seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
                    // The first connection answers one request, then hangs up on the next
                    // one as it arrives (the race of an idle timeout with a new request).
                    if read_head(&mut s).await {
                        s.write_all(ok).await.unwrap();
                    }
                    if n == 0 {
                        read_head(&mut s).await;
                        return;
                    }
                    while read_head(&mut s).await {
                        s.write_all(ok).await.unwrap();
                    }
                });
            }
        });
        let client = PeerClient::new(Some(ClusterKey::new(b"0123456789abcdef")));
        assert!(client.distributions(agent).await.unwrap().is_empty());
        // The pooled connection is reused, fails, and the call goes through on a new one.
        assert!(client.distributions(agent).await.unwrap().is_empty());
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_agent_that_is_not_there_fails_at_once_without_a_second_try() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let agent = listener.local_addr().unwrap();
        drop(listener);
        let client = PeerClient::new(None);
        let err = client.distributions(agent).await.unwrap_err();
        assert!(matches!(err, PeerCallError::Request(..)), "{err}");
    }
}
