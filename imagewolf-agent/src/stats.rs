//! What /stats and /metrics report: one record per image on this node, plus agent-wide
//! counters, rendered as JSON (serde, for /stats) or Prometheus text (for /metrics).
//!
//! Prometheus rendering ([`render_prometheus`]) follows text exposition format 0.0.4: every
//! metric family has one `# HELP` and one `# TYPE` line before its samples, label values escape
//! `\`, `"` and newline, counts are exact integers, and other values are Go-style floats
//! (`+Inf`, `-Inf`, `NaN`).
//!
//! Design decisions:
//! - **Per-image series are keyed by `reference` only**, so dashboards can follow an image by
//!   the name it was pushed under. Two records with the same reference (a re-pushed tag whose
//!   old distribution is still seeding) are merged: bytes and peers add up, the load time is the
//!   latest record's. A family never repeats a label set, which Prometheus would reject.
//! - **`imagewolf_images` lists every state, 0 included**, so a `sum by (state)` never has
//!   holes and alerts on `failed > 0` work from the first scrape.
//! - **HTTP paths are route names, never raw request paths** ([`HttpCounters`] is fed by the
//!   API with its fixed route labels and `other`): a scanner probing thousands of URLs must not
//!   create thousands of series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// Where one image is on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    /// Waiting for one of this agent's `--max-torrents` slots; starts when one frees.
    Queued,
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
    /// Refused by `--allow`: never pulled, downloaded or loaded here. `attempts` counts the
    /// refusals of this reference.
    Refused,
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
    /// The distribution's id (see `Distribution::id`), once known.
    pub id: Option<String>,
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
    /// Layers loaded into the runtime ahead of the whole image, while later ones were still
    /// downloading (Docker nodes, archives read from the registry's API).
    pub layers_loaded_ahead: u32,
    /// The registry-native path's counts: blobs of the image, those this node already had,
    /// and the bytes it had to fetch (absent for tarball distributions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<BlobCounts>,
}

/// What a registry-native distribution moved on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlobCounts {
    /// Blobs (config and layers) of this node's platform.
    pub total: u32,
    /// Of those, already in the store here (from an earlier image): not fetched.
    pub present: u32,
    /// Bytes of the blobs this node fetched (from the swarm, or the registry at the origin).
    pub bytes_needed: u64,
}

impl ImageState {
    /// Every state, in lifecycle order.
    pub const ALL: [ImageState; 8] = [
        ImageState::Queued,
        ImageState::Pulling,
        ImageState::Seeding,
        ImageState::Downloading,
        ImageState::Loading,
        ImageState::Loaded,
        ImageState::Failed,
        ImageState::Refused,
    ];

    /// The state's name as serialized (`pulling`, `seeding`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Queued => "queued",
            ImageState::Pulling => "pulling",
            ImageState::Seeding => "seeding",
            ImageState::Downloading => "downloading",
            ImageState::Loading => "loading",
            ImageState::Loaded => "loaded",
            ImageState::Failed => "failed",
            ImageState::Refused => "refused",
        }
    }
}

/// Agent-wide figures for /metrics, besides the per-image records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentMetrics {
    /// Other agents currently known (from discovery).
    pub known_agents: usize,
    /// HTTP responses sent, by (route label, status code).
    pub http: BTreeMap<(String, u16), u64>,
    /// HTTP requests refused: any 4xx answer, plus connections dropped for malformed HTTP or
    /// timeouts (which get no answer we could count by code).
    pub http_rejected: u64,
    /// HTTP connections open (or accepted and waiting for a slot) now.
    pub http_connections: u64,
    /// HTTP connections closed to make room, or turned away, at the connection limit.
    pub http_closed_for_room: u64,
    /// HTTP connections accepted since the start.
    pub http_accepted: u64,
    /// Response body bytes sent, by route label.
    pub http_response_bytes: BTreeMap<String, u64>,
    /// Request body bytes received (as declared by `Content-Length`), by route label.
    pub http_request_bytes: BTreeMap<String, u64>,
    /// Calls this agent made to other agents, and their bytes (the control plane).
    pub peer_calls: crate::peers::PeerTraffic,
    /// The distributor's slots and refusals.
    pub distribution: DistributionMetrics,
    /// The blob store's figures (`--distribution blobs`).
    pub store: Option<crate::store::StoreStats>,
    /// Mirror mode's counters, when on.
    pub mirror: Option<MirrorCounts>,
}

