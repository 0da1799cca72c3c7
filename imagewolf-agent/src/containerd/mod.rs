//! containerd as loader (`--runtime containerd`): what most Kubernetes nodes run.
//!
//! Design decisions:
//! - **`ctr`, not a gRPC client.** Importing a `docker save` tarball into containerd means
//!   parsing the archive, writing every blob into the content store with the right garbage
//!   collection labels, creating the image records and unpacking the layers into the
//!   snapshotter. containerd's own client does all of that (`ctr images import`), is shipped
//!   with every containerd package, and speaks the stable v1 API that containerd 1.6, 1.7 and
//!   2.x serve. Re-implementing it on a gRPC/protobuf stack would add a large dependency tree
//!   for no gain in behaviour. The cost is a process per call, negligible next to an import.
//! - **Namespace `k8s.io` by default**, the one the kubelet's CRI plugin uses; images imported
//!   elsewhere are invisible to Kubernetes.
//! - **`has_image` by image id = config digest.** Docker's image id is the digest of the
//!   image config; containerd names images by reference and points them at a manifest (or an
//!   index). So the check lists the images (`ctr images ls`) and the content labels
//!   (`ctr content ls`) and follows each image's target the way containerd's garbage collector
//!   does: a manifest carries `containerd.io/gc.ref.content.config=<config digest>`, an index
//!   `containerd.io/gc.ref.content.m.<n>=<manifest digest>`. Two processes, however many
//!   images the node has. A shortcut answers first: the CRI plugin also records every image
//!   under its id (`sha256:...` as the reference), so on a Kubernetes node the id alone is
//!   usually enough. Content that no image points at does not count: it may be a half-done
//!   pull or garbage awaiting collection.
//! - **Everything `ctr` prints is bounded** ([`MAX_OUTPUT`]) and every call has a deadline:
//!   a wedged containerd must not wedge the agent, and a node with a huge store must not blow
//!   up its memory. Failures carry `ctr`'s own stderr (clipped) so the operator sees
//!   containerd's words in /stats and the logs.
//! - **The image is unpacked on import** (ctr's default): the kubelet then starts a container
//!   at once instead of unpacking on first use. `--all-platforms` keeps an image whose
//!   platform differs from the node's (a `docker save` tarball holds exactly one platform;
//!   without the flag, ctr would silently import nothing for it).
//! - **No runtime fallback for pulls** ([`ReceiveOnly`]): a containerd node originates through
//!   the registry-API source; what that source cannot read (https, credentials) needs an
//!   agent with Docker to hear the push.
//! - **Content-addressed delivery: a pull through the agent's endpoint, by hosts dir**
//!   ([`Containerd::pull_through_endpoint`]). An imported tarball gets a digest containerd
//!   computes for the archive, not the registry's; a pull keeps the registry's manifest
//!   digest and layer blobs. The agent writes, in a hosts directory of its own
//!   ([`Containerd::with_hosts_dir`]; by default `<temp dir>/imagewolf-hosts-<pid>`),
//!   `<dir>/<REGISTRY>/hosts.toml` naming the agent's endpoint as a pull/resolve mirror
//!   (plain http) in front of `server = "http://REGISTRY"` (containerd 1.6 rejects a
//!   hosts.toml with only `server`), then runs `ctr images pull --hosts-dir <dir>
//!   REGISTRY/REPO@DIGEST`. containerd asks the mirror first (adding `?ns=REGISTRY`) and
//!   falls back to `server` by itself if the mirror fails. It pulls by digest, so the image
//!   is exactly the announced manifest whatever the tag says now; then
//!   `ctr images tag --force` adds `REGISTRY/REPO:TAG`: the names the CRI plugin gives an
//!   image it pulls (and the CRI plugin labels it `io.cri-containerd.image=managed` by
//!   itself, as it does an imported one: no label is set here). The file is rewritten (atomically) before every pull; nothing else
//!   reads that directory. `server` is plain http: a registry that speaks only https
//!   cannot be the fallback (the mirror is the path that matters).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::docker::validate_image_id;
use crate::image::ImageRef;
use crate::loader::{ImageLoader, LoaderError};
use crate::source::{ImageSource, PulledImage, SourceError, Tarball};

