//! SHA-1 throughput, the ceiling for piece verification and torrent creation.
//!
//! `sha1` picks SHA-NI at run time when the CPU has it, so these numbers show which backend
//! the machine gets. Run: `cargo bench --bench hashing`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imagewolf_bt::metainfo::{sha1, PieceHasher};

const PIECE_LEN: u32 = 1024 * 1024;
const STREAM_LEN: usize = 64 * 1024 * 1024;
/// Size of the chunks fed to the hasher, like the builder's read buffer.
const CHUNK_LEN: usize = 256 * 1024;
const BLOCK_LEN: usize = 16 * 1024;

fn payload(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn piece_hashing(c: &mut Criterion) {
    let data = payload(STREAM_LEN);
    let mut group = c.benchmark_group("sha1");
    group.throughput(Throughput::Bytes(STREAM_LEN as u64));
    group.sample_size(10);
    group.bench_function("piece_hasher_1MiB_pieces_64MiB", |b| {
        b.iter(|| {
            let mut hasher = PieceHasher::new(PIECE_LEN);
            for chunk in black_box(&data).chunks(CHUNK_LEN) {
                hasher.update(chunk);
            }
            black_box(hasher.finish())
        })
    });

    let block = payload(BLOCK_LEN);
    group.throughput(Throughput::Bytes(BLOCK_LEN as u64));
    group.sample_size(100);
    group.bench_function("block_16KiB", |b| b.iter(|| sha1(black_box(&block))));
    group.finish();
}

criterion_group!(benches, piece_hashing);
criterion_main!(benches);
