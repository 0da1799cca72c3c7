//! The tracker's swarm registry (sans-IO): who is in which torrent, and who gets told about
//! whom. Time is passed in explicitly (`now`), so expiry is testable without sleeping.
//!
//! Invariants:
//! - A swarm never holds an expired peer after it was announced to, and an empty swarm is
//!   removed at once, so `max_torrents` counts live torrents.
//! - A swarm holds at most `max_peers_per_torrent` peers and the registry at most
//!   `max_torrents` swarms: memory is bounded whatever announcers send. A full swarm still
//!   answers a new peer (with peers it can dial) but does not register it; refusing the
//!   newcomer rather than evicting an old peer means a flood of fake peer ids cannot push
//!   real peers out.
//! - A reply hands out the peers handed out least often so far (ties at random), so every
//!   peer is dialled about equally often and the graph the replies make is near-regular:
//!   with uniform random replies the nodes dialled least were the swarm's slowest (the
//!   simulator, README "Swarm simulator"). A newcomer starts at its swarm's average count,
//!   so new registrations are not preferred over the peers already there.
//! - A reply never contains the requesting peer: neither its peer id nor its endpoint (a
//!   restarted client announces a new peer id from the same `ip:port`; the old entry is
//!   dropped, not handed back to it).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use thiserror::Error;

use super::query::{AnnounceRequest, Event};
use super::response::{AnnounceReply, ReplyPeer};
use crate::{InfoHash, PeerId};

/// Peers handed out when the client does not say how many it wants.
pub const DEFAULT_NUMWANT: usize = 50;
/// Most peers handed out in one reply, whatever `numwant` says.
pub const MAX_NUMWANT: usize = 200;

/// Tracker settings. Start from [`TrackerConfig::default`] and change fields (the struct is
/// `#[non_exhaustive]`, so settings can be added without breaking callers):
///
/// ```
/// use std::time::Duration;
/// let mut config = imagewolf_bt::tracker::TrackerConfig::default();
/// config.interval = Duration::from_secs(10);
/// assert!(config.seed_interval >= config.interval);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrackerConfig {
    /// Re-announce interval told to clients (whole seconds on the wire, at least 1).
    /// `min interval` is half of it.
    pub interval: Duration,
    /// Re-announce interval told to a client that has everything (`left=0`). A seed needs
    /// no peers from the tracker (downloaders dial it); it announces only to stay listed,
    /// so in an idle cluster, where every peer is a seed, this sets the tracker's load.
    /// Never shorter than `interval`.
    pub seed_interval: Duration,
    /// A peer not heard from for this long is dropped (about twice `interval`); a peer told
    /// a longer interval is kept for twice that.
    pub peer_ttl: Duration,
    /// Most peers registered per torrent.
    pub max_peers_per_torrent: usize,
    /// Most torrents tracked at once.
    pub max_torrents: usize,
    /// Whether a peer is registered at the address its `ip=` parameter names instead of the
    /// address its announce came from. Off by default, and it should stay off: anyone who
    /// can reach the tracker could then make it hand every peer any address it likes (a
    /// cloud metadata service, a host's admin port, a victim to flood with connections),
    /// with the tracker lending it credibility. The connection's source address cannot be
    /// forged that way (TCP needs the handshake to complete). Turn it on only when every
    /// client that can reach the tracker is trusted and some announce through NAT or from
    /// an address they cannot be dialled on.
    pub trust_ip_param: bool,
}

impl Default for TrackerConfig {
    /// 60 s interval (300 s for seeds), 120 s peer lifetime, 2000 peers per torrent, 1000
    /// torrents: a few hundred MiB at worst, and room for any LAN cluster. `ip=` is ignored.
    fn default() -> Self {
        TrackerConfig {
            interval: Duration::from_secs(60),
            seed_interval: Duration::from_secs(300),
            peer_ttl: Duration::from_secs(120),
            max_peers_per_torrent: 2000,
            max_torrents: 1000,
            trust_ip_param: false,
        }
    }
}

/// Why the registry refused an announce.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SwarmError {
    /// A new torrent was announced while `max_torrents` are tracked.
    #[error("tracker is full")]
    TooManyTorrents,
}

#[derive(Clone, Debug)]
struct Entry {
    addr: SocketAddr,
    left: u64,
    last_seen: Instant,
    /// How long it stays listed after `last_seen` (twice the interval it was told, at least
    /// `peer_ttl`).
    ttl: Duration,
    /// Replies it was handed out in (saturating): replies prefer the least handed out.
    handed_out: u32,
}

