//! The piece picker: which blocks to ask which peer for. Sans-IO: a pure state machine with no
//! clocks, sockets or tasks; the torrent task owns one [`Picker`] and feeds it every event.
//!
//! # What it decides
//!
//! - **Partial pieces first.** A peer that has a piece we started (and that still has free
//!   blocks) continues it before anything new is started; among those, the rarest first, then
//!   the one closest to done. Fewer half-finished pieces means pieces are verified, announced
//!   and re-shared sooner.
//! - **Rarest first, random tie-break**, once we have [`PickerConfig::random_first_pieces`]
//!   verified pieces. Before that, new pieces are chosen at random: a rare piece downloads from
//!   few peers and so slowly, while any complete piece lets us start uploading at once.
//! - **Strict endgame.** A block is asked from a second peer only when *every* block not yet
//!   received is already requested (no free block anywhere). Even then a block is never
//!   asked twice from the same peer and never from more than
//!   [`PickerConfig::endgame_max_requesters`] peers at once; on receipt the picker names the
//!   other requesters so the caller can Cancel.
//! - **A piece-memory cap, and a seed's suggestions past it.** No untouched piece starts
//!   while [`Picker::set_max_active`] partial pieces exist, except up to [`SUGGEST_SLOTS`]
//!   more for pieces a peer suggested ([`Picker::suggested`], BEP 6): a spreading seed
//!   suggests the pieces it shows. In the simulator's 1,000-node swarm every peer of the
//!   origin sat at the cap from mid-download on, with slots full of pieces other peers also
//!   had, and the origin's requests fell from 1,324 outstanding to 6: its uplink idled at
//!   57-72 % and the last distinct piece left it at 1.27 x S/U instead of 0.98.
//! - **A fair share of that budget per peer.** [`Picker::request_share`] tells the caller
//!   how many blocks one connection may have requested, so that at the cap every peer
//!   with a piece we lack keeps feeding us, not only the first to refill.
//!
//! # State and invariants
//!
//! Every piece is in exactly one of these states:
//!
//! - *verified* (bit set in [`Picker::have`]): nothing else is tracked for it;
//! - *untouched*: all blocks free; the piece is listed in the availability order;
//! - *partial*: a per-piece record (`blocks.rs`) keeps each block as Free, Requested (by
//!   one or more distinct peers) or Received; when all are Received the piece is *awaiting
//!   verification* until [`Picker::piece_verified`] or [`Picker::piece_failed`]. A partial piece whose last
//!   request is released with nothing received goes back to *untouched*, so it is ranked by
//!   rarity again instead of being favoured as "partial".
//!
//! Each peer's outstanding requests are also indexed by peer, so releasing a peer (choke,
//! disconnect) costs its own requests only. A block's requester list and the peers' indexes
//! always agree. [`Picker::check_invariants`] verifies all of this.
//!
//! # Cost
//!
//! Availability is a per-piece count of peers that sent a bitfield or HAVE; peers with every
//! piece (seeds, HaveAll) are only counted in a separate number added to every piece, since
//! they raise all pieces equally and so never change the order: a HaveAll costs O(1). The
//! untouched pieces are kept sorted by count in a bucketed vector (`availability.rs`) where a
//! count ±1 is one swap, so HAVE is O(1) and a bitfield O(pieces it has). Picking for a seed
//! takes the front of that vector; picking for a peer with a bitfield walks it from the
//! first bucket with availability >= 1 (a peer's own pieces can't have less), or, for a peer
//! with few pieces, sorts that peer's own pieces by rank instead of walking everyone else's.
//! Releasing a peer costs its own requests; inserting or removing a piece in the order costs
//! one move per distinct availability value above it (at most the number of peers).
//!
//! # Caller contract
//!
//! The picker trusts the torrent task, which validated everything at the wire boundary
//! (`PieceIndex`/`BlockRef` come from [`Lengths`]), but never panics when the contract is
//! broken; counts saturate and unknown requests are ignored.
//!
//! - Report each peer's pieces exactly once: [`Picker::peer_bitfield`] or
//!   [`Picker::peer_has_all`] when it connects, [`Picker::peer_has`] when one of its bits
//!   goes from 0 to 1, and [`Picker::peer_left`] with the same pieces when it goes. Pass the
//!   same bitfield to [`Picker::pick`].
//! - A block is only accepted from a peer it is outstanding with. Releasing requests on a
//!   choke (as [`Picker::release_peer`] does) means data that still arrives for them is
//!   [`Received::Unwanted`]; with the fast extension a choking peer rejects instead, so the
//!   caller may wait for the Rejects and release one by one.
//! - Endgame is strict over the whole torrent: a free block of a piece no connected peer
//!   has also keeps duplicates off.

