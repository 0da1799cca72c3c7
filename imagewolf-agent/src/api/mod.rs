//! The agent's HTTP front door: registry and Docker Hub webhooks, /stats, /metrics, /healthz,
//! the agent-to-agent distribution endpoints and the BitTorrent tracker, on one hyper 1.x
//! HTTP/1 server.
//!
//! | route | method | answer |
//! |---|---|---|
//! | `/registryNotifications` | POST | `{"accepted": n, "duplicates": m, "ignored": k}` |
//! | `/hubNotifications` | POST | the same shape |
//! | `/stats` | GET | JSON array of [`ImageStats`] |
//! | `/stats/store` | GET | the blob store's [`StoreStats`](crate::store::StoreStats) (404 without one) |
//! | `/healthz` | GET | `{"status": "ok"}` |
//! | `/metrics` | GET | Prometheus text 0.0.4 |
//! | `/v1/distributions` | POST | `{"status": "started" \| "known" \| "ignored"}` |
//! | `/v1/distributions` | GET | JSON array of [`Distribution`] |
//! | `/v1/gossip`, `/v1/digest`, `/v1/distributions/<id>` | | the control plane (`gossip.rs`) |
//! | `/announce?...` | GET | bencoded tracker reply |
//! | `/v1/torrents/<info-hash>` | GET | a blob chunk's `.torrent` (registry-native path) |
//! | `/v1/leases/<digest>?api=<ip:port>` | POST | mirror mode: a blob's coordinator says who reads it from the upstream ([`LeaseAnswer`]) |
//! | `/v1/blobs/<digest>` | GET | mirror mode: the chunks this agent seeds of a blob ([`BlobOffer`]) |
//!
//! Design decisions:
//! - **Answer webhooks at once.** A registry holds back every later notification until the
//!   current one is acknowledged, so handlers only parse and hand events to [`AgentApi`], whose
//!   methods must return without waiting for pulls or downloads.
//! - **Errors are JSON and never fatal.** Every refusal is `{"error": "..."}` with the status
//!   that says why (400 malformed, 404, 405 with `Allow`, 408 slow body, 413 too large, 415
//!   wrong media type), logged at `warn`; the server keeps serving. Malformed HTTP that hyper
//!   refuses before routing gets hyper's own bare 400 and is counted as rejected.
//! - **Agent calls are authenticated before their body is read.** With a cluster secret,
//!   `/v1/distributions` (both methods), `/v1/distributions/<id>`, `/v1/gossip`,
//!   `/v1/digest`, `/v1/torrents/`, `/v1/leases/` and `/v1/blobs/` need a valid
//!   [`AUTH_HEADER`](crate::auth::AUTH_HEADER) (see [`crate::auth`]): checked from the
//!   request head, so a client without the secret is answered 401 before it can make the
//!   agent buffer a byte; a replayed or stale one too.
//! - **Bounded, and per source.** Request heads by hyper's read buffer ([`MAX_HEAD_LEN`],
//!   [`MAX_HEADERS`]); bodies by `max_body` enforced *while reading* (a declared
//!   `Content-Length` over the limit is refused before reading a byte); the body bytes
//!   received but not yet handled by a budget for all connections
//!   ([`MAX_BODY_BYTES_IN_FLIGHT`]) and one per source address
//!   ([`MAX_BODY_BYTES_PER_SOURCE`]), reserved as bytes arrive (503 past them; `body.rs`);
//!   connections by [`MAX_CONNECTIONS`] slots: when all are taken, an idle or stalled
//!   connection of the source address holding the most is closed to make room, never one
//!   of a source within its fair share while another holds more (`server.rs`), so a host
//!   flooding the API only ever displaces its own connections; time by a header-read
//!   timeout (which also ends idle keep-alive connections), a body-read timeout, and a
//!   maximum connection age after which the connection is closed gracefully.
//! - **Metrics label routes, not paths**: unknown paths count as `other` (see
//!   [`crate::stats`]).
//! - **Shutdown** when the watch value becomes `true` (or its sender is dropped): stop
//!   accepting, let in-flight requests finish (each connection closes gracefully), abort what
//!   is left after [`SHUTDOWN_GRACE`].
//!
//! A missing `Content-Type` is accepted as JSON (curl users forget it; the body is parsed as
//! JSON either way); a present one must name a JSON media type.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod body;
mod gossip;
mod server;