/// Mirror mode's counters (`distributor/mirror`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MirrorCounts {
    /// Tags and manifests resolved against an upstream.
    pub manifests_upstream: u64,
    /// Blobs read from an upstream by this node.
    pub blobs_upstream: u64,
    /// Blobs fetched from other nodes over the swarm.
    pub blobs_from_peers: u64,
    /// Fetches from another node that failed and fell back to the upstream.
    pub peer_fallbacks: u64,
    /// Pulls the mirror could not serve (the runtime went to its next host).
    pub misses: u64,
}

/// Agent-wide distribution figures: `--max-torrents` slots, `--allow` refusals, and the
/// bounds on work and records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DistributionMetrics {
    /// Slots (`--max-torrents`); 0 when unknown.
    pub slots: u64,
    /// Slots held by distributions in progress.
    pub slots_busy: u64,
    /// Distributions waiting for a slot.
    pub queued: u64,
    /// Pushes (webhooks, polling) refused by `--allow` since start.
    pub refused_pushes: u64,
    /// Other agents' announcements refused by `--allow` since start (each distinct one once).
    pub refused_announcements: u64,
    /// Distributions queued or in progress.
    pub working: u64,
    /// Most distributions queued or in progress at once; more are refused as busy.
    pub working_max: u64,
    /// Pushes refused as busy (HTTP 503) since start.
    pub busy_pushes: u64,
    /// Announcements refused as busy (HTTP 503) since start.
    pub busy_announcements: u64,
    /// Downloads failed for making no progress since start.
    pub stalled: u64,
    /// Torrents that stopped seeding early to stay within the seeding limit, since start.
    pub seeding_stopped_early: u64,
    /// Records kept (every state but refused).
    pub records: u64,
    /// Tombstones of forgotten records kept for deduplication.
    pub record_tombstones: u64,
}

/// Thread-safe HTTP counters, updated by the API on every response and snapshotted for
/// /metrics.
#[derive(Debug, Default)]
pub struct HttpCounters {
    // A mutex (not one atomic per series) because the key set grows at runtime; updates are
    // a map lookup and an add, far cheaper than the request they count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    rejected: AtomicU64,
    connections: AtomicU64,
    closed_for_room: AtomicU64,
    accepted: AtomicU64,
    response_bytes: Mutex<BTreeMap<&'static str, u64>>,
    request_bytes: Mutex<BTreeMap<&'static str, u64>>,
}

impl HttpCounters {
    /// Empty counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one response on `route` (a fixed label, never the raw path) with `code`;
    /// 4xx codes also count as rejected.
    pub fn record(&self, route: &'static str, code: u16) {
        {
            let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            let count = requests.entry((route, code)).or_insert(0);
            *count = count.saturating_add(1);
        }
        if (400..500).contains(&code) {
            self.record_rejected();
        }
    }

    /// Counts the body bytes of a request (`request`) and of its response on `route`.
    pub fn record_bytes(&self, route: &'static str, request: u64, response: u64) {
        for (map, bytes) in [
            (&self.request_bytes, request),
            (&self.response_bytes, response),
        ] {
            let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
            let sum = map.entry(route).or_insert(0);
            *sum = sum.saturating_add(bytes);
        }
    }

    /// Counts an accepted connection.
    pub fn record_accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused without a response we sent (malformed HTTP, timeout).
    pub fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Responses counted so far, by (route, code).
    pub fn requests(&self) -> BTreeMap<(String, u16), u64> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(&(route, code), &n)| ((route.to_owned(), code), n))
            .collect()
    }

    /// Sets the number of connections open now (the API's accept loop does).
    pub fn set_connections(&self, n: usize) {
        self.connections.store(n as u64, Ordering::Relaxed);
    }

    /// Counts a connection closed to make room, or turned away, at the connection limit
    /// (also counted as rejected).
    pub fn record_closed_for_room(&self) {
        self.closed_for_room.fetch_add(1, Ordering::Relaxed);
        self.record_rejected();
    }

    /// Requests rejected so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Agent metrics with these counters and the given number of known agents.
    pub fn snapshot(&self, known_agents: usize) -> AgentMetrics {
        AgentMetrics {
            known_agents,
            http: self.requests(),
            http_rejected: self.rejected(),
            http_connections: self.connections.load(Ordering::Relaxed),
            http_closed_for_room: self.closed_for_room.load(Ordering::Relaxed),
            http_accepted: self.accepted.load(Ordering::Relaxed),
            http_response_bytes: by_route(&self.response_bytes),
            http_request_bytes: by_route(&self.request_bytes),
            peer_calls: crate::peers::PeerTraffic::default(),
            distribution: DistributionMetrics::default(),
            store: None,
            mirror: None,
        }
    }
}

