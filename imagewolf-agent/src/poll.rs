//! Polling mode (`--poll`): for clusters whose registry cannot send webhooks to the agents
//! (a hosted registry, a firewall in between), one agent watches a list of repositories
//! and treats every new manifest digest as a push.
//!
//! Design decisions:
//! - **Registry API v2, the same calls `docker pull` makes.** `GET /v2/<repo>/tags/list`
//!   (following `Link: <...>; rel="next"` pages) names the tags; `HEAD
//!   /v2/<repo>/manifests/<tag>` with every manifest media type in `Accept` (Docker schema 2,
//!   manifest list, OCI manifest and index) gives the digest in `Docker-Content-Digest`
//!   without downloading anything. A registry that omits the header gets a `GET` and the
//!   digest is computed (SHA-256 of the bytes, as the registry would).
//! - **New digests only.** The first successful round over a target records what is there
//!   (the baseline) and emits nothing: an agent restart must not redistribute every image.
//!   After that, a tag whose digest changed, or a new tag, is emitted once as an
//!   [`ImageRef`] with tag and digest, exactly what a registry notification carries, so it
//!   takes the same path (`on_push`). A repository that does not exist yet counts as empty:
//!   its first push is emitted.
//! - **One poller per cluster.** Every agent gets the same flags (a DaemonSet, a global
//!   service), but if each polled, each would see the push and pull it from the registry,
//!   which is what ImageWolf exists to avoid. The caller passes `should_poll`; the agent
//!   binary polls only on the agent with the lowest address among those it knows. A
//!   hand-over between agents can miss a push made during it (the new poller baselines
//!   first); the interval bounds that window.
//! - **The agent's registry client** ([`crate::registry::client`]): `https://` targets are
//!   read over TLS, with the credentials of `--registry-auth-file` and the token flow;
//!   `http://` targets are the operator saying the registry speaks plain http, so their
//!   hosts are read over plain http ([`PollTarget::plain_http`]). The agent binary shares
//!   one client between the poller and the image sources.
//! - **Bounded**: bodies ([`MAX_BODY`]), tags per repository ([`MAX_TAGS`]), pages
//!   ([`MAX_PAGES`]) and each request ([`REQUEST_TIMEOUT`]); `Link` is followed only to a
//!   path on the same registry.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::sync::{mpsc, watch};

use crate::docker::validate_reference;
use crate::image::ImageRef;
use crate::registry::client::{sha256_digest, valid_digest, HttpError, RegistryHttp};
pub use crate::registry::client::{MANIFEST_ACCEPT, REQUEST_TIMEOUT};

/// Largest tags/list page or manifest read.
pub const MAX_BODY: usize = 4 << 20;
/// Most tags watched in one repository.
pub const MAX_TAGS: usize = 10_000;
/// Most tags/list pages followed per round.
pub const MAX_PAGES: usize = 100;
/// Why polling a target failed (the round goes on with the others).
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The `--poll` entry is not usable.
    #[error("--poll {entry:?}: {reason}")]
    BadTarget {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry could not be reached or the connection failed.
    #[error("{url}: {message}")]
    Transport {
        /// The request URL.
        url: String,
        /// The error.
        message: String,
    },
    /// The registry answered with an unexpected status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The request URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The request took longer than [`REQUEST_TIMEOUT`].
    #[error("{url}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// The request URL.
        url: String,
    },
    /// The answer could not be understood.
    #[error("{url}: {message}")]
    Malformed {
        /// The request URL.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// One `--poll` entry: a repository (every tag) or one tag of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PollTarget {
    /// Registry host and port, as in image references (`10.0.0.5:5000`).
    pub registry: String,
    /// Repository path (`team/app`).
    pub repository: String,
    /// Only this tag; `None` watches every tag.
    pub tag: Option<String>,
    /// Written `http://`: the registry is read over plain http (as `--insecure-registry`
    /// would); `https://`: over TLS.
    pub plain_http: bool,
}

impl std::str::FromStr for PollTarget {
    type Err = PollError;

