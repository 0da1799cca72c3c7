//! What one simulation run models: the swarm, the links, the engine's knobs.

use imagewolf_bt::metainfo::piece_length_for;
use imagewolf_bt::BLOCK_LEN;

/// Every parameter of a run. [`Default`] is a 1,000-node, 1 GiB, 1 Gbit/s swarm of agents
/// that keep seeding after they complete.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Nodes, the initial seed (node 0, the origin) included.
    pub nodes: usize,
    /// Payload size in bytes (S).
    pub size_bytes: u64,
    /// Each node's uplink, Mbit/s (U; 10^6 bit/s).
    pub up_mbit: f64,
    /// Each node's downlink, Mbit/s.
    pub down_mbit: f64,
    /// Fraction of the link rate that carries payload (TCP/IP headers, BitTorrent framing,
    /// acknowledgements). The cluster bench measures it with iperf3 (0.946-0.955 at 50-100
    /// Mbit/s).
    pub goodput: f64,
    /// One-way latency of a link, ms: each node gets an access latency of half this, times a
    /// factor uniform in `1 ± latency_jitter`, and a link's latency is the sum of its ends'.
    pub latency_ms: f64,
    /// Relative spread of the access latencies (0: all equal).
    pub latency_jitter: f64,
    /// Extra delay, ms, of a control message (request, HAVE, cancel) sent while the
    /// sender's uplink is busy: it waits behind the data already in the NIC's queue.
    pub queue_ms: f64,
    /// Heterogeneous links: this fraction of the downloaders has links `slow_factor` times
    /// the others' (up and down).
    pub slow_fraction: f64,
    /// See [`SimConfig::slow_fraction`].
    pub slow_factor: f64,
    /// Heterogeneous links: every downloader's rates are multiplied by a factor uniform in
    /// `1 ± rate_jitter`.
    pub rate_jitter: f64,
    /// Peers each node asks the tracker for and dials (a random subset of the swarm).
    pub numwant: usize,
    /// Most connections a node keeps (dials beyond it are refused).
    pub max_peers: usize,
    /// The tracker hands out the peers it has handed out least often (ties at random), as
    /// `imagewolf_bt::tracker::Swarms` does, so every node is dialled about equally often;
    /// `false`: a uniform random sample, as most trackers.
    pub balanced_tracker: bool,
    /// The spreading seed suggests the pieces it shows (BEP 6), so that a downloader at its
    /// piece-memory cap may still start them (`Picker::suggested`), as the engine does.
    pub suggest: bool,
    /// A downloader clamps each connection's request pipeline to an equal share of its
    /// piece-memory budget among the peers that have a piece it lacks
    /// (`Picker::request_share`), as the engine does.
    pub request_share: bool,
    /// Downloaders that leave (fail) at [`SimConfig::fail_at_s`], chosen at random.
    pub fail_count: usize,
    /// When the failing nodes leave, seconds from the start.
    pub fail_at_s: f64,
    /// A node leaves as soon as it completes (the cluster bench's `download` example exits);
    /// otherwise it keeps seeding (an agent).
    pub leave_on_complete: bool,
    /// When the downloaders start, seconds (process start, tracker announce).
    pub start_s: f64,
    /// Downloaders start uniformly within this many seconds after `start_s`.
    pub start_jitter_s: f64,
    /// The initial seed spreads distinct pieces first (`picker::SeedSpreader`).
    pub spread: bool,
    /// The picker's piece-memory budget per torrent, bytes
    /// (`SessionConfig::piece_memory_per_torrent`).
    pub piece_memory: u64,
    /// Piece length, bytes (a power of two of at least 16 KiB); `None`: what the engine
    /// chooses for the payload (`metainfo::piece_length_for`).
    pub piece_len: Option<u32>,
    /// Payload moved per simulated transfer, in 16 KiB blocks (a power of two, at most a
    /// piece). `None` picks the smallest that keeps nodes x units under
    /// [`SimConfig::unit_budget`].
    pub unit_blocks: Option<u32>,
    /// See [`SimConfig::unit_blocks`].
    pub unit_budget: u64,
    /// SHA-1 throughput for verifying a piece, bytes per second.
    pub hash_bytes_per_s: f64,
    /// Cores the whole swarm shares, for a cluster emulated on one machine (0: no CPU
    /// model). Every unit received costs [`SimConfig::cpu_s_per_gib`] of CPU; the swarm's
    /// aggregate rate is capped at what the cores can process.
    pub cpu_cores: f64,
    /// CPU seconds the swarm spends per GiB received (the bench reports it per run).
    pub cpu_s_per_gib: f64,
    /// Random seed: the same seed gives the same run.
    pub seed: u64,
    /// Give up after this much simulated time, seconds.
    pub max_time_s: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 1000,
            size_bytes: 1 << 30,
            up_mbit: 1000.0,
            down_mbit: 1000.0,
            goodput: 0.95,
            latency_ms: 0.2,
            latency_jitter: 0.5,
            queue_ms: 5.0,
            slow_fraction: 0.0,
            slow_factor: 0.5,
            rate_jitter: 0.0,
            numwant: 20,
            max_peers: 50,
            balanced_tracker: true,
            suggest: true,
            request_share: true,
            fail_count: 0,
            fail_at_s: 0.0,
            leave_on_complete: false,
            start_s: 0.03,
            start_jitter_s: 0.03,
            spread: true,
            piece_memory: 16 << 20,
            piece_len: None,
            unit_blocks: None,
            unit_budget: 50_000_000,
            hash_bytes_per_s: 1.0e9,
            cpu_cores: 0.0,
            cpu_s_per_gib: 0.0,
            seed: 1,
            max_time_s: 3600.0,
        }
    }
}