fn by_route(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<String, u64> {
    map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(&route, &n)| (route.to_owned(), n))
        .collect()
}

/// A sample value: counts stay exact integers (an `f64` would round bytes past 2^53).
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

/// Per-reference figures after merging records that share a reference.
#[derive(Default)]
struct PerImage {
    bytes_down: u64,
    bytes_up: u64,
    peers: u64,
    size: Option<u64>,
    load_seconds: Option<(f64, f64)>, // (started_at, seconds) of the latest load
}

/// Renders Prometheus text exposition format 0.0.4 (serve as
/// `text/plain; version=0.0.4; charset=utf-8`).
/// Mirror mode's families.
fn render_mirror(out: &mut String, m: &MirrorCounts) {
    let counters = [
        (
            "imagewolf_mirror_manifests_upstream_total",
            "Tags and manifests the mirror resolved against an upstream registry.",
            m.manifests_upstream,
        ),
        (
            "imagewolf_mirror_blobs_upstream_total",
            "Blobs the mirror read from an upstream registry on this node.",
            m.blobs_upstream,
        ),
        (
            "imagewolf_mirror_blobs_from_peers_total",
            "Blobs the mirror fetched from other nodes over BitTorrent.",
            m.blobs_from_peers,
        ),
        (
            "imagewolf_mirror_peer_fallbacks_total",
            "Fetches from other nodes that failed and fell back to the upstream.",
            m.peer_fallbacks,
        ),
        (
            "imagewolf_mirror_misses_total",
            "Pulls the mirror could not serve (the runtime went to its next host).",
            m.misses,
        ),
    ];
    for (name, help, value) in counters {
        family(out, name, "counter", help);
        sample(out, name, &[], Num::Int(value));
    }
}

