//! Unit tests for the picking rules, one rule per test.

use bitvec::{bitvec, order::Msb0, vec::BitVec};

use super::{BlockStatus, PeerKey, Picker, PickerConfig, PickerError, Received};
use crate::{BlockRef, Lengths, BLOCK_LEN};

const A: PeerKey = PeerKey(1);
const B: PeerKey = PeerKey(2);
const C: PeerKey = PeerKey(3);

fn none(n: usize) -> BitVec<u8, Msb0> {
    BitVec::repeat(false, n)
}

fn bits(n: usize, set: impl IntoIterator<Item = usize>) -> BitVec<u8, Msb0> {
    let mut b = none(n);
    for i in set {
        b.set(i, true);
    }
    b
}

/// `n` pieces of `blocks` blocks each.
fn picker(n: u32, blocks: u32, random_first: u32, seed: u64) -> Picker {
    let l = Lengths::new(u64::from(n * blocks * BLOCK_LEN), blocks * BLOCK_LEN).unwrap();
    let config = PickerConfig {
        random_first_pieces: random_first,
        rng_seed: Some(seed),
        ..PickerConfig::default()
    };
    Picker::with_config(l, &none(0), config)
}

fn pick(
    p: &mut Picker,
    peer: PeerKey,
    bits: &BitVec<u8, Msb0>,
    all: bool,
    max: usize,
) -> Vec<BlockRef> {
    let mut out = Vec::new();
    p.pick(peer, bits, all, max, &mut out);
    p.check_invariants().unwrap();
    out
}

fn pieces_of(blocks: &[BlockRef]) -> Vec<u32> {
    blocks.iter().map(|b| b.piece().get()).collect()
}

#[test]
fn rarest_pieces_are_picked_first() {
    for seed in 0..8 {
        let mut p = picker(8, 1, 0, seed);
        let a = bits(8, 0..8);
        p.peer_bitfield(&a);
        p.peer_bitfield(&bits(8, 0..4));
        p.peer_bitfield(&bits(8, 0..2));
        let mut first4 = pieces_of(&pick(&mut p, A, &a, false, 4));
        first4.sort_unstable();
        assert_eq!(first4, vec![4, 5, 6, 7]);
        let mut next2 = pieces_of(&pick(&mut p, A, &a, false, 2));
        next2.sort_unstable();
        assert_eq!(next2, vec![2, 3]);
        let mut last2 = pieces_of(&pick(&mut p, A, &a, false, 5));
        last2.sort_unstable();
        assert_eq!(last2, vec![0, 1]);
    }
}

#[test]
fn ties_are_broken_at_random() {
    let firsts: std::collections::BTreeSet<u32> = (0..40)
        .map(|seed| {
            let mut p = picker(16, 1, 0, seed);
            pieces_of(&pick(&mut p, A, &none(16), true, 1))[0]
        })
        .collect();
    assert!(firsts.len() >= 8, "{firsts:?}");
}

#[test]
fn partial_pieces_are_continued_first() {
    let mut p = picker(3, 4, 0, 1);
    // Piece 1 is the only one A has; pieces 0 and 2 are rarer for a seed (availability 0
    // apart from seeds) but piece 1, once started, comes first.
    let a = bits(3, [1]);
    p.peer_bitfield(&a);
    p.peer_has_all();
    let got = pick(&mut p, A, &a, false, 2);
    assert_eq!(pieces_of(&got), vec![1, 1]);
    let got = pick(&mut p, B, &none(3), true, 3);
    assert_eq!(pieces_of(&got)[..2], [1, 1]);
    assert_ne!(got[2].piece().get(), 1);
}

