//! Docker as loader: whether an image is there (by id), and `docker load`
//! (`POST /images/load`) streamed from a file on disk or from a download still running.

use std::path::Path;

use bollard::query_parameters::ImportImageOptionsBuilder;
use tokio_util::io::ReaderStream;

use super::{
    follow, slow_io_deadline, timed, validate_image_id, Docker, DockerError, CONTROL_TIMEOUT,
};

/// Read size when streaming a tarball into the daemon.
const LOAD_CHUNK: usize = 256 << 10;

impl Docker {
    pub(super) async fn do_has_image(&self, image_id: &str) -> Result<bool, DockerError> {
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

    pub(super) async fn do_load(&self, path: &Path) -> Result<(), DockerError> {
        let io_err = |source| DockerError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(io_err)?;
        let len = file.metadata().await.map_err(io_err)?.len();
        self.load_from(Box::pin(file), len, path).await
    }

    /// Streams `tarball` (about `len` bytes, the file at `path`) into `docker load`.
    pub(super) async fn load_from(
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
