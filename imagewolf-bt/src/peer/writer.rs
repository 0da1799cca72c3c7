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

/// Blocks served per storage round trip: one blocking-pool call for up to 256 KiB. Blocks
/// read are committed (a Cancel can no longer take them back), so this stays small.
const SERVE_BATCH: usize = 16;

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
                let n = io.serve.len().min(SERVE_BATCH);
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
                handler.count_uploaded(frames_payload);
                link.uploaded
                    .fetch_add(frames_payload, std::sync::atomic::Ordering::Relaxed);
            }
        }
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
