//! Docker Engine as image source (pull + `docker save`) and loader (`docker load`), over the
//! Engine API with bollard.
//!
//! Design decisions:
//! - **Negotiated API version.** [`Docker::connect`] asks the daemon for its API version and
//!   talks at most that (Debian's dockerd 20.10 speaks 1.41; bollard defaults to newer).
//!   Clusters run mixed engine versions, so pinning one would be wrong somewhere.
//! - **Streaming both ways, never a whole tarball in memory.** `export` adapts the body of
//!   `GET /images/{name}/get` to an `AsyncRead`; `load` streams the file from disk into
//!   `POST /images/load`.
//! - **Errors come from the daemon's words.** Pull and load report failures either as an HTTP
//!   status (before the stream starts) or as an `errorDetail` line inside a 200 stream; both
//!   become [`DockerError`] with the daemon's message (truncated to [`MAX_MESSAGE_LEN`]). The
//!   whole progress stream is always followed to its end: success is "the stream ended
//!   without an error line", never "the request was accepted".
//! - **Retry classification** for pulls ([`DockerError::is_retryable`]): an unknown
//!   manifest, a missing repository, a denied or malformed reference will not get better and
//!   fail at once; a registry that is down, a timeout, a daemon that restarts are retried by
//!   the caller with backoff.
//! - **Timeouts.** bollard's one per-client timeout covers "request sent until response
//!   headers", and `docker load` answers only after it has read and unpacked the whole
//!   tarball, so the client's timeout is long ([`LONG_TIMEOUT`]); quick calls (ping,
//!   inspect, version) get [`CONTROL_TIMEOUT`] of their own; a load, and the first byte of
//!   an export (dockerd 20.10 stages the whole image in a temp dir before it sends anything),
//!   get a deadline that grows with the image's size; a pull fails if its progress stream
//!   stays silent for [`PULL_STALL_TIMEOUT`].
//! - **Untrusted names stay out of URL paths.** Image references and ids arrive from the
//!   network (notifications, other agents) and bollard pastes names unescaped into request
//!   paths, so they are checked against the reference grammar's character set first
//!   ([`validate_reference`], [`validate_image_id`]): a `?`, `#` or `..` can't reach the daemon.
//!
//! Layout: the pull by digest and `docker save` (the image source) are in `pull.rs` and
//! `save.rs`, `docker load` (the loader) in `load.rs`, content-addressed delivery (the pull
//! through the agent's registry endpoint, [`Docker::pull_through_endpoint`]) in
//! `endpoint_pull.rs`; each with its own design notes.

mod endpoint_pull;
mod load;
mod pull;
mod save;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};

use crate::image::ImageRef;
use crate::loader::{ImageLoader, LoaderError};
use crate::source::{ImageSource, PulledImage, SourceError, Tarball};

pub(crate) use endpoint_pull::{validate_digest, validate_endpoint};

/// Deadline for quick calls: ping, version negotiation, inspect, tag.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// A pull fails (retryably) when the daemon sends no progress for this long.
pub const PULL_STALL_TIMEOUT: Duration = Duration::from_secs(300);
/// bollard's per-request timeout (until response headers); long, because `docker load`
/// answers only after consuming its whole body. Our own deadlines are tighter.
pub const LONG_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Daemon messages kept in errors are cut to this many bytes: they end up in logs and /stats.
pub const MAX_MESSAGE_LEN: usize = 2048;
/// A load, or an export's first byte, gets this long plus the image's size at
/// [`SLOW_IO_MIN_RATE`].
const SLOW_IO_BASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The slowest rate (bytes/s) at which the daemon may unpack or stage an image before we
/// call it stuck.
const SLOW_IO_MIN_RATE: u64 = 5 << 20;

