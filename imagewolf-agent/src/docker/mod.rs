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
//! - **Pull by digest when known**, then tag: the node exports exactly the pushed manifest even
//!   if the tag moved since, and the tarball still carries the tag.
//! - **Content-addressed delivery pulls twice** ([`Docker::pull_through_endpoint`]). A
//!   `docker load` records neither the image's RepoDigests nor which compressed blob each
//!   layer came from, so a later `docker pull` of a related image downloads every layer
//!   again. So the node pulls the image from the agent's read-only registry endpoint
//!   instead: (1) `ENDPOINT/REPO@DIGEST` brings the layers in from the node itself, and
//!   dockerd remembers each layer by its blob digest, whichever registry served it; (2)
//!   tag `REGISTRY/REPO:TAG`, so the image is usable by its name at once; (3)
//!   `REGISTRY/REPO@DIGEST` from the real registry, because dockerd's classic image store
//!   records a RepoDigest only for a pull from that very registry: dockerd finds the
//!   config already present and stops after the manifest, so the manifest request is the
//!   only one the real registry sees (no blob). Measured with dockerd 20.10: a single
//!   `HEAD /v2/REPO/manifests/DIGEST`, since dockerd keeps the manifest it got from the
//!   endpoint in its content store (a GET where it does not). If that pull fails, say for
//!   want of credentials, the image is there all the same and only the RepoDigest is
//!   missing: a warning; (4) untag `ENDPOINT/REPO@DIGEST` (never a forced
//!   delete: the image stays under its other names, and keeps the endpoint's name if it
//!   has no other). The endpoint must be on loopback (or listed in dockerd's
//!   `--insecure-registry`): it speaks plain http.

