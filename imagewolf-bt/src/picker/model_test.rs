//! Model-based test: random event sequences applied to the [`Picker`] and to an obviously
//! correct model (maps and sets, every rule checked by brute force). After every event the
//! picker's invariants hold and its observable state equals the model's; every pick obeys
//! the picking rules; and driving any reached state to the end completes the torrent.

use std::collections::{BTreeMap, BTreeSet};

use bitvec::{order::Msb0, vec::BitVec};
use proptest::prelude::*;

use super::{BlockStatus, PeerKey, Picker, PickerConfig, Received};
use crate::{BlockRef, Lengths, PieceIndex, BLOCK_LEN};

#[derive(Clone, Debug)]
enum Op {
    Join { peer: u8, all: bool, bits: u16 },
    Have { peer: u8, piece: u8 },
    Pick { peer: u8, max: u8 },
    Receive { peer: u8, which: u8 },
    ReceiveAny { peer: u8, piece: u8, block: u8 },
    Release { peer: u8, which: u8 },
    Choke { peer: u8 },
    Leave { peer: u8 },
    Verify { which: u8 },
    VerifyAny { piece: u8 },
    Fail { which: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0u8..4;
    prop_oneof![
        3 => (p.clone(), any::<bool>(), any::<u16>()).prop_map(|(peer, all, bits)| Op::Join { peer, all, bits }),
        2 => (p.clone(), any::<u8>()).prop_map(|(peer, piece)| Op::Have { peer, piece }),
        6 => (p.clone(), 1u8..10).prop_map(|(peer, max)| Op::Pick { peer, max }),
        5 => (p.clone(), any::<u8>()).prop_map(|(peer, which)| Op::Receive { peer, which }),
        1 => (p.clone(), any::<u8>(), any::<u8>()).prop_map(|(peer, piece, block)| Op::ReceiveAny { peer, piece, block }),
        2 => (p.clone(), any::<u8>()).prop_map(|(peer, which)| Op::Release { peer, which }),
        1 => p.clone().prop_map(|peer| Op::Choke { peer }),
        1 => p.prop_map(|peer| Op::Leave { peer }),
        3 => any::<u8>().prop_map(|which| Op::Verify { which }),
        1 => any::<u8>().prop_map(|piece| Op::VerifyAny { piece }),
        3 => any::<u8>().prop_map(|which| Op::Fail { which }),
    ]
}

#[derive(Clone, Debug)]
enum MBlock {
    Requested(BTreeSet<PeerKey>),
    Received,
}

struct MPeer {
    bits: BitVec<u8, Msb0>,
    all: bool,
}

/// The model plus the picker under test.
struct Harness {
    picker: Picker,
    lengths: Lengths,
    cap: usize,
    random_first: u32,
    have: Vec<bool>,
    /// Blocks of unverified pieces that are not free.
    blocks: BTreeMap<(u32, u32), MBlock>,
    peers: BTreeMap<PeerKey, MPeer>,
}

impl Harness {
    fn n(&self) -> u32 {
        self.lengths.num_pieces()
    }

    fn piece(&self, i: u32) -> PieceIndex {
        self.lengths.piece(i).unwrap()
    }

    fn nblocks(&self, i: u32) -> u32 {
        self.lengths.blocks_in_piece(self.piece(i))
    }

    fn block(&self, i: u32, b: u32) -> BlockRef {
        self.lengths.block(self.piece(i), b).unwrap()
    }