    /// `https://HOST[:PORT]/REPO[:TAG]` or `http://HOST[:PORT]/REPO[:TAG]`.
    fn from_str(entry: &str) -> Result<Self, PollError> {
        let bad = |reason: &str| PollError::BadTarget {
            entry: entry.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        let entry = entry.trim();
        let (rest, plain_http) = match (
            entry.strip_prefix("https://"),
            entry.strip_prefix("http://"),
        ) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => {
                return Err(bad(
                    "expected https://HOST[:PORT]/REPOSITORY[:TAG] (or http:// for a plain-http registry)",
                ))
            }
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry"))?;
        // A ':' after the last '/' is a tag; one before it belongs to the host.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag)),
            _ => (path, None),
        };
        let repository = repository.trim_end_matches('/');
        if registry.is_empty() || repository.is_empty() || tag == Some("") {
            return Err(bad("empty registry, repository or tag"));
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names are lower case"));
        }
        let reference = format!("{registry}/{repository}:{}", tag.unwrap_or("latest"));
        validate_reference(&reference).map_err(|e| bad(&e.to_string()))?;
        if registry.contains('@') || repository.contains('@') {
            return Err(bad("digests cannot be polled (they never change)"));
        }
        Ok(PollTarget {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            plain_http,
        })
    }
}

impl std::fmt::Display for PollTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.plain_http { "http" } else { "https" };
        write!(f, "{scheme}://{}/{}", self.registry, self.repository)?;
        match &self.tag {
            Some(tag) => write!(f, ":{tag}"),
            None => Ok(()),
        }
    }
}

/// The hosts of the `http://` targets: read over plain http.
pub fn plain_http_hosts(targets: &[PollTarget]) -> Vec<String> {
    targets
        .iter()
        .filter(|t| t.plain_http)
        .map(|t| t.registry.clone())
        .collect()
}

/// Parses a comma-separated `--poll` list (empty entries ignored).
pub fn parse_targets(list: &str) -> Result<Vec<PollTarget>, PollError> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::parse)
        .collect()
}

/// Watches targets; one [`Poller::poll_once`] per round.
pub struct Poller {
    client: RegistryHttp,
    targets: Vec<PollTarget>,
    /// (target index, tag) -> last digest seen.
    seen: HashMap<(usize, String), String>,
    /// Targets whose baseline is recorded.
    baselined: HashSet<usize>,
    /// Tags whose manifest failed during their target's baseline round.
    unbaselined: HashSet<(usize, String)>,
}

impl Poller {
    /// A poller for `targets` with a client of its own (platform roots, no credentials);
    /// nothing is requested until [`Poller::poll_once`]. The targets' registries are the
    /// operator's: reached as given ([`crate::registry::HostPolicy`]), `http://` ones over
    /// plain http.
    pub fn new(targets: Vec<PollTarget>) -> Self {
        let client = RegistryHttp::with_options(crate::registry::ClientOptions {
            policy: crate::registry::HostPolicy::naming(targets.iter().map(|t| &t.registry)),
            plain_http: plain_http_hosts(&targets),
            ..crate::registry::ClientOptions::default()
        });
        Self::with_client(targets, client)
    }

    /// A poller for `targets` reading through `client` (the agent's one client, whose
    /// policy must name the targets' hosts and whose plain-http hosts must include the
    /// `http://` targets': [`plain_http_hosts`]).
    pub fn with_client(targets: Vec<PollTarget>, client: RegistryHttp) -> Self {
        Poller {
            client,
            targets,
            seen: HashMap::new(),
            baselined: HashSet::new(),
            unbaselined: HashSet::new(),
        }
    }

    /// The targets watched.
    pub fn targets(&self) -> &[PollTarget] {
        &self.targets
    }

    /// Polls every target once; returns the new digests (none for a target's first round)
    /// and what failed: a target whose tag list failed keeps its previous state for the
    /// next round; a tag whose manifest failed is skipped this round, the others count.
    pub async fn poll_once(&mut self) -> (Vec<ImageRef>, Vec<PollError>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        for i in 0..self.targets.len() {
            match self.poll_target(i).await {
                Ok((mut refs, mut failed)) => {
                    found.append(&mut refs);
                    errors.append(&mut failed);
                }
                Err(e) => errors.push(e),
            }
        }
        (found, errors)
    }

