//! The control plane's I/O (see `gossip.rs` for the rules and ARCHITECTURE.md for the
//! design): spreading each version of a distribution by rumor, answering offers, deltas and
//! digests, and the anti-entropy round every [`CATCH_UP_EVERY`](super::CATCH_UP_EVERY).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::gossip::{
    self, behind, choose, digest_hash, fanout, random_below, wanted, Digest, Holding, Offer,
    Offers, Version, Want, Wants, MAX_DIGEST_ENTRIES, MAX_OFFERS,
};
use super::{now_secs, Accepted, Distributor, CATCH_UP_WINDOW, MAX_RUNS};
use crate::image::Distribution;
use crate::stats::ImageState;

/// Agents asked for their digest when the agent starts (a late joiner catches up at once);
/// later rounds ask one.
pub const STARTUP_ASKS: usize = 2;
/// Agents tried per round when the chosen ones do not answer.
const TRIES_PER_ROUND: usize = 4;
/// How long a "want" answered to one agent's offer stands: the same version offered by
/// others meanwhile is declined (its delivery is on the way).
const PENDING_FOR: Duration = Duration::from_secs(5);
/// Most pending wants remembered.
const PENDING_KEPT: usize = 256;

/// Wants answered lately: id -> (version offered, when).
#[derive(Default)]
pub(super) struct Pending(HashMap<String, (Version, Instant)>);

impl Pending {
    /// True if a want of `id` at `version` or later was answered within [`PENDING_FOR`];
    /// else notes this one.
    fn already_wanted(&mut self, id: &str, version: Version, now: Instant) -> bool {
        self.0
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < PENDING_FOR);
        if self.0.get(id).is_some_and(|(v, _)| *v >= version) {
            return true;
        }
        if self.0.len() < PENDING_KEPT {
            self.0.insert(id.to_owned(), (version, now));
        }
        false
    }

    /// The delivery of `id` came (or failed): offers of it are answered afresh.
    fn done(&mut self, id: &str) {
        self.0.remove(id);
    }
}

/// One node's spreading of one distribution: who it offers the next version to.
pub(super) struct Spread {
    /// No version sent yet: the first goes to [`fanout`] random agents.
    first: bool,
    /// Whether this node passes the first version on to random agents (false when the
    /// node it came from offered it to every agent, or it came by anti-entropy).
    relay: bool,
    /// The agents this node delivered the distribution to first, each with the segments it
    /// has from this node: later versions go to them, pushed without an offer (they follow
    /// this node for it, so they want what it grew by).
    children: Vec<(SocketAddr, usize)>,
    /// The first version went to every agent (a small cluster): so do the later ones (an
    /// agent that missed the first, e.g. busy, is offered the next).
    to_all: bool,
}

impl Spread {
    /// The spreading of a distribution this node originates (`relay`: true) or received.
    pub(super) fn new(relay: bool) -> Self {
        Self {
            first: true,
            relay,
            children: Vec::new(),
            to_all: false,
        }
    }
}

impl Distributor {
    /// Spreads one version of a distribution: the first to [`fanout`] random agents (when
    /// this node relays), later ones to the agents it delivered the first to. A new target
    /// is offered the version and sent only the part it wants; a child is sent what the
    /// distribution grew by since its last delivery at once (one round trip, not two), and
    /// offered it only when it answers that it cannot use that.
    pub(super) async fn spread_version(&self, d: &Distribution, spread: &mut Spread) {
        let others = self.other_agents();
        if !spread.first && !spread.children.is_empty() {
            // Children relay later versions to their own children unless this node reaches
            // every agent itself.
            let relay = !spread.to_all;
            let pushes = spread
                .children
                .iter()
                .map(|&(agent, has)| self.push_growth(agent, d, has, relay));
            let results = futures::future::join_all(pushes).await;
            for (child, has) in spread.children.iter_mut().zip(results) {
                child.1 = has;
            }
            if !spread.to_all {
                return;
            }
        }
        let (targets, first) = if spread.first {
            spread.first = false;
            let k = if spread.relay {
                fanout(others.len())
            } else {
                0
            };
            spread.to_all = k > 0 && k == others.len();
            (choose(&others, k, random_below), true)
        } else if spread.to_all {
            // The agents that did not take the first version from this node.
            let children: Vec<SocketAddr> = spread.children.iter().map(|c| c.0).collect();
            let rest = others
                .iter()
                .copied()
                .filter(|a| !children.contains(a))
                .collect();
            (rest, false)
        } else {
            return;
        };
        if targets.is_empty() {
            return;
        }
        // Receivers relay unless this node reaches every agent itself.
        let relay = !spread.to_all;
        tracing::debug!(
            image = %d.image,
            targets = targets.len(),
            segments = d.segments.len(),
            complete = d.is_complete(),
            "offering a distribution"
        );
        let calls = targets.iter().map(|a| self.offer_to(*a, d, relay));
        let results = futures::future::join_all(calls).await;
        let delivered = targets
            .into_iter()
            .zip(results)
            .filter_map(|(agent, delivered)| delivered.then_some((agent, d.segments.len())));
        if first {
            spread.children = delivered.collect();
        } else {
            // In a small cluster, an agent that missed the first version and took a later
            // one from this node follows it from now on.
            spread.children.extend(delivered);
        }
    }