pub use server::{MIN_BODY_STALL, MIN_IDLE_AGE};

use crate::auth::{AuthError, ClusterKey, RequestAuth, AUTH_HEADER};
use crate::distributor::gossip::{Digest, Offers, Wants};
use crate::image::{BlobOffer, Distribution, LeaseAnswer};
use crate::notification::{
    parse_hub_webhook, parse_registry_envelope_detailed, validate_image_ref, NotificationError,
    PushEvent, SkipReason, MAX_BODY,
};
use crate::stats::{render_prometheus, DistributionMetrics, HttpCounters, ImageStats};

/// Default request body limit (the notification parsers' own limit).
pub const DEFAULT_MAX_BODY: usize = MAX_BODY;
/// Most connections open at once. Past it, a newcomer takes the slot of an idle or stalled
/// connection of the source holding the most connections (see `server.rs`), or waits in the
/// listen backlog while every connection is busy.
pub const MAX_CONNECTIONS: usize = 512;
/// Request body bytes all connections together may hold while receiving (reserved as they
/// arrive). Without it, every connection could hold a body of `max_body` bytes for
/// [`BODY_READ_TIMEOUT`].
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 16 * DEFAULT_MAX_BODY;
/// Request body bytes the connections of one source address may hold while receiving: a
/// quarter of [`MAX_BODY_BYTES_IN_FLIGHT`], so no single host can take the budget.
pub const MAX_BODY_BYTES_PER_SOURCE: usize = 4 * DEFAULT_MAX_BODY;
/// Time a client has to send a request head, and the longest a keep-alive connection idles.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send a request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Age after which a connection is closed (gracefully, after its current request).
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(120);
/// How long in-flight requests may take to finish at shutdown or past the maximum age.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Read buffer per connection, bounding request line plus headers.
pub const MAX_HEAD_LEN: usize = 32 * 1024;
/// Headers accepted per request.
pub const MAX_HEADERS: usize = 64;
/// Characters of a request path quoted in an error message.
const PATH_QUOTE_LEN: usize = 100;

/// Media type of registry notification envelopes.
pub const REGISTRY_EVENTS_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// Content type of /metrics.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the API needs from the rest of the agent; the distributor implements it.
///
/// Every method is called on the async runtime and must return at once: long work (pulls,
/// downloads, loads) runs in the background.
pub trait AgentApi: Send + Sync + 'static {
    /// A pushed image was announced by a registry or Docker Hub.
    fn on_push(&self, event: PushEvent) -> PushOutcome;
    /// Another agent announces a distribution it started.
    fn on_distribution(&self, d: Distribution) -> PushOutcome;
    /// Recent distributions, for late joiners' catch-up.
    fn distributions(&self) -> Vec<Distribution>;
    /// Every image on this node.
    fn images(&self) -> Vec<ImageStats>;
    /// Other agents currently known.
    fn known_agents(&self) -> usize;
    /// The bencoded tracker reply to an announce with this raw query string from `remote`.
    fn tracker_announce(&self, query: &str, remote: IpAddr) -> Vec<u8>;
    /// Slots and `--allow` refusals, for /metrics.
    fn distribution_metrics(&self) -> DistributionMetrics {
        DistributionMetrics::default()
    }
    /// The `.torrent` of a blob chunk this agent seeds, by hex info-hash (40 lowercase hex
    /// digits, checked by the router): receivers fetch piece hashes on demand.
    fn torrent_file(&self, info_hash: &str) -> Option<Vec<u8>> {
        let _ = info_hash;
        None
    }
    /// The blob store's figures, when this agent has one (`--distribution blobs`).
    fn store_stats(&self) -> Option<crate::store::StoreStats> {
        None
    }
    /// Mirror mode: `requester` (an agent's API address) asks this agent, the coordinator
    /// of blob `digest` (`sha256:<hex>`, checked by the router), who reads it. `None`: not
    /// in mirror mode.
    fn mirror_lease(&self, digest: &str, requester: SocketAddr) -> Option<LeaseAnswer> {
        let _ = (digest, requester);
        None
    }
    /// Mirror mode: what this agent offers of blob `digest` (`None`: nothing).
    fn blob_offer(&self, digest: &str) -> Option<BlobOffer> {
        let _ = digest;
        None
    }
    /// Mirror mode's counters, when on.
    fn mirror_counts(&self) -> Option<crate::stats::MirrorCounts> {
        None
    }
    /// This agent's calls to the others so far.
    fn peer_traffic(&self) -> crate::peers::PeerTraffic {
        crate::peers::PeerTraffic::default()
    }
    /// A rumor: which of the offered distributions this agent wants, from which segment.
    fn on_offers(&self, offers: &Offers) -> Wants {
        let _ = offers;
        Wants::default()
    }
    /// The part of a distribution this agent wanted, from segment `from` on; `relay`: pass
    /// it on to random agents.
    fn on_delta(&self, from: usize, relay: bool, delta: Distribution) -> PushOutcome {
        let _ = (from, relay, delta);
        PushOutcome::Ignored("no control plane here".into())
    }
    /// What this agent knows, as a digest (entries left out if `their_hash` is the same).
    fn digest(&self, their_hash: Option<&str>) -> Option<Digest> {
        let _ = their_hash;
        None
    }
    /// Distribution `id` from segment `from` on.
    fn distribution_since(&self, id: &str, from: usize) -> Option<Distribution> {
        let _ = (id, from);
        None
    }
}

