//! What /stats and /metrics report: one record per image on this node.
//! (Record types are fixed here; rendering is filled in by the API work.)

use serde::Serialize;

/// Where one image is on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    /// The origin is pulling it from the registry and exporting it.
    Pulling,
    /// The origin has it and seeds the tarball.
    Seeding,
    /// This node is downloading the tarball from the swarm.
    Downloading,
    /// The tarball is complete and being loaded into the runtime.
    Loading,
    /// The image is in this node's runtime.
    Loaded,
    /// It failed; `error` says why.
    Failed,
}

/// One image on this node, as /stats returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageStats {
    /// The image reference as pushed.
    pub reference: String,
    /// Local image id (`sha256:...`), once known.
    pub image_id: Option<String>,
    /// Manifest digest, when the notification carried one.
    pub digest: Option<String>,
    /// Hex info-hash of the tarball's torrent, once built.
    pub info_hash: Option<String>,
    /// Tarball size in bytes, once known.
    pub size: Option<u64>,
    /// Where it is.
    pub state: ImageState,
    /// Why it failed (or the last retried error).
    pub error: Option<String>,
    /// This node pulled it from the registry (the origin of the distribution).
    pub origin: bool,
    /// Payload bytes received from peers.
    pub bytes_down: u64,
    /// Payload bytes sent to peers.
    pub bytes_up: u64,
    /// Connected BitTorrent peers.
    pub peers: usize,
    /// When this node started on it, seconds since the Unix epoch.
    pub started_at: f64,
    /// When the tarball was complete here (downloaded or exported).
    pub completed_at: Option<f64>,
    /// When the image was loaded into the runtime here.
    pub loaded_at: Option<f64>,
    /// Seconds the load took.
    pub load_seconds: Option<f64>,
    /// Attempts made (pull or load retries included).
    pub attempts: u32,
}
