//! Who reads a blob from the upstream registry when several nodes miss it at once (sans-IO).
//!
//! Every agent computes the same *coordinator* for a blob: the agent with the highest
//! rendezvous score of (blob digest, agent address) among those it knows
//! ([`coordinator`]). Agents that miss the blob ask the coordinator for a lease; the first
//! gets it and reads the blob from the upstream, seeding each chunk as it lands; every other
//! one is told where the blob comes from and fetches it over the swarm ([`Leases`]). So the
//! upstream serves each blob once however many nodes pull at once, and the reads of one
//! image's blobs spread over several nodes. Agents that disagree on the membership for a
//! moment may pick two coordinators: the blob is then read twice, never lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::store::Digest;

/// How long a lease names its holder as the blob's source: long enough for the holder to
/// read the blob and for a scale-out's stragglers to find it there. A holder that fails
/// makes its requesters read the upstream themselves, so a stale lease costs a read, not a
/// pull.
pub const LEASE_TTL: Duration = Duration::from_secs(600);
/// Leases a coordinator remembers at most (the oldest is dropped first).
pub const MAX_LEASES: usize = 4096;

/// The agent that coordinates `digest` among `agents` (highest rendezvous score; `None`
/// when there are none). Every agent with the same membership picks the same one, and a
/// membership change moves only the blobs of the agents that came or went.
pub fn coordinator(digest: &Digest, agents: &[SocketAddr]) -> Option<SocketAddr> {
    agents
        .iter()
        .copied()
        .max_by_key(|agent| score(digest, agent))
}

fn score(digest: &Digest, agent: &SocketAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(digest.as_str().as_bytes());
    h.update(b"\0");
    h.update(agent.to_string().as_bytes());
    h.finalize().into()
}

/// A coordinator's answer to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Read the blob from the upstream yourself (you hold the lease).
    Fetch,
    /// The agent at this API address reads or has the blob: fetch it from there.
    From(SocketAddr),
}

/// The leases one coordinator granted: blob -> the agent reading (or holding) it.
#[derive(Debug, Default)]
pub struct Leases {
    by_blob: HashMap<Digest, (SocketAddr, Instant)>,
}

impl Leases {
    /// `requester` asks for `digest` at `now`: the first asker (or the first after the lease
    /// expired, or after its holder was reported failed) gets [`Grant::Fetch`]; every other
    /// one is sent to the holder.
    pub fn ask(&mut self, digest: &Digest, requester: SocketAddr, now: Instant) -> Grant {
        if let Some((holder, since)) = self.by_blob.get(digest) {
            if now.saturating_duration_since(*since) < LEASE_TTL {
                return if *holder == requester {
                    Grant::Fetch
                } else {
                    Grant::From(*holder)
                };
            }
        }
        if self.by_blob.len() >= MAX_LEASES && !self.by_blob.contains_key(digest) {
            self.drop_oldest(now);
        }
        self.by_blob.insert(digest.clone(), (requester, now));
        Grant::Fetch
    }

    /// The number of leases remembered.
    pub fn len(&self) -> usize {
        self.by_blob.len()
    }

    /// No lease remembered.
    pub fn is_empty(&self) -> bool {
        self.by_blob.is_empty()
    }

    fn drop_oldest(&mut self, now: Instant) {
        self.by_blob
            .retain(|_, (_, since)| now.saturating_duration_since(*since) < LEASE_TTL);
        if self.by_blob.len() >= MAX_LEASES {
            if let Some(oldest) = self
                .by_blob
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(d, _)| d.clone())
            {
                self.by_blob.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u32) -> Digest {
        Digest::of(&i.to_be_bytes())
    }

    fn agent(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7000))
    }

    #[test]
    fn every_agent_picks_the_same_coordinator_whatever_the_order() {
        let mut agents: Vec<SocketAddr> = (1..=9).map(agent).collect();
        let d = digest(7);
        let picked = coordinator(&d, &agents).unwrap();
        agents.reverse();
        assert_eq!(coordinator(&d, &agents), Some(picked));
        assert_eq!(coordinator(&d, &[]), None);
    }

    #[test]
    fn blobs_spread_over_the_agents_and_a_departure_moves_only_its_own() {
        let agents: Vec<SocketAddr> = (1..=8).map(agent).collect();
        let mut per_agent = HashMap::new();
        for i in 0..800 {
            *per_agent
                .entry(coordinator(&digest(i), &agents).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(per_agent.len(), 8, "every agent coordinates some blobs");
        assert!(
            per_agent.values().all(|&n| (50..=150).contains(&n)),
            "{per_agent:?}"
        );
        let gone = agent(3);
        let rest: Vec<SocketAddr> = agents.iter().copied().filter(|a| *a != gone).collect();
        for i in 0..800 {
            let before = coordinator(&digest(i), &agents).unwrap();
            let after = coordinator(&digest(i), &rest).unwrap();
            assert!(
                before == gone || before == after,
                "blob {i} moved needlessly"
            );
        }
    }

    #[test]
    fn the_first_asker_fetches_and_the_others_are_sent_to_it() {
        let mut leases = Leases::default();
        let now = Instant::now();
        let d = digest(1);
        assert_eq!(leases.ask(&d, agent(1), now), Grant::Fetch);
        assert_eq!(leases.ask(&d, agent(2), now), Grant::From(agent(1)));
        assert_eq!(leases.ask(&d, agent(3), now), Grant::From(agent(1)));
        // The holder asking again (a retry) keeps its lease.
        assert_eq!(leases.ask(&d, agent(1), now), Grant::Fetch);
        // Another blob has its own lease.
        assert_eq!(leases.ask(&digest(2), agent(2), now), Grant::Fetch);
        // Expired: the next asker reads it.
        let later = now + LEASE_TTL;
        assert_eq!(leases.ask(&d, agent(3), later), Grant::Fetch);
        assert_eq!(leases.ask(&d, agent(1), later), Grant::From(agent(3)));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut leases = Leases::default();
        let now = Instant::now();
        for i in 0..(MAX_LEASES as u32 + 100) {
            leases.ask(
                &digest(i),
                agent(1),
                now + Duration::from_millis(u64::from(i)),
            );
        }
        assert_eq!(leases.len(), MAX_LEASES);
        // The newest are kept.
        let last = digest(MAX_LEASES as u32 + 99);
        assert_eq!(leases.ask(&last, agent(2), now), Grant::From(agent(1)));
    }
}