mod availability;
mod blocks;
mod check;
mod pick;
mod seed;

#[cfg(test)]
mod model_test;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use rand::{rngs::SmallRng, SeedableRng};

use crate::{BlockRef, Lengths, PieceIndex};
use availability::RankedSet;
use blocks::{Block, Class, Partial, NOT_OPEN};

/// Pieces a node may start beyond its piece-memory cap for suggested pieces (see
/// [`Picker::suggested`]).
pub const SUGGEST_SLOTS: u32 = 4;
/// Suggested pieces remembered at once.
pub const MAX_SUGGESTED: usize = 64;
/// The smallest share of the piece-memory budget [`Picker::request_share`] gives one peer,
/// in blocks: enough to keep a LAN connection busy across a round trip.
pub const MIN_REQUEST_SHARE: usize = 4;

pub use seed::SeedSpreader;

// The bitfield types of this API, re-exported so callers need no `bitvec` dependency of
// their own (and can't pick a mismatched version).
pub use bitvec::{order::Msb0, slice::BitSlice, vec::BitVec};

/// A set of pieces, one bit per piece, MSB first as on the wire (piece 0 = `0x80` of byte 0).
pub type Bitfield = BitVec<u8, Msb0>;

/// A peer as the torrent identifies it. Opaque to the picker: only compared and hashed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub u64);

/// What to do with a block that arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The block was not wanted (never requested from this peer, already received, or the
    /// piece is done): drop it.
    Unwanted,
    /// Stored: write it.
    Accepted {
        /// Other peers that also had this block requested (endgame): send them Cancel.
        cancel: Vec<PeerKey>,
        /// This was the last missing block of its piece: verify the piece.
        piece_done: bool,
    },
}

/// Where one block stands, for the caller's diagnostics and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStatus {
    /// Not requested from anyone.
    Free,
    /// Requested from this many peers (more than one only in endgame).
    Requested(usize),
    /// Received, waiting for the piece's hash check.
    Received,
    /// Its piece is verified.
    Verified,
    /// Not a block the picker hands out (unaligned or wrong length).
    Unknown,
}

/// Tuning knobs; [`Default`] gives the recommended values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickerConfig {
    /// New pieces are picked at random, not rarest-first, while fewer than this many pieces
    /// are verified. Default 4.
    pub random_first_pieces: u32,
    /// In endgame, the most peers one block may be requested from at once (the original
    /// requester included). 1 disables duplicate requests. Default 2: one backup per block
    /// bounds the wasted bandwidth on a LAN where hundreds of peers could otherwise all
    /// duplicate the same last blocks.
    pub endgame_max_requesters: u32,
    /// Seed for the tie-break randomness; `None` seeds from the OS. Tests use a fixed seed.
    pub rng_seed: Option<u64>,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            random_first_pieces: 4,
            endgame_max_requesters: 2,
            rng_seed: None,
        }
    }
}

/// Errors from checking caller input against the torrent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickerError {
    /// A bitfield does not have exactly one bit per piece.
    #[error("bitfield has {got} bits, torrent has {expected} pieces")]
    BitfieldLength {
        /// Number of pieces.
        expected: u32,
        /// Bits given.
        got: usize,
    },
}

/// Hashes the picker's u64 keys with a folded multiply: fast, and deterministic (unlike
/// `RandomState`), so a seeded picker replays identically. The keys are chosen by the picker
/// and the torrent, not by remote peers, so flooding attacks on the hash are not a concern.
#[derive(Default, Clone, Copy)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let m = u128::from(self.0 ^ x) * 0x9E37_79B9_7F4A_7C15;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FastBuild = BuildHasherDefault<FoldHasher>;

/// A block as the picker indexes it: piece in the high half, block number in the low half.
type BlockKey = u64;