/// containerd's default socket.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The namespace the kubelet (CRI plugin) keeps its images in.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
/// Most bytes kept from a `ctr` run's stdout (a listing) or stderr (an error message).
pub const MAX_OUTPUT: u64 = 16 << 20;
/// Longest error message kept from `ctr`'s stderr.
const MAX_MESSAGE_LEN: usize = 2048;
/// Listings and other quick calls.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// Connecting to containerd, passed to `ctr --connect-timeout`.
const CONNECT_TIMEOUT: &str = "10s";
/// An import gets this long plus the tarball's size at [`SLOW_IO_MIN_RATE`].
const IMPORT_BASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The slowest rate (bytes/s) at which containerd may ingest and unpack before we call it
/// stuck.
const SLOW_IO_MIN_RATE: u64 = 5 << 20;
/// A pull through the agent's endpoint (size unknown to this module; the endpoint is on the
/// node, so it is fast unless containerd falls back to the registry).
const PULL_TIMEOUT: Duration = Duration::from_secs(3600);

/// Why a containerd call failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// `ctr` could not be started (not installed, not executable).
    #[error(
        "running {ctr}: {source} (install containerd's `ctr`, or point --containerd-ctr at it)"
    )]
    Spawn {
        /// The ctr binary tried.
        ctr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `ctr` ran and failed; `message` is its stderr.
    #[error("ctr {what} failed ({status}): {message}")]
    Ctr {
        /// Which call.
        what: &'static str,
        /// Its exit status.
        status: String,
        /// Its stderr, clipped.
        message: String,
    },
    /// `ctr` did not finish in time (it is killed).
    #[error("ctr {what} did not finish within {after:?}")]
    Timeout {
        /// Which call.
        what: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// Reading `ctr`'s output or the tarball failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// `ctr` printed more than [`MAX_OUTPUT`] bytes.
    #[error("ctr {what} printed more than {MAX_OUTPUT} bytes")]
    TooMuchOutput {
        /// Which call.
        what: &'static str,
    },
    /// Not an image id (`sha256:` + 64 hex digits).
    #[error("invalid image id {0:?}")]
    InvalidImageId(String),
    /// A registry, endpoint, repository, tag or digest that is not well formed (checked
    /// before it reaches a file or a command line).
    #[error("invalid {what} {value:?}")]
    InvalidName {
        /// Which part.
        what: &'static str,
        /// The offending value (clipped).
        value: String,
    },
    /// Writing the hosts directory failed.
    #[error("writing {path}: {source}")]
    HostsDir {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The pull ended, but the image is not what was asked for.
    #[error("{0}")]
    Unexpected(String),
}

impl From<ContainerdError> for LoaderError {
    fn from(e: ContainerdError) -> Self {
        LoaderError {
            message: e.to_string(),
        }
    }
}

/// Where containerd is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    /// The `ctr` binary (a name looked up on `PATH`, or a path).
    pub ctr: PathBuf,
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// The containerd namespace images go into.
    pub namespace: String,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            ctr: PathBuf::from("ctr"),
            address: PathBuf::from(DEFAULT_ADDRESS),
            namespace: DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

/// A containerd, driven through `ctr`.
#[derive(Debug, Clone)]
pub struct Containerd {
    config: ContainerdConfig,
    hosts_dir: PathBuf,
}

/// The hosts directory used unless [`Containerd::with_hosts_dir`] sets one:
/// `<temp dir>/imagewolf-hosts-<pid>`.
pub fn default_hosts_dir() -> PathBuf {
    std::env::temp_dir().join(format!("imagewolf-hosts-{}", std::process::id()))
}

impl Containerd {
    /// Checks that `ctr` runs and containerd answers (`ctr version`), so a wrong socket path
    /// fails at startup rather than at the first image.
    pub async fn connect(config: ContainerdConfig) -> Result<Self, ContainerdError> {
        let c = Containerd {
            config,
            hosts_dir: default_hosts_dir(),
        };
        c.ctr("version", &["version"], CONTROL_TIMEOUT).await?;
        Ok(c)
    }

    /// Uses `dir` as the registry hosts directory for pulls through the agent's endpoint
    /// (created on first use; the agent owns it: `<dir>/<registry>/hosts.toml` is rewritten
    /// before each pull). The agent's data directory is a good place.
    pub fn with_hosts_dir(mut self, dir: PathBuf) -> Self {
        self.hosts_dir = dir;
        self
    }

    /// The registry hosts directory in use.
    pub fn hosts_dir(&self) -> &Path {
        &self.hosts_dir
    }

    /// The configuration in use.
    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// Runs `ctr -a ADDRESS -n NAMESPACE ARGS`; returns its stdout.
    async fn ctr(
        &self,
        what: &'static str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<String, ContainerdError> {
        self.run_ctr(what, args, timeout, true).await
    }

    /// Runs `ctr -a ADDRESS -n NAMESPACE ARGS`; returns its stdout if `keep_stdout`, else
    /// discards it (a pull's progress display, which grows with its duration).
    async fn run_ctr(
        &self,
        what: &'static str,
        args: &[&str],
        timeout: Duration,
        keep_stdout: bool,
    ) -> Result<String, ContainerdError> {
        let mut cmd = tokio::process::Command::new(&self.config.ctr);
        cmd.arg("--connect-timeout")
            .arg(CONNECT_TIMEOUT)
            .arg("--address")
            .arg(&self.config.address)
            .arg("--namespace")
            .arg(&self.config.namespace)
            .args(args)
            // The flags above decide; the environment must not.
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ContainerdError::Spawn {
            ctr: self.config.ctr.display().to_string(),
            source,
        })?;
        let (stdout, Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(ContainerdError::Io {
                what: format!("ctr {what}"),
                source: std::io::Error::other("stderr not captured"),
            });
        };
        if keep_stdout && stdout.is_none() {
            return Err(ContainerdError::Io {
                what: format!("ctr {what}"),
                source: std::io::Error::other("stdout not captured"),
            });
        }
        let run = async {
            // Both pipes are drained at once: a child blocked on a full stderr pipe would
            // otherwise never close stdout.
            let read_out = async {
                match stdout {
                    Some(stdout) => read_bounded(stdout).await,
                    None => Ok((Vec::new(), false)),
                }
            };
            let (out, err) = tokio::join!(read_out, read_bounded(stderr));
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            // Dropping `child` kills it (kill_on_drop).
            Err(_) => {
                return Err(ContainerdError::Timeout {
                    what,
                    after: timeout,
                })
            }
        };
        let io = |source| ContainerdError::Io {
            what: format!("ctr {what}"),
            source,
        };
        let status = status.map_err(io)?;
        let (out, out_truncated) = out.map_err(io)?;
        let (err, _) = err.map_err(io)?;
        if !status.success() {
            return Err(ContainerdError::Ctr {
                what,
                status: status.to_string(),
                message: clip(&String::from_utf8_lossy(&err)),
            });
        }
        if out_truncated {
            return Err(ContainerdError::TooMuchOutput { what });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Whether an image whose config digest is `image_id` is in the namespace.
    pub async fn has_image_id(&self, image_id: &str) -> Result<bool, ContainerdError> {
        validate_image_id(image_id).map_err(|_| ContainerdError::InvalidImageId(clip(image_id)))?;
        let id = normalize_id(image_id);
        let images = parse_images(
            &self
                .ctr("images ls", &["images", "ls"], CONTROL_TIMEOUT)
                .await?,
        );
        if images.iter().any(|(reference, _)| *reference == id) {
            return Ok(true);
        }
        if images.is_empty() {
            return Ok(false);
        }
        let content = parse_content(
            &self
                .ctr("content ls", &["content", "ls"], CONTROL_TIMEOUT)
                .await?,
        );
        Ok(images
            .iter()
            .any(|(_, target)| target_has_config(&content, target, &id)))
    }

    /// Imports a `docker save` (or OCI) tarball and unpacks it.
    pub async fn import(&self, path: &Path) -> Result<(), ContainerdError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|source| ContainerdError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?
            .len();
        let timeout =
            IMPORT_BASE_TIMEOUT.saturating_add(Duration::from_secs(len / SLOW_IO_MIN_RATE));
        let path_arg = path.to_string_lossy();
        let out = self
            .ctr(
                "images import",
                &["images", "import", "--all-platforms", &path_arg],
                timeout,
            )
            .await?;
        tracing::debug!(path = %path.display(), output = %out.trim(), "ctr images import finished");
        Ok(())
    }

    /// Pulls `image` (manifest or index digest `manifest_digest`) through the agent's
    /// registry endpoint `endpoint` (`host:port`, plain http), named
    /// `REGISTRY/REPO@DIGEST` and, with a tag, `REGISTRY/REPO:TAG` (see the module docs).
    pub async fn pull_through_endpoint(
        &self,
        endpoint: &str,
        image: &ImageRef,
        manifest_digest: &str,
    ) -> Result<(), ContainerdError> {
        let invalid = |what: &'static str, value: &str| ContainerdError::InvalidName {
            what,
            value: clip(value),
        };
        crate::docker::validate_endpoint(endpoint).map_err(|_| invalid("endpoint", endpoint))?;
        crate::docker::validate_endpoint(&image.registry)
            .map_err(|_| invalid("registry", &image.registry))?;
        crate::docker::validate_digest(manifest_digest)
            .map_err(|_| invalid("digest", manifest_digest))?;
        let repo = format!("{}/{}", image.registry, image.repository);
        let by_digest = format!("{repo}@{manifest_digest}");
        crate::docker::validate_reference(&by_digest)
            .map_err(|_| invalid("repository", &image.repository))?;
        let by_tag = match &image.tag {
            Some(tag) => {
                let r = format!("{repo}:{tag}");
                crate::docker::validate_reference(&r).map_err(|_| invalid("tag", tag))?;
                Some(r)
            }
            None => None,
        };

        self.write_hosts(&image.registry, endpoint).await?;
        let hosts_dir = self.hosts_dir.to_string_lossy();
        self.run_ctr(
            "images pull",
            &["images", "pull", "--hosts-dir", &hosts_dir, &by_digest],
            PULL_TIMEOUT,
            false,
        )
        .await?;
        if let Some(by_tag) = &by_tag {
            self.ctr(
                "images tag",
                &["images", "tag", "--force", &by_digest, by_tag],
                CONTROL_TIMEOUT,
            )
            .await?;
        }
        // containerd checked the manifest against the digest it pulled by; check the
        // names point at it.
        let images = parse_images(
            &self
                .ctr("images ls", &["images", "ls"], CONTROL_TIMEOUT)
                .await?,
        );
        for name in std::iter::once(&by_digest).chain(by_tag.as_ref()) {
            if !images
                .iter()
                .any(|(r, target)| r == name && target == manifest_digest)
            {
                return Err(ContainerdError::Unexpected(format!(
                    "pulled {by_digest} through {endpoint}, but {name} does not point at \
                     {manifest_digest}"
                )));
            }
        }
        tracing::debug!(image = %by_digest, endpoint, "pulled through the agent's endpoint");
        Ok(())
    }

    /// Writes `<hosts dir>/<registry>/hosts.toml`: `endpoint` as a pull/resolve mirror in
    /// front of the registry itself. Both were validated (no quotes, slashes or dot-dot).
    async fn write_hosts(&self, registry: &str, endpoint: &str) -> Result<(), ContainerdError> {
        let dir = self.hosts_dir.join(registry);
        let err = |path: &Path| {
            let path = path.display().to_string();
            move |source| ContainerdError::HostsDir { path, source }
        };
        tokio::fs::create_dir_all(&dir).await.map_err(err(&dir))?;
        let file = dir.join("hosts.toml");
        let content = hosts_toml(registry, endpoint);
        // Atomic replace: a pull running meanwhile reads the old file or the new one.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".hosts.toml.{}.{seq}", std::process::id()));
        tokio::fs::write(&tmp, content).await.map_err(err(&tmp))?;
        if let Err(e) = tokio::fs::rename(&tmp, &file).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(err(&file)(e));
        }
        Ok(())
    }

    /// The references of the images in the namespace (`ctr images ls -q`).
    pub async fn image_refs(&self) -> Result<Vec<String>, ContainerdError> {
        Ok(self
            .ctr("images ls", &["images", "ls", "-q"], CONTROL_TIMEOUT)
            .await?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

impl ImageLoader for Containerd {
    fn has_image<'a>(&'a self, image_id: &'a str) -> BoxFuture<'a, Result<bool, LoaderError>> {
        Box::pin(async move { self.has_image_id(image_id).await.map_err(LoaderError::from) })
    }

    fn load<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<(), LoaderError>> {
        Box::pin(async move { self.import(path).await.map_err(LoaderError::from) })
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
        Box::pin(async move {
            self.pull_through_endpoint(endpoint, image, manifest_digest)
                .await
                .map_err(|e| LoaderError {
                    message: format!(
                        "pulling {}/{}@{manifest_digest} through the agent's endpoint \
                         {endpoint}: {e}",
                        image.registry, image.repository
                    ),
                })
        })
    }
}

/// The hosts.toml that puts `endpoint` in front of `registry` (both plain http).
fn hosts_toml(registry: &str, endpoint: &str) -> String {
    format!(
        "# Written by imagewolf-agent: pulls go through the agent's endpoint first.\n\
         server = \"http://{registry}\"\n\n\
         [host.\"http://{endpoint}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The fallback source of a containerd node, behind the registry-API source: containerd
/// cannot be asked to pull and export, so what the registry source cannot read is refused
/// with a message saying where to send the notification instead.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveOnly;

impl ImageSource for ReceiveOnly {
    fn pull<'a>(&'a self, image: &'a ImageRef) -> BoxFuture<'a, Result<PulledImage, SourceError>> {
        Box::pin(async move {
            Err(SourceError {
                message: format!(
                    "cannot pull {image}: the registry's API cannot be read from here (https \
                     or credentials) and a --runtime containerd agent has no Docker to fall \
                     back on; send the notification to an agent running with --runtime docker"
                ),
                retryable: false,
            })
        })
    }

    fn export<'a>(
        &'a self,
        _image: &'a PulledImage,
    ) -> BoxFuture<'a, Result<Tarball, SourceError>> {
        Box::pin(async move {
            Err(SourceError {
                message: "a --runtime containerd agent cannot export images".into(),
                retryable: false,
            })
        })
    }
}

/// Reads at most [`MAX_OUTPUT`] bytes, then drains (and drops) the rest so the child is not
/// blocked on a full pipe. Returns the bytes and whether some were dropped.
async fn read_bounded(mut reader: impl AsyncRead + Unpin) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    (&mut reader)
        .take(MAX_OUTPUT)
        .read_to_end(&mut kept)
        .await?;
    let dropped = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await?;
    Ok((kept, dropped > 0))
}

/// `sha256:<hex>` in lower case, whichever way the id was written.
fn normalize_id(id: &str) -> String {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    format!("sha256:{}", hex.to_ascii_lowercase())
}

/// Clips `ctr`'s stderr for a message.
fn clip(message: &str) -> String {
    let message = message.trim();
    if message.len() <= MAX_MESSAGE_LEN {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", message.get(..end).unwrap_or_default())
}

/// `ctr images ls` -> (reference, target digest) pairs. Columns are REF TYPE DIGEST SIZE
/// PLATFORMS LABELS, space-aligned; neither a reference nor a media type holds a space.
fn parse_images(listing: &str) -> Vec<(String, String)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let reference = fields.next()?;
            let target = fields.nth(1)?;
            target
                .starts_with("sha256:")
                .then(|| (reference.to_owned(), target.to_owned()))
        })
        .collect()
}