    /// One target: its new digests, and the tags that failed (the others still count).
    async fn poll_target(
        &mut self,
        i: usize,
    ) -> Result<(Vec<ImageRef>, Vec<PollError>), PollError> {
        let Some(target) = self.targets.get(i).cloned() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let tags = match &target.tag {
            Some(tag) => vec![tag.clone()],
            None => self.list_tags(&target).await?,
        };
        // Tags deleted from the registry are forgotten: a repository where CI pushes a tag
        // per commit must not grow this map forever.
        if target.tag.is_none() {
            let listed: HashSet<&String> = tags.iter().collect();
            self.seen
                .retain(|(t, tag), _| *t != i || listed.contains(tag));
            self.unbaselined
                .retain(|(t, tag)| *t != i || listed.contains(tag));
        }
        let first_round = self.baselined.insert(i);
        let mut new = Vec::new();
        let mut errors = Vec::new();
        for tag in tags {
            let key = (i, tag.clone());
            match self.manifest_digest(&target, &tag).await {
                Ok(Some(digest)) => {
                    // A tag that failed during the baseline round is baselined when it
                    // first answers (`|`, not `||`: the entry goes either way).
                    let quiet = first_round | self.unbaselined.remove(&key);
                    let previous = self.seen.insert(key, digest.clone());
                    if !quiet && previous.as_deref() != Some(digest.as_str()) {
                        new.push(ImageRef {
                            registry: target.registry.clone(),
                            repository: target.repository.clone(),
                            tag: Some(tag),
                            digest: Some(digest),
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if first_round {
                        self.unbaselined.insert(key);
                    }
                    errors.push(e);
                }
            }
        }
        Ok((new, errors))
    }

    /// Every tag of the repository; none if the repository does not exist (yet).
    async fn list_tags(&self, target: &PollTarget) -> Result<Vec<String>, PollError> {
        let mut path = format!("/v2/{}/tags/list", target.repository);
        let mut tags = Vec::new();
        for _ in 0..MAX_PAGES {
            let url = format!("{}{path}", target.registry);
            let (status, headers, body) = self
                .request(Method::GET, &target.registry, &path, None)
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Ok(Vec::new());
            }
            if status != StatusCode::OK {
                return Err(PollError::Status {
                    url,
                    status: status.as_u16(),
                });
            }
            #[derive(serde::Deserialize)]
            struct TagList {
                tags: Option<Vec<String>>,
            }
            let page: TagList =
                serde_json::from_slice(&body).map_err(|e| PollError::Malformed {
                    url: url.clone(),
                    // Not serde's text: it quotes what the registry sent.
                    message: format!(
                        "tags/list: not a tag list (line {}, column {})",
                        e.line(),
                        e.column()
                    ),
                })?;
            tags.extend(page.tags.unwrap_or_default());
            if tags.len() > MAX_TAGS {
                return Err(PollError::Malformed {
                    url,
                    message: format!("more than {MAX_TAGS} tags; poll single tags instead"),
                });
            }
            match headers
                .get(hyper::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_page)
            {
                Some(next) => path = next,
                None => {
                    tags.sort();
                    tags.dedup();
                    return Ok(tags);
                }
            }
        }
        Err(PollError::Malformed {
            url: format!("{}/v2/{}/tags/list", target.registry, target.repository),
            message: format!("more than {MAX_PAGES} pages of tags"),
        })
    }

    /// The digest `tag` resolves to now; `None` if the tag is gone.
    async fn manifest_digest(
        &self,
        target: &PollTarget,
        tag: &str,
    ) -> Result<Option<String>, PollError> {
        if validate_reference(&format!("{}/{}:{tag}", target.registry, target.repository)).is_err()
        {
            // A tag name the registry listed but that is not a valid tag: skip it rather
            // than build a URL from it.
            tracing::warn!(%target, tag, "registry listed an invalid tag; skipped");
            return Ok(None);
        }
        let path = format!("/v2/{}/manifests/{tag}", target.repository);
        let url = format!("{}{path}", target.registry);
        let (status, headers, _) = self
            .request(Method::HEAD, &target.registry, &path, Some(MANIFEST_ACCEPT))
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != StatusCode::OK {
            return Err(PollError::Status {
                url,
                status: status.as_u16(),
            });
        }
        if let Some(digest) = headers
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| valid_digest(d))
        {
            return Ok(Some(digest.to_owned()));
        }
        // No digest header: fetch the manifest and hash it, as the registry does.
        let (status, _, body) = self
            .request(Method::GET, &target.registry, &path, Some(MANIFEST_ACCEPT))
            .await?;
        if status != StatusCode::OK {
            return Err(PollError::Status {
                url,
                status: status.as_u16(),
            });
        }
        Ok(Some(sha256_digest(&body)))
    }

    async fn request(
        &self,
        method: Method,
        registry: &str,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), PollError> {
        let url = &format!("{registry}{path}");
        match self
            .client
            .request(method, registry, path, accept, MAX_BODY)
            .await
        {
            Ok(r) => Ok((r.status, r.headers, r.body)),
            Err(HttpError::Timeout { .. }) => Err(PollError::Timeout {
                url: url.to_owned(),
            }),
            Err(HttpError::Transport { message, .. }) => Err(PollError::Transport {
                url: url.to_owned(),
                message,
            }),
            Err(other) => Err(PollError::Transport {
                url: url.to_owned(),
                message: other.to_string(),
            }),
        }
    }
}

/// The next page's path from a `Link` header (`</v2/...>; rel="next"`); only a path on the
/// same registry is followed.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let path = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        (path.starts_with("/v2/") && !path.contains("..") && path.len() <= 2048)
            .then(|| path.to_owned())
    })
}

