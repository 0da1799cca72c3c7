//! Content-addressed delivery into containerd: the pull through the agent's registry
//! endpoint, by a hosts directory of the agent's own (hosts.toml), and the tag.
//!
//! Design decisions:
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

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ctr::clip;
use super::images::parse_images;
use super::{Containerd, ContainerdError, CONTROL_TIMEOUT};
use crate::image::ImageRef;

/// A pull through the agent's endpoint (size unknown to this module; the endpoint is on the
/// node, so it is fast unless containerd falls back to the registry).
const PULL_TIMEOUT: Duration = Duration::from_secs(3600);

/// The hosts directory used unless [`Containerd::with_hosts_dir`] sets one:
/// `<temp dir>/imagewolf-hosts-<pid>`.
pub fn default_hosts_dir() -> PathBuf {
    std::env::temp_dir().join(format!("imagewolf-hosts-{}", std::process::id()))
}

impl Containerd {
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
}

/// The hosts.toml that puts `endpoint` in front of `registry` (both plain http).
pub(super) fn hosts_toml(registry: &str, endpoint: &str) -> String {
    format!(
        "# Written by imagewolf-agent: pulls go through the agent's endpoint first.\n\
         server = \"http://{registry}\"\n\n\
         [host.\"http://{endpoint}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}
