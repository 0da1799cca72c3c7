//! Initial seeding: every piece leaves the seed once before any piece leaves it twice.
//!
//! An initial seeder's upload is the swarm's only source at first. If it sends the same piece
//! to two peers before every piece has left it once, that upload was spent on a copy the
//! peers could have traded among themselves, and the whole swarm finishes later: on a
//! bandwidth-limited LAN every node ends roughly when the last distinct piece leaves the seed
//! (measured in `docs/bench/cluster.md`: a plain seed sent each piece 1.54 times on average).
//!
//! [`SeedSpreader`] is the sans-IO state machine of a BEP 16-style "super seed" tuned for a
//! LAN. The seed first tells each peer it has nothing, then *shows* it pieces one HAVE at a
//! time:
//! - each peer always has [`SeedSpreader::WINDOW`] shown pieces it has neither requested nor
//!   got, so its request pipeline to the seed never runs dry; a request for a shown piece
//!   shows the next one, so a fast peer is shown pieces as fast as it asks for them;
//! - the piece shown next is the one shown least often so far (ties at random), so peers
//!   receive distinct pieces from the seed and trade them among themselves;
//! - once every piece has *gone out* (some peer requested it from us, or announced having
//!   it), spreading is over: the caller shows every peer all remaining pieces
//!   ([`SeedSpreader::unshown`]) and seeds normally from then on, which lets the seed's
//!   upload help with the swarm's tail.
//!
//! Invariants (checked by the tests and the property test below):
//! - a piece is shown to one peer at most once;
//! - a peer's pending list holds at most `WINDOW` pieces, all shown to it, none requested by
//!   it or announced by it;
//! - `gone_out_count` equals the number of set bits of `gone_out`.

use std::collections::HashMap;

use bitvec::{order::Msb0, slice::BitSlice};
use rand::{rngs::SmallRng, SeedableRng};

use super::availability::RankedSet;
use super::{Bitfield, PeerKey};
use crate::{Lengths, PieceIndex};

/// What the seed has shown one peer.
#[derive(Clone, Debug)]
struct Shown {
    /// Pieces we sent a HAVE for.
    shown: Bitfield,
    /// Shown pieces the peer has neither requested from us nor announced (at most `WINDOW`).
    pending: Vec<u32>,
}

/// Chooses which pieces an initial seed shows to which peer (see the module docs).
#[derive(Clone, Debug)]
pub struct SeedSpreader {
    lengths: Lengths,
    /// Every piece, ranked by how often it was shown (plus one once it has gone out).
    ranked: RankedSet,
    rng: SmallRng,
    /// Pieces that some peer requested from us or announced having.
    gone_out: Bitfield,
    /// Set bits of `gone_out`.
    gone_out_count: u32,
    peers: HashMap<PeerKey, Shown>,
}

impl SeedSpreader {
    /// Shown pieces a peer may hold without having requested them.
    pub const WINDOW: usize = 2;
    /// Counts saturate here, so memory stays bounded however long the seed runs.
    pub const MAX_COUNT: u32 = u16::MAX as u32;

    /// A spreader for a seed none of whose pieces has gone out yet.
    pub fn new(lengths: Lengths) -> Self {
        Self::from_rng(lengths, rand::make_rng())
    }

    /// Like [`SeedSpreader::new`] with reproducible tie-breaks.
    pub fn with_rng_seed(lengths: Lengths, seed: u64) -> Self {
        Self::from_rng(lengths, SmallRng::seed_from_u64(seed))
    }

    fn from_rng(lengths: Lengths, mut rng: SmallRng) -> Self {
        let n = lengths.num_pieces();
        let mut ranked = RankedSet::new(n, Self::MAX_COUNT);
        for p in 0..n {
            ranked.insert(p, &mut rng);
        }
        Self {
            lengths,
            ranked,
            rng,
            gone_out: Bitfield::repeat(false, n as usize),
            gone_out_count: 0,
            peers: HashMap::new(),
        }
    }

    /// Whether every piece has gone out: spreading is over, seed normally.
    pub fn is_done(&self) -> bool {
        self.gone_out_count == self.lengths.num_pieces()
    }

    /// Pieces that have gone out so far.
    pub fn gone_out_count(&self) -> u32 {
        self.gone_out_count
    }

