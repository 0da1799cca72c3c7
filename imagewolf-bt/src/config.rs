//! Session-wide settings, with defaults tuned for a trusted, fast LAN.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::PeerId;

/// Settings for a [`crate::Session`]. Every field is public, so callers change only what
/// they need on top of one of two starting points:
///
/// - [`SessionConfig::default()`]: a general-purpose BitTorrent client. Listens on
///   `0.0.0.0:6881`, a fresh peer id per session, plain seeding (every piece announced at
///   once), traffic sent as best effort.
/// - [`SessionConfig::lan_cluster()`]: the tuning ImageWolf runs with on a cluster's LAN,
///   where every node runs this engine and the first seed's uplink is the bottleneck:
///   listens on `0.0.0.0:6000`, spreads the first seed's pieces
///   ([`SessionConfig::spread_initial_seed`]) and marks peer traffic as bulk
///   ([`SessionConfig::bulk_traffic`]) so the node's other traffic goes first.
///
/// Both unchoke every interested peer (up to 200) and size request pipelines from the
/// measured rate, which suits fast links and costs nothing on slow ones.
///
/// ```
/// use imagewolf_bt::SessionConfig;
/// let general = SessionConfig {
///     listen_addr: "127.0.0.1:0".parse().unwrap(),
///     ..SessionConfig::default()
/// };
/// assert!(!general.spread_initial_seed && !general.bulk_traffic);
///
/// let cluster = SessionConfig::lan_cluster();
/// assert!(cluster.spread_initial_seed && cluster.bulk_traffic);
/// assert_eq!(cluster.listen_addr.port(), 6000);
/// ```
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Where to accept peer connections. Port 0 picks a free port
    /// (see [`crate::Session::listen_addr`]).
    pub listen_addr: SocketAddr,
    /// Our peer id. The default, [`PeerId::PER_SESSION`], makes a fresh BEP 20 id for each
    /// session (see [`crate::Session::peer_id`]); set one only to keep an id across
    /// restarts, and never share one between sessions (they would never connect).
    pub peer_id: PeerId,
    /// The address to announce to trackers (`ip=`), when the listen address is a wildcard and
    /// the tracker would otherwise see a NAT or bridge address.
    pub announce_ip: Option<IpAddr>,
    /// Most connections per torrent (incoming and outgoing together).
    pub max_peers_per_torrent: usize,
    /// Peers asked of a tracker per announce (`numwant`). With `max_peers_per_torrent` it
    /// shapes the peer graph of a large swarm: each peer dials about this many, and accepts
    /// others up to the cap.
    pub tracker_numwant: u32,
    /// Most outgoing connection attempts in flight per torrent.
    pub max_half_open: usize,
    /// How many peers are unchoked at once. On a trusted LAN this is simply "everyone"
    /// (unchoke-all); the limit exists for very large swarms and for sharing a slow uplink.
    pub unchoke_slots: usize,
    /// Our cap on outstanding requests at one peer (also lowered to the peer's `reqq`).
    pub max_outstanding_requests: u32,
    /// The most requests we queue from one peer (advertised to it as our `reqq`); more are
    /// rejected.
    pub max_queued_peer_requests: usize,
    /// Bytes of piece buffers one torrent may hold (pieces being received plus pieces
    /// waiting to be hashed and written), raised to four pieces if pieces are larger. No
    /// new piece is started above it, except up to [`crate::picker::SUGGEST_SLOTS`] (4)
    /// pieces a peer suggested (a spreading seed suggests what it shows; see
    /// `Picker::suggested`), and requests pause while the hashing backlog alone exceeds it;
    /// this bounds a download's memory however many peers feed it.
    pub piece_memory_per_torrent: u64,
    /// Pieces SHA-1-checked at once, each on tokio's blocking pool.
    pub hashing_threads: usize,
    /// Time allowed to connect and exchange handshakes.
    pub handshake_timeout: Duration,
    /// A peer that sends nothing at all for this long is disconnected (keep-alives count).
    pub idle_timeout: Duration,
    /// A peer holding our requests that delivers no block for this long is snubbed: its
    /// requests go back to the picker for others to serve.
    pub snub_timeout: Duration,
    /// We send a keep-alive after this long without sending anything.
    pub keepalive_interval: Duration,
    /// A torrent added complete ([`crate::StartFrom::Complete`]: the swarm's first seed)
    /// shows each peer only a few pieces at a time, least-shown first, until every piece has
    /// left it once (BEP 16-style super-seeding, see [`crate::picker::SeedSpreader`]). Its
    /// upload then carries only distinct pieces while they exist nowhere else. Off: it
    /// announces every piece at once, as a plain seed does.
    ///
    /// Off by default, on in [`SessionConfig::lan_cluster`]: it pays only when the peers
    /// trade among themselves as ImageWolf peers do (peers of other clients get the open
    /// view anyway).
    pub spread_initial_seed: bool,
    /// Marks peer connections as background bulk traffic: DSCP "Lower Effort" (RFC 8622)
    /// in the IP header for the network, and the `TC_PRIO_BULK` socket priority for this
    /// host's own queue (the lowest band of `pfifo_fast`, the kernel's default qdisc).
    /// Why: a node seeding at line rate fills its NIC queue, and whatever else the node
    /// sends waits behind it: the ACKs of the registry download that feeds the seed (its
    /// intake then falls well below the link), the kubelet's and the applications' traffic.
    /// Off (the default; on in [`SessionConfig::lan_cluster`]): peer traffic is sent as
    /// best effort, like everything else.
    pub bulk_traffic: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            listen_addr: "0.0.0.0:6881".parse().expect("valid literal"),
            peer_id: PeerId::PER_SESSION,
            announce_ip: None,
            max_peers_per_torrent: 200,
            tracker_numwant: 200,
            max_half_open: 32,
            unchoke_slots: 200,
            max_outstanding_requests: 500,
            max_queued_peer_requests: 2000,
            piece_memory_per_torrent: 16 << 20,
            hashing_threads: 2,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            snub_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(30),
            spread_initial_seed: false,
            bulk_traffic: false,
        }
    }
}

impl SessionConfig {
    /// ImageWolf's tuning for a cluster's LAN (see the type's docs): the defaults, plus
    /// listening on `0.0.0.0:6000`, spreading the first seed's pieces, marking peer
    /// traffic as bulk, and a bounded random peer graph: 20 peers asked of the tracker, at
    /// most 50 connections per torrent. Every node of a cluster up to 21 nodes connects to
    /// every other; a larger one gets a random graph of 20-50 connections per node, which
    /// is what the swarm simulator's curve at 100-10,000 nodes models, and which keeps a
    /// node's connections and their buffers the same however large the cluster.
    pub fn lan_cluster() -> Self {
        Self {
            listen_addr: "0.0.0.0:6000".parse().expect("valid literal"),
            tracker_numwant: 20,
            max_peers_per_torrent: 50,
            spread_initial_seed: true,
            bulk_traffic: true,
            ..Self::default()
        }
    }
}