/// `ctr content ls` -> digest -> labels. Columns are DIGEST SIZE AGE LABELS, tab-separated
/// (AGE holds spaces: "Less than a second"); LABELS is `k=v,k=v` or `-`.
fn parse_content(listing: &str) -> HashMap<String, Vec<(String, String)>> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t').filter(|f| !f.trim().is_empty());
            let digest = fields.next()?.trim();
            if !digest.starts_with("sha256:") {
                return None;
            }
            let labels = fields.next_back().unwrap_or("-").trim();
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            Some((digest.to_owned(), labels))
        })
        .collect()
}

/// Whether the manifest (or an index's manifests, one level down; nested indexes are rare
/// and deeper ones are not followed) at `target` names `config` as its config.
fn target_has_config(
    content: &HashMap<String, Vec<(String, String)>>,
    target: &str,
    config: &str,
) -> bool {
    const CONFIG: &str = "containerd.io/gc.ref.content.config";
    const MANIFEST: &str = "containerd.io/gc.ref.content.m.";
    let names_config = |digest: &str| {
        content
            .get(digest)
            .is_some_and(|labels| labels.iter().any(|(k, v)| k == CONFIG && v == config))
    };
    if names_config(target) {
        return true;
    }
    content.get(target).is_some_and(|labels| {
        labels
            .iter()
            .filter(|(k, _)| k.starts_with(MANIFEST))
            .any(|(_, manifest)| names_config(manifest))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "sha256:d9eb266c682df50d3d657506678b2a918ea4bdacb7a6ea1a0f4e331aa3f25ffc";
    const MANIFEST: &str =
        "sha256:91eada5519eee967ae0ff74f21cef346c0b137f09e7662bf874b0d08807d03ca";

    // Real output of ctr 1.6 after importing a `docker save` tarball (CRI plugin off: no
    // `sha256:` reference).
    fn images_ls() -> String {
        format!(
            "REF                        TYPE                                                 DIGEST  SIZE    PLATFORMS   LABELS\n\
             127.0.0.1:5000/test/app:v2 application/vnd.docker.distribution.manifest.v2+json {MANIFEST} 1.9 MiB linux/amd64 -\n"
        )
    }

    fn content_ls() -> String {
        format!(
            "DIGEST\t\t\t\t\t\t\t\t\tSIZE\tAGE\t\t\tLABELS\n\
             sha256:1025715e0470f72b2164fa5a558ecf43e4204630d55fb2b63493a43b367c1196\t1.191kB\tLess than a second\t-\n\
             {MANIFEST}\t582B\tLess than a second\tcontainerd.io/gc.ref.content.config={ID},containerd.io/gc.ref.content.l.0=sha256:c360cba30be1b49dd01252878dfd85a014ee694370d96b3f6e2aa9ac5ff9e1a5\n\
             {ID}\t1.476kB\t2 minutes\tcontainerd.io/gc.ref.snapshot.overlayfs=sha256:7685bcf41a3a91e07094d7cc89bc6da23da7942577f57fcae0b6ddbd0c8d85f5\n"
        )
    }

    #[test]
    fn finds_config_through_manifest() {
        let images = parse_images(&images_ls());
        assert_eq!(
            images,
            vec![("127.0.0.1:5000/test/app:v2".to_owned(), MANIFEST.to_owned())]
        );
        let content = parse_content(&content_ls());
        assert!(target_has_config(&content, MANIFEST, ID));
        let other = normalize_id(&"ab".repeat(32));
        assert!(!target_has_config(&content, MANIFEST, &other));
        // The config blob itself is content, not an image target.
        assert!(!target_has_config(&content, ID, ID));
    }

    #[test]
    fn finds_config_through_index() {
        let index = "sha256:".to_owned() + &"1".repeat(64);
        let listing = format!(
            "{}{index}\t358B\t1 hour\tcontainerd.io/gc.ref.content.m.0=sha256:{},containerd.io/gc.ref.content.m.1={MANIFEST}\n",
            content_ls(),
            "2".repeat(64)
        );
        let content = parse_content(&listing);
        assert!(target_has_config(&content, &index, ID));
        assert!(!target_has_config(
            &content,
            &index,
            &normalize_id(&"3".repeat(64))
        ));
    }

    #[test]
    fn garbage_listings_parse_to_nothing() {
        for junk in [
            "", "\n\n", "REF TYPE", "a b c", "\t\t\t", "sha256:x", "x=y,=,,",
        ] {
            let content = parse_content(junk);
            assert!(!target_has_config(&content, "sha256:x", ID), "{junk:?}");
            assert!(parse_images(junk).is_empty(), "{junk:?}");
        }
    }

    #[test]
    fn ids_and_clipping() {
        assert_eq!(
            normalize_id(&"AB".repeat(32)),
            format!("sha256:{}", "ab".repeat(32))
        );
        assert_eq!(normalize_id(ID), ID);
        let long = "\u{e9}".repeat(MAX_MESSAGE_LEN);
        assert!(clip(&long).len() <= MAX_MESSAGE_LEN + 3);
    }

    #[test]
    fn hosts_file() {
        assert_eq!(
            hosts_toml("10.0.0.1:5000", "127.0.0.1:5055"),
            "# Written by imagewolf-agent: pulls go through the agent's endpoint first.\n\
             server = \"http://10.0.0.1:5000\"\n\n\
             [host.\"http://127.0.0.1:5055\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
    }

    #[tokio::test]
    async fn endpoint_pull_checks_names_first() {
        let dir = std::env::temp_dir().join(format!("imagewolf-hosts-test-{}", std::process::id()));
        let c = Containerd {
            config: ContainerdConfig {
                ctr: PathBuf::from("/nonexistent/ctr"),
                ..ContainerdConfig::default()
            },
            hosts_dir: dir.clone(),
        };
        let digest = format!("sha256:{}", "ab".repeat(32));
        let image = |registry: &str, repository: &str, tag: Option<&str>| ImageRef {
            registry: registry.into(),
            repository: repository.into(),
            tag: tag.map(str::to_owned),
            digest: None,
        };
        for (endpoint, image, digest) in [
            ("127.0.0.1:1/x", image("r:1", "a", None), digest.as_str()),
            ("127.0.0.1:1", image("../etc", "a", None), &digest),
            ("127.0.0.1:1", image("r:1", "a\"b", None), &digest),
            ("127.0.0.1:1", image("r:1", "a", Some("t\n")), &digest),
            ("127.0.0.1:1", image("r:1", "a", None), "sha256:abc"),
        ] {
            let e = c
                .pull_through_endpoint(endpoint, &image, digest)
                .await
                .unwrap_err();
            assert!(matches!(e, ContainerdError::InvalidName { .. }), "{e}");
        }
        assert!(!dir.exists(), "nothing is written for a refused name");
        // A good name gets its hosts file, then ctr's absence is the error.
        let e = c
            .pull_through_endpoint("127.0.0.1:1", &image("r:1", "a/b", Some("v1")), &digest)
            .await
            .unwrap_err();
        assert!(matches!(e, ContainerdError::Spawn { .. }), "{e}");
        let written = std::fs::read_to_string(dir.join("r:1/hosts.toml")).unwrap();
        assert_eq!(written, hosts_toml("r:1", "127.0.0.1:1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn missing_ctr_is_a_clear_error() {
        let c = Containerd {
            config: ContainerdConfig {
                ctr: PathBuf::from("/nonexistent/ctr"),
                ..ContainerdConfig::default()
            },
            hosts_dir: default_hosts_dir(),
        };
        let e = c.has_image_id(ID).await.unwrap_err();
        assert!(matches!(e, ContainerdError::Spawn { .. }), "{e}");
        let e = c.has_image_id("sha256:../../etc").await.unwrap_err();
        assert!(matches!(e, ContainerdError::InvalidImageId(_)), "{e}");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let big = vec![b'x'; usize::try_from(MAX_OUTPUT).unwrap() + 10];
        let (kept, dropped) = read_bounded(&big[..]).await.unwrap();
        assert_eq!(kept.len() as u64, MAX_OUTPUT);
        assert!(dropped);
        let (kept, dropped) = read_bounded(&b"small"[..]).await.unwrap();
        assert_eq!(kept, b"small");
        assert!(!dropped);
    }
}
