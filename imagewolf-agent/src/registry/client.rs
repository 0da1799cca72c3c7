//! Bounded HTTP requests to a registry's API v2: plain `http://`, anonymous, over hyper.
//! Shared by the registry source and the poller ([`crate::poll`]).
//!
//! Every request has a deadline ([`REQUEST_TIMEOUT`] until the response head); bodies read
//! whole are capped by the caller's limit; streamed bodies are handed back as they arrive.
//! Redirects (blob downloads are often redirected to storage) are followed up to
//! [`MAX_REDIRECTS`] times, to `http://` locations only.
//!
//! Hosts are judged by a [`HostPolicy`] ([`super::guard`]): the registry host before the
//! first request and at connect time, each redirect target by the stricter redirect rule.
//! Errors name the URL asked for and a fixed message, never what an upstream answered
//! (a `Location` is not quoted either: only the host it names).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

use super::guard::{refusal_in, GuardedConnector, HostPolicy, RedirectHop, Refused, Rule};

/// Deadline of each registry request (until the response head; and for a whole bounded read).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 3;
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
    /// A redirect to `https://`, which this client does not speak (Docker may).
    #[error("{url}: redirected to https, and this client speaks http only")]
    HttpsRedirect {
        /// The URL asked for.
        url: String,
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

/// An http-only, anonymous registry client (cheap to clone: shared connection pools).
/// Registry hosts and redirect targets connect through separate pools, each judged by its
/// own rule, so a connection made for one is never reused for the other.
#[derive(Clone)]
pub struct RegistryHttp {
    policy: Arc<HostPolicy>,
    /// Registry hosts (and named hosts): [`Rule::Registry`].
    direct: Client<GuardedConnector, Empty<Bytes>>,
    /// Redirect targets on other hosts: [`Rule::Redirect`].
    redirected: Client<GuardedConnector, Empty<Bytes>>,
}

impl Default for RegistryHttp {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistryHttp {
    /// A client with its own connection pools and the strict policy (no named hosts).
    pub fn new() -> Self {
        Self::with_policy(HostPolicy::strict())
    }

    /// A client reaching hosts as `policy` allows.
    pub fn with_policy(policy: HostPolicy) -> Self {
        let policy = Arc::new(policy);
        let client = |rule| {
            Client::builder(TokioExecutor::new()).build(GuardedConnector::new(
                Arc::clone(&policy),
                rule,
                REQUEST_TIMEOUT,
            ))
        };
        RegistryHttp {
            direct: client(Rule::Registry),
            redirected: client(Rule::Redirect),
            policy: Arc::clone(&policy),
        }
    }

    /// The policy this client reaches hosts by.
    pub fn policy(&self) -> &HostPolicy {
        &self.policy
    }

    /// Checks a registry host (`host[:port]`) before anything acts on it: a literal address
    /// judged as it is, a name by what it resolves to ([`HostPolicy::check`]).
    pub async fn check_registry(&self, registry: &str) -> Result<(), Refused> {
        self.policy.check(registry, Rule::Registry).await
    }

    /// One request, no redirects followed; the body is read whole, at most `max_body` bytes
    /// (more is a [`HttpError::Transport`]). The deadline covers the whole exchange.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        accept: Option<&str>,
        max_body: usize,
    ) -> Result<Bounded, HttpError> {
        within_deadline(url, async {
            let host = authority_of(url).map_err(|message| transport(url, message))?;
            self.preflight(url, &host, Rule::Registry).await?;
            let resp = self.send(&self.direct, method, url, accept).await?;
            read_bounded(url, resp, max_body).await
        })
        .await
    }

    /// A GET whose body is read whole (at most `max_body` bytes), following redirects.
    pub async fn get_bounded(
        &self,
        url: &str,
        accept: Option<&str>,
        max_body: usize,
    ) -> Result<Bounded, HttpError> {
        within_deadline(url, async {
            let (url, resp) = self.get_following(url, accept).await?;
            read_bounded(&url, resp, max_body).await
        })
        .await
    }

    /// A GET following redirects, returning the final URL and the response with its body
    /// unread (the caller streams it). The deadline covers each response head.
    ///
    /// A redirect is followed to the registry's own host, to a host the policy names, or
    /// else only to a host whose addresses are all public ([`Rule::Redirect`]). Errors name
    /// `url` (the URL asked for), never the redirect's location.
    pub async fn get_following(
        &self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<(String, Response<Incoming>), HttpError> {
        let asked = url;
        let registry = authority_of(asked).map_err(|message| transport(asked, message))?;
        self.preflight(asked, &registry, Rule::Registry).await?;
        let mut url = asked.to_owned();
        let mut client = &self.direct;
        for hop in 0..=MAX_REDIRECTS {
            let resp = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.send(client, Method::GET, &url, accept),
            )
            .await
            .map_err(|_| HttpError::Timeout {
                url: asked.to_owned(),
                after: REQUEST_TIMEOUT,
            })?
            .map_err(|e| match e {
                // A later hop's transport error: name the URL asked for and the hop's host.
                HttpError::Transport { message, .. } if hop > 0 => HttpError::Transport {
                    url: asked.to_owned(),
                    message: format!(
                        "after a redirect to {}: {message}",
                        authority_of(&url).unwrap_or_default()
                    ),
                },
                HttpError::Refused { refused, .. } => HttpError::Refused {
                    url: asked.to_owned(),
                    refused,
                },
                e => e,
            })?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok((url, resp));
            }
            let redirect = |message: String| HttpError::Redirect {
                url: asked.to_owned(),
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
            if location.trim_start().starts_with("https://") {
                tracing::debug!(url = asked, location, "redirected to https");
                return Err(HttpError::HttpsRedirect {
                    url: asked.to_owned(),
                });
            }
            let next = resolve_location(&url, location).map_err(redirect)?;
            let target = authority_of(&next).map_err(redirect)?;
            client = match self.policy.redirect_hop(&registry, &target) {
                RedirectHop::SameHost | RedirectHop::Named => &self.direct,
                RedirectHop::MustBePublic => {
                    self.preflight(asked, &target, Rule::Redirect).await?;
                    &self.redirected
                }
            };
            url = next;
        }
        unreachable!("the loop returns on its last hop")
    }

    /// The policy's check of `host` under `rule`, as an error naming `url`.
    async fn preflight(&self, url: &str, host: &str, rule: Rule) -> Result<(), HttpError> {
        self.policy
            .check(host, rule)
            .await
            .map_err(|refused| HttpError::Refused {
                url: url.to_owned(),
                refused,
            })
    }

    async fn send(
        &self,
        client: &Client<GuardedConnector, Empty<Bytes>>,
        method: Method,
        url: &str,
        accept: Option<&str>,
    ) -> Result<Response<Incoming>, HttpError> {
        let transport = |message: String| transport(url, message);
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .header(hyper::header::USER_AGENT, "imagewolf-agent");
        if let Some(accept) = accept {
            req = req.header(hyper::header::ACCEPT, accept);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| transport(e.to_string()))?;
        client.request(req).await.map_err(|e| match refusal_in(&e) {
            Some(refused) => HttpError::Refused {
                url: url.to_owned(),
                refused,
            },
            None => transport(error_chain(&e)),
        })
    }
}

fn transport(url: &str, message: String) -> HttpError {
    HttpError::Transport {
        url: url.to_owned(),
        message,
    }
}

/// The `host[:port]` of an `http://` URL (user info refused).
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

/// The absolute URL a `Location` names: an `http://` URL, or a path on the same host.
fn resolve_location(current: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    if location.len() > 8192 {
        return Err("redirect Location longer than 8 KiB".into());
    }
    if location.starts_with("http://") {
        return location
            .parse::<hyper::Uri>()
            .map(|_| location.to_owned())
            .map_err(|_| "redirect to an invalid URL".to_owned());
    }
    if location.starts_with("https://") {
        return Err("redirected to https, which this client does not speak".into());
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let uri: hyper::Uri = current.parse().map_err(|e| format!("{e}"))?;
        let authority = uri.authority().ok_or("no host in the current URL")?;
        let url = format!("http://{authority}{location}");
        return url
            .parse::<hyper::Uri>()
            .map(|_| url.clone())
            .map_err(|_| "redirect to an invalid URL".to_owned());
    }
    Err("redirect to an unsupported location (not an http:// URL nor an absolute path)".into())
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
            resolve_location(cur, "/v2/b/blobs/y").unwrap(),
            "http://10.0.0.1:5000/v2/b/blobs/y"
        );
        for bad in ["https://s3/x", "//evil/x", "ftp://x", "relative/x", ""] {
            assert!(resolve_location(cur, bad).is_err(), "{bad:?}");
        }
    }
}