use std::path::Path;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ImportImageOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::image::ImageRef;
use crate::loader::{ImageLoader, LoaderError};
use crate::source::{ImageSource, PulledImage, SourceError, Tarball};

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
/// Read size when streaming a tarball into the daemon.
const LOAD_CHUNK: usize = 256 << 10;
/// The pull that records the RepoDigest fetches one manifest (or an index and a manifest):
/// a registry that takes longer than this is skipped with a warning.
const REPO_DIGEST_TIMEOUT: Duration = Duration::from_secs(120);

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

    /// Pulls `repo` at a tag or digest and follows the progress to its end.
    async fn pull_reference(&self, repo: &str, tag_or_digest: &str) -> Result<(), DockerError> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(tag_or_digest)
            .build();
        let stream = self.client.create_image(Some(options), None, None);
        let lines = follow("pull progress", PULL_STALL_TIMEOUT, stream, |i| {
            i.status.as_deref()
        })
        .await?;
        tracing::debug!(repo, tag_or_digest, last = ?lines.last(), "pull finished");
        Ok(())
    }

    async fn do_pull(&self, image: &ImageRef) -> Result<PulledImage, DockerError> {
        let reference = image.pull_reference();
        validate_reference(&reference)?;
        // An empty registry already failed validation ("/repo:tag").
        let repo = format!("{}/{}", image.registry, image.repository);
        match (&image.tag, &image.digest) {
            (Some(tag), Some(digest)) => {
                validate_reference(&format!("{repo}@{digest}"))?;
                self.pull_reference(&repo, digest).await?;
                let options = TagImageOptionsBuilder::default()
                    .repo(&repo)
                    .tag(tag)
                    .build();
                let by_digest = format!("{repo}@{digest}");
                timed(
                    "tag",
                    CONTROL_TIMEOUT,
                    self.client.tag_image(&by_digest, Some(options)),
                )
                .await?;
            }
            (Some(tag), None) => self.pull_reference(&repo, tag).await?,
            (None, Some(digest)) => self.pull_reference(&repo, digest).await?,
            (None, None) => self.pull_reference(&repo, "latest").await?,
        }
        let inspect = timed(
            "inspect",
            CONTROL_TIMEOUT,
            self.client.inspect_image(&reference),
        )
        .await?;
        let image_id = inspect
            .id
            .filter(|id| validate_image_id(id).is_ok())
            .ok_or_else(|| {
                DockerError::Unexpected(format!("pulled {reference} but it has no valid image id"))
            })?;
        Ok(PulledImage {
            image_id,
            reference,
            size_hint: size_hint(inspect.size),
            archive: None,
        })
    }

    async fn do_export(&self, image: &PulledImage) -> Result<Tarball, DockerError> {
        validate_reference(&image.reference)?;
        let mut body = self.client.export_image(&image.reference);
        // The status (e.g. 404) arrives with the first poll: wait for it here so a missing
        // image is an export error, not a read error half-way through a torrent build.
        // dockerd (20.10 at least) stages the whole image in a temp dir before sending the
        // first byte, so that wait grows with the image.
        let first_byte = slow_io_deadline(image.size_hint);
        let first = match tokio::time::timeout(first_byte, body.next()).await {
            Err(_) => {
                return Err(DockerError::Timeout {
                    what: "export",
                    after: first_byte,
                })
            }
            Ok(None) => {
                return Err(DockerError::Unexpected(format!(
                    "export of {} returned an empty body",
                    image.reference
                )))
            }
            Ok(Some(first)) => first.map_err(DockerError::from)?,
        };
        let rest = futures::stream::once(async move { Ok(first) })
            .chain(body)
            .map_err(|e| std::io::Error::other(DockerError::from(e).to_string()));
        Ok(Box::pin(StreamReader::new(rest)))
    }

    async fn do_has_image(&self, image_id: &str) -> Result<bool, DockerError> {
        validate_image_id(image_id)?;
        match timed(
            "inspect",
            CONTROL_TIMEOUT,
            self.client.inspect_image(image_id),
        )
        .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn do_load(&self, path: &Path) -> Result<(), DockerError> {
        let io_err = |source| DockerError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(io_err)?;
        let len = file.metadata().await.map_err(io_err)?.len();
        self.load_from(Box::pin(file), len, path).await
    }

    /// Streams `tarball` (about `len` bytes, the file at `path`) into `docker load`.
    async fn load_from(
        &self,
        tarball: crate::source::Tarball,
        len: u64,
        path: &Path,
    ) -> Result<(), DockerError> {
        let deadline = slow_io_deadline(len);
        let body = ReaderStream::with_capacity(tarball, LOAD_CHUNK);
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let stream = self.client.import_image_stream(options, body, None);
        let lines = match tokio::time::timeout(
            deadline,
            follow("load", deadline, stream, |i| i.stream.as_deref()),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(DockerError::Timeout {
                    what: "load",
                    after: deadline,
                })
            }
        };
        // dockerd reports each image it loaded ("Loaded image: NAME" / "Loaded image ID:
        // sha256:..."); a tarball with an empty manifest loads nothing without complaint.
        if !lines.iter().any(|l| l.starts_with("Loaded image")) {
            return Err(DockerError::Unexpected(format!(
                "loading {} reported no loaded image ({})",
                path.display(),
                lines.join(" | ")
            )));
        }
        tracing::debug!(path = %path.display(), loaded = ?lines, "docker load finished");
        Ok(())
    }
}

/// Checks a manifest digest: `sha256:` + 64 lower-case hex digits.
pub(crate) fn validate_digest(digest: &str) -> Result<(), DockerError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(DockerError::InvalidName {
            what: "digest",
            value: clip(digest),
        })
    }
}

