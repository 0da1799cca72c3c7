//! The control plane's sans-IO parts: what a node offers, what it wants, the digest of what
//! it knows, how many agents a rumor goes to, and the deltas that carry a distribution's
//! growth. The I/O is in `spread.rs`; the design is in ARCHITECTURE.md ("Control plane").
//!
//! - **Rumors with bounded fan-out.** A node that gets a new distribution offers it
//!   ([`Offer`], about a hundred bytes) to [`fanout`] random agents; each that wants it
//!   answers from which segment ([`Want`]) and is sent only that part ([`delta`]). Those
//!   become the node's *children* for it: later versions (growth) go to them alone, pushed
//!   as deltas without an offer (a child answers `ignored` when it cannot use one), so each
//!   node hears of each growth about once, and of a new distribution about `fanout` times.
//! - **Anti-entropy.** Every `CATCH_UP_EVERY` a node asks one random agent for its
//!   [`Digest`]: when the [`digest_hash`]es agree (the idle case) the answer is a few dozen
//!   bytes; otherwise the entries (ids and versions, no torrents), and the asker fetches only
//!   what it lacks ([`behind`]).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::image::Distribution;

/// Up to this many other agents, a rumor goes to all of them (and is not relayed): small
/// clusters keep the latency of a direct announcement.
pub const FANOUT_ALL_UP_TO: usize = 8;
/// Most entries in one digest (newest first): a bound on the reply and on the fetches it
/// can cause.
pub const MAX_DIGEST_ENTRIES: usize = 256;
/// Most offers in one rumor message.
pub const MAX_OFFERS: usize = 64;
/// Most seeders a relayed distribution carries (the origin first).
pub const MAX_SEEDERS: usize = 32;
/// Most distributions fetched from one agent in one anti-entropy round.
pub const MAX_FETCHES_PER_ROUND: usize = 16;

/// How far a distribution has grown: bytes announced, then completion. Versions of one
/// distribution only grow ([`Distribution::extends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Version {
    /// Bytes announced (segments, or blob chunks).
    pub bytes: u64,
    /// The last segment (or chunk) is announced.
    pub complete: bool,
}

impl Version {
    /// The version of `d`.
    pub fn of(d: &Distribution) -> Self {
        Self {
            bytes: d.announced_len(),
            complete: d.is_complete(),
        }
    }
}

/// "I have distribution `id` at `version`": a rumor, or one entry of a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The distribution's id (40 hex digits).
    pub id: String,
    /// How far it has grown at the sender.
    #[serde(flatten)]
    pub version: Version,
}

/// A rumor message (`POST /v1/gossip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offers {
    /// What the sender offers (at most [`MAX_OFFERS`]).
    pub offers: Vec<Offer>,
}

/// The answer to an offer: send distribution `id` from segment `from` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    /// The distribution's id.
    pub id: String,
    /// Segments the asker already has (0: send all).
    pub from: usize,
}

/// The answer to a rumor message (`POST /v1/gossip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Wants {
    /// The offers the receiver takes (the others it knows, or refuses).
    pub wants: Vec<Want>,
}

/// What a node knows (`GET /v1/digest?hash=<h>`): its [`digest_hash`], and its entries
/// unless the asker's hash was the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// [`digest_hash`] of the entries.
    pub hash: String,
    /// The entries, newest first, at most [`MAX_DIGEST_ENTRIES`]; empty when the asker
    /// already has the same hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<Offer>,
}

/// What this node holds of a distribution, as far as an offer of it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Never heard of it (or forgotten).
    Unknown,
    /// Refused here (`--allow`), given up on, or otherwise not to be taken again.
    Settled,
    /// Has it at `version`, with `segments` segments; `restartable` if its run here failed
    /// and may run again.
    Have {
        version: Version,
        segments: usize,
        restartable: bool,
    },
}

/// Whether an offer of `offered` is wanted by a node holding `holding`: the segment to send
/// from, or `None`.
pub fn wanted(holding: Holding, offered: Version) -> Option<usize> {
    match holding {
        Holding::Unknown => Some(0),
        Holding::Settled => None,
        Holding::Have {
            version,
            segments,
            restartable,
        } => (offered > version || restartable).then_some(segments),
    }
}

/// The digest entries' hash: SHA-256 over the entries sorted by id, hex, 32 digits. Nodes
/// that know the same versions of the same distributions have the same hash.
pub fn digest_hash(entries: &[Offer]) -> String {
    let mut sorted: Vec<&Offer> = entries.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let mut h = Sha256::new();
    for e in sorted {
        h.update((e.id.len() as u64).to_be_bytes());
        h.update(e.id.as_bytes());
        h.update(e.version.bytes.to_be_bytes());
        h.update([u8::from(e.version.complete)]);
    }
    crate::tarball::hex(&h.finalize()[..16])
}

