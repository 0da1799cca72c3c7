//! One HTTP announce: hyper's low-level HTTP/1 client over a fresh TCP connection.
//!
//! No connection pooling: a torrent announces once a minute or less, and a fresh connection
//! per announce means no idle sockets and no stale-connection retries. The whole exchange
//! (DNS, connect, request, body) runs under one timeout, and the body is bounded while it is
//! read ([`MAX_RESPONSE_LEN`]), so a hostile tracker can neither stall nor bloat us.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, CONTENT_LENGTH, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::{TcpSocket, TcpStream};

use super::query::{AnnounceRequest, Event};
use super::response::{decode_response, AnnounceResponse, ResponseError};
use crate::{InfoHash, PeerId};

/// Default limit on one whole announce: connect, request and response.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest tracker reply body read (a full compact reply of 200 peers is about 1.3 KiB).
pub const MAX_RESPONSE_LEN: usize = 1024 * 1024;
/// The `User-Agent` we announce with.
const AGENT: &str = concat!("ImageWolf/", env!("CARGO_PKG_VERSION"));

/// What a client tells the tracker in one announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceParams {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Our peer id.
    pub peer_id: PeerId,
    /// Our listening port.
    pub port: u16,
    /// Bytes uploaded this session.
    pub uploaded: u64,
    /// Bytes downloaded this session.
    pub downloaded: u64,
    /// Bytes still missing (0 when seeding).
    pub left: u64,
    /// The event of this announce.
    pub event: Event,
    /// How many peers we want (tracker default when `None`).
    pub numwant: Option<u32>,
    /// The address we want to be dialled on (LAN agents with several interfaces). The
    /// announce connection is made from this address when it is one of ours, so a tracker
    /// (which registers the connection's source address) sees it; it is also sent as
    /// `ip=`, which trackers ignore unless configured to trust it
    /// ([`super::TrackerConfig::trust_ip_param`]).
    pub ip: Option<IpAddr>,
}

impl AnnounceParams {
    /// The query string for these parameters (compact replies, no peer ids).
    pub fn to_query(&self) -> String {
        AnnounceRequest {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            port: self.port,
            uploaded: self.uploaded,
            downloaded: self.downloaded,
            left: self.left,
            event: self.event,
            compact: true,
            no_peer_id: true,
            numwant: self.numwant,
            ip: self.ip,
        }
        .to_query()
    }
}

/// Why an announce failed.
#[derive(Debug, Error)]
pub enum TrackerError {
    /// Only `http://` trackers are supported.
    #[error("unsupported tracker URL scheme {0:?} (only http:// is supported)")]
    UnsupportedScheme(String),
    /// The announce URL could not be parsed.
    #[error("invalid tracker URL: {0}")]
    InvalidUrl(String),
    /// Connecting or resolving failed.
    #[error("tracker connection failed: {0}")]
    Io(#[from] io::Error),
    /// The HTTP exchange failed.
    #[error("tracker HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// The tracker answered with a non-success status and no `failure reason`.
    #[error("tracker answered HTTP {0}")]
    HttpStatus(u16),
    /// The announce did not complete in time.
    #[error("tracker did not answer in time")]
    Timeout,
    /// The reply body exceeded [`MAX_RESPONSE_LEN`].
    #[error("tracker reply larger than {MAX_RESPONSE_LEN} bytes")]
    ResponseTooLarge,
    /// The reply body is not a valid announce reply.
    #[error("bad tracker reply: {0}")]
    BadResponse(ResponseError),
    /// The tracker refused the announce.
    #[error("tracker failure: {0}")]
    Failure(String),
}

impl From<ResponseError> for TrackerError {
    fn from(e: ResponseError) -> Self {
        match e {
            ResponseError::Failure(reason) => TrackerError::Failure(reason),
            other => TrackerError::BadResponse(other),
        }
    }
}

/// Announce to an `http://` tracker, with the default [`ANNOUNCE_TIMEOUT`].
pub async fn announce(
    url: &str,
    params: &AnnounceParams,
) -> Result<AnnounceResponse, TrackerError> {
    announce_with_timeout(url, params, ANNOUNCE_TIMEOUT).await
}

/// Announce to an `http://` tracker, giving up after `timeout`.
pub async fn announce_with_timeout(
    url: &str,
    params: &AnnounceParams,
    timeout: Duration,
) -> Result<AnnounceResponse, TrackerError> {
    let target = Target::parse(url, &params.to_query())?;
    tokio::time::timeout(timeout, target.fetch(params.ip))
        .await
        .map_err(|_| TrackerError::Timeout)?
}

/// Connects to the tracker from `source` when that address is ours and can reach it, else
/// from whatever address the kernel picks.
async fn connect(host: &str, port: u16, source: Option<IpAddr>) -> io::Result<TcpStream> {
    if let Some(source) = source.filter(|ip| !ip.is_unspecified()) {
        for addr in tokio::net::lookup_host((host, port)).await? {
            if addr.is_ipv4() != source.is_ipv4() {
                continue;
            }
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // Not one of our addresses (NAT), or no route from it: fall back below.
            if socket.bind(SocketAddr::new(source, 0)).is_err() {
                break;
            }
            match socket.connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => tracing::debug!("announce from {source} to {addr} failed: {e}"),
            }
        }
    }
    TcpStream::connect((host, port)).await
}