/// Polls every `interval` until `shutdown`, while `should_poll()` says this agent is the
/// poller, and sends each new digest to `found`. Failures are logged and retried next round.
pub async fn run(
    mut poller: Poller,
    interval: Duration,
    should_poll: impl Fn() -> bool + Send + 'static,
    found: mpsc::Sender<ImageRef>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if should_poll() {
            let (refs, errors) = poller.poll_once().await;
            for e in errors {
                tracing::warn!(error = %e, "polling the registry failed");
            }
            for image in refs {
                tracing::info!(%image, "new digest found by polling");
                if found.send(image).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: PollTarget = "http://10.0.0.5:5000/team/app".parse().unwrap();
        assert_eq!(
            t,
            PollTarget {
                registry: "10.0.0.5:5000".into(),
                repository: "team/app".into(),
                tag: None,
                plain_http: true,
            }
        );
        assert_eq!(t.to_string(), "http://10.0.0.5:5000/team/app");
        let t: PollTarget = "https://ghcr.io/team/app:v1".parse().unwrap();
        assert!(!t.plain_http);
        assert_eq!(t.registry, "ghcr.io");
        assert_eq!(t.to_string(), "https://ghcr.io/team/app:v1");
        assert_eq!(
            plain_http_hosts(&parse_targets("https://a/x,http://b:5000/y").unwrap()),
            vec!["b:5000".to_owned()]
        );
        let t: PollTarget = "http://registry:5000/app:prod".parse().unwrap();
        assert_eq!(t.tag.as_deref(), Some("prod"));
        assert_eq!(t.repository, "app");
        let list = parse_targets(" http://r:5000/a , ,http://r:5000/b:v1").unwrap();
        assert_eq!(list.len(), 2);
        for bad in [
            "",
            "r:5000/app",
            "ftp://r/app",
            "http://r",
            "http://r/",
            "http:///app",
            "http://r/App",
            "http://r/app:",
            "http://r/a/../b",
            "http://r/app@sha256:00",
            "http://r/a b",
            "http://r/a?x=1",
        ] {
            assert!(bad.parse::<PollTarget>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_page("</v2/app/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("/v2/app/tags/list?last=b&n=2")
        );
        for bad in [
            "",
            "garbage",
            "<http://evil/v2/x>; rel=\"next\"",
            "</v2/x>; rel=\"prev\"",
            "</v2/../x>; rel=\"next\"",
            "/v2/x; rel=\"next\"",
        ] {
            assert_eq!(next_page(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_registry_is_an_error_not_a_panic() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target = format!("http://127.0.0.1:{port}/app").parse().unwrap();
        let mut p = Poller::new(vec![target]);
        let (found, errors) = p.poll_once().await;
        assert!(found.is_empty());
        assert!(
            matches!(errors[..], [PollError::Transport { .. }]),
            "{errors:?}"
        );
    }

    /// A registry double for what distribution 2.8 does not do here: paginated tag lists,
    /// a HEAD without `Docker-Content-Digest`, a failing manifest, deleted tags.
    #[derive(Default)]
    struct Fake {
        /// tag -> manifest body.
        tags: std::collections::BTreeMap<String, String>,
        /// Tags whose manifest answers 500.
        broken: HashSet<String>,
        /// Answer HEAD without the digest header.
        no_digest_header: bool,
        /// Tags per tags/list page.
        page: usize,
    }

    fn sha256(body: &str) -> String {
        sha256_digest(body.as_bytes())
    }

    fn answer(fake: &Fake, method: &str, path: &str) -> String {
        let reply = |status: &str, headers: String, body: &str| {
            let body = if method == "HEAD" { "" } else { body };
            format!(
                "HTTP/1.1 {status}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        if let Some(query) = path.strip_prefix("/v2/app/tags/list") {
            let after = query
                .split(['?', '&'])
                .find_map(|kv| kv.strip_prefix("last="))
                .unwrap_or("");
            let page: Vec<&String> = fake
                .tags
                .keys()
                .filter(|t| t.as_str() > after)
                .take(fake.page)
                .collect();
            let more = fake.tags.keys().any(|t| Some(&t) > page.last());
            let link = match page.last() {
                Some(last) if more => format!(
                    "Link: </v2/app/tags/list?last={last}&n={}>; rel=\"next\"\r\n",
                    fake.page
                ),
                _ => String::new(),
            };
            let body = serde_json::json!({"name": "app", "tags": page}).to_string();
            return reply("200 OK", link, &body);
        }
        if let Some(tag) = path.strip_prefix("/v2/app/manifests/") {
            if fake.broken.contains(tag) {
                return reply("500 Internal Server Error", String::new(), "");
            }
            return match fake.tags.get(tag) {
                Some(body) => {
                    let digest = if fake.no_digest_header {
                        String::new()
                    } else {
                        format!("Docker-Content-Digest: {}\r\n", sha256(body))
                    };
                    reply("200 OK", digest, body)
                }
                None => reply("404 Not Found", String::new(), ""),
            };
        }
        reply("404 Not Found", String::new(), "")
    }

    async fn serve_fake(fake: std::sync::Arc<std::sync::Mutex<Fake>>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let fake = std::sync::Arc::clone(&fake);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                        match conn.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let reply = answer(&fake.lock().unwrap(), method, path);
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn pages_fallback_digests_failures_and_deletions() {
        let fake = std::sync::Arc::new(std::sync::Mutex::new(Fake {
            page: 2,
            ..Fake::default()
        }));
        let set = |f: &dyn Fn(&mut Fake)| f(&mut fake.lock().unwrap());
        for t in ["a", "b", "c", "d", "e"] {
            set(&|f| {
                f.tags.insert(t.into(), format!("{{\"m\":\"{t}1\"}}"));
            });
        }
        set(&|f| {
            f.broken.insert("c".into());
        });
        let addr = serve_fake(std::sync::Arc::clone(&fake)).await;
        let mut p = Poller::new(vec![format!("http://{addr}/app").parse().unwrap()]);

        // Baseline over three pages; "c" fails and is baselined later, quietly.
        let (found, errors) = p.poll_once().await;
        assert!(found.is_empty());
        assert!(
            matches!(errors[..], [PollError::Status { status: 500, .. }]),
            "{errors:?}"
        );
        assert_eq!(p.seen.len(), 4);
        set(&|f| f.broken.clear());
        let (found, errors) = p.poll_once().await;
        assert!(
            found.is_empty() && errors.is_empty(),
            "{found:?} {errors:?}"
        );

        // A moved tag, found through the GET fallback (no digest header): its digest is
        // the SHA-256 of the manifest bytes.
        let moved = "{\"m\":\"e2\"}".to_owned();
        set(&|f| {
            f.no_digest_header = true;
            f.tags.insert("e".into(), moved.clone());
        });
        let (found, errors) = p.poll_once().await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].tag.as_deref(), Some("e"));
        assert_eq!(found[0].digest.as_deref(), Some(sha256(&moved).as_str()));

        // Deleted tags are forgotten.
        set(&|f| {
            f.tags.remove("a");
            f.tags.remove("b");
        });
        let (found, errors) = p.poll_once().await;
        assert!(found.is_empty() && errors.is_empty());
        assert_eq!(p.seen.len(), 3);
    }
}