/// All swarms the tracker knows.
#[derive(Debug)]
pub struct Swarms {
    config: TrackerConfig,
    torrents: HashMap<InfoHash, HashMap<PeerId, Entry>>,
    rng: SmallRng,
}

impl Swarms {
    /// An empty registry.
    pub fn new(config: TrackerConfig) -> Self {
        Swarms {
            config,
            torrents: HashMap::new(),
            rng: rand::make_rng(),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Handle one announce at time `now`. `remote` is the address the announce came from
    /// (the TCP connection's source): the peer is registered there, at its `port=`. The
    /// request's `ip=` is used instead only if [`TrackerConfig::trust_ip_param`] is on.
    pub fn announce(
        &mut self,
        req: &AnnounceRequest,
        remote: IpAddr,
        now: Instant,
    ) -> Result<AnnounceReply, SwarmError> {
        let ip = match req.ip {
            Some(ip) if self.config.trust_ip_param => ip,
            _ => remote,
        };
        let addr = SocketAddr::new(ip.to_canonical(), req.port);
        let interval = if req.left == 0 {
            self.config.seed_interval.max(self.config.interval)
        } else {
            self.config.interval
        };
        let ttl = self.config.peer_ttl.max(interval.saturating_mul(2));

        if !self.torrents.contains_key(&req.info_hash) {
            if req.event == Event::Stopped {
                return Ok(self.reply(interval, 0, 0, Vec::new()));
            }
            if self.torrents.len() >= self.config.max_torrents {
                self.purge(now);
                if self.torrents.len() >= self.config.max_torrents {
                    return Err(SwarmError::TooManyTorrents);
                }
            }
        }
        let swarm = self.torrents.entry(req.info_hash).or_default();
        swarm.retain(|id, e| is_live(e, now) && (id == &req.peer_id || e.addr != addr));

        if req.event == Event::Stopped {
            swarm.remove(&req.peer_id);
        } else if let Some(entry) = swarm.get_mut(&req.peer_id) {
            *entry = Entry {
                addr,
                left: req.left,
                last_seen: now,
                ttl,
                handed_out: entry.handed_out,
            };
        } else if swarm.len() < self.config.max_peers_per_torrent {
            // A newcomer counts as handed out as often as the swarm's average, not zero
            // times: otherwise fresh registrations (a flood of fake peer ids) would be
            // handed out before every real peer.
            let total: u64 = swarm.values().map(|e| u64::from(e.handed_out)).sum();
            let least = u32::try_from(total / swarm.len().max(1) as u64).unwrap_or(u32::MAX);
            swarm.insert(
                req.peer_id,
                Entry {
                    addr,
                    left: req.left,
                    last_seen: now,
                    ttl,
                    handed_out: least,
                },
            );
        }

        let seeds = swarm.values().filter(|e| e.left == 0).count();
        let leechers = swarm.len().saturating_sub(seeds);
        let mut peers = Vec::new();
        if req.event != Event::Stopped {
            let want = req
                .numwant
                .map_or(DEFAULT_NUMWANT, |n| {
                    usize::try_from(n).unwrap_or(MAX_NUMWANT)
                })
                .min(MAX_NUMWANT);
            let mut cands: Vec<(u32, PeerId)> = swarm
                .iter()
                .filter(|(id, e)| **id != req.peer_id && e.addr != addr)
                .map(|(id, e)| (e.handed_out, *id))
                .collect();
            if cands.len() > want {
                // The least handed out, ties at random: shuffle, then partition around the
                // want-th smallest count. Every peer is then dialled about equally often,
                // so the random graph the replies make is near-regular (the simulator's
                // `--balanced-tracker`: the slowest nodes were those dialled least).
                cands.shuffle(&mut self.rng);
                if want > 0 {
                    cands.select_nth_unstable_by_key(want - 1, |c| c.0);
                }
                cands.truncate(want);
            }
            for (_, id) in &cands {
                if let Some(e) = swarm.get_mut(id) {
                    e.handed_out = e.handed_out.saturating_add(1);
                    peers.push(ReplyPeer {
                        addr: e.addr,
                        peer_id: (!req.no_peer_id).then_some(*id),
                    });
                }
            }
        }
        if swarm.is_empty() {
            self.torrents.remove(&req.info_hash);
        }
        Ok(self.reply(interval, seeds, leechers, peers))
    }

    fn reply(
        &self,
        interval: Duration,
        seeds: usize,
        leechers: usize,
        peers: Vec<ReplyPeer>,
    ) -> AnnounceReply {
        AnnounceReply {
            interval,
            min_interval: Some((interval / 2).max(Duration::from_secs(1))),
            complete: u32::try_from(seeds).unwrap_or(u32::MAX),
            incomplete: u32::try_from(leechers).unwrap_or(u32::MAX),
            peers,
            warning: None,
        }
    }

    /// Drop every peer not heard from within its lifetime (`peer_ttl`, or twice the
    /// interval it was told) of `now`, and empty swarms.
    pub fn purge(&mut self, now: Instant) {
        self.torrents.retain(|_, swarm| {
            swarm.retain(|_, e| is_live(e, now));
            !swarm.is_empty()
        });
    }

    /// Live peers of one torrent at `now`.
    pub fn peer_count(&self, info_hash: &InfoHash, now: Instant) -> usize {
        self.torrents
            .get(info_hash)
            .map_or(0, |s| s.values().filter(|e| is_live(e, now)).count())
    }

    /// Torrents currently tracked (including ones whose peers expired but were not purged).
    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }
}

fn is_live(e: &Entry, now: Instant) -> bool {
    now.saturating_duration_since(e.last_seen) < e.ttl
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: InfoHash = InfoHash([7; 20]);
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn config() -> TrackerConfig {
        TrackerConfig {
            interval: Duration::from_secs(10),
            seed_interval: Duration::from_secs(40),
            peer_ttl: Duration::from_secs(20),
            max_peers_per_torrent: 300,
            max_torrents: 3,
            trust_ip_param: false,
        }
    }

    fn req(peer: u8, port: u16, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: T,
            peer_id: PeerId([peer; 20]),
            port,
            uploaded: 0,
            downloaded: 0,
            left: 100,
            event,
            compact: true,
            no_peer_id: false,
            numwant: None,
            ip: None,
        }
    }