    /// Sends child `agent`, which has the first `has` segments of `d` from this node, the
    /// rest; offers `d` instead when it cannot use that (it lacks those segments). Returns
    /// the segments it has from this node afterwards.
    async fn push_growth(
        &self,
        agent: SocketAddr,
        d: &Distribution,
        has: usize,
        relay: bool,
    ) -> usize {
        let delta = self.with_me_as_seeder(gossip::delta(d, has));
        match self.client.deliver(agent, has, relay, &delta).await {
            Ok(true) => return d.segments.len(),
            Ok(false) => {}
            Err(e) => {
                // It catches up by anti-entropy; the next version is pushed again.
                tracing::debug!("growth delivery: {e}");
                return has;
            }
        }
        if self.offer_to(agent, d, relay).await {
            d.segments.len()
        } else {
            has
        }
    }

    /// Offers `d` to `agent` and sends the part it wants. True if it took it.
    async fn offer_to(&self, agent: SocketAddr, d: &Distribution, relay: bool) -> bool {
        let offers = Offers {
            offers: vec![Offer {
                id: d.id.clone(),
                version: Version::of(d),
            }],
        };
        let wants = match self.client.offer(agent, &offers).await {
            Ok(w) => w,
            Err(e) => {
                // It catches up by anti-entropy.
                tracing::debug!("offer: {e}");
                return false;
            }
        };
        let Some(from) = wants.wants.iter().find(|w| w.id == d.id).map(|w| w.from) else {
            return false;
        };
        let delta = self.with_me_as_seeder(gossip::delta(d, from));
        match self.client.deliver(agent, from, relay, &delta).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::debug!("delivery: {e}");
                false
            }
        }
    }

    /// `d` with this node among its seeders when it runs the torrents of it.
    fn with_me_as_seeder(&self, mut d: Distribution) -> Distribution {
        let seeding = {
            let records = self.records();
            records
                .by_id
                .get(&d.id)
                .and_then(|k| records.by_key.get(k))
                .is_some_and(|r| !r.torrents.is_empty())
        };
        if seeding {
            let me = SocketAddr::new(self.config.advertise, self.session.listen_addr().port());
            gossip::add_seeders(&mut d.seeders, &[me.to_string()]);
        }
        d
    }

    /// What this node holds of distribution `id` (for offers and digests).
    pub(super) fn holding(&self, id: &str) -> Holding {
        let records = self.records();
        if records.refused.iter().any(|r| r.id.as_deref() == Some(id)) {
            return Holding::Settled;
        }
        let Some(r) = records.by_id.get(id).and_then(|k| records.by_key.get(k)) else {
            return match records.forgotten_id(id) {
                Some((true, runs)) if runs < MAX_RUNS => Holding::Unknown,
                Some(_) => Holding::Settled,
                None => Holding::Unknown,
            };
        };
        let Some(d) = &r.distribution else {
            // Ours, before its first version.
            return Holding::Settled;
        };
        Holding::Have {
            version: Version::of(d),
            segments: d.segments.len(),
            restartable: r.stats.state == ImageState::Failed
                && !r.stats.origin
                && r.runs < MAX_RUNS,
        }
    }

    /// Answers a rumor: which of the offered distributions this node wants, from where.
    pub fn on_offers(&self, offers: &Offers) -> Wants {
        let wants = offers
            .offers
            .iter()
            .take(MAX_OFFERS)
            .filter(|o| gossip::is_id(&o.id))
            .filter_map(|o| {
                let from = wanted(self.holding(&o.id), o.version)?;
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.already_wanted(&o.id, o.version, Instant::now()) {
                    return None;
                }
                Some(Want {
                    id: o.id.clone(),
                    from,
                })
            })
            .collect();
        Wants { wants }
    }

    /// Another agent sends distribution `delta.id` from segment `from` on (as this node
    /// wanted): rebuilt with the segments this node has, then taken like any announcement
    /// (checked, the origin's signature verified). `relay`: pass the first version on.
    pub fn on_delta(self: &Arc<Self>, from: usize, relay: bool, delta: Distribution) -> Accepted {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .done(&delta.id);
        let known = {
            let records = self.records();
            records
                .by_id
                .get(&delta.id)
                .and_then(|k| records.by_key.get(k))
                .and_then(|r| r.distribution.clone())
        };
        match gossip::merge(known.as_ref(), delta, from) {
            Some(d) => self.accept_distribution(d, relay),
            None => Accepted::Refused(format!(
                "this node does not have the first {from} segments of it"
            )),
        }
    }

    /// The recent distributions this node knows, newest first, as a digest; without the
    /// entries when `their_hash` is the same.
    pub fn digest(&self, their_hash: Option<&str>) -> Digest {
        let entries = self.digest_entries();
        let hash = digest_hash(&entries);
        let entries = if their_hash == Some(hash.as_str()) {
            Vec::new()
        } else {
            entries
        };
        Digest { hash, entries }
    }

    /// The digest's entries: what [`Distributor::distributions`] lists, as ids and versions.
    fn digest_entries(&self) -> Vec<Offer> {
        let horizon = now_secs() - CATCH_UP_WINDOW.as_secs_f64();
        let records = self.records();
        let mut recent: Vec<&Distribution> = records
            .by_key
            .values()
            .filter(|r| r.stats.state != ImageState::Failed)
            .filter_map(|r| r.distribution.as_ref())
            .filter(|d| d.created as f64 >= horizon)
            .collect();
        recent.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        recent
            .into_iter()
            .take(MAX_DIGEST_ENTRIES)
            .map(|d| Offer {
                id: d.id.clone(),
                version: Version::of(d),
            })
            .collect()
    }

    /// Distribution `id` from segment `from` on, with this node among the seeders when it
    /// seeds it (`None`: not known here, or failed).
    pub fn distribution_since(&self, id: &str, from: usize) -> Option<Distribution> {
        let d = {
            let records = self.records();
            let r = records.by_id.get(id).and_then(|k| records.by_key.get(k))?;
            if r.stats.state == ImageState::Failed {
                return None;
            }
            gossip::delta(r.distribution.as_ref()?, from)
        };
        Some(self.with_me_as_seeder(d))
    }

    /// Anti-entropy: asks `asks` random agents (trying others when one does not answer) for
    /// their digest, and fetches from each only the distributions this node lacks or has
    /// fewer segments of. Returns how many distributions it started or grew.
    pub async fn catch_up_with(self: &Arc<Self>, asks: usize) -> usize {
        let mut agents = self.other_agents();
        let tries = agents.len().min(asks + TRIES_PER_ROUND);
        agents = choose(&agents, tries, random_below);
        let (mut answered, mut taken) = (0, 0);
        for agent in agents {
            if answered >= asks {
                break;
            }
            let mine = digest_hash(&self.digest_entries());
            let digest = match self.client.digest(agent, &mine).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!("anti-entropy: {e}");
                    continue;
                }
            };
            answered += 1;
            if digest.hash == mine {
                continue;
            }
            let entries: Vec<Offer> = digest
                .entries
                .into_iter()
                .take(MAX_DIGEST_ENTRIES)
                .collect();
            for (id, from) in behind(&entries, |id| self.holding(id)) {
                let delta = match self.client.distribution_since(agent, &id, from).await {
                    Ok(d) if d.id == id => d,
                    Ok(_) => {
                        tracing::warn!(%agent, "anti-entropy: a reply for another distribution");
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!("anti-entropy: {e}");
                        continue;
                    }
                };
                if self.on_delta(from, false, delta) == Accepted::Started {
                    tracing::info!(%agent, "caught up on a distribution");
                    taken += 1;
                }
            }
        }
        taken
    }

    /// The periodic anti-entropy round: one agent asked.
    pub async fn catch_up(self: &Arc<Self>) {
        self.catch_up_with(1).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_wanted_from_one_agent_is_declined_to_others_for_a_while() {
        let v = |bytes| Version {
            bytes,
            complete: false,
        };
        let mut pending = Pending::default();
        let t0 = Instant::now();
        assert!(!pending.already_wanted("a", v(10), t0));
        assert!(
            pending.already_wanted("a", v(10), t0),
            "the same version again"
        );
        assert!(pending.already_wanted("a", v(5), t0), "an older one");
        assert!(
            !pending.already_wanted("a", v(20), t0),
            "a newer one is wanted"
        );
        assert!(
            !pending.already_wanted("b", v(10), t0),
            "another distribution"
        );
        assert!(
            !pending.already_wanted("a", v(20), t0 + PENDING_FOR),
            "expired"
        );
        pending.done("a");
        assert!(!pending.already_wanted("a", v(20), t0 + PENDING_FOR));
        for i in 0..2 * PENDING_KEPT {
            pending.already_wanted(&i.to_string(), v(1), t0 + PENDING_FOR);
        }
        assert!(pending.0.len() <= PENDING_KEPT);
    }
}