#[test]
fn rarest_partial_is_continued_first() {
    let mut p = picker(2, 4, 0, 3);
    p.peer_bitfield(&bits(2, [0, 1]));
    p.peer_bitfield(&bits(2, [1]));
    // A starts piece 0 (rarer), B starts piece 1 (the only one it has); both stay partial.
    assert_eq!(
        pieces_of(&pick(&mut p, A, &bits(2, [0, 1]), false, 1)),
        vec![0]
    );
    assert_eq!(
        pieces_of(&pick(&mut p, B, &bits(2, [1]), false, 1)),
        vec![1]
    );
    // A seed continues the rarer partial first.
    assert_eq!(
        pieces_of(&pick(&mut p, C, &none(2), true, 4)),
        vec![0, 0, 0, 1]
    );
}

#[test]
fn first_pieces_are_random_not_rarest() {
    let rarest_taken = |random_first| {
        (0..64)
            .filter(|&seed| {
                let mut p = picker(20, 1, random_first, seed);
                let all = bits(20, 0..20);
                p.peer_bitfield(&all);
                p.peer_bitfield(&bits(20, 1..20));
                pick(&mut p, A, &all, false, 1)[0].piece().get() == 0
            })
            .count()
    };
    assert_eq!(rarest_taken(0), 64);
    assert!(
        rarest_taken(4) < 16,
        "random start still mostly picked the rarest piece"
    );
}

#[test]
fn random_phase_ends_after_enough_pieces() {
    let mut p = picker(20, 1, 2, 9);
    let all = bits(20, 0..20);
    p.peer_bitfield(&all);
    p.peer_bitfield(&bits(20, 2..20));
    for b in pick(&mut p, A, &all, false, 2) {
        assert!(matches!(
            p.block_received(A, b),
            Received::Accepted {
                piece_done: true,
                ..
            }
        ));
        p.piece_verified(b.piece());
    }
    // Now rarest-first: pieces 0 and 1 (availability 1) unless both were already taken.
    let next = pick(&mut p, A, &all, false, 1)[0].piece().get();
    let rare_left = (0..2).any(|i| !p.have()[i]);
    assert!(
        !rare_left || next < 2,
        "picked {next} while a rarer piece was left"
    );
}

#[test]
fn strict_endgame_duplicates_and_cancels() {
    let mut p = picker(2, 1, 0, 5);
    let all = none(2);
    p.peer_has_all();
    p.peer_has_all();
    p.peer_has_all();
    let a = pick(&mut p, A, &all, true, 10);
    assert_eq!(a.len(), 2);
    assert!(p.in_endgame());
    // A is never asked twice for a block.
    assert!(pick(&mut p, A, &all, true, 10).is_empty());
    // B duplicates both; C finds every block at the cap of two requesters.
    let b = pick(&mut p, B, &all, true, 10);
    assert_eq!(b.len(), 2);
    assert!(pick(&mut p, C, &all, true, 10).is_empty());
    assert_eq!(p.block_status(a[0]), BlockStatus::Requested(2));
    assert_eq!(
        p.block_received(B, a[0]),
        Received::Accepted {
            cancel: vec![A],
            piece_done: true
        }
    );
    assert_eq!(p.block_received(A, a[0]), Received::Unwanted);
    assert_eq!(p.outstanding(A), 1);
    assert_eq!(p.outstanding(B), 1);
    p.check_invariants().unwrap();
}

#[test]
fn no_duplicates_while_any_block_is_free() {
    let mut p = picker(3, 1, 0, 5);
    let a = bits(3, [0, 1]);
    p.peer_bitfield(&a);
    p.peer_has_all();
    assert_eq!(pick(&mut p, A, &a, false, 10).len(), 2);
    // Piece 2 is free (only the seed has it), so no duplicates for B which lacks it.
    assert!(!p.in_endgame());
    assert!(pick(&mut p, B, &a, false, 10).is_empty());
    // Once the seed requests piece 2, endgame starts and B may duplicate.
    assert_eq!(pieces_of(&pick(&mut p, C, &none(3), true, 1)), vec![2]);
    assert!(p.in_endgame());
    assert_eq!(pick(&mut p, B, &a, false, 10).len(), 2);
}