fn block_key(piece: u32, idx: u32) -> BlockKey {
    (u64::from(piece) << 32) | u64::from(idx)
}

fn split_key(key: BlockKey) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// Does a peer have a piece: its bitfield, or everything.
#[derive(Clone, Copy)]
struct PeerPieces<'a> {
    bits: &'a BitSlice<u8, Msb0>,
    all: bool,
}

impl PeerPieces<'_> {
    fn has(&self, piece: u32) -> bool {
        self.all || self.bits.get(piece as usize).is_some_and(|b| *b)
    }
}

/// The piece picker. See the [module documentation](self).
#[derive(Clone, Debug)]
pub struct Picker {
    lengths: Lengths,
    config: PickerConfig,
    have: BitVec<u8, Msb0>,
    have_count: u32,
    /// Connected peers that have every piece; counted apart from `ranked`.
    seeds: u32,
    /// Per-piece availability from bitfields and HAVEs; orders the untouched pieces.
    ranked: RankedSet,
    partials: Vec<Option<Partial>>,
    /// Every partial piece.
    active: Vec<u32>,
    /// Partial pieces with at least one free block.
    open: Vec<u32>,
    /// Outstanding requests of each peer; no entry for a peer with none.
    peers: HashMap<PeerKey, HashSet<BlockKey, FastBuild>, FastBuild>,
    /// Free blocks over all unverified pieces, untouched ones included.
    free_blocks: u64,
    requested_blocks: u64,
    underfull_blocks: u64,
    /// Pieces with every block received, waiting for verification.
    awaiting: u32,
    /// Most partial pieces (awaiting verification included) with a connected source; no
    /// new piece starts beyond it. See [`Picker::set_max_active`].
    max_active: u32,
    /// Pieces a peer suggested (BEP 6) that we have not started: a spreading seed's shown
    /// pieces. They may start beyond `max_active` by up to [`SUGGEST_SLOTS`].
    suggested: Vec<u32>,
    rng: SmallRng,
    /// Reused buffer for ranking candidate pieces in `pick`.
    scratch: Vec<(u32, u32, u32)>,
}

impl Picker {
    /// A picker for a torrent with nothing downloaded.
    pub fn new(lengths: Lengths) -> Self {
        Self::with_config(lengths, BitSlice::empty(), PickerConfig::default())
    }

    /// A picker for a resumed torrent: the pieces set in `have` are already verified. Bits
    /// past the last piece are ignored; missing bits count as not had.
    pub fn with_have(lengths: Lengths, have: &BitSlice<u8, Msb0>) -> Self {
        Self::with_config(lengths, have, PickerConfig::default())
    }

    /// A picker with nothing downloaded whose random choices are reproducible from `seed`.
    pub fn with_rng_seed(lengths: Lengths, seed: u64) -> Self {
        let config = PickerConfig {
            rng_seed: Some(seed),
            ..PickerConfig::default()
        };
        Self::with_config(lengths, BitSlice::empty(), config)
    }

