//! The sending half of a connection: flushes the link's queued messages and serves the
//! peer's requests, reading blocks from storage straight into the outgoing frame.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use super::{PeerError, PeerHandler, PeerLink};
use crate::wire::{encode_piece_header, Message, PIECE_HEADER_LEN};
use crate::{BlockRef, Lengths};

/// Most blocks served per storage round trip: one blocking-pool call for up to 256 KiB.
/// Blocks read are committed (a Cancel can no longer take them back), so this stays small.
const SERVE_BATCH: usize = 16;
/// Fewest, and where a connection starts. Frames read ahead wait in memory until the socket
/// takes them, so a connection that drains slowly holds at most this much (64 KiB): a seed
/// serving a hundred slow peers at once holds 6 MiB, not 25. A fast one doubles its batch
/// up to [`SERVE_BATCH`] (see [`next_serve_batch`]): on loopback a batch of 4 cut the
/// throughput by about 40 % (measured 2026-12-06).
const MIN_SERVE_BATCH: usize = 4;
/// A batch written out within this: the connection is fast, the next may be twice as large.
const FAST_BATCH: std::time::Duration = std::time::Duration::from_millis(20);
/// A batch that took longer than this: the connection is slow, the next is half as large.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// Piece data written to the socket at once. Control messages queued meanwhile (our
/// requests, HAVEs, choke changes) go out before the next chunk, so they wait behind at most
/// one chunk plus the kernel's unsent bytes (`NOTSENT_LOWAT` in `peer/mod.rs`), not behind
/// a whole batch: a request or HAVE stuck behind seconds of piece data to a peer delays
/// every transfer that depends on it.
const WRITE_CHUNK: usize = 32 * 1024;