    fn peer_has(&self, peer: PeerKey, i: u32) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.all || p.bits[i as usize])
    }

    fn avail(&self, i: u32) -> u32 {
        self.peers
            .values()
            .filter(|p| p.all || p.bits[i as usize])
            .count() as u32
    }

    fn is_free(&self, i: u32, b: u32) -> bool {
        !self.have[i as usize] && !self.blocks.contains_key(&(i, b))
    }

    fn free_in(&self, i: u32) -> u32 {
        (0..self.nblocks(i)).filter(|&b| self.is_free(i, b)).count() as u32
    }

    fn untouched(&self, i: u32) -> bool {
        !self.have[i as usize] && self.free_in(i) == self.nblocks(i)
    }

    fn open_partial(&self, i: u32) -> bool {
        !self.have[i as usize] && !self.untouched(i) && self.free_in(i) > 0
    }

    fn total_free(&self) -> u32 {
        (0..self.n()).map(|i| self.free_in(i)).sum()
    }

    fn awaiting(&self) -> Vec<u32> {
        (0..self.n())
            .filter(|&i| {
                !self.have[i as usize]
                    && (0..self.nblocks(i))
                        .all(|b| matches!(self.blocks.get(&(i, b)), Some(MBlock::Received)))
            })
            .collect()
    }

    fn outstanding(&self, peer: PeerKey) -> Vec<BlockRef> {
        self.blocks
            .iter()
            .filter(|(_, s)| matches!(s, MBlock::Requested(set) if set.contains(&peer)))
            .map(|(&(i, b), _)| self.block(i, b))
            .collect()
    }

    fn bits_of(&self, peer: PeerKey) -> (BitVec<u8, Msb0>, bool) {
        match self.peers.get(&peer) {
            Some(p) => (p.bits.clone(), p.all),
            None => (BitVec::repeat(false, self.n() as usize), false),
        }
    }

    /// Runs a pick and checks every returned block against the rules, in order.
    fn pick(&mut self, peer: PeerKey, max: usize) -> Result<(), TestCaseError> {
        let (bits, all) = self.bits_of(peer);
        let mut out = Vec::new();
        let got = self.picker.pick(peer, &bits, all, max, &mut out);
        prop_assert_eq!(got, out.len());
        prop_assert!(got <= max);
        for b in out {
            let (i, idx) = (b.piece().get(), b.index_in_piece());
            prop_assert_eq!(
                Some(b),
                self.lengths.block(b.piece(), idx),
                "unaligned block"
            );
            prop_assert!(self.peer_has(peer, i), "picked piece {} the peer lacks", i);
            prop_assert!(!self.have[i as usize], "picked verified piece {}", i);
            let random = self.have.iter().filter(|&&h| h).count() < self.random_first as usize;
            match self.blocks.get(&(i, idx)) {
                Some(MBlock::Received) => prop_assert!(false, "picked received block {:?}", b),
                Some(MBlock::Requested(set)) => {
                    prop_assert!(!set.contains(&peer), "{:?} asked twice for {:?}", peer, b);
                    prop_assert_eq!(
                        self.total_free(),
                        0,
                        "duplicate request while blocks are free"
                    );
                    prop_assert!(set.len() < self.cap, "duplicate above the cap");
                }
                None if self.untouched(i) => {
                    let open: Vec<u32> = (0..self.n())
                        .filter(|&q| self.open_partial(q) && self.peer_has(peer, q))
                        .collect();
                    prop_assert!(
                        open.is_empty(),
                        "started {} while partials {:?} open",
                        i,
                        open
                    );
                    if !random {
                        let rarest = (0..self.n())
                            .filter(|&q| self.untouched(q) && self.peer_has(peer, q))
                            .map(|q| self.avail(q))
                            .min();
                        prop_assert_eq!(Some(self.avail(i)), rarest, "not rarest-first");
                    }
                }
                None => {
                    let rarest = (0..self.n())
                        .filter(|&q| self.open_partial(q) && self.peer_has(peer, q))
                        .map(|q| self.avail(q))
                        .min();
                    prop_assert_eq!(Some(self.avail(i)), rarest, "partial not rarest");
                }
            }
            match self
                .blocks
                .entry((i, idx))
                .or_insert_with(|| MBlock::Requested(BTreeSet::new()))
            {
                MBlock::Requested(set) => {
                    set.insert(peer);
                }
                MBlock::Received => unreachable!(),
            }
        }
        if got < max {
            // Nothing else was allowed: no free block the peer has, and (in endgame) no
            // block it could duplicate.
            for i in (0..self.n()).filter(|&i| self.peer_has(peer, i)) {
                for idx in 0..self.nblocks(i) {
                    prop_assert!(
                        !self.is_free(i, idx),
                        "left free block {}/{} unpicked",
                        i,
                        idx
                    );
                    if self.total_free() == 0 {
                        if let Some(MBlock::Requested(set)) = self.blocks.get(&(i, idx)) {
                            prop_assert!(
                                set.contains(&peer) || set.len() >= self.cap,
                                "endgame block {}/{} not duplicated",
                                i,
                                idx
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Delivers `b` from `peer` to both and compares the outcome.
    fn receive(&mut self, peer: PeerKey, b: BlockRef) -> Result<(), TestCaseError> {
        let (i, idx) = (b.piece().get(), b.index_in_piece());
        let aligned = self.lengths.block(b.piece(), idx) == Some(b);
        let expected = match self.blocks.get(&(i, idx)) {
            Some(MBlock::Requested(set)) if aligned && set.contains(&peer) => {
                let cancel: Vec<PeerKey> = set.iter().copied().filter(|&p| p != peer).collect();
                self.blocks.insert((i, idx), MBlock::Received);
                let done = self.awaiting().contains(&i);
                Received::Accepted {
                    cancel,
                    piece_done: done,
                }
            }
            _ => Received::Unwanted,
        };
        let mut got = self.picker.block_received(peer, b);
        if let Received::Accepted { cancel, .. } = &mut got {
            cancel.sort_unstable();
        }
        prop_assert_eq!(got, expected);
        Ok(())
    }

    fn release(&mut self, peer: PeerKey, b: BlockRef) {
        self.picker.request_released(peer, b);
        let key = (b.piece().get(), b.index_in_piece());
        if let Some(MBlock::Requested(set)) = self.blocks.get_mut(&key) {
            set.remove(&peer);
            if set.is_empty() {
                self.blocks.remove(&key);
            }
        }
    }

    fn choke(&mut self, peer: PeerKey) {
        self.picker.release_peer(peer);
        self.blocks.retain(|_, s| match s {
            MBlock::Requested(set) => {
                set.remove(&peer);
                !set.is_empty()
            }
            MBlock::Received => true,
        });
    }

    fn verify(&mut self, i: u32) {
        self.picker.piece_verified(self.piece(i));
        self.have[i as usize] = true;
        self.blocks.retain(|&(p, _), _| p != i);
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let n = self.n();
        match *op {
            Op::Join { peer, all, bits } => {
                let key = PeerKey(u64::from(peer));
                if !self.peers.contains_key(&key) {
                    let bits: BitVec<u8, Msb0> = (0..n).map(|i| bits & (1 << i) != 0).collect();
                    if all {
                        self.picker.peer_has_all();
                    } else {
                        self.picker.peer_bitfield(&bits);
                    }
                    self.peers.insert(key, MPeer { bits, all });
                }
            }
            Op::Have { peer, piece } => {
                let i = u32::from(piece) % n;
                if let Some(p) = self.peers.get_mut(&PeerKey(u64::from(peer))) {
                    if !p.all && !p.bits[i as usize] {
                        p.bits.set(i as usize, true);
                        self.picker.peer_has(self.lengths.piece(i).unwrap());
                    }
                }
            }
            Op::Pick { peer, max } => {
                let key = PeerKey(u64::from(peer));
                if self.peers.contains_key(&key) {
                    self.pick(key, usize::from(max))?;
                }
            }
            Op::Receive { peer, which } => {
                let key = PeerKey(u64::from(peer));
                let out = self.outstanding(key);
                if !out.is_empty() {
                    self.receive(key, out[usize::from(which) % out.len()])?;
                }
            }
            Op::ReceiveAny { peer, piece, block } => {
                let i = u32::from(piece) % n;
                let b = u32::from(block) % self.nblocks(i);
                let mut br = self.block(i, b);
                if block >= 128 && br.len() > 1 {
                    // An unaligned range: never handed out, so never wanted.
                    br = self
                        .lengths
                        .block_at(i, b * BLOCK_LEN + 1, br.len() - 1)
                        .unwrap();
                }
                self.receive(PeerKey(u64::from(peer)), br)?;
            }
            Op::Release { peer, which } => {
                let key = PeerKey(u64::from(peer));
                let out = self.outstanding(key);
                let b = if out.is_empty() {
                    let i = u32::from(which) % n;
                    self.block(i, 0)
                } else {
                    out[usize::from(which) % out.len()]
                };
                self.release(key, b);
            }
            Op::Choke { peer } => self.choke(PeerKey(u64::from(peer))),
            Op::Leave { peer } => {
                let key = PeerKey(u64::from(peer));
                if let Some(p) = self.peers.remove(&key) {
                    self.picker.peer_left(key, &p.bits, p.all);
                    self.blocks.retain(|_, s| match s {
                        MBlock::Requested(set) => {
                            set.remove(&key);
                            !set.is_empty()
                        }
                        MBlock::Received => true,
                    });
                }
            }
            Op::Verify { which } => {
                let a = self.awaiting();
                if !a.is_empty() {
                    self.verify(a[usize::from(which) % a.len()]);
                }
            }
            // Rare: it jumps a piece to done, and the interesting states need pieces missing.
            Op::VerifyAny { piece } if piece < 16 => self.verify(u32::from(piece) % n),
            Op::VerifyAny { .. } => {}
            Op::Fail { which } => {
                let a = self.awaiting();
                if !a.is_empty() {
                    let i = a[usize::from(which) % a.len()];
                    self.picker.piece_failed(self.piece(i));
                    self.blocks.retain(|&(p, _), _| p != i);
                }
            }
        }
        self.compare()
    }

    /// Picker invariants, and every observable against the model.
    fn compare(&self) -> Result<(), TestCaseError> {
        self.picker
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("invariant: {e}")))?;
        self.picker
            .check_availability(self.peers.values().map(|p| (p.bits.as_bitslice(), p.all)))
            .map_err(|e| TestCaseError::fail(format!("availability: {e}")))?;
        let have: Vec<bool> = self.picker.have().iter().map(|b| *b).collect();
        prop_assert_eq!(&have, &self.have);
        for i in 0..self.n() {
            prop_assert_eq!(self.picker.availability(self.piece(i)), self.avail(i));
            for idx in 0..self.nblocks(i) {
                let want = if self.have[i as usize] {
                    BlockStatus::Verified
                } else {
                    match self.blocks.get(&(i, idx)) {
                        None => BlockStatus::Free,
                        Some(MBlock::Received) => BlockStatus::Received,
                        Some(MBlock::Requested(s)) => BlockStatus::Requested(s.len()),
                    }
                };
                prop_assert_eq!(self.picker.block_status(self.block(i, idx)), want);
            }
        }
        for k in 0..5 {
            let key = PeerKey(k);
            prop_assert_eq!(self.picker.requests(key), self.outstanding(key));
        }
        let requested = self
            .blocks
            .values()
            .any(|s| matches!(s, MBlock::Requested(_)));
        prop_assert_eq!(
            self.picker.in_endgame(),
            self.total_free() == 0 && requested
        );
        prop_assert_eq!(
            self.picker.awaiting_verification() as usize,
            self.awaiting().len()
        );
        Ok(())
    }

    /// Delivers everything, verifies everything, picks again, until done. A seed joins if
    /// no connected peer has everything, so completion is always possible.
    fn drive_to_completion(&mut self) -> Result<(), TestCaseError> {
        let seed = PeerKey(4);
        if !self.peers.values().any(|p| p.all) {
            self.picker.peer_has_all();
            self.peers.insert(
                seed,
                MPeer {
                    bits: BitVec::repeat(false, self.n() as usize),
                    all: true,
                },
            );
        }
        for _ in 0..200 {
            if self.picker.is_complete() {
                break;
            }
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for &k in &keys {
                for b in self.outstanding(k) {
                    self.receive(k, b)?;
                    self.compare()?;
                }
            }
            for i in self.awaiting() {
                self.verify(i);
                self.compare()?;
            }
            for &k in &keys {
                self.pick(k, 3)?;
                self.compare()?;
            }
        }
        prop_assert!(self.picker.is_complete(), "did not complete");
        prop_assert!(self.have.iter().all(|&h| h));
        Ok(())
    }
}

fn geometry() -> impl Strategy<Value = Lengths> {
    (1u32..=6, 1u32..=3, any::<u16>()).prop_map(|(n, k, last)| {
        let piece_len = k * BLOCK_LEN;
        let last = u64::from(last) % u64::from(piece_len) + 1;
        Lengths::new(u64::from(n - 1) * u64::from(piece_len) + last, piece_len).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn picker_matches_model(
        lengths in geometry(),
        random_first in 0u32..=3,
        cap in 1u32..=3,
        seed in any::<u64>(),
        resume in any::<u16>(),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let have: BitVec<u8, Msb0> =
            (0..lengths.num_pieces()).map(|i| i < 10 && resume & (1 << (i + 6)) != 0 && resume & 1 != 0).collect();
        let config = PickerConfig { random_first_pieces: random_first, endgame_max_requesters: cap, rng_seed: Some(seed) };
        let mut h = Harness {
            picker: Picker::with_config(lengths, &have, config),
            lengths,
            cap: cap as usize,
            random_first,
            have: have.iter().map(|b| *b).collect(),
            blocks: BTreeMap::new(),
            peers: BTreeMap::new(),
        };
        h.compare()?;
        for op in &ops {
            h.apply(op)?;
        }
        h.drive_to_completion()?;
    }
}