/// What the agent did with a push or an announced distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// New: work started in the background.
    Started,
    /// Already known (the same push again, or a distribution already running).
    Duplicate,
    /// Deliberately not acted on, with the reason.
    Ignored(String),
    /// Not taken now (too much work queued or in progress), with the reason: answered 503,
    /// which registries and agents retry.
    Busy(String),
}

/// API settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Pull from this registry instead of the host named in registry notifications.
    pub registry_override: Option<String>,
    /// Registry that Docker Hub webhooks' images are pulled from.
    pub hub_registry: String,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// When set, the webhook endpoints require this token, as `Authorization: Bearer TOKEN`
    /// (the registry's notification endpoint can send headers) or as `?token=TOKEN` (Docker
    /// Hub webhooks cannot); anything else is answered 401.
    pub webhook_token: Option<String>,
    /// The cluster's request key: when set, agent-to-agent routes need requests signed with
    /// it ([`crate::auth`]); when not (`--insecure-no-cluster-secret`), anyone may call them.
    pub cluster_key: Option<ClusterKey>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            registry_override: None,
            hub_registry: "docker.io".to_owned(),
            max_body: DEFAULT_MAX_BODY,
            webhook_token: None,
            cluster_key: None,
        }
    }
}

/// Checks a webhook request's token against the configured one, in time independent of
/// where they differ (both sides are hashed first, then compared with no early exit).
fn check_webhook_token(config: &ApiConfig, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(expected) = &config.webhook_token else {
        return Ok(());
    };
    let from_header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(str::to_owned)
    });
    let given = from_header.or(from_query).unwrap_or_default();
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong webhook token".to_owned(),
        ))
    }
}

/// Equality of two secrets without an early exit: compares their SHA-256 digests byte by
/// byte, folding the differences.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Connections the kernel queues for the API to accept (tokio's default is 128): a burst of
/// clients past it is dropped by the kernel before the connection limits can sort it out.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds the API's listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the API on `listener` until `shutdown` becomes `true` (or its sender is dropped).
///
/// Returns after in-flight requests finished or [`SHUTDOWN_GRACE`] passed. Accept errors
/// (e.g. out of file descriptors) are logged and retried, never returned.
pub async fn serve(
    listener: TcpListener,
    api: Arc<dyn AgentApi>,
    config: ApiConfig,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with_limits(listener, api, config, Limits::default(), shutdown).await
}

pub(crate) use server::Limits;
use server::{serve_with_limits, ConnState};

