//! Bounded HTTP(S) requests to a registry's API v2, over hyper with rustls, with the
//! registry's own authentication. Shared by the registry source, the blob path and the
//! poller ([`crate::poll`]): one client per agent, so its connections, the scheme each
//! host speaks and the tokens are shared.
//!
//! **Which scheme** (never a silent downgrade of a host that speaks https):
//! - a host `--insecure-registry` names (or an `http://` `--poll` target) is read over plain
//!   http, as the operator said; the agent logs that loudly at start;
//! - a host named without a port, or with port 443 (Docker Hub, GHCR, ECR, GitLab, Quay,
//!   Harbor...), is read over https only;
//! - any other host (an explicit port, as today's on-prem and test registries have) is read
//!   over https when it speaks TLS; only when its answer to a TLS handshake is not TLS at
//!   all (a plain-HTTP server answers the ClientHello with an HTTP error, or closes, or
//!   says nothing within [`PROBE_TIMEOUT`]) and it then answers plain `GET /v2/` over http
//!   is it read over http ([`Scheme`] remembered per host; re-checked after
//!   [`PLAIN_HTTP_RECHECK`], https first again). A certificate error is an error, never a
//!   reason to try http; a host once seen speaking https is never read over http again
//!   (while remembered: the last [`MAX_SCHEME_HOSTS`] hosts, plain-http ones forgotten first).
//!   Over such an auto-detected plain-http host no `Authorization` is ever sent.
//!
//! **Authentication** ([`super::auth`]): a 401 with `WWW-Authenticate: Bearer realm=...`
//! gets a token from the realm (anonymously, or with the registry's credentials from
//! `--registry-auth-file` as basic auth) and the request is retried with it once; tokens are
//! cached per (registry, scope) until shortly before they expire. A 401 with `Basic` is
//! retried with the credentials, and later requests to that host send them at once.
//! Credentials and tokens go to the registry host (and same-host redirects) and to the realm
//! only: never to a redirect target on another host (object storage), never over plain http
//! unless the host is named insecure. The realm is judged by the [`HostPolicy`] like a
//! registry host (named, or not loopback/link-local/metadata...) and is not redirected.
//!
//! Every request has a deadline ([`REQUEST_TIMEOUT`] until the response head); bodies read
//! whole are capped by the caller's limit; streamed bodies are handed back as they arrive.
//! Redirects (blob downloads are often redirected to storage) are followed up to
//! [`MAX_REDIRECTS`] times, to `https://` or `http://` locations.
//!
//! Hosts are judged by a [`HostPolicy`] ([`super::guard`]): the registry host before the
//! first request and at connect time (under TLS too: the guarded connector is the one TLS
//! runs over), each redirect target by the stricter redirect rule. Errors name the URL
//! asked for and a fixed message, never what an upstream answered (a `Location` or a realm
//! is not quoted either: only the host it names), never a credential or a token.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use super::auth::{self, Challenge, CredentialStore, Credentials, TokenCache};
use super::guard::{refusal_in, GuardedConnector, HostPolicy, RedirectHop, Refused, Rule};
use super::tls::TlsSettings;

mod credentials;
mod reload;
pub use reload::{spawn_auth_file_reload, AUTH_FILE_CHECK};
mod scheme;

use credentials::{challenges_of, pick, secret_header, AuthUse};
use scheme::{explicit_port, tls_error_in, TlsProblem};

