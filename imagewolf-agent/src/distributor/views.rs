//! What the distributor shows: /stats, /metrics, the catch-up listing, the tracker, and the
//! HTTP API's adapter.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imagewolf_bt::tracker::{encode_failure, AnnounceRequest};

use super::{now_secs, Accepted, Distributor, CATCH_UP_WINDOW};

/// Most bytes of torrents and manifests in one catch-up listing (other agents read at most 16 MiB).
pub const LISTING_BYTES_MAX: usize = 8 << 20;
use crate::image::Distribution;
use crate::stats::{DistributionMetrics, ImageState, ImageStats};

impl Distributor {
    /// Recent distributions this node knows (for late joiners), newest first, at most
    /// [`LISTING_BYTES_MAX`] of torrents (a reply other agents read whole). Where this node
    /// still seeds the tarball it lists itself among the seeders, so a late joiner finds
    /// peers even if the origin (and its tracker) is gone.
    pub fn distributions(&self) -> Vec<Distribution> {
        let horizon = now_secs() - CATCH_UP_WINDOW.as_secs_f64();
        let me =
            SocketAddr::new(self.config.advertise, self.session.listen_addr().port()).to_string();
        let records = self.records();
        let mut recent: Vec<_> = records
            .by_key
            .values()
            .filter(|r| r.stats.state != ImageState::Failed)
            .filter_map(|r| Some((r.distribution.as_ref()?, !r.torrents.is_empty())))
            .filter(|(d, _)| d.created as f64 >= horizon)
            .collect();
        recent.sort_by_key(|(d, _)| std::cmp::Reverse(d.created));
        let mut bytes = 0usize;
        recent
            .into_iter()
            .take_while(|(d, _)| {
                bytes = bytes.saturating_add(d.payload_len());
                bytes <= LISTING_BYTES_MAX
            })
            .map(|(d, seeding)| {
                let mut d = d.clone();
                if seeding && !d.seeders.contains(&me) {
                    d.seeders.push(me.clone());
                }
                d
            })
            .collect()
    }

    /// Every image on this node with live transfer figures.
    pub fn images(&self) -> Vec<ImageStats> {
        let records = self.records();
        let mut out: Vec<ImageStats> = records
            .by_key
            .values()
            .map(|r| {
                let mut s = r.stats.clone();
                if !r.torrents.is_empty() {
                    s.bytes_down = 0;
                    s.bytes_up = 0;
                    s.peers = 0;
                    for t in &r.torrents {
                        let live = t.stats();
                        let (down, up) = r.moved(t);
                        s.bytes_down += down;
                        s.bytes_up += up;
                        // Each segment has its own connections to the same agents.
                        s.peers = s.peers.max(live.peers);
                    }
                }
                s
            })
            .chain(records.refused.iter().cloned())
            .collect();
        out.sort_by(|a, b| a.started_at.total_cmp(&b.started_at));
        out
    }

    /// Slots, refusals and the bounds on work and records, for /metrics.
    pub fn distribution_metrics(&self) -> DistributionMetrics {
        let records = self.records();
        let counts = records.counts();
        let slots = self.config.max_torrents.max(1);
        DistributionMetrics {
            slots: slots as u64,
            slots_busy: slots.saturating_sub(self.slots.available_permits()) as u64,
            queued: records
                .by_key
                .values()
                .filter(|r| r.stats.state == ImageState::Queued)
                .count() as u64,
            refused_pushes: records.refused_pushes,
            refused_announcements: records.refused_announcements,
            working: counts.working as u64,
            working_max: self.max_working() as u64,
            busy_pushes: records.busy_pushes,
            busy_announcements: records.busy_announcements,
            stalled: records.stalled,
            seeding_stopped_early: records.seeding_cut,
            records: counts.records as u64,
            record_tombstones: counts.forgotten as u64,
        }
    }

    /// This agent's calls to the other agents so far (the control plane's cost).
    pub fn peer_traffic(&self) -> crate::peers::PeerTraffic {
        self.client.traffic()
    }

    /// Number of other agents currently known.
    pub fn known_agents(&self) -> usize {
        self.other_agents().len()
    }

    /// Answers a tracker announce (`GET /announce?...`) for the torrents this agent started.
    pub fn tracker_announce(&self, query: &str, remote: IpAddr) -> Vec<u8> {
        let req = match AnnounceRequest::from_query(query) {
            Ok(r) => r,
            Err(e) => return encode_failure(&e.to_string()),
        };
        let mut swarms = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        match swarms.announce(&req, remote, std::time::Instant::now()) {
            Ok(reply) => reply.encode(req.compact),
            Err(e) => encode_failure(&e.to_string()),
        }
    }
}

/// The HTTP API's view of a distributor (`api::serve` takes an `Arc<dyn AgentApi>`).
pub struct DistributorApi(pub Arc<Distributor>);

impl crate::api::AgentApi for DistributorApi {
    fn on_push(&self, event: crate::notification::PushEvent) -> crate::api::PushOutcome {
        self.0.on_push(event.image, event.event_id).into()
    }

    fn on_distribution(&self, d: Distribution) -> crate::api::PushOutcome {
        self.0.on_distribution(d).into()
    }

    fn distributions(&self) -> Vec<Distribution> {
        self.0.distributions()
    }

    fn images(&self) -> Vec<ImageStats> {
        self.0.images()
    }

    fn known_agents(&self) -> usize {
        self.0.known_agents()
    }

    fn tracker_announce(&self, query: &str, remote: IpAddr) -> Vec<u8> {
        self.0.tracker_announce(query, remote)
    }

    fn distribution_metrics(&self) -> DistributionMetrics {
        self.0.distribution_metrics()
    }

    fn torrent_file(&self, info_hash: &str) -> Option<Vec<u8>> {
        self.0.torrent_file(info_hash)
    }

    fn store_stats(&self) -> Option<crate::store::StoreStats> {
        self.0.blob_path().map(|p| p.store.stats())
    }

    fn mirror_lease(
        &self,
        digest: &str,
        requester: std::net::SocketAddr,
    ) -> Option<crate::image::LeaseAnswer> {
        self.0.mirror_lease(digest, requester)
    }

    fn blob_offer(&self, digest: &str) -> Option<crate::image::BlobOffer> {
        self.0.mirror_offer(digest)
    }

    fn mirror_counts(&self) -> Option<crate::stats::MirrorCounts> {
        self.0.mirror().map(|(_, m)| m.counts())
    }

    fn peer_traffic(&self) -> crate::peers::PeerTraffic {
        self.0.peer_traffic()
    }

    fn on_offers(&self, offers: &super::gossip::Offers) -> super::gossip::Wants {
        self.0.on_offers(offers)
    }

    fn on_delta(&self, from: usize, relay: bool, delta: Distribution) -> crate::api::PushOutcome {
        self.0.on_delta(from, relay, delta).into()
    }

    fn digest(&self, their_hash: Option<&str>) -> Option<super::gossip::Digest> {
        Some(self.0.digest(their_hash))
    }

    fn distribution_since(&self, id: &str, from: usize) -> Option<Distribution> {
        self.0.distribution_since(id, from)
    }
}

impl From<Accepted> for crate::api::PushOutcome {
    fn from(a: Accepted) -> Self {
        match a {
            Accepted::Started => Self::Started,
            Accepted::Duplicate => Self::Duplicate,
            Accepted::Refused(why) => Self::Ignored(why),
            Accepted::Busy(why) => Self::Busy(why),
        }
    }
}
