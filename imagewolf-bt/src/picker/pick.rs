//! Choosing blocks for one peer: partial pieces, then new pieces, then endgame duplicates.

use std::collections::HashSet;

use bitvec::{order::Msb0, slice::BitSlice};
use rand::RngExt;

use super::{block_key, Block, BlockKey, FastBuild, PeerKey, PeerPieces, Picker};
use crate::BlockRef;

/// A peer with fewer than `1 / SPARSE_FACTOR` of the ranked pieces gets its candidates from
/// its own bitfield (sorted by rank) instead of a walk over the ranked order, which could
/// otherwise pass thousands of pieces it lacks before finding one.
const SPARSE_FACTOR: usize = 32;

type Outstanding = HashSet<BlockKey, FastBuild>;

impl Picker {
    /// Picks up to `max` blocks for `peer` (who has `peer_bits`, or everything if
    /// `peer_has_all`), marks them Requested by it, appends them to `out`. Returns how many
    /// were added.
    ///
    /// `peer_bits` must be the pieces reported through [`Picker::peer_bitfield`] and
    /// [`Picker::peer_has`]: a peer's pieces are looked for among pieces with availability
    /// of at least one. Fewer than `max` blocks come back only when no other block may be
    /// asked from this peer now (see the endgame rules in the [module docs](super)).
    pub fn pick(
        &mut self,
        peer: PeerKey,
        peer_bits: &BitSlice<u8, Msb0>,
        peer_has_all: bool,
        max: usize,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let before = out.len();
        if max == 0 || self.is_complete() {
            return 0;
        }
        let pieces = PeerPieces {
            bits: peer_bits,
            all: peer_has_all,
        };
        // Taken out of the map for the duration so it can be filled while `self` is borrowed.
        let mut mine = self.peers.remove(&peer).unwrap_or_default();
        let mut left = self.pick_partials(peer, pieces, max, &mut mine, out);
        if left > 0 {
            left = self.pick_new(peer, pieces, left, &mut mine, out);
        }
        if left > 0 && !self.suggested.is_empty() {
            left = self.pick_suggested(peer, pieces, left, &mut mine, out);
        }
        if left > 0 && self.free_blocks == 0 && self.underfull_blocks > 0 {
            self.pick_endgame(peer, pieces, left, &mut mine, out);
        }
        if !mine.is_empty() {
            self.peers.insert(peer, mine);
        }
        out.len() - before
    }

    /// Free blocks of partial pieces the peer has: rarest first, then closest to done.
    fn pick_partials(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        mut left: usize,
        mine: &mut Outstanding,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        if self.open.is_empty() {
            return left;
        }
        let mut cands = std::mem::take(&mut self.scratch);
        cands.clear();
        for &p in &self.open {
            if pieces.has(p) {
                let free = self.partials[p as usize].as_ref().map_or(0, |x| x.free);
                cands.push((self.ranked.count(p), free, p));
            }
        }
        cands.sort_unstable();
        for &(_, _, p) in &cands {
            if left == 0 {
                break;
            }
            left = self.take_free(peer, p, left, mine, out);
        }
        self.scratch = cands;
        left
    }

    /// Starts untouched pieces the peer has: at random while we have few pieces, else
    /// rarest first.
    fn pick_new(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        mut left: usize,
        mine: &mut Outstanding,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let random = self.have_count < self.config.random_first_pieces;
        if pieces.all {
            while left > 0 && !self.ranked.order().is_empty() && self.may_start() {
                let at = if random {
                    self.rng.random_range(0..self.ranked.order().len())
                } else {
                    0
                };
                let p = self.ranked.order()[at];
                self.start_piece(p);
                left = self.take_free(peer, p, left, mine, out);
            }
            return left;
        }
        // A peer's own pieces have availability >= 1 (it counts), so bucket 0 is skipped:
        // with many seeds it can hold nearly every piece, and none of them is this peer's.
        let from = self.ranked.bucket_start(1);
        let region = self.ranked.order().len().saturating_sub(from);
        if region == 0 {
            return left;
        }
        if pieces.bits.count_ones().saturating_mul(SPARSE_FACTOR) < region {
            return self.pick_new_sparse(peer, pieces, random, left, mine, out);
        }
        if random {
            while left > 0 && self.may_start() {
                let Some(p) = self.random_ranked_piece(pieces) else {
                    break;
                };
                self.start_piece(p);
                left = self.take_free(peer, p, left, mine, out);
            }
        } else {
            let mut i = from;
            while left > 0 && i < self.ranked.order().len() && self.may_start() {
                let p = self.ranked.order()[i];
                if pieces.has(p) {
                    // Removal refills slot `i` from later in the same bucket and leaves
                    // the slots before `i` alone, so the walk goes on from `i`.
                    self.start_piece(p);
                    left = self.take_free(peer, p, left, mine, out);
                } else {
                    i += 1;
                }
            }
        }
        left
    }