#[test]
fn endgame_cap_of_one_disables_duplicates() {
    let l = Lengths::new(u64::from(BLOCK_LEN), BLOCK_LEN).unwrap();
    let config = PickerConfig {
        endgame_max_requesters: 1,
        rng_seed: Some(1),
        ..PickerConfig::default()
    };
    let mut p = Picker::with_config(l, &none(0), config);
    p.peer_has_all();
    assert_eq!(pick(&mut p, A, &none(1), true, 4).len(), 1);
    assert!(pick(&mut p, B, &none(1), true, 4).is_empty());
}

#[test]
fn hash_failure_refetches_the_piece() {
    let mut p = picker(1, 2, 0, 1);
    p.peer_has_all();
    let got = pick(&mut p, A, &none(1), true, 4);
    assert_eq!(got.len(), 2);
    assert_eq!(
        p.block_received(A, got[0]),
        Received::Accepted {
            cancel: vec![],
            piece_done: false
        }
    );
    assert_eq!(
        p.block_received(A, got[1]),
        Received::Accepted {
            cancel: vec![],
            piece_done: true
        }
    );
    assert_eq!(p.awaiting_verification(), 1);
    assert!(pick(&mut p, B, &none(1), true, 4).is_empty());
    p.piece_failed(got[0].piece());
    p.check_invariants().unwrap();
    assert_eq!(p.block_status(got[0]), BlockStatus::Free);
    let again = pick(&mut p, B, &none(1), true, 4);
    assert_eq!(again, got);
    for b in again {
        p.block_received(B, b);
    }
    p.piece_verified(got[0].piece());
    assert!(p.is_complete());
    assert_eq!(p.block_received(B, got[0]), Received::Unwanted);
    assert!(pick(&mut p, B, &none(1), true, 4).is_empty());
}

#[test]
fn released_requests_free_their_blocks() {
    let mut p = picker(4, 2, 0, 2);
    let a = bits(4, 0..4);
    p.peer_bitfield(&a);
    let got = pick(&mut p, A, &a, false, 3);
    assert_eq!(p.outstanding(A), 3);
    p.request_released(A, got[0]);
    assert_eq!(p.block_status(got[0]), BlockStatus::Free);
    assert_eq!(p.outstanding(A), 2);
    p.release_peer(A);
    assert_eq!(p.outstanding(A), 0);
    p.check_invariants().unwrap();
    p.peer_left(A, &a, false);
    assert_eq!(p.availability(got[0].piece()), 0);
    p.check_invariants().unwrap();
    p.check_availability([]).unwrap();
    // Released blocks of a peer that left are not accepted from it any more.
    assert_eq!(p.block_received(A, got[1]), Received::Unwanted);
}

#[test]
fn unrequested_and_misshapen_blocks_are_unwanted() {
    let l = Lengths::new(3 * u64::from(BLOCK_LEN), 2 * BLOCK_LEN).unwrap();
    let mut p = Picker::with_rng_seed(l, 4);
    p.peer_has_all();
    let got = pick(&mut p, A, &none(2), true, 1);
    let b = got[0];
    // Same data from another peer, a shifted range, a short range: all unwanted.
    assert_eq!(p.block_received(B, b), Received::Unwanted);
    let shifted = l
        .block_at(b.piece().get(), b.offset() + 1, BLOCK_LEN - 1)
        .unwrap();
    assert_eq!(p.block_received(A, shifted), Received::Unwanted);
    let short = l.block_at(b.piece().get(), b.offset(), 100).unwrap();
    assert_eq!(p.block_received(A, short), Received::Unwanted);
    p.request_released(B, b);
    assert_eq!(p.block_status(b), BlockStatus::Requested(1));
    p.check_invariants().unwrap();
}