/// The blob store's families.
fn render_store(out: &mut String, s: &crate::store::StoreStats) {
    let gauges = [
        (
            "imagewolf_store_bytes",
            "Bytes of committed blobs in the store.",
            s.bytes,
        ),
        (
            "imagewolf_store_blobs",
            "Committed blobs in the store.",
            s.blobs,
        ),
        (
            "imagewolf_store_budget_bytes",
            "The store's budget (--cache-size).",
            s.budget,
        ),
        (
            "imagewolf_store_partial_bytes",
            "Bytes of blobs being received.",
            s.partial_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        family(out, name, "gauge", help);
        sample(out, name, &[], Num::Int(value));
    }
    let counters = [
        (
            "imagewolf_store_hits_total",
            "Blob reads served from the store.",
            s.hits,
        ),
        (
            "imagewolf_store_misses_total",
            "Blob reads of blobs the store lacked.",
            s.misses,
        ),
        (
            "imagewolf_store_evictions_total",
            "Blobs evicted to stay within the budget.",
            s.evictions,
        ),
        (
            "imagewolf_store_evicted_bytes_total",
            "Bytes evicted to stay within the budget.",
            s.evicted_bytes,
        ),
        (
            "imagewolf_store_commits_total",
            "Blobs verified and committed.",
            s.commits,
        ),
        (
            "imagewolf_store_rejected_total",
            "Blobs refused because their bytes did not match their digest.",
            s.rejected,
        ),
    ];
    for (name, help, value) in counters {
        family(out, name, "counter", help);
        sample(out, name, &[], Num::Int(value));
    }
}

pub fn render_prometheus(images: &[ImageStats], agent: &AgentMetrics) -> String {
    let mut out = String::with_capacity(1024 + images.len() * 512);
    family(
        &mut out,
        "imagewolf_up",
        "gauge",
        "1 while the agent is serving.",
    );
    sample(&mut out, "imagewolf_up", &[], Num::Int(1));

    family(
        &mut out,
        "imagewolf_known_agents",
        "gauge",
        "Other agents currently known through discovery.",
    );
    sample(
        &mut out,
        "imagewolf_known_agents",
        &[],
        Num::Int(agent.known_agents as u64),
    );

    family(
        &mut out,
        "imagewolf_images",
        "gauge",
        "Images on this node, by state.",
    );
    for state in ImageState::ALL {
        let count = images.iter().filter(|i| i.state == state).count();
        sample(
            &mut out,
            "imagewolf_images",
            &[("state", state.as_str())],
            Num::Int(count as u64),
        );
    }

    let d = &agent.distribution;
    family(
        &mut out,
        "imagewolf_torrent_slots",
        "gauge",
        "Distributions this agent works on at once at most (--max-torrents).",
    );
    sample(&mut out, "imagewolf_torrent_slots", &[], Num::Int(d.slots));
    family(
        &mut out,
        "imagewolf_torrent_slots_busy",
        "gauge",
        "Slots held by distributions in progress (pulling, downloading, verifying, loading).",
    );
    sample(
        &mut out,
        "imagewolf_torrent_slots_busy",
        &[],
        Num::Int(d.slots_busy),
    );
    family(
        &mut out,
        "imagewolf_distributions_queued",
        "gauge",
        "Distributions waiting for a slot.",
    );
    sample(
        &mut out,
        "imagewolf_distributions_queued",
        &[],
        Num::Int(d.queued),
    );
    family(
        &mut out,
        "imagewolf_refused_total",
        "counter",
        "Images refused by the --allow list, by where they came from.",
    );
    sample(
        &mut out,
        "imagewolf_refused_total",
        &[("source", "push")],
        Num::Int(d.refused_pushes),
    );
    sample(
        &mut out,
        "imagewolf_refused_total",
        &[("source", "announcement")],
        Num::Int(d.refused_announcements),
    );
    let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        family(out, name, "gauge", help);
        sample(out, name, &[], Num::Int(value));
    };
    gauge(
        &mut out,
        "imagewolf_distributions_working",
        "Distributions queued or in progress here.",
        d.working,
    );
    gauge(
        &mut out,
        "imagewolf_distributions_working_max",
        "Most distributions queued or in progress at once; more are refused with 503 (busy).",
        d.working_max,
    );
    family(
        &mut out,
        "imagewolf_busy_total",
        "counter",
        "Pushes and announcements refused with 503 because the node was at \
         imagewolf_distributions_working_max (registries and agents retry them).",
    );
    sample(
        &mut out,
        "imagewolf_busy_total",
        &[("source", "push")],
        Num::Int(d.busy_pushes),
    );
    sample(
        &mut out,
        "imagewolf_busy_total",
        &[("source", "announcement")],
        Num::Int(d.busy_announcements),
    );
    family(
        &mut out,
        "imagewolf_downloads_stalled_total",
        "counter",
        "Downloads failed for making no progress (their slot freed).",
    );
    sample(
        &mut out,
        "imagewolf_downloads_stalled_total",
        &[],
        Num::Int(d.stalled),
    );
    family(
        &mut out,
        "imagewolf_seeding_stopped_early_total",
        "counter",
        "Torrents that stopped seeding before --seed-seconds to stay within the seeding limit.",
    );
    sample(
        &mut out,
        "imagewolf_seeding_stopped_early_total",
        &[],
        Num::Int(d.seeding_stopped_early),
    );
    gauge(
        &mut out,
        "imagewolf_records",
        "Image records kept (in progress, seeding, and the most recent finished ones).",
        d.records,
    );
    gauge(
        &mut out,
        "imagewolf_record_tombstones",
        "Forgotten records still remembered for deduplication.",
        d.record_tombstones,
    );

    if let Some(store) = &agent.store {
        render_store(&mut out, store);
    }
    if let Some(mirror) = &agent.mirror {
        render_mirror(&mut out, mirror);
    }

    let mut per_image: BTreeMap<&str, PerImage> = BTreeMap::new();
    for image in images {
        let entry = per_image.entry(image.reference.as_str()).or_default();
        entry.bytes_down = entry.bytes_down.saturating_add(image.bytes_down);
        entry.bytes_up = entry.bytes_up.saturating_add(image.bytes_up);
        entry.peers = entry.peers.saturating_add(image.peers as u64);
        if image.size.is_some() {
            entry.size = image.size;
        }
        if let Some(seconds) = image.load_seconds {
            if entry
                .load_seconds
                .is_none_or(|(at, _)| image.started_at >= at)
            {
                entry.load_seconds = Some((image.started_at, seconds));
            }
        }
    }
    let per_image_family = |out: &mut String,
                            name: &str,
                            kind: &str,
                            help: &str,
                            value: &dyn Fn(&PerImage) -> Option<Num>| {
        family(out, name, kind, help);
        for (reference, figures) in &per_image {
            if let Some(v) = value(figures) {
                sample(out, name, &[("reference", reference)], v);
            }
        }
    };
    per_image_family(
        &mut out,
        "imagewolf_image_bytes_downloaded_total",
        "counter",
        "Payload bytes of the image's tarball received from peers.",
        &|f| Some(Num::Int(f.bytes_down)),
    );
    per_image_family(
        &mut out,
        "imagewolf_image_bytes_uploaded_total",
        "counter",
        "Payload bytes of the image's tarball sent to peers.",
        &|f| Some(Num::Int(f.bytes_up)),
    );
    per_image_family(
        &mut out,
        "imagewolf_image_peers",
        "gauge",
        "BitTorrent peers connected for the image.",
        &|f| Some(Num::Int(f.peers)),
    );
    per_image_family(
        &mut out,
        "imagewolf_image_size_bytes",
        "gauge",
        "Size of the image's tarball, once known.",
        &|f| f.size.map(Num::Int),
    );
    per_image_family(
        &mut out,
        "imagewolf_image_load_seconds",
        "gauge",
        "Seconds the image took to load into the runtime here.",
        &|f| f.load_seconds.map(|(_, s)| Num::Float(s)),
    );

    family(
        &mut out,
        "imagewolf_http_requests_total",
        "counter",
        "HTTP responses sent, by route and status code.",
    );
    for ((path, code), count) in &agent.http {
        let code = code.to_string();
        sample(
            &mut out,
            "imagewolf_http_requests_total",
            &[("path", path), ("code", &code)],
            Num::Int(*count),
        );
    }

    family(
        &mut out,
        "imagewolf_http_response_bytes_total",
        "counter",
        "HTTP response body bytes sent, by route.",
    );
    for (path, bytes) in &agent.http_response_bytes {
        sample(
            &mut out,
            "imagewolf_http_response_bytes_total",
            &[("path", path)],
            Num::Int(*bytes),
        );
    }
    family(
        &mut out,
        "imagewolf_http_request_bytes_total",
        "counter",
        "HTTP request body bytes received (as declared), by route.",
    );
    for (path, bytes) in &agent.http_request_bytes {
        sample(
            &mut out,
            "imagewolf_http_request_bytes_total",
            &[("path", path)],
            Num::Int(*bytes),
        );
    }
    for (name, help, value) in [
        (
            "imagewolf_http_connections_accepted_total",
            "HTTP connections accepted.",
            agent.http_accepted,
        ),
        (
            "imagewolf_agent_calls_total",
            "Requests this agent sent to other agents (rumors, deltas, digests, leases).",
            agent.peer_calls.calls,
        ),
        (
            "imagewolf_agent_call_bytes_sent_total",
            "Bytes of the requests this agent sent to other agents (bodies plus a typical head).",
            agent.peer_calls.bytes_sent,
        ),
        (
            "imagewolf_agent_call_bytes_received_total",
            "Bytes of the replies this agent got from other agents (bodies plus a typical head).",
            agent.peer_calls.bytes_received,
        ),
    ] {
        family(&mut out, name, "counter", help);
        sample(&mut out, name, &[], Num::Int(value));
    }

    family(
        &mut out,
        "imagewolf_http_rejected_total",
        "counter",
        "HTTP requests refused: 4xx answers plus connections dropped for malformed HTTP or timeouts.",
    );
    sample(
        &mut out,
        "imagewolf_http_rejected_total",
        &[],
        Num::Int(agent.http_rejected),
    );
    family(
        &mut out,
        "imagewolf_http_connections",
        "gauge",
        "HTTP connections open, or accepted and waiting for a slot.",
    );
    sample(
        &mut out,
        "imagewolf_http_connections",
        &[],
        Num::Int(agent.http_connections),
    );
    family(
        &mut out,
        "imagewolf_http_connections_closed_for_room_total",
        "counter",
        "HTTP connections closed to make room, or turned away, at the connection limit (the host holding the most gives way).",
    );
    sample(
        &mut out,
        "imagewolf_http_connections_closed_for_room_total",
        &[],
        Num::Int(agent.http_closed_for_room),
    );
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: Num) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = match value {
        Num::Int(n) => writeln!(out, " {n}"),
        Num::Float(x) => writeln!(out, " {}", format_float(x)),
    };
}

/// Label values escape backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed (quotes are literal there).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go-style float text: `+Inf`, `-Inf`, `NaN`, otherwise Rust's shortest round-trip form.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        // Display never uses an exponent, and Prometheus parses the plain decimal exactly.
        format!("{value}")
    }
}

#[cfg(test)]
pub(crate) mod tests;
