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
//! - each peer always has up to [`SeedSpreader::WINDOW_BYTES`] of shown pieces it has neither
//!   requested nor got, so its request pipeline to the seed never runs dry; a request for a
//!   shown piece shows the next one, so a fast peer is shown pieces as fast as it asks;
//! - only *free* pieces are shown: not gone out, and not waiting in another peer's window.
//!   The least-shown free piece goes first (ties at random), so peers receive distinct pieces
//!   from the seed and trade them among themselves;
//! - when no free piece is left (the last ones wait in peers' windows), nothing is shown:
//!   showing a piece a second time then would spend the seed's upload on a copy. A window's
//!   pieces are freed for others only when its peer leaves, or stalls (asks the seed for
//!   nothing for [`SeedSpreader::STALL`]; see [`SeedSpreader::tick`]);
//! - a peer that was given more than 5/4 of the average share of distinct pieces (plus a
//!   window) is shown nothing until the others catch up. The average is over live peers
//!   (those that asked the seed for something within [`SeedSpreader::STALL`], as of the
//!   last tick or since), so a stalled peer cannot hold the others back. TCP does not share the seed's
//!   uplink fairly among its connections (under BBR the first peers to connect took 20-40x
//!   the bytes of the others for seconds), and a peer holding few distinct pieces has little
//!   its neighbours need, so its own uplink idles while theirs is the bottleneck;
//! - once every piece has *gone out* (some peer requested it from us, or announced having
//!   it), spreading is over: the caller shows every peer all remaining pieces
//!   ([`SeedSpreader::unshown`]) and seeds normally from then on, which lets the seed's
//!   upload help with the swarm's tail.
//!
//! Measured on the 16-node cluster bench (`docs/bench/cluster-swarm-notes.md`): showing the
//! pieces waiting in other windows again, as this did before, cost the seed 1.1-1.2 copies
//! per piece and kept the last 40 distinct pieces from leaving it for 2.4 s.
//!
//! Invariants (checked by `SeedSpreader::check` after every step of the property test):
//! - a piece is shown to one peer at most once;
//! - a peer's window holds at most `window_len` pieces, all shown to it;
//! - a piece is *free* (listed in `free`) iff it has not gone out and is in no window, so a
//!   piece that has not gone out is in at most one window;
//! - `gone_out_count` equals the number of set bits of `gone_out`; `live_peers` and
//!   `live_given` count the peers marked live and their `given`;
//! - every piece in a peer's `given_pieces` has gone out (it is freed again only when that
//!   peer leaves, if no peer announced it).
//! - an open peer ([`SeedSpreader::open_view`]) has no window and is not live.
//!
//! Spreading pays off only when peers trade what they got among themselves. A peer for whom
//! it does not (a client that is not ours, which may ask on a timer and so get one window
//! per tick; a peer alone with the seed) is given the open view: everything, as from a plain
//! seed ([`SeedSpreader::open_view`]). The caller decides who.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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
    /// The window: shown pieces the peer has neither requested from us nor announced (at
    /// most `window_len`).
    window: Vec<u32>,
    /// When the peer last asked us for a block, or was shown a piece into an empty window:
    /// a window older than [`SeedSpreader::STALL`] past this is released.
    last_progress: Instant,
    /// Pieces that went out to this peer: it was the first to ask us for them.
    given: u32,
    /// Those pieces, to be freed again if the peer leaves before anyone announced them.
    given_pieces: Vec<u32>,
    /// Counted in the fair share: it asked us for something within
    /// [`SeedSpreader::STALL`] as of the last tick, or since. Never for an open peer.
    live: bool,
    /// Shown everything ([`SeedSpreader::open_view`]): no window, not in the fair share.
    open: bool,
}