/// Deadline of each registry request (until the response head; and for a whole bounded read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a host with an explicit port gets to answer a TLS handshake before it is tried
/// over plain http (only a plain-HTTP answer there makes it a plain-http host).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a host found to speak plain http only is read so before https is tried again.
pub const PLAIN_HTTP_RECHECK: Duration = Duration::from_secs(600);
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 3;
/// Largest token service answer read.
pub const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// Most hosts whose scheme is remembered.
pub const MAX_SCHEME_HOSTS: usize = 1024;
/// Most hosts remembered as asking for basic auth.
const MAX_BASIC_HOSTS: usize = 1024;
/// Bytes of an error answer looked at (never quoted) to tell "speaks https" apart.
const MAX_SNIFF: usize = 300;
/// The manifest media types asked for, newest formats included, so the digest is the one a
/// client pulling today resolves.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Why a request failed before a usable answer arrived.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or reading failed (registry down, connection reset, body too big).
    #[error("{url}: {message}")]
    Transport {
        /// The request URL.
        url: String,
        /// The error.
        message: String,
    },
    /// No answer within the deadline.
    #[error("{url}: no answer within {after:?}")]
    Timeout {
        /// The request URL.
        url: String,
        /// How long we waited.
        after: Duration,
    },
    /// The TLS handshake failed with a host that speaks TLS (an untrusted or invalid
    /// certificate, no common protocol): never a reason to try plain http.
    #[error("{url}: TLS: {message}")]
    Tls {
        /// The request URL.
        url: String,
        /// What failed (rustls's words), and what to do about a certificate.
        message: String,
        /// Whether the certificate was the problem.
        certificate: bool,
    },
    /// The host's answer to a TLS handshake was not TLS: a plain-http server (to be read
    /// over http, it must be named with `--insecure-registry`, or have an explicit port).
    #[error("{url}: the host does not speak TLS ({message}); a plain-http registry must be named with --insecure-registry")]
    NotTls {
        /// The request URL.
        url: String,
        /// What was seen.
        message: String,
    },
    /// The host policy refused the registry host or a redirect target ([`super::guard`]).
    #[error("{url}: {refused}")]
    Refused {
        /// The URL asked for.
        url: String,
        /// Which host, and which rule refused it.
        refused: Refused,
    },
    /// A redirect this client does not follow (another scheme, too many hops, no Location).
    #[error("{url}: {message}")]
    Redirect {
        /// The URL that redirected.
        url: String,
        /// Why it is not followed.
        message: String,
    },
    /// The registry or its token service refused the credentials configured for it, or
    /// they could not be used (a plain-http host not named insecure).
    #[error("{url}: {message}")]
    Auth {
        /// The URL asked for.
        url: String,
        /// What was refused (hosts and statuses only).
        message: String,
    },
}

/// A status, headers and a body read whole (bounded).
#[derive(Debug)]
pub struct Bounded {
    /// The final URL (after redirects).
    pub url: String,
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body (at most the caller's limit).
    pub body: Bytes,
}

/// The scheme a host is read over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// TLS.
    Https,
    /// Plain http.
    Http,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// How a host's scheme is chosen (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMode {
    /// Named insecure: plain http, credentials included.
    PlainHttp,
    /// No port, or 443: https only.
    HttpsOnly,
    /// An explicit port: https, or plain http if it does not speak TLS at all.
    HttpsElsePlain,
}

/// What a client is built from.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Which hosts may be reached ([`super::guard`]).
    pub policy: HostPolicy,
    /// The trusted roots.
    pub tls: TlsSettings,
    /// Hosts (`host[:port]`) read over plain http (`--insecure-registry`, `http://` poll
    /// targets).
    pub plain_http: Vec<String>,
    /// Credentials per registry (`--registry-auth-file`).
    pub credentials: CredentialStore,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("policy", &self.policy)
            .field("tls", &self.tls)
            .field("plain_http", &self.plain_http)
            .field("credentials", &self.credentials)
            .finish()
    }
}

type Connector = HttpsConnector<GuardedConnector>;
type HttpClient = Client<Connector, Empty<Bytes>>;

/// A registry client (cheap to clone: one set of connection pools, schemes and tokens).
/// Registry hosts and redirect targets connect through separate pools, each judged by its
/// own rule, so a connection made for one is never reused for the other.
#[derive(Clone)]
pub struct RegistryHttp {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Arc<HostPolicy>,
    /// Registry hosts, named hosts and realms: [`Rule::Registry`].
    direct: HttpClient,
    /// Redirect targets on other hosts: [`Rule::Redirect`].
    redirected: HttpClient,
    /// Lower-cased `host[:port]`s read over plain http.
    plain_http: HashSet<String>,
    /// Swapped whole when `--registry-auth-file` changes (`reload.rs`).
    credentials: std::sync::RwLock<Arc<CredentialStore>>,
    /// Host -> scheme found by probing, and when.
    schemes: Mutex<HashMap<String, (Scheme, Instant)>>,
    tokens: Mutex<TokenCache>,
    /// Hosts that asked for basic auth: their credentials are sent at once.
    basic: Mutex<HashSet<String>>,
}

impl Default for RegistryHttp {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistryHttp {
    /// A client with its own connection pools, the strict policy (no named hosts), the
    /// platform's roots and no credentials.
    pub fn new() -> Self {
        Self::with_options(ClientOptions::default())
    }