#[test]
fn resume_skips_pieces_we_have() {
    let l = Lengths::new(4 * u64::from(BLOCK_LEN), BLOCK_LEN).unwrap();
    let have: BitVec<u8, Msb0> = bitvec![u8, Msb0; 1, 0, 1, 1];
    let mut p = Picker::with_have(l, &have);
    assert_eq!(p.have_count(), 3);
    assert!(p.is_interesting(&bits(4, [1]), false));
    assert!(!p.is_interesting(&bits(4, [0, 2]), false));
    assert!(p.is_interesting(&none(4), true));
    p.peer_has_all();
    assert_eq!(pieces_of(&pick(&mut p, A, &none(4), true, 10)), vec![1]);
    p.check_invariants().unwrap();
}

#[test]
fn sparse_and_dense_peers_both_pick_rarest() {
    // 400 pieces; availability rises with the index (piece i held by i % 4 + 1 peers).
    let n = 400;
    let mut p = picker(n as u32, 1, 0, 11);
    for k in 0..4 {
        p.peer_bitfield(&bits(n, (0..n).filter(|i| i % 4 >= k)));
    }
    // A dense peer (everything) takes availability-1 pieces first.
    let dense = bits(n, 0..n);
    assert!(pick(&mut p, A, &dense, false, 20)
        .iter()
        .all(|b| b.piece().get() % 4 == 0));
    // A sparse peer with two pieces of different rarity (also reported) takes the rarer.
    let sparse = bits(n, [7, 5]);
    p.peer_bitfield(&sparse);
    assert_eq!(pieces_of(&pick(&mut p, B, &sparse, false, 1)), vec![5]);
    assert_eq!(pieces_of(&pick(&mut p, B, &sparse, false, 1)), vec![7]);
    assert!(pick(&mut p, B, &sparse, false, 1).is_empty());
}

#[test]
fn seeds_are_counted_apart() {
    let mut p = picker(4, 1, 0, 1);
    p.peer_has_all();
    p.peer_bitfield(&bits(4, [2]));
    assert_eq!(
        p.availability(crate::Lengths::piece(&p.lengths(), 2).unwrap()),
        2
    );
    assert_eq!(p.availability(p.lengths().piece(0).unwrap()), 1);
    p.peer_left(A, &none(4), true);
    assert_eq!(p.availability(p.lengths().piece(0).unwrap()), 0);
    p.check_availability([(bits(4, [2]).as_bitslice(), false)])
        .unwrap();
}

#[test]
fn bitfield_length_is_validated() {
    let p = picker(10, 1, 0, 1);
    assert_eq!(p.validate_bitfield(&none(10)), Ok(()));
    assert_eq!(
        p.validate_bitfield(&none(16)),
        Err(PickerError::BitfieldLength {
            expected: 10,
            got: 16
        })
    );
}

#[test]
fn hostile_counts_do_not_panic() {
    let mut p = picker(4, 1, 0, 1);
    // Leaving without having joined, bitfields longer than the torrent, releases of
    // unknown requests: all tolerated.
    p.peer_left(A, &bits(12, 0..12), false);
    p.peer_left(A, &none(4), true);
    p.peer_bitfield(&bits(12, 0..12));
    p.request_released(
        B,
        p.lengths().block(p.lengths().piece(0).unwrap(), 0).unwrap(),
    );
    p.piece_failed(p.lengths().piece(1).unwrap());
    p.check_invariants().unwrap();
    assert_eq!(pick(&mut p, A, &bits(12, 0..12), false, 0).len(), 0);
}

#[test]
fn no_piece_starts_beyond_the_active_cap() {
    for random_first in [0, 100] {
        let mut p = picker(16, 4, random_first, 1);
        p.set_max_active(3);
        p.peer_has_all();
        let got = pick(&mut p, A, &none(16), true, 1000);
        let mut pieces = pieces_of(&got);
        pieces.dedup();
        assert_eq!(pieces.len(), 3, "{pieces:?}");
        assert_eq!(got.len(), 12);
        // Finishing one piece (received, then verified) frees a slot for one more.
        let first = got[0].piece();
        for b in got.iter().filter(|b| b.piece() == first) {
            p.block_received(A, *b);
        }
        assert!(
            pick(&mut p, B, &none(16), true, 1000).is_empty(),
            "piece awaiting verification still counts"
        );
        p.piece_verified(first);
        let more = pick(&mut p, B, &none(16), true, 1000);
        assert_eq!(more.len(), 4);
        assert!(more.iter().all(|b| b.piece() == more[0].piece()));
    }
}