    /// Times `piece` was shown, plus one if it has gone out.
    pub fn shown_count(&self, piece: PieceIndex) -> u32 {
        self.ranked.count(piece.get())
    }

    /// A peer connected; nothing is shown to it yet.
    pub fn peer_joined(&mut self, peer: PeerKey) {
        let n = self.lengths.num_pieces() as usize;
        self.peers.insert(
            peer,
            Shown {
                shown: Bitfield::repeat(false, n),
                pending: Vec::with_capacity(Self::WINDOW),
            },
        );
    }

    /// A peer disconnected. Pieces shown only to it are shown to others as they ask for more
    /// (they stay least-shown among those that have not gone out).
    pub fn peer_left(&mut self, peer: PeerKey) {
        self.peers.remove(&peer);
    }

    /// `peer` asked us for a block of `piece`: the piece is on its way out.
    pub fn requested(&mut self, peer: PeerKey, piece: PieceIndex) {
        self.settle(peer, piece);
    }

    /// `peer` announced `piece` (HAVE): it got it, from us or from another peer.
    pub fn peer_has(&mut self, peer: PeerKey, piece: PieceIndex) {
        self.settle(peer, piece);
    }

    /// `peer` announced the pieces in `bits` (its Bitfield).
    pub fn peer_bitfield(&mut self, peer: PeerKey, bits: &BitSlice<u8, Msb0>) {
        for p in bits.iter_ones() {
            if let Some(piece) = self.lengths.piece(p as u32) {
                self.settle(peer, piece);
            }
        }
    }

    /// `peer` has every piece (HaveAll): another full copy exists, nothing is left to spread.
    pub fn peer_has_all(&mut self, peer: PeerKey) {
        for piece in self.lengths.pieces() {
            self.settle(peer, piece);
        }
    }

    fn settle(&mut self, peer: PeerKey, piece: PieceIndex) {
        let p = piece.get();
        if let Some(shown) = self.peers.get_mut(&peer) {
            shown.pending.retain(|&q| q != p);
        }
        if !self.gone_out.replace(piece.as_usize(), true) {
            self.gone_out_count += 1;
            // Rank it behind the pieces that are shown but still only here.
            self.ranked.increment(p, &mut self.rng);
        }
    }

    /// Shows `peer` more pieces until its window is full, appending them to `out` (send a
    /// HAVE for each). `peer_bits` / `peer_has_all` are what the peer announced; pieces it
    /// has are never shown. Returns how many were added. Nothing is shown once spreading is
    /// done (see [`SeedSpreader::unshown`]).
    pub fn top_up(
        &mut self,
        peer: PeerKey,
        peer_bits: &BitSlice<u8, Msb0>,
        peer_has_all: bool,
        out: &mut Vec<PieceIndex>,
    ) -> usize {
        if peer_has_all || self.is_done() {
            return 0;
        }
        let Some(shown) = self.peers.get_mut(&peer) else {
            return 0;
        };
        let want = Self::WINDOW.saturating_sub(shown.pending.len());
        if want == 0 {
            return 0;
        }
        let before = out.len();
        for &p in self.ranked.order() {
            if out.len() - before == want {
                break;
            }
            let i = p as usize;
            if shown.shown[i] || peer_bits.get(i).is_some_and(|b| *b) {
                continue;
            }
            if let Some(piece) = self.lengths.piece(p) {
                out.push(piece);
            }
        }
        for piece in &out[before..] {
            shown.shown.set(piece.as_usize(), true);
            shown.pending.push(piece.get());
            self.ranked.increment(piece.get(), &mut self.rng);
        }
        out.len() - before
    }

    /// Appends the pieces not yet shown to `peer` that it does not have: what to send HAVEs
    /// for when spreading is done. Marks them shown.
    pub fn unshown(
        &mut self,
        peer: PeerKey,
        peer_bits: &BitSlice<u8, Msb0>,
        peer_has_all: bool,
        out: &mut Vec<PieceIndex>,
    ) {
        let Some(shown) = self.peers.get_mut(&peer) else {
            return;
        };
        if peer_has_all {
            return;
        }
        for piece in self.lengths.pieces() {
            let i = piece.as_usize();
            if !shown.shown[i] && !peer_bits.get(i).is_some_and(|b| *b) {
                shown.shown.set(i, true);
                out.push(piece);
            }
        }
        shown.pending.clear();
    }

