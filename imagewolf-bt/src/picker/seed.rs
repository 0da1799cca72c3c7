//! Seeding side: spread distinct pieces before sending any piece twice.
//!
//! An initial seeder's upload is the swarm's only source at first; if it sends the same
//! piece to two peers before every piece has left it once, that upload was spent on a copy
//! the peers could have traded among themselves. [`SeedSpreader`] counts how many copies
//! of each piece went out and lists a peer's missing pieces least-sent first, which the
//! seeding side uses to choose SuggestPiece (BEP 6) messages, super-seeding HAVEs (BEP 16),
//! or the order to serve queued requests in.
//!
//! It uses the same bucketed order as the download picker, so recording a copy is O(1) and
//! listing costs only the pieces walked over. Counts saturate at [`SeedSpreader::MAX_COUNT`]
//! so memory stays bounded however long the seeder runs; by then the ordering has long
//! stopped mattering.

use bitvec::{order::Msb0, slice::BitSlice};
use rand::{rngs::SmallRng, SeedableRng};

use super::availability::RankedSet;
use crate::{Lengths, PieceIndex};

/// Counts copies of each piece sent out and ranks pieces least-sent first (ties at random).
#[derive(Clone, Debug)]
pub struct SeedSpreader {
    lengths: Lengths,
    ranked: RankedSet,
    rng: SmallRng,
}

impl SeedSpreader {
    /// Counts saturate here.
    pub const MAX_COUNT: u32 = u16::MAX as u32;

    /// A spreader for a torrent whose pieces have not been sent yet.
    pub fn new(lengths: Lengths) -> Self {
        Self::from_rng(lengths, rand::make_rng())
    }

    /// Like [`SeedSpreader::new`] with reproducible tie-breaks.
    pub fn with_rng_seed(lengths: Lengths, seed: u64) -> Self {
        Self::from_rng(lengths, SmallRng::seed_from_u64(seed))
    }

    fn from_rng(lengths: Lengths, mut rng: SmallRng) -> Self {
        let mut ranked = RankedSet::new(lengths.num_pieces(), Self::MAX_COUNT);
        for p in lengths.pieces() {
            ranked.insert(p.get(), &mut rng);
        }
        Self {
            lengths,
            ranked,
            rng,
        }
    }

    /// One more copy of `piece` left us (or otherwise entered the swarm). Call it when a
    /// peer starts receiving `piece` from us, once per peer and piece.
    pub fn record_sent(&mut self, piece: PieceIndex) {
        self.ranked.increment(piece.get(), &mut self.rng);
    }

    /// Copies of `piece` recorded so far.
    pub fn sent(&self, piece: PieceIndex) -> u32 {
        self.ranked.count(piece.get())
    }

    /// Appends to `out` up to `max` pieces that the peer (with `peer_bits`, or everything if
    /// `peer_has_all`) lacks, least-sent first. Returns how many were added.
    pub fn least_sent(
        &self,
        peer_bits: &BitSlice<u8, Msb0>,
        peer_has_all: bool,
        max: usize,
        out: &mut Vec<PieceIndex>,
    ) -> usize {
        if peer_has_all {
            return 0;
        }
        let before = out.len();
        let lacking = self
            .ranked
            .order()
            .iter()
            .filter(|&&p| !peer_bits.get(p as usize).is_some_and(|b| *b))
            .filter_map(|&p| self.lengths.piece(p))
            .take(max);
        out.extend(lacking);
        out.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitvec::vec::BitVec;

    #[test]
    fn every_piece_goes_out_once_before_any_twice() {
        let l = Lengths::new(10 * 1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 3);
        let empty = BitVec::<u8, Msb0>::repeat(false, 10);
        let mut order = Vec::new();
        for _ in 0..10 {
            let mut next = Vec::new();
            assert_eq!(s.least_sent(&empty, false, 1, &mut next), 1);
            s.record_sent(next[0]);
            order.push(next[0].get());
        }
        order.sort_unstable();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        assert!(l.pieces().all(|p| s.sent(p) == 1));
    }

    #[test]
    fn skips_what_the_peer_has() {
        let l = Lengths::new(4 * 1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        for _ in 0..3 {
            s.record_sent(l.piece(0).unwrap());
        }
        s.record_sent(l.piece(1).unwrap());
        let mut bits = BitVec::<u8, Msb0>::repeat(false, 4);
        bits.set(2, true);
        let mut out = Vec::new();
        assert_eq!(s.least_sent(&bits, false, 10, &mut out), 3);
        let got: Vec<u32> = out.iter().map(|p| p.get()).collect();
        assert_eq!(got, vec![3, 1, 0]);
        assert_eq!(s.least_sent(&bits, true, 10, &mut out), 0);
    }

    #[test]
    fn counts_saturate() {
        let l = Lengths::new(1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        let p = l.piece(0).unwrap();
        for _ in 0..SeedSpreader::MAX_COUNT + 5 {
            s.record_sent(p);
        }
        assert_eq!(s.sent(p), SeedSpreader::MAX_COUNT);
    }
}