    fn ports(reply: &AnnounceReply) -> Vec<u16> {
        let mut p: Vec<u16> = reply.peers.iter().map(|p| p.addr.port()).collect();
        p.sort();
        p
    }

    /// 200 peers register, then each asks for 20: with uniform random replies the times a
    /// peer is handed out spread like a binomial (about 10 to 30); balanced, every peer is
    /// handed out 20 times, give or take one.
    #[test]
    fn replies_hand_out_every_peer_about_equally_often() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        let n = 200u16;
        let announce = |s: &mut Swarms, i: u16, numwant: u32| {
            let mut r = req(0, 2000 + i, Event::Started);
            r.peer_id = PeerId([
                (i % 251) as u8,
                (i / 251) as u8,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
            ]);
            r.numwant = Some(numwant);
            s.announce(&r, LOCAL, now).unwrap()
        };
        for i in 0..n {
            announce(&mut s, i, 0);
        }
        let mut times = vec![0u32; usize::from(n)];
        for i in 0..n {
            let reply = announce(&mut s, i, 20);
            assert_eq!(reply.peers.len(), 20);
            for p in &reply.peers {
                assert_ne!(p.addr.port(), 2000 + i, "never the requester");
                times[usize::from(p.addr.port() - 2000)] += 1;
            }
        }
        let (lo, hi) = (times.iter().min().unwrap(), times.iter().max().unwrap());
        assert!(hi - lo <= 2, "handed out between {lo} and {hi} times");
    }

    /// A newcomer is not preferred over peers that were handed out already: a flood of
    /// fresh peer ids cannot take over the replies.
    #[test]
    fn newcomers_start_at_the_average_handed_out_count() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        for i in 1..=10u8 {
            s.announce(&req(i, 1000 + u16::from(i), Event::Started), LOCAL, now)
                .unwrap();
        }
        // Everyone handed out at least 3 times.
        for _ in 0..3 {
            let mut r = req(200, 9000, Event::None);
            r.numwant = Some(10);
            s.announce(&r, LOCAL, now).unwrap();
        }
        for i in 11..=20u8 {
            s.announce(&req(i, 1000 + u16::from(i), Event::Started), LOCAL, now)
                .unwrap();
        }
        let mut old = 0;
        for _ in 0..20 {
            let mut r = req(201, 9001, Event::None);
            r.numwant = Some(5);
            let reply = s.announce(&r, LOCAL, now).unwrap();
            old += reply.peers.iter().filter(|p| p.addr.port() <= 1010).count();
        }
        // Old and new peers (and the two askers) share the 100 slots about equally.
        assert!((30..=70).contains(&old), "old peers got {old} of 100 slots");
    }

    #[test]
    fn peers_see_each_other_but_not_themselves() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        let r1 = s
            .announce(&req(1, 1001, Event::Started), LOCAL, now)
            .unwrap();
        assert!(r1.peers.is_empty());
        assert_eq!((r1.complete, r1.incomplete), (0, 1));
        let mut seed = req(2, 1002, Event::Started);
        seed.left = 0;
        let r2 = s.announce(&seed, LOCAL, now).unwrap();
        assert_eq!(ports(&r2), [1001]);
        assert_eq!(r2.peers[0].peer_id, Some(PeerId([1; 20])));
        assert_eq!((r2.complete, r2.incomplete), (1, 1));
        // A seed only needs to stay listed: told the seed interval.
        assert_eq!(r2.interval, Duration::from_secs(40));
        assert_eq!(r2.min_interval, Some(Duration::from_secs(20)));
        let r1 = s.announce(&req(1, 1001, Event::None), LOCAL, now).unwrap();
        assert_eq!(ports(&r1), [1002]);
        assert_eq!(r1.interval, Duration::from_secs(10));
        assert_eq!(r1.min_interval, Some(Duration::from_secs(5)));
    }

    #[test]
    fn a_seed_stays_listed_for_twice_its_longer_interval() {
        let mut s = Swarms::new(config());
        let t0 = Instant::now();
        let mut seed = req(2, 1002, Event::Started);
        seed.left = 0;
        s.announce(&seed, LOCAL, t0).unwrap();
        s.announce(&req(1, 1001, Event::Started), LOCAL, t0)
            .unwrap();
        // Past peer_ttl (20 s): the downloader is gone, the seed (told 40 s) is not.
        let later = t0 + Duration::from_secs(30);
        let r = s
            .announce(&req(3, 1003, Event::Started), LOCAL, later)
            .unwrap();
        assert_eq!(ports(&r), [1002]);
        // The seed stays until twice its interval (80 s), the latest downloader 20 s.
        assert_eq!(s.peer_count(&T, t0 + Duration::from_secs(79)), 1);
        assert_eq!(s.peer_count(&T, t0 + Duration::from_secs(81)), 0);
    }

    #[test]
    fn peers_are_registered_at_their_source_address_whatever_ip_says() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        // An outsider names the cloud metadata service as its address.
        let mut a = req(1, 80, Event::Started);
        a.ip = Some("169.254.169.254".parse().unwrap());
        let source: IpAddr = "10.7.7.7".parse().unwrap();
        s.announce(&a, source, now).unwrap();
        let mapped: IpAddr = "::ffff:10.9.9.9".parse().unwrap();
        s.announce(&req(2, 1002, Event::Started), mapped, now)
            .unwrap();
        let r = s
            .announce(&req(3, 1003, Event::Started), LOCAL, now)
            .unwrap();
        let mut addrs: Vec<String> = r.peers.iter().map(|p| p.addr.to_string()).collect();
        addrs.sort();
        assert_eq!(addrs, ["10.7.7.7:80", "10.9.9.9:1002"]);
    }

    #[test]
    fn ip_param_is_honoured_only_when_trusted_explicitly() {
        let mut s = Swarms::new(TrackerConfig {
            trust_ip_param: true,
            ..config()
        });
        let now = Instant::now();
        let mut a = req(1, 1001, Event::Started);
        a.ip = Some("10.1.2.3".parse().unwrap());
        s.announce(&a, LOCAL, now).unwrap();
        let r = s
            .announce(&req(3, 1003, Event::Started), LOCAL, now)
            .unwrap();
        let addrs: Vec<String> = r.peers.iter().map(|p| p.addr.to_string()).collect();
        assert_eq!(addrs, ["10.1.2.3:1001"]);
        assert!(!TrackerConfig::default().trust_ip_param);
    }

    #[test]
    fn restarted_peer_replaces_its_old_entry() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        s.announce(&req(1, 1001, Event::Started), LOCAL, now)
            .unwrap();
        let r = s
            .announce(&req(9, 1001, Event::Started), LOCAL, now)
            .unwrap();
        assert!(r.peers.is_empty());
        assert_eq!(s.peer_count(&T, now), 1);
    }

    #[test]
    fn stopped_removes_the_peer_and_empty_swarms() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        s.announce(&req(1, 1001, Event::Started), LOCAL, now)
            .unwrap();
        s.announce(&req(2, 1002, Event::Started), LOCAL, now)
            .unwrap();
        let r = s
            .announce(&req(1, 1001, Event::Stopped), LOCAL, now)
            .unwrap();
        assert!(r.peers.is_empty());
        assert_eq!(s.peer_count(&T, now), 1);
        s.announce(&req(2, 1002, Event::Stopped), LOCAL, now)
            .unwrap();
        assert_eq!(s.torrent_count(), 0);
        // Stopping in an unknown torrent creates nothing.
        s.announce(&req(2, 1002, Event::Stopped), LOCAL, now)
            .unwrap();
        assert_eq!(s.torrent_count(), 0);
    }

    #[test]
    fn completed_turns_a_leecher_into_a_seed() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        s.announce(&req(1, 1001, Event::Started), LOCAL, now)
            .unwrap();
        let mut done = req(1, 1001, Event::Completed);
        done.left = 0;
        let r = s.announce(&done, LOCAL, now).unwrap();
        assert_eq!((r.complete, r.incomplete), (1, 0));
    }

    #[test]
    fn peers_expire_after_ttl() {
        let mut s = Swarms::new(config());
        let t0 = Instant::now();
        s.announce(&req(1, 1001, Event::Started), LOCAL, t0)
            .unwrap();
        let t1 = t0 + Duration::from_secs(15);
        s.announce(&req(2, 1002, Event::Started), LOCAL, t1)
            .unwrap();
        assert_eq!(s.peer_count(&T, t1), 2);
        // Peer 1 expires at t0 + 20 s; peer 2 is still live then.
        let t2 = t0 + Duration::from_secs(21);
        assert_eq!(s.peer_count(&T, t2), 1);
        let r = s.announce(&req(3, 1003, Event::None), LOCAL, t2).unwrap();
        assert_eq!(ports(&r), [1002]);
        // A re-announce keeps a peer alive.
        s.announce(&req(2, 1002, Event::None), LOCAL, t2).unwrap();
        let t3 = t2 + Duration::from_secs(19);
        assert_eq!(s.peer_count(&T, t3), 2);
        s.purge(t3 + Duration::from_secs(30));
        assert_eq!(s.torrent_count(), 0);
    }

    #[test]
    fn numwant_default_cap_and_random_subset() {
        let mut s = Swarms::new(config());
        let now = Instant::now();
        for i in 0..250u16 {
            let mut r = req(0, 2000 + i, Event::Started);
            r.peer_id.0[..2].copy_from_slice(&i.to_be_bytes());
            r.peer_id.0[2] = 1;
            s.announce(&r, LOCAL, now).unwrap();
        }
        assert_eq!(s.peer_count(&T, now), 250);
        let mut me = req(0xee, 9999, Event::None);
        assert_eq!(
            s.announce(&me, LOCAL, now).unwrap().peers.len(),
            DEFAULT_NUMWANT
        );
        me.numwant = Some(u32::MAX);
        assert_eq!(
            s.announce(&me, LOCAL, now).unwrap().peers.len(),
            MAX_NUMWANT
        );
        me.numwant = Some(0);
        assert!(s.announce(&me, LOCAL, now).unwrap().peers.is_empty());
        me.numwant = Some(10);
        let a = ports(&s.announce(&me, LOCAL, now).unwrap());
        let b = ports(&s.announce(&me, LOCAL, now).unwrap());
        assert_eq!((a.len(), b.len()), (10, 10));
        assert!(!a.contains(&9999));
        // 10 of 250 twice in a row: the same subset by chance is vanishingly unlikely.
        assert_ne!(a, b);
    }

    #[test]
    fn limits_bound_memory() {
        let mut cfg = config();
        cfg.max_peers_per_torrent = 2;
        let mut s = Swarms::new(cfg);
        let now = Instant::now();
        s.announce(&req(1, 1001, Event::Started), LOCAL, now)
            .unwrap();
        s.announce(&req(2, 1002, Event::Started), LOCAL, now)
            .unwrap();
        // The third peer is answered but not registered.
        let r = s
            .announce(&req(3, 1003, Event::Started), LOCAL, now)
            .unwrap();
        assert_eq!(ports(&r), [1001, 1002]);
        assert_eq!(s.peer_count(&T, now), 2);

        for t in 1..=2u8 {
            let mut other = req(1, 1001, Event::Started);
            other.info_hash = InfoHash([t; 20]);
            s.announce(&other, LOCAL, now).unwrap();
        }
        let mut fourth = req(1, 1001, Event::Started);
        fourth.info_hash = InfoHash([9; 20]);
        assert_eq!(
            s.announce(&fourth, LOCAL, now),
            Err(SwarmError::TooManyTorrents)
        );
        // Once the others expire, there is room again.
        let later = now + Duration::from_secs(60);
        assert!(s.announce(&fourth, LOCAL, later).is_ok());
        assert_eq!(s.torrent_count(), 1);
    }
}