/// A parsed announce URL with our query appended.
#[derive(Debug)]
struct Target {
    host: String,
    port: u16,
    host_header: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str, query: &str) -> Result<Target, TrackerError> {
        let invalid = |why: &str| TrackerError::InvalidUrl(format!("{url}: {why}"));
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => {}
            Some(s) => return Err(TrackerError::UnsupportedScheme(s.to_owned())),
            None => return Err(invalid("no scheme")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let host_header = match authority.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        // Announce URLs may carry their own query (e.g. a passkey): keep it, append ours.
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        let path_and_query = match uri.query() {
            Some(q) if !q.is_empty() => format!("{path}?{q}&{query}"),
            _ => format!("{path}?{query}"),
        };
        Ok(Target {
            host,
            port,
            host_header,
            path_and_query,
        })
    }

    async fn fetch(self, source: Option<IpAddr>) -> Result<AnnounceResponse, TrackerError> {
        let stream = connect(&self.host, self.port, source).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let request = Request::get(self.path_and_query.as_str())
            .header(HOST, self.host_header.as_str())
            .header(USER_AGENT, AGENT)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| TrackerError::InvalidUrl(e.to_string()))?;

        let exchange = async move {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let declared = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|len| len > MAX_RESPONSE_LEN as u64) {
                return Err(TrackerError::ResponseTooLarge);
            }
            let mut body = response.into_body();
            let mut buf = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    if buf.len().saturating_add(data.len()) > MAX_RESPONSE_LEN {
                        return Err(TrackerError::ResponseTooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
            match decode_response(&buf) {
                Ok(reply) if status.is_success() => Ok(reply),
                Err(ResponseError::Failure(reason)) => Err(TrackerError::Failure(reason)),
                _ if !status.is_success() => Err(TrackerError::HttpStatus(status.as_u16())),
                result => Ok(result?),
            }
        };
        // The connection must be driven while the response is read; once it ends (the server
        // closes after replying) the exchange still has to drain the body, so it never wins.
        let driver = async move {
            if let Err(e) = conn.await {
                tracing::trace!("tracker connection ended: {e}");
            }
            std::future::pending::<Infallible>().await
        };
        tokio::select! {
            result = exchange => result,
            never = driver => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = Target::parse("http://tracker.lan:6969/announce", "a=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("tracker.lan", 6969));
        assert_eq!(t.host_header, "tracker.lan:6969");
        assert_eq!(t.path_and_query, "/announce?a=1");

        let t = Target::parse("HTTP://[fd00::1]/a?passkey=x", "a=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("fd00::1", 80));
        assert_eq!(t.host_header, "[fd00::1]");
        assert_eq!(t.path_and_query, "/a?passkey=x&a=1");

        for url in ["https://t/announce", "udp://t:80/announce"] {
            assert!(matches!(
                Target::parse(url, ""),
                Err(TrackerError::UnsupportedScheme(_))
            ));
        }
        for url in ["/announce", "not a url", ""] {
            assert!(matches!(
                Target::parse(url, ""),
                Err(TrackerError::InvalidUrl(_))
            ));
        }
    }
}