    /// The general constructor: `have` as in [`Picker::with_have`], knobs from `config`.
    pub fn with_config(lengths: Lengths, have: &BitSlice<u8, Msb0>, config: PickerConfig) -> Self {
        let n = lengths.num_pieces();
        let mut rng = match config.rng_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand::make_rng(),
        };
        let mut bits = BitVec::repeat(false, n as usize);
        let mut ranked = RankedSet::new(n, u32::MAX);
        let mut have_count = 0;
        let mut free_blocks = 0u64;
        for piece in lengths.pieces() {
            let i = piece.get();
            if have.get(i as usize).is_some_and(|b| *b) {
                bits.set(i as usize, true);
                have_count += 1;
            } else {
                // Inserting at a random place among equal counts is an inside-out shuffle.
                ranked.insert(i, &mut rng);
                free_blocks += u64::from(lengths.blocks_in_piece(piece));
            }
        }
        let config = PickerConfig {
            endgame_max_requesters: config.endgame_max_requesters.max(1),
            ..config
        };
        Self {
            lengths,
            config,
            have: bits,
            have_count,
            seeds: 0,
            ranked,
            partials: vec![None; n as usize],
            active: Vec::new(),
            open: Vec::new(),
            peers: HashMap::default(),
            free_blocks,
            requested_blocks: 0,
            underfull_blocks: 0,
            awaiting: 0,
            max_active: u32::MAX,
            suggested: Vec::new(),
            rng,
            scratch: Vec::new(),
        }
    }

    /// Caps the pieces in progress: no untouched piece is started while `max` partial pieces
    /// (those awaiting verification included) exist. Each partial piece is a piece-sized
    /// buffer in the caller, so this bounds a download's memory however many peers feed
    /// it. Partial pieces that no connected peer has do not count: a peer that left with the
    /// only copy must not stall the pieces others can give. At least 1.
    pub fn set_max_active(&mut self, max: u32) {
        self.max_active = max.max(1);
    }

    /// The most blocks one peer should have requested at a time when `sources` connected
    /// peers have a piece we lack: an equal share of the piece-memory budget
    /// ([`Picker::set_max_active`] pieces), at least [`MIN_REQUEST_SHARE`]; `usize::MAX`
    /// without a cap. The caller clamps each connection's request pipeline to it.
    ///
    /// Why: a pipeline sized to a second of a connection's rate asks for several pieces at
    /// once. At the cap, the first connections to refill then hold every started piece and
    /// the others get nothing, so the node downloads from a few peers' shares of their
    /// uplinks instead of all of them. In the simulator's 300-node swarm the slowest nodes
    /// ran at 80-85 % of their downlink for the whole download (p99 1.38 x S/U); with the
    /// share, every node ran at its downlink (p99 1.12).
    ///
    /// ```
    /// use imagewolf_bt::picker::{Picker, MIN_REQUEST_SHARE};
    /// use imagewolf_bt::Lengths;
    ///
    /// let lengths = Lengths::new(64 << 20, 512 << 10).unwrap(); // 32 blocks per piece
    /// let mut picker = Picker::new(lengths);
    /// assert_eq!(picker.request_share(10), usize::MAX); // no cap, no share
    /// picker.set_max_active(32); // 16 MiB: 1,024 blocks
    /// assert_eq!(picker.request_share(1), 1024);
    /// assert_eq!(picker.request_share(40), 25);
    /// assert_eq!(picker.request_share(1000), MIN_REQUEST_SHARE);
    /// ```
    pub fn request_share(&self, sources: usize) -> usize {
        if self.max_active == u32::MAX {
            return usize::MAX;
        }
        let per_piece = self.lengths.piece_len().div_ceil(crate::BLOCK_LEN) as usize;
        let budget = (self.max_active as usize).saturating_mul(per_piece);
        (budget / sources.max(1)).max(MIN_REQUEST_SHARE)
    }

    /// Whether another piece may be started (see [`Picker::set_max_active`]).
    fn may_start(&self) -> bool {
        if (self.active.len() as u32) < self.max_active {
            return true;
        }
        let counted = self
            .active
            .iter()
            .filter(|&&p| {
                self.partials[p as usize]
                    .as_ref()
                    .is_some_and(Partial::is_complete)
                    || self.ranked.count(p) + self.seeds > 0
            })
            .count();
        (counted as u32) < self.max_active
    }

    /// A peer suggested `piece` (BEP 6 SuggestPiece). If we lack it and have not started it,
    /// it may start beyond the piece-memory cap by up to [`SUGGEST_SLOTS`] pieces: a spreading
    /// seed suggests the pieces it shows, and a node whose slots are full of pieces other
    /// peers also have would otherwise leave the seed's upload idle. At most
    /// [`MAX_SUGGESTED`] are remembered (the oldest go first).
    pub fn suggested(&mut self, piece: PieceIndex) {
        let p = piece.get();
        if self.have.get(p as usize).is_none_or(|b| *b)
            || self.partials[p as usize].is_some()
            || self.suggested.contains(&p)
        {
            return;
        }
        if self.suggested.len() >= MAX_SUGGESTED {
            self.suggested.remove(0);
        }
        self.suggested.push(p);
    }

    /// The knobs in effect (`endgame_max_requesters` raised to at least 1).
    pub fn config(&self) -> &PickerConfig {
        &self.config
    }

    /// The torrent geometry this picker was made for.
    pub fn lengths(&self) -> Lengths {
        self.lengths
    }

    /// Checks that a peer's bitfield has one bit per piece (the caller strips the wire
    /// padding). The other methods tolerate a wrong length by ignoring extra bits.
    pub fn validate_bitfield(&self, bits: &BitSlice<u8, Msb0>) -> Result<(), PickerError> {
        if bits.len() == self.lengths.num_pieces() as usize {
            Ok(())
        } else {
            Err(PickerError::BitfieldLength {
                expected: self.lengths.num_pieces(),
                got: bits.len(),
            })
        }
    }

    /// A peer announced HAVE for `piece`. Call only when the peer's bit goes from 0 to 1.
    pub fn peer_has(&mut self, piece: PieceIndex) {
        self.ranked.increment(piece.get(), &mut self.rng);
    }

    /// A peer sent its BITFIELD (one bit per piece). O(pieces set).
    pub fn peer_bitfield(&mut self, bits: &BitSlice<u8, Msb0>) {
        let n = self.lengths.num_pieces() as usize;
        for i in bits.iter_ones().take_while(|&i| i < n) {
            self.ranked.increment(i as u32, &mut self.rng);
        }
    }

    /// A peer sent HAVE_ALL (or a full bitfield the caller chose to treat as one). O(1).
    pub fn peer_has_all(&mut self) {
        self.seeds = self.seeds.saturating_add(1);
    }

    /// The peer disconnected: availability decremented by its pieces (`had_all` if it was a
    /// seed/HaveAll, in which case `bits` is ignored) and its outstanding requests released.
    pub fn peer_left(&mut self, peer: PeerKey, bits: &BitSlice<u8, Msb0>, had_all: bool) {
        self.release_peer(peer);
        if had_all {
            self.seeds = self.seeds.saturating_sub(1);
        } else {
            let n = self.lengths.num_pieces() as usize;
            for i in bits.iter_ones().take_while(|&i| i < n) {
                self.ranked.decrement(i as u32, &mut self.rng);
            }
        }
    }

    /// A block arrived from `peer`.
    pub fn block_received(&mut self, peer: PeerKey, block: BlockRef) -> Received {
        let Some((piece, idx)) = self.locate(block) else {
            return Received::Unwanted;
        };
        let Some(partial) = self.partials[piece as usize].as_ref() else {
            return Received::Unwanted;
        };
        let requesters = partial.blocks[idx as usize].requesters();
        if !requesters.contains(&peer) {
            return Received::Unwanted;
        }
        let cancel: Vec<PeerKey> = requesters.iter().copied().filter(|&p| p != peer).collect();
        let key = block_key(piece, idx);
        self.forget_request(peer, key);
        for &other in &cancel {
            self.forget_request(other, key);
        }
        self.update_block(piece, idx, |b| *b = Block::Received);
        let piece_done = self.partials[piece as usize]
            .as_ref()
            .is_some_and(Partial::is_complete);
        if piece_done {
            self.awaiting += 1;
        }
        Received::Accepted { cancel, piece_done }
    }

    /// One request of `peer` ended without data (Reject, our Cancel, timeout): the block is
    /// free again unless another peer also has it requested.
    pub fn request_released(&mut self, peer: PeerKey, block: BlockRef) {
        let Some((piece, idx)) = self.locate(block) else {
            return;
        };
        let key = block_key(piece, idx);
        if self.forget_request(peer, key) {
            self.update_block(piece, idx, |b| b.remove_requester(peer));
            self.revert_if_untouched(piece);
        }
    }

    /// Releases every outstanding request of `peer` (choke, snub); availability unchanged.
    pub fn release_peer(&mut self, peer: PeerKey) {
        let Some(keys) = self.peers.remove(&peer) else {
            return;
        };
        for &key in &keys {
            let (piece, idx) = split_key(key);
            self.update_block(piece, idx, |b| b.remove_requester(peer));
        }
        for &key in &keys {
            self.revert_if_untouched(split_key(key).0);
        }
    }

    /// `piece` passed its hash check (or was found complete on disk): we have it. Requests
    /// still outstanding for it are forgotten; their data will be reported [`Received::Unwanted`].
    pub fn piece_verified(&mut self, piece: PieceIndex) {
        let i = piece.get();
        if self.have.get(i as usize).is_none_or(|b| *b) {
            return;
        }
        if self.ranked.contains(i) {
            self.ranked.remove(i);
            self.free_blocks -= u64::from(self.lengths.blocks_in_piece(piece));
        } else {
            self.dissolve(i);
        }
        self.have.set(i as usize, true);
        self.have_count += 1;
        self.suggested.retain(|&q| q != i);
    }

    /// `piece` failed its hash check: all its blocks are free again and it is ranked by
    /// rarity like any untouched piece.
    pub fn piece_failed(&mut self, piece: PieceIndex) {
        let i = piece.get();
        if self.partials.get(i as usize).is_some_and(Option::is_some) {
            self.dissolve(i);
            self.free_blocks += u64::from(self.lengths.blocks_in_piece(piece));
            self.ranked.insert(i, &mut self.rng);
        }
    }

    /// Verified pieces.
    pub fn have(&self) -> &BitSlice<u8, Msb0> {
        &self.have
    }

    /// Number of verified pieces.
    pub fn have_count(&self) -> u32 {
        self.have_count
    }

    /// Every piece verified.
    pub fn is_complete(&self) -> bool {
        self.have_count == self.lengths.num_pieces()
    }

    /// Endgame: no block is free, and some are still requested (so duplicates may be picked).
    pub fn in_endgame(&self) -> bool {
        self.free_blocks == 0 && self.requested_blocks > 0
    }

    /// Pieces with every block received, waiting for [`Picker::piece_verified`] or
    /// [`Picker::piece_failed`].
    pub fn awaiting_verification(&self) -> u32 {
        self.awaiting
    }

    /// Whether the peer has a piece we lack.
    pub fn is_interesting(&self, peer_bits: &BitSlice<u8, Msb0>, peer_has_all: bool) -> bool {
        if peer_has_all {
            return !self.is_complete();
        }
        let n = self.lengths.num_pieces() as usize;
        peer_bits
            .iter_ones()
            .take_while(|&i| i < n)
            .any(|i| !self.have[i])
    }

    /// Number of connected peers known to have `piece` (bitfields, HAVEs and seeds).
    pub fn availability(&self, piece: PieceIndex) -> u32 {
        self.ranked.count(piece.get()).saturating_add(self.seeds)
    }

    /// Number of outstanding requests of `peer`.
    pub fn outstanding(&self, peer: PeerKey) -> usize {
        self.peers.get(&peer).map_or(0, HashSet::len)
    }

    /// The outstanding requests of `peer`, in piece and offset order.
    pub fn requests(&self, peer: PeerKey) -> Vec<BlockRef> {
        let mut keys: Vec<BlockKey> = self
            .peers
            .get(&peer)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        keys.sort_unstable();
        keys.into_iter().filter_map(|k| self.block_ref(k)).collect()
    }

    /// Where `block` stands.
    pub fn block_status(&self, block: BlockRef) -> BlockStatus {
        let Some((piece, idx)) = self.locate(block) else {
            return if self.have.get(block.piece().as_usize()).is_some_and(|b| *b) {
                BlockStatus::Verified
            } else {
                BlockStatus::Unknown
            };
        };
        match self.partials[piece as usize]
            .as_ref()
            .map(|p| &p.blocks[idx as usize])
        {
            None => BlockStatus::Free,
            Some(Block::Free) => BlockStatus::Free,
            Some(Block::Received) => BlockStatus::Received,
            Some(b) => BlockStatus::Requested(b.requesters().len()),
        }
    }

    /// The peers `block` is requested from.
    pub fn requesters(&self, block: BlockRef) -> &[PeerKey] {
        match self.locate(block) {
            Some((piece, idx)) => self.partials[piece as usize]
                .as_ref()
                .map_or(&[], |p| p.blocks[idx as usize].requesters()),
            None => &[],
        }
    }

    /// `(piece, block index)` of a block the picker could have handed out: aligned, of the
    /// right length, in a piece not yet verified.
    fn locate(&self, block: BlockRef) -> Option<(u32, u32)> {
        let piece = block.piece();
        let idx = block.index_in_piece();
        // `get` rather than indexing: a BlockRef made for another torrent must not panic.
        if self.have.get(piece.as_usize()).is_none_or(|b| *b)
            || self.lengths.block(piece, idx) != Some(block)
        {
            return None;
        }
        Some((piece.get(), idx))
    }

    fn block_ref(&self, key: BlockKey) -> Option<BlockRef> {
        let (piece, idx) = split_key(key);
        self.lengths.block(self.lengths.piece(piece)?, idx)
    }

    /// Removes `key` from `peer`'s outstanding set; whether it was there.
    fn forget_request(&mut self, peer: PeerKey, key: BlockKey) -> bool {
        let Some(set) = self.peers.get_mut(&peer) else {
            return false;
        };
        let was = set.remove(&key);
        if set.is_empty() {
            self.peers.remove(&peer);
        }
        was
    }

    /// Changes one block of a partial piece and keeps every counter and list in step.
    fn update_block(&mut self, piece: u32, idx: u32, change: impl FnOnce(&mut Block)) {
        let cap = self.config.endgame_max_requesters;
        let Some(partial) = self.partials[piece as usize].as_mut() else {
            return;
        };
        let Some(block) = partial.blocks.get_mut(idx as usize) else {
            return;
        };
        let before = Class::of(block, cap);
        change(block);
        let after = Class::of(block, cap);
        partial.retally(idx as usize, before, after);
        let now_open = partial.free > 0;
        let was_open = partial.open_at != NOT_OPEN;
        fn step(total: &mut u64, before: bool, after: bool) {
            match (before, after) {
                (false, true) => *total += 1,
                (true, false) => *total -= 1,
                _ => {}
            }
        }
        step(&mut self.free_blocks, before.free, after.free);
        step(
            &mut self.requested_blocks,
            before.requested,
            after.requested,
        );
        step(
            &mut self.underfull_blocks,
            before.underfull,
            after.underfull,
        );
        if now_open && !was_open {
            partial.open_at = self.open.len() as u32;
            self.open.push(piece);
        } else if !now_open && was_open {
            let at = partial.open_at;
            partial.open_at = NOT_OPEN;
            self.unlist_open(at);
        }
    }

    fn unlist_open(&mut self, at: u32) {
        self.open.swap_remove(at as usize);
        if let Some(&moved) = self.open.get(at as usize) {
            if let Some(p) = self.partials[moved as usize].as_mut() {
                p.open_at = at;
            }
        }
    }

    /// Turns an untouched piece into a partial one (all blocks still free).
    fn start_piece(&mut self, piece: u32) {
        let Some(pi) = self.lengths.piece(piece) else {
            return;
        };
        self.suggested.retain(|&q| q != piece);
        self.ranked.remove(piece);
        let mut partial = Partial::new(self.lengths.blocks_in_piece(pi), self.active.len() as u32);
        partial.open_at = self.open.len() as u32;
        self.open.push(piece);
        self.active.push(piece);
        self.partials[piece as usize] = Some(partial);
    }

    /// Drops a partial piece's record, its requests and its share of the counters.
    fn dissolve(&mut self, piece: u32) {
        let Some(partial) = self.partials[piece as usize].take() else {
            return;
        };
        for (idx, block) in partial.blocks.iter().enumerate() {
            for &peer in block.requesters() {
                self.forget_request(peer, block_key(piece, idx as u32));
            }
        }
        self.free_blocks -= u64::from(partial.free);
        self.requested_blocks -= u64::from(partial.requested);
        self.underfull_blocks -= u64::from(partial.underfull);
        if partial.is_complete() {
            self.awaiting -= 1;
        }
        if partial.open_at != NOT_OPEN {
            self.unlist_open(partial.open_at);
        }
        let at = partial.active_at as usize;
        self.active.swap_remove(at);
        if let Some(&moved) = self.active.get(at) {
            if let Some(p) = self.partials[moved as usize].as_mut() {
                p.active_at = at as u32;
            }
        }
    }

    /// A partial piece with nothing requested or received goes back to the ranked order.
    fn revert_if_untouched(&mut self, piece: u32) {
        if self.partials[piece as usize]
            .as_ref()
            .is_some_and(Partial::is_untouched)
        {
            let free = self.partials[piece as usize].as_ref().map_or(0, |p| p.free);
            self.dissolve(piece);
            // `dissolve` took the free blocks off; an untouched piece's blocks still count.
            self.free_blocks += u64::from(free);
            self.ranked.insert(piece, &mut self.rng);
        }
    }
}
