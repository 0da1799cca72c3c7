//! Peer wire codec throughput: what one connection's CPU costs per block.
//!
//! `cargo bench --bench codec` (add `-- --test` to run each benchmark once as a smoke test).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use imagewolf_bt::wire::{
    encode_piece_header, DecoderLimits, Message, MessageDecoder, RawBlock, PIECE_HEADER_LEN,
};
use imagewolf_bt::BLOCK_LEN;

const BLOCK: usize = BLOCK_LEN as usize;
const PIECES: u32 = 1000;
const SMALL: u32 = 10_000;
/// A typical socket read size for the "fed in reads" variants.
const READ: usize = 64 * 1024;

fn decoder() -> MessageDecoder {
    MessageDecoder::new(DecoderLimits::new(1250))
}

fn piece_stream() -> Bytes {
    let data = Bytes::from(vec![0xA5u8; BLOCK]);
    let mut out = BytesMut::with_capacity(PIECES as usize * (BLOCK + PIECE_HEADER_LEN));
    for i in 0..PIECES {
        Message::Piece {
            index: i / 16,
            begin: (i % 16) * BLOCK_LEN,
            data: data.clone(),
        }
        .encode(&mut out);
    }
    out.freeze()
}

fn small_stream() -> Bytes {
    let mut out = BytesMut::new();
    for i in 0..SMALL {
        let msg = if i % 2 == 0 {
            Message::Have(i)
        } else {
            Message::Request(RawBlock {
                index: i,
                begin: 0,
                length: BLOCK_LEN,
            })
        };
        msg.encode(&mut out);
    }
    out.freeze()
}

/// Decodes everything in `buf`, returning the message count.
fn drain(decoder: &mut MessageDecoder, buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Some(msg) = decoder.decode(buf).expect("valid stream") {
        black_box(msg);
        n += 1;
    }
    n
}

/// Feeds `stream` in `READ`-sized socket reads, as a connection would.
fn decode_in_reads(stream: &[u8]) -> usize {
    let mut decoder = decoder();
    let mut buf = BytesMut::with_capacity(READ);
    let mut n = 0;
    for read in stream.chunks(READ) {
        buf.reserve(decoder.bytes_needed(&buf).max(read.len()));
        buf.extend_from_slice(read);
        n += drain(&mut decoder, &mut buf);
    }
    n
}

fn encode(c: &mut Criterion) {
    let block = Bytes::from(vec![0x5Au8; BLOCK]);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes((PIECE_HEADER_LEN + BLOCK) as u64));
    group.bench_function("piece_header+16KiB", |b| {
        let mut buf = BytesMut::with_capacity(2 * (PIECE_HEADER_LEN + BLOCK));
        b.iter(|| {
            buf.clear();
            encode_piece_header(black_box(7), black_box(0x4000), BLOCK_LEN, &mut buf);
            buf.extend_from_slice(&block);
            black_box(&buf);
        })
    });
    group.bench_function("piece_message_16KiB", |b| {
        let msg = Message::Piece {
            index: 7,
            begin: 0x4000,
            data: block.clone(),
        };
        let mut buf = BytesMut::with_capacity(2 * (PIECE_HEADER_LEN + BLOCK));
        b.iter(|| {
            buf.clear();
            black_box(&msg).encode(&mut buf);
            black_box(&buf);
        })
    });
    group.finish();
}

fn decode_pieces(c: &mut Criterion) {
    let stream = piece_stream();
    let mut group = c.benchmark_group("decode_1000_pieces");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("one_buffer", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let n = drain(&mut decoder(), &mut buf);
                assert_eq!(n, PIECES as usize);
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("64KiB_reads", |b| {
        b.iter(|| assert_eq!(decode_in_reads(&stream), PIECES as usize))
    });
    group.finish();
}

fn decode_small(c: &mut Criterion) {
    let stream = small_stream();
    let mut group = c.benchmark_group("decode_have_request");
    group.throughput(Throughput::Elements(u64::from(SMALL)));
    group.bench_function("one_buffer", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| {
                let n = drain(&mut decoder(), &mut buf);
                assert_eq!(n, SMALL as usize);
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("64KiB_reads", |b| {
        b.iter(|| assert_eq!(decode_in_reads(&stream), SMALL as usize))
    });
    group.finish();
}

criterion_group!(benches, encode, decode_pieces, decode_small);
criterion_main!(benches);