    /// Checks the invariants in the module docs; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        assert_eq!(self.gone_out.count_ones() as u32, self.gone_out_count);
        for shown in self.peers.values() {
            assert!(shown.pending.len() <= Self::WINDOW);
            for &p in &shown.pending {
                assert!(shown.shown[p as usize]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(n: usize) -> Bitfield {
        Bitfield::repeat(false, n)
    }

    #[test]
    fn every_piece_is_shown_once_before_any_twice() {
        let l = Lengths::new(40 * 1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 3);
        let peers: Vec<PeerKey> = (0..4).map(PeerKey).collect();
        for &p in &peers {
            s.peer_joined(p);
        }
        let empty = bits(40);
        let mut shown = Vec::new();
        // Each peer keeps asking for what it is shown; 40 pieces, 4 peers.
        for _ in 0..10 {
            for &peer in &peers {
                let mut out = Vec::new();
                s.top_up(peer, &empty, false, &mut out);
                for piece in out {
                    s.requested(peer, piece);
                    shown.push(piece.get());
                }
            }
            s.check();
        }
        shown.sort_unstable();
        shown.dedup();
        assert_eq!(shown.len(), 40, "every piece shown exactly once: {shown:?}");
        assert!(s.is_done());
    }

    #[test]
    fn window_stays_full_until_requested() {
        let l = Lengths::new(10 * 1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        let a = PeerKey(1);
        s.peer_joined(a);
        let empty = bits(10);
        let mut out = Vec::new();
        assert_eq!(s.top_up(a, &empty, false, &mut out), SeedSpreader::WINDOW);
        assert_eq!(s.top_up(a, &empty, false, &mut out), 0, "window is full");
        s.requested(a, out[0]);
        assert_eq!(s.top_up(a, &empty, false, &mut out), 1);
        assert_eq!(out.len(), SeedSpreader::WINDOW + 1);
        s.check();
    }

    #[test]
    fn never_shows_what_the_peer_has() {
        let l = Lengths::new(4 * 1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        let a = PeerKey(1);
        s.peer_joined(a);
        let mut have = bits(4);
        have.set(0, true);
        have.set(1, true);
        have.set(2, true);
        s.peer_bitfield(a, &have);
        let mut out = Vec::new();
        assert_eq!(s.top_up(a, &have, false, &mut out), 1);
        assert_eq!(out[0].get(), 3);
        assert_eq!(s.top_up(a, &have, true, &mut out), 0);
    }

    #[test]
    fn done_when_every_piece_went_out_then_shows_the_rest() {
        let l = Lengths::new(6 * 1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 7);
        let (a, b) = (PeerKey(1), PeerKey(2));
        s.peer_joined(a);
        s.peer_joined(b);
        let empty = bits(6);
        let mut shown_a = Vec::new();
        s.top_up(a, &empty, false, &mut shown_a);
        for p in l.pieces() {
            assert!(!s.is_done());
            s.peer_has(b, p);
        }
        assert!(s.is_done());
        let mut out = Vec::new();
        assert_eq!(s.top_up(a, &empty, false, &mut out), 0);
        s.unshown(a, &empty, false, &mut out);
        assert_eq!(out.len() + shown_a.len(), 6);
        assert!(out.iter().all(|p| !shown_a.contains(p)));
    }

    #[test]
    fn a_departed_peers_pieces_are_shown_to_others_first() {
        let l = Lengths::new(8 * 1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 5);
        let (a, b) = (PeerKey(1), PeerKey(2));
        s.peer_joined(a);
        let empty = bits(8);
        let mut to_a = Vec::new();
        s.top_up(a, &empty, false, &mut to_a);
        s.peer_left(a);
        s.peer_joined(b);
        // Pieces shown to a but never gone out rank with count 1; unshown ones (count 0)
        // come first, then a's.
        let mut to_b = Vec::new();
        for _ in 0..4 {
            s.top_up(b, &empty, false, &mut to_b);
            for &p in &to_b[to_b.len().saturating_sub(2)..] {
                s.requested(b, p);
            }
        }
        assert!(to_b.len() >= 6);
        assert!(
            to_b[..6].iter().all(|p| !to_a.contains(p)),
            "{to_a:?} {to_b:?}"
        );
        s.top_up(b, &empty, false, &mut to_b);
        assert!(to_a.iter().all(|p| to_b.contains(p)));
    }

    #[test]
    fn counts_saturate() {
        let l = Lengths::new(1024, 1024).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        let empty = bits(1);
        for k in 0..SeedSpreader::MAX_COUNT + 5 {
            let peer = PeerKey(u64::from(k));
            s.peer_joined(peer);
            s.top_up(peer, &empty, false, &mut Vec::new());
            s.peer_left(peer);
        }
        assert_eq!(s.shown_count(l.piece(0).unwrap()), SeedSpreader::MAX_COUNT);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Join(u8),
        Leave(u8),
        TopUp(u8),
        RequestPending(u8),
        Has(u8, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6).prop_map(Op::Join),
            (0u8..6).prop_map(Op::Leave),
            (0u8..6).prop_map(Op::TopUp),
            (0u8..6).prop_map(Op::RequestPending),
            ((0u8..6), (0u16..64)).prop_map(|(p, i)| Op::Has(p, i)),
        ]
    }

    proptest! {
        /// Random peer behaviour: invariants hold, no piece is shown twice to one peer, and
        /// while a peer lacks pieces that were never shown and never went out, it is shown
        /// only those.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..300), pieces in 1u32..64) {
            let l = Lengths::new(u64::from(pieces) * 1024, 1024).unwrap();
            let mut s = SeedSpreader::with_rng_seed(l, 9);
            let mut have: HashMap<u8, Bitfield> = HashMap::new();
            let mut shown_to: HashMap<u8, Vec<u32>> = HashMap::new();
            let mut times_shown = vec![0u32; pieces as usize];
            let mut gone_out = vec![false; pieces as usize];
            for op in ops {
                match op {
                    Op::Join(p) => {
                        s.peer_joined(PeerKey(p.into()));
                        have.insert(p, bits(pieces as usize));
                        shown_to.insert(p, Vec::new());
                    }
                    Op::Leave(p) => {
                        s.peer_left(PeerKey(p.into()));
                        have.remove(&p);
                        shown_to.remove(&p);
                    }
                    Op::TopUp(p) => {
                        let Some(bits) = have.get(&p) else { continue };
                        // Pieces the peer lacks that were never shown nor went out: the
                        // spreader must use all of these before showing any other piece.
                        let fresh: Vec<u32> = (0..pieces)
                            .filter(|&i| times_shown[i as usize] == 0 && !gone_out[i as usize] && !bits[i as usize])
                            .collect();
                        let mut out = Vec::new();
                        s.top_up(PeerKey(p.into()), bits, false, &mut out);
                        let got: Vec<u32> = out.iter().map(|p| p.get()).collect();
                        if got.iter().any(|i| !fresh.contains(i)) {
                            prop_assert!(fresh.iter().all(|i| got.contains(i)),
                                "showed an old piece while fresh ones were left: {got:?} {fresh:?}");
                        }
                        for piece in &out {
                            let i = piece.as_usize();
                            prop_assert!(!bits[i], "shown a piece the peer has");
                            let list = shown_to.get_mut(&p).unwrap();
                            prop_assert!(!list.contains(&piece.get()), "shown twice to one peer");
                            list.push(piece.get());
                            times_shown[i] += 1;
                        }
                    }
                    Op::RequestPending(p) => {
                        if let Some(&piece) = shown_to.get(&p).and_then(|l| l.last()) {
                            s.requested(PeerKey(p.into()), l.piece(piece).unwrap());
                            gone_out[piece as usize] = true;
                        }
                    }
                    Op::Has(p, i) => {
                        let i = u32::from(i) % pieces;
                        if let Some(bits) = have.get_mut(&p) {
                            bits.set(i as usize, true);
                            s.peer_has(PeerKey(p.into()), l.piece(i).unwrap());
                            gone_out[i as usize] = true;
                        }
                    }
                }
                s.check();
            }
        }
    }
}