/// The entries of `remote` this node is behind on, as (id, from segment), at most
/// [`MAX_FETCHES_PER_ROUND`]; `holding` says what this node has of an id. Malformed ids are
/// skipped (the fetch would be refused anyway).
pub fn behind(remote: &[Offer], holding: impl Fn(&str) -> Holding) -> Vec<(String, usize)> {
    remote
        .iter()
        .filter(|e| is_id(&e.id))
        .filter_map(|e| Some((e.id.clone(), wanted(holding(&e.id), e.version)?)))
        .take(MAX_FETCHES_PER_ROUND)
        .collect()
}

/// A distribution id: 40 lowercase hex digits.
pub fn is_id(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// How many agents a rumor goes to among `others`: all of them up to
/// [`FANOUT_ALL_UP_TO`], else ceil(log2(n)) + 2 of the n nodes (enough that the epidemic
/// reaches every node with high probability; anti-entropy repairs the rest).
pub fn fanout(others: usize) -> usize {
    if others <= FANOUT_ALL_UP_TO {
        return others;
    }
    let n = others + 1;
    let log2 = usize::BITS - (n - 1).leading_zeros();
    (log2 as usize + 2).min(others)
}

/// `k` distinct agents of `agents` at random (a partial Fisher-Yates shuffle; `random(n)`
/// returns a number below `n`).
pub fn choose(
    agents: &[SocketAddr],
    k: usize,
    mut random: impl FnMut(usize) -> usize,
) -> Vec<SocketAddr> {
    let mut pool = agents.to_vec();
    let k = k.min(pool.len());
    for i in 0..k {
        let j = i + random(pool.len() - i) % (pool.len() - i);
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

/// A random number below `n` (`n` > 0).
pub fn random_below(n: usize) -> usize {
    (rand::random::<u64>() % n.max(1) as u64) as usize
}

/// `d` from segment `from` on: what a node that has the first `from` segments needs. A blob
/// distribution has no segments and goes whole (its chunks are info-hashes, not torrents).
pub fn delta(d: &Distribution, from: usize) -> Distribution {
    let mut out = d.clone();
    out.segments = d.segments.get(from..).unwrap_or_default().to_vec();
    out
}

/// Rebuilds the distribution a [`delta`] from segment `from` was cut from, with the first
/// `from` segments of `known` (an earlier version of it here). `None` if `known` has fewer
/// segments, or is another distribution. The result is the origin's word only if its
/// signature verifies (the caller checks, as for any announcement).
pub fn merge(
    known: Option<&Distribution>,
    delta: Distribution,
    from: usize,
) -> Option<Distribution> {
    if from == 0 {
        return Some(delta);
    }
    let known = known?;
    if known.id != delta.id || known.segments.len() < from {
        return None;
    }
    let mut out = delta;
    let mut segments = known.segments[..from].to_vec();
    segments.append(&mut out.segments);
    out.segments = segments;
    add_seeders(&mut out.seeders, &known.seeders);
    Some(out)
}

/// Adds `more` seeders to `seeders`, without duplicates, to at most [`MAX_SEEDERS`].
pub fn add_seeders(seeders: &mut Vec<String>, more: &[String]) {
    for s in more {
        if seeders.len() >= MAX_SEEDERS {
            break;
        }
        if !seeders.contains(s) {
            seeders.push(s.clone());
        }
    }
    seeders.truncate(MAX_SEEDERS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageRef, Segment};

    fn dist(segments: usize, complete: bool) -> Distribution {
        Distribution {
            image: ImageRef {
                registry: "r:5000".into(),
                repository: "a/b".into(),
                tag: Some("v1".into()),
                digest: None,
            },
            image_id: format!("sha256:{}", "00".repeat(32)),
            id: "33".repeat(20),
            size_hint: 42,
            segments: (0..segments)
                .map(|i| Segment {
                    torrent: format!("torrent-{i}"),
                    info_hash: format!("{i:040x}"),
                    len: 10,
                })
                .collect(),
            sha256: complete.then(|| "22".repeat(32)),
            seeders: vec!["10.0.0.1:6000".into()],
            created: 7,
            signature: None,
            blobs: None,
        }
    }

    fn offer(id: &str, bytes: u64, complete: bool) -> Offer {
        Offer {
            id: id.into(),
            version: Version { bytes, complete },
        }
    }

    #[test]
    fn versions_order_by_bytes_then_completion() {
        let v = |bytes, complete| Version { bytes, complete };
        assert!(v(10, false) < v(20, false));
        assert!(v(20, false) < v(20, true));
        assert_eq!(Version::of(&dist(3, true)), v(30, true));
    }

    #[test]
    fn an_offer_is_wanted_from_what_is_held() {
        let have = |bytes, segments, restartable| Holding::Have {
            version: Version {
                bytes,
                complete: false,
            },
            segments,
            restartable,
        };
        let offered = Version {
            bytes: 30,
            complete: false,
        };
        assert_eq!(wanted(Holding::Unknown, offered), Some(0));
        assert_eq!(wanted(Holding::Settled, offered), None);
        assert_eq!(wanted(have(10, 1, false), offered), Some(1));
        assert_eq!(
            wanted(have(30, 3, false), offered),
            None,
            "the same version"
        );
        assert_eq!(wanted(have(40, 4, false), offered), None, "an older one");
        assert_eq!(
            wanted(have(30, 3, true), offered),
            Some(3),
            "a failed run restarts"
        );
    }

    #[test]
    fn the_digest_hash_is_the_set_not_the_order() {
        let a = [
            offer(&"aa".repeat(20), 10, false),
            offer(&"bb".repeat(20), 5, true),
        ];
        let b = [a[1].clone(), a[0].clone()];
        assert_eq!(digest_hash(&a), digest_hash(&b));
        assert_eq!(digest_hash(&a).len(), 32);
        let grown = [offer(&"aa".repeat(20), 20, false), a[1].clone()];
        assert_ne!(digest_hash(&a), digest_hash(&grown));
        let done = [offer(&"aa".repeat(20), 10, true), a[1].clone()];
        assert_ne!(digest_hash(&a), digest_hash(&done));
        assert_ne!(digest_hash(&a), digest_hash(&a[..1]));
    }

    #[test]
    fn behind_lists_only_what_is_missing_and_is_bounded() {
        let known = "aa".repeat(20);
        let remote = vec![
            offer(&known, 10, false),
            offer(&"bb".repeat(20), 5, true),
            offer("not-an-id", 5, true),
        ];
        let holding = |id: &str| {
            if id == known {
                Holding::Have {
                    version: Version {
                        bytes: 10,
                        complete: false,
                    },
                    segments: 1,
                    restartable: false,
                }
            } else {
                Holding::Unknown
            }
        };
        assert_eq!(behind(&remote, holding), vec![("bb".repeat(20), 0)]);
        let many: Vec<Offer> = (0..1000)
            .map(|i| offer(&format!("{i:040x}"), 1, true))
            .collect();
        assert_eq!(
            behind(&many, |_| Holding::Unknown).len(),
            MAX_FETCHES_PER_ROUND
        );
    }

    #[test]
    fn fanout_is_everyone_when_small_then_logarithmic() {
        assert_eq!(fanout(0), 0);
        assert_eq!(fanout(3), 3);
        assert_eq!(fanout(FANOUT_ALL_UP_TO), FANOUT_ALL_UP_TO);
        assert_eq!(fanout(15), 6, "N = 16");
        assert_eq!(fanout(31), 7, "N = 32");
        assert_eq!(fanout(47), 8, "N = 48");
        assert_eq!(fanout(999), 12, "N = 1000");
        assert_eq!(fanout(9_999), 16, "N = 10000");
        for others in 0..5000 {
            assert!(fanout(others) <= others);
        }
    }

    #[test]
    fn choose_picks_distinct_agents() {
        let agents: Vec<SocketAddr> = (1..=20)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let mut seed = 12345u64;
        let mut random = move |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        for k in [0, 1, 5, 20, 30] {
            let picked = choose(&agents, k, &mut random);
            assert_eq!(picked.len(), k.min(20));
            let mut unique = picked.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), picked.len());
            assert!(picked.iter().all(|a| agents.contains(a)));
        }
        // A random source answering out of range does not panic.
        assert_eq!(choose(&agents, 5, |_| usize::MAX).len(), 5);
    }

    #[test]
    fn a_delta_merges_back_into_the_whole() {
        let full = dist(5, true);
        let earlier = dist(2, false);
        let d = delta(&full, 2);
        assert_eq!(d.segments.len(), 3);
        let merged = merge(Some(&earlier), d.clone(), 2).unwrap();
        assert_eq!(merged, full);
        assert!(merged.grows(&earlier));
        // A node that has fewer segments than the delta starts from cannot rebuild it.
        assert!(merge(Some(&dist(1, false)), d.clone(), 2).is_none());
        assert!(merge(None, d.clone(), 2).is_none());
        let mut other = earlier.clone();
        other.id = "44".repeat(20);
        assert!(merge(Some(&other), d, 2).is_none());
        // From 0 the delta is the whole; past the end it is empty, never a panic.
        assert_eq!(merge(None, delta(&full, 0), 0).unwrap(), full);
        assert!(delta(&full, 99).segments.is_empty());
    }

    #[test]
    fn seeders_stay_bounded_and_distinct() {
        let mut seeders = vec!["a".to_owned()];
        add_seeders(&mut seeders, &["a".into(), "b".into()]);
        assert_eq!(seeders, ["a", "b"]);
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        add_seeders(&mut seeders, &many);
        assert_eq!(seeders.len(), MAX_SEEDERS);
    }
}