/// How long a closing connection may take to send its queued control messages.
const CLOSE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn run<H: PeerHandler>(
    handler: &H,
    link: &Arc<PeerLink>,
    mut write: OwnedWriteHalf,
) -> Result<(), PeerError> {
    let mut shutdown = handler.shutdown();
    let keepalive = handler.config().keepalive_interval;
    let mut batch: Vec<BlockRef> = Vec::with_capacity(SERVE_BATCH);
    let mut serve_batch = MIN_SERVE_BATCH;
    let mut batch_started = std::time::Instant::now();
    // Piece frames read from storage and not yet written, their lengths (chunks end on a
    // frame boundary: a control message must never land inside a Piece frame), and their
    // payload bytes.
    let mut frames = BytesMut::new();
    let mut frame_lens: VecDeque<usize> = VecDeque::with_capacity(SERVE_BATCH);
    let mut frames_payload = 0u64;
    loop {
        if link.is_closing() {
            // Control messages queued before the close still go out (piece data does not):
            // above all the HAVE of the piece that completed us, sent just before closing a
            // connection to a seed, which a spreading seed counts on
            // (`SeedSpreader::peer_left`). Bounded, as the peer may be gone.
            let out = link.io().out.split();
            if !out.is_empty() {
                let _ = tokio::time::timeout(CLOSE_FLUSH, write.write_all(&out)).await;
            }
            return Ok(());
        }
        let out = {
            let mut io = link.io();
            batch.clear();
            if frames.is_empty() {
                let n = io.serve.len().min(serve_batch);
                batch.extend(io.serve.drain(..n));
            }
            io.out.split()
        };
        if out.is_empty() && batch.is_empty() && frames.is_empty() {
            tokio::select! {
                _ = link.writer_wake.notified() => {}
                _ = tokio::time::sleep(keepalive) => link.send(&Message::KeepAlive),
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
            continue;
        }
        if !out.is_empty() {
            write.write_all(&out).await?;
        }
        if !batch.is_empty() {
            batch_started = std::time::Instant::now();
            frames = read_blocks(handler, &batch).await?;
            frame_lens.extend(batch.iter().map(|b| PIECE_HEADER_LEN + b.len() as usize));
            frames_payload = batch.iter().map(|b| u64::from(b.len())).sum();
        }
        if !frames.is_empty() {
            let len = next_chunk(&mut frame_lens, WRITE_CHUNK);
            let chunk = frames.split_to(len.min(frames.len()));
            tokio::select! {
                _ = handler.upload_limit().acquire(chunk.len() as u64) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            }
            write.write_all(&chunk).await?;
            if frames.is_empty() {
                serve_batch = next_serve_batch(serve_batch, batch_started.elapsed());
                handler.count_uploaded(frames_payload);
                link.uploaded
                    .fetch_add(frames_payload, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// The batch size after a batch of `current` blocks took `took` from storage read to last
/// byte written: doubled (to [`SERVE_BATCH`]) when it went out within [`FAST_BATCH`], halved
/// (to [`MIN_SERVE_BATCH`]) when it took longer than [`SLOW_BATCH`].
fn next_serve_batch(current: usize, took: std::time::Duration) -> usize {
    if took <= FAST_BATCH {
        (current * 2).min(SERVE_BATCH)
    } else if took > SLOW_BATCH {
        (current / 2).max(MIN_SERVE_BATCH)
    } else {
        current
    }
}

/// Takes whole frames from the front of `frame_lens` up to `max` bytes (at least one frame)
/// and returns their total length: the next chunk to write, ending on a frame boundary.
fn next_chunk(frame_lens: &mut VecDeque<usize>, max: usize) -> usize {
    let mut len = 0;
    while let Some(next) = frame_lens.front().copied() {
        if len > 0 && len + next > max {
            break;
        }
        len += next;
        frame_lens.pop_front();
    }
    len
}

/// Reads `blocks` from storage on the blocking pool into ready-to-send Piece frames.
async fn read_blocks<H: PeerHandler>(
    handler: &H,
    blocks: &[BlockRef],
) -> Result<BytesMut, PeerError> {
    let storage = Arc::clone(handler.storage());
    let lengths = handler.lengths();
    let blocks = blocks.to_vec();
    tokio::task::spawn_blocking(move || frame_blocks(&*storage, &lengths, &blocks))
        .await
        .map_err(|e| PeerError::Io(std::io::Error::other(e.to_string())))?
        .map_err(PeerError::Io)
}

fn frame_blocks(
    storage: &dyn crate::storage::Storage,
    lengths: &Lengths,
    blocks: &[BlockRef],
) -> std::io::Result<BytesMut> {
    let total: usize = blocks
        .iter()
        .map(|b| PIECE_HEADER_LEN + b.len() as usize)
        .sum();
    let mut frames = BytesMut::with_capacity(total);
    for block in blocks {
        encode_piece_header(
            block.piece().get(),
            block.offset(),
            block.len(),
            &mut frames,
        );
        let start = frames.len();
        frames.resize(start + block.len() as usize, 0);
        storage.read_at(lengths.block_offset(*block), &mut frames[start..])?;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serve_batch_follows_how_fast_the_socket_drains() {
        use std::time::Duration;
        let mut size = MIN_SERVE_BATCH;
        for _ in 0..5 {
            size = next_serve_batch(size, Duration::from_millis(1));
        }
        assert_eq!(size, SERVE_BATCH);
        assert_eq!(
            next_serve_batch(size, Duration::from_millis(50)),
            SERVE_BATCH
        );
        for _ in 0..5 {
            size = next_serve_batch(size, Duration::from_secs(1));
        }
        assert_eq!(size, MIN_SERVE_BATCH);
    }

    #[test]
    fn chunks_end_on_frame_boundaries() {
        let frame = PIECE_HEADER_LEN + 16 * 1024;
        let mut lens: VecDeque<usize> = [frame, frame, frame, 100, frame].into();
        // Two full frames do not fit in 32 KiB with their headers: one frame per chunk.
        assert_eq!(next_chunk(&mut lens, WRITE_CHUNK), frame);
        assert_eq!(next_chunk(&mut lens, WRITE_CHUNK), frame);
        // A frame and a short one fit together.
        assert_eq!(next_chunk(&mut lens, WRITE_CHUNK), frame + 100);
        // A frame larger than the chunk still goes out whole.
        assert_eq!(next_chunk(&mut lens, 1000), frame);
        assert!(lens.is_empty());
        assert_eq!(next_chunk(&mut lens, WRITE_CHUNK), 0);
    }
}
