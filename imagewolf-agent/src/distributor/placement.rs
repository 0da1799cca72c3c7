//! Which agent tracks a torrent (issue 18: the tracker load spread instead of all on the
//! origin).
//!
//! A blob's tracker is chosen by rendezvous (highest-random-weight) hashing of the blob's
//! digest over the agents the origin knows, itself included: the agent with the highest
//! `SHA-256(key | address)`. The origin writes that agent's announce URL into the chunks'
//! torrents, with its own as the second tier (BEP 12), so every peer of the blob announces
//! to the same tracker and falls back to the origin's if that agent is gone
//! (`imagewolf_bt::tracker::Announcer` tries the tiers in order). The tarball path's
//! segments are placed the same way, keyed by their distribution's id.
//!
//! Why rendezvous rather than a random pick: two origins that seed the same blob (the
//! everyday update sharing a layer with the version before it, pushed through another
//! agent) name the same tracker while their views of the cluster agree, so the blob's peers
//! are not split between two trackers; and when an agent joins or leaves, only the blobs
//! it wins or held move. Every agent already runs a tracker (`GET /announce` on its API);
//! it answers for any torrent, bounded by `TrackerConfig::max_torrents`.

use std::net::SocketAddr;

use sha2::{Digest as _, Sha256};

/// The agent that tracks the torrents of `key` (a blob's digest) among `agents` (`None` if
/// there are none): the one with the highest `SHA-256(key | address)`.
pub fn tracker_for(key: &str, agents: &[SocketAddr]) -> Option<SocketAddr> {
    agents.iter().copied().max_by_key(|a| {
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update(b"|");
        h.update(a.to_string().as_bytes());
        let out: [u8; 32] = h.finalize().into();
        (out, *a)
    })
}

/// The announce URLs for `key`'s torrents: its tracker's, then (if that is another agent)
/// the origin's own, `own`.
pub fn trackers_for(key: &str, agents: &[SocketAddr], own: SocketAddr) -> Vec<String> {
    let url = |a: SocketAddr| format!("http://{a}/announce");
    match tracker_for(key, agents) {
        Some(t) if t != own => vec![url(t), url(own)],
        _ => vec![url(own)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7777)))
            .collect()
    }

    fn digest(i: u32) -> String {
        crate::store::Digest::of(&i.to_le_bytes()).to_string()
    }

    #[test]
    fn blobs_spread_over_the_agents_and_the_choice_does_not_depend_on_order() {
        let all = agents(16);
        let mut load = vec![0u32; all.len()];
        for i in 0..1600 {
            let d = digest(i);
            let t = tracker_for(&d, &all).unwrap();
            let mut reversed = all.clone();
            reversed.reverse();
            assert_eq!(tracker_for(&d, &reversed), Some(t), "order-independent");
            load[all.iter().position(|a| *a == t).unwrap()] += 1;
        }
        // 100 blobs per agent on average; a binomial's spread, nowhere near all on one.
        assert!(load.iter().all(|&l| (60..=140).contains(&l)), "{load:?}");
    }

    #[test]
    fn an_agent_leaving_moves_only_the_blobs_it_tracked() {
        let all = agents(16);
        let gone = all[5];
        let rest: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != gone).collect();
        for i in 0..500 {
            let d = digest(i);
            let before = tracker_for(&d, &all).unwrap();
            let after = tracker_for(&d, &rest).unwrap();
            if before != gone {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn the_origin_is_the_second_tier_or_the_only_one() {
        let all = agents(8);
        let own = all[0];
        let mut others = 0;
        for i in 0..64 {
            let urls = trackers_for(&digest(i), &all, own);
            assert_eq!(urls.last().unwrap(), &format!("http://{own}/announce"));
            if urls.len() == 2 {
                others += 1;
                assert_ne!(urls[0], urls[1]);
            }
        }
        assert!(
            others > 32,
            "most blobs are tracked by another agent: {others} of 64"
        );
        assert_eq!(trackers_for(&digest(1), &[], own).len(), 1, "alone: itself");
    }
}