    /// Suggested pieces the peer has, started beyond the cap by up to `SUGGEST_SLOTS`.
    fn pick_suggested(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        mut left: usize,
        mine: &mut Outstanding,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let mut i = 0;
        while left > 0 && i < self.suggested.len() {
            let p = self.suggested[i];
            if !pieces.has(p) || !self.ranked.contains(p) {
                i += 1;
                continue;
            }
            if (self.active.len() as u32) >= self.max_active.saturating_add(super::SUGGEST_SLOTS) {
                break;
            }
            self.start_piece(p); // removes it from `suggested`
            left = self.take_free(peer, p, left, mine, out);
        }
        left
    }

    /// A ranked piece the peer has, found by walking from a random place (wrapping).
    fn random_ranked_piece(&mut self, pieces: PeerPieces<'_>) -> Option<u32> {
        let from = self.ranked.bucket_start(1);
        let order = self.ranked.order();
        let m = order.len().checked_sub(from).filter(|&m| m > 0)?;
        let r = self.rng.random_range(0..m);
        let order = self.ranked.order();
        (0..m)
            .map(|j| order[from + (r + j) % m])
            .find(|&p| pieces.has(p))
    }

    /// `pick_new` for a peer with few pieces: rank that peer's own pieces.
    fn pick_new_sparse(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        random: bool,
        mut left: usize,
        mine: &mut Outstanding,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let n = self.lengths.num_pieces() as usize;
        let mut cands = std::mem::take(&mut self.scratch);
        cands.clear();
        for i in pieces.bits.iter_ones().take_while(|&i| i < n) {
            if let Some(at) = self.ranked.position(i as u32) {
                cands.push((at as u32, 0, i as u32));
            }
        }
        if random {
            while left > 0 && !cands.is_empty() && self.may_start() {
                let j = self.rng.random_range(0..cands.len());
                let (_, _, p) = cands.swap_remove(j);
                self.start_piece(p);
                left = self.take_free(peer, p, left, mine, out);
            }
        } else {
            // Removals only reorder pieces inside one bucket, so rank order between the
            // remaining candidates holds.
            cands.sort_unstable();
            for &(_, _, p) in &cands {
                if left == 0 || !self.may_start() {
                    break;
                }
                self.start_piece(p);
                left = self.take_free(peer, p, left, mine, out);
            }
        }
        self.scratch = cands;
        left
    }

    /// Endgame: blocks the peer has, requested by others, not by it, below the duplicate
    /// cap. Starts at a random partial piece so concurrent peers duplicate different blocks.
    fn pick_endgame(
        &mut self,
        peer: PeerKey,
        pieces: PeerPieces<'_>,
        mut left: usize,
        mine: &mut Outstanding,
        out: &mut Vec<BlockRef>,
    ) {
        let n = self.active.len();
        if n == 0 {
            return;
        }
        let cap = self.config.endgame_max_requesters as usize;
        let r = self.rng.random_range(0..n);
        for j in 0..n {
            if left == 0 {
                return;
            }
            let p = self.active[(r + j) % n];
            if !pieces.has(p) {
                continue;
            }
            let Some(partial) = self.partials[p as usize].as_ref() else {
                continue;
            };
            if partial.underfull == 0 {
                continue;
            }
            let eligible: Vec<u32> = partial
                .blocks
                .iter()
                .enumerate()
                .filter(|(_, b)| {
                    let req = b.requesters();
                    !req.is_empty() && req.len() < cap && !req.contains(&peer)
                })
                .map(|(i, _)| i as u32)
                .take(left)
                .collect();
            for idx in eligible {
                self.update_block(p, idx, |b| b.add_requester(peer));
                self.hand_out(p, idx, mine, out);
                left -= 1;
            }
        }
    }

    /// Requests free blocks of partial piece `piece` from `peer`, lowest offset first.
    fn take_free(
        &mut self,
        peer: PeerKey,
        piece: u32,
        mut left: usize,
        mine: &mut Outstanding,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        while left > 0 {
            let Some(partial) = self.partials[piece as usize].as_mut() else {
                break;
            };
            let start = partial.first_free as usize;
            let found = partial
                .blocks
                .get(start..)
                .and_then(|rest| rest.iter().position(|b| *b == Block::Free));
            let Some(idx) = found.map(|off| start + off) else {
                partial.first_free = partial.blocks.len() as u32;
                break;
            };
            self.update_block(piece, idx as u32, |b| b.add_requester(peer));
            if let Some(partial) = self.partials[piece as usize].as_mut() {
                partial.first_free = idx as u32 + 1;
            }
            self.hand_out(piece, idx as u32, mine, out);
            left -= 1;
        }
        left
    }

    fn hand_out(&self, piece: u32, idx: u32, mine: &mut Outstanding, out: &mut Vec<BlockRef>) {
        let key = block_key(piece, idx);
        mine.insert(key);
        if let Some(b) = self.block_ref(key) {
            out.push(b);
        }
    }
}