    /// A client reaching hosts as `policy` allows (platform roots, no credentials).
    pub fn with_policy(policy: HostPolicy) -> Self {
        Self::with_options(ClientOptions {
            policy,
            ..ClientOptions::default()
        })
    }

    /// A client built from `options`.
    pub fn with_options(options: ClientOptions) -> Self {
        let policy = Arc::new(options.policy);
        let tls = options.tls.client_config();
        let client = |rule| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(GuardedConnector::new(
                    Arc::clone(&policy),
                    rule,
                    REQUEST_TIMEOUT,
                ));
            Client::builder(TokioExecutor::new()).build(connector)
        };
        RegistryHttp {
            inner: Arc::new(Inner {
                direct: client(Rule::Registry),
                redirected: client(Rule::Redirect),
                policy,
                plain_http: options
                    .plain_http
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .collect(),
                credentials: std::sync::RwLock::new(Arc::new(options.credentials)),
                schemes: Mutex::new(HashMap::new()),
                tokens: Mutex::new(TokenCache::default()),
                basic: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The policy this client reaches hosts by.
    pub fn policy(&self) -> &HostPolicy {
        &self.inner.policy
    }

    /// The credentials requests use now.
    pub fn credentials(&self) -> Arc<CredentialStore> {
        Arc::clone(
            &self
                .inner
                .credentials
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Uses `store` from now on (a rotated `--registry-auth-file`); tokens obtained with
    /// the old credentials and the hosts known to want basic auth are forgotten.
    pub fn replace_credentials(&self, store: CredentialStore) {
        *self
            .inner
            .credentials
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(store);
        *lock(&self.inner.tokens) = TokenCache::default();
        lock(&self.inner.basic).clear();
    }

    /// Checks a registry host (`host[:port]`) before anything acts on it: a literal address
    /// judged as it is, a name by what it resolves to ([`HostPolicy::check`]).
    pub async fn check_registry(&self, registry: &str) -> Result<(), Refused> {
        self.inner.policy.check(registry, Rule::Registry).await
    }

    /// How `registry`'s scheme is chosen (see the module docs).
    pub fn host_mode(&self, registry: &str) -> HostMode {
        let host = api_host(registry);
        if self.inner.plain_http.contains(&host)
            || self
                .inner
                .plain_http
                .contains(&registry.to_ascii_lowercase())
        {
            return HostMode::PlainHttp;
        }
        match explicit_port(&host) {
            Some(port) if port != 443 => HostMode::HttpsElsePlain,
            _ => HostMode::HttpsOnly,
        }
    }

    /// Tokens cached for `registry` (for tests and bounds checks).
    pub fn cached_tokens(&self, registry: &str) -> usize {
        lock(&self.inner.tokens).len_for(&api_host(registry))
    }

    /// One request to `registry` (`host[:port]` as in image references) for `path`
    /// (`/v2/...`), authenticated as the registry asks, no redirects followed; the body is
    /// read whole, at most `max_body` bytes (more is a [`HttpError::Transport`]). The
    /// deadline covers the whole exchange.
    pub async fn request(
        &self,
        method: Method,
        registry: &str,
        path: &str,
        accept: Option<&str>,
        max_body: usize,
    ) -> Result<Bounded, HttpError> {
        let shown = shown_url(registry, path);
        within_deadline(&shown, async {
            let (url, resp, _) = self.exchange(method, registry, path, accept).await?;
            read_bounded(&url, resp, max_body).await
        })
        .await
    }

    /// A GET whose body is read whole (at most `max_body` bytes), following redirects.
    pub async fn get_bounded(
        &self,
        registry: &str,
        path: &str,
        accept: Option<&str>,
        max_body: usize,
    ) -> Result<Bounded, HttpError> {
        let shown = shown_url(registry, path);
        within_deadline(&shown, async {
            let (url, resp) = self.get_following(registry, path, accept).await?;
            read_bounded(&url, resp, max_body).await
        })
        .await
    }

    /// A GET following redirects, returning the final URL and the response with its body
    /// unread (the caller streams it). The deadline covers each response head.
    ///
    /// A redirect is followed to the registry's own host, to a host the policy names, or
    /// else only to a host whose addresses are all public ([`Rule::Redirect`]); the
    /// `Authorization` goes along only to the registry's own host. Errors name the URL
    /// asked for, never the redirect's location.
    pub async fn get_following(
        &self,
        registry: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(String, Response<Incoming>), HttpError> {
        let shown = shown_url(registry, path);
        let (asked, mut resp, auth) =
            within_deadline(&shown, self.exchange(Method::GET, registry, path, accept)).await?;
        let host = api_host(registry);
        let mut url = asked.clone();
        for hop in 0..=MAX_REDIRECTS {
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok((url, resp));
            }
            let redirect = |message: String| HttpError::Redirect {
                url: asked.clone(),
                message,
            };
            if hop == MAX_REDIRECTS {
                return Err(redirect(format!("more than {MAX_REDIRECTS} redirects")));
            }
            let location = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    redirect(format!(
                        "HTTP {} without a Location",
                        resp.status().as_u16()
                    ))
                })?;
            let next = resolve_location(&url, location).map_err(redirect)?;
            let target = authority_of(&next).map_err(redirect)?;
            let (client, same_host) = match self.inner.policy.redirect_hop(&host, &target) {
                RedirectHop::SameHost => (&self.inner.direct, true),
                RedirectHop::Named => (&self.inner.direct, false),
                RedirectHop::MustBePublic => {
                    self.preflight(&asked, &target, Rule::Redirect).await?;
                    (&self.inner.redirected, false)
                }
            };
            // Credentials stay with the registry: only a same-host hop over https (or to a
            // host named insecure) carries them.
            let carry = same_host
                && (next.starts_with("https://")
                    || self.host_mode(registry) == HostMode::PlainHttp);
            let header = if carry { auth.header() } else { None };
            resp = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.send(client, Method::GET, &next, accept, header),
            )
            .await
            .map_err(|_| HttpError::Timeout {
                url: asked.clone(),
                after: REQUEST_TIMEOUT,
            })?
            .map_err(|e| match e {
                // A later hop's error: name the URL asked for and the hop's host.
                HttpError::Transport { message, .. } => HttpError::Transport {
                    url: asked.clone(),
                    message: format!("after a redirect to {target}: {message}"),
                },
                HttpError::Tls {
                    message,
                    certificate,
                    ..
                } => HttpError::Tls {
                    url: asked.clone(),
                    message: format!("after a redirect to {target}: {message}"),
                    certificate,
                },
                HttpError::Refused { refused, .. } => HttpError::Refused {
                    url: asked.clone(),
                    refused,
                },
                e => e,
            })?;
            url = next;
        }
        unreachable!("the loop returns on its last hop")
    }

    /// One request to the registry host: the policy's check, the scheme, then the request
    /// with what the host needs for `path`'s scope (a cached token, basic credentials), and
    /// on a 401 one retry with what the challenge asks for. Returns the URL, the response
    /// and the `Authorization` used.
    async fn exchange(
        &self,
        method: Method,
        registry: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(String, Response<Incoming>, AuthUse), HttpError> {
        let host = api_host(registry);
        let shown = shown_url(registry, path);
        self.preflight(&shown, registry, Rule::Registry).await?;
        let mode = self.host_mode(registry);
        let scheme = self.scheme_for(registry, &host, mode).await?;
        let url = format!("{}://{host}{path}", scheme.as_str());
        // Authorization goes over https, or plain http to a host named insecure only.
        let may_authenticate = scheme == Scheme::Https || mode == HostMode::PlainHttp;
        let store = self.credentials();
        let credentials = store.get(registry);
        let scope = auth::scope_of(path);
        let first = if may_authenticate {
            self.preemptive(&host, &scope, credentials)
        } else {
            AuthUse::None
        };
        let resp = self
            .send(
                &self.inner.direct,
                method.clone(),
                &url,
                accept,
                first.header(),
            )
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok((url, resp, first));
        }
        if let AuthUse::Bearer { .. } = first {
            lock(&self.inner.tokens).remove(&host, &scope);
        }
        if !may_authenticate {
            if credentials.is_some() {
                return Err(HttpError::Auth {
                    url,
                    message: format!(
                        "{host} asks for credentials but speaks plain http only; they are \
                         sent over plain http only to hosts --insecure-registry names"
                    ),
                });
            }
            return Ok((url, resp, first));
        }
        let challenges = challenges_of(resp.headers());
        let next = match pick(&challenges) {
            Some(c) if c.scheme == "bearer" => {
                match self
                    .fetch_token(registry, &host, &url, c, &scope, credentials)
                    .await?
                {
                    Some(auth) => auth,
                    None => return Ok((url, resp, first)),
                }
            }
            Some(_) => match credentials {
                Some(c) => {
                    let mut basic = lock(&self.inner.basic);
                    if basic.len() < MAX_BASIC_HOSTS {
                        basic.insert(host.clone());
                    }
                    match secret_header(&c.basic_header()) {
                        Some(h) => AuthUse::Basic(h),
                        None => {
                            return Err(HttpError::Auth {
                                url,
                                message: format!(
                                    "the credentials for {host} do not fit in a header"
                                ),
                            })
                        }
                    }
                }
                None => return Ok((url, resp, first)),
            },
            None => return Ok((url, resp, first)),
        };
        drop(resp);
        let resp = self
            .send(&self.inner.direct, method, &url, accept, next.header())
            .await?;
        let status = resp.status();
        if matches!(status.as_u16(), 401 | 403) && next.with_credentials() {
            if let AuthUse::Basic(_) = next {
                lock(&self.inner.basic).remove(&host);
            }
            lock(&self.inner.tokens).remove(&host, &scope);
            return Err(HttpError::Auth {
                url,
                message: format!(
                    "the registry refused the credentials for {} (HTTP {}; from \
                     --registry-auth-file)",
                    auth::normalize_registry_key(registry).unwrap_or(host),
                    status.as_u16()
                ),
            });
        }
        Ok((url, resp, next))
    }

    /// The policy's check of `host` under `rule`, as an error naming `url`.
    async fn preflight(&self, url: &str, host: &str, rule: Rule) -> Result<(), HttpError> {
        self.inner
            .policy
            .check(host, rule)
            .await
            .map_err(|refused| HttpError::Refused {
                url: url.to_owned(),
                refused,
            })
    }

    async fn send(
        &self,
        client: &HttpClient,
        method: Method,
        url: &str,
        accept: Option<&str>,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, HttpError> {
        let transport = |message: String| transport(url, message);
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::USER_AGENT, "imagewolf-agent");
        if let Some(accept) = accept {
            req = req.header(hyper::header::ACCEPT, accept);
        }
        if let Some(value) = authorization {
            req = req.header(AUTHORIZATION, value.clone());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        client.request(req).await.map_err(|e| {
            if let Some(refused) = refusal_in(&e) {
                return HttpError::Refused {
                    url: url.to_owned(),
                    refused,
                };
            }
            match tls_error_in(&e) {
                Some(TlsProblem::NotTls(message)) => HttpError::NotTls {
                    url: url.to_owned(),
                    message,
                },
                Some(TlsProblem::Certificate(message)) => HttpError::Tls {
                    url: url.to_owned(),
                    message: format!(
                        "{message}: the registry's certificate is not trusted (give its CA \
                         with --registry-ca)"
                    ),
                    certificate: true,
                },
                Some(TlsProblem::Other(message)) => HttpError::Tls {
                    url: url.to_owned(),
                    message,
                    certificate: false,
                },
                None => transport(error_chain(&e)),
            }
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn transport(url: &str, message: String) -> HttpError {
    HttpError::Transport {
        url: url.to_owned(),
        message,
    }
}

/// The host the registry API of `registry` is served at: Docker Hub's names go to
/// `registry-1.docker.io`; any other as given, lower case.
pub fn api_host(registry: &str) -> String {
    let r = registry.trim().to_ascii_lowercase();
    match r.as_str() {
        "docker.io" | "index.docker.io" | "registry.hub.docker.com" => {
            "registry-1.docker.io".to_owned()
        }
        _ => r,
    }
}

/// `host[:port]` + `path`, for messages before the scheme is known.
fn shown_url(registry: &str, path: &str) -> String {
    format!("{registry}{path}")
}

/// The `host[:port]` of a URL (user info refused).
fn authority_of(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let authority = uri.authority().ok_or("no host in the URL")?.as_str();
    if authority.contains('@') {
        return Err("user info in the URL".into());
    }
    Ok(authority.to_owned())
}

/// Reads a response body whole, refusing more than `max_body` bytes.
async fn read_bounded(
    url: &str,
    resp: Response<Incoming>,
    max_body: usize,
) -> Result<Bounded, HttpError> {
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| HttpError::Transport {
            url: url.to_owned(),
            message: format!("reading the body (limit {max_body} bytes): {e}"),
        })?
        .to_bytes();
    Ok(Bounded {
        url: url.to_owned(),
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// The first `max` bytes of a body at most (errors end it early).
pub(crate) async fn read_prefix(mut body: Incoming, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(max - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    out
}

/// An error and its sources, e.g. "client error (Connect): tcp connect error: Connection
/// refused (os error 111)": hyper's top-level message alone says little.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The absolute URL a `Location` names: an `https://` or `http://` URL, or a path on the
/// same host (and scheme).
fn resolve_location(current: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    if location.len() > 8192 {
        return Err("redirect Location longer than 8 KiB".into());
    }
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse::<hyper::Uri>()
            .map(|_| location.to_owned())
            .map_err(|_| "redirect to an invalid URL".to_owned());
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let uri: hyper::Uri = current.parse().map_err(|e| format!("{e}"))?;
        let authority = uri.authority().ok_or("no host in the current URL")?;
        let scheme = uri.scheme_str().unwrap_or("http");
        let url = format!("{scheme}://{authority}{location}");
        return url
            .parse::<hyper::Uri>()
            .map(|_| url.clone())
            .map_err(|_| "redirect to an invalid URL".to_owned());
    }
    Err("redirect to an unsupported location (not an http(s):// URL nor an absolute path)".into())
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `sha256:` + 64 lower-case hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `sha256:<hex>` of `bytes`, as registries name content.
pub fn sha256_digest(bytes: &[u8]) -> String {
    digest_of(Sha256::digest(bytes).as_slice())
}

/// `sha256:<hex>` of a finished SHA-256.
pub fn digest_of(hash: &[u8]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// `work` (a request to `url`) bounded by [`REQUEST_TIMEOUT`].
async fn within_deadline<T>(
    url: &str,
    work: impl std::future::Future<Output = Result<T, HttpError>>,
) -> Result<T, HttpError> {
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| HttpError::Timeout {
            url: url.to_owned(),
            after: REQUEST_TIMEOUT,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert!(valid_digest(&format!("sha256:{}", "a1".repeat(32))));
        for bad in [
            "",
            "sha256:",
            "sha512:aa",
            &format!("sha256:{}", "A1".repeat(32)),
            &format!("sha256:{}/..", "a1".repeat(31)),
        ] {
            assert!(!valid_digest(bad), "{bad:?}");
        }
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn redirect_locations() {
        let cur = "http://10.0.0.1:5000/v2/a/blobs/sha256:00";
        assert_eq!(
            resolve_location(cur, "http://store:9000/x?sig=1").unwrap(),
            "http://store:9000/x?sig=1"
        );
        assert_eq!(
            resolve_location(cur, "https://s3.example.com/x?sig=1").unwrap(),
            "https://s3.example.com/x?sig=1"
        );
        assert_eq!(
            resolve_location(cur, "/v2/b/blobs/y").unwrap(),
            "http://10.0.0.1:5000/v2/b/blobs/y"
        );
        assert_eq!(
            resolve_location("https://r.example.com/v2/a", "/v2/b").unwrap(),
            "https://r.example.com/v2/b"
        );
        for bad in ["//evil/x", "ftp://x", "relative/x", ""] {
            assert!(resolve_location(cur, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_modes_and_api_hosts() {
        let c = RegistryHttp::with_options(ClientOptions {
            plain_http: vec!["Plain.Example:5000".into(), "legacy.example".into()],
            ..ClientOptions::default()
        });
        assert_eq!(c.host_mode("plain.example:5000"), HostMode::PlainHttp);
        assert_eq!(c.host_mode("legacy.example"), HostMode::PlainHttp);
        for https_only in ["docker.io", "ghcr.io", "registry.example:443", "[::1]"] {
            assert_eq!(c.host_mode(https_only), HostMode::HttpsOnly, "{https_only}");
        }
        for either in [
            "127.0.0.1:5000",
            "10.77.0.1:5000",
            "[::1]:5000",
            "r.example:8443",
        ] {
            assert_eq!(c.host_mode(either), HostMode::HttpsElsePlain, "{either}");
        }
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("Index.Docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
        assert_eq!(explicit_port("[::1]:5000"), Some(5000));
        assert_eq!(explicit_port("[::1]"), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            percent_encode("repository:team/app:pull,push"),
            "repository%3Ateam%2Fapp%3Apull%2Cpush"
        );
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
