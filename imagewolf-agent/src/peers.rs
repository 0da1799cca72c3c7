//! Talking to the other agents: announcing a distribution, and asking what they have (a late
//! joiner's catch-up). Plain HTTP/1.1 JSON on the agents' API port, each request signed
//! with the cluster's request key when there is one ([`crate::auth`]).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::auth::{ClusterKey, AUTH_HEADER};
use crate::image::Distribution;

/// Time allowed for one agent-to-agent call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest reply accepted from another agent (a list of recent distributions).
const MAX_REPLY: usize = 16 << 20;
/// Largest `.torrent` of a blob chunk accepted (a chunk has at most a few thousand pieces).
pub const MAX_TORRENT: usize = 1 << 20;

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
}

impl PeerClient {
    /// A client with a connect timeout, signing its requests with `key` (None: a cluster
    /// without a secret, `--insecure-no-cluster-secret`).
    pub fn new(key: Option<ClusterKey>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            key,
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
        let req = self.request(agent, hyper::Method::POST, "/v1/distributions", body)?;
        self.call(agent, req).await.map(|_| ())
    }

    /// `GET /v1/distributions` from `agent`.
    pub async fn distributions(
        &self,
        agent: SocketAddr,
    ) -> Result<Vec<Distribution>, PeerCallError> {
        let req = self.request(agent, hyper::Method::GET, "/v1/distributions", Vec::new())?;
        let body = self.call(agent, req).await?;
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
        let req = self.request(agent, hyper::Method::GET, &path, Vec::new())?;
        let body = self.call(agent, req).await?;
        if body.len() > MAX_TORRENT {
            return Err(PeerCallError::BadReply(
                agent,
                format!("a torrent of {} bytes", body.len()),
            ));
        }
        Ok(body)
    }

    async fn call(
        &self,
        agent: SocketAddr,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<Bytes, PeerCallError> {
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| PeerCallError::Request(agent, e.to_string()))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| PeerCallError::BadReply(agent, e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(PeerCallError::Status(agent, status.as_u16()));
            }
            Ok(body)
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| PeerCallError::Timeout(agent))?
    }
}