/// Why a Docker call failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The host string names no transport we support.
    #[error(
        "unsupported docker host {host:?}: expected unix:///path, tcp://host:port, \
         http://host:port or a socket path"
    )]
    UnsupportedHost {
        /// The host as given.
        host: String,
    },
    /// An image reference or id that is not well formed (checked before any request).
    #[error("invalid image {what} {value:?}")]
    InvalidName {
        /// "reference" or "id".
        what: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// The daemon answered with an error status.
    #[error("docker daemon: {message} (HTTP {status})")]
    Daemon {
        /// HTTP status code.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The daemon reported an error inside a progress stream (after a 200).
    #[error("docker daemon: {message}")]
    Stream {
        /// The daemon's message.
        message: String,
    },
    /// No answer in time.
    #[error("docker daemon: no answer to {what} within {after:?}")]
    Timeout {
        /// The call that timed out.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The daemon could not be reached or spoke something unexpected.
    #[error("docker daemon unreachable or misbehaving: {0}")]
    Transport(#[source] BollardError),
    /// A local file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        #[source]
        source: std::io::Error,
    },
    /// The daemon said the operation succeeded but the result is not there.
    #[error("docker daemon: {0}")]
    Unexpected(String),
}

impl DockerError {
    /// The HTTP status the daemon answered with, if it answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            DockerError::Daemon { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the daemon said "no such image" (or other object).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether trying again later may help (see the module docs).
    pub fn is_retryable(&self) -> bool {
        match self {
            DockerError::UnsupportedHost { .. }
            | DockerError::InvalidName { .. }
            | DockerError::Io { .. }
            | DockerError::Unexpected(_) => false,
            DockerError::Timeout { .. } => true,
            DockerError::Transport(e) => !matches!(
                e,
                BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. }
            ),
            DockerError::Daemon { status, message } => {
                !matches!(status, 400 | 401 | 403 | 404) && !is_permanent_message(message)
            }
            DockerError::Stream { message } => !is_permanent_message(message),
        }
    }
}

/// Registry and daemon phrasings of failures that no retry fixes.
fn is_permanent_message(message: &str) -> bool {
    const PERMANENT: &[&str] = &[
        "manifest unknown",
        "name unknown",
        "not found",
        "does not exist",
        "unauthorized",
        "denied",
        "authentication required",
        "no basic auth credentials",
        "invalid reference format",
        "no matching manifest",
    ];
    let lower = message.to_ascii_lowercase();
    PERMANENT.iter().any(|p| lower.contains(p))
}

/// Cuts a daemon message to [`MAX_MESSAGE_LEN`] bytes on a char boundary.
fn clip(message: &str) -> String {
    let message = message.trim();
    if message.len() <= MAX_MESSAGE_LEN {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

impl From<BollardError> for DockerError {
    fn from(e: BollardError) -> Self {
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Daemon {
                status: status_code,
                message: clip(&message),
            },
            BollardError::DockerStreamError { error } => DockerError::Stream {
                message: clip(&error),
            },
            BollardError::RequestTimeoutError => DockerError::Timeout {
                what: "request",
                after: LONG_TIMEOUT,
            },
            other => DockerError::Transport(other),
        }
    }
}

impl From<DockerError> for SourceError {
    fn from(e: DockerError) -> Self {
        SourceError {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

impl From<DockerError> for LoaderError {
    fn from(e: DockerError) -> Self {
        LoaderError {
            message: e.to_string(),
        }
    }
}

/// Runs `fut` with a deadline, turning both failure kinds into [`DockerError`].
async fn timed<T>(
    what: &'static str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, BollardError>>,
) -> Result<T, DockerError> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r.map_err(DockerError::from),
        Err(_) => Err(DockerError::Timeout { what, after }),
    }
}

/// Follows a progress stream to its end; the first error (HTTP status or an error line)
/// wins. Returns the items' `stream`/`status` texts for logging and checks.
async fn follow<T, S>(
    what: &'static str,
    stall: Duration,
    stream: S,
    text: impl Fn(&T) -> Option<&str>,
) -> Result<Vec<String>, DockerError>
where
    S: Stream<Item = Result<T, BollardError>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut lines = Vec::new();
    loop {
        match tokio::time::timeout(stall, stream.next()).await {
            Err(_) => return Err(DockerError::Timeout { what, after: stall }),
            Ok(None) => return Ok(lines),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(item))) => {
                if let Some(t) = text(&item) {
                    // Keep a bounded tail: a pull of many layers sends many lines.
                    if lines.len() >= 256 {
                        lines.remove(0);
                    }
                    lines.push(clip(t));
                }
            }
        }
    }
}

/// How to reach a daemon.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Unix(String),
    Http(String),
}

fn parse_host(host: &str) -> Result<Endpoint, DockerError> {
    let host = host.trim();
    let unsupported = || DockerError::UnsupportedHost { host: clip(host) };
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() {
            return Err(unsupported());
        }
        return Ok(Endpoint::Unix(path.to_owned()));
    }
    for scheme in ["tcp://", "http://"] {
        if let Some(authority) = host.strip_prefix(scheme) {
            let authority = authority.trim_end_matches('/');
            if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
                return Err(unsupported());
            }
            return Ok(Endpoint::Http(format!("tcp://{authority}")));
        }
    }
    if host.starts_with('/') || host.starts_with("./") {
        return Ok(Endpoint::Unix(host.to_owned()));
    }
    Err(unsupported())
}

/// Checks a Docker image reference (`registry/repo:tag`, `registry/repo@sha256:...`) against
/// the characters and shape the reference grammar allows, so it can go into a URL path.
pub fn validate_reference(reference: &str) -> Result<(), DockerError> {
    let bad = || DockerError::InvalidName {
        what: "reference",
        value: clip(reference),
    };
    if reference.is_empty() || reference.len() > 1024 {
        return Err(bad());
    }
    let allowed =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@');
    if !reference.chars().all(allowed) {
        return Err(bad());
    }
    // Every path component starts with a letter or digit: rules out "", ".", ".." and
    // leading separators.
    let name = reference.split('@').next().unwrap_or_default();
    if name.split('/').any(|c| {
        !c.chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphanumeric())
    }) {
        return Err(bad());
    }
    if reference.matches('@').count() > 1 {
        return Err(bad());
    }
    Ok(())
}

