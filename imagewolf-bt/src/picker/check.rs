//! Invariant checks: a debug and test aid, O(everything).

use bitvec::{order::Msb0, slice::BitSlice};

use super::{split_key, Picker, NOT_OPEN};

impl Picker {
    /// Debug/test aid: checks every internal invariant (each piece in exactly one state,
    /// each block in one state with matching counters, requester lists and per-peer indexes
    /// agreeing, priority order sorted with correct bucket bounds), returning a description
    /// of the first violation. Availability against the peers' bitfields is checked by
    /// [`Picker::check_availability`], since the picker does not keep bitfields.
    pub fn check_invariants(&self) -> Result<(), String> {
        let n = self.lengths.num_pieces() as usize;
        let cap = self.config.endgame_max_requesters;
        self.ranked
            .check()
            .map_err(|e| format!("priority order: {e}"))?;
        if self.have.len() != n || self.partials.len() != n {
            return Err("per-piece vectors have the wrong length".into());
        }
        if self.have.count_ones() != self.have_count as usize {
            return Err(format!(
                "have_count {} != bits set {}",
                self.have_count,
                self.have.count_ones()
            ));
        }
        let (mut free, mut requested, mut underfull, mut awaiting) = (0u64, 0u64, 0u64, 0u32);
        let (mut actives, mut opens, mut pairs) = (0usize, 0usize, 0usize);
        for piece in self.lengths.pieces() {
            let i = piece.get();
            let ranked = self.ranked.contains(i);
            let partial = self.partials[i as usize].as_ref();
            match (self.have[i as usize], ranked, partial) {
                (true, false, None) => {}
                (false, true, None) => free += u64::from(self.lengths.blocks_in_piece(piece)),
                (false, false, Some(p)) => {
                    p.check(cap).map_err(|e| format!("piece {i}: {e}"))?;
                    if p.blocks.len() != self.lengths.blocks_in_piece(piece) as usize {
                        return Err(format!("piece {i}: wrong block count"));
                    }
                    if self.active.get(p.active_at as usize) != Some(&i) {
                        return Err(format!("piece {i}: not at its place in the active list"));
                    }
                    let listed = p.open_at != NOT_OPEN;
                    if listed != (p.free > 0)
                        || (listed && self.open.get(p.open_at as usize) != Some(&i))
                    {
                        return Err(format!("piece {i}: open list membership wrong"));
                    }
                    free += u64::from(p.free);
                    requested += u64::from(p.requested);
                    underfull += u64::from(p.underfull);
                    awaiting += u32::from(p.is_complete());
                    actives += 1;
                    opens += usize::from(listed);
                    for (idx, block) in p.blocks.iter().enumerate() {
                        let req = block.requesters();
                        if req.len() > cap.max(1) as usize {
                            return Err(format!("piece {i} block {idx}: {} requesters", req.len()));
                        }
                        for peer in req {
                            let known = self
                                .peers
                                .get(peer)
                                .is_some_and(|s| s.contains(&super::block_key(i, idx as u32)));
                            if !known {
                                return Err(format!(
                                    "piece {i} block {idx}: {peer:?} not indexed as requester"
                                ));
                            }
                            pairs += 1;
                        }
                    }
                }
                (h, r, p) => {
                    return Err(format!(
                        "piece {i}: in several states (have {h}, ranked {r}, partial {})",
                        p.is_some()
                    ))
                }
            }
        }
        if actives != self.active.len() || opens != self.open.len() {
            return Err(format!(
                "active/open lists have {}/{} entries, {actives}/{opens} expected",
                self.active.len(),
                self.open.len()
            ));
        }
        let totals = (
            self.free_blocks,
            self.requested_blocks,
            self.underfull_blocks,
            self.awaiting,
        );
        if totals != (free, requested, underfull, awaiting) {
            return Err(format!(
                "totals (free, requested, underfull, awaiting) {totals:?} != {:?}",
                (free, requested, underfull, awaiting)
            ));
        }
        let indexed: usize = self.peers.values().map(|s| s.len()).sum();
        if indexed != pairs {
            return Err(format!(
                "{indexed} indexed requests, {pairs} requester entries"
            ));
        }
        if let Some((peer, _)) = self.peers.iter().find(|(_, s)| s.is_empty()) {
            return Err(format!("{peer:?} kept with no requests"));
        }
        // Every indexed key names a real requester: the count match above plus the
        // requester -> index direction makes the map exact, unless a key is bogus.
        for (peer, set) in &self.peers {
            for &key in set {
                let (piece, idx) = split_key(key);
                let ok = self
                    .partials
                    .get(piece as usize)
                    .and_then(Option::as_ref)
                    .and_then(|p| p.blocks.get(idx as usize))
                    .is_some_and(|b| b.requesters().contains(peer));
                if !ok {
                    return Err(format!(
                        "{peer:?} indexed for piece {piece} block {idx} it doesn't hold"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Test aid: checks every piece's availability against the connected peers' pieces
    /// (`(bitfield, has_all)` per peer).
    pub fn check_availability<'a>(
        &self,
        peers: impl IntoIterator<Item = (&'a BitSlice<u8, Msb0>, bool)>,
    ) -> Result<(), String> {
        let n = self.lengths.num_pieces() as usize;
        let mut counts = vec![0u32; n];
        let mut seeds = 0u32;
        for (bits, all) in peers {
            if all {
                seeds += 1;
            } else {
                for i in bits.iter_ones().take_while(|&i| i < n) {
                    counts[i] += 1;
                }
            }
        }
        if seeds != self.seeds {
            return Err(format!("{} seeds counted, {seeds} connected", self.seeds));
        }
        for (i, &c) in counts.iter().enumerate() {
            if self.ranked.count(i as u32) != c {
                return Err(format!(
                    "piece {i}: availability {} != {c}",
                    self.ranked.count(i as u32)
                ));
            }
        }
        Ok(())
    }
}