struct Ctx {
    api: Arc<dyn AgentApi>,
    config: ApiConfig,
    limits: Limits,
    counters: HttpCounters,
    body_budget: body::BodyBudget,
    /// Checks agent-to-agent requests (with a cluster secret).
    auth: Option<RequestAuth>,
}

/// The routes; `label` is also the metrics path label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    RegistryNotifications,
    HubNotifications,
    Stats,
    StoreStats,
    Healthz,
    Metrics,
    Distributions,
    Announce,
    Torrent,
    Lease,
    BlobOffer,
    Gossip,
    Digest,
    DistributionById,
}

impl Route {
    fn from_path(path: &str) -> Option<Route> {
        Some(match path {
            "/registryNotifications" => Route::RegistryNotifications,
            "/hubNotifications" => Route::HubNotifications,
            "/stats" => Route::Stats,
            "/stats/store" => Route::StoreStats,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/v1/distributions" => Route::Distributions,
            "/announce" => Route::Announce,
            "/v1/gossip" => Route::Gossip,
            "/v1/digest" => Route::Digest,
            p if gossip::is_distribution_path(p) => Route::DistributionById,
            p if p.strip_prefix("/v1/torrents/").is_some_and(is_info_hash) => Route::Torrent,
            p if p.strip_prefix("/v1/leases/").is_some_and(is_digest) => Route::Lease,
            p if p.strip_prefix("/v1/blobs/").is_some_and(is_digest) => Route::BlobOffer,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Route::RegistryNotifications => "/registryNotifications",
            Route::HubNotifications => "/hubNotifications",
            Route::Stats => "/stats",
            Route::StoreStats => "/stats/store",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::Distributions => "/v1/distributions",
            Route::Announce => "/announce",
            Route::Torrent => "/v1/torrents",
            Route::Lease => "/v1/leases",
            Route::BlobOffer => "/v1/blobs",
            Route::Gossip => "/v1/gossip",
            Route::Digest => "/v1/digest",
            Route::DistributionById => "/v1/distributions/<id>",
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Route::RegistryNotifications | Route::HubNotifications => "POST",
            Route::Distributions | Route::DistributionById => "GET, POST",
            Route::Lease | Route::Gossip => "POST",
            Route::Stats
            | Route::StoreStats
            | Route::Healthz
            | Route::Metrics
            | Route::Announce
            | Route::Torrent
            | Route::BlobOffer
            | Route::Digest => "GET",
        }
    }
}

/// A refusal: status, message, and for 405 the `Allow` value.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_response(self.status, &json!({ "error": self.message }));
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<NotificationError> for ApiError {
    fn from(e: NotificationError) -> Self {
        let status = if e.is_too_large() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, e.to_string())
    }
}

async fn handle(ctx: &Ctx, req: Request<Incoming>, conn: &ConnState) -> Response<Full<Bytes>> {
    let remote = conn.ip();
    let route = Route::from_path(req.uri().path());
    let method = req.method().clone();
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let path = quote_path(req.uri().path());
    let result = match route {
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {path}"),
        )),
        Some(route) => dispatch(ctx, route, req, conn).await,
    };
    let response = result.unwrap_or_else(|e| {
        tracing::warn!(%remote, %method, path, status = e.status.as_u16(), "API request refused: {}", e.message);
        e.into_response()
    });
    let label = route.map_or("other", Route::label);
    ctx.counters.record(label, response.status().as_u16());
    let bytes = hyper::body::Body::size_hint(response.body()).exact();
    ctx.counters
        .record_bytes(label, declared, bytes.unwrap_or(0));
    response
}

