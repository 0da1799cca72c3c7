//! Importing a `docker save` (or OCI) tarball: `ctr images import`.
//!
//! Design decisions:
//! - **The image is unpacked on import** (ctr's default): the kubelet then starts a container
//!   at once instead of unpacking on first use. `--all-platforms` keeps an image whose
//!   platform differs from the node's (a `docker save` tarball holds exactly one platform;
//!   without the flag, ctr would silently import nothing for it).

use std::path::Path;
use std::time::Duration;

use super::{Containerd, ContainerdError};

/// An import gets this long plus the tarball's size at [`SLOW_IO_MIN_RATE`].
const IMPORT_BASE_TIMEOUT: Duration = Duration::from_secs(600);
/// The slowest rate (bytes/s) at which containerd may ingest and unpack before we call it
/// stuck.
const SLOW_IO_MIN_RATE: u64 = 5 << 20;

impl Containerd {
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
}
