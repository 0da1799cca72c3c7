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
//!
//! Layout, each file with its own design notes: `ctr.rs` runs `ctr` (bounded output,
//! deadlines), `images.rs` finds an image by id and lists the namespace, `import.rs`
//! imports a tarball, `endpoint_pull.rs` pulls through the agent's registry endpoint
//! (hosts dir, hosts.toml, the pull and the tag). A containerd node originates through the
//! registry-API source alone (https and credentials included), so it needs no runtime source.

mod ctr;
mod endpoint_pull;
mod images;
mod import;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::image::ImageRef;
use crate::loader::{ImageLoader, LoaderError};

pub use endpoint_pull::default_hosts_dir;

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

    /// The configuration in use.
    pub fn config(&self) -> &ContainerdConfig {
        &self.config
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
