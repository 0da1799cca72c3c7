//! Piece picker at LAN-cluster scale: 1,000 peers x 10,000 pieces of 256 KiB (16 blocks).
//!
//! - `bitfield_1000_peers`: availability updates for 1,000 BITFIELDs (half the pieces each);
//! - `have`: one HAVE on a picker that already counts those 1,000 bitfields;
//! - `download_*`: a whole download, `pick(.., max = 64)` for a random peer, every block
//!   delivered at once and every finished piece verified, until complete: once with 1,000
//!   bitfield peers, once with 1,000 HaveAll seeds (the common LAN case).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use imagewolf_bt::picker::{Bitfield, PeerKey, Picker, PickerConfig, Received};
use imagewolf_bt::{Lengths, BLOCK_LEN};
use rand::{rngs::SmallRng, RngExt, SeedableRng};

const PEERS: usize = 1_000;
const PIECES: u32 = 10_000;
const PIECE_LEN: u32 = 16 * BLOCK_LEN;

fn lengths() -> Lengths {
    Lengths::new(u64::from(PIECES) * u64::from(PIECE_LEN), PIECE_LEN).expect("valid geometry")
}

fn fresh_picker() -> Picker {
    let config = PickerConfig {
        rng_seed: Some(1),
        ..PickerConfig::default()
    };
    Picker::with_config(lengths(), &Bitfield::new(), config)
}

fn random_bitfields(rng: &mut SmallRng) -> Vec<Bitfield> {
    (0..PEERS)
        .map(|_| (0..PIECES).map(|_| rng.random_bool(0.5)).collect())
        .collect()
}

/// Picks for random peers until every piece is verified; returns the number of picks.
fn download(mut picker: Picker, peers: &[Bitfield], all: bool, rng: &mut SmallRng) -> usize {
    let mut out = Vec::with_capacity(64);
    let mut picks = 0;
    while !picker.is_complete() {
        let i = rng.random_range(0..peers.len());
        let key = PeerKey(i as u64);
        out.clear();
        picker.pick(key, &peers[i], all, 64, &mut out);
        picks += 1;
        for &b in &out {
            if let Received::Accepted {
                piece_done: true, ..
            } = picker.block_received(key, b)
            {
                picker.piece_verified(b.piece());
            }
        }
    }
    picks
}

fn bench(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(42);
    let bitfields = random_bitfields(&mut rng);
    let mut loaded = fresh_picker();
    for b in &bitfields {
        loaded.peer_bitfield(b);
    }

    let mut group = c.benchmark_group("picker");
    group.sample_size(10);
    group.bench_function("bitfield_1000_peers", |b| {
        b.iter_batched(
            fresh_picker,
            |mut p| {
                for bits in &bitfields {
                    p.peer_bitfield(bits);
                }
                p
            },
            BatchSize::LargeInput,
        )
    });

    let mut have_picker = loaded.clone();
    let mut next = 0u32;
    group.bench_function("have", |b| {
        b.iter(|| {
            next = (next + 7919) % PIECES;
            let piece = have_picker.lengths().piece(next).expect("in range");
            have_picker.peer_has(black_box(piece));
        })
    });

    group.bench_function("download_1000_bitfield_peers", |b| {
        b.iter_batched(
            || loaded.clone(),
            |p| download(p, &bitfields, false, &mut rng),
            BatchSize::LargeInput,
        )
    });

    let mut seeded = fresh_picker();
    for _ in 0..PEERS {
        seeded.peer_has_all();
    }
    let no_bits = vec![Bitfield::new(); PEERS];
    group.bench_function("download_1000_seeds", |b| {
        b.iter_batched(
            || seeded.clone(),
            |p| download(p, &no_bits, true, &mut rng),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