async fn dispatch(
    ctx: &Ctx,
    route: Route,
    req: Request<Incoming>,
    conn: &ConnState,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let remote = conn.ip();
    let method = req.method();
    let allowed = match route {
        Route::RegistryNotifications | Route::HubNotifications => method == Method::POST,
        Route::Distributions | Route::DistributionById => {
            method == Method::GET || method == Method::POST
        }
        Route::Lease | Route::Gossip => method == Method::POST,
        _ => method == Method::GET,
    };
    if !allowed {
        return Err(ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{} is {} only", route.label(), route.allow()),
            allow: Some(route.allow()),
        });
    }
    if matches!(
        route,
        Route::RegistryNotifications | Route::HubNotifications
    ) {
        check_webhook_token(&ctx.config, &req)?;
    }
    let body_hash = match route {
        Route::Distributions
        | Route::Torrent
        | Route::Lease
        | Route::BlobOffer
        | Route::Gossip
        | Route::Digest
        | Route::DistributionById => check_agent_auth(ctx, &req)?,
        _ => None,
    };
    let api = &ctx.api;
    match route {
        Route::RegistryNotifications => {
            check_media_type(
                req.headers(),
                &[REGISTRY_EVENTS_MEDIA_TYPE, "application/json"],
            )?;
            let body = body::read_body(req, ctx, conn).await?;
            let envelope =
                parse_registry_envelope_detailed(&body, ctx.config.registry_override.as_deref())?;
            let mut counts = PushCounts {
                ignored: envelope.skipped.len(),
                ..PushCounts::default()
            };
            for skipped in &envelope.skipped {
                if let SkipReason::Invalid(e) = &skipped.reason {
                    tracing::warn!(
                        %remote,
                        index = skipped.index,
                        event_id = skipped.event_id.as_deref().unwrap_or(""),
                        "registry event skipped: {e}"
                    );
                }
            }
            for push in envelope.pushes {
                counts.add(&push, api.on_push(push.clone()));
            }
            counts.into_response()
        }
        Route::HubNotifications => {
            check_media_type(req.headers(), &["application/json"])?;
            let body = body::read_body(req, ctx, conn).await?;
            let push = parse_hub_webhook(&body, &ctx.config.hub_registry)?;
            let mut counts = PushCounts::default();
            counts.add(&push, api.on_push(push.clone()));
            counts.into_response()
        }
        Route::Stats => Ok(json_response(StatusCode::OK, &api.images())),
        Route::StoreStats => match api.store_stats() {
            Some(stats) => Ok(json_response(StatusCode::OK, &stats)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no blob store here (--distribution tarball)",
            )),
        },
        Route::Healthz => Ok(json_response(StatusCode::OK, &json!({ "status": "ok" }))),
        Route::Metrics => {
            let mut agent = ctx.counters.snapshot(api.known_agents());
            agent.distribution = api.distribution_metrics();
            agent.store = api.store_stats();
            agent.mirror = api.mirror_counts();
            agent.peer_calls = api.peer_traffic();
            let text = render_prometheus(&api.images(), &agent);
            Ok(bytes_response(Bytes::from(text), METRICS_CONTENT_TYPE))
        }
        Route::Distributions if method == Method::GET => {
            Ok(json_response(StatusCode::OK, &api.distributions()))
        }
        Route::Distributions => {
            check_media_type(req.headers(), &["application/json"])?;
            let body = body::read_body(req, ctx, conn).await?;
            if body_hash.is_some_and(|hash| !hash.matches(&body)) {
                return Err(auth_refused(AuthError::BodyMismatch));
            }
            let distribution: Distribution = serde_json::from_slice(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed distribution: {e}"),
                )
            })?;
            validate_image_ref(&distribution.image)?;
            let answer = match api.on_distribution(distribution) {
                PushOutcome::Started => json!({ "status": "started" }),
                PushOutcome::Duplicate => json!({ "status": "known" }),
                PushOutcome::Ignored(reason) => json!({ "status": "ignored", "reason": reason }),
                PushOutcome::Busy(reason) => {
                    return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason))
                }
            };
            Ok(json_response(StatusCode::OK, &answer))
        }
        Route::Announce => {
            let query = req.uri().query().unwrap_or("");
            let body = api.tracker_announce(query, remote);
            Ok(bytes_response(Bytes::from(body), "text/plain"))
        }
        Route::Torrent => {
            let info_hash = req.uri().path().trim_start_matches("/v1/torrents/");
            match api.torrent_file(info_hash) {
                Some(bytes) => Ok(bytes_response(
                    Bytes::from(bytes),
                    "application/x-bittorrent",
                )),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no torrent {info_hash} here"),
                )),
            }
        }
        Route::Lease => {
            // A lease request has no body; one that came with a body is refused.
            if body_hash.is_some_and(|hash| !hash.matches(&[])) {
                return Err(auth_refused(AuthError::BodyMismatch));
            }
            let digest = req.uri().path().trim_start_matches("/v1/leases/");
            let requester = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("api="))
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "api=<ip:port> of the requester expected",
                    )
                })?;
            match api.mirror_lease(digest, requester) {
                Some(answer) => Ok(json_response(StatusCode::OK, &answer)),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "mirror mode is off on this agent",
                )),
            }
        }
        Route::Gossip | Route::Digest | Route::DistributionById => {
            gossip::dispatch(ctx, route, req, conn, body_hash).await
        }
        Route::BlobOffer => {
            let digest = req.uri().path().trim_start_matches("/v1/blobs/");
            match api.blob_offer(digest) {
                Some(offer) => Ok(json_response(StatusCode::OK, &offer)),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("no offer of {digest} here"),
                )),
            }
        }
    }
}