impl SimConfig {
    /// The real torrent's piece length for this payload (`metainfo::piece_length_for`).
    pub fn piece_len(&self) -> u32 {
        self.piece_len
            .unwrap_or_else(|| piece_length_for(self.size_bytes))
    }

    /// The unit actually used, in blocks: the configured one, or the smallest power of two
    /// within the budget, at most one piece.
    pub fn unit_blocks(&self) -> u32 {
        let per_piece = (self.piece_len() / BLOCK_LEN).max(1);
        if let Some(u) = self.unit_blocks {
            return u.clamp(1, per_piece).next_power_of_two().min(per_piece);
        }
        let mut u = 1u32;
        while u < per_piece {
            let units = self.size_bytes.div_ceil(u64::from(u * BLOCK_LEN));
            if units.saturating_mul(self.nodes as u64) <= self.unit_budget {
                break;
            }
            u *= 2;
        }
        u
    }

    /// S/U in seconds: the time one node needs to receive S through its nominal uplink rate.
    pub fn lower_bound_s(&self) -> f64 {
        self.size_bytes as f64 * 8.0 / (self.up_mbit * 1e6)
    }

    /// Checks the parameters; the message names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("up_mbit", self.up_mbit),
            ("down_mbit", self.down_mbit),
            ("goodput", self.goodput),
            ("slow_factor", self.slow_factor),
            ("hash_bytes_per_s", self.hash_bytes_per_s),
            ("max_time_s", self.max_time_s),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} must be > 0 (got {v})"));
            }
        }
        let fractions = [
            ("goodput", self.goodput),
            ("slow_fraction", self.slow_fraction),
            ("latency_jitter", self.latency_jitter),
            ("rate_jitter", self.rate_jitter),
        ];
        for (name, v) in fractions {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be within 0..=1 (got {v})"));
            }
        }
        let non_negative = [
            ("latency_ms", self.latency_ms),
            ("queue_ms", self.queue_ms),
            ("start_s", self.start_s),
            ("start_jitter_s", self.start_jitter_s),
            ("fail_at_s", self.fail_at_s),
            ("cpu_cores", self.cpu_cores),
            ("cpu_s_per_gib", self.cpu_s_per_gib),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be >= 0 (got {v})"));
            }
        }
        if self.nodes < 2 {
            return Err("nodes must be at least 2 (a seed and a downloader)".into());
        }
        if self.nodes > u32::MAX as usize / 4 {
            return Err("too many nodes".into());
        }
        if self.size_bytes == 0 {
            return Err("size must be > 0".into());
        }
        if let Some(p) = self.piece_len {
            if !p.is_power_of_two() || p < BLOCK_LEN {
                return Err(format!(
                    "piece length must be a power of two of at least 16 KiB (got {p})"
                ));
            }
        }
        if self.numwant == 0 || self.max_peers == 0 {
            return Err("numwant and max_peers must be > 0".into());
        }
        if self.fail_count >= self.nodes - 1 {
            return Err("fail_count must leave at least one downloader".into());
        }
        Ok(())
    }
}