/// Checks a registry endpoint: `host:port` (or a bare host), no path, no scheme (and no
/// bracketed IPv6 literal: dockerd 20.10's reference grammar has none).
pub(crate) fn validate_endpoint(endpoint: &str) -> Result<(), DockerError> {
    let bad = || DockerError::InvalidName {
        what: "endpoint",
        value: clip(endpoint),
    };
    let ok = !endpoint.is_empty()
        && endpoint.len() <= 255
        && endpoint
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
        && endpoint
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

impl Docker {
    /// Puts `image` (manifest or index digest `manifest_digest`) into the daemon by pulling
    /// it from the agent's registry endpoint `endpoint` (`host:port`, plain http), then
    /// records the real registry's digest reference and tag, and drops the endpoint's name
    /// (see the module docs for why the two pulls). The layers come from the endpoint
    /// only; the real registry is asked for the manifest alone, and its failure is a
    /// warning.
    pub async fn pull_through_endpoint(
        &self,
        endpoint: &str,
        image: &ImageRef,
        manifest_digest: &str,
    ) -> Result<(), LoaderError> {
        validate_endpoint(endpoint)?;
        validate_digest(manifest_digest)?;
        let local_repo = format!("{endpoint}/{}", image.repository);
        let real_repo = format!("{}/{}", image.registry, image.repository);
        let local_ref = format!("{local_repo}@{manifest_digest}");
        let real_ref = format!("{real_repo}@{manifest_digest}");
        validate_reference(&local_ref)?;
        validate_reference(&real_ref)?;
        if let Some(tag) = &image.tag {
            validate_reference(&format!("{real_repo}:{tag}"))?;
        }

        // 1. The layers, from the node's own endpoint.
        self.pull_reference(&local_repo, manifest_digest)
            .await
            .map_err(|e| LoaderError {
                message: format!("pulling {local_ref} from the agent's registry endpoint: {e}"),
            })?;
        let inspect = timed(
            "inspect",
            CONTROL_TIMEOUT,
            self.client.inspect_image(&local_ref),
        )
        .await
        .map_err(|e| LoaderError {
            message: format!("inspecting {local_ref} after pulling it: {e}"),
        })?;
        let image_id = inspect
            .id
            .filter(|id| validate_image_id(id).is_ok())
            .ok_or_else(|| LoaderError {
                message: format!("pulled {local_ref} but it has no valid image id"),
            })?;

        // 2. The tag, as pushed.
        if let Some(tag) = &image.tag {
            let options = TagImageOptionsBuilder::default()
                .repo(&real_repo)
                .tag(tag)
                .build();
            timed(
                "tag",
                CONTROL_TIMEOUT,
                self.client.tag_image(&image_id, Some(options)),
            )
            .await
            .map_err(|e| LoaderError {
                message: format!("tagging {image_id} as {real_repo}:{tag}: {e}"),
            })?;
        }

        // 3. The RepoDigest, from the real registry: dockerd has the config, so this
        // fetches the manifest and nothing else. After the tag: the image is usable by its
        // name meanwhile.
        match tokio::time::timeout(
            REPO_DIGEST_TIMEOUT,
            self.pull_reference(&real_repo, manifest_digest),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                image = %real_ref, error = %e,
                "image pulled from the agent's endpoint, but the registry did not confirm \
                 its digest: the image has no RepoDigest"
            ),
            Err(_) => tracing::warn!(
                image = %real_ref, after = ?REPO_DIGEST_TIMEOUT,
                "image pulled from the agent's endpoint, but the registry did not answer: \
                 the image has no RepoDigest"
            ),
        }

        // 4. Untag the endpoint's name, if the image has another one (removing its last
        // name would delete the image).
        let inspect = timed(
            "inspect",
            CONTROL_TIMEOUT,
            self.client.inspect_image(&image_id),
        )
        .await
        .map_err(|e| LoaderError {
            message: format!("inspecting {image_id} after naming it: {e}"),
        })?;
        let endpoint_prefix = format!("{endpoint}/");
        let other_names = inspect
            .repo_tags
            .iter()
            .flatten()
            .chain(inspect.repo_digests.iter().flatten())
            .filter(|name| !name.starts_with(&endpoint_prefix))
            .count();
        if other_names == 0 {
            tracing::warn!(
                image = %local_ref,
                "keeping the endpoint's name: the image has no other (no tag, no RepoDigest)"
            );
            return Ok(());
        }
        let options = RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(true)
            .build();
        timed(
            "untag",
            CONTROL_TIMEOUT,
            self.client.remove_image(&local_ref, Some(options), None),
        )
        .await
        .map_err(|e| LoaderError {
            message: format!("untagging {local_ref}: {e}"),
        })?;
        tracing::debug!(image = %real_ref, id = %image_id, endpoint, "pulled through the agent's endpoint");
        Ok(())
    }
}