#[test]
fn partial_pieces_nobody_has_do_not_count_against_the_cap() {
    let mut p = picker(8, 2, 0, 2);
    p.set_max_active(2);
    let a_bits = bits(8, [0, 1]);
    p.peer_bitfield(&a_bits);
    let got = pick(&mut p, A, &a_bits, false, 4);
    let mut started = pieces_of(&got);
    started.dedup();
    assert_eq!(started.len(), 2);
    // A delivers one block of each piece, then leaves: both stay partial, with no source.
    for piece in started {
        let first = got.iter().find(|b| b.piece().get() == piece).unwrap();
        p.block_received(A, *first);
    }
    p.peer_left(A, &a_bits, false);
    let b_bits = bits(8, 2..8);
    p.peer_bitfield(&b_bits);
    let got = pick(&mut p, B, &b_bits, false, 100);
    let mut pieces = pieces_of(&got);
    pieces.dedup();
    assert_eq!(pieces.len(), 2, "B may still start two pieces: {pieces:?}");
}

/// At the cap, a piece the seed suggested still starts, up to `SUGGEST_SLOTS` past it; an
/// unsuggested piece does not; a suggestion for a piece we have or started is ignored.
#[test]
fn suggested_pieces_start_past_the_cap_within_the_extra_slots() {
    let mut p = picker(32, 4, 0, 3);
    p.set_max_active(2);
    let a_bits = bits(32, 0..16);
    p.peer_bitfield(&a_bits);
    let got = pick(&mut p, A, &a_bits, false, 1000);
    assert_eq!(
        pieces_of(&got)
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2
    );
    // The seed (B) shows and suggests pieces 20..30; only B has them.
    let mut b_bits = none(32);
    for i in 20..30 {
        b_bits.set(i, true);
        p.peer_has(p.lengths().piece(i as u32).unwrap());
    }
    assert!(
        pick(&mut p, B, &b_bits, false, 1000).is_empty(),
        "at the cap"
    );
    for i in 20..30 {
        p.suggested(p.lengths().piece(i).unwrap());
    }
    let got = pick(&mut p, B, &b_bits, false, 1000);
    let mut started = pieces_of(&got);
    started.dedup();
    assert_eq!(
        started.len() as u32,
        crate::picker::SUGGEST_SLOTS,
        "{started:?}"
    );
    assert!(started.iter().all(|i| (20..30).contains(i)));
    assert!(
        pick(&mut p, B, &b_bits, false, 1000).is_empty(),
        "the extra slots are full"
    );
    p.check_invariants().unwrap();
    // Verifying one frees one slot, for a suggested piece only.
    let first = started[0];
    for b in got.iter().filter(|b| b.piece().get() == first) {
        p.block_received(B, *b);
    }
    p.piece_verified(p.lengths().piece(first).unwrap());
    assert!(
        pick(&mut p, A, &a_bits, false, 1000).is_empty(),
        "A's pieces: still capped"
    );
    let more = pick(&mut p, B, &b_bits, false, 1000);
    assert_eq!(pieces_of(&more).len(), 4, "one more suggested piece");
    // Suggestions of pieces we have or have started change nothing.
    p.suggested(p.lengths().piece(first).unwrap());
    p.suggested(p.lengths().piece(started[1]).unwrap());
    assert!(pick(&mut p, B, &b_bits, false, 1000).is_empty());
    p.check_invariants().unwrap();
}