/// Checks an image id: `sha256:` + 64 hex digits, or the 64 hex digits alone.
pub fn validate_image_id(id: &str) -> Result<(), DockerError> {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(DockerError::InvalidName {
            what: "id",
            value: clip(id),
        })
    }
}

/// An image id or a reference, whichever it is.
fn validate_name(image: &str) -> Result<(), DockerError> {
    validate_image_id(image).or_else(|_| validate_reference(image))
}

/// The tarball size to expect for an image of `size` bytes (uncompressed layers): tar
/// headers and padding add a little, the config and manifest a little more.
fn size_hint(size: Option<i64>) -> u64 {
    let size = size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
    if size == 0 {
        return 0;
    }
    size.saturating_add(size / 20).saturating_add(1 << 20)
}

/// How long the daemon may take to unpack or stage an image of `bytes` bytes.
fn slow_io_deadline(bytes: u64) -> Duration {
    SLOW_IO_BASE_TIMEOUT.saturating_add(Duration::from_secs(bytes / SLOW_IO_MIN_RATE))
}

/// A connected Docker Engine, API version negotiated.
#[derive(Debug, Clone)]
pub struct Docker {
    client: bollard::Docker,
}

impl Docker {
    /// Connects to `docker_host` (`unix:///path`, `tcp://host:port` or `http://host:port`
    /// without TLS, or a bare socket path), negotiates the API version and pings.
    pub async fn connect(docker_host: &str) -> Result<Self, DockerError> {
        let timeout = LONG_TIMEOUT.as_secs();
        let version = bollard::API_DEFAULT_VERSION;
        let client = match parse_host(docker_host)? {
            Endpoint::Unix(path) => bollard::Docker::connect_with_unix(&path, timeout, version),
            Endpoint::Http(addr) => bollard::Docker::connect_with_http(&addr, timeout, version),
        }
        .map_err(DockerError::Transport)?;
        let client = timed(
            "version negotiation",
            CONTROL_TIMEOUT,
            client.negotiate_version(),
        )
        .await?;
        let docker = Docker { client };
        docker.ping().await?;
        Ok(docker)
    }

    /// Checks the daemon answers `/_ping`.
    pub async fn ping(&self) -> Result<(), DockerError> {
        timed("ping", CONTROL_TIMEOUT, self.client.ping()).await?;
        Ok(())
    }

    /// The API version in use after negotiation, e.g. `1.41`.
    pub fn api_version(&self) -> String {
        self.client.client_version().to_string()
    }

    /// The underlying bollard client, for calls this module does not wrap.
    pub fn client(&self) -> &bollard::Docker {
        &self.client
    }

    /// The image's tags (`RepoTags`), e.g. `["10.0.0.1:5000/app:v1"]`.
    pub async fn image_tags(&self, image: &str) -> Result<Vec<String>, DockerError> {
        validate_name(image)?;
        let inspect = timed("inspect", CONTROL_TIMEOUT, self.client.inspect_image(image)).await?;
        Ok(inspect.repo_tags.unwrap_or_default())
    }
}

impl ImageSource for Docker {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move { self.do_pull(image).await.map_err(SourceError::from) })
    }

    fn export<'a>(&'a self, image: &'a PulledImage) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move { self.do_export(image).await.map_err(SourceError::from) })
    }
}

impl ImageLoader for Docker {
    fn has_image<'a>(&'a self, image_id: &'a str) -> BoxFuture<'a, Result<bool, LoaderError>> {
        Box::pin(async move { self.do_has_image(image_id).await.map_err(LoaderError::from) })
    }

    fn load<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), LoaderError>> {
        Box::pin(async move { self.do_load(path).await.map_err(LoaderError::from) })
    }

    /// dockerd skips the layers it has when it loads an image (legacy image store).
    fn loads_layers_ahead(&self) -> bool {
        true
    }

    fn pulls_from_endpoint(&self) -> bool {
        true
    }

    fn pull_from_endpoint<'a>(
        &'a self,
        endpoint: &'a str,
        image: &'a ImageRef,
        manifest_digest: &'a str,
    ) -> BoxFuture<'a, Result<(), LoaderError>> {
        Box::pin(self.pull_through_endpoint(endpoint, image, manifest_digest))
    }

    fn remove_image<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LoaderError>> {
        Box::pin(async move {
            validate_image_id(id).map_err(LoaderError::from)?;
            timed(
                "remove",
                CONTROL_TIMEOUT,
                self.client.remove_image(
                    id,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                ),
            )
            .await
            .map(|_| ())
            .map_err(LoaderError::from)
        })
    }

    /// dockerd stages the whole archive before it registers any layer or image, so the
    /// verified prefix goes in while the download runs (see `distributor/feed.rs`).
    fn load_streamed<'a>(
        &'a self,
        tarball: crate::source::Tarball,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), LoaderError>> {
        Box::pin(async move {
            // The deadline covers the download too: size it on a generous guess of the
            // final length (it only bounds a daemon that stops reading).
            let len = tokio::fs::metadata(path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            self.load_from(tarball, len.max(1 << 30), path)
                .await
                .map_err(LoaderError::from)
        })
    }
}