/// An image id or a reference, whichever it is.
fn validate_name(image: &str) -> Result<(), DockerError> {
    validate_image_id(image).or_else(|_| validate_reference(image))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host("unix:///run/docker.sock").unwrap(),
            Endpoint::Unix("/run/docker.sock".into())
        );
        assert_eq!(
            parse_host("/tmp/d.sock").unwrap(),
            Endpoint::Unix("/tmp/d.sock".into())
        );
        assert_eq!(
            parse_host("tcp://10.0.0.1:2375").unwrap(),
            Endpoint::Http("tcp://10.0.0.1:2375".into())
        );
        assert_eq!(
            parse_host("http://h:2375/").unwrap(),
            Endpoint::Http("tcp://h:2375".into())
        );
        for bad in [
            "",
            "unix://",
            "tcp://",
            "https://h:2376",
            "ssh://u@h",
            "h:2375",
            "tcp://a/b",
        ] {
            assert!(
                matches!(parse_host(bad), Err(DockerError::UnsupportedHost { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn references() {
        for ok in [
            "127.0.0.1:5000/test/img:v1",
            "registry-1.docker.io/library/alpine:3.20",
            "10.77.0.1:5000/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "app",
        ] {
            validate_reference(ok).unwrap();
        }
        for bad in [
            "",
            "a/../b",
            "a/./b",
            "/a",
            "a//b",
            "a?x=1",
            "a#b",
            "a b",
            "a/%2e%2e/b",
            "a@b@c",
            "../containers/json",
            "a/\u{e9}",
        ] {
            assert!(validate_reference(bad).is_err(), "{bad:?}");
        }
        assert!(validate_reference(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn digests_and_endpoints() {
        let hex = "0123456789abcdef".repeat(4);
        validate_digest(&format!("sha256:{hex}")).unwrap();
        for bad in [
            "",
            hex.as_str(),
            "sha256:",
            &format!("sha256:{}", hex.to_uppercase()),
            &format!("sha512:{hex}"),
            &format!("sha256:{hex}0"),
        ] {
            assert!(validate_digest(bad).is_err(), "{bad:?}");
        }
        for ok in ["127.0.0.1:5055", "localhost:5000", "node-1.local"] {
            validate_endpoint(ok).unwrap();
        }
        for bad in [
            "",
            "http://h:1",
            "h:1/x",
            "h?x",
            "-h:1",
            ":5000",
            "a b",
            "[::1]:5000",
        ] {
            assert!(validate_endpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_ids() {
        let hex = "0123456789abcdef".repeat(4);
        validate_image_id(&hex).unwrap();
        validate_image_id(&format!("sha256:{hex}")).unwrap();
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            "sha256:../../x",
            &format!("sha256:{hex}0"),
        ] {
            assert!(validate_image_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn retry_classification() {
        let daemon = |status, message: &str| DockerError::Daemon {
            status,
            message: message.into(),
        };
        assert!(!daemon(
            404,
            "manifest for 127.0.0.1:5000/x:nope not found: manifest unknown"
        )
        .is_retryable());
        assert!(daemon(
            500,
            "Get \"http://127.0.0.1:5099/v2/\": dial tcp 127.0.0.1:5099: connect: connection refused"
        )
        .is_retryable());
        assert!(!daemon(500, "unauthorized: authentication required").is_retryable());
        assert!(daemon(429, "toomanyrequests: rate limit").is_retryable());
        assert!(!DockerError::Stream {
            message: "manifest unknown: manifest unknown".into()
        }
        .is_retryable());
        assert!(DockerError::Stream {
            message: "read tcp: connection reset by peer".into()
        }
        .is_retryable());
        assert!(DockerError::Timeout {
            what: "x",
            after: Duration::from_secs(1)
        }
        .is_retryable());
        let e: SourceError = daemon(404, "manifest unknown").into();
        assert!(!e.retryable && e.message.contains("manifest unknown"));
    }

    #[test]
    fn clipping_and_sizes() {
        let long = "\u{e9}".repeat(MAX_MESSAGE_LEN);
        let c = clip(&long);
        assert!(c.len() <= MAX_MESSAGE_LEN + 3);
        assert_eq!(size_hint(None), 0);
        assert_eq!(size_hint(Some(-5)), 0);
        assert_eq!(size_hint(Some(20 << 20)), (21 << 20) + (1 << 20));
        assert_eq!(
            size_hint(Some(i64::MAX)),
            (i64::MAX as u64) + (i64::MAX as u64) / 20 + (1 << 20)
        );
    }
}
