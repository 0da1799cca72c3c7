//! The sending half of a connection: flushes the link's queued messages and serves the
//! peer's requests, reading blocks from storage straight into the outgoing frame.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use super::{PeerError, PeerLink};
use crate::torrent::{Counters, Torrent};
use crate::wire::{encode_piece_header, Message, PIECE_HEADER_LEN};
use crate::{BlockRef, Lengths};

/// Blocks served per storage round trip: one blocking-pool call and one socket write for up
/// to 1 MiB.
const SERVE_BATCH: usize = 64;

pub(super) async fn run(
    torrent: &Arc<Torrent>,
    link: &Arc<PeerLink>,
    mut write: OwnedWriteHalf,
) -> Result<(), PeerError> {
    let mut shutdown = torrent.shutdown.subscribe();
    let keepalive = torrent.config.keepalive_interval;
    let mut batch: Vec<BlockRef> = Vec::with_capacity(SERVE_BATCH);
    loop {
        if link.is_closing() {
            return Ok(());
        }
        let out = {
            let mut io = link.io();
            batch.clear();
            let n = io.serve.len().min(SERVE_BATCH);
            batch.extend(io.serve.drain(..n));
            io.out.split()
        };
        if out.is_empty() && batch.is_empty() {
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
            let frames = read_blocks(torrent, &batch).await?;
            write.write_all(&frames).await?;
            let bytes: u64 = batch.iter().map(|b| u64::from(b.len())).sum();
            Counters::add(&torrent.counters.uploaded, bytes);
            link.uploaded
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Reads `blocks` from storage on the blocking pool into ready-to-send Piece frames.
async fn read_blocks(torrent: &Arc<Torrent>, blocks: &[BlockRef]) -> Result<BytesMut, PeerError> {
    let storage = Arc::clone(&torrent.storage);
    let lengths = torrent.lengths;
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