/// Checks an agent-to-agent request's [`AUTH_HEADER`] from its head (when the cluster has a
/// secret): the hash its body must have, if any.
fn check_agent_auth(
    ctx: &Ctx,
    req: &Request<Incoming>,
) -> Result<Option<crate::auth::BodyHash>, ApiError> {
    let Some(auth) = &ctx.auth else {
        return Ok(None);
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let header = req.headers().get(AUTH_HEADER).map(HeaderValue::as_bytes);
    auth.check_head(req.method().as_str(), path, header)
        .map(Some)
        .map_err(auth_refused)
}

fn auth_refused(e: AuthError) -> ApiError {
    let status = match e {
        AuthError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    ApiError::new(status, e.to_string())
}

/// 40 lowercase hex digits.
/// `sha256:` and 64 lowercase hex digits.
fn is_digest(s: &str) -> bool {
    crate::image::is_image_id(s)
}

fn is_info_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The webhook answer.
#[derive(Debug, Default, Serialize)]
struct PushCounts {
    accepted: usize,
    duplicates: usize,
    ignored: usize,
    /// Why some push was not taken now (then the answer is 503, and the registry sends the
    /// whole envelope again; the events taken are duplicates then).
    #[serde(skip)]
    busy: Option<String>,
}

impl PushCounts {
    fn add(&mut self, push: &PushEvent, outcome: PushOutcome) {
        match outcome {
            PushOutcome::Started => {
                tracing::info!(image = %push.image, "push accepted");
                self.accepted += 1;
            }
            PushOutcome::Duplicate => {
                tracing::debug!(image = %push.image, "push already known");
                self.duplicates += 1;
            }
            PushOutcome::Ignored(reason) => {
                tracing::info!(image = %push.image, "push ignored: {reason}");
                self.ignored += 1;
            }
            PushOutcome::Busy(reason) => self.busy = Some(reason),
        }
    }

    fn into_response(self) -> Result<Response<Full<Bytes>>, ApiError> {
        match &self.busy {
            Some(reason) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                reason.clone(),
            )),
            None => Ok(json_response(StatusCode::OK, &self)),
        }
    }
}

/// Accepts a missing `Content-Type` or one whose media type (parameters aside) is listed.
fn check_media_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if accepted.iter().any(|a| a.eq_ignore_ascii_case(essence)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unsupported content type {:?}; expected {}",
                String::from_utf8_lossy(value.as_bytes())
                    .chars()
                    .take(100)
                    .collect::<String>(),
                accepted.join(" or ")
            ),
        ))
    }
}

fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(e) => {
            tracing::warn!("API response not serializable: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"error":"internal error"}"#.to_vec(),
            )
        }
    };
    let mut response = bytes_response(Bytes::from(body), "application/json");
    *response.status_mut() = status;
    response
}

fn bytes_response(body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A request path for logs and messages: Debug-escaped and cut short.
fn quote_path(path: &str) -> String {
    let mut cut: String = path.chars().take(PATH_QUOTE_LEN).collect();
    if cut.len() < path.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_abuse;