/// Chooses which pieces an initial seed shows to which peer (see the module docs).
#[derive(Clone, Debug)]
pub struct SeedSpreader {
    lengths: Lengths,
    /// The free pieces (not gone out, in no window), ranked by how often each was shown.
    /// Counts are kept for pieces that are not listed.
    free: RankedSet,
    rng: SmallRng,
    /// Pieces that some peer requested from us or announced having.
    gone_out: Bitfield,
    /// Set bits of `gone_out`.
    gone_out_count: u32,
    /// Pieces some peer announced having (a copy exists outside the seed).
    announced: Bitfield,
    /// Pieces in a full window: [`SeedSpreader::WINDOW_BYTES`] of them, at least
    /// [`SeedSpreader::MIN_WINDOW`].
    window_len: usize,
    peers: HashMap<PeerKey, Shown>,
    /// Live peers, and the sum of their `given`: the fair share is their average.
    live_peers: u64,
    live_given: u64,
}

impl SeedSpreader {
    /// Bytes of shown pieces a peer may hold without having requested them (at least
    /// [`SeedSpreader::MIN_WINDOW`] pieces). A show costs a round trip through the seed's
    /// busy uplink (its queue holds 100-200 ms on the bench) before the peer can ask for it,
    /// so the window should cover that round trip at the peer's share of the seed's link.
    /// Two pieces did when pieces were 256 KiB; the window is kept at that many bytes for
    /// 64 KiB pieces (a 2-piece window measured no better, within the bench's noise).
    pub const WINDOW_BYTES: u64 = 512 * 1024;
    /// The fewest shown pieces a peer may hold without having requested them.
    pub const MIN_WINDOW: usize = 2;
    /// Counts saturate here, so memory stays bounded however long the seed runs.
    pub const MAX_COUNT: u32 = u16::MAX as u32;
    /// A peer that asks the seed for nothing this long has its window's pieces freed for
    /// others. A live peer asks within a round trip of being shown a piece (its pipeline to
    /// the seed is about a second deep), so this only catches a peer that stopped.
    pub const STALL: Duration = Duration::from_secs(1);

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
        let mut free = RankedSet::new(n, Self::MAX_COUNT);
        for p in 0..n {
            free.insert(p, &mut rng);
        }
        Self {
            lengths,
            free,
            rng,
            gone_out: Bitfield::repeat(false, n as usize),
            gone_out_count: 0,
            announced: Bitfield::repeat(false, n as usize),
            window_len: ((Self::WINDOW_BYTES / u64::from(lengths.piece_len())) as usize)
                .max(Self::MIN_WINDOW),
            peers: HashMap::new(),
            live_peers: 0,
            live_given: 0,
        }
    }

    /// Whether every piece has gone out: spreading is over, seed normally.
    pub fn is_done(&self) -> bool {
        self.gone_out_count == self.lengths.num_pieces()
    }

    /// Pieces a full window holds.
    pub fn window_len(&self) -> usize {
        self.window_len
    }

    /// Pieces that have gone out so far.
    pub fn gone_out_count(&self) -> u32 {
        self.gone_out_count
    }

    /// Times `piece` was shown to a peer.
    pub fn shown_count(&self, piece: PieceIndex) -> u32 {
        self.free.count(piece.get())
    }

    /// A peer connected; nothing is shown to it yet.
    pub fn peer_joined(&mut self, peer: PeerKey, now: Instant) {
        let n = self.lengths.num_pieces() as usize;
        let fresh = Shown {
            shown: Bitfield::repeat(false, n),
            window: Vec::with_capacity(self.window_len),
            last_progress: now,
            given: 0,
            given_pieces: Vec::new(),
            live: true,
            open: false,
        };
        self.live_peers += 1;
        // A key joining twice starts over; what its old window held is free again.
        if let Some(old) = self.peers.insert(peer, fresh) {
            self.forget(&old);
        }
    }

    /// A peer disconnected. The pieces in its window are free again: shown to others first
    /// among those shown before (they are the least shown). So are the pieces it was the
    /// first to ask us for that no peer has announced: their only copy may have left with
    /// it, and a seed that shows nothing more once every piece is out
    /// ([`crate::AddTorrent::holding_spread`]) would otherwise never send them again.
    pub fn peer_left(&mut self, peer: PeerKey) {
        if let Some(shown) = self.peers.remove(&peer) {
            self.forget(&shown);
        }
    }

    /// What a peer that left (or joined again) held: its window and its unannounced pieces
    /// are free again.
    fn forget(&mut self, shown: &Shown) {
        self.forget_live(shown);
        self.free_all(&shown.window);
        let lost: Vec<u32> = shown
            .given_pieces
            .iter()
            .copied()
            .filter(|&p| self.gone_out[p as usize] && !self.announced[p as usize])
            .collect();
        if lost.is_empty() {
            return;
        }
        for &p in &lost {
            self.gone_out.set(p as usize, false);
        }
        self.gone_out_count -= lost.len() as u32;
        // A lost piece may sit in another peer's window (shown there after this peer's
        // window stalled): it is then not free, but waiting there.
        let mut in_windows = Bitfield::repeat(false, self.lengths.num_pieces() as usize);
        for other in self.peers.values() {
            for &p in &other.window {
                in_windows.set(p as usize, true);
            }
        }
        for p in lost {
            if !in_windows[p as usize] {
                self.free.insert(p, &mut self.rng);
            }
        }
    }

    /// Call once per tick. Frees the windows of peers that asked us for nothing for
    /// [`SeedSpreader::STALL`] (their pieces are shown to others; the peer keeps what it was
    /// shown and may still ask for it), and recounts the live peers whose average is the
    /// fair share.
    /// Returns how many pieces were freed.
    pub fn tick(&mut self, now: Instant) -> usize {
        let mut freed = Vec::new();
        (self.live_peers, self.live_given) = (0, 0);
        for shown in self.peers.values_mut().filter(|s| !s.open) {
            shown.live = now.saturating_duration_since(shown.last_progress) < Self::STALL;
            if shown.live {
                self.live_peers += 1;
                self.live_given += u64::from(shown.given);
            } else {
                freed.append(&mut shown.window);
            }
        }
        self.free_all(&freed);
        freed.len()
    }

    fn forget_live(&mut self, shown: &Shown) {
        if shown.live {
            self.live_peers -= 1;
            self.live_given -= u64::from(shown.given);
        }
    }

    /// Whether a peer that was given `given` pieces may be shown more: at most 5/4 of the
    /// live peers' average plus a window (no cap while no peer is live).
    fn within_share(&self, given: u32) -> bool {
        self.live_peers == 0
            || u64::from(given)
                <= self.live_given * 5 / (4 * self.live_peers) + self.window_len as u64
    }

    fn free_all(&mut self, pieces: &[u32]) {
        for &p in pieces {
            if !self.gone_out[p as usize] {
                self.free.insert(p, &mut self.rng);
            }
        }
    }

    /// `peer` asked us for a block of `piece`: the piece is on its way out.
    pub fn requested(&mut self, peer: PeerKey, piece: PieceIndex, now: Instant) {
        let first = self.settle(peer, piece);
        if let Some(shown) = self.peers.get_mut(&peer) {
            shown.last_progress = now;
            if !shown.live && !shown.open {
                shown.live = true;
                self.live_peers += 1;
                self.live_given += u64::from(shown.given);
            }
            if first {
                shown.given_pieces.push(piece.get());
                if shown.given < u32::MAX {
                    shown.given += 1;
                    if shown.live {
                        self.live_given += 1;
                    }
                }
            }
        }
    }

    /// `peer` announced `piece` (HAVE): it got it, from us or from another peer.
    pub fn peer_has(&mut self, peer: PeerKey, piece: PieceIndex) {
        self.announced.set(piece.as_usize(), true);
        self.settle(peer, piece);
    }

    /// `peer` announced the pieces in `bits` (its Bitfield).
    pub fn peer_bitfield(&mut self, peer: PeerKey, bits: &BitSlice<u8, Msb0>) {
        for p in bits.iter_ones() {
            if let Some(piece) = self.lengths.piece(p as u32) {
                self.announced.set(piece.as_usize(), true);
                self.settle(peer, piece);
            }
        }
    }

    /// `peer` has every piece (HaveAll): another full copy exists, nothing is left to spread.
    pub fn peer_has_all(&mut self, peer: PeerKey) {
        for piece in self.lengths.pieces() {
            self.announced.set(piece.as_usize(), true);
            self.settle(peer, piece);
        }
    }

    /// Takes `piece` out of `peer`'s window and marks it gone out. Returns whether this is
    /// the first time it went out.
    fn settle(&mut self, peer: PeerKey, piece: PieceIndex) -> bool {
        let p = piece.get();
        if let Some(shown) = self.peers.get_mut(&peer) {
            shown.window.retain(|&q| q != p);
        }
        if self.gone_out.replace(piece.as_usize(), true) {
            return false;
        }
        self.gone_out_count += 1;
        self.free.remove(p);
        true
    }

    /// Shows `peer` more free pieces until its window is full, appending them to `out` (send
    /// a HAVE for each). `peer_bits` / `peer_has_all` are what the peer announced; pieces it
    /// has are never shown. Returns how many were added. Nothing is shown once spreading is
    /// done (see [`SeedSpreader::unshown`]).
    pub fn top_up(
        &mut self,
        peer: PeerKey,
        peer_bits: &BitSlice<u8, Msb0>,
        peer_has_all: bool,
        now: Instant,
        out: &mut Vec<PieceIndex>,
    ) -> usize {
        if peer_has_all || self.is_done() || self.free.order().is_empty() {
            return 0;
        }
        match self.peers.get(&peer) {
            Some(shown) if !shown.open && self.within_share(shown.given) => {}
            _ => return 0,
        }
        let Some(shown) = self.peers.get_mut(&peer) else {
            return 0;
        };
        let want = self.window_len.saturating_sub(shown.window.len());
        if want == 0 {
            return 0;
        }
        let before = out.len();
        for &p in self.free.order() {
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
        if out.len() > before && shown.window.is_empty() {
            shown.last_progress = now;
        }
        for piece in &out[before..] {
            let p = piece.get();
            shown.shown.set(piece.as_usize(), true);
            shown.window.push(p);
            self.free.remove(p);
            self.free.increment(p, &mut self.rng);
        }
        out.len() - before
    }

    /// Shows `peer` everything from now on, as a plain seed would: appends the pieces not yet
    /// shown to it that it does not have to `out` (send a HAVE for each, or a HaveAll /
    /// Bitfield if nothing was sent yet). Its window's pieces are free for others again; it
    /// is shown no more windows and leaves the fair share. What it asks for still goes out
    /// (and is freed again if it leaves before anyone announced it).
    ///
    /// For peers with whom spreading does not pay off: a client that is not ours may refill
    /// its requests on a timer (one window per tick: Transmission got 0.5 MB/s), and a peer
    /// that is alone with the seed has nobody to trade with. Returns whether the peer was
    /// spreading before.
    pub fn open_view(
        &mut self,
        peer: PeerKey,
        peer_bits: &BitSlice<u8, Msb0>,
        peer_has_all: bool,
        out: &mut Vec<PieceIndex>,
    ) -> bool {
        let Some(shown) = self.peers.get_mut(&peer) else {
            return false;
        };
        if shown.open {
            return false;
        }
        shown.open = true;
        let window = std::mem::take(&mut shown.window);
        if shown.live {
            shown.live = false;
            self.live_peers -= 1;
            self.live_given -= u64::from(shown.given);
        }
        self.free_all(&window);
        let before = out.len();
        self.unshown(peer, peer_bits, peer_has_all, out);
        // Shown, like a window's pieces: pieces nobody was shown go to the others first.
        for piece in &out[before..] {
            self.free.increment(piece.get(), &mut self.rng);
        }
        true
    }

    /// Whether `peer` was shown everything ([`SeedSpreader::open_view`]).
    pub fn is_open(&self, peer: PeerKey) -> bool {
        self.peers.get(&peer).is_some_and(|s| s.open)
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
        shown.window.clear();
    }

    /// Checks the invariants in the module docs; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        assert_eq!(self.gone_out.count_ones() as u32, self.gone_out_count);
        self.free.check().unwrap();
        let live = self.peers.values().filter(|s| s.live);
        assert_eq!(live.clone().count() as u64, self.live_peers);
        assert_eq!(
            live.map(|s| u64::from(s.given)).sum::<u64>(),
            self.live_given
        );
        let mut windows = vec![0u32; self.lengths.num_pieces() as usize];
        for shown in self.peers.values() {
            assert!(!shown.open || (shown.window.is_empty() && !shown.live));
            assert!(shown
                .given_pieces
                .iter()
                .all(|&p| self.gone_out[p as usize]));
            assert!(shown.window.len() <= self.window_len);
            for &p in &shown.window {
                assert!(shown.shown[p as usize]);
                windows[p as usize] += 1;
            }
        }
        for (p, &in_windows) in windows.iter().enumerate() {
            let gone_out = self.gone_out[p];
            assert_eq!(
                self.free.contains(p as u32),
                !gone_out && in_windows == 0,
                "piece {p}: free iff not gone out and in no window"
            );
            assert!(
                gone_out || in_windows <= 1,
                "piece {p} in {in_windows} windows"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pieces big enough that a window is [`SeedSpreader::MIN_WINDOW`] of them.
    const PIECE: u64 = SeedSpreader::WINDOW_BYTES / SeedSpreader::MIN_WINDOW as u64;

    /// A fixed clock reading for the tests (the spreader only compares instants).
    fn t0() -> Instant {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn bits(n: usize) -> Bitfield {
        Bitfield::repeat(false, n)
    }

    #[test]
    fn every_piece_is_shown_once_before_any_twice() {
        let l = Lengths::new(40 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 3);
        let peers: Vec<PeerKey> = (0..4).map(PeerKey).collect();
        for &p in &peers {
            s.peer_joined(p, t0());
        }
        let empty = bits(40);
        let mut shown = Vec::new();
        // Each peer keeps asking for what it is shown; 40 pieces, 4 peers.
        for _ in 0..10 {
            for &peer in &peers {
                let mut out = Vec::new();
                s.top_up(peer, &empty, false, t0(), &mut out);
                for piece in out {
                    s.requested(peer, piece, t0());
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
        let l = Lengths::new(10 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        let a = PeerKey(1);
        s.peer_joined(a, t0());
        let empty = bits(10);
        let mut out = Vec::new();
        assert_eq!(s.top_up(a, &empty, false, t0(), &mut out), s.window_len());
        assert_eq!(
            s.top_up(a, &empty, false, t0(), &mut out),
            0,
            "window is full"
        );
        s.requested(a, out[0], t0());
        assert_eq!(s.top_up(a, &empty, false, t0(), &mut out), 1);
        assert_eq!(out.len(), s.window_len() + 1);
        s.check();
    }

    #[test]
    fn never_shows_what_the_peer_has() {
        let l = Lengths::new(4 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        let a = PeerKey(1);
        s.peer_joined(a, t0());
        let mut have = bits(4);
        have.set(0, true);
        have.set(1, true);
        have.set(2, true);
        s.peer_bitfield(a, &have);
        let mut out = Vec::new();
        assert_eq!(s.top_up(a, &have, false, t0(), &mut out), 1);
        assert_eq!(out[0].get(), 3);
        assert_eq!(s.top_up(a, &have, true, t0(), &mut out), 0);
    }

    #[test]
    fn done_when_every_piece_went_out_then_shows_the_rest() {
        let l = Lengths::new(6 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 7);
        let (a, b) = (PeerKey(1), PeerKey(2));
        s.peer_joined(a, t0());
        s.peer_joined(b, t0());
        let empty = bits(6);
        let mut shown_a = Vec::new();
        s.top_up(a, &empty, false, t0(), &mut shown_a);
        for p in l.pieces() {
            assert!(!s.is_done());
            s.peer_has(b, p);
        }
        assert!(s.is_done());
        let mut out = Vec::new();
        assert_eq!(s.top_up(a, &empty, false, t0(), &mut out), 0);
        s.unshown(a, &empty, false, &mut out);
        assert_eq!(out.len() + shown_a.len(), 6);
        assert!(out.iter().all(|p| !shown_a.contains(p)));
    }

    #[test]
    fn pieces_whose_only_copy_left_are_free_again() {
        let l = Lengths::new(4 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 11);
        let (a, b) = (PeerKey(1), PeerKey(2));
        let empty = bits(4);
        s.peer_joined(a, t0());
        s.peer_joined(b, t0());
        // a asks for every piece; b announces one of them, then a leaves.
        let mut to_a = Vec::new();
        while s.top_up(a, &empty, false, t0(), &mut to_a) > 0 {
            for &p in &to_a[to_a.len() - s.window_len().min(to_a.len())..] {
                s.requested(a, p, t0());
            }
        }
        assert!(s.is_done(), "{} of 4 out", s.gone_out_count());
        let kept = to_a[0];
        s.peer_has(b, kept);
        s.peer_left(a);
        s.check();
        // The three only a had are free again and shown to b; the one b has is not.
        assert_eq!(s.gone_out_count(), 1);
        assert!(!s.is_done());
        let mut to_b = Vec::new();
        let mut has_b = bits(4);
        has_b.set(kept.as_usize(), true);
        while s.top_up(b, &has_b, false, t0(), &mut to_b) > 0 {
            for &p in &to_b[to_b.len() - s.window_len().min(to_b.len())..] {
                s.requested(b, p, t0());
            }
        }
        to_b.sort();
        let mut expected: Vec<PieceIndex> = to_a.iter().copied().filter(|&p| p != kept).collect();
        expected.sort();
        assert_eq!(to_b, expected);
        assert!(s.is_done());
        s.check();
    }

    #[test]
    fn a_departed_peers_pieces_are_shown_to_others_first() {
        let l = Lengths::new(8 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 5);
        let (a, b) = (PeerKey(1), PeerKey(2));
        s.peer_joined(a, t0());
        let empty = bits(8);
        let mut to_a = Vec::new();
        s.top_up(a, &empty, false, t0(), &mut to_a);
        s.peer_left(a);
        s.peer_joined(b, t0());
        // Pieces shown to a but never gone out rank with count 1; unshown ones (count 0)
        // come first, then a's.
        let mut to_b = Vec::new();
        for _ in 0..4 {
            s.top_up(b, &empty, false, t0(), &mut to_b);
            for &p in &to_b[to_b.len().saturating_sub(2)..] {
                s.requested(b, p, t0());
            }
        }
        assert!(to_b.len() >= 6);
        assert!(
            to_b[..6].iter().all(|p| !to_a.contains(p)),
            "{to_a:?} {to_b:?}"
        );
        s.top_up(b, &empty, false, t0(), &mut to_b);
        assert!(to_a.iter().all(|p| to_b.contains(p)));
    }

    #[test]
    fn waiting_windows_are_not_shown_again_until_their_peer_stalls() {
        let l = Lengths::new(4 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 2);
        let (a, b) = (PeerKey(1), PeerKey(2));
        s.peer_joined(a, t0());
        s.peer_joined(b, t0());
        let empty = bits(4);
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        s.top_up(a, &empty, false, t0(), &mut to_a);
        s.top_up(b, &empty, false, t0(), &mut to_b);
        // a asks for both of its pieces; every other piece waits in b's window.
        let half = t0() + SeedSpreader::STALL / 2;
        for &p in &to_a {
            s.requested(a, p, half);
        }
        assert_eq!(s.top_up(a, &empty, false, half, &mut to_a), 0);
        assert_eq!(s.tick(half), 0, "b was shown its window just now");
        assert_eq!(
            s.tick(t0() + SeedSpreader::STALL),
            2,
            "b asked for nothing for STALL"
        );
        assert_eq!(s.top_up(a, &empty, false, half, &mut to_a), 2);
        assert!(to_b.iter().all(|p| to_a.contains(p)), "{to_a:?} {to_b:?}");
        s.check();
        // b may still ask for what it was shown.
        s.requested(b, to_b[0], half);
        s.check();
    }

    #[test]
    fn a_peer_that_keeps_asking_keeps_its_window() {
        let l = Lengths::new(8 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 4);
        let a = PeerKey(1);
        s.peer_joined(a, t0());
        let empty = bits(8);
        let mut out = Vec::new();
        s.top_up(a, &empty, false, t0(), &mut out);
        s.requested(a, out[0], t0() + SeedSpreader::STALL / 2);
        s.top_up(a, &empty, false, t0() + SeedSpreader::STALL / 2, &mut out);
        assert_eq!(s.tick(t0() + SeedSpreader::STALL), 0);
        assert_eq!(s.tick(t0() + SeedSpreader::STALL * 2), s.window_len());
        s.check();
    }

    #[test]
    fn a_peer_ahead_of_its_share_waits_for_the_others() {
        let l = Lengths::new(64 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 6);
        let (fast, slow) = (PeerKey(1), PeerKey(2));
        s.peer_joined(fast, t0());
        s.peer_joined(slow, t0());
        let empty = bits(64);
        let mut to_slow = Vec::new();
        s.top_up(slow, &empty, false, t0(), &mut to_slow);
        // The fast peer asks for everything it is shown; the slow one asks for nothing.
        let mut given_fast = 0;
        loop {
            let mut out = Vec::new();
            if s.top_up(fast, &empty, false, t0(), &mut out) == 0 {
                break;
            }
            for p in out {
                s.requested(fast, p, t0());
                given_fast += 1;
            }
        }
        // Average share with the slow peer at 0: given / 2; the fast one stops once it is
        // more than a window past 5/4 of that.
        let window = s.window_len();
        assert!(
            given_fast > window,
            "the fast peer was served: {given_fast}"
        );
        assert!(given_fast <= 3 * window + 1, "{given_fast} > 3 windows");
        assert!(!s.is_done());
        // Once the slow peer takes its pieces, the fast one is shown more.
        for &p in &to_slow {
            s.requested(slow, p, t0());
        }
        let mut out = Vec::new();
        s.top_up(slow, &empty, false, t0(), &mut out);
        for p in out {
            s.requested(slow, p, t0());
        }
        assert!(s.top_up(fast, &empty, false, t0(), &mut Vec::new()) > 0);
        s.check();
    }

    #[test]
    fn a_stalled_peer_does_not_hold_the_share_back() {
        let l = Lengths::new(64 * PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 8);
        let (fast, stuck) = (PeerKey(1), PeerKey(2));
        s.peer_joined(fast, t0());
        s.peer_joined(stuck, t0());
        let empty = bits(64);
        s.top_up(stuck, &empty, false, t0(), &mut Vec::new());
        let half = t0() + SeedSpreader::STALL / 2;
        let serve_fast = |s: &mut SeedSpreader, at: Instant| {
            let mut n = 0;
            loop {
                let mut out = Vec::new();
                if s.top_up(fast, &empty, false, at, &mut out) == 0 {
                    return n;
                }
                for p in out {
                    s.requested(fast, p, at);
                    n += 1;
                }
            }
        };
        assert!(serve_fast(&mut s, half) > 0);
        assert_eq!(
            serve_fast(&mut s, half),
            0,
            "capped by the stuck peer's share"
        );
        // The stuck peer asked for nothing for STALL: its window is freed and it no longer
        // counts in the average, so the fast peer is served until every piece is out.
        assert_eq!(s.tick(t0() + SeedSpreader::STALL), s.window_len());
        serve_fast(&mut s, t0() + SeedSpreader::STALL);
        assert!(s.is_done(), "{} of 64 out", s.gone_out_count());
        s.check();
    }

    #[test]
    fn counts_saturate() {
        let l = Lengths::new(PIECE, PIECE as u32).unwrap();
        let mut s = SeedSpreader::with_rng_seed(l, 1);
        let empty = bits(1);
        for k in 0..SeedSpreader::MAX_COUNT + 5 {
            let peer = PeerKey(u64::from(k));
            s.peer_joined(peer, t0());
            s.top_up(peer, &empty, false, t0(), &mut Vec::new());
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
        /// Time passes (ms) and stalled windows are released.
        Tick(u16),
        /// The peer is shown everything.
        Open(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6).prop_map(Op::Join),
            (0u8..6).prop_map(Op::Leave),
            (0u8..6).prop_map(Op::TopUp),
            (0u8..6).prop_map(Op::RequestPending),
            ((0u8..6), (0u16..64)).prop_map(|(p, i)| Op::Has(p, i)),
            (0u16..1500).prop_map(Op::Tick),
            (0u8..6).prop_map(Op::Open),
        ]
    }

    proptest! {
        /// Random peer behaviour: invariants hold, no piece is shown twice to one peer, and
        /// while a peer lacks pieces that were never shown and never went out, it is shown
        /// only those.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..300), pieces in 1u32..64) {
            let l = Lengths::new(u64::from(pieces) * PIECE, PIECE as u32).unwrap();
            let mut s = SeedSpreader::with_rng_seed(l, 9);
            let mut have: HashMap<u8, Bitfield> = HashMap::new();
            let mut shown_to: HashMap<u8, Vec<u32>> = HashMap::new();
            let mut times_shown = vec![0u32; pieces as usize];
            let mut gone_out = vec![false; pieces as usize];
            let mut now = t0();
            for op in ops {
                match op {
                    Op::Join(p) => {
                        s.peer_joined(PeerKey(p.into()), now);
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
                        s.top_up(PeerKey(p.into()), bits, false, now, &mut out);
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
                            s.requested(PeerKey(p.into()), l.piece(piece).unwrap(), now);
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
                    Op::Tick(ms) => {
                        now += Duration::from_millis(ms.into());
                        s.tick(now);
                    }
                    Op::Open(p) => {
                        let Some(bits) = have.get(&p) else { continue };
                        let mut out = Vec::new();
                        s.open_view(PeerKey(p.into()), bits, false, &mut out);
                        prop_assert!(s.is_open(PeerKey(p.into())));
                        let list = shown_to.get_mut(&p).unwrap();
                        for piece in &out {
                            prop_assert!(!bits[piece.as_usize()], "shown a piece the peer has");
                            prop_assert!(!list.contains(&piece.get()), "shown twice to one peer");
                            list.push(piece.get());
                            times_shown[piece.as_usize()] += 1;
                        }
                        let mut more = Vec::new();
                        prop_assert_eq!(s.top_up(PeerKey(p.into()), bits, false, now, &mut more), 0);
                        // Everything it lacks is shown now.
                        for i in 0..pieces {
                            prop_assert!(bits[i as usize] || list.contains(&i));
                        }
                    }
                }
                s.check();
            }
        }
    }
}
